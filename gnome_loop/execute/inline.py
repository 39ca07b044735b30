"""Scheduler `inline`: run every job in this process, one after the other (tests, small demos)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gnome_loop.oracle.jobfolder import run_job


class InlineScheduler:
    """Runs each job folder in order; `on_done` follows each result."""

    survives_exit = False

    def execute(self, jobdirs: list[Path], on_done: Callable[[Path], None]) -> None:
        for jobdir in jobdirs:
            run_job(jobdir)
            on_done(jobdir)

    def check(self, jobdirs: list[Path]) -> None:
        pass  # jobs run only while `execute` does: nothing to follow afterwards

    def cancel(self, jobdirs: list[Path]) -> None:
        pass

    def close(self) -> None:
        pass
