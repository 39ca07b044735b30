"""Scheduler `manual`: list the jobs for the user to run anywhere with `gnome-loop run-job`.

The manifest lives in `<campaign>/jobs/`: `manifest.txt` (folder, a tab, the
command; one line per job) for shell loops and job-array scripts, `manifest.json`
(a list of `{"jobdir", "command"}`) for programs. `gnome-loop resume` ingests the
results that appeared meanwhile.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Callable

from gnome_loop.oracle.base import RESULT_FILE, write_json_atomic, write_text_atomic

MANIFEST_TXT = "manifest.txt"
MANIFEST_JSON = "manifest.json"


class ManualScheduler:
    """Writes the manifest of job folders still without a result; never calls `on_done`."""

    survives_exit = True

    def __init__(self, campaign_dir: Path) -> None:
        self.jobs_dir = Path(campaign_dir) / "jobs"

    def execute(self, jobdirs: list[Path], on_done: Callable[[Path], None]) -> None:
        """Add `jobdirs` to the manifest and drop the jobs that have finished since."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        manifest_json = self.jobs_dir / MANIFEST_JSON
        listed = [item["jobdir"] for item in json.loads(manifest_json.read_text())] if manifest_json.exists() else []
        queued = dict.fromkeys([*listed, *(str(Path(jobdir).resolve()) for jobdir in jobdirs)])
        pending = [jobdir for jobdir in queued if Path(jobdir).is_dir() and not (Path(jobdir) / RESULT_FILE).exists()]
        entries = [{"jobdir": d, "command": f"gnome-loop run-job {shlex.quote(d)}"} for d in pending]
        write_text_atomic(self.jobs_dir / MANIFEST_TXT, "".join(f"{e['jobdir']}\t{e['command']}\n" for e in entries))
        write_json_atomic(manifest_json, entries)

    def close(self) -> None:
        pass
