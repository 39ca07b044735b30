"""Build the embedded reference hull: the Materials Project's stable phases as a compact
table inside the package, with a card naming its source, licence and how it was made.

    python scripts/build_reference_hull.py [--source ../shared/data/mp_reference/mp_materials_summary.csv.gz]

Reads the MP summary table of GNoME's data release (31,840 MP hull vertices:
composition, material id, MP2020-corrected total energy) and writes
`gnome_loop/data/mp_stable_phases.csv.gz` (only those three columns, rows in the
source's order, a reproducible gzip) and `gnome_loop/data/mp_stable_phases.card.json`.
Nothing else of the release is kept: its other columns (GNoME's own decomposition
energies) are not MP data. Run it from a clean checkout so the card names the commit.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "mp_reference" / "mp_materials_summary.csv.gz"
TABLE = ROOT / "gnome_loop" / "data" / "mp_stable_phases.csv.gz"
CARD = TABLE.with_name("mp_stable_phases.card.json")
COLUMNS = ("Composition", "MaterialId", "Corrected Energy")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_commit() -> str:
    """The checkout's commit, marked '-dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")


def table_bytes(source: Path) -> tuple[bytes, int]:
    """The gzipped CSV of `COLUMNS` (energies as the source writes them) and its row count.
    The gzip header carries no name or time, so the same source gives the same bytes."""
    with gzip.open(source, "rt", newline="") as handle:
        rows = [[row[name] for name in COLUMNS] for row in csv.DictReader(handle)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(text.getvalue().encode())
    return buffer.getvalue(), len(rows)


def card(source: Path, table: bytes, rows: int) -> dict:
    """What the table is, where it comes from, its licence and how it was made."""
    return {
        "name": "Materials Project stable phases (MP2020-corrected)",
        "file": TABLE.name,
        "rows": rows,
        "columns": {
            "Composition": "composition of the MP cell, e.g. 'Li2O1'",
            "MaterialId": "Materials Project id (mp-...)",
            "Corrected Energy": "total energy of the cell, eV: MP GGA/GGA+U with the MP2020 corrections",
        },
        "what": "every phase on the Materials Project convex hull as snapshotted for GNoME (1 to 6 elements); "
                "energies only, no structures",
        "source": {
            "file": "data/mp_materials_summary.csv of GNoME's data release",
            "repository": "https://github.com/google-deepmind/materials_discovery",
            "commit": "4023209631ccd1d0e070775852ae2e8ebc369060",
            "sha256_of_gzipped_copy": _sha256(source.read_bytes()),
            "mp_database_version": "not stated by the release (a snapshot of MP with MP2020 corrections)",
            "kept": "Composition, MaterialId and Corrected Energy only; the release's other columns "
                    "(GNoME's decomposition energies) are left out",
        },
        "caveat": "every row was a vertex of MP's hull when GNoME snapshotted it, but with these energies "
                  "1,422 of the 31,840 rows lie above the hull of the table itself by more than 1e-6 eV/atom "
                  "(up to 0.44 eV/atom; tests/test_hull.py::test_mp_table_on_its_own_hull), e.g. LiO8 "
                  "(mp-1235059) by 31 meV/atom: a hull built from the table is judged by these energies",
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
    table, rows = table_bytes(source)
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_bytes(table)
    CARD.write_text(json.dumps(card(source, table, rows), indent=2) + "\n")
    print(f"wrote {rows} rows to {TABLE} ({len(table) / 1e6:.2f} MB) and {CARD.name}")


if __name__ == "__main__":
    main()
