"""A stand-in for a SLURM cluster: `sbatch`, `squeue`, `sacct` and `scancel` on PATH.

`install(bin_dir, state_dir)` writes the four commands (each runs this file);
their state is one JSON file. sbatch only queues array tasks; the test decides
when each runs with `run_tasks`, which starts the batch script as a real local
process with SLURM's environment, in any order, so that jobs finish out of
order across several `resume` calls. `forget` drops jobs from the records (a
purged accounting database); `FAKE_SLURM_DOWN=1` makes every command fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "sacct", "scancel")
ACTIVE = ("PENDING", "RUNNING")


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the fake commands into `bin_dir`; return the environment that puts them first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {name} \"$@\"\n")
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state_dir)}


@contextmanager
def _state(state_dir: Path):
    path = Path(state_dir) / "state.json"
    with open(Path(state_dir) / "state.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else {"next_id": 1000, "jobs": {}}
        yield state
        path.write_text(json.dumps(state))


def jobs(state_dir: Path) -> dict:
    """The recorded jobs: array id → {name, script, options, output, tasks: {task: state}}."""
    with _state(state_dir) as state:
        return state["jobs"]


def queued(state_dir: Path) -> list[tuple[str, int]]:
    """(array id, task) of every task still pending."""
    return [(array, int(task)) for array, job in jobs(state_dir).items()
            for task, state in job["tasks"].items() if state == "PENDING"]


def run_tasks(state_dir: Path, tasks: list[tuple[str, int]], env: dict[str, str]) -> None:
    """Run these array tasks now, one real process each, and record how they ended."""
    for array, task in tasks:
        array, task = str(array), int(task)
        job = jobs(state_dir)[array]
        with _state(state_dir) as state:
            state["jobs"][array]["tasks"][str(task)] = "RUNNING"
        output = job["output"].replace("%a", str(task)).replace("%A", array)
        task_env = {**os.environ, **env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": array,
                    "SLURM_JOB_ID": f"{int(array) + 1 + task}"}
        with open(output, "w") as log:
            code = subprocess.run(["bash", job["script"]], env=task_env, stdout=log, stderr=subprocess.STDOUT).returncode
        with _state(state_dir) as state:
            state["jobs"][array]["tasks"][str(task)] = "COMPLETED" if code == 0 else "FAILED"


def forget(state_dir: Path, array: str) -> None:
    """Drop a job from SLURM's records, as a purged or lost accounting database would."""
    with _state(state_dir) as state:
        del state["jobs"][array]


def _option(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _lines(state: dict, names: set[str] | None, active_only: bool) -> list[str]:
    out = []
    for array, job in state["jobs"].items():
        if names is not None and job["name"] not in names:
            continue
        for task, status in job["tasks"].items():
            if not active_only or status in ACTIVE:
                out.append(f"{array}_{task}|{job['name']}|{status}")
    return out


def main(command: str, args: list[str]) -> int:
    if os.environ.get("FAKE_SLURM_DOWN"):
        print(f"{command}: error: Unable to contact slurm controller (connect failure)", file=sys.stderr)
        return 1
    state_dir = Path(os.environ["FAKE_SLURM_DIR"])
    names = set(_option(args, "name").split(",")) if _option(args, "name") else None
    with _state(state_dir) as state:
        if command == "sbatch":
            first, last = _option(args, "array").split("%")[0].split("-")
            array = str(state["next_id"])
            state["next_id"] += 100
            state["jobs"][array] = {
                "name": _option(args, "job-name"), "script": args[-1], "options": args[:-1],
                "output": _option(args, "output"),
                "tasks": {str(task): "PENDING" for task in range(int(first), int(last) + 1)}}
            print(array)
        elif command in ("squeue", "sacct"):
            print("\n".join(_lines(state, names, active_only=command == "squeue")))
        elif command == "scancel":
            for ref in args:
                array, task = ref.split("_")
                tasks = state["jobs"].get(array, {}).get("tasks", {})
                if tasks.get(task) in ACTIVE:
                    tasks[task] = "CANCELLED"
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
