"""The convex hull of formation energies: which entries are stable, and how far above
(or below) the hull any other composition and energy lies.

One pymatgen `PhaseDiagram` per chemical system, built from every entry whose
elements are a subset of that system and cached; adding entries rebuilds only the
diagrams of the systems they touch. A system lacking an elemental reference has no
hull: its queries answer None, never a wrong number.

Many candidates at once (`e_above_hull_many`, `hull_table`): candidates are grouped
by the diagram that judges them, a subsystem reusing the diagram of a supersystem
(the hull of a supersystem, restricted to a subsystem, is the subsystem's hull), and
each diagram judges its whole group in one numpy pass over its facets.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Iterable

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

#: Distance to the hull, eV/atom, under which an entry counts as stable (GNoME's
#: tolerance for numerical noise, Merchant et al. 2023, data release notes).
STABLE_TOL = 5e-5

Chemsys = frozenset[str]

#: Most offending ids named in an error message.
MAX_NAMED = 10
#: Barycentric coordinates computed at once (candidates × facets × vertices): bounds memory to ~32 MB.
CHUNK_SIZE = 1 << 22

#: Columns of `write_hull_csv` (what `gnome-loop hull` writes).
EHULL_CSV_COLUMNS = ("entry_id", "formula", "e_above_hull", "decomposition", "reason")


def chemsys_of(elements: str | Composition | Iterable[str]) -> Chemsys:
    """The chemical system of a composition, an iterable of symbols or a 'Li-Co-O' string."""
    if isinstance(elements, str):
        return frozenset(elements.split("-"))
    if isinstance(elements, Composition):
        return frozenset(el.symbol for el in elements.elements)
    return frozenset(elements)


def named_ids(ids: list) -> str:
    """Ids for an error message: the first `MAX_NAMED`, then how many more."""
    more = f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else ""
    return ", ".join(map(str, ids[:MAX_NAMED])) + more


def _check_ids(entries: list[ComputedEntry]) -> None:
    """ValueError for an entry without an id or for ids given more than once."""
    for entry in entries:
        if not entry.entry_id:
            raise ValueError(f"entry {entry.composition.reduced_formula} has no entry_id")
    repeated = sorted(str(key) for key, count in Counter(e.entry_id for e in entries).items() if count > 1)
    if repeated:
        raise ValueError(f"duplicated entry ids: {named_ids(repeated)}")


def _shared_scale(entries: list[ComputedEntry], scale: str | None) -> str | None:
    """The energy scale `entries` share with `scale` (the first label found when `scale`
    is None); ValueError naming the first entry on another scale."""
    for entry in entries:
        entry_scale = entry.data.get("scale")
        if scale is None:
            scale = entry_scale
        elif entry_scale not in (None, scale):
            raise ValueError(
                f"entry {entry.entry_id} has energy scale {entry_scale!r} but the hull holds "
                f"{scale!r} energies; re-evaluate it on the hull's scale"
            )
    return scale


class Hull:
    """Entries keyed by id and the convex hulls of their chemical systems.

    Each entry is a `ComputedEntry` (or `ComputedStructureEntry`) whose `entry_id` is
    its key and whose `energy` is the total corrected energy. Entries carrying
    `data["scale"]` must all share the hull's scale (set by `scale`, or by the first
    labelled entry): energies from different scales must never share a hull.
    Entries without a label are taken to be on the hull's scale.

    `pd_builds` counts the `PhaseDiagram`s built, to check that updates are local.
    With `max_diagrams`, at most that many diagrams stay cached, the least recently
    used dropped first: a screening worker judges candidates of tens of thousands of
    chemical systems, and its memory must not grow with them.
    """

    def __init__(self, entries: Iterable[ComputedEntry] = (), scale: str | None = None,
                 max_diagrams: int | None = None) -> None:
        self.scale = scale
        self.pd_builds = 0
        self.max_diagrams = max_diagrams
        self._entries: dict[str, ComputedEntry] = {}
        self._ids_by_chemsys: dict[Chemsys, set[str]] = defaultdict(set)
        self._diagrams: OrderedDict[Chemsys, PhaseDiagram] = OrderedDict()
        self.add(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._entries

    def __getitem__(self, entry_id: str) -> ComputedEntry:
        return self._entries[entry_id]

    def add(self, entries: Iterable[ComputedEntry]) -> None:
        """Add entries, replacing those whose id exists, and drop the cached diagrams
        of every system that contains a changed entry.

        Raises ValueError, before changing anything, for an entry without an id, an id
        given twice in `entries`, a non-finite energy or another energy scale.
        """
        entries = list(entries)
        _check_ids(entries)
        non_finite = [str(e.entry_id) for e in entries if not math.isfinite(e.energy)]
        if non_finite:
            raise ValueError(f"non-finite energy for entries {named_ids(non_finite)}")
        self.scale = _shared_scale(entries, self.scale)
        for entry in entries:
            old = self._entries.get(entry.entry_id)
            if old is not None:
                self._ids_by_chemsys[chemsys_of(old.composition)].discard(entry.entry_id)
                self._invalidate(chemsys_of(old.composition))
            self._entries[entry.entry_id] = entry
            self._ids_by_chemsys[chemsys_of(entry.composition)].add(entry.entry_id)
            self._invalidate(chemsys_of(entry.composition))

    def _invalidate(self, elements: Chemsys) -> None:
        for system in [system for system in self._diagrams if elements <= system]:
            del self._diagrams[system]

    def missing_elements(self, chemsys: str | Composition | Iterable[str]) -> list[str]:
        """Elements of `chemsys` that have no elemental entry (so no hull can be built)."""
        return sorted(el for el in chemsys_of(chemsys) if not self._ids_by_chemsys.get(frozenset([el])))

    def unjudged_reason(self, chemsys: str | Composition | Iterable[str]) -> str | None:
        """Why `chemsys` has no hull ("no elemental reference for S"), None when it has one."""
        missing = self.missing_elements(chemsys)
        return "no elemental reference for " + ", ".join(missing) if missing else None

    def phase_diagram(self, chemsys: str | Composition | Iterable[str]) -> PhaseDiagram | None:
        """The (cached) diagram of every entry within `chemsys`; None when an elemental
        reference is missing."""
        system = chemsys_of(chemsys)
        if system in self._diagrams:
            self._diagrams.move_to_end(system)
            return self._diagrams[system]
        if self.missing_elements(system):
            return None
        ids = [
            entry_id
            for size in range(1, len(system) + 1)
            for subsystem in combinations(sorted(system), size)
            for entry_id in self._ids_by_chemsys.get(frozenset(subsystem), ())
        ]
        diagram = PhaseDiagram([self._entries[entry_id] for entry_id in ids])
        self.pd_builds += 1
        self._diagrams[system] = diagram
        if self.max_diagrams is not None and len(self._diagrams) > self.max_diagrams:
            self._diagrams.popitem(last=False)
        return diagram

    def covering_diagrams(self, systems: Iterable[Chemsys]) -> dict[Chemsys, PhaseDiagram]:
        """A diagram for each system that has all its elemental references: the cached
        diagram of its smallest supersystem where there is one, else its own, built.

        Largest systems go first, so a group of systems costs one build per system
        outside every other. A supersystem's diagram gives the subsystem's answer: it
        holds all the subsystem's entries, and no entry with another element reaches
        the subsystem's face of the hull.
        """
        # Not pymatgen's PatchedPhaseDiagram, which shares diagrams the same way but builds
        # one for every maximal system of the whole reference up front (3 to 4 min for the MP
        # table's 13,228 patches against 56 s here for all of its rows' hulls, and only
        # what the candidates need otherwise: experiments/bench_hull.py), refuses a
        # reference lacking any element's reference (the MP table has none for Xe), and
        # answers a candidate outside every patch (a new quaternary) with an approximate
        # SLSQP fit instead of its hull.
        wanted = sorted((s for s in set(systems) if not self.missing_elements(s)), key=len, reverse=True)
        built_by_element: dict[str, set[Chemsys]] = defaultdict(set)
        for system in self._diagrams:
            for element in system:
                built_by_element[element].add(system)
        out, fetched = {}, {}
        for system in wanted:
            supersystems = set.intersection(*(built_by_element[element] for element in system))
            if supersystems:
                chosen = min(supersystems, key=lambda s: (len(s), sorted(s)))
                if chosen not in fetched:  # cached when the call began, perhaps evicted since: rebuilt once
                    fetched[chosen] = self.phase_diagram(chosen)
                out[system] = fetched[chosen]
                continue
            out[system] = fetched[system] = self.phase_diagram(system)
            for element in system:
                built_by_element[element].add(system)
        return out

    def e_above_hull(self, entry_id: str) -> float | None:
        """Energy above the hull of an entry, eV/atom (0 for hull vertices)."""
        entry = self._entries[entry_id]
        diagram = self.phase_diagram(entry.composition)
        return None if diagram is None else float(diagram.get_e_above_hull(entry))

    def all_e_above_hull(self) -> dict[str, float | None]:
        """Energy above the hull of every entry, by id."""
        return {entry_id: self.e_above_hull(entry_id) for entry_id in self._entries}

    def stable_ids(self, tol: float = STABLE_TOL) -> set[str]:
        """Ids of the entries within `tol` eV/atom of the hull."""
        e_hulls = self.all_e_above_hull()
        return {entry_id for entry_id, e_hull in e_hulls.items() if e_hull is not None and e_hull <= tol}

    def e_hull_of(self, composition: str | Composition, energy_total: float) -> float | None:
        """Distance to the current hull, eV/atom, of a hypothetical entry that is not in it
        (e.g. a candidate's predicted energy). Negative means below the hull: the
        candidate would be a new vertex, beating every entry at its composition."""
        composition = Composition(composition)
        diagram = self.phase_diagram(composition)
        if diagram is None:
            return None
        _, e_hull = diagram.get_decomp_and_e_above_hull(PDEntry(composition, energy_total), allow_negative=True)
        return float(e_hull)

    def decomposition(self, entry_id: str) -> dict[str, float] | None:
        """The hull phases an entry decomposes into: id -> atomic fraction ({id: 1.0} for
        a hull vertex)."""
        entry = self._entries[entry_id]
        diagram = self.phase_diagram(entry.composition)
        if diagram is None:
            return None
        products, _ = diagram.get_decomp_and_e_above_hull(entry)
        return {product.entry_id: float(amount) for product, amount in products.items()}

    def decomposition_energy(self, entry_id: str) -> float | None:
        """Distance of an entry to the hull built without its composition, eV/atom.

        Negative for a hull vertex: how far it lies below the competing phases (Bartel
        et al., npj Comput. Mater. 6, 97 (2020)); GNoME's data release reports it as
        "Decomposition Energy Per Atom". Unlike `e_above_hull`, a polymorph is not
        measured against the stable polymorph of its own composition.
        """
        entry = self._entries[entry_id]
        diagram = self.phase_diagram(entry.composition)
        if diagram is None:
            return None
        return float(diagram.get_phase_separation_energy(entry))

    def formation_energy_per_atom(self, entry_id: str) -> float | None:
        """Formation energy per atom from the lowest elemental references, eV/atom."""
        entry = self._entries[entry_id]
        diagram = self.phase_diagram(entry.composition)
        return None if diagram is None else float(diagram.get_form_energy_per_atom(entry))


@dataclass(frozen=True)
class HullResult:
    """An entry's distance to a hull, eV/atom (negative: below a reference hull it is
    not part of), and the hull phases it decomposes into (reduced formula -> atomic
    fraction; itself alone for a hull vertex). Both None where there is no hull, and
    `reason` says why."""

    entry_id: str
    formula: str
    e_above_hull: float | None
    decomposition: dict[str, float] | None
    reason: str | None = None


def _fractions(composition: Composition, symbols: list[str]) -> list[float]:
    """Atomic fractions of `symbols`, as `Composition.get_atomic_fraction` gives them, in
    one pass over the composition (the per-element method recounts the atoms)."""
    amounts, atoms = composition.get_el_amt_dict(), composition.num_atoms
    return [amounts.get(symbol, 0.0) / atoms for symbol in symbols]


def _judge(diagram: PhaseDiagram, entries: list[ComputedEntry]) -> list[tuple[float, dict[str, float]] | None]:
    """pymatgen's `diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)` for
    many entries in one pass: barycentric coordinates of every entry in every facet,
    the first facet holding it (pymatgen's tolerance), amounts under pymatgen's
    tolerance dropped. None where no facet holds an entry (pymatgen raises)."""
    tol = PhaseDiagram.numerical_tol
    facets = np.asarray(diagram.facets)  # (facets, dim) rows of qhull_data / qhull_entries
    augmented = diagram.qhull_data[facets]  # vertices' coordinates, then energy per atom
    augmented[..., -1] = 1.0
    inverses = np.linalg.inv(augmented)  # the matrices of pymatgen's Simplex.bary_coords
    symbols = [el.symbol for el in diagram.elements[1:]]
    points = np.array([_fractions(e.composition, symbols) + [1.0] for e in entries])
    energies = np.array([e.energy_per_atom for e in entries])
    stable = diagram.stable_entries
    formulas: dict[int, str] = {}

    def formula(vertex: int) -> str:
        if vertex not in formulas:
            formulas[vertex] = diagram.qhull_entries[vertex].composition.reduced_formula
        return formulas[vertex]

    out: list[tuple[float, dict[str, float]] | None] = []
    step = max(1, CHUNK_SIZE // facets.size)
    for start in range(0, len(entries), step):
        bary = np.einsum("nk,fkj->nfj", points[start : start + step], inverses)
        inside = (bary >= -tol / 10).all(axis=2)
        first = inside.argmax(axis=1)
        amounts = bary[np.arange(len(first)), first]
        kept = np.abs(amounts) > tol
        hull_energy = np.where(kept, amounts * diagram.qhull_data[facets[first], -1], 0.0).sum(axis=1)
        e_hull = energies[start : start + step] - hull_energy
        rows = zip(entries[start : start + step], inside.any(axis=1), facets[first].tolist(), amounts.tolist(), e_hull)
        for entry, found, vertices, fractions, e in rows:
            if entry in stable:
                out.append((0.0, {entry.composition.reduced_formula: 1.0}))
            elif not found:
                out.append(None)
            else:
                out.append((float(e), {formula(v): a for v, a in zip(vertices, fractions) if abs(a) > tol}))
    return out


def e_above_hull_many(
    candidates: Iterable[ComputedEntry], reference: Hull | Iterable[ComputedEntry]
) -> list[HullResult]:
    """Each candidate's distance to the hull of `reference`, judged alone (candidates are
    not added to the reference, so no candidate affects another), in candidate order.

    Equal, within 1e-9 eV/atom, to pymatgen's `get_decomp_and_e_above_hull(candidate,
    allow_negative=True)` on a fresh diagram of the candidate's chemical system, but
    with one diagram per group of systems, cached in the reference `Hull`. A candidate
    whose system lacks an elemental reference, or whose energy is not finite, gets None
    and a reason. ValueError for candidates without ids, duplicated ids, or on another
    energy scale than the reference.
    """
    hull = reference if isinstance(reference, Hull) else Hull(reference)
    candidates = list(candidates)
    _check_ids(candidates)
    _shared_scale(candidates, hull.scale)
    outcomes: dict[int, tuple[float | None, dict[str, float] | None, str | None]] = {}
    by_system: dict[Chemsys, list[int]] = defaultdict(list)
    for index, entry in enumerate(candidates):
        if math.isfinite(entry.energy):
            by_system[chemsys_of(entry.composition)].append(index)
        else:
            outcomes[index] = (None, None, "non-finite energy")
    diagrams = hull.covering_diagrams(by_system)
    by_diagram: dict[int, tuple[PhaseDiagram, list[int]]] = {}
    for system, indices in by_system.items():
        if system in diagrams:
            by_diagram.setdefault(id(diagrams[system]), (diagrams[system], []))[1].extend(indices)
        else:
            outcomes.update(dict.fromkeys(indices, (None, None, hull.unjudged_reason(system))))
    for diagram, indices in by_diagram.values():
        for index, judged in zip(indices, _judge(diagram, [candidates[i] for i in indices])):
            outcomes[index] = (*judged, None) if judged else (None, None, "no hull facet holds the composition")
    return [HullResult(e.entry_id, e.composition.reduced_formula, *outcomes[i]) for i, e in enumerate(candidates)]


def hull_table(
    entries: Iterable[ComputedEntry], reference: Hull | Iterable[ComputedEntry] | None = None
) -> list[HullResult]:
    """Every entry's distance to the hull: of `reference`, each entry judged alone as in
    `e_above_hull_many`, or without one, of the entries themselves (vertices at 0)."""
    entries = list(entries)
    return e_above_hull_many(entries, Hull(entries) if reference is None else reference)


def write_hull_csv(results: Iterable[HullResult], path: str | Path) -> None:
    """Write `EHULL_CSV_COLUMNS`; the decomposition as "Li2O:0.5 O2:0.5" (largest first),
    empty cells where there is no hull and `reason` says why."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EHULL_CSV_COLUMNS)
        for result in results:
            products = sorted((result.decomposition or {}).items(), key=lambda item: -item[1])
            writer.writerow([
                result.entry_id,
                result.formula,
                "" if result.e_above_hull is None else repr(result.e_above_hull),
                " ".join(f"{formula}:{amount:.6g}" for formula, amount in products),
                result.reason or "",
            ])
