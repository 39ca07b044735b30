"""The job-folder protocol shared by every oracle and scheduler.

A job is a folder holding `job.json` (what to relax and with which oracle) and, once
it has run, `result.json` (an :class:`OracleResult`). Any process that can read the
folder can run the job: the campaign in-process, a dask worker, or a user running
`gnome-loop run-job JOBDIR` on a cluster node. Both files are written atomically, so
a reader never sees half a file from a writer that was killed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from pymatgen.core import Structure

from gnome_loop.structures import validate_structure

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
#: A relaxation that changes the volume per atom by more than this factor (either way) blew up.
MAX_VOLUME_FACTOR = 3.0


@dataclass
class OracleResult:
    """What an oracle made of one structure.

    `energy` is the total energy of the relaxed cell in eV on the oracle's energy
    scale. `trajectory` holds per-step `energies`, `forces`, `stresses` (Voigt,
    eV/Å^3, empty when the calculator has none), `cells` and cartesian `positions`:
    training data for interatomic potentials.
    """

    ok: bool
    error: str | None = None
    energy: float | None = None
    structure: Structure | None = None
    trajectory: dict = field(default_factory=dict)
    attempt: int = 0
    wall_s: float = 0.0
    steps: int = 0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the structure as `Structure.as_dict()`)."""
        data = asdict(self)
        data["structure"] = self.structure.as_dict() if self.structure is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "OracleResult":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("structure") is not None:
            data["structure"] = Structure.from_dict(data["structure"])
        return cls(**data)


class Oracle(Protocol):
    """Turns a structure into a relaxed structure and its total energy."""

    name: str
    scale: str

    def relax(self, structure: Structure) -> OracleResult: ...


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file in the same folder and `os.replace`.

    A reader sees the old file or the new one, never a partial write.
    """
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def write_json_atomic(path: Path, data: dict | list) -> None:
    """Write `data` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(data))


def write_job(jobdir: Path, job_id: str, candidate_id: str, structure: Structure, oracle: dict, attempt: int) -> None:
    """Create the job folder and its `job.json`; `oracle` is the dumped `Oracle` config section."""
    jobdir = Path(jobdir)
    jobdir.mkdir(parents=True, exist_ok=True)
    job = {
        "job_id": job_id,
        "candidate_id": candidate_id,
        "structure": structure.as_dict(),
        "oracle": oracle,
        "attempt": attempt,
    }
    write_json_atomic(jobdir / JOB_FILE, job)


def run_job(jobdir: Path | str) -> OracleResult:
    """Run the job in `jobdir`, write its `result.json` and return the result.

    Never raises for a failed relaxation: any exception, a non-finite energy or an
    exploded cell becomes `ok=False` with the reason in `error`.
    """
    from gnome_loop.oracle import make_oracle  # the registry imports this module

    jobdir = Path(jobdir)
    start = time.perf_counter()
    job = json.loads((jobdir / JOB_FILE).read_text())
    try:
        initial = Structure.from_dict(job["structure"])
        result = make_oracle(job["oracle"]).relax(initial)
        if result.ok:
            result = _sanity_check(result, initial)
    except Exception as error:  # any failure of the oracle is a failed job, not a crash
        result = OracleResult(ok=False, error=f"{type(error).__name__}: {error}")
    result.attempt = job["attempt"]
    result.wall_s = time.perf_counter() - start
    write_json_atomic(jobdir / RESULT_FILE, result.to_dict())
    return result


def _sanity_check(result: OracleResult, initial: Structure) -> OracleResult:
    """Fail results whose energy is not finite or whose relaxed cell blew up."""
    if result.energy is None or not math.isfinite(result.energy):
        # the trajectory is garbage too (and NaN is not valid JSON): keep only the reason
        return OracleResult(ok=False, error=f"non-finite energy: {result.energy}", steps=result.steps)
    relaxed = result.structure
    ratio = (relaxed.volume / len(relaxed)) / (initial.volume / len(initial))
    if not 1 / MAX_VOLUME_FACTOR <= ratio <= MAX_VOLUME_FACTOR:
        problem = f"volume per atom changed by a factor {ratio:.3g}"
    else:  # also rejects atoms closer than 0.5 Å
        problem = validate_structure(relaxed)
    if problem is not None:
        result.ok = False
        result.error = f"exploded cell: {problem}"
    return result


def read_result(jobdir: Path | str) -> OracleResult | None:
    """The result in `jobdir`, None when it has not run, a failed result when the file is corrupt."""
    path = Path(jobdir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        return OracleResult.from_dict(json.loads(path.read_text()))
    except Exception as error:  # truncated or hand-edited file: report it as a failed job
        return OracleResult(ok=False, error=f"unreadable result.json: {type(error).__name__}: {error}")
