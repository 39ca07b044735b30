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
    """Write a benchmark's JSON results (default folder: experiments/results), with the
    machine they were measured on: sessions run on different hosts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "machine": machine()}, indent=2) + "\n")


def machine() -> dict:
    """The CPU's model, its widest vector instructions and the CPUs this process may use."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields: dict[str, str] = {}
    for line in info.splitlines():  # the first CPU's fields
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = next((name for name in ("avx512f", "avx2", "sse4_2") if name in flags), "unknown")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": fields.get("model name", "unknown"), "isa": isa, "cpus": cpus}


def bench_parser(doc: str, name: str | None, quick: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: `--quick` (what it leaves out: `quick`) and
    `--json` (default experiments/results/NAME.json; None: the benchmark decides)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, default=RESULTS / f"{name}.json" if name else None,
                        help="where the results are written")
    return parser
