"""The records of a known-materials snapshot: each known phase, and the snapshot
they make together (`gnome_loop.snapshot.load_snapshot` builds one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pymatgen.core import Composition, Structure


@dataclass
class KnownPhase:
    """One known phase of the snapshot.

    `energy` is the total (corrected) energy in eV of the cell, None when unknown;
    `scale` names its energy scale (e.g. "mp2020") so that hulls never mix scales.
    `composition` defaults to the structure's; it is required when there is no
    structure (a plain `ComputedEntry`). `hull_reference` is False for a phase kept
    only as a substitution parent, dedup reference and training structure, whose
    energy (the oracle's) does not join the hull: the prototypes of a campaign judged
    against MP's stable phases (`gnome_loop.snapshot.reference`).
    """

    id: str
    structure: Structure | None
    energy: float | None
    source: str
    scale: str | None
    info: dict = field(default_factory=dict)
    composition: Composition | None = None
    hull_reference: bool = True

    def __post_init__(self) -> None:
        if self.composition is None:
            if self.structure is None:
                raise ValueError(f"known phase {self.id} needs a structure or a composition")
            self.composition = self.structure.composition


@dataclass
class Snapshot:
    """The known phases of a campaign, the rows skipped by reason, what they came from, and
    (with MP's reference hull) the elements of the space MP's table has no elemental phase of."""

    phases: list[KnownPhase]
    skipped: Counter = field(default_factory=Counter)
    version: str = ""
    missing_from_mp: list[str] = field(default_factory=list)
