"""Scheduler `manual`: list the jobs for the user to run anywhere, then ingest what finished.

The manifest lives in `<campaign>/jobs/`: `manifest.txt` (folder, a tab, the
command; one line per job) for shell loops and job-array scripts, `manifest.json`
(a list of `{"jobdir", "command"}`) for programs. The command is the folder's
`run.sh`, which runs the oracle there: `gnome-loop run-job` for an ASE oracle,
VASP for the VASP oracle. Running VASP in the folder by hand works too:
`gnome-loop resume` ingests every folder with a result or a finished vasprun.xml.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Callable

from gnome_loop.oracle.base import SCRIPT_FILE, write_json_atomic, write_text_atomic
from gnome_loop.oracle.jobfolder import read_result

MANIFEST_TXT = "manifest.txt"
MANIFEST_JSON = "manifest.json"


class ManualScheduler:
    """Keeps the manifest of job folders still without a result; never calls `on_done`."""

    survives_exit = True

    def __init__(self, campaign_dir: Path) -> None:
        self.jobs_dir = Path(campaign_dir) / "jobs"

    def execute(self, jobdirs: list[Path], on_done: Callable[[Path], None]) -> None:
        """Add `jobdirs` to the manifest and drop the jobs that have finished since."""
        self._write([*self._listed(), *(str(Path(jobdir).resolve()) for jobdir in jobdirs)])

    def check(self, jobdirs: list[Path]) -> None:
        """Drop from the manifest the jobs that have finished since it was written."""
        self._write(self._listed())

    def cancel(self, jobdirs: list[Path]) -> None:
        """Take the folders off the manifest (the user stops whatever already runs them)."""
        gone = {str(Path(jobdir).resolve()) for jobdir in jobdirs}
        self._write([jobdir for jobdir in self._listed() if jobdir not in gone])

    def close(self) -> None:
        pass

    def _listed(self) -> list[str]:
        path = self.jobs_dir / MANIFEST_JSON
        return [item["jobdir"] for item in json.loads(path.read_text())] if path.exists() else []

    def _write(self, jobdirs: list[str]) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        pending = [d for d in dict.fromkeys(jobdirs) if Path(d).is_dir() and read_result(d) is None]
        entries = [{"jobdir": d, "command": f"bash {shlex.quote(str(Path(d) / SCRIPT_FILE))}"} for d in pending]
        write_text_atomic(self.jobs_dir / MANIFEST_TXT, "".join(f"{e['jobdir']}\t{e['command']}\n" for e in entries))
        write_json_atomic(self.jobs_dir / MANIFEST_JSON, entries)
