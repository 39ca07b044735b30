"""Writing, running and reading a job folder (`gnome_loop.oracle.base` describes
the protocol): each needs the oracle the folder names, so this module sits above
the oracle registry.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from pymatgen.core import Structure

from gnome_loop.oracle.base import (EXIT_MARKER, JOB_FILE, RESULT_FILE, SCRIPT_FILE, STARTED_MARKER, OracleResult,
                                    exit_status, explosion, job_script, write_json_atomic, write_text_atomic)
from gnome_loop.oracle.registry import make_oracle


def write_job(jobdir: Path, job_id: str, candidate_id: str, structure: Structure, oracle: dict, attempt: int) -> None:
    """Create the job folder: the oracle's inputs, `run.sh`, and last `job.json`.

    `oracle` is the dumped `OracleConfig` section. `job.json` comes last so that a
    folder with a `job.json` of this attempt is complete.
    """
    jobdir = Path(jobdir)
    jobdir.mkdir(parents=True, exist_ok=True)
    for marker in (STARTED_MARKER, EXIT_MARKER):
        (jobdir / marker).unlink(missing_ok=True)
    body = make_oracle(oracle).write_inputs(jobdir, structure)
    write_text_atomic(jobdir / SCRIPT_FILE, job_script(job_id, attempt, body))
    (jobdir / SCRIPT_FILE).chmod(0o755)
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
    jobdir = Path(jobdir)
    start = time.perf_counter()
    job = json.loads((jobdir / JOB_FILE).read_text())
    try:
        initial = Structure.from_dict(job["structure"])
        result = make_oracle(job["oracle"]).run(jobdir, initial)
        if result.ok:
            result = _sanity_check(result, initial)
    except Exception as error:  # any failure of the oracle is a failed job, not a crash
        result = OracleResult(ok=False, error=f"{type(error).__name__}: {error}")
    result.wall_s = result.wall_s or time.perf_counter() - start
    return _save(jobdir, job, result)


def _save(jobdir: Path, job: dict, result: OracleResult) -> OracleResult:
    result.attempt = job["attempt"]
    write_json_atomic(jobdir / RESULT_FILE, result.to_dict())
    return result


def _sanity_check(result: OracleResult, initial: Structure) -> OracleResult:
    """Fail results whose energy is not finite or whose relaxed cell blew up (`explosion`)."""
    if result.energy is None or not math.isfinite(result.energy):
        # the trajectory is garbage too (and NaN is not valid JSON): keep only the reason
        return OracleResult(ok=False, error=f"non-finite energy: {result.energy}", steps=result.steps)
    problem = explosion(initial, result.structure)
    if problem is not None:
        result.ok = False
        result.error = f"exploded cell: {problem}"
    return result


def read_result(jobdir: Path | str) -> OracleResult | None:
    """The result in `jobdir`, None while the job has not finished.

    Without a `result.json`, the oracle collects finished outputs written by a run
    elsewhere (a VASP run on a cluster) and the result is saved as `result.json`;
    a job script that ended without any result is a failed job. A corrupt
    `result.json` is a failed result, never an exception.
    """
    jobdir = Path(jobdir)
    path = jobdir / RESULT_FILE
    if not path.exists():
        try:
            job = json.loads((jobdir / JOB_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None  # not (yet) a complete job folder
        try:
            initial = Structure.from_dict(job["structure"])
            result = make_oracle(job["oracle"]).collect(jobdir, initial)
            if result is not None and result.ok:
                result = _sanity_check(result, initial)
        except Exception as error:  # outputs the oracle cannot read are a failed job
            result = OracleResult(ok=False, error=f"{type(error).__name__}: {error}")
        status = exit_status(jobdir)
        if result is None and status is not None:
            result = OracleResult(ok=False, error=f"run.sh exited with status {status} and left no result")
        return None if result is None else _save(jobdir, job, result)
    try:
        return OracleResult.from_dict(json.loads(path.read_text()))
    except Exception as error:  # truncated or hand-edited file: report it as a failed job
        return OracleResult(ok=False, error=f"unreadable result.json: {type(error).__name__}: {error}")
