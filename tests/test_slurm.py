"""The SLURM scheduler against a fake cluster (tests/fake_slurm.py), and a VASP campaign run on it.

Nothing of the engine is mocked: sbatch/squeue/sacct/scancel are programs on PATH,
array tasks run as real processes, and the "VASP" they run copies real VASP
outputs from ../shared/data/vasp_outputs into the job folders.
"""

import json
import shlex
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign
from gnome_loop.cli import EXIT_WAITING, app
from gnome_loop.config import Slurm as SlurmConfig
from gnome_loop.config import parse_config
from gnome_loop.execute.slurm import SlurmScheduler
from gnome_loop.oracle import read_result, write_job
from tests import fake_slurm

FAKE_VASP = Path(__file__).with_name("fake_vasp.py")
runner = CliRunner()


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Path:
    """The fake SLURM on PATH; returns its state folder."""
    state = tmp_path / "slurm-state"
    for key, value in fake_slurm.install(tmp_path / "bin", state).items():
        monkeypatch.setenv(key, value)
    return state


def vasp_oracle() -> dict:
    """The VASP oracle with the fake VASP as its command."""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_VASP))}"
    return {"kind": "vasp", "vasp": {"command": command}, "max_attempts": 2}


def si_jobs(root: Path, oracle: dict, n: int = 2) -> list[Path]:
    si = Structure(Lattice.cubic(5.47), ["Si"] * 8, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                                                     [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75],
                                                     [0.25, 0.75, 0.75]])
    jobdirs = []
    for i in range(n):
        jobdirs.append(root / f"j-{i}")
        write_job(jobdirs[-1], f"j-{i}", f"c-{i}", si, oracle, attempt=1)
    return jobdirs


def task_env(shared_data: Path, plan: Path | None = None) -> dict[str, str]:
    env = {"FAKE_VASP_DATA": str(shared_data / "vasp_outputs")}
    if plan is not None:
        env["FAKE_VASP_PLAN"] = str(plan)
    return env


def test_values_with_spaces_quotes_and_semicolons_do_not_reach_a_shell(tmp_path, cluster, shared_data):
    hostile = 'x"; touch INJECTED; echo "'
    root = tmp_path / "camp 'a b' ; touch INJECTED"
    config = SlurmConfig(partition=hostile, account="my account; rm -rf ~", time="1:00:00",
                         directives=[f"--comment={hostile}", "--mail-user=$(touch INJECTED)"])
    oracle = vasp_oracle()
    oracle["vasp"]["command"] += " '; touch INJECTED' \"$(touch INJECTED)\""
    jobdirs = si_jobs(root / "jobs", oracle)
    scheduler = SlurmScheduler(config, root)
    refs = scheduler.execute(jobdirs, on_done=lambda jobdir: None)
    assert sorted(refs.values()) == ["1000_0", "1000_1"]
    (submission,) = fake_slurm.jobs(cluster).values()
    assert f"--partition={hostile}" in submission["options"]
    assert "--account=my account; rm -rf ~" in submission["options"]
    assert f"--comment={hostile}" in submission["options"]

    fake_slurm.run_tasks(cluster, fake_slurm.queued(cluster), task_env(shared_data))
    for jobdir in jobdirs:
        result = read_result(jobdir)
        assert result.ok, result.error
        assert result.energy == pytest.approx(-10.84671647)
        assert json.loads((jobdir / "slurm.json").read_text())["job_id"] in refs.values()
    assert not list(tmp_path.rglob("INJECTED")) and not Path("INJECTED").exists()


def test_finished_jobs_survive_a_lost_record_and_lost_jobs_are_failed(tmp_path, cluster, shared_data):
    jobdirs = si_jobs(tmp_path / "jobs", vasp_oracle(), n=3)
    scheduler = SlurmScheduler(SlurmConfig(ended_grace=0), tmp_path)
    scheduler.execute(jobdirs, on_done=lambda jobdir: None)
    fake_slurm.run_tasks(cluster, [("1000", 0)], task_env(shared_data))
    assert scheduler.check(jobdirs) == {}
    assert read_result(jobdirs[0]).ok
    assert read_result(jobdirs[1]) is None and read_result(jobdirs[2]) is None  # still queued

    scheduler.cancel([jobdirs[2]])
    scheduler.check(jobdirs)
    assert read_result(jobdirs[2]).error == "SLURM job 1000_2 ended (CANCELLED) without a result"

    fake_slurm.forget(cluster, "1000")  # the accounting database loses the whole array
    scheduler.check(jobdirs)
    assert read_result(jobdirs[0]).ok  # the folder says it finished: not lost
    lost = read_result(jobdirs[1])
    assert not lost.ok and lost.attempt == 1
    assert lost.error == "SLURM job 1000_1 ended (with no record in squeue or sacct) without a result"


def test_a_submission_killed_before_sbatch_is_sent_again_and_an_unreachable_cluster_changes_nothing(
        tmp_path, cluster, shared_data, monkeypatch):
    jobdirs = si_jobs(tmp_path / "jobs", vasp_oracle())
    # what a kill between writing slurm.json and sbatch leaves: a name SLURM never saw, no job id
    for task, jobdir in enumerate(jobdirs):
        (jobdir / "slurm.json").write_text(json.dumps({"name": "gl-never-sent", "task": task, "job_id": None,
                                                       "submitted": 0}))
    scheduler = SlurmScheduler(SlurmConfig(), tmp_path)
    monkeypatch.setenv("FAKE_SLURM_DOWN", "1")
    assert scheduler.check(jobdirs) == {}
    assert fake_slurm.jobs(cluster) == {} and all(read_result(d) is None for d in jobdirs)
    monkeypatch.delenv("FAKE_SLURM_DOWN")
    refs = scheduler.check(jobdirs)
    assert sorted(refs.values()) == ["1000_0", "1000_1"]
    assert scheduler.check(jobdirs) == {}  # now queued: nothing is sent twice
    assert len(fake_slurm.jobs(cluster)) == 1


def test_vasp_campaign_on_slurm_resumes_out_of_order_retries_and_records(tmp_path, cluster, shared_data):
    plan_file = tmp_path / "plan.json"
    config = {
        "name": "si-vasp", "rounds": 1,
        "chemical_space": {"elements": ["Si"], "max_elements": 1, "max_atoms": 16},
        "snapshot": {"reference_hull": "none"},  # its own hull: the fake runs' energies decide what is stable
        "generators": {"substitution": {"enabled": False}, "saps": {"enabled": False},
                       "random": {"enabled": True, "compositions": ["Si2", "Si4"], "per_composition": 2,
                                  "time_limit": 20}},
        "model": {"kind": "linear"},
        "selection": {"budget": 2},
        "oracle": vasp_oracle(),
        "scheduler": {"kind": "slurm", "slurm": {"partition": "debug", "time": "0:30:00", "ended_grace": 0}},
    }
    directory = tmp_path / "campaign"
    Campaign.create(parse_config(config), directory)
    result = runner.invoke(app, ["run", str(directory)])
    assert result.exit_code == EXIT_WAITING, result.output
    store = Campaign(directory).store
    jobs = {job.id: job for job in store.jobs(round_=0)}
    assert len(jobs) == 5 and all(job.state == "submitted" and job.scheduler_ref for job in jobs.values())
    # the cI16 prototype's cell is far denser than the Si the outputs hold: it gets the failing runs
    b, d, c, a, *templates = sorted(jobs)  # the template (ref-Si-alpha-As) gets a good run
    assert "cI16" in b and a == "j-ref-Si" and len(templates) == 1
    plan_file.write_text(json.dumps({a: ["crash", "Si_mprelaxset_atomate"], b: ["truncated", "truncated"],
                                     c: ["Si_double_relax_atomate"], d: ["Si_relax_gga"]}))
    env = task_env(shared_data, plan_file)
    task_of = {job.scheduler_ref: job.id for job in jobs.values()}

    def run(job_ids: list[str]) -> None:
        refs = {job.id: job.scheduler_ref for job in Campaign(directory).store.jobs(round_=0)}
        fake_slurm.run_tasks(cluster, [tuple(refs[key].split("_")) for key in job_ids], env)

    def resume() -> Campaign:
        outcome = runner.invoke(app, ["resume", str(directory)])
        assert outcome.exit_code in (0, EXIT_WAITING), outcome.output
        return Campaign(directory)

    run([c, *templates])  # the last jobs finish first
    campaign = resume()
    states = {job.id: job.state for job in campaign.store.jobs(round_=0)}
    assert states == {a: "submitted", b: "submitted", c: "done", d: "submitted", **dict.fromkeys(templates, "done")}

    run([d, a])  # a crashes: retried as a new array task
    campaign = resume()
    jobs_now = {job.id: job for job in campaign.store.jobs(round_=0)}
    assert jobs_now[a].state == "submitted" and jobs_now[a].attempts == 1
    assert jobs_now[a].scheduler_ref not in task_of and jobs_now[d].state == "done"
    assert "run.sh exited with status 1" in (directory / jobs_now[a].workdir / "attempt1" / "result.json").read_text()

    run([a, b])  # a succeeds on its second attempt, b is truncated once
    campaign = resume()
    run([b])  # ... and twice: recorded as failed, the round moves on
    campaign = resume()
    final = {job.id: job for job in campaign.store.jobs(round_=0)}
    assert {key: job.state for key, job in final.items()} == {a: "done", b: "failed", c: "done", d: "done",
                                                              **dict.fromkeys(templates, "done")}
    assert final[b].attempts == 2 and final[b].error.startswith("truncated vasprun.xml")
    assert final[a].attempts == 2

    round_one = campaign.store.jobs(round_=1)
    assert round_one and all(job.state == "submitted" for job in round_one)
    fake_slurm.run_tasks(cluster, fake_slurm.queued(cluster), env)
    assert runner.invoke(app, ["resume", str(directory)]).exit_code == 0
    campaign = Campaign(directory)
    assert campaign.store.current_round() == (1, "done")

    # exactly one entry per successful job, with the energy of the output it ran, all on the hull
    entries = campaign.store.entries(with_structure=False)
    done = campaign.store.jobs(states=["done"])
    assert sorted(e["candidate_id"] for e in entries) == sorted(job.candidate_id for job in done)
    energy = {e["candidate_id"]: e["energy_corrected"] for e in entries}
    expected = {a: -10.84671647, c: -10.84687704, d: -10.84147246}
    for key, value in expected.items():
        assert energy[final[key].candidate_id] == pytest.approx(value)
        assert json.loads(campaign.store.query("SELECT data FROM entries WHERE candidate_id = ?",
                                               (final[key].candidate_id,))[0]["data"])["run_type"] == "GGA"
    assert all(e["e_hull"] is not None for e in entries)
    (lowest,) = [e for e in entries if e["candidate_id"] == final[c].candidate_id]
    assert lowest["is_stable"] == 1 and lowest["e_hull"] == pytest.approx(0, abs=1e-9)
    # SLURM ran every attempt exactly once
    tasks = sum(len(job["tasks"]) for job in fake_slurm.jobs(cluster).values())
    assert tasks == sum(job.attempts for job in campaign.store.jobs())


def test_cancel_stops_slurm_jobs_and_the_round_goes_on(tmp_path, cluster, shared_data):
    config = {"rounds": 0, "chemical_space": {"elements": ["Si"], "max_elements": 1}, "model": {"kind": "linear"},
              "oracle": vasp_oracle(), "scheduler": {"kind": "slurm"}}
    directory = tmp_path / "campaign"
    Campaign.create(parse_config(config), directory)
    assert runner.invoke(app, ["run", str(directory)]).exit_code == EXIT_WAITING
    jobs = Campaign(directory).store.jobs()
    keep = next(job for job in jobs if job.id == "j-ref-Si")
    fake_slurm.run_tasks(cluster, [tuple(keep.scheduler_ref.split("_"))], task_env(shared_data))
    unknown = runner.invoke(app, ["cancel", str(directory), "--job", "j-nope"])
    assert unknown.exit_code == 2 and "j-nope" in unknown.output

    result = runner.invoke(app, ["cancel", str(directory)])
    assert result.exit_code == 0 and "cancelled 4 jobs" in result.output  # the finished one is kept
    states = {f"{array}_{task}": state for array, job in fake_slurm.jobs(cluster).items()
              for task, state in job["tasks"].items()}
    assert states.pop(keep.scheduler_ref) == "COMPLETED"
    assert sorted(states.values()) == ["CANCELLED"] * 4
    campaign = Campaign(directory)
    cancelled = [job for job in campaign.store.jobs() if job.id != keep.id]
    assert {(job.state, job.error) for job in cancelled} == {("failed", "cancelled by user")}

    assert runner.invoke(app, ["resume", str(directory)]).exit_code == 0  # nothing left to wait for
    # the one job that finished, beside MP's energy-only Si (a VASP campaign is judged against MP)
    (entry,) = [e for e in Campaign(directory).store.entries(with_structure=False) if e["candidate_id"]]
    assert entry["candidate_id"] == "ref-Si" and entry["e_hull"] is not None  # judged against MP's Si


def test_a_job_sacct_calls_running_lives_and_an_ended_one_gets_time_to_show_its_outputs(
        tmp_path, cluster, shared_data):
    jobdirs = si_jobs(tmp_path / "jobs", vasp_oracle(), n=2)
    scheduler = SlurmScheduler(SlurmConfig(ended_grace=300), tmp_path)
    scheduler.execute(jobdirs, on_done=lambda jobdir: None)
    state = json.loads((cluster / "state.json").read_text())
    state["jobs"]["1000"]["tasks"] = {"0": "RUNNING", "1": "COMPLETED"}
    (cluster / "state.json").write_text(json.dumps(state))
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\nexit 0\n")  # squeue shows nothing (a hidden partition)
    scheduler.check(jobdirs)
    assert read_result(jobdirs[0]) is None  # sacct says RUNNING: alive
    assert read_result(jobdirs[1]) is None  # ended, but its outputs may still be on their way
    record = json.loads((jobdirs[1] / "slurm.json").read_text())
    record["ended_seen"] -= 301
    (jobdirs[1] / "slurm.json").write_text(json.dumps(record))
    scheduler.check(jobdirs)
    assert read_result(jobdirs[0]) is None
    assert read_result(jobdirs[1]).error == "SLURM job 1000_1 ended (COMPLETED) without a result"


def test_directives_cannot_take_over_what_finds_the_jobs():
    from gnome_loop.config import ConfigError

    with pytest.raises(ConfigError, match="--job-name=mine: gnome_loop sets these itself"):
        parse_config({"chemical_space": {"elements": ["Si"]},
                      "scheduler": {"kind": "slurm", "slurm": {"directives": ["--job-name=mine"]}}})
