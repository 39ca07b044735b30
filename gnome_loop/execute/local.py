"""Scheduler `local`: run jobs on a dask.distributed cluster.

By default a `LocalCluster` of single-threaded worker processes on this machine;
with an `address`, any running dask scheduler (for example one started by
dask-jobqueue on a cluster).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import dask
from distributed import Client, LocalCluster, as_completed

from gnome_loop.malloc import worker_environment
from gnome_loop.oracle.jobfolder import run_job

log = logging.getLogger(__name__)


def local_cluster(workers: int) -> LocalCluster:
    """`workers` single-threaded worker processes on this machine, each started with
    gnome_loop's malloc settings (`malloc.worker_environment`: glibc reads them only at
    a process's start, so dask must set them before it spawns the worker).

    dask's nanny sets its pre-spawn variables in this process's environment (where its
    own value wins over dask's config) before it spawns a worker: ours are put there
    for the start and this process's environment is put back afterwards, so that the
    programs it runs later (VASP, sbatch, external generators) do not inherit one
    malloc arena or one OpenMP thread. (A nanny that restarts a dead worker sets them
    again.)"""
    key = "distributed.nanny.pre-spawn-environ"
    ours = worker_environment()
    saved = dict(os.environ)
    os.environ.update(ours)
    try:
        with dask.config.set({key: {**dask.config.get(key, {}), **ours}}):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                silence_logs=logging.ERROR)
    finally:
        os.environ.clear()
        os.environ.update(saved)


class DaskScheduler:
    """Submits `run_job` for each folder and calls `on_done` in the calling thread as each finishes.

    A job whose future errors (its worker died) writes no result and gets no
    `on_done`: the campaign runs it again on resume.
    """

    survives_exit = False

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        self.workers = workers
        self.address = address
        self._cluster: LocalCluster | None = None
        self._client: Client | None = None

    def client(self) -> Client:
        """Start the local cluster (or connect to `address`) on first use."""
        if self._client is None:
            if self.address:
                self._client = Client(self.address)
            else:
                self._cluster = local_cluster(self.workers)
                self._client = Client(self._cluster)
        return self._client

    def execute(self, jobdirs: list[Path], on_done: Callable[[Path], None]) -> None:
        if not jobdirs:
            return
        client = self.client()
        futures = {client.submit(run_job, Path(jobdir), pure=False): Path(jobdir) for jobdir in jobdirs}
        for future in as_completed(futures):
            jobdir = futures[future]
            if future.status == "error":
                log.warning("job %s was lost (%s); it will run again on resume", jobdir, future.exception())
            else:
                on_done(jobdir)
            future.release()

    def check(self, jobdirs: list[Path]) -> None:
        pass  # jobs run only while `execute` does: nothing to follow afterwards

    def cancel(self, jobdirs: list[Path]) -> None:
        pass

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
