"""Crystal structures as the campaign sees them: content-hash ids, JSON round trips,
validation with a reason, and duplicate detection.

Every candidate and entry is keyed by a hash of its content, so re-running a stage
after a crash inserts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from ase.data import covalent_radii
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

#: Closest allowed approach of two atoms, Å. Shorter distances mean overlapping atoms.
MIN_DISTANCE = 0.5
#: Closest allowed approach relative to the sum of covalent radii (real solids: about 0.85 and up).
MIN_BOND_RATIO = 0.5
#: Sane range of volume per atom, Å^3 (He solid ~ 30, Cs ~ 117; 2 is far below any solid).
VOLUME_PER_ATOM_RANGE = (2.0, 200.0)


def structure_id(structure: Structure, prefix: str = "") -> str:
    """A short, deterministic content hash of a structure.

    Species, lattice and fractional coordinates (wrapped into [0, 1) and rounded to
    1e-5) are hashed in a site order sorted by species and position, so the id does
    not depend on the order in which sites were listed.
    """
    lattice = " ".join(f"{x:.5f}" for x in np.asarray(structure.lattice.matrix).ravel())
    sites = sorted(
        f"{site.species_string} " + " ".join(f"{c % 1.0:.5f}".replace("1.00000", "0.00000") for c in site.frac_coords)
        for site in structure
    )
    digest = hashlib.sha1((lattice + "|" + "|".join(sites)).encode()).hexdigest()[:16]
    return prefix + digest


def structure_to_json(structure: Structure) -> str:
    """Serialise a structure to the JSON text stored in the campaign database."""
    return json.dumps(structure.as_dict())


def structure_from_json(text: str) -> Structure:
    """Inverse of :func:`structure_to_json`."""
    return Structure.from_dict(json.loads(text))


@dataclass(frozen=True)
class Candidate:
    """A proposed crystal: what a generator hands to the campaign."""

    structure: Structure
    generator: str
    parent_ids: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return structure_id(self.structure, prefix="c-")


def is_known_element(symbol: str) -> bool:
    """True if `symbol` names a real chemical element."""
    try:
        Element(symbol)
    except ValueError:
        return False
    return True


def validate_structure(
    structure: Structure,
    elements: Iterable[str] | None = None,
    max_atoms: int | None = None,
    max_elements: int | None = None,
    min_distance: float = MIN_DISTANCE,
    volume_per_atom_range: tuple[float, float] = VOLUME_PER_ATOM_RANGE,
) -> str | None:
    """Return why `structure` cannot be a candidate, or None when it is fine.

    Reasons are short fixed phrases (the first word is the reject category counted
    in round metrics) followed by details.
    """
    if len(structure) == 0:
        return "empty: the structure has no sites"
    if not structure.is_ordered:
        return "disordered: partial occupancies are not supported"
    coords = np.asarray(structure.cart_coords)
    matrix = np.asarray(structure.lattice.matrix)
    if not (np.all(np.isfinite(coords)) and np.all(np.isfinite(matrix))):
        return "non-finite: NaN or infinite coordinates or lattice"
    volume = structure.volume
    if not math.isfinite(volume) or volume <= 1e-6:
        return "degenerate-cell: the lattice has no volume"
    symbols = sorted({el.symbol for el in structure.composition.elements})
    if elements is not None:
        outside = sorted(set(symbols) - set(elements))
        if outside:
            return f"outside-space: elements {','.join(outside)} are not in the chemical space"
    if max_elements is not None and len(symbols) > max_elements:
        return f"too-many-elements: {len(symbols)} > {max_elements}"
    if max_atoms is not None and len(structure) > max_atoms:
        return f"too-many-atoms: {len(structure)} > {max_atoms}"
    vpa = volume / len(structure)
    low, high = volume_per_atom_range
    if not low <= vpa <= high:
        return f"volume: {vpa:.2f} Å^3/atom is outside [{low}, {high}]"
    dmin = minimum_distance(structure)
    if dmin < min_distance:
        return f"overlapping-atoms: two atoms are {dmin:.3f} Å apart (< {min_distance} Å)"
    ratio = bond_ratio(structure)
    if ratio < MIN_BOND_RATIO:
        return (f"overlapping-atoms: two atoms are {ratio:.2f} covalent bond lengths apart "
                f"(< {MIN_BOND_RATIO})")
    return None


def minimum_distance(structure: Structure) -> float:
    """Shortest interatomic distance, periodic images included, in Å."""
    shortest_translation = float(min(structure.lattice.get_lll_reduced_lattice().abc))
    if len(structure) == 1:
        return shortest_translation
    dists = np.asarray(structure.distance_matrix)
    off_diagonal = dists[~np.eye(len(structure), dtype=bool)]
    return min(float(off_diagonal.min()), shortest_translation)


def bond_ratio(structure: Structure) -> float:
    """Shortest distance between two atoms relative to the sum of their covalent radii.

    About 1 for bonded neighbours in real solids (NaCl 1.05, SiO2 0.91, ClO bonds
    0.87); far below means overlapping atoms.
    """
    if len(structure) == 1:
        return minimum_distance(structure) / (2 * covalent_radii[structure[0].specie.Z])
    radii = np.array([covalent_radii[site.specie.Z] for site in structure])
    dists = np.asarray(structure.distance_matrix) / (radii[:, None] + radii[None, :])
    np.fill_diagonal(dists, np.inf)
    self_image = min(structure.lattice.get_lll_reduced_lattice().abc) / (2 * radii.max())
    return float(min(dists.min(), self_image))


def expand_to_bond_ratio(structure: Structure, floor: float = 0.8) -> Structure:
    """A copy scaled up isotropically until no two atoms are closer than `floor` bond
    lengths (sums of covalent radii). Guards generators whose volume estimate fails."""
    ratio = bond_ratio(structure)
    scaled = structure.copy()
    if ratio < floor:
        scaled.scale_lattice(structure.volume * (floor / ratio) ** 3)
    return scaled


def symmetry_label(structure: Structure, symprec: float = 0.01) -> str:
    """Reduced formula plus space-group number: the dedup bucket of a structure."""
    try:
        number = SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
    except Exception:  # spglib fails on pathological cells: fall back to P1
        number = 1
    return f"{structure.composition.reduced_formula}:{number}"


def default_matcher() -> StructureMatcher:
    """MatterGen's / matbench's matcher settings (ltol 0.2, stol 0.3, angle_tol 5)."""
    return StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)


def find_duplicates(
    new: Sequence[tuple[str, str, Structure]],
    known: Sequence[tuple[str, str, Structure]] = (),
    matcher: StructureMatcher | None = None,
) -> dict[str, str]:
    """Map each duplicate id in `new` to the id it duplicates.

    Items are `(id, symmetry_label, structure)`. A structure duplicates a known one
    or an earlier one in `new`. `StructureMatcher` only runs inside a bucket of equal
    labels (reduced formula + space group), never over all pairs.
    """
    matcher = matcher or default_matcher()
    buckets: dict[str, list[tuple[str, Structure]]] = defaultdict(list)
    for key, label, struct in known:
        buckets[label].append((key, struct))
    duplicates: dict[str, str] = {}
    for key, label, struct in new:
        bucket = buckets[label]
        match = next((other for other, ref in bucket if matcher.fit(struct, ref)), None)
        if match is not None:
            duplicates[key] = match
        else:
            bucket.append((key, struct))
    return duplicates
