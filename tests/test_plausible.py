"""Plausible substitution candidates: swaps keep the site's role (anion or cation), a
phase holding an anion is never read as an intermetallic, and candidates holding an
anion must be charge balanced (peroxides allowed), the refused ones counted."""

from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from gnome_loop.generate.plausible import ANIONS, NOT_BALANCED, can_balance, charge_problem, role
from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import _parent_species, substitute
from gnome_loop.hull import Hull
from gnome_loop.screen import ScreenSettings, screen_shard
from gnome_loop.snapshot.prototypes import _library
from gnome_loop.structures import ChemicalSpace

#: AFLOW prototypes of intermetallics whose metal sites were given O in a real run (issue 17).
INTERMETALLICS = ("Fe7W6", "ThMn12", "Mn2Au5", "Fe4C")
OXIDE_SPACE = ["Fe", "Ni", "Ti", "Al", "W", "O"]


@pytest.fixture(scope="module")
def templates() -> list[tuple[str, Structure]]:
    found = [(key, structure) for key, structure, _ in _library() if key.rsplit("-", 1)[1] in INTERMETALLICS]
    assert sorted(key.rsplit("-", 1)[1] for key, _ in found) == sorted(INTERMETALLICS)
    return found


def _keeps_roles(parent: Structure, candidate: Structure) -> bool:
    """Site by site (generators keep the site order), the candidate's element has the role of the parent's."""
    return all(role(a.specie.symbol) == role(b.specie.symbol) for a, b in zip(parent, candidate))


def _rocksalt(cation: str, anion: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5] * 3])


def _dioxide(metal: str, oxygen_z: float) -> Structure:
    """CaC2-type (I4/mmm) MO2: a peroxide when the two O at ±z sit about 1.5 Å apart (z = 0.39)."""
    return Structure.from_spacegroup("I4/mmm", Lattice.tetragonal(3.8, 6.8), [metal, "O"],
                                     [[0, 0, 0], [0, 0, oxygen_z]])


def test_no_substitution_puts_an_anion_on_a_metal_site_of_an_intermetallic_template(templates):
    candidates = substitute(templates, OXIDE_SPACE, set(), max_elements=3, max_atoms=20)
    assert len(candidates) > 20
    by_id = dict(templates)
    for candidate in candidates:
        assert not {el.symbol for el in candidate.structure.composition} & ANIONS, candidate.info
        assert _keeps_roles(by_id[candidate.parent_ids[0]], candidate.structure)

    # SAPS takes parents inside the space: the templates on the space's metals
    metals = {"Fe": "Fe", "W": "W", "Th": "Ti", "Mn": "Ni", "Au": "Al", "C": "Al"}
    inside = [(key, Structure(s.lattice, [metals[site.specie.symbol] for site in s], s.frac_coords))
              for key, s in templates]
    partial = saps(inside, OXIDE_SPACE, set(), max_elements=3, max_atoms=20, max_per_parent=200)
    assert len(partial) > 20
    by_id = dict(inside)
    for candidate in partial:
        assert "O" not in {el.symbol for el in candidate.structure.composition}, candidate.info
        assert _keeps_roles(by_id[candidate.parent_ids[0]], candidate.structure)


def test_anions_stay_on_anion_sites_and_cations_on_cation_sites_of_ionic_parents():
    parent = _rocksalt("Na", "Cl", 5.64)
    space = ["Li", "Na", "K", "Mg", "Cl", "Br", "O"]
    for candidate in substitute([("nacl", parent)], space, set()) + saps([("nacl", parent)], space, set()):
        assert _keeps_roles(parent, candidate.structure)
    # a phosphate's P5+ is a cation site, its O an anion site: roles come from the oxidation states
    read = _parent_species(-5.0, "LiFePO4")
    assert read.roles == {"Li": "cation", "Fe": "cation", "P": "cation", "O": "anion"}


def test_a_phase_holding_an_anion_is_never_an_intermetallic():
    read = _parent_species(-5.0, "Al4O13")  # an oxide without a charge-balanced guess
    assert read.kind == "unbalanced" and read.roles == {"Al": "cation", "O": "anion"}
    assert _parent_species(-5.0, "Fe4N").kind == "unbalanced"
    assert _parent_species(-5.0, "Cu3Au").kind == "intermetallic"
    # such a parent's substitutions are checked: none without a charge-balanced guess comes out
    oxide = Structure(Lattice.cubic(6.0), ["Al"] * 4 + ["O"] * 13, np.random.default_rng(0).random((17, 3)))
    rejected = Counter()
    out = substitute([("al4o13", oxide)], ["Al", "Ti", "Fe", "Ni", "O"], set(), rejected=rejected)
    assert all(charge_problem(c.structure) is None for c in out)
    assert rejected[NOT_BALANCED] > 0


def test_implausible_compositions_are_rejected_with_their_reason_and_counted():
    assert charge_problem(_rocksalt("Mg", "O", 4.2)) is None
    assert charge_problem(Structure(Lattice.cubic(3.0), ["Cu", "Au"], [[0, 0, 0], [0.5] * 3])) is None  # no anion
    reason = charge_problem(Structure(Lattice.cubic(4.0), ["Al", "O", "O", "O"],
                                      [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]))
    assert reason.startswith(f"{NOT_BALANCED}: AlO3")

    rocksalt = _rocksalt("Na", "Cl", 5.64)  # 4 Na: Na3MgCl4 and friends are not balanced, KNa3Cl4 is
    rejected = Counter()
    candidates = saps([("nacl", rocksalt)], ["Na", "K", "Mg", "Cl"], set(), max_per_parent=100, rejected=rejected)
    swaps = {tuple(c.info["swap"]) for c in candidates}
    assert ("Na", "K") in swaps and ("Na", "Mg") not in swaps
    assert rejected[NOT_BALANCED] > 0 and set(rejected) == {NOT_BALANCED}
    assert saps([("nacl", rocksalt)], ["Na", "K", "Mg", "Cl"], set(), max_per_parent=100, charge_balanced=False,
                rejected=Counter()) != candidates  # the switch turns the rule off

    rejected = Counter()
    whole = substitute([("nacl", rocksalt.get_primitive_structure())], ["Na", "Mg", "Cl", "O"], set(),
                       rejected=rejected)
    assert {c.structure.composition.reduced_formula for c in whole} == {"MgO"}
    assert rejected[NOT_BALANCED] > 0  # MgCl, NaO: no balanced assignment of ions


def test_peroxides_pass_where_the_structure_holds_o_o_pairs():
    peroxide, spread = _dioxide("Ba", 0.39), _dioxide("Ba", 0.3)  # O–O 1.50 Å and 2.72 Å
    assert charge_problem(peroxide) is None
    assert charge_problem(spread).startswith(NOT_BALANCED)
    out = substitute([("bao2", peroxide)], ["Ba", "Sr", "Ca", "O"], set())
    assert {"SrO2", "CaO2"} <= {c.structure.composition.reduced_formula for c in out}
    assert substitute([("spread", spread)], ["Ba", "Sr", "Ca", "O"], set()) == []


def _dimers(metal: str, dimers: int, bond: float = 1.3) -> Structure:
    """One metal atom and `dimers` O2 units (O–O `bond` Å) in a 7 Å cube, far apart."""
    species, coords = [metal], [[0.0, 0.0, 0.0]]
    for k in range(dimers):
        centre = np.array([0.5, 0.5, 0.5]) + 0.25 * np.eye(3)[k] - 0.125
        species += ["O", "O"]
        coords += [centre, centre + [0.0, 0.0, bond / 7.0]]
    return Structure(Lattice.cubic(7.0), species, coords)


def test_dioxygen_anions_balance_only_the_cations_of_real_peroxides_and_superoxides():
    assert charge_problem(_dimers("K", 1)) is None  # KO2, a superoxide
    assert charge_problem(_dimers("Ba", 1, bond=1.5)) is None  # BaO2, a peroxide
    # one Li cannot balance three superoxide ions (pymatgen answers a lone element with
    # its zero state whatever the target charge: that let LiO6 through in a real run)
    assert charge_problem(_dimers("Li", 3)).startswith(NOT_BALANCED)
    # Ni2+ against two superoxides balances on paper, but no transition metal forms them
    assert charge_problem(_dimers("Ni", 2)).startswith(NOT_BALANCED)


def test_screening_counts_the_generators_rejects_in_its_funnel():
    elements = ("Na", "K", "Mg", "Cl")

    class Flat:
        def predict(self, structures):
            return np.full(len(structures), -1.0), np.full(len(structures), 0.01)

    hull = Hull([], scale="stub")
    settings = ScreenSettings(ChemicalSpace(elements, 3, 20), frozenset({"NaCl"}), keep=5, substitution=None,
                              saps={"threshold": 0.001, "max_per_parent": 100})
    result = screen_shard([("nacl", _rocksalt("Na", "Cl", 5.64))], settings, Flat(), hull)
    funnel = result.funnel
    assert funnel[f"rejected:{NOT_BALANCED}"] > 0
    assert funnel["generated"] - funnel["valid"] == sum(v for k, v in funnel.items() if k.startswith("rejected:"))


def test_charge_balance_answers_as_pymatgen_does():
    """`can_balance` is `bool(oxi_state_guesses(target_charge=...))` without its ranking:
    the same answer on random formulas of 2 to 4 elements (anions, transition metals,
    mixed valence, elements without states) and non-zero targets; fractions are refused."""
    rng = np.random.default_rng(0)
    pool = ["O", "S", "N", "F", "Cl", "H", "P", "Se", "Li", "Na", "Mg", "Ca", "Ba", "Al", "Ti", "V", "Cr", "Mn",
            "Fe", "Co", "Ni", "Cu", "Zn", "Mo", "W", "Sn", "Pb", "Bi", "La", "Ce", "Eu", "Si", "B", "C", "Ne"]
    checked = Counter()
    for _ in range(300):
        symbols = rng.choice(pool, size=rng.integers(2, 5), replace=False)
        composition = Composition({str(el): int(rng.integers(1, 6)) for el in symbols})
        for charge in (0, int(rng.integers(-4, 5))):
            expected = bool(composition.oxi_state_guesses(target_charge=charge))
            assert can_balance(composition, charge) == expected, (composition.formula, charge)
            checked[expected] += 1
    assert checked[True] > 100 and checked[False] > 100  # both answers were exercised
    with pytest.raises(ValueError, match="whole amounts"):
        can_balance(Composition("Fe0.5O"))
