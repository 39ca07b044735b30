"""Build the embedded reference hull: the Materials Project's stable phases as a compact
table inside the package, with a card naming its source, licence and how it was made.

    python scripts/build_reference_hull.py [--source ../shared/data/mp_reference/mp_materials_summary.csv.gz]

Reads the MP summary table of GNoME's data release (31,840 MP hull vertices:
composition, material id, total energy) and writes
`gnome_loop/data/mp_stable_phases.csv.gz` (composition, id, the source's energy and
the MP2020-corrected one; rows in the source's order, a reproducible gzip) and
`gnome_loop/data/mp_stable_phases.card.json`. Nothing else of the release is kept:
its other columns (GNoME's own decomposition energies) are not MP data.

The release's column "Corrected Energy" holds MP's *uncorrected* GGA/GGA+U energies
(checked: the 23 phases it shares with `mp_chemsys/Li-Co-Ni-O.json.gz` equal that
file's uncorrected energies to 1e-4 eV/atom, e.g. NiO -4.968 eV/atom where MP2020 says
-6.582). So the MP2020 corrections are applied here, with MP's parameters for each
composition (`gnome_loop.compatibility.mp2020_energy`); the oxygen anion (oxide,
peroxide, superoxide, ozonide) is read from the phase's structure in
`mp37k` where that holds its id (pymatgen's bond-length rule, as MP does), else from
the composition's charge balance. Run it from a clean checkout so the card names
the commit.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
from pymatgen.analysis.structure_analyzer import oxide_type
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gnome_loop.compatibility import mp2020_energy, oxide_type_of  # noqa: E402
from gnome_loop.hull import hull_table  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "mp_reference" / "mp_materials_summary.csv.gz"
STRUCTURES = ROOT.parent / "shared" / "data" / "mp37k" / "mp37k_eform.csv.gz"
TABLE = ROOT / "gnome_loop" / "data" / "mp_stable_phases.csv.gz"
CARD = TABLE.with_name("mp_stable_phases.card.json")
#: The source's columns kept; its energy column is MP's uncorrected energy (module docstring).
SOURCE_COLUMNS = ("Composition", "MaterialId", "Corrected Energy")
COLUMNS = ("Composition", "MaterialId", "Uncorrected Energy", "Corrected Energy")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_commit() -> str:
    """The checkout's commit, marked '-dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")


def oxygen_structures(path: Path, ids: set[str]) -> dict[str, Structure]:
    """The structures `path` (mp37k's CSV of CIFs) holds of the oxygen-bearing phases `ids`."""
    if not path.is_file():
        return {}
    table = pd.read_csv(path, usecols=["material_id", "cif"])
    return {row.material_id: Structure.from_str(row.cif, fmt="cif")
            for row in table[table.material_id.isin(ids)].itertuples()}


def corrected_rows(source: Path, structures: Path) -> tuple[list[list[str]], Counter]:
    """The source's rows as `COLUMNS`: its energy kept as the uncorrected one, and the
    MP2020-corrected energy beside it; and how each oxygen anion was decided."""
    with gzip.open(source, "rt", newline="") as handle:
        rows = [[row[name] for name in SOURCE_COLUMNS] for row in csv.DictReader(handle)]
    compositions = [Composition(row[0]) for row in rows]
    known = oxygen_structures(structures, {row[1] for row, c in zip(rows, compositions) if "O" in c})
    basis: Counter = Counter()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oxidation-state guesses warn for intermetallics
        for (formula, material_id, energy), composition in zip(rows, compositions):
            kind = None
            if "O" in composition and len(composition) > 1:
                structure = known.get(material_id)
                kind = oxide_type(structure, 1.05) if structure is not None else oxide_type_of(composition)
                kind = "oxide" if kind == "hydroxide" else kind
                basis[f"{kind} ({'structure' if structure is not None else 'composition'})"] += 1
            corrected = mp2020_energy(composition, float(energy), kind, material_id)
            out.append([formula, material_id, energy, f"{corrected:.8f}"])
    return out, basis


def table_bytes(rows: list[list[str]]) -> bytes:
    """The gzipped CSV of `COLUMNS`. The gzip header carries no name or time, so the same
    rows give the same bytes."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(text.getvalue().encode())
    return buffer.getvalue()


def own_hull_check(rows: list[list[str]]) -> dict:
    """How many rows lie above the hull of the table's own corrected energies (eV/atom)."""
    entries = [ComputedEntry(Composition(row[0]), float(row[3]), entry_id=row[1]) for row in rows]
    above = [(r.entry_id, r.formula, r.e_above_hull) for r in hull_table(entries)
             if r.e_above_hull is not None and r.e_above_hull > 1e-6]
    worst = max(above, key=lambda item: item[2], default=None)
    return {"rows_above_own_hull": len(above), "worst": worst and [worst[0], worst[1], round(worst[2], 4)]}


def card(source: Path, table: bytes, rows: int, basis: Counter, check: dict) -> dict:
    """What the table is, where it comes from, its licence and how it was made."""
    return {
        "name": "Materials Project stable phases (MP2020-corrected)",
        "file": TABLE.name,
        "rows": rows,
        "columns": {
            "Composition": "composition of the MP cell, e.g. 'Li2O1'",
            "MaterialId": "Materials Project id (mp-...)",
            "Uncorrected Energy": "total energy of the cell, eV: MP's GGA/GGA+U energy as the source gives it",
            "Corrected Energy": "the same with the MP2020 corrections, eV (what a hull is built from)",
        },
        "corrections": {
            "how": "gnome_loop.compatibility.mp2020_energy: pymatgen's MaterialsProject2020Compatibility "
                   "with MP's run type, U values and POTCARs for each composition",
            "oxygen_anion": dict(sorted(basis.items())),
            "why": "the source's column 'Corrected Energy' holds MP's uncorrected energies: the 23 phases it "
                   "shares with mp_chemsys/Li-Co-Ni-O.json.gz equal that file's uncorrected energies",
        },
        "what": "the phases of the Materials Project's convex hull that GNoME's release lists (1 to 6 "
                "elements; it lacks some, e.g. MgO and every binary Fe oxide); energies only, no structures",
        "source": {
            "file": "data/mp_materials_summary.csv of GNoME's data release",
            "repository": "https://github.com/google-deepmind/materials_discovery",
            "commit": "4023209631ccd1d0e070775852ae2e8ebc369060",
            "sha256_of_gzipped_copy": _sha256(source.read_bytes()),
            "mp_database_version": "not stated by the release",
            "kept": "Composition, MaterialId and the energy only; the release's other columns "
                    "(GNoME's decomposition energies) are left out",
            "structures_for_oxygen_anions": "mp37k_eform.csv.gz (kdmsit/crysxpp, MIT; MP data, CC BY 4.0)",
        },
        "caveat": f"{check['rows_above_own_hull']:,} of the {rows:,} rows lie above the hull of the table's own "
                  f"corrected energies by more than 1e-6 eV/atom (worst: {check['worst']}); the release also "
                  "lacks some MP hull phases (MgO, every Fe oxide, ...): a space holding them is judged "
                  "without them",
        "licence": "CC BY 4.0 (Materials Project data). The GNoME repository licenses its own database "
                   "(GNoME's materials) under CC BY-NC 4.0; none of it is kept here.",
        "attribution": "Data from the Materials Project. Cite: A. Jain, S. P. Ong, G. Hautier, W. Chen, "
                       "W. D. Richards, S. Dacek, S. Cholia, D. Gunter, D. Skinner, G. Ceder, K. A. Persson, "
                       "'Commentary: The Materials Project: A materials genome approach to accelerating "
                       "materials innovation', APL Materials 1, 011002 (2013), doi:10.1063/1.4812323. "
                       "Obtained through GNoME's data release: A. Merchant et al., 'Scaling deep learning for "
                       "materials discovery', Nature 624, 80 (2023), doi:10.1038/s41586-023-06735-9.",
        "made_by": {"script": "scripts/build_reference_hull.py", "gnome_loop_commit": _git_commit()},
        "sha256": _sha256(table),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="mp_materials_summary.csv(.gz)")
    source = parser.parse_args().source
    if not source.is_file():
        raise SystemExit(f"{source} not found: the reference data lives in ../shared/data beside the checkout")
    rows, basis = corrected_rows(source, STRUCTURES)
    table = table_bytes(rows)
    check = own_hull_check(rows)
    about = card(source, table, len(rows), basis, check)  # before writing: its commit is then clean
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_bytes(table)
    CARD.write_text(json.dumps(about, indent=2) + "\n")
    print(f"wrote {len(rows)} rows to {TABLE} ({len(table) / 1e6:.2f} MB) and {CARD.name}; oxygen anions "
          f"{dict(basis)}; {check['rows_above_own_hull']} rows above their own hull (worst {check['worst']})")


if __name__ == "__main__":
    main()
