"""Schedulers: run oracle job folders somewhere.

A scheduler only runs folders written by `gnome_loop.oracle.base.write_job`; the
state of each job (submitted, done, failed, retried) lives in the campaign store.
`on_done(jobdir)` is called once the folder's `result.json` exists, by schedulers
that can see it happen; those whose jobs outlive the process (`survives_exit`)
leave the campaign to find results on `resume`, after `check` has turned the
jobs they lost into failed results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from gnome_loop.config import SchedulerConfig


class SchedulerError(RuntimeError):
    """The scheduler could not take or report jobs (a failed `sbatch`, an unreachable cluster)."""


class Scheduler(Protocol):
    """Runs job folders; `survives_exit` is True when jobs keep running after this process ends.

    `execute` and `check` return the scheduler's id of each folder they submitted
    (a SLURM job id) or nothing; `check` looks at folders handed over earlier that
    have no result yet; `cancel` stops them.
    """

    survives_exit: bool

    def execute(self, jobdirs: list[Path], on_done: Callable[[Path], None]) -> dict[Path, str] | None: ...

    def check(self, jobdirs: list[Path]) -> dict[Path, str] | None: ...

    def cancel(self, jobdirs: list[Path]) -> None: ...

    def close(self) -> None: ...


def make_scheduler(config: SchedulerConfig, campaign_dir: Path) -> Scheduler:
    """The scheduler a `SchedulerConfig` section describes (dask is imported only when used)."""
    if config.kind == "inline":
        from gnome_loop.execute.inline import InlineScheduler

        return InlineScheduler()
    if config.kind == "local":
        from gnome_loop.execute.local import DaskScheduler

        return DaskScheduler(config.workers, config.address)
    if config.kind == "manual":
        from gnome_loop.execute.manual import ManualScheduler

        return ManualScheduler(campaign_dir)
    if config.kind == "slurm":
        from gnome_loop.execute.slurm import SlurmScheduler

        return SlurmScheduler(config.slurm, campaign_dir)
    raise ValueError(f"unknown scheduler kind {config.kind!r}; known kinds: inline, local, manual, slurm")
