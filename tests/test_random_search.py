"""Random structure search (AIRSS with pyxtal) and the soft-sphere pre-relaxation."""

import functools

import numpy as np
import pytest
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pyxtal.symmetry import Group

from gnome_loop.generate.random_search import (
    MIN_BOND_RATIO,
    RandomSearchError,
    compatible_space_groups,
    random_search,
    random_structures,
)
from gnome_loop.generate.soft_sphere import SoftSphereCalculator, soft_sphere_relax
from gnome_loop.structures import ChemicalSpace, bond_ratio, minimum_distance, validate_structure


@functools.lru_cache(maxsize=None)
def _maximal_subgroups(number: int) -> frozenset[int]:
    return frozenset(Group(number).get_max_subgroup_numbers())


def _subgroups(number: int) -> set[int]:
    """Every space-group type reachable from `number` by maximal subgroups (pyxtal's tables)."""
    seen, todo = {number}, [number]
    while todo:
        for sub in _maximal_subgroups(todo.pop()):
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return seen


def _check(candidate, formula: str) -> None:
    structure, info = candidate.structure, candidate.info
    assert candidate.generator == "random"
    assert structure.composition.reduced_formula == formula
    assert len(structure) == info["formula_units"] * Composition(formula).num_atoms
    assert validate_structure(structure, ChemicalSpace(max_atoms=20)) is None
    assert bond_ratio(structure) >= MIN_BOND_RATIO - 1e-6
    assert info["space_group"] in _subgroups(info["detected_space_group"])


def test_compatible_space_groups_follow_the_wyckoff_multiplicities():
    one = compatible_space_groups("NaCl", 1)
    assert {1, 221, 225} <= set(one)  # rock salt: Fm-3m 4a + 4b in the conventional cell
    assert 227 not in one  # Fd-3m has no 4-fold position pair for one primitive NaCl
    assert compatible_space_groups("NaCl", 1) == one
    assert compatible_space_groups("Li2O5", 1, space_groups=[221, 225, 229]) == []
    assert compatible_space_groups("Li2O5", 2, space_groups=[221, 225, 229]) == [221, 229]


def test_random_structures_have_the_composition_symmetry_and_separation():
    stats = {}
    candidates = random_structures("LiCoO2", 4, seed=0, stats=stats)
    assert len(candidates) == 4 and stats["stopped"] == "done"
    assert len({c.id for c in candidates}) == 4
    for candidate in candidates:
        _check(candidate, "LiCoO2")
        assert 0.9 <= candidate.info["volume_factor"] <= 1.3

    rocksalts = random_structures("NaCl", 2, space_groups=[225], formula_units=[1], seed=1)
    for candidate in rocksalts:
        _check(candidate, "NaCl")
        assert candidate.info["space_group"] == candidate.info["detected_space_group"] == 225
        assert len(candidate.structure) == 2  # the primitive cell, not the conventional one


def test_impossible_requests_fail_at_once_with_the_reason():
    stats = {}
    with pytest.raises(RandomSearchError, match=r"Li2O5 .*fits no Wyckoff positions of space groups \[225\]"):
        random_structures("Li2O5", 3, formula_units=[1], space_groups=[225], stats=stats)
    assert stats.get("attempts", 0) == 0  # refused from the Wyckoff tables, before any attempt
    with pytest.raises(RandomSearchError, match="more than max_atoms=20"):
        random_structures("Li10O11", 1)
    with pytest.raises(RandomSearchError, match="no formula units in \\[4\\] fit"):
        random_structures("LiCoO2", 1, formula_units=[4], max_atoms=12)
    with pytest.raises(RandomSearchError, match="not an integer formula"):
        random_structures("Li0.5O", 1)
    with pytest.raises(RandomSearchError, match="not elements"):
        random_structures("Xx2", 1)
    with pytest.raises(RandomSearchError, match="1-230"):
        random_structures("NaCl", 1, space_groups=[231])
    with pytest.raises(RandomSearchError, match="stopped: time-limit"):
        random_structures("NaCl", 2, time_limit=0.0)


def test_search_stops_at_the_attempt_limit_and_returns_what_it_has():
    stats = {}
    candidates = random_structures("NaCl", 5, space_groups=[225], formula_units=[1], max_attempts=2, stats=stats)
    assert 1 <= len(candidates) <= 2
    assert stats["attempts"] == 2 and stats["stopped"] == "max-attempts"


def test_same_seed_same_structures():
    def ids(seed):
        return [c.id for c in random_structures("Li2O", 3, seed=seed)]

    first = ids(7)
    assert ids(7) == first
    assert ids(8) != first


def test_soft_sphere_forces_and_stress_are_derivatives_of_the_energy():
    structure = Structure(Lattice.cubic(3.2), ["Na", "Cl", "Na"], [[0, 0, 0], [0.4, 0.1, 0], [0.5, 0.55, 0.45]])
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = SoftSphereCalculator()
    assert atoms.get_potential_energy() > 0
    assert np.allclose(atoms.get_forces(), calculate_numerical_forces(atoms, 1e-5), atol=1e-6)
    assert np.allclose(atoms.get_stress(), calculate_numerical_stress(atoms, 1e-6), atol=1e-6)


def test_soft_sphere_relax_pushes_overlapping_atoms_apart():
    squeezed = Structure(Lattice.cubic(6.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0.02, 0]])
    relaxed = soft_sphere_relax(squeezed, steps=100)
    assert minimum_distance(squeezed) < 0.7
    assert minimum_distance(relaxed) > minimum_distance(squeezed) + 1.0
    assert bond_ratio(relaxed) > 0.95
    assert relaxed.lattice == squeezed.lattice and relaxed.species == squeezed.species

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    compressed = rocksalt.get_primitive_structure()
    # a few steps only: each FrechetCellFilter step costs scipy matrix exponentials
    expanded = soft_sphere_relax(compressed, steps=5, relax_cell=True)
    assert expanded.volume > 1.05 * compressed.volume
    assert bond_ratio(expanded) > bond_ratio(compressed)


def test_random_structures_can_be_pre_relaxed():
    plain = random_structures("MgO", 4, seed=3)
    relaxed = random_structures("MgO", 4, seed=3, relax="soft-sphere")  # same draws, then relaxed
    assert len(relaxed) == 4
    ratios = [(bond_ratio(a.structure), bond_ratio(b.structure)) for a, b in zip(plain, relaxed)]
    # soft spheres relieve the overlaps as a whole: the closest pair may move in a hair
    assert all(after >= before - 1e-3 for before, after in ratios)
    assert any(after > before + 0.05 for before, after in ratios)
    for candidate in relaxed:
        assert candidate.info["relaxed"] is True
        assert candidate.structure.composition.reduced_formula == "MgO"
        assert validate_structure(candidate.structure) is None
    with pytest.raises(RandomSearchError, match="unknown relaxation"):
        random_structures("MgO", 1, relax="lennard-jones")


def test_campaign_search_skips_what_it_cannot_build():
    stats = {}
    candidates = random_search(["NaCl", "Li2O", "KBr", "Li2O5"], 2, elements=["Na", "Cl", "Li", "O"], seed=5,
                               stats=stats, space_groups=[221, 225, 229], formula_units=[1])
    formulas = sorted(c.structure.composition.reduced_formula for c in candidates)
    assert formulas == ["Li2O", "Li2O", "NaCl", "NaCl"]
    assert "outside the chemical space" in stats["KBr"]["error"]
    assert "fits no Wyckoff positions" in stats["Li2O5"]["error"]
    assert stats["NaCl"]["generated"] == 2
    # a composition's seed depends on the formula, not on its place in the list
    alone = random_search(["Li2O"], 2, seed=5, space_groups=[221, 225, 229], formula_units=[1])
    assert {c.id for c in alone} == {c.id for c in candidates if c.structure.composition.reduced_formula == "Li2O"}
