"""Schedulers: inline, local dask cluster and manual manifest, all on EMT copper jobs."""

import json
import os
import shlex
import subprocess
from pathlib import Path

from pymatgen.core import Lattice, Structure

from gnome_loop.config import OracleConfig, SchedulerConfig
from gnome_loop.execute import make_scheduler
from gnome_loop.execute.inline import InlineScheduler
from gnome_loop.execute.local import DaskScheduler
from gnome_loop.execute.manual import ManualScheduler
from gnome_loop.malloc import ENVIRONMENT
from gnome_loop.oracle import read_result, run_job, write_job
from tests.helpers import FCC


def copper_jobs(root: Path, n: int = 3) -> list[Path]:
    """`n` EMT jobs on fcc copper cells of different sizes."""
    oracle = OracleConfig(calculator="emt", max_steps=100).model_dump()
    jobdirs = []
    for i in range(n):
        structure = Structure(Lattice.cubic(3.5 + 0.1 * i), ["Cu"] * 4, FCC)
        jobdir = root / f"j-{i}"
        write_job(jobdir, f"j-{i}", f"c-{i}", structure, oracle, attempt=1)
        jobdirs.append(jobdir)
    return jobdirs


def test_inline_runs_jobs_in_order(tmp_path):
    jobdirs = copper_jobs(tmp_path)
    done = []

    def on_done(jobdir):
        assert read_result(jobdir).ok  # the result exists when on_done is called
        done.append(jobdir)

    scheduler = InlineScheduler()
    scheduler.execute(jobdirs, on_done)
    scheduler.close()
    assert done == jobdirs
    assert scheduler.survives_exit is False


def test_dask_runs_jobs_on_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # left by a plain dask cluster, say
    environment = dict(os.environ)
    jobdirs = copper_jobs(tmp_path)
    lost = tmp_path / "no-job-json"  # run_job raises on the worker: no result, no on_done
    lost.mkdir()
    done = []
    scheduler = DaskScheduler(workers=2)
    try:
        scheduler.execute([*jobdirs, lost], done.append)
        # each worker process started with gnome_loop's malloc settings (read only at
        # start), and this process's environment, which VASP or sbatch inherit, as it was
        environments = scheduler.client().run(lambda: {key: os.environ.get(key) for key in ENVIRONMENT})
        assert dict(os.environ) == environment
    finally:
        scheduler.close()
    assert sorted(done) == sorted(jobdirs)
    assert all(read_result(jobdir).ok for jobdir in jobdirs)
    assert read_result(lost) is None
    assert scheduler.survives_exit is False
    assert list(environments.values()) == [ENVIRONMENT, ENVIRONMENT]


def test_manual_writes_a_manifest_of_unfinished_jobs(tmp_path):
    campaign = tmp_path / "my campaign"
    jobdirs = copper_jobs(campaign / "jobs" / "r001")
    run_job(jobdirs[0])
    scheduler = ManualScheduler(campaign)
    scheduler.execute(jobdirs, on_done=lambda jobdir: (_ for _ in ()).throw(AssertionError("on_done called")))

    manifest = json.loads((campaign / "jobs" / "manifest.json").read_text())
    pending = [str(jobdir.resolve()) for jobdir in jobdirs[1:]]
    assert [item["jobdir"] for item in manifest] == pending
    for item in manifest:
        assert shlex.split(item["command"]) == ["bash", f"{item['jobdir']}/run.sh"]
    lines = (campaign / "jobs" / "manifest.txt").read_text().splitlines()
    assert lines == [f"{item['jobdir']}\t{item['command']}" for item in manifest]
    assert scheduler.survives_exit is True

    # a later call adds new jobs to those still pending and drops the finished ones; the listed
    # command runs the job from any folder, though the campaign's path holds a space
    done = subprocess.run(manifest[0]["command"], shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_result(jobdirs[1]).ok and (jobdirs[1] / "gnome_loop.exit").read_text().split() == ["0", "attempt", "1"]
    (extra,) = copper_jobs(campaign / "jobs" / "r002", n=1)
    scheduler.execute([extra], on_done=None)
    manifest = json.loads((campaign / "jobs" / "manifest.json").read_text())
    assert [item["jobdir"] for item in manifest] == [pending[1], str(extra.resolve())]


def test_make_scheduler(tmp_path):
    assert isinstance(make_scheduler(SchedulerConfig(kind="inline"), tmp_path), InlineScheduler)
    local = make_scheduler(SchedulerConfig(kind="local", workers=3), tmp_path)
    assert isinstance(local, DaskScheduler) and local.workers == 3 and local.address is None
    manual = make_scheduler(SchedulerConfig(kind="manual"), tmp_path)
    assert isinstance(manual, ManualScheduler) and manual.jobs_dir == tmp_path / "jobs"


def _tenfold(shared: int, task: int) -> int:
    return shared * task


def test_shards_run_in_a_bounded_window_each_once():
    """A round of many shard tasks keeps only a window of them on the cluster at once,
    and every task's result arrives once, whatever the order of completion."""
    import logging

    from distributed import Client, LocalCluster

    from gnome_loop.execute.shards import IN_FLIGHT_PER_THREAD, run_shards

    results, in_flight = [], []
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        submit, submitted = client.submit, []

        def counting_submit(*args, **kwargs):
            submitted.append(kwargs["key"])
            return submit(*args, **kwargs)

        client.submit = counting_submit

        def record(index: int, result: int) -> None:
            in_flight.append(len(submitted) - len(results))  # submitted, not yet recorded
            results.append((index, result))

        failed = run_shards(_tenfold, 10, list(range(40)), record, client)
    assert failed == {}
    assert sorted(results) == [(i, 10 * i) for i in range(40)]
    assert max(in_flight) == IN_FLIGHT_PER_THREAD * 3  # 3 worker threads
    assert all(key.startswith("_tenfold-") for key in submitted)  # tasks keep their name on the dashboard
