"""The submit and wait stages: oracle jobs written to folders, handed to the
scheduler, and their results ingested once, with failures retried up to a limit
(docs/architecture.md, steps 4 and 5).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from pymatgen.core import Composition

from gnome_loop.oracle.base import OracleResult
from gnome_loop.oracle.jobfolder import read_result, write_job
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.store import PARENT, Job, Store, entry_row
from gnome_loop.structures import structure_from_json


def submit(ctx: StageContext, round_: int) -> Decision:
    """Hand the round's pending jobs to the scheduler."""
    hand_over(ctx, ctx.store.jobs(round_, states=["pending"]))
    return Decision()


def wait(ctx: StageContext, round_: int) -> Decision:
    """Ingest finished jobs, (re)run what needs running, and wait for the rest."""
    store, scheduler = ctx.store, ctx.scheduler
    while True:
        submitted = store.jobs(round_, states=["submitted"])
        if scheduler.survives_exit:
            # jobs outside this process: the scheduler fails the ones it has lost and resubmits
            # the ones that never reached it
            _set_refs(ctx, scheduler.check([ctx.jobdir(j) for j in submitted]))
        for job in submitted:
            ingest(ctx, job)
        todo = store.jobs(round_, states=["pending"])
        if not scheduler.survives_exit:
            # An in-process scheduler's jobs died with the process that ran them.
            todo += [j for j in store.jobs(round_, states=["submitted"]) if read_result(ctx.jobdir(j)) is None]
        if todo:
            hand_over(ctx, todo)
            continue
        unfinished = store.jobs(round_, states=["submitted"])
        if unfinished:
            return Decision(waiting=len(unfinished))

        def record(store: Store) -> None:
            counts = store.job_counts(round_)
            store.update_round_metrics(round_, {"evaluated": counts.get("done", 0), "failed": counts.get("failed", 0)})

        return Decision(record)


def job_row(ctx: StageContext, candidate_id: str, round_: int) -> dict:
    """A jobs-table row: one oracle job for the candidate, in jobs/rNNN/j-<candidate id>."""
    job_id = f"j-{candidate_id}"
    return {"id": job_id, "candidate_id": candidate_id, "round": round_, "oracle": ctx.oracle_label(),
            "workdir": str(Path("jobs") / f"r{round_:03d}" / job_id)}


def hand_over(ctx: StageContext, jobs: list[Job]) -> None:
    """Write the job folders (attempt = previous attempts + 1) and give them to the scheduler."""
    if not jobs:
        return
    for job in jobs:
        jobdir = ctx.jobdir(job)
        if (jobdir / "job.json").exists():  # a failed attempt's folder, or one that died unfinished
            archive_attempt(jobdir, json.loads((jobdir / "job.json").read_text())["attempt"])
        candidate = ctx.store.candidate(job.candidate_id)
        oracle = ctx.config.oracle.model_dump()
        if json.loads(candidate["info"]).get("molecule"):
            oracle["relax_cell"] = False  # a molecule in a box: relaxing the box would collapse it
        # a trusted pre-relaxation (not flagged) is where the oracle starts; a retry starts
        # from the generated structure, in case the pre-relaxed one is what failed
        relaxed = json.loads(candidate["prerelax"] or "{}").get("structure") if job.attempts == 0 else None
        write_job(jobdir, job.id, job.candidate_id, structure_from_json(relaxed or candidate["structure"]),
                  oracle, attempt=job.attempts + 1)
    with ctx.store.transaction():
        ctx.store.mark_submitted(j.id for j in jobs)
    by_dir = {ctx.jobdir(j): j.id for j in jobs}
    with ctx.progress(f"oracle jobs ({ctx.oracle_label()})", len(jobs)) as advance:
        def on_done(jobdir: Path) -> None:
            job = ctx.store.job(by_dir[Path(jobdir)])
            if job is not None:
                ingest(ctx, job)
            advance(1)
        _set_refs(ctx, ctx.scheduler.execute(sorted(by_dir), on_done))


def ingest(ctx: StageContext, job: Job) -> None:
    """Store a finished job's result once; failures are retried up to the limit."""
    store, jobdir = ctx.store, ctx.jobdir(job)
    result = read_result(jobdir)
    if result is None or result.attempt <= job.attempts:
        return  # not finished, or already ingested
    candidate = store.candidate(job.candidate_id)
    error = result_error(result, candidate["reduced_formula"])
    # a round-0 phase is a hull reference, or (judged against MP's hull) only a parent
    reference = job.round == 0 and json.loads(candidate["info"]).get("hull_reference", True)
    source = "oracle" if job.round > 0 else "reference" if reference else PARENT
    with store.transaction():
        if error is None:
            store.add_entry(entry_row(
                entry_id=f"e-{job.candidate_id}", source=source, round_=job.round,
                candidate_id=job.candidate_id, structure=result.structure,
                composition=result.structure.composition, energy=result.energy, scale=ctx.scale(),
                is_reference=reference, trajectory=result.trajectory, data=result.info))
            store.finish_job(job.id, "done", result.attempt, None)
        else:
            final = result.attempt >= ctx.config.oracle.max_attempts
            store.finish_job(job.id, "failed" if final else "pending", result.attempt, error)
            store.log("job-failed", f"{job.id} attempt {result.attempt}: {error}" + ("" if final else " (will retry)"))
    if error is not None:
        archive_attempt(jobdir, result.attempt)


def result_error(result: OracleResult, reduced_formula: str) -> str | None:
    """Why an oracle result cannot become an entry: the oracle's error, a changed
    composition or a non-finite energy; None when it can."""
    if not result.ok and result.error is not None:
        return result.error
    expected = Composition(reduced_formula).reduced_formula
    if result.structure.composition.reduced_formula != expected:
        return f"composition changed: {result.structure.composition.reduced_formula} != {expected}"
    if result.energy is None or not math.isfinite(result.energy):
        return f"non-finite energy: {result.energy}"
    return None


def unfinished(ctx: StageContext, job: Job) -> bool:
    """Whether a pending or submitted job has no result in its folder yet: what `cancel`
    may stop (a job that already finished is left for `resume` to ingest)."""
    return job.state == "pending" or read_result(ctx.jobdir(job)) is None


def _set_refs(ctx: StageContext, refs: dict[Path, str] | None) -> None:
    """Record the scheduler's ids (SLURM job ids) of the job folders it was given."""
    if refs:
        by_dir = {ctx.jobdir(j).resolve(): j.id for j in ctx.store.jobs(states=["submitted"])}
        with ctx.store.transaction():
            ctx.store.set_refs({by_dir[Path(d).resolve()]: ref for d, ref in refs.items()
                                if Path(d).resolve() in by_dir})


def archive_attempt(jobdir: Path, attempt: int) -> None:
    """Move what attempt N left in the folder into `attemptN/` before the job runs again.

    Everything goes but `job.json` (rewritten for the next attempt) and earlier
    `attemptK/` folders; a kill half-way is finished by the next call.
    """
    target = jobdir / f"attempt{attempt}"
    for item in sorted(jobdir.iterdir()):
        if item.name == "job.json" or (item.is_dir() and re.fullmatch(r"attempt\d+", item.name)):
            continue
        target.mkdir(exist_ok=True)
        os.replace(item, target / item.name)
