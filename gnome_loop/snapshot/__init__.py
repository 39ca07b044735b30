"""Known-materials snapshots: the phases a campaign starts from.

A snapshot is a list of :class:`KnownPhase` records (`snapshot.phases`): known structures (substitution
parents, dedup references) and, when the source has them, energies for the convex
hull. Two sources exist: the embedded prototype library with elemental references
(no energies) and a user's entries file (energies on the file's own scale).
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

from gnome_loop.config import CampaignConfig
from gnome_loop.snapshot import files
from gnome_loop.snapshot.phases import KnownPhase, Snapshot
from gnome_loop.snapshot.prototypes import load_prototypes
from gnome_loop.snapshot.reference import with_mp_reference

__all__ = ["KnownPhase", "Snapshot", "load_snapshot"]


def load_snapshot(config: CampaignConfig, cache_dir: Path | None = None) -> Snapshot:
    """The known phases of a campaign, from the source its config names.

    A file is read by its kind: entries JSON (`.json`, `.json.gz`), an energy table
    (`.csv`, `.csv.gz`), extxyz (`.extxyz`, `.xyz`), or a folder/zip of CIFs. MP
    entries are fetched once and cached in `cache_dir` (the campaign's folder). With
    `snapshot.reference_hull: mp`, MP's stable phases of the space are the hull and the
    prototypes only parents (`gnome_loop.snapshot.reference.with_mp_reference`).
    """
    space, settings = config.chemical_space.space(), config.snapshot
    correct = config.oracle.scale() == "mp2020"
    if settings.source == "prototypes":
        snapshot = Snapshot(load_prototypes(space),
                            version=f"AFLOW prototypes of pymatgen {version('pymatgen')} + ASE {version('ase')} "
                            "references")
        if settings.reference_hull == "mp":
            return with_mp_reference(snapshot, space)
        return snapshot
    if settings.source == "mp":
        from gnome_loop.snapshot.mp import cached_mp_snapshot

        mp = cached_mp_snapshot(space.elements, space.max_elements, settings.endpoint, cache_dir)
        phases = files.phases_of_entries(mp.entries, "mp", space, correct)
        return Snapshot(phases, version=f"Materials Project {mp.database_version}")
    path = Path(settings.path)
    name = path.name.lower()
    digest = f"{path.name} (sha1 {_sha1(path)})" if path.is_file() else f"{path.name}/"
    if name.endswith((".json", ".json.gz")):
        return Snapshot(files.load_entries_file(path, space, correct=correct),
                        version=digest)
    if name.endswith((".csv", ".csv.gz")):
        phases, skipped = files.load_energy_table(path, space, settings.scale)
    elif name.endswith((".extxyz", ".xyz")):
        phases, skipped = files.load_extxyz_entries(path, space, settings.scale)
    else:
        phases, skipped = files.load_cif_folder(path, space)
    return Snapshot(phases, skipped, digest)


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:12]
