"""Structure ids, validation reasons, squeezed-cell repair and bucketed dedup."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gnome_loop.structures import (
    SiteGeometry,
    bond_ratio,
    expand_to_bond_ratio,
    find_duplicates,
    structure_id,
    symmetry_label,
    ChemicalSpace,
    MIN_BOND_RATIO,
    MIN_DISTANCE,
    minimum_distance,
    shortest_contact,
    validate_structure,
)


def rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_id_ignores_site_order_and_wrapping():
    s = rocksalt()
    shuffled = Structure(s.lattice, list(reversed(s.species)), list(reversed(s.frac_coords + 1.0)))
    assert structure_id(s) == structure_id(shuffled)
    moved = s.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert structure_id(s) != structure_id(moved)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: Structure(Lattice.cubic(3), [], []), "empty"),
        (lambda: Structure(Lattice.cubic(4), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]), "disordered"),
        (lambda: Structure(Lattice.cubic(4), ["Cu", "Cu"], [[0, 0, 0], [np.nan, 0.5, 0.5]]), "non-finite"),
        (lambda: rocksalt(), "outside-space"),
        (lambda: Structure(Lattice.cubic(40), ["Cu"], [[0, 0, 0]]), "volume"),
        (lambda: Structure(Lattice.cubic(5), ["Cu", "Cu"], [[0, 0, 0], [0.05, 0, 0]]), "overlapping-atoms"),
        (lambda: rocksalt(2.6), "overlapping-atoms"),  # 1.3 Å Na-Cl: 0.48 bond lengths
    ],
)
def test_validation_gives_the_reason(make, reason):
    elements = None if reason != "outside-space" else ["Na", "K"]
    assert validate_structure(make(), ChemicalSpace(elements)).split(":")[0] == reason


def test_limits_on_atoms_and_elements():
    s = rocksalt()
    assert validate_structure(s, ChemicalSpace(max_atoms=4)).startswith("too-many-atoms")
    assert validate_structure(s, ChemicalSpace(max_elements=1)).startswith("too-many-elements")
    assert validate_structure(s, ChemicalSpace(("Na", "Cl"), 2, 8)) is None


def test_squeezed_cells_are_expanded_to_a_sane_bond_length():
    squeezed = rocksalt(3.2)
    assert bond_ratio(squeezed) < 0.8
    fixed = expand_to_bond_ratio(squeezed)
    assert bond_ratio(fixed) == pytest.approx(0.8)
    assert expand_to_bond_ratio(rocksalt()).volume == pytest.approx(rocksalt().volume)


def test_duplicates_found_inside_buckets_only():
    base = rocksalt()
    supercell = base * (2, 1, 1)
    shifted = base.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.1, 0.2, 0.3])
    other = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    items = [(key, symmetry_label(s), s) for key, s in
             [("super", supercell), ("shifted", shifted), ("cscl", other), ("again", base.copy())]]
    known = [("known", symmetry_label(base), base)]
    assert find_duplicates(items, known) == {"super": "known", "shifted": "known", "again": "known"}
    assert symmetry_label(other) != symmetry_label(base)


@pytest.mark.parametrize("species, volume", [(["Na"] * 4 + ["Cl"] * 4, 150.0), (["K"] * 4 + ["Br"] * 4, 60.0),
                                             (["Li", "Na", "K", "Rb"] + ["Cl"] * 4, 30.0)])
def test_decorating_a_geometry_is_substituting_then_expanding(species, volume):
    """`SiteGeometry.decorated` (a parent's distances computed once, then scaled) gives
    the structure that putting the species on the sites, scaling to the volume and
    `expand_to_bond_ratio` give, squeezed or not."""
    parent = rocksalt()
    by_hand = Structure(parent.lattice, species, parent.frac_coords)
    by_hand.scale_lattice(volume)
    by_hand = expand_to_bond_ratio(by_hand)
    made = SiteGeometry.of(parent).decorated(species, volume)
    assert structure_id(made) == structure_id(by_hand)
    assert made.volume == pytest.approx(by_hand.volume, rel=1e-12)
    assert bond_ratio(made) >= 0.8 - 1e-9


def _random_cells(count: int, seed: int = 0) -> list[Structure]:
    """Skewed random cells of 1-8 atoms of mixed sizes, packed from loose to overlapping."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 9))
        lengths, angles = rng.uniform(2.0, 7.0, 3), rng.uniform(55, 125, 3)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except ValueError:
            continue
        if not np.isfinite(lattice.volume) or lattice.volume < 1.0:
            continue
        out.append(Structure(lattice, list(rng.choice(["H", "O", "Na", "Cs", "Fe"], n)), rng.random((n, 3))))
    return out


def test_the_contact_checks_agree_with_the_whole_distance_matrix():
    """Validation and the models' input checks search neighbour lists for close contacts;
    on random skewed cells they reach the verdicts (and the reported distance) of the
    whole distance matrix and the exact bond ratio."""
    verdicts = []
    for structure in _random_cells(300):
        shortest, ratio = minimum_distance(structure), bond_ratio(structure)
        contact = shortest_contact(structure, MIN_DISTANCE)
        assert (contact < MIN_DISTANCE) == (shortest < MIN_DISTANCE)
        if shortest < MIN_DISTANCE:
            assert contact == pytest.approx(shortest, abs=1e-6)
        reason = validate_structure(structure, volume_per_atom_range=(0.0, np.inf))
        overlapping = reason is not None and reason.category == "overlapping-atoms"
        assert overlapping == (shortest < MIN_DISTANCE or ratio < MIN_BOND_RATIO), (structure, reason)
        if overlapping and shortest >= MIN_DISTANCE:
            assert f"{ratio:.2f} covalent bond lengths" in reason
        verdicts.append(overlapping)
    assert 0.1 < np.mean(verdicts) < 0.9  # both verdicts are exercised


def test_coincident_atoms_are_overlapping():
    two = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0.2, 0.2, 0.2], [0.2, 0.2, 0.2]])
    assert validate_structure(two).category == "overlapping-atoms"
    assert shortest_contact(two, MIN_DISTANCE) == 0.0


def test_a_collapsed_cell_is_overlapping_without_a_neighbour_search():
    """Below the sphere-packing bound two atoms must be closer than the limit; the check
    comes before a neighbour search that would list millions of images."""
    collapsed = Structure(Lattice.cubic(0.01), ["Na"], [[0, 0, 0]])
    reason = validate_structure(collapsed, volume_per_atom_range=(0.0, np.inf))
    assert reason.category == "overlapping-atoms" and "packs two atoms closer" in reason
