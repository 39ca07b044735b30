"""Scheduler `slurm`: submit job folders as `sbatch` job arrays and follow them across resumes.

Each submission gets a unique job name (`gl-` and 10 hex digits). Its folder list
and array script live in `<campaign>/jobs/slurm/`; array task i runs the `run.sh`
of line i + 1 of the list. Every job folder records its submission in
`slurm.json` *before* `sbatch` runs and the job id after, so a process killed in
between finds its jobs again by name instead of submitting them twice.

A job's state comes from its folder first (`result.json`, the markers `run.sh`
writes, finished VASP outputs) and from SLURM second: `squeue` says what is
still queued or running, `sacct` how the rest ended. A job that SLURM has no
record of is therefore not lost when its folder shows it finished; one that
neither SLURM nor its folder knows to be alive is failed with the reason, and
the campaign retries it up to `oracle.max_attempts`.

No shell ever sees a config value: `sbatch`, `squeue`, `sacct` and `scancel`
run from argument lists, and the array script quotes every path it names.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

from gnome_loop.config import Slurm as SlurmConfig
from gnome_loop.execute import SchedulerError
from gnome_loop.oracle.base import RESULT_FILE, SCRIPT_FILE, OracleResult, write_json_atomic, write_text_atomic
from gnome_loop.oracle.jobfolder import read_result

log = logging.getLogger(__name__)

RECORD_FILE = "slurm.json"
#: squeue, every partition (-a), one line per array task (-r): `ID|NAME|STATE`.
SQUEUE = ["squeue", "-h", "-a", "-r", "-o", "%i|%j|%T"]
#: squeue states of a job that is still alive (queued, running or finishing).
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


class SlurmError(SchedulerError):
    """A SLURM command failed in a way that leaves nothing to conclude (the campaign just waits)."""


class SlurmScheduler:
    """Submits job arrays with `sbatch`; `check` turns jobs SLURM has dropped into failed results."""

    survives_exit = True

    def __init__(self, config: SlurmConfig, campaign_dir: Path) -> None:
        self.config = config
        self.folder = Path(campaign_dir).resolve() / "jobs" / "slurm"

    # --- submission ----------------------------------------------------------------------
    def execute(self, jobdirs: list[Path], on_done: Callable[[Path], None]) -> dict[Path, str]:
        """Submit `jobdirs` (in arrays of at most `max_array_size`); return each folder's SLURM job id."""
        refs: dict[Path, str] = {}
        size = self.config.max_array_size
        for start in range(0, len(jobdirs), size):
            refs.update(self._submit([Path(d).resolve() for d in jobdirs[start:start + size]]))
        return refs

    def _submit(self, jobdirs: list[Path]) -> dict[Path, str]:
        for jobdir in jobdirs:
            if any(char in str(jobdir) for char in "\n\r"):
                raise ValueError(f"job folder {jobdir!r} has a line break in its path; SLURM cannot list it")
        name = f"gl-{uuid.uuid4().hex[:10]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        listing = self.folder / f"{name}.txt"
        script = self.folder / f"{name}.sh"
        write_text_atomic(listing, "".join(f"{jobdir}\n" for jobdir in jobdirs))
        write_text_atomic(script, self.array_script(listing))
        submitted = time.time()
        for task, jobdir in enumerate(jobdirs):  # before sbatch: a kill after it still finds the jobs by name
            write_json_atomic(jobdir / RECORD_FILE, {"name": name, "task": task, "job_id": None,
                                                     "submitted": submitted})
        output = _run(["sbatch", "--parsable", *self.sbatch_options(name, len(jobdirs)), str(script)])
        array_id = output.strip().split(";")[0]
        if not array_id.isdigit():
            raise SlurmError(f"sbatch answered {output.strip()!r}, not a job id")
        refs = {}
        for task, jobdir in enumerate(jobdirs):
            refs[jobdir] = f"{array_id}_{task}"
            write_json_atomic(jobdir / RECORD_FILE, {"name": name, "task": task, "job_id": refs[jobdir],
                                                     "submitted": submitted})
        log.info("submitted %d jobs as SLURM array %s (%s)", len(jobdirs), array_id, name)
        return refs

    def sbatch_options(self, name: str, tasks: int) -> list[str]:
        """The sbatch arguments of one submission (each one argument: no shell splits them)."""
        config = self.config
        throttle = f"%{config.max_running}" if config.max_running else ""
        options = [f"--job-name={name}", f"--array=0-{tasks - 1}{throttle}",
                   f"--output={self.folder / f'{name}_%a.out'}", f"--time={config.time}", f"--nodes={config.nodes}"]
        if config.partition:
            options.append(f"--partition={config.partition}")
        if config.account:
            options.append(f"--account={config.account}")
        if config.ntasks_per_node:
            options.append(f"--ntasks-per-node={config.ntasks_per_node}")
        return options + list(config.directives)

    def array_script(self, listing: Path) -> str:
        """The batch script: the user's prelude, then the `run.sh` of this task's folder."""
        prelude = "".join(f"{line}\n" for line in self.config.prelude)
        return (
            "#!/usr/bin/env bash\n"
            "# gnome_loop job array: task i runs the run.sh of line i+1 of the listing\n"
            f"{prelude}"
            f'jobdir="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(listing))})"\n'
            f'exec bash "$jobdir/{SCRIPT_FILE}"\n'
        )

    # --- following jobs across resumes -----------------------------------------------------
    def check(self, jobdirs: list[Path]) -> dict[Path, str]:
        """Look at jobs handed over earlier that have no result yet.

        Jobs whose submission never reached SLURM are submitted (again); jobs SLURM
        no longer runs and that left no result get a failed `result.json` naming
        how they ended. Returns the job ids of what was submitted here.
        """
        open_jobs = {Path(d).resolve(): _record(d) for d in jobdirs if read_result(d) is None}
        if not open_jobs:
            return {}
        names = sorted({record["name"] for record in open_jobs.values() if record})
        try:
            alive = self._states(SQUEUE, names)
        except SlurmError as error:
            log.warning("cannot reach SLURM (%s); the jobs' state is left as it is", error)
            return {}
        try:
            ended = self._states(["sacct", "-n", "-P", "-X", "--format=JobID,JobName,State",
                                  f"--starttime={_since(open_jobs.values())}"], names)
        except SlurmError as error:  # accounting may be disabled: the folder and squeue decide alone
            log.warning("sacct failed (%s); jobs missing from squeue count as ended", error)
            ended = {}
        unsubmitted = []
        for jobdir, record in open_jobs.items():
            if record is None:
                unsubmitted.append(jobdir)
                continue
            key = (record["name"], record["task"])
            state = alive.get(key)
            if state in ACTIVE_STATES or ended.get(key) in ACTIVE_STATES:
                continue
            if record["job_id"] is None and key not in ended:
                unsubmitted.append(jobdir)  # killed before sbatch answered, and SLURM never heard of it
                continue
            if read_result(jobdir) is not None:
                continue  # it finished between the first look and the query
            now = time.time()
            if now - record.setdefault("ended_seen", now) < self.config.ended_grace:
                write_json_atomic(jobdir / RECORD_FILE, record)  # outputs may still be on their way (NFS)
                continue
            how = ended.get(key) or state or "with no record in squeue or sacct"
            job_id = record["job_id"] or f"{record['name']}[{record['task']}]"
            failed = OracleResult(ok=False, error=f"SLURM job {job_id} ended ({how}) without a result")
            failed.attempt = _attempt(jobdir)
            write_json_atomic(jobdir / RESULT_FILE, failed.to_dict())
        return self.execute(unsubmitted, lambda jobdir: None) if unsubmitted else {}

    def _states(self, command: list[str], names: list[str]) -> dict[tuple[str, int], str]:
        """(job name, array task) → state, from squeue or sacct."""
        return {key: state for key, (_, state) in _listing(command, names).items()}

    def cancel(self, jobdirs: list[Path]) -> None:
        """`scancel` the SLURM jobs of these folders; a job whose id was never recorded is found by name."""
        records = [record for record in map(_record, jobdirs) if record]
        unnamed = sorted({record["name"] for record in records if not record["job_id"]})
        queued = _listing(SQUEUE, unnamed)
        ids = [record["job_id"] or queued.get((record["name"], record["task"]), (None,))[0] for record in records]
        if any(ids):
            _run(["scancel", *[job_id for job_id in ids if job_id]])

    def close(self) -> None:
        pass


def _listing(command: list[str], names: list[str]) -> dict[tuple[str, int], tuple[str, str]]:
    """(job name, array task) → (job id, state), from squeue or sacct lines `ID|NAME|STATE`
    of the jobs with these names (none asked: nothing run)."""
    if not names:
        return {}
    found = {}
    for line in _run([*command, f"--name={','.join(names)}"]).splitlines():
        parts = line.strip().split("|")
        task = parts[0].partition("_")[2] if len(parts) >= 3 else ""
        if task.isdigit():  # pending ranges such as 123_[4-9] are listed task by task with -r
            found[(parts[1], int(task))] = (parts[0], parts[2].split()[0].rstrip("+"))
    return found


def _record(jobdir: Path | str) -> dict | None:
    """The folder's `slurm.json`, None when it was never handed to SLURM (or the file is unreadable)."""
    try:
        record = json.loads((Path(jobdir) / RECORD_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) and "name" in record else None


def _attempt(jobdir: Path) -> int:
    return json.loads((jobdir / "job.json").read_text())["attempt"]


def _since(records) -> str:
    """sacct's --starttime: a day before the oldest submission (sacct shows only today's jobs by default)."""
    oldest = min((record["submitted"] for record in records if record), default=time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(oldest - 86400))


def _run(command: list[str]) -> str:
    """Run a SLURM command from an argument list; SlurmError with its message when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SlurmError(f"{command[0]}: {error}") from None
    if done.returncode != 0:
        raise SlurmError(f"{command[0]} exited with status {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout
