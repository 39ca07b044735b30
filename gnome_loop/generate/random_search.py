"""Random structure search (AIRSS) for compositions that have no parent structure.

Ab initio random structure searching (Pickard & Needs, J. Phys.: Condens. Matter 23,
053201 (2011)) draws a symmetry, a cell and positions at random under a
minimum-separation constraint and leaves the rest to relaxation. GNoME's composition
pipeline (Merchant et al., Nature 624, 80 (2023), Methods) seeded each promising
formula with random AIRSS structures in this way. Here the sampling is done by pyxtal
(Fredericks et al., Comput. Phys. Commun. 261, 107810 (2021)):

* a (space group, formula units) pair is drawn uniformly from those whose Wyckoff
  multiplicities can hold the atom counts (`compatible_space_groups`);
* pyxtal builds the conventional cell in that group: for each lattice it draws a
  volume between the summed covalent-sphere and van der Waals-sphere volumes,
  scaled by a random `volume_factor`, and places atoms on Wyckoff positions no
  closer than `min_bond_ratio` × (sum of covalent radii, ASE's table, the one
  `gnome_loop.structures.bond_ratio` uses);
* the cell is reduced to its primitive cell, which must hold exactly z formula units:
  a structure with extra translational symmetry (a supercell of a smaller one, which
  fixed Wyckoff positions can produce) is rejected, so the atom count is always
  z × (atoms of the reduced formula) and `formula_units` counts primitive cells.

A structure generated in group G has every operation of G (checked explicitly on the
conventional cell, see `_has_group_symmetry`), but it may have more: spglib may find
a supergroup, above all at the loose tolerance of the dedup buckets
(`gnome_loop.structures.symmetry_label`, symprec 0.1). Candidates record both the
group they were drawn in ("space_group") and the detected one ("detected_space_group").

pyxtal draws every random number from the numpy Generator handed to it, so results
depend only on `seed` (and on how far the time limit lets the search go).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import warnings
from collections import Counter
from typing import Callable, Sequence

import numpy as np
from ase.calculators.calculator import Calculator
from ase.data import covalent_radii
from pymatgen.core import Composition, Element, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pyxtal.crystal import random_crystal
from pyxtal.symmetry import Group
from pyxtal.tolerance import Tol_matrix

from gnome_loop.generate.soft_sphere import relax_structure, soft_sphere_relax
from gnome_loop.structures import Candidate, ChemicalSpace, Reject, bond_ratio, is_known_element, validate_structure

log = logging.getLogger(__name__)

#: Formula units per primitive cell tried by default (those within `max_atoms`).
DEFAULT_FORMULA_UNITS = (1, 2, 3, 4)
#: Closest approach of two generated atoms, in sums of covalent radii. pyxtal's own
#: default is 0.5 (with its radii); AIRSS uses minimum separations near typical bond
#: lengths. 0.7 leaves room for relaxation and clears `validate_structure` (0.5).
MIN_BOND_RATIO = 0.7
#: Tolerance of spglib for the recorded symmetry (that of `symmetry_label`).
SYMPREC = 0.1
#: Lattices and position draws per lattice of one pyxtal attempt (pyxtal itself uses
#: 40 × 10, which makes a hopeless group cost seconds; fewer, cheaper attempts over
#: many random groups find structures sooner and keep the time limit honest).
LATTICE_ATTEMPTS = 8
COORD_ATTEMPTS = 5
#: Distance (Å) within which a symmetry image must land on an atom of its species.
SYMMETRY_TOLERANCE = 1e-3


class RandomSearchError(ValueError):
    """A random structure search that cannot produce anything, with the reason."""


# --- space groups ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _group(number: int) -> Group:
    return Group(number)


@functools.lru_cache(maxsize=65536)
def _compatible(number: int, counts: tuple[int, ...]) -> bool:
    """Whether the Wyckoff positions of a group can hold these atom counts (sorted)."""
    compatible, _has_freedom = _group(number).check_compatible(list(counts))
    return bool(compatible)


def _integer_formula(composition: Composition | str) -> tuple[Composition, tuple[str, ...], tuple[int, ...]]:
    """The reduced composition, its element symbols (alphabetical) and integer counts."""
    try:
        composition = Composition(composition)
    except Exception as error:  # pymatgen raises several types on bad formulas
        raise RandomSearchError(f"{composition!r} is not a chemical formula: {error}") from error
    if composition.num_atoms == 0:
        raise RandomSearchError("the composition is empty")
    unknown = sorted({str(el) for el in composition.elements if not is_known_element(getattr(el, "symbol", ""))})
    if unknown:
        raise RandomSearchError(f"{composition.formula} has species that are not elements: {', '.join(unknown)}")
    if any(amount < 0 for amount in composition.values()):
        raise RandomSearchError(f"{composition.formula} has a negative amount")
    reduced, _ = composition.element_composition.get_reduced_composition_and_factor()
    symbols = tuple(sorted(el.symbol for el in reduced.elements))
    counts = tuple(reduced[symbol] for symbol in symbols)
    if any(abs(c - round(c)) > 1e-8 for c in counts):
        raise RandomSearchError(f"{composition.formula} is not an integer formula (ordered crystals only)")
    return reduced, symbols, tuple(int(round(c)) for c in counts)


def compatible_space_groups(
    composition: Composition | str, formula_units: int, space_groups: Sequence[int] | None = None
) -> list[int]:
    """Space groups (of 1–230, or of `space_groups`) in which a primitive cell of
    `formula_units` formula units of `composition` can be built.

    A centred group's conventional cell holds `cellsize` primitive cells (2 for A, C,
    I; 3 for R in hexagonal axes; 4 for F), so its Wyckoff multiplicities must add
    up to z × cellsize × the atom counts (pyxtal's `Group.check_compatible`). Groups
    whose solution puts every atom on a fixed Wyckoff position (no free coordinate:
    rock salt in Fm-3m) are kept; there only the lattice is random. Results are cached
    per count tuple and group.
    """
    _, _, counts = _integer_formula(composition)
    if formula_units < 1:
        raise RandomSearchError(f"formula_units must be at least 1, not {formula_units}")
    numbers = range(1, 231) if space_groups is None else _checked_groups(space_groups)
    return [
        number
        for number in numbers
        if _compatible(number, tuple(sorted(c * formula_units * _group(number).cellsize() for c in counts)))
    ]


def _checked_groups(space_groups: Sequence[int]) -> list[int]:
    numbers = sorted({int(number) for number in space_groups})
    bad = [number for number in numbers if not 1 <= number <= 230]
    if bad:
        raise RandomSearchError(f"space groups must be numbers 1-230, not {bad}")
    return numbers


# --- generation --------------------------------------------------------------------


class _BoundedCrystal(random_crystal):
    """pyxtal's random atomic crystal with fewer internal attempts and a deadline.

    Only `set_crystal` (the retry loop over lattices and positions) is replaced; the
    volume, lattice and Wyckoff placement are pyxtal's own (version 1.1).
    """

    def __init__(self, *, deadline: float, **kwargs) -> None:
        self._deadline = deadline
        super().__init__(**kwargs)

    def set_crystal(self) -> None:
        self.numattempts = 0
        for cycle1 in range(LATTICE_ATTEMPTS):
            if time.monotonic() > self._deadline:
                return
            self.set_volume()
            self.set_lattice(self.lattice0)
            self.cycle1 = cycle1
            for cycle2 in range(COORD_ATTEMPTS):
                self.cycle2 = cycle2
                sites = self._set_coords()
                if sites:
                    self.atom_sites = sites
                    return
            self.lattice.reset_matrix()


@functools.lru_cache(maxsize=256)
def _tolerances(symbols: tuple[str, ...], ratio: float) -> Tol_matrix:
    """pyxtal distance tolerances: `ratio` × the sum of ASE covalent radii per pair."""
    pairs = []
    for i, first in enumerate(symbols):
        for second in symbols[i:]:
            limit = ratio * (covalent_radii[Element(first).Z] + covalent_radii[Element(second).Z])
            pairs.append((first, second, float(limit)))
    return Tol_matrix(*pairs, prototype="atomic")


def _conventional_structure(crystal: random_crystal) -> Structure:
    species, coords = [], []
    for site in crystal.atom_sites:
        species.extend([site.specie] * site.multiplicity)
        coords.extend(np.asarray(site.coords, dtype=float))
    return Structure(np.asarray(crystal.lattice.matrix, dtype=float), species, np.asarray(coords))


def _has_group_symmetry(structure: Structure, number: int, tolerance: float = SYMMETRY_TOLERANCE) -> bool:
    """Whether every operation of the general position of group `number` (pyxtal's
    conventional setting) maps the structure onto itself."""
    frac = np.asarray(structure.frac_coords)
    matrix = np.asarray(structure.lattice.matrix)
    labels = np.array([site.species_string for site in structure])
    same = labels[:, None] == labels[None, :]
    for op in _group(number)[0].ops:
        moved = frac @ np.asarray(op.rotation_matrix).T + np.asarray(op.translation_vector)
        delta = moved[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        distance = np.linalg.norm(delta @ matrix, axis=-1)
        if not np.all(np.any((distance < tolerance) & same, axis=1)):
            return False
    return True


def _detected_space_group(structure: Structure) -> int:
    try:
        return int(SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number())
    except Exception:  # spglib fails on pathological cells
        return 1


def _attempt(
    number: int, z: int, symbols: tuple[str, ...], counts: tuple[int, ...], factor: float,
    min_bond_ratio: float, max_atoms: int, rng: np.random.Generator, deadline: float,
) -> tuple[Structure | None, Reject | None]:
    """One pyxtal draw: the primitive structure, or None and why it was rejected."""
    cellsize = _group(number).cellsize()
    try:
        with warnings.catch_warnings():  # pyxtal warns on every volume increase
            warnings.simplefilter("ignore")
            crystal = _BoundedCrystal(
                deadline=deadline, dim=3, group=_group(number), species=list(symbols),
                numIons=[c * z * cellsize for c in counts], factor=factor,
                tm=_tolerances(symbols, round(min_bond_ratio, 6)), random_state=rng,
            )
    except Exception as error:  # pyxtal signals failures with several exception types
        return None, Reject("pyxtal-error", type(error).__name__)
    if not crystal.valid and time.monotonic() > deadline:
        return None, Reject("time-limit", "the search ran out of time inside pyxtal")
    if not crystal.valid:
        return None, Reject("no-placement", "pyxtal found no positions that keep atoms apart")
    conventional = _conventional_structure(crystal)
    if not _has_group_symmetry(conventional, number):
        return None, Reject("symmetry", "the structure lacks operations of its space group")
    structure = conventional.get_primitive_structure(tolerance=0.01)
    if len(structure) != z * sum(counts):
        return None, Reject("supercell", "the structure has extra translational symmetry")
    reason = validate_structure(structure, ChemicalSpace(max_atoms=max_atoms))
    if reason is None and bond_ratio(structure) < min_bond_ratio * (1 - 1e-6):
        reason = Reject("overlapping-atoms", f"bond ratio {bond_ratio(structure):.3f} < {min_bond_ratio}")
    return (structure, None) if reason is None else (None, reason)


def random_structures(
    composition: Composition | str,
    n: int,
    formula_units: Sequence[int] | None = None,
    space_groups: Sequence[int] | None = None,
    max_atoms: int = 20,
    volume_factor: tuple[float, float] = (0.9, 1.3),
    min_bond_ratio: float = MIN_BOND_RATIO,
    seed: int = 0,
    time_limit: float = 60.0,
    max_attempts: int | None = None,
    relax: "str | Calculator | Callable[[Structure], Structure] | None" = None,
    stats: dict | None = None,
) -> list[Candidate]:
    """Up to `n` random crystals of `composition`, as candidates of generator "random".

    `formula_units` are the numbers z of formula units (of the reduced formula) per
    primitive cell; by default those of 1–4 with z × atoms ≤ `max_atoms`. Each
    attempt draws one compatible (space group, z) pair uniformly, from `space_groups`
    when given, and a volume factor uniformly from `volume_factor` (it scales pyxtal's
    volume estimate, itself random between the covalent- and van der Waals-sphere
    volumes). Atoms are at least `min_bond_ratio` covalent bond lengths apart.

    `relax` optionally pre-relaxes each structure: "soft-sphere" (`soft_sphere_relax`),
    an ASE calculator (`relax_structure` with fixed cell), or any function of a
    structure; relaxed structures are validated again.

    Raises RandomSearchError at once when the request is impossible (no compatible
    group, too many atoms, a bad formula) and when the search ends with nothing.
    Otherwise the search stops after `n` structures, `time_limit` seconds (checked
    between lattices, so it overruns by at most one pyxtal lattice attempt; the
    one-off loading of pyxtal's group tables, seconds per process, is not counted) or
    `max_attempts` draws (default max(50, 20 n)) and returns what it has, logging a
    warning when that is fewer than `n`. A dict passed as `stats` receives the
    attempts, the rejection reasons counted by category, the elapsed time and why the
    search stopped. Deterministic for a seed unless the time limit cuts it short.

    Candidate info: "space_group" (drawn), "detected_space_group" (spglib, symprec
    0.1: the drawn group or a supergroup), "formula_units", "volume_factor", "relaxed".
    """
    reduced, symbols, counts = _integer_formula(composition)
    formula = reduced.reduced_formula
    natoms = sum(counts)
    if n < 0:
        raise RandomSearchError(f"n must be non-negative, not {n}")
    low, high = volume_factor
    if not 0 < low <= high:
        raise RandomSearchError(f"volume_factor must be an increasing pair of positive numbers, not {volume_factor}")
    if natoms > max_atoms:
        raise RandomSearchError(f"{formula} has {natoms} atoms per formula unit, more than max_atoms={max_atoms}")
    requested = DEFAULT_FORMULA_UNITS if formula_units is None else tuple(sorted({int(z) for z in formula_units}))
    if any(z < 1 for z in requested):
        raise RandomSearchError(f"formula units must be positive, not {list(requested)}")
    zs = [z for z in requested if z * natoms <= max_atoms]
    if not zs:
        raise RandomSearchError(
            f"no formula units in {list(requested)} fit {formula} ({natoms} atoms) within max_atoms={max_atoms}")
    options = [(number, z) for z in zs for number in compatible_space_groups(reduced, z, space_groups)]
    if not options:
        where = "any space group" if space_groups is None else f"space groups {_checked_groups(space_groups)}"
        raise RandomSearchError(
            f"{formula} with {zs} formula units per primitive cell fits no Wyckoff positions of {where}: "
            "the site multiplicities cannot add up to the atom counts")
    relaxer = _relaxer(relax)

    rng = np.random.default_rng(seed)
    start = time.monotonic()
    deadline = start + time_limit
    limit = max(50, 20 * n) if max_attempts is None else max_attempts
    rejected: Counter[str] = Counter()
    candidates: dict[str, Candidate] = {}
    attempts = 0
    while len(candidates) < n and attempts < limit and time.monotonic() < deadline:
        attempts += 1
        number, z = options[int(rng.integers(len(options)))]
        factor = float(rng.uniform(low, high))
        structure, reason = _attempt(number, z, symbols, counts, factor, min_bond_ratio, max_atoms, rng, deadline)
        if structure is not None and relaxer is not None:
            structure = relaxer(structure)
            if structure.composition.reduced_formula != formula or len(structure) != z * natoms:
                structure, reason = None, Reject("relaxation", "the relaxer changed the composition")
            else:
                reason = validate_structure(structure, ChemicalSpace(max_atoms=max_atoms))
                structure = None if reason else structure
        if structure is None:
            rejected[reason.category] += 1
            continue
        candidate = Candidate(structure, generator="random", info={
            "space_group": number, "detected_space_group": _detected_space_group(structure),
            "formula_units": z, "volume_factor": round(factor, 4), "relaxed": relaxer is not None,
        })
        if candidate.id in candidates:
            rejected["duplicate"] += 1
        candidates[candidate.id] = candidate

    elapsed = time.monotonic() - start
    stopped = "done" if len(candidates) >= n else "time-limit" if time.monotonic() >= deadline else "max-attempts"
    if stats is not None:
        stats.update({"formula": formula, "attempts": attempts, "generated": len(candidates),
                      "rejected": dict(rejected), "elapsed": elapsed, "stopped": stopped})
    if n and not candidates:
        why = ", ".join(f"{reason} ×{count}" for reason, count in rejected.most_common()) or "no attempt ran"
        raise RandomSearchError(
            f"no valid random structure of {formula} after {attempts} attempts in {elapsed:.1f} s "
            f"(stopped: {stopped}; rejected: {why})")
    if len(candidates) < n:
        log.warning("random search for %s made %d of %d structures (stopped: %s after %d attempts)",
                    formula, len(candidates), n, stopped, attempts)
    return list(candidates.values())


def random_search(
    compositions: Sequence[str],
    per_composition: int,
    elements: Sequence[str] | None = None,
    max_atoms: int = 20,
    seed: int = 0,
    time_limit: float = 600.0,
    stats: dict | None = None,
    **options,
) -> list[Candidate]:
    """Random structures for each of `compositions`: a campaign-level AIRSS round.

    Each composition gets `per_composition` structures from `random_structures`
    (keyword `options` are passed on), with a seed derived from `seed` and its
    reduced formula (so it does not depend on the order of the list) and an equal
    share of the time still left. Compositions outside `elements` (when given) or
    for which the search fails are skipped; a dict passed as `stats` maps each
    formula to its search statistics, with "error" for skipped ones. Duplicate
    formulas are searched once.
    """
    start = time.monotonic()
    todo = list(dict.fromkeys(compositions))
    allowed = None if elements is None else set(elements)
    out: list[Candidate] = []
    for index, text in enumerate(todo):
        record: dict = {}
        try:
            reduced, symbols, _ = _integer_formula(text)
            if allowed is not None and not set(symbols) <= allowed:
                raise RandomSearchError(f"elements {sorted(set(symbols) - allowed)} are outside the chemical space")
            remaining = time_limit - (time.monotonic() - start)
            if remaining <= 0:
                raise RandomSearchError("the time limit of the search was spent on earlier compositions")
            out.extend(random_structures(
                reduced, per_composition, max_atoms=max_atoms, seed=derived_seed(seed, reduced.reduced_formula),
                time_limit=remaining / (len(todo) - index), stats=record, **options))
        except RandomSearchError as error:
            record["error"] = str(error)
        if stats is not None:
            stats[str(text)] = record
    return out


def derived_seed(seed: int, key: str) -> int:
    """A 32-bit seed from a campaign seed and a key (formula), stable across runs."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


def _relaxer(relax) -> Callable[[Structure], Structure] | None:
    if relax is None:
        return None
    if isinstance(relax, str):
        if relax != "soft-sphere":
            raise RandomSearchError(f"unknown relaxation {relax!r}: use 'soft-sphere', an ASE calculator or a function")
        return soft_sphere_relax
    if isinstance(relax, Calculator):
        return lambda structure: relax_structure(structure, relax)
    if callable(relax):
        return relax
    raise RandomSearchError(f"relax must be 'soft-sphere', an ASE calculator or a function, not {type(relax).__name__}")
