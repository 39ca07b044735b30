"""Symmetry-aware partial substitution (SAPS, Merchant et al. 2023)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gnome_loop.generate.saps import distinct_subsets, partial_substitutions, saps, site_permutations
from gnome_loop.generate.substitution import substitution_model
from tests.helpers import layered_licoo2, spinel_mgal2o4

SPACE = ["Li", "Na", "K", "Mg", "Zn", "Al", "Ga", "Co", "Ni", "O", "S", "F", "Cl", "Br"]


# Lattice parameters from experiment, in the space-group settings pymatgen's
# from_spacegroup uses.
def _rocksalt() -> Structure:
    """NaCl, Fm-3m, a = 5.640 Å; conventional cell, 8 atoms."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.640), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def rocksalt() -> Structure:
    return _rocksalt()


def _cell_matcher() -> StructureMatcher:
    """Equivalence of two orderings of one cell: a lattice-preserving isometry that
    maps one onto the other. No reduction to primitive cells (that would also merge
    orderings related by parent operations that do not keep the cell) and no
    rescaling or supercell search."""
    return StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)


def _brute_force_counts(structure: Structure, old: str, new: str) -> dict[int, int]:
    """Number of distinct structures per k among all C(n, k) replacements, by
    grouping with StructureMatcher (independent of the symmetry operations)."""
    sites = [i for i, site in enumerate(structure) if site.specie.symbol == old]
    matcher = _cell_matcher()
    counts = {}
    for k in range(1, len(sites)):
        built = []
        for chosen in itertools.combinations(sites, k):
            swapped = structure.copy()
            for i in chosen:
                swapped.replace(i, new)
            built.append(swapped)
        counts[k] = len(matcher.group_structures(built))
    return counts


CASES = {
    # name: (structure factory, supercell, old, new, expected counts per k)
    "spinel-Al": (spinel_mgal2o4, None, "Al", "Ga", {1: 1, 2: 1, 3: 1}),
    "spinel-O": (spinel_mgal2o4, None, "O", "S", None),
    "layered-O": (layered_licoo2, None, "O", "F", None),
    "layered-2x1x1-Co": (layered_licoo2, (2, 1, 1), "Co", "Ni", None),
    "rocksalt-conventional": (_rocksalt, None, "Na", "K", {1: 1, 2: 1, 3: 1}),
    "rocksalt-2x2x2-primitive": (lambda: _rocksalt().get_primitive_structure(), 2, "Na", "K", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_counts_per_k_match_brute_force(name):
    factory, supercell, old, new, expected = CASES[name]
    parent = factory()
    cell = parent * supercell if supercell is not None else parent
    outputs = partial_substitutions(parent, old, new, supercell=supercell)
    ours = Counter(k for k, _ in outputs)
    brute = _brute_force_counts(cell, old, new)
    print(name, dict(sorted(ours.items())))
    assert dict(ours) == brute
    if expected is not None:
        assert brute == expected

    # every output is the parent cell with k sites swapped, and no two are equivalent
    matcher = _cell_matcher()
    for k in brute:
        same_k = [structure for kk, structure in outputs if kk == k]
        for structure in same_k:
            assert len(structure) == len(cell)
            assert structure.composition[new] == k and structure.composition[old] == cell.composition[old] - k
            assert np.allclose(structure.lattice.matrix, cell.lattice.matrix)
        assert not any(matcher.fit(a, b) for a, b in itertools.combinations(same_k, 2))


def test_full_substitution_only_on_request(layered):
    partial = partial_substitutions(layered, "Co", "Ni")
    full = partial_substitutions(layered, "Co", "Ni", include_full=True)
    assert {k for k, _ in partial} == {1, 2}
    assert full[: len(partial)] == partial and [k for k, _ in full[len(partial):]] == [3]
    assert full[-1][1].composition.reduced_formula == "LiNiO2"


def test_supercell_is_skipped_beyond_max_atoms(rocksalt):
    primitive = rocksalt.get_primitive_structure()
    assert partial_substitutions(primitive, "Na", "K") == []  # one Na site: nothing partial
    doubled = partial_substitutions(primitive, "Na", "K", supercell=2, max_atoms=16)
    assert [k for k, _ in doubled] == [1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 6, 6, 7]
    assert partial_substitutions(primitive, "Na", "K", supercell=2, max_atoms=15) == []
    assert partial_substitutions(rocksalt, "Na", "K", max_atoms=7) == []
    capped = partial_substitutions(primitive, "Na", "K", supercell=2, max_configurations=1)
    assert [k for k, _ in capped] == list(range(1, 8))


def test_site_permutations_form_a_group(spinel, layered, rocksalt):
    rng = np.random.default_rng(0)
    for structure in (spinel, layered * (2, 1, 1), rocksalt.get_primitive_structure() * 2):
        perms = site_permutations(structure)
        n = len(structure)
        assert perms.shape[1] == n and len(np.unique(perms, axis=0)) == len(perms)
        assert np.all(np.sort(perms, axis=1) == np.arange(n))  # each row a permutation
        assert any(np.array_equal(row, np.arange(n)) for row in perms)
        species = np.array([site.species_string for site in structure])
        assert all(np.array_equal(species[row], species) for row in perms)  # species kept
        rows = {tuple(row) for row in perms}
        for _ in range(200):
            first, second = perms[rng.integers(len(perms), size=2)]
            assert tuple(first[second]) in rows  # closed under composition
            assert tuple(np.argsort(first)) in rows  # and under inversion
    # spglib's operations of a supercell include the pure lattice translations
    assert len(site_permutations(rocksalt.get_primitive_structure() * 2)) == 48 * 8
    # the 2a × b cell keeps 4 rotations of -3m and 6 translations (3 centring × 2); on
    # these sites, all on the 3-fold axes, the 24 operations act as 12 permutations
    assert len(SpacegroupAnalyzer(layered * (2, 1, 1)).get_symmetry_operations()) == 24
    assert len(site_permutations(layered * (2, 1, 1))) == 12


def test_distinct_subsets_match_brute_force_canonical_forms(spinel):
    """On the conventional spinel cell (16 Al sites, 192 ops): level-by-level orbit
    enumeration equals canonicalising every subset."""
    conventional = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(8.083), ["Mg", "Al", "O"], [[0, 0, 0], [0.625] * 3, [0.387] * 3]
    )
    perms = site_permutations(conventional)
    sites = [i for i, site in enumerate(conventional) if site.specie.symbol == "Al"]
    for k in range(0, 5):
        brute = set()
        for subset in itertools.combinations(sites, k):
            images = np.sort(perms[:, list(subset)], axis=1)
            brute.add(min(tuple(int(v) for v in row) for row in images))
        reps = distinct_subsets(sites, k, perms)
        assert reps == sorted(brute)
        limited = distinct_subsets(sites, k, perms, limit=2)
        assert len(limited) == min(2, len(brute)) and set(limited) <= brute
    assert distinct_subsets(sites, len(sites), perms) == [tuple(sites)]
    assert distinct_subsets(sites, len(sites) + 1, perms) == []


def test_distinct_subsets_without_symmetry_gives_all_subsets():
    identity = np.arange(6)[None, :]
    assert distinct_subsets([1, 3, 5], 2, identity) == [(1, 3), (1, 5), (3, 5)]


def _check_campaign_rules(candidates, known, max_elements, max_atoms, threshold, space):
    for candidate in candidates:
        composition = candidate.structure.composition
        symbols = {el.symbol for el in composition.elements}
        old, new = candidate.info["swap"]
        assert candidate.generator == "saps" and len(candidate.parent_ids) == 1
        assert symbols <= set(space) and len(symbols) <= max_elements
        assert composition.reduced_formula not in known
        assert len(candidate.structure) <= max_atoms
        assert candidate.info["probability"] >= threshold and old != new
        assert {old, new} <= symbols  # partial: both ends of the swap are present
        assert candidate.info["probability"] <= 1.0
        assert 1 <= candidate.info["k"] and composition[new] >= candidate.info["k"]


@pytest.fixture(scope="module")
def parents(rocksalt, spinel, layered):
    return [("nacl", rocksalt), ("spinel", spinel), ("licoo2", layered)]


@pytest.fixture(scope="module")
def campaign(parents):
    known = {"NaCl", "MgAl2O4", "LiCoO2", "LiNiO2", "KNa3Cl4"}
    return known, saps(parents, SPACE, known, max_per_parent=1000)


def test_saps_respects_the_campaign_rules(parents, campaign):
    known, candidates = campaign
    assert len(candidates) > 20
    _check_campaign_rules(candidates, known, max_elements=3, max_atoms=20, threshold=1e-3, space=SPACE)
    assert len({c.id for c in candidates}) == len(candidates)
    ranks = [(-c.info["probability"], c.id) for c in candidates]
    assert ranks == sorted(ranks)
    swaps = {tuple(c.info["swap"]) for c in candidates}
    assert {("Na", "K"), ("Cl", "Br"), ("Li", "Co")} <= swaps
    # spinel and LiCoO2 have three elements already: only swaps among them fit max_elements 3;
    # in the spinel those (Mg2+ <-> Al3+ on some sites) are never charge balanced
    assert all(set(c.info["swap"]) <= {"Li", "Co", "O"} for c in candidates if c.parent_ids == ("licoo2",))
    assert not [c for c in candidates if c.parent_ids == ("spinel",)]
    formulas = {c.structure.composition.reduced_formula for c in candidates}
    assert "KNa3Cl4" not in formulas and "KNaCl2" in formulas
    wider = saps(parents, SPACE, known, max_elements=4, max_per_parent=1000)
    assert ("Co", "Ni") in {tuple(c.info["swap"]) for c in wider}
    _check_campaign_rules(wider, known, max_elements=4, max_atoms=20, threshold=1e-3, space=SPACE)


def test_saps_probabilities_and_volumes(campaign, rocksalt):
    _, candidates = campaign
    model = substitution_model(-5.0)  # the cached instance saps uses
    by_swap = {}
    for c in candidates:
        if c.parent_ids == ("nacl",):
            by_swap.setdefault(tuple(c.info["swap"]), []).append(c)
    # Na+ → K+: P(K+ | Na+), one per distinct k-subset of the 4 Na sites (k = 1, 2, 3 except the known KNa3Cl4)
    to_k = by_swap[("Na", "K")]
    assert [c.info["probability"] for c in to_k] == pytest.approx([model.cond_prob("K+", "Na+")] * len(to_k))
    assert sorted(c.info["k"] for c in to_k) == [2, 3]
    volumes = {c.info["k"]: c.structure.volume for c in to_k}
    assert rocksalt.volume < volumes[2] < volumes[3]  # K+ is larger than Na+
    assert all(c.structure.volume < rocksalt.volume for c in by_swap[("Na", "Li")])


def test_saps_limits_and_determinism(parents, campaign):
    known, candidates = campaign
    again = saps(parents, SPACE, known, max_per_parent=1000)
    assert [c.id for c in again] == [c.id for c in candidates]
    assert [c.info for c in again] == [c.info for c in candidates]

    capped = saps(parents, SPACE, known, max_per_parent=4)
    per_parent = Counter(c.parent_ids for c in capped)
    assert max(per_parent.values()) <= 4 and len(per_parent) == 2  # the spinel gives none (see above)
    for parent in per_parent:  # the most likely ones of each parent are kept
        full = sorted((c.info["probability"] for c in candidates if c.parent_ids == parent), reverse=True)
        kept = sorted((c.info["probability"] for c in capped if c.parent_ids == parent), reverse=True)
        assert kept == pytest.approx(full[: len(kept)])
    assert len(saps(parents, SPACE, known, max_candidates=7)) == 7

    strict = saps(parents, SPACE, known, threshold=0.05, max_per_parent=1000)
    assert 0 < len(strict) < len(candidates) and {c.id for c in strict} <= {c.id for c in candidates}
    assert all(c.info["probability"] >= 0.05 for c in strict)

    # within two elements the NaCl parent could only swap Na and Cl for each other: an anion
    # on a cation's site and the reverse, never proposed
    assert saps(parents, SPACE, known, max_elements=2, max_per_parent=1000) == []

    small = saps(parents, SPACE, known, max_atoms=10, max_per_parent=1000)  # 12- and 14-atom parents skipped
    assert small and {c.parent_ids for c in small} == {("nacl",)}


def test_saps_ranks_alike_in_every_process():
    """Two worker processes (other string hashing) give the same candidates in the same
    order with the same probabilities to the last bit: pymatgen's substitution marginals
    summed in set order did not, and near-ties then ranked apart."""
    script = (
        "import json, sys\n"
        "from tests.helpers import layered_licoo2\n"
        "from gnome_loop.generate.saps import saps\n"
        "found = saps([('licoo2', layered_licoo2())], ['Li', 'Na', 'Co', 'Ni', 'Mn', 'Fe', 'O'], set(), "
        "max_elements=4, max_per_parent=300)\n"
        "json.dump([[c.id, c.info['probability']] for c in found], sys.stdout)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")]
    assert len(json.loads(runs[0])) > 10
    assert runs[0] == runs[1]


def test_saps_holds_a_bounded_pool_per_parent(monkeypatch, rocksalt):
    """A parent with many sites of one species has many orderings per swap: the pool of a
    parent is cut back to the best `max_per_parent` whenever it doubles (memory stays
    bounded), and the outcome is that of ranking every ordering at the end."""
    import gnome_loop.generate.saps as module

    pools = []

    def spy(pool, n):
        pools.append(dict(pool))
        return best(pool, n)

    best = module._best
    monkeypatch.setattr(module, "_best", spy)
    parent = rocksalt * (2, 1, 1)  # 8 Na sites: up to 3 orderings on each of 7 levels a swap
    kept = saps([("big", parent)], SPACE, set(), max_per_parent=3)
    assert len(pools) > 1 and max(len(pool) for pool in pools) <= 6  # cut back as it ran
    seen = {}
    for pool in pools:
        for key, (probability, _) in pool.items():
            seen[key] = max(probability, seen.get(key, 0.0))
    expected = sorted(seen, key=lambda key: (-seen[key], key))[:3]
    assert [c.id for c in kept] == expected


def test_saps_skips_parents_it_cannot_use(rocksalt, layered):
    disordered = rocksalt.copy()
    disordered.replace(0, {"Na": 0.5, "K": 0.5})
    assert saps([("x", disordered)], SPACE, set()) == []
    assert saps([("licoo2", layered)], [el for el in SPACE if el != "Li"], set()) == []  # Li outside the space
    primitive = rocksalt.get_primitive_structure()
    assert saps([("p", primitive)], SPACE, set()) == []  # one Na, one Cl: nothing partial
    doubled = saps([("p", primitive)], SPACE, set(), supercell=(2, 1, 1))
    assert doubled and all(len(c.structure) == 4 and c.info["k"] == 1 for c in doubled)
    assert saps([("p", primitive)], SPACE, set(), supercell=(2, 1, 1), max_atoms=3) == []
