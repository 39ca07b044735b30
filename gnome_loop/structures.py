"""Crystal structures as the campaign sees them: content-hash ids, JSON round trips,
validation with a reason, and duplicate detection.

Every candidate and entry is keyed by a hash of its content, so re-running a stage
after a crash inserts nothing twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from ase.data import covalent_radii
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

#: Closest allowed approach of two atoms, Å. Shorter distances mean overlapping atoms.
MIN_DISTANCE = 0.5
#: Closest allowed approach relative to the sum of covalent radii (real solids: about 0.85 and up).
MIN_BOND_RATIO = 0.5
#: Sane range of volume per atom, Å^3 (He solid ~ 30, Cs ~ 117; 2 is far below any solid).
VOLUME_PER_ATOM_RANGE = (2.0, 200.0)
#: A relaxation that changes the volume per atom by more than this factor (either way) blew up.
MAX_VOLUME_FACTOR = 3.0


class Reject(str):
    """Why a structure is refused: the text "category: detail", whose `category` (one
    word) is what round metrics and import reports count."""

    category: str
    detail: str

    def __new__(cls, category: str, detail: str) -> "Reject":
        reject = super().__new__(cls, f"{category}: {detail}")
        reject.category, reject.detail = category, detail
        return reject

    def __getnewargs__(self) -> tuple[str, str]:  # pickles (shards run on dask workers)
        return self.category, self.detail


@dataclass(frozen=True)
class ChemicalSpace:
    """The bounds a structure must fit: its elements among `elements` (kept sorted), at
    most `max_elements` of them and `max_atoms` sites. None leaves a bound open."""

    elements: tuple[str, ...] | None = None
    max_elements: int | None = None
    max_atoms: int | None = None

    def __post_init__(self) -> None:
        if self.elements is not None:
            object.__setattr__(self, "elements", tuple(sorted(set(self.elements))))

    def holds(self, symbols: Iterable[str]) -> bool:
        """True when a compound of the elements `symbols` lies in this space (whatever its size)."""
        symbols = set(symbols)
        return ((self.elements is None or symbols <= set(self.elements))
                and (self.max_elements is None or len(symbols) <= self.max_elements))

    def without(self, dropped: Iterable[str]) -> "ChemicalSpace":
        """This space less the elements `dropped`."""
        dropped = set(dropped)
        return replace(self, elements=tuple(el for el in self.elements or () if el not in dropped))


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

    @functools.cached_property
    def id(self) -> str:
        return structure_id(self.structure, prefix="c-")


def is_known_element(symbol: str) -> bool:
    """True if `symbol` names a real chemical element."""
    try:
        Element(symbol)
    except ValueError:
        return False
    return True


def unusable(structure: Structure) -> Reject | None:
    """Why nothing can use `structure` at all (no sites, NaN or infinite numbers, a cell
    without volume), or None: what a model's input must pass, before any campaign rule."""
    if len(structure) == 0:
        return Reject("empty", "the structure has no sites")
    coords = np.asarray(structure.cart_coords)
    matrix = np.asarray(structure.lattice.matrix)
    if not (np.all(np.isfinite(coords)) and np.all(np.isfinite(matrix))):
        return Reject("non-finite", "NaN or infinite coordinates or lattice")
    volume = structure.volume
    if not math.isfinite(volume) or volume <= 1e-6:
        return Reject("degenerate-cell", "the lattice has no volume")
    return None


def validate_structure(
    structure: Structure,
    space: ChemicalSpace = ChemicalSpace(),
    min_distance: float = MIN_DISTANCE,
    volume_per_atom_range: tuple[float, float] = VOLUME_PER_ATOM_RANGE,
) -> Reject | None:
    """Return why `structure` cannot be a candidate (in `space`), or None when it is fine.

    The reason's category is counted in round metrics; its text is "category: detail".
    """
    if not structure.is_ordered:
        return Reject("disordered", "partial occupancies are not supported")
    broken = unusable(structure)
    if broken is not None:
        return broken
    symbols = sorted({el.symbol for el in structure.composition.elements})
    elements, max_elements, max_atoms = space.elements, space.max_elements, space.max_atoms
    if elements is not None:
        outside = sorted(set(symbols) - set(elements))
        if outside:
            return Reject("outside-space", f"elements {','.join(outside)} are not in the chemical space")
    if max_elements is not None and len(symbols) > max_elements:
        return Reject("too-many-elements", f"{len(symbols)} > {max_elements}")
    if max_atoms is not None and len(structure) > max_atoms:
        return Reject("too-many-atoms", f"{len(structure)} > {max_atoms}")
    vpa = structure.volume / len(structure)
    low, high = volume_per_atom_range
    if not low <= vpa <= high:
        return Reject("volume", f"{vpa:.2f} Å^3/atom is outside [{low}, {high}]")
    if vpa < packing_volume(min_distance):
        return Reject("overlapping-atoms", f"{vpa:.3g} Å^3/atom packs two atoms closer than {min_distance} Å")
    radii = np.array([covalent_radius(symbol) for symbol in _symbols(structure)])
    # only pairs closer than these limits can fail them: a neighbour list that far
    first, second, distances = close_pairs(structure, max(min_distance, 2 * MIN_BOND_RATIO * radii.max()))
    dmin = distances.min(initial=np.inf)
    if dmin < min_distance:
        return Reject("overlapping-atoms", f"two atoms are {dmin:.3f} Å apart (< {min_distance} Å)")
    ratio = (distances / (radii[first] + radii[second])).min(initial=np.inf)
    if ratio < MIN_BOND_RATIO:
        return Reject("overlapping-atoms", f"two atoms are {ratio:.2f} covalent bond lengths apart "
                      f"(< {MIN_BOND_RATIO})")
    return None


#: pymatgen's cell-list neighbour search slows down for small radii (many cells): it
#: searches at least this far, Å, and the pairs beyond the radius asked for are dropped.
_MIN_SEARCH = 1.5


def packing_volume(distance: float) -> float:
    """Volume per atom (Å³) below which two atoms must be closer than `distance`: spheres
    of that diameter pack at most π/(3√2). Checked before a neighbour search, which in
    a cell this small would list millions of images."""
    return distance**3 / math.sqrt(2)


def close_pairs(structure: Structure, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(site, other site, distance) of every pair within `radius` Å, periodic images
    included: an atom and its own image, and coincident atoms too. A neighbour-list
    search, a few times cheaper than the distance matrix, for the checks that only ask
    about close contacts, and the crystal graphs' edges."""
    centers, points, _, distances = structure.get_neighbor_list(r=max(radius, _MIN_SEARCH), exclude_self=False)
    # pymatgen's own test for "within" (its exclude_self drops coincident atoms too)
    keep = ~((centers == points) & (distances < 1e-8)) & (distances**2 < radius**2 + 1e-8)
    return centers[keep], points[keep], distances[keep]


def shortest_contact(structure: Structure, radius: float) -> float:
    """`minimum_distance` where it is below `radius` Å; infinite where no atoms are that close."""
    distances = close_pairs(structure, radius)[2]
    shortest = distances.min(initial=np.inf)
    return float(shortest) if shortest < radius else math.inf


def _distances(structure: Structure) -> tuple[np.ndarray, float]:
    """Minimum-image distances between sites (infinite on the diagonal) and the
    shortest lattice translation (the distance of an atom to its own image), Å."""
    distances = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(distances, np.inf)
    return distances, float(min(structure.lattice.get_lll_reduced_lattice().abc))


def minimum_distance(structure: Structure) -> float:
    """Shortest interatomic distance, periodic images included, in Å."""
    return _minimum_distance(*_distances(structure))


def _minimum_distance(distances: np.ndarray, shortest: float) -> float:
    return float(min(distances.min(initial=np.inf), shortest))


def bond_ratio(structure: Structure) -> float:
    """Shortest distance between two atoms relative to the sum of their covalent radii.

    About 1 for bonded neighbours in real solids (NaCl 1.05, SiO2 0.91, ClO bonds
    0.87); far below means overlapping atoms.
    """
    return _bond_ratio(_symbols(structure), *_distances(structure))


def _symbols(structure: Structure) -> list[str]:
    return [site.specie.symbol for site in structure]


def _bond_ratio(symbols: Sequence[str], distances: np.ndarray, shortest: float) -> float:
    """The bond ratio of elements `symbols` on sites of these distances and shortest translation."""
    radii = np.array([covalent_radius(symbol) for symbol in symbols])
    ratios = distances / (radii[:, None] + radii[None, :])
    return float(min(ratios.min(), shortest / (2 * radii.max())))


@functools.lru_cache(maxsize=None)
def covalent_radius(symbol: str) -> float:
    return float(covalent_radii[Element(symbol).Z])


class SiteGeometry(NamedTuple):
    """A cell's lattice, positions and minimum-image distances (infinite on the diagonal)
    with its shortest translation: what every structure made by putting other species on
    its sites at another volume shares. Substitution generators make thousands from one
    parent; its distances, computed once here, scale with the cube root of the volume."""

    lattice: Lattice
    frac_coords: np.ndarray
    distances: np.ndarray
    shortest: float

    @classmethod
    def of(cls, structure: Structure) -> "SiteGeometry":
        return cls(structure.lattice, structure.frac_coords, *_distances(structure))

    def decorated(self, species: Sequence[str], volume: float, floor: float = 0.8) -> Structure:
        """Elements `species` on these sites at `volume` (Å³), scaled up isotropically where
        two atoms would sit closer than `floor` bond lengths: `expand_to_bond_ratio` of
        that structure, without computing its distances again."""
        ratio = (volume / self.lattice.volume) ** (1 / 3) * _bond_ratio(species, self.distances, self.shortest)
        if ratio < floor:
            volume *= (floor / ratio) ** 3
        return Structure(self.lattice.scale(volume), [site_species(symbol) for symbol in species], self.frac_coords)


@functools.lru_cache(maxsize=None)
def site_species(symbol: str) -> Composition:
    """An element as a site's species. pymatgen builds a Composition for every site given a
    symbol; a shared one (pymatgen never changes a Composition in place: setting a site's
    species replaces it) makes a 16-atom structure in half the time, which counts where
    generators build millions."""
    return Composition({Element(symbol): 1})


def expand_to_bond_ratio(structure: Structure, floor: float = 0.8) -> Structure:
    """Scale `structure` up isotropically, in place, until no two atoms are closer than
    `floor` bond lengths (sums of covalent radii), and return it. Guards generators
    whose volume estimate fails."""
    ratio = bond_ratio(structure)
    if ratio < floor:
        structure.scale_lattice(structure.volume * (floor / ratio) ** 3)
    return structure


def symmetry_label(structure: Structure, symprec: float = 0.01) -> str:
    """Reduced formula plus space-group number: the dedup bucket of a structure."""
    try:
        number = SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
    except Exception:  # spglib fails on pathological cells: fall back to P1
        number = 1
    return f"{structure.composition.reduced_formula}:{number}"


def default_matcher() -> StructureMatcher:
    """MatterGen's / matbench's matcher settings (ltol 0.2, stol 0.3, angle_tol 5).

    No supercells and no subsets: `DuplicateIndex` relies on it (primitive cells of
    different sizes then never match)."""
    return StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)


def find_duplicates(
    new: Sequence[tuple[str, str, Structure]],
    known: Sequence[tuple[str, str, Structure]] = (),
) -> dict[str, str]:
    """Map each duplicate id in `new` to the id it duplicates (by :func:`default_matcher`).

    Items are `(id, symmetry_label, structure)`. A structure duplicates a known one
    or an earlier one in `new` that is not itself a duplicate.
    """
    index = DuplicateIndex(known)
    duplicates: dict[str, str] = {}
    for key, label, struct in new:
        match = index.add(key, label, struct)
        if match is not None:
            duplicates[key] = match
    return duplicates


class DuplicateIndex:
    """Unique structures in buckets of equal symmetry labels (reduced formula + space
    group): a new structure is compared with `StructureMatcher` (:func:`default_matcher`)
    inside its bucket only, never over all pairs.

    Each structure is reduced (Niggli, then primitive cell) once, when its bucket first
    holds another one, and kept with it (pymatgen's own cache of reductions holds 300
    and finds them by comparing structures); primitive cells of different sizes never
    match (the matcher tries no supercells). The verdicts are the matcher's own.
    """

    def __init__(self, known: Iterable[tuple[str, str, Structure]] = ()) -> None:
        self.matcher = default_matcher()
        self.buckets: dict[str, list[tuple[str, _Reduced]]] = defaultdict(list)
        for key, label, struct in known:
            self.buckets[label].append((key, _Reduced(struct)))

    def add(self, key: str, label: str, structure: Structure) -> str | None:
        """The id of the indexed structure that `structure` duplicates, or None after
        indexing it as a new unique one."""
        bucket = self.buckets[label]
        mine = _Reduced(structure)
        for other, ref in bucket:
            if len(mine.cell) == len(ref.cell) and self.matcher.fit(mine.cell, ref.cell, skip_structure_reduction=True):
                return other
        bucket.append((key, mine))
        return None


class _Reduced:
    """A structure's Niggli-reduced primitive cell, what `StructureMatcher` compares,
    made when first asked for."""

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self._cell: Structure | None = None

    @property
    def cell(self) -> Structure:
        if self._cell is None:
            self._cell = self.structure.get_reduced_structure("niggli").get_primitive_structure()
        return self._cell
