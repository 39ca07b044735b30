"""Symmetry-aware partial substitution (SAPS).

GNoME (Merchant et al., Nature 624, 80 (2023)) widened ionic substitution by
replacing only some of the sites of a species: for an ion swap A→B on a parent, every
choice of k of the A sites (k = 1 … n_A) is a candidate, but choices related by a
symmetry operation of the parent give the same crystal, so only one representative
per symmetry-distinct choice is kept. Partial replacement reaches ordered
intermediate compositions and lower-symmetry orderings that whole-species swaps
(:mod:`gnome_loop.generate.substitution`) cannot.

Symmetry-distinctness comes from the parent's space group, not from comparing
structures: each operation spglib finds for the cell (pymatgen's SpacegroupAnalyzer)
is turned into a permutation of site indices, and two sets of sites are equivalent
when a permutation maps one onto the other. For a supercell spglib reports the
operations that keep the supercell lattice, pure translations by parent lattice
vectors included, which is exactly the group under which two orderings of the same
cell describe the same crystal. A set's canonical form is its lexicographically
smallest image; orbit representatives are enumerated level by level (see
:func:`distinct_subsets`), so the work grows with the number of distinct orderings,
not with C(n_A, k).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Iterator, Sequence

import numpy as np
from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gnome_loop.generate.plausible import NOT_BALANCED, charge_problem
from gnome_loop.generate.substitution import Option, _options, _parent_species, _radii, _table_species
from gnome_loop.structures import Candidate, SiteGeometry


def site_permutations(structure: Structure, symprec: float = 0.01) -> np.ndarray:
    """The permutations of site indices induced by the symmetry operations of the cell.

    Row g maps site i to site ``perms[g, i]``: the site that operation g moves site i
    onto (same species, equal position modulo the cell's lattice within a distance of
    a few `symprec`). The identity is included and rows are unique (operations that
    act alike on the sites, such as those of a cell with one atom, collapse to one).
    An operation spglib reports but which fails to map the sites onto themselves
    (possible for a structure that is symmetric only within a loose `symprec`) is
    dropped with a warning; a missing operation can only split an orbit, never merge
    two, so the outcome may contain symmetric duplicates but never loses an ordering.
    """
    n = len(structure)
    identity = np.arange(n, dtype=np.int64)
    if n == 0:
        return identity[None, :]
    frac = np.asarray(structure.frac_coords, dtype=float)
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    labels = [site.species_string for site in structure]
    kinds = {label: number for number, label in enumerate(sorted(set(labels)))}
    types = np.array([kinds[label] for label in labels])
    same_type = types[:, None] == types[None, :]
    tolerance = max(4.0 * symprec, 1e-4)  # Å; spglib accepts images within about symprec

    rows = [identity]
    dropped = 0
    for op in SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False):
        moved = frac @ np.asarray(op.rotation_matrix, dtype=float).T + np.asarray(op.translation_vector, dtype=float)
        delta = moved[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        distance = np.linalg.norm(delta @ matrix, axis=-1)  # (image of i, site j), Å
        distance[~same_type] = np.inf
        perm = np.argmin(distance, axis=1)
        if distance[identity, perm].max() > tolerance or len(np.unique(perm)) != n:
            dropped += 1
            continue
        rows.append(perm.astype(np.int64))
    if dropped:
        warnings.warn(f"{dropped} symmetry operation(s) did not map the sites onto themselves and were dropped")
    return np.unique(np.stack(rows), axis=0)


def _lexmin(images: np.ndarray) -> tuple[int, ...]:
    """The lexicographically smallest row of a 2-D integer array."""
    if images.shape[1] == 0:
        return ()
    best = np.lexsort(images.T[::-1])[0]
    return tuple(int(v) for v in images[best])


def _orbit_levels(
    sites: Sequence[int], permutations: np.ndarray, max_k: int, limit: int | None
) -> Iterator[list[tuple[int, ...]]]:
    """Canonical orbit representatives of the k-subsets of `sites`, for k = 1 … max_k.

    Only the operations that map `sites` onto itself act on its subsets (the setwise
    stabiliser, a subgroup), restricted to `sites` and relabelled 0 … m-1 in sorted
    order, so that lexicographic order on local labels is that on site indices.

    Level k is built from level k-1: every k-subset T contains some (k-1)-subset
    T \\ {y}, which an operation g maps onto its representative r; then g(T) = r ∪
    {g(y)}, so canonicalising every r ∪ {x} (x ∉ r) reaches every orbit. With
    `limit`, a level stops after `limit` representatives, and the next level grows
    from those only (still distinct, no longer complete).
    """
    ordered = np.array(sorted(set(int(s) for s in sites)), dtype=np.int64)
    m = len(ordered)
    if m == 0 or max_k < 1:
        return
    perms = np.asarray(permutations, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[0] == 0:
        perms = np.arange(int(ordered.max()) + 1, dtype=np.int64)[None, :]
    images = perms[:, ordered]
    keeps = np.all(np.sort(images, axis=1) == ordered[None, :], axis=1)
    local = np.searchsorted(ordered, images[keeps])
    local = np.unique(np.vstack([local, np.arange(m)[None, :]]), axis=0)  # identity is always in

    level: list[tuple[int, ...]] = [()]
    for k in range(1, min(max_k, m) + 1):
        seen: set[tuple[int, ...]] = set()
        found: list[tuple[int, ...]] = []
        for rep in level:
            if limit is not None and len(found) >= limit:
                break
            taken = set(rep)
            for extra in range(m):
                if extra in taken:
                    continue
                subset = np.array((*rep, extra), dtype=np.int64)
                canonical = _lexmin(np.sort(local[:, subset], axis=1))
                if canonical not in seen:
                    seen.add(canonical)
                    found.append(canonical)
                    if limit is not None and len(found) >= limit:
                        break
        if not found:
            return
        level = sorted(found)
        yield [tuple(int(ordered[i]) for i in rep) for rep in level]


def distinct_subsets(
    sites: Sequence[int], k: int, permutations: np.ndarray, limit: int | None = None
) -> list[tuple[int, ...]]:
    """One representative per symmetry-distinct choice of `k` of `sites`.

    Each representative is the canonical form of its orbit under the permutations
    (rows as from :func:`site_permutations`) that map `sites` onto itself: the sorted
    tuple of site indices that is lexicographically smallest among all its images.
    Sorted; at most `limit` (then a distinct but not necessarily complete selection).
    k = 0 gives the empty choice; k beyond the number of sites gives none.
    """
    if k < 0 or k > len(set(sites)):
        return []
    if k == 0:
        return [()]
    result: list[tuple[int, ...]] = []
    for result in _orbit_levels(sites, permutations, k, limit):
        pass
    return result if result and len(result[0]) == k else []


def _supercell(structure: Structure, supercell: Sequence[int] | int | None, max_atoms: int | None) -> Structure:
    """The structure repeated by `supercell` (an int, 3 ints or a 3×3 matrix), or
    unchanged when none is asked for or the repeat would exceed `max_atoms`."""
    if supercell is None:
        return structure
    scaling = np.asarray(supercell)
    if scaling.ndim < 2:
        scaling = np.diag(np.broadcast_to(scaling, (3,)))
    if max_atoms is not None and abs(round(float(np.linalg.det(scaling)))) * len(structure) > max_atoms:
        return structure
    return structure * scaling.astype(int).tolist()


def _configurations(
    structure: Structure, old: str, permutations: np.ndarray, ks: Sequence[int], limit: int | None
) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(k, representative set of `old` sites) for the k in `ks`."""
    sites = [i for i, site in enumerate(structure) if site.specie.symbol == old]
    wanted = set(ks)
    if not wanted or not sites:
        return
    for level in _orbit_levels(sites, permutations, max(wanted), limit):
        k = len(level[0])
        if k in wanted:
            for rep in level:
                yield k, rep


def _replaced(structure: Structure, chosen: Sequence[int], new: str) -> Structure:
    """The structure with the sites `chosen` turned into element `new`; all species
    become plain elements (oxidation states and site properties are dropped)."""
    return Structure(structure.lattice, _species(structure, chosen, new), structure.frac_coords)


def _species(structure: Structure, chosen: Sequence[int], new: str) -> list[str]:
    """The structure's element symbols with the sites `chosen` turned into `new`."""
    species = [site.specie.symbol for site in structure]
    for i in chosen:
        species[i] = new
    return species


def partial_substitutions(
    structure: Structure,
    old: str,
    new: str,
    max_configurations: int | None = None,
    supercell: Sequence[int] | int | None = None,
    symprec: float = 0.01,
    max_atoms: int | None = None,
    include_full: bool = False,
) -> list[tuple[int, Structure]]:
    """One structure per symmetry-distinct way to replace k of the `old` sites by `new`.

    `old` and `new` are element symbols. k runs from 1 to n_old - 1 (partial
    replacement), and to n_old with `include_full` (whole-species swaps are the
    substitution generator's job). The cell is first repeated by `supercell` unless
    that would exceed `max_atoms`; a cell still beyond `max_atoms` gives nothing.
    Lattice and positions are those of the parent (no relaxation, no volume
    rescaling). At most `max_configurations` per k. Returned as (k, structure) in
    order of k, then of the replaced site indices.
    """
    if not structure.is_ordered:
        raise ValueError("partial substitution needs an ordered structure")
    cell = _supercell(structure, supercell, max_atoms)
    if max_atoms is not None and len(cell) > max_atoms:
        return []
    n_old = sum(1 for site in cell if site.specie.symbol == old)
    last = n_old if include_full else n_old - 1
    if last < 1 or old == new:
        return []
    permutations = site_permutations(cell, symprec)
    return [
        (k, _replaced(cell, rep, new))
        for k, rep in _configurations(cell, old, permutations, range(1, last + 1), max_configurations)
    ]


def _swaps(
    alpha: float, counts: dict[str, float], space: tuple[str, ...], threshold: float
) -> list[tuple[float, str, Option]]:
    """Ion swaps A→B of a parent with P(B | A) ≥ threshold, as (P, A, target), most
    likely first. An element B counts with its most likely species (the first of its
    options, which come sorted by probability); ionic parents weigh species, others
    elements, and B keeps the role of A's sites (see `_options`)."""
    read = _parent_species(alpha, Composition(counts).reduced_formula)
    swaps = []
    for element in sorted(counts):
        best: dict[str, Option] = {}
        for option in _options(alpha, read.species[element], space, read.kind == "ionic", read.roles[element]):
            best.setdefault(option.element, option)
        swaps.extend(
            (option.probability, element, option)
            for target, option in best.items()
            if target != element and option.probability >= threshold
        )
    swaps.sort(key=lambda swap: (-swap[0], swap[1], swap[2].element))
    return swaps


def _rescaled(cell: Structure, geometry: SiteGeometry, chosen: Sequence[int], new: Option,
              states: dict[str, float | None]) -> Structure:
    """`cell` (of `geometry`) with the sites `chosen` replaced by `new.element`, its volume
    scaled by the ratio of the summed cubed site radii before and after, then expanded
    where atoms would overlap (as whole-species substitution does). The two radii of the
    swap are of one kind, ionic when both ions have one, else atomic, and the
    unswapped sites of A count with the first; every other site with its own radius."""
    old = cell[chosen[0]].specie.symbol
    swapped_before, swapped_after = _radii(old, states.get(old), new)
    radii: dict[str, float] = {}
    before = 0.0
    for site in cell:
        symbol = site.specie.symbol
        if symbol not in radii:
            state = states.get(symbol)
            radii[symbol] = swapped_before if symbol == old else _radii(symbol, state, Option(symbol, state, 1.0))[0]
        before += radii[symbol] ** 3
    after = before + len(chosen) * (swapped_after**3 - swapped_before**3)
    return geometry.decorated(_species(cell, chosen, new.element), cell.volume * after / before)


def _best(pool: dict[str, tuple[float, Candidate]], n: int | None) -> dict[str, tuple[float, Candidate]]:
    """The `n` (None: all) most likely of (probability, candidate) by id, best first, ties by id.

    A parent's pool is cut back to this whenever it doubles: a 16-site parent with
    one species has tens of thousands of orderings per swap, and holding them all at
    once took a gigabyte. Swaps come most likely first, so an id cut from the pool
    could only come back at a probability no higher, and would be cut again: the
    outcome is that of ranking everything at the end."""
    return dict(sorted(pool.items(), key=lambda item: (-item[1][0], item[0]))[:n])


def saps(
    parents: Sequence[tuple[str, Structure]],
    elements: Sequence[str],
    known_formulas: set[str],
    threshold: float = 1e-3,
    alpha: float = -5.0,
    max_elements: int = 3,
    max_atoms: int = 20,
    max_per_parent: int = 50,
    max_candidates: int | None = None,
    supercell: Sequence[int] | int | None = None,
    symprec: float = 0.01,
    charge_balanced: bool = True,
    rejected: Counter | None = None,
) -> list[Candidate]:
    """Candidates made by replacing some, not all, sites of one parent species.

    For each parent (ordered, at most `max_atoms` sites, repeated by `supercell`
    where that stays within `max_atoms`, all elements in `elements` and in the λ
    table), every ion swap A→B with B in `elements`, B ≠ A and substitution
    probability P(B | A) ≥ `threshold` (Hautier et al.'s model with GNoME's λ ≥ 0
    clamp, as in :mod:`gnome_loop.generate.substitution`) and B of the role of A's
    sites (anion or cation) gives one candidate per symmetry-distinct choice of k of
    the A sites, 1 ≤ k < n_A. A keeps some sites, so the composition gains B: it must
    stay within `max_elements` and its reduced formula must not be in
    `known_formulas`. Partial swaps mix valences (Co3+ next to Ni2+ in a Co site), so
    the species need not balance, but with `charge_balanced` a candidate holding an
    anion needs a charge-balanced oxidation-state guess of its composition
    (:func:`gnome_loop.generate.plausible.charge_problem`); the refused ones are
    counted in `rejected` by reason.

    Info holds the swap [A, B], k and the probability P(B | A). Candidates are sorted
    by probability (highest first), then id; a structure reached twice keeps its most
    likely origin; at most `max_per_parent` per parent and `max_candidates` in all.
    """
    table = _table_species(alpha)
    allowed = set(elements)
    space = tuple(sorted(allowed & set(table)))
    proposals: dict[str, tuple[float, Candidate]] = {}
    for parent_id, parent in parents:
        if not parent.is_ordered or len(parent) > max_atoms:
            continue
        counts = {el.symbol: amount for el, amount in parent.composition.element_composition.items()}
        if not set(counts) <= set(table) or not set(counts) <= allowed:
            continue
        cell = _supercell(parent, supercell, max_atoms)
        cell_counts = {el.symbol: amount for el, amount in cell.composition.element_composition.items()}
        read = _parent_species(alpha, Composition(counts).reduced_formula)
        states = {el: read.species[el][0].oxi_state if read.kind == "ionic" else None for el in counts}
        permutations: np.ndarray | None = None
        geometry: SiteGeometry | None = None

        mine: dict[str, tuple[float, Candidate]] = {}
        for probability, old, target in _swaps(alpha, counts, space, threshold):
            if len(mine) >= max_per_parent and probability < min(p for p, _ in mine.values()):
                break  # every later swap is less likely than all kept ones
            new = target.element
            if len(set(counts) | {new}) > max_elements:
                continue
            n_old = int(round(cell_counts[old]))
            ks = []
            for k in range(1, n_old):
                amounts = dict(cell_counts)
                amounts[old] -= k
                amounts[new] = amounts.get(new, 0) + k
                if Composition(amounts).reduced_formula not in known_formulas:
                    ks.append(k)
            if not ks:
                continue
            if permutations is None:
                permutations, geometry = site_permutations(cell, symprec), SiteGeometry.of(cell)
            for k, chosen in _configurations(cell, old, permutations, ks, max_per_parent):
                structure = _rescaled(cell, geometry, chosen, target, states)
                if charge_balanced and charge_problem(structure):
                    if rejected is not None:
                        rejected[NOT_BALANCED] += 1
                    continue
                candidate = Candidate(
                    structure,
                    generator="saps",
                    parent_ids=(parent_id,),
                    info={"swap": [old, new], "k": k, "probability": probability},
                )
                key = candidate.id
                if key not in mine or probability > mine[key][0]:
                    mine[key] = (probability, candidate)
                    if len(mine) >= 2 * max_per_parent:
                        mine = _best(mine, max_per_parent)
        for key, (probability, candidate) in _best(mine, max_per_parent).items():
            if key not in proposals or probability > proposals[key][0]:
                proposals[key] = (probability, candidate)

    return [candidate for _, candidate in _best(proposals, max_candidates).values()]
