"""The permutation generator (USPEX's permutation operator, Lyakhov et al. 2013)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gnome_loop.config import ConfigError, parse_config
from gnome_loop.generate.permutation import permute, swapped
from gnome_loop.generate.plausible import element_roles
from gnome_loop.stages.context import StageContext
from gnome_loop.stages.generate import generate
from gnome_loop.store import Store, entry_row
from gnome_loop.structures import ChemicalSpace, default_matcher
from tests.helpers import layered_licoo2, quick_config, spinel_mgal2o4

SPACE = ChemicalSpace(("Li", "Co", "Mg", "Al", "Cu", "Zn", "O", "S"), 3, 40)


def _b2() -> Structure:
    """CuZn, B2 (CsCl type), a = 2.95 Å."""
    return Structure(Lattice.cubic(2.95), ["Cu", "Zn"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _oxysulfide() -> Structure:
    """Mg4O2S2: rocksalt MgO's conventional cell with two of its O replaced by S (two anion elements)."""
    cell = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.6), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    oxygens = [i for i, site in enumerate(cell) if site.specie.symbol == "O"]
    for i in oxygens[:2]:
        cell.replace(i, "S")
    return cell


def _changed_sites(parent: Structure, variant: Structure) -> list[int]:
    assert np.allclose(parent.lattice.matrix, variant.lattice.matrix)
    assert np.allclose(parent.frac_coords, variant.frac_coords)
    return [i for i, (a, b) in enumerate(zip(parent, variant)) if a.specie.symbol != b.specie.symbol]


def test_roles_follow_the_oxidation_state_guess():
    assert element_roles("LiCoO2") == {"Li": "cation", "Co": "cation", "O": "anion"}
    assert element_roles("LiNO3")["N"] == "cation"  # nitrate: N5+, though N is an anion element
    assert element_roles("Mg2OS") == {"Mg": "cation", "O": "anion", "S": "anion"}
    assert element_roles("CuZn") == {"Cu": "cation", "Zn": "cation"}  # no guess: the elements' own roles


@pytest.mark.parametrize("make, supercell",
                         [(spinel_mgal2o4, [2, 1, 1]), (layered_licoo2, None), (_oxysulfide, [2, 1, 1])])
def test_variants_swap_one_same_role_pair_and_are_every_distinct_ordering(make, supercell):
    """Each variant keeps the parent's lattice, positions and composition and differs at two
    sites of different elements of one role; together they are exactly the orderings a brute
    force over all such pairs finds, none matching the parent or another variant."""
    parent = make()
    cell = parent * supercell if supercell else parent
    variants = list(permute([("p", parent)], SPACE, supercell=supercell))
    roles = element_roles(parent.composition.reduced_formula)
    for candidate in variants:
        assert candidate.generator == "permutation" and candidate.parent_ids == ("p",)
        assert candidate.structure.composition == cell.composition
        i, j = changed = _changed_sites(cell, candidate.structure)
        assert changed == candidate.info["sites"]
        assert candidate.info["swap"] == [cell[i].specie.symbol, cell[j].specie.symbol]
        assert cell[i].specie.symbol != cell[j].specie.symbol
        assert roles[cell[i].specie.symbol] == roles[cell[j].specie.symbol]
    matcher = default_matcher()
    unique = [cell]
    symbols = [site.specie.symbol for site in cell]
    for i, j in itertools.combinations(range(len(cell)), 2):
        if symbols[i] != symbols[j] and roles[symbols[i]] == roles[symbols[j]]:
            variant = swapped(cell, i, j)
            if not any(matcher.fit(variant, known) for known in unique):
                unique.append(variant)
    assert len(variants) == len(unique) - 1 > 0
    structures = [cell] + [c.structure for c in variants]
    assert not any(matcher.fit(a, b) for a, b in itertools.combinations(structures, 2))


def test_a_swap_that_gives_the_parent_back_is_no_candidate():
    """Swapping the two atoms of a B2 cell is a translation of it; a 2x2x2 repeat has a new ordering."""
    assert list(permute([("b2", _b2())], SPACE)) == []
    assert len(list(permute([("b2", _b2())], SPACE, supercell=[2, 2, 2]))) == 1


def test_parents_it_cannot_use_give_nothing(layered):
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    disordered = layered.copy()
    disordered.replace(0, {"Li": 0.5, "Co": 0.5})
    assert list(permute([("one-cation", rocksalt), ("disordered", disordered)], SPACE)) == []
    assert list(permute([("p", layered)], ChemicalSpace(("Co", "O"), 3, 40))) == []  # Li outside the space
    assert list(permute([("p", layered)], ChemicalSpace(SPACE.elements, 3, 10))) == []  # 12 atoms > max_atoms
    kept = list(permute([("p", layered)], ChemicalSpace(SPACE.elements, 3, 20), supercell=[2, 1, 1]))
    assert {len(c.structure) for c in kept} == {12}  # the 24-atom repeat is beyond max_atoms: the cell as it is


def test_cap_and_seed(spinel, layered):
    def ids(seed: int, cap: int | None) -> list[str]:
        return [c.id for c in permute([("s", spinel)], SPACE, max_candidates=cap, seed=seed, supercell=[2, 1, 1])]

    every = ids(0, None)
    assert len(every) == 4
    assert all(sorted(ids(seed, None)) == sorted(every) for seed in (1, 2))  # the seed orders, never loses one
    assert ids(3, 2) == ids(3, 2) and len(ids(3, 2)) == 2
    assert len({tuple(sorted(ids(seed, 2))) for seed in range(6)}) > 1  # a seeded random choice of the pairs
    assert ids(0, 0) == []
    turns = list(permute([("s", spinel), ("l", layered)], SPACE, max_candidates=2, supercell=[2, 1, 1]))
    assert [c.parent_ids for c in turns] == [("s",), ("l",)]  # parents take turns


def test_config_section():
    settings = parse_config(quick_config()).generators.permutation
    assert not settings.enabled and settings.max_candidates == 50 and settings.supercell is None
    for change, hint in [({"max_candidates": -1}, "greater than or equal to 0"), ({"supercell": [2, 0, 1]}, "three"),
                         ({"shuffle": True}, "not a known setting")]:
        with pytest.raises(ConfigError, match="generators.permutation") as error:
            parse_config(quick_config(generators={"permutation": change}))
        assert hint in str(error.value)
    with pytest.raises(ConfigError, match="built-in generator"):
        parse_config(quick_config(generators={"external": [{"name": "permutation", "command": ["x"]}]}))


@pytest.mark.parametrize("enabled", [True, False])
def test_the_generate_stage_runs_it_when_enabled(tmp_path, spinel, layered, enabled):
    """Known phases near the hull are parents, the most stable first; one too far above is not."""
    config = parse_config(quick_config(
        chemical_space={"elements": list(SPACE.elements), "max_elements": 3, "max_atoms": 30},
        generators={"permutation": {"enabled": enabled, "max_candidates": 3, "supercell": [2, 1, 1]}}))
    store = Store(tmp_path / "campaign.db", create=True)
    ehulls = {"spinel": 0.0, "layered": 0.02, "unstable": 0.5}
    with store.transaction():
        store.start_round(1, "generate")
        for key, structure in (("spinel", spinel), ("layered", layered), ("unstable", _oxysulfide())):
            store.add_entry(entry_row(key, "oracle", 0, None, structure, structure.composition, -1.0, "emt", False))
        store.set_hull([(key, ehull, ehull == 0.0) for key, ehull in ehulls.items()])
    decision = generate(StageContext(tmp_path, config, store), 1)
    with store.transaction():
        decision.record(store)
    rows = store.candidates(round_=1)
    assert store.round_metrics(1)["generated"] == ({"permutation": 3} if enabled else {})
    assert [row["parent_ids"] for row in rows].count('["unstable"]') == 0
    assert sorted(row["parent_ids"] for row in rows) == (['["layered"]', '["spinel"]', '["spinel"]'] if enabled else [])
    assert all(row["generator"] == "permutation" and row["nsites"] in (24, 28) for row in rows)
