"""What every benchmark shares: where the reference data lie and how results are written."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def write_results(path: Path, result: dict) -> None:
    """Write a benchmark's JSON results (default folder: experiments/results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
