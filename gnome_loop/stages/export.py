"""The campaign's exports, run on demand (`gnome-loop export`), not by the loop: its
hull entries, their provenance, and the files of `exports/` (docs/architecture.md,
"Hull and export"). The writers themselves are in `gnome_loop.export`.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version
from pathlib import Path

from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gnome_loop.export import (SUMMARY_CSV_COLUMNS, stable_rows, summary_row, write_cif_zip, write_entries_json,
                               write_extxyz, write_stable_hull_csv)
from gnome_loop.hull import chemsys_of
from gnome_loop.oracle.base import write_json_atomic
from gnome_loop.stages.context import StageContext
from gnome_loop.store import PARENT
from gnome_loop.structures import structure_from_json

EXPORT_FORMATS = ("csv", "json", "cif-zip", "extxyz")


def computed_entries(ctx: StageContext) -> list[ComputedEntry]:
    """All entries of the campaign's hull: a `ComputedStructureEntry` for each entry
    with a structure, a plain `ComputedEntry` for an energy-only reference. Round-0
    parents judged against MP's hull are not hull entries and are left out."""
    out = []
    for e in ctx.store.entries():
        if e["source"] == PARENT:
            continue
        data = {"source": e["source"], "round": e["round"], "e_above_hull": e["e_hull"], "scale": e["scale"],
                "candidate_id": e["candidate_id"]}
        if e["structure"]:
            out.append(ComputedStructureEntry(structure_from_json(e["structure"]), e["energy_corrected"],
                                              entry_id=e["id"], data=data))
        else:
            out.append(ComputedEntry(Composition(e["composition"]), e["energy_corrected"], entry_id=e["id"],
                                     data=data))
    return out


def provenance(ctx: StageContext) -> dict:
    """Where the campaign's numbers come from: stamped on every export."""
    store, oracle = ctx.store, ctx.config.oracle
    return {"campaign": ctx.config.name, "config_hash": store.meta("config_hash"),
            "snapshot": ctx.config.snapshot.source, "snapshot_version": store.meta("snapshot_version"),
            # a campaign made before gnome_loop recorded its hull used the snapshot's own
            "reference_hull": store.meta("reference_hull") or "none", "hull": store.meta("hull"),
            "oracle": ctx.oracle_label(), "oracle_kind": oracle.kind, "energy_scale": ctx.scale(),
            "dropped_elements": ctx.dropped_elements(),
            "oracle_scale": oracle.scale(),  # CHGNet's 'chgnet-mp2020' on MP's hull ('mp2020')
            "gnome_loop": version("gnome_loop"), "pymatgen": version("pymatgen"),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}


def export(ctx: StageContext, formats: list[str]) -> list[Path]:
    """Write the updated hull (`exports/`): csv (hull + summary), json (entries), cif-zip, extxyz.

    Every format carries the provenance: `provenance.json` beside them, and in
    each exported entry's data. `entries.json.gz` holds every entry the hull used,
    energy-only references as plain `ComputedEntry`s, so it loads into pymatgen's
    `PhaseDiagram` (`_exported_entries`).
    """
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; use {', '.join(EXPORT_FORMATS)}")
    stamp = provenance(ctx)
    exported = _exported_entries(ctx)
    for entry in exported:
        entry.data.update({key: stamp[key] for key in ("config_hash", "oracle", "energy_scale")})
    # the CSVs, CIFs and extxyz describe materials: entries with a structure
    entries = {e.entry_id: e for e in exported if isinstance(e, ComputedStructureEntry)}
    candidates = ctx.store.origins()
    meta = {key: {"round": e.data["round"],
                  "generator": candidates[e.data["candidate_id"]]["generator"]
                  if e.data["candidate_id"] in candidates else e.data["source"]}
            for key, e in entries.items()}
    rows = stable_rows(ctx.hull(), entries, meta)
    folder = ctx.directory / "exports"
    folder.mkdir(exist_ok=True)
    written = [folder / "provenance.json"]
    write_json_atomic(written[0], stamp)
    if "csv" in formats:
        written.append(folder / "stable_materials_hull.csv")
        write_stable_hull_csv(rows, written[-1])
        summary = []
        for row in rows:
            entry = entries[row["MaterialId"]]
            candidate = candidates.get(entry.data["candidate_id"])
            parents = json.loads(candidate["parent_ids"]) if candidate else []
            summary.append(summary_row(row, entry.structure, parents, entry.data["source"]))
        written.append(folder / "stable_materials_summary.csv")
        write_stable_hull_csv(summary, written[-1], SUMMARY_CSV_COLUMNS)
    if "json" in formats:
        written.append(folder / "entries.json.gz")
        write_entries_json(exported, written[-1])
    if "cif-zip" in formats:
        written.append(folder / "by_id.zip")
        write_cif_zip({row["MaterialId"]: entries[row["MaterialId"]].structure for row in rows}, written[-1])
    if "extxyz" in formats:
        written.append(folder / "stable_materials.extxyz")
        write_extxyz([entries[row["MaterialId"]] for row in rows], written[-1])
    return written


def _exported_entries(ctx: StageContext) -> list[ComputedEntry]:
    """The entries to export, which `PhaseDiagram` accepts: all of them, less those
    with an element dropped at the end of round 0. ValueError, naming the elements,
    when an exported entry has an element without a terminal (round 0 is not done,
    or the campaign was made before round 0 checked its terminals)."""
    dropped = set(ctx.dropped_elements())
    entries = [e for e in computed_entries(ctx) if not chemsys_of(e.composition) & dropped]
    elements = set().union(*(chemsys_of(e.composition) for e in entries))
    missing = ctx.hull().missing_elements(elements)
    if missing:
        raise ValueError(
            f"cannot export: no terminal (elemental entry) for {', '.join(missing)}, so exports/entries.json.gz "
            "would not load into pymatgen's PhaseDiagram; finish round 0 (`gnome-loop run`), which stops and "
            "says what to do when an element has no terminal")
    return entries
