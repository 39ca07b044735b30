"""The convex hull of formation energies: which entries are stable, and how far above
(or below) the hull any other composition and energy lies.

One pymatgen `PhaseDiagram` per chemical system, built from every entry whose
elements are a subset of that system and cached; adding entries rebuilds only the
diagrams of the systems they touch. A system lacking an elemental reference has no
hull: its queries answer None, never a wrong number.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Iterable

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

#: Distance to the hull, eV/atom, under which an entry counts as stable (GNoME's
#: tolerance for numerical noise, Merchant et al. 2023, data release notes).
STABLE_TOL = 5e-5

Chemsys = frozenset[str]


def chemsys_of(elements: str | Composition | Iterable[str]) -> Chemsys:
    """The chemical system of a composition, an iterable of symbols or a 'Li-Co-O' string."""
    if isinstance(elements, str):
        return frozenset(elements.split("-"))
    if isinstance(elements, Composition):
        return frozenset(el.symbol for el in elements.elements)
    return frozenset(elements)


class Hull:
    """Entries keyed by id and the convex hulls of their chemical systems.

    Each entry is a `ComputedEntry` (or `ComputedStructureEntry`) whose `entry_id` is
    its key and whose `energy` is the total corrected energy. Entries carrying
    `data["scale"]` must all share the hull's scale (set by `scale`, or by the first
    labelled entry): energies from different scales must never share a hull.
    Entries without a label are taken to be on the hull's scale.

    `pd_builds` counts the `PhaseDiagram`s built, to check that updates are local.
    """

    def __init__(self, entries: Iterable[ComputedEntry] = (), scale: str | None = None) -> None:
        self.scale = scale
        self.pd_builds = 0
        self._entries: dict[str, ComputedEntry] = {}
        self._ids_by_chemsys: dict[Chemsys, set[str]] = defaultdict(set)
        self._diagrams: dict[Chemsys, PhaseDiagram] = {}
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

        Raises ValueError, before changing anything, for an entry without an id or on
        another energy scale.
        """
        entries = list(entries)
        scale = self.scale
        for entry in entries:
            if not entry.entry_id:
                raise ValueError(f"entry {entry.composition.reduced_formula} has no entry_id")
            entry_scale = entry.data.get("scale")
            if scale is None:
                scale = entry_scale
            elif entry_scale not in (None, scale):
                raise ValueError(
                    f"entry {entry.entry_id} has energy scale {entry_scale!r} but the hull holds "
                    f"{scale!r} energies; re-evaluate it on the hull's scale"
                )
        self.scale = scale
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

    def phase_diagram(self, chemsys: str | Composition | Iterable[str]) -> PhaseDiagram | None:
        """The (cached) diagram of every entry within `chemsys`; None when an elemental
        reference is missing."""
        system = chemsys_of(chemsys)
        if system in self._diagrams:
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
        return diagram

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
