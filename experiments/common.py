"""What every benchmark shares: where the reference data lie and how results are written."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

#: The reference data (../shared/data beside the checkout); GNOME_LOOP_DATA points elsewhere.
DATA = Path(os.environ.get("GNOME_LOOP_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
RESULTS = Path(__file__).resolve().parent / "results"


def write_results(path: Path, result: dict) -> None:
    """Write a benchmark's JSON results (default folder: experiments/results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def bench_parser(doc: str, name: str | None, quick: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: `--quick` (what it leaves out: `quick`) and
    `--json` (default experiments/results/NAME.json; None: the benchmark decides)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, default=RESULTS / f"{name}.json" if name else None,
                        help="where the results are written")
    return parser
