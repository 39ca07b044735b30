"""The campaign state machine: rounds of generate → dedup → select → submit → wait →
hull → train → metrics, each stage atomic and idempotent (docs/architecture.md).

This module decides which stage runs next, holds the lock and commits each stage's
writes with the move to the next; the stages themselves are in `gnome_loop.stages`.
State lives in the store only, so a campaign can be killed at any moment and
resumed: a stage either committed (and is not repeated) or did not (and is re-run
with the same content-hash ids).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.config import CampaignConfig, ConfigError, dump_config, load_config
from gnome_loop.generate.generative import models_in_use, resolved_checkpoint
from gnome_loop.generate.parents import KNOWN, PROTOTYPES, check_path
from gnome_loop.models.pretrained import architecture_mismatch
from gnome_loop.stages import export as exporting
from gnome_loop.stages.context import Decision, Progress, StageContext, no_progress
from gnome_loop.stages.dedup import dedup
from gnome_loop.stages.generate import generate
from gnome_loop.stages.hull import hull
from gnome_loop.stages.jobs import submit, unfinished, wait
from gnome_loop.stages.metrics import metrics, round_table
from gnome_loop.stages.select import select
from gnome_loop.stages.snapshot import snapshot
from gnome_loop.stages.train import train
from gnome_loop.store import Store, StoreError, campaign_lock

#: The stage names stored in the database, and the function that runs each.
STAGES: dict[str, Callable[[StageContext, int], Decision]] = {
    "snapshot": snapshot, "generate": generate, "dedup": dedup, "select": select, "submit": submit,
    "wait": wait, "hull": hull, "train": train, "metrics": metrics,
}
BOOTSTRAP_STAGES = ("snapshot", "submit", "wait", "hull", "train", "metrics")
ROUND_STAGES = ("generate", "dedup", "select", "submit", "wait", "hull", "train", "metrics")


@dataclass
class Outcome:
    """How a `run` ended: all rounds done, or waiting for oracle jobs."""

    status: str  # "done" | "waiting"
    waiting_jobs: int = 0

    @property
    def message(self) -> str:
        if self.status == "waiting":
            return f"waiting for {self.waiting_jobs} jobs"
        return "all rounds done"


class CampaignStalled(ConfigError):
    """Two rounds in a row selected nothing: the settings frozen at init keep the loop from learning."""


def stages_of(round_: int) -> tuple[str, ...]:
    return BOOTSTRAP_STAGES if round_ == 0 else ROUND_STAGES


class Campaign:
    """One campaign directory: config.yaml, campaign.db, jobs/, models/, exports/."""

    def __init__(self, directory: Path | str, progress: Progress = no_progress,
                 say: Callable[[str], None] = lambda msg: None):
        self.dir = Path(directory)
        if not (self.dir / "campaign.db").exists():
            raise StoreError(f"{self.dir} is not a campaign directory (no campaign.db); run `gnome-loop init`")
        self.config = load_config(self.dir / "config.yaml")
        self.store = Store(self.dir / "campaign.db")
        frozen = self.store.meta("config_hash")
        if frozen != self.config.digest():
            raise ConfigError(
                f"{self.dir / 'config.yaml'} was changed after init (settings hash {self.config.digest()}, "
                f"campaign {frozen}); only 'rounds', 'scheduler' and 'chemical_space.drop_missing_terminals' "
                "may change: undo the other edits, "
                "or start a new campaign with `gnome-loop init`")
        self.context = StageContext(self.dir, self.config, self.store, progress, say)

    @classmethod
    def create(cls, config: CampaignConfig, directory: Path | str, **kwargs) -> "Campaign":
        """Create a campaign directory from a validated config (never over an existing campaign)."""
        directory = Path(directory)
        if (directory / "campaign.db").exists():
            raise ConfigError(f"{directory} already holds a campaign; choose another directory")
        config = config.model_copy(deep=True)
        imported = config.generators.imported
        missing = [path for path in imported.paths if not Path(path).exists()]
        if missing:
            raise ConfigError(f"generators.import.paths: {', '.join(missing)} not found")
        if config.model.init not in ("pretrained", "scratch") and config.model.kind != "linear":
            init = Path(config.model.init).resolve()
            if not (init / "model_card.json").is_file():
                raise ConfigError(f"model.init: {config.model.init} is not a saved model (no model_card.json); "
                                  "use pretrained, scratch or the folder of a saved model")
            mismatch = architecture_mismatch(config.model, init)
            if mismatch:
                raise ConfigError(f"model.init: {mismatch}; set the model section to match, or model.init: scratch")
            config.model.init = str(init)
        for name in ("substitution", "saps"):
            settings = getattr(config.generators, name)
            if isinstance(settings.parents, list):  # paths are checked and kept absolute, like import paths
                paths = [path for path in settings.parents if path not in (KNOWN, PROTOTYPES)]
                problems = [f"{path}: {why}" for path, why in zip(paths, map(check_path, paths)) if why]
                if problems:
                    raise ConfigError(f"generators.{name}.parents: " + "; ".join(problems))
                settings.parents = [path if path in (KNOWN, PROTOTYPES) else str(Path(path).resolve())
                                    for path in settings.parents]
        for kind in models_in_use(config.generators):
            settings = getattr(config.generators, kind)
            try:
                settings.checkpoint = resolved_checkpoint(kind, settings.checkpoint, config.chemical_space.elements)
            except ValueError as error:
                raise ConfigError(f"generators.{kind}.checkpoint: {error}") from None
        for entry in config.generators.external:  # a program named by a path runs from any folder (it runs in {out})
            if "/" in entry.command[0]:
                entry.command[0] = str(Path(entry.command[0]).absolute())  # links kept: a venv's python stays its
        if config.snapshot.source == "file":
            if not Path(config.snapshot.path).exists():
                raise ConfigError(f"snapshot.path: {config.snapshot.path} not found")
            config.snapshot.path = str(Path(config.snapshot.path).resolve())
        config.snapshot.reference_hull = config.resolved_reference_hull()  # frozen: the hull is explicit
        directory.mkdir(parents=True, exist_ok=True)
        for sub in ("jobs", "models", "exports"):
            (directory / sub).mkdir(exist_ok=True)
        # import paths are kept absolute: the campaign may be resumed from another folder
        imported.paths = [str(Path(path).resolve()) for path in imported.paths]
        dump_config(config, directory / "config.yaml")
        store = Store(directory / "campaign.db", create=True)
        with store.transaction():
            store.set_meta("config_hash", config.digest())
            store.set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
            store.start_round(0, BOOTSTRAP_STAGES[0])
            store.log("init", f"campaign {config.name} created")
        store.close()
        return cls(directory, **kwargs)

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Advance until all rounds are done or the campaign must wait for jobs."""
        with campaign_lock(self.dir):
            try:
                while True:
                    round_, stage = self.store.current_round()
                    if stage == "done":
                        if round_ >= self.config.rounds:
                            return Outcome("done")
                        self._stop_if_stalled(round_)
                        with self.store.transaction():
                            self.store.start_round(round_ + 1, ROUND_STAGES[0])
                        continue
                    self.context.say(f"round {round_}: {stage}")
                    started = time.time()
                    decision = STAGES[stage](self.context, round_)
                    if decision.waiting:
                        return Outcome("waiting", decision.waiting)
                    with self.store.transaction():
                        decision.record(self.store)
                        self._advance(round_, stage, started)
            finally:
                self.context.close_schedulers()

    def _stop_if_stalled(self, round_: int) -> None:
        """Refuse to start a round after two rounds in a row that selected nothing: the
        next would face the same model and the same kind of candidates."""
        reasons = [self.store.round_metrics(r).get("empty_reason") for r in (round_ - 1, round_)]
        if not all(reasons):
            return
        selection = self.config.selection
        changes = ["more generators, or higher max_candidates, where rounds find few new candidates"]
        if not selection.fill_budget:
            changes[:0] = [f"selection.fill_budget: true (spends the budget, {selection.budget} jobs, every round)",
                           f"a higher selection.ehull_threshold (now {selection.ehull_threshold})"]
        raise CampaignStalled(
            f"rounds {round_ - 1} and {round_} selected nothing for the oracle (round {round_}: {reasons[-1]}); the "
            f"campaign stops rather than spend round {round_ + 1} learning nothing. Its settings are frozen (only "
            "'rounds' and 'scheduler' may change after init), so start a new campaign with `gnome-loop init` and "
            f"{', or '.join(changes)}; or set 'rounds: {round_}' in config.yaml to close this one as it is")

    def _advance(self, round_: int, stage: str, started: float) -> None:
        """Move to the next stage (call inside the stage's transaction)."""
        self.store.update_round_metrics(round_, {f"seconds_{stage}": round(time.time() - started, 3)})
        stages = stages_of(round_)
        following = stages.index(stage) + 1
        if following < len(stages):
            self.store.set_stage(round_, stages[following])
            return
        self.store.set_stage(round_, "done", finished=True)

    def cancel(self, job_ids: list[str] | None = None) -> list[str]:
        """Stop unfinished jobs (all, or those named) and record them as failed: 'cancelled by user'.

        Jobs whose results are already in their folders are not touched (the next
        `resume` ingests them). The scheduler stops the others first (`scancel`).
        """
        with campaign_lock(self.dir):
            # a job that already finished is left for `resume` to ingest: cancelling never discards work
            jobs = [job for job in self.store.jobs(states=["pending", "submitted"]) if unfinished(self.context, job)]
            if job_ids is not None:
                unknown = sorted(set(job_ids) - {job.id for job in jobs})
                if unknown:
                    raise ValueError(f"no unfinished job with id {', '.join(unknown)} (see `gnome-loop status`)")
                jobs = [job for job in jobs if job.id in set(job_ids)]
            try:
                self.context.scheduler.cancel([self.context.jobdir(job) for job in jobs if job.state == "submitted"])
            finally:
                self.context.close_schedulers()
            # a job that finished while it was being cancelled keeps its result
            jobs = [job for job in jobs if unfinished(self.context, job)]
            with self.store.transaction():
                for job in jobs:
                    self.store.finish_job(job.id, "failed", job.attempts, "cancelled by user")
                    self.store.log("job-cancelled", job.id)
            return [job.id for job in jobs]

    # --- reading -------------------------------------------------------------------------
    def round_table(self) -> list[dict]:
        """Per-round metrics for `status`."""
        return round_table(self.store)

    def computed_entries(self) -> list[ComputedEntry]:
        """All entries of the campaign's hull (`stages.export.computed_entries`)."""
        return exporting.computed_entries(self.context)

    def provenance(self) -> dict:
        """Where the campaign's numbers come from: stamped on every export."""
        return exporting.provenance(self.context)

    def export(self, formats: list[str]) -> list[Path]:
        """Write the updated hull and the discovered materials to `exports/`."""
        return exporting.export(self.context, formats)
