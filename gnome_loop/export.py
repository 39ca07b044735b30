"""Writers for the updated hull and its materials, in the formats of GNoME's data
release (google-deepmind/materials_discovery, DATASET.md) so users can diff the two.

Each writer works on plain entries and structures: no campaign is needed.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

from ase.io import write
from monty.serialization import dumpfn
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pymatgen.entries.computed_entries import ComputedStructureEntry

from gnome_loop.hull import Hull

#: Columns of `stable_materials_hull.csv`: GNoME's columns plus the round and the
#: generator that found each material.
STABLE_CSV_COLUMNS = [
    "Composition",
    "Reduced Formula",
    "Elements",
    "NSites",
    "Corrected Energy",
    "Formation Energy Per Atom",
    "Decomposition Energy Per Atom",
    "MaterialId",
    "Round",
    "Generator",
]

#: Columns of `stable_materials_summary.csv`: `STABLE_CSV_COLUMNS` plus GNoME's structure
#: columns and where each material came from.
SUMMARY_CSV_COLUMNS = [
    *STABLE_CSV_COLUMNS[:4], "Volume", "Density", "Space Group", "Space Group Number", "Crystal System",
    *STABLE_CSV_COLUMNS[4:], "Parents", "Source",
]

#: Timestamp of every member of the CIF zip, so that the same structures give the
#: same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def stable_rows(hull: Hull, entries: dict[str, ComputedStructureEntry], meta: dict[str, dict]) -> list[dict]:
    """Rows of `stable_materials_hull.csv` for the entries of `entries` that are stable
    in `hull`, sorted by reduced formula then id.

    `meta[id]` gives "round" and "generator" (blank when absent). As in GNoME's
    release, Composition is alphabetical with explicit counts ("Co1Li1O2"), Elements
    is the list's repr ("['Co', 'Li', 'O']"), and Decomposition Energy Per Atom is
    the distance to the hull of the other compositions (negative for a vertex).
    """
    stable = hull.stable_ids() & entries.keys()
    rows = []
    for entry_id in stable:
        entry = entries[entry_id]
        composition = entry.composition
        info = meta.get(entry_id, {})
        rows.append(
            {
                "Composition": composition.alphabetical_formula.replace(" ", ""),
                "Reduced Formula": composition.reduced_formula,
                "Elements": str(sorted(el.symbol for el in composition.elements)),
                "NSites": len(entry.structure),
                "Corrected Energy": entry.energy,
                "Formation Energy Per Atom": hull.formation_energy_per_atom(entry_id),
                "Decomposition Energy Per Atom": hull.decomposition_energy(entry_id),
                "MaterialId": entry_id,
                "Round": info.get("round", ""),
                "Generator": info.get("generator", ""),
            }
        )
    return sorted(rows, key=lambda row: (row["Reduced Formula"], row["MaterialId"]))


def summary_row(row: dict, structure: Structure, parents: list[str], source: str) -> dict:
    """A `stable_materials_summary.csv` row: a hull row plus symmetry, volume and density."""
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=0.1)
        symmetry = (analyzer.get_space_group_symbol(), analyzer.get_space_group_number(),
                    analyzer.get_crystal_system())
    except Exception:  # spglib can fail on odd cells: leave the columns blank, never lose the row
        symmetry = ("", "", "")
    return {**row, "Volume": structure.volume, "Density": float(structure.density), "Space Group": symmetry[0],
            "Space Group Number": symmetry[1], "Crystal System": symmetry[2], "Parents": " ".join(parents),
            "Source": source}


def write_stable_hull_csv(rows: list[dict], path: str | Path, columns: list[str] = STABLE_CSV_COLUMNS) -> None:
    """Write `stable_materials_hull.csv` (or, with `SUMMARY_CSV_COLUMNS`, the summary);
    every row must have exactly `columns`."""
    for row in rows:
        if set(row) != set(columns):
            raise ValueError(f"row {row.get('MaterialId')!r} does not have the columns {columns}")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_extxyz(entries: list[ComputedStructureEntry], path: str | Path) -> None:
    """One extxyz frame per entry: the structure, its total corrected energy (`energy`) and its
    `entry_id` and scalar `data` fields in the frame's info, readable by `ase.io.read(path, ":")`."""
    frames = []
    for entry in entries:
        atoms = AseAtomsAdaptor.get_atoms(entry.structure)
        atoms.info.update({key: value for key, value in entry.data.items()
                           if isinstance(value, (str, int, float)) and not isinstance(value, bool)})
        atoms.info.update(entry_id=entry.entry_id, energy=entry.energy,
                          energy_per_atom=entry.energy / len(entry.structure))
        frames.append(atoms)
    write(str(path), frames, format="extxyz")


def write_entries_json(entries: list[ComputedStructureEntry], path: str | Path) -> None:
    """Write entries as a monty-JSON list (gzipped when `path` ends with .gz) that
    `monty.serialization.loadfn` reads back and `PhaseDiagram` accepts."""
    dumpfn(list(entries), str(path))


def write_cif_zip(structures: dict[str, Structure], path: str | Path) -> None:
    """Write a zip of `<id>.cif` files (GNoME's `by_id.zip`), sorted by id."""
    with zipfile.ZipFile(path, "w") as archive:
        for entry_id in sorted(structures):
            member = zipfile.ZipInfo(f"{entry_id}.cif", date_time=_ZIP_DATE)
            member.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(member, structures[entry_id].to(fmt="cif"))
