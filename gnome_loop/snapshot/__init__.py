"""Known-materials snapshots: the phases a campaign starts from.

A snapshot is a list of :class:`KnownPhase` records: known structures (substitution
parents, dedup references) and, when the source has them, energies for the convex
hull. Two sources exist: the embedded prototype library with elemental references
(no energies) and a user's entries file (energies on the file's own scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymatgen.core import Composition, Structure

from gnome_loop.config import CampaignConfig


@dataclass
class KnownPhase:
    """One known phase of the snapshot.

    `energy` is the total (corrected) energy in eV of the cell, None when unknown;
    `scale` names its energy scale (e.g. "mp2020") so that hulls never mix scales.
    `composition` defaults to the structure's; it is required when there is no
    structure (a plain `ComputedEntry`).
    """

    id: str
    structure: Structure | None
    energy: float | None
    source: str
    scale: str | None
    info: dict = field(default_factory=dict)
    composition: Composition | None = None

    def __post_init__(self) -> None:
        if self.composition is None:
            if self.structure is None:
                raise ValueError(f"known phase {self.id} needs a structure or a composition")
            self.composition = self.structure.composition


def load_snapshot(config: CampaignConfig) -> list[KnownPhase]:
    """The known phases of a campaign, from the source its config names."""
    # Imported here because both modules import KnownPhase from this package.
    from gnome_loop.snapshot.files import load_entries_file
    from gnome_loop.snapshot.prototypes import load_prototypes

    space = config.chemical_space
    if config.snapshot.source == "file":
        return load_entries_file(config.snapshot.path, space.elements, space.max_elements)
    return load_prototypes(space.elements, space.max_elements, space.max_atoms)
