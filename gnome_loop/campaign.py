"""The campaign state machine: rounds of generate → dedup → select → submit → wait →
hull → train → metrics, each stage atomic and idempotent.

This module orchestrates and owns no science: every step calls a science module
(`generate`, `structures`, `models`, `select`, `oracle`, `execute`, `hull`,
`metrics`) that is usable on its own. State lives in the store only, so a
campaign can be killed at any moment and resumed: a stage either committed (and
is not repeated) or did not (and is re-run with the same content-hash ids).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator

import numpy as np
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gnome_loop.config import CampaignConfig, ChemicalSpace, ConfigError, dump_config, load_config
from gnome_loop.execute import Scheduler, make_scheduler
from gnome_loop.execute.shards import run_shards
from gnome_loop.export import (SUMMARY_CSV_COLUMNS, stable_rows, summary_row, write_cif_zip, write_entries_json,
                               write_extxyz, write_stable_hull_csv)
from gnome_loop.generate.composition import enumerate_candidates, placeholder_structure
from gnome_loop.generate.imported import import_structures
from gnome_loop.generate.parents import KNOWN, PROTOTYPES, check_path, gather, sources
from gnome_loop.generate.random_search import random_search
from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import substitute
from gnome_loop.hull import STABLE_TOL, Hull, chemsys_of, e_above_hull_many
from gnome_loop.metrics import classification, hit_rate, mean_absolute_error, spread_error_correlation
from gnome_loop.models.base import EnergyModel
from gnome_loop.models.nequip import NequIPConfig
from gnome_loop.models.pretrained import architecture_mismatch, starting_model
from gnome_loop.models.nequip_train import (average_neighbors, load_nequip, save_nequip, train_nequip,
                                             training_frames)
from gnome_loop.models.registry import load_model, make_model
from gnome_loop.oracle.base import write_json_atomic
from gnome_loop.oracle.jobfolder import read_result, write_job
from gnome_loop.prerelax import prerelax
from gnome_loop.screen import ScreenContext, ScreenSettings, model_files, score_structures, screen_task
from gnome_loop.select import EXPLORE, FILL, THRESHOLD, Scored, empty_reason, select_candidates
from gnome_loop.snapshot import load_snapshot
from gnome_loop.store import Job, Store, StoreError, campaign_lock
from gnome_loop.structures import (
    Candidate,
    find_duplicates,
    structure_from_json,
    structure_to_json,
    symmetry_label,
    validate_structure,
)

EXPORT_FORMATS = ("csv", "json", "cif-zip", "extxyz")
#: Round metrics of the NequIP pre-relaxer (`prerelax: nequip`) shown by `status`.
PRERELAX_METRICS = ("nequip_frames", "nequip_energy_mae", "nequip_force_mae", "prerelaxed", "prerelax_flagged")
#: Source of a round-0 entry kept only as a substitution parent, dedup reference and training
#: structure: judged against the hull (MP's stable phases) but not part of it.
PARENT = "parent"
BOOTSTRAP_STAGES = ("snapshot", "submit", "wait", "hull", "train", "metrics")
ROUND_STAGES = ("generate", "dedup", "select", "submit", "wait", "hull", "train", "metrics")

#: progress(label, total) -> context manager yielding advance(n=1)
Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


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
        self.progress = progress
        self.say = say
        self._scheduler: Scheduler | None = None
        self._screening: Scheduler | None = None  # a dask cluster for screening alone (`_screening_client`)
        self._hull_cache: Hull | None = None

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
                    self.say(f"round {round_}: {stage}")
                    waiting = getattr(self, f"_stage_{stage}")(round_)
                    if waiting:
                        return Outcome("waiting", waiting)
            finally:
                for scheduler in (self._scheduler, self._screening):
                    if scheduler is not None:
                        scheduler.close()
                self._scheduler = self._screening = None

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

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = make_scheduler(self.config.scheduler, self.dir)
        return self._scheduler

    def _screening_client(self):
        """The dask client screening shards run on: the `local` scheduler's cluster; with
        another scheduler, the dask scheduler at `scheduler.address` (e.g. a dask-jobqueue
        cluster while DFT goes through sbatch); None, in this process, without one."""
        settings = self.config.scheduler
        if settings.kind == "local":
            return self.scheduler.client()
        if not settings.address:
            return None
        if self._screening is None:
            self._screening = make_scheduler(settings.model_copy(update={"kind": "local"}), self.dir)
        return self._screening.client()

    # --- stages --------------------------------------------------------------------------
    def _stage_snapshot(self, round_: int) -> int:
        """Take the known phases: those with usable energies enter the hull as they are, those
        without (or all, when re-evaluated) become round-0 oracle jobs. Judged against MP's
        stable phases, the snapshot's structures are evaluated as parents, not hull phases."""
        started = time.time()
        snapshot = load_snapshot(self.config, cache_dir=self.dir / "snapshot")
        phases = snapshot.phases
        mp_hull = self.config.resolved_reference_hull() == "mp"
        reevaluate = not mp_hull and self._reevaluate(phases)
        energy_only = [p.id for p in phases if p.structure is None]
        if reevaluate and energy_only:
            raise ValueError(f"{len(energy_only)} snapshot phases have energies but no structures (e.g. "
                             f"{energy_only[0]}): the oracle cannot re-evaluate them; use a snapshot on the oracle's "
                             "energy scale with snapshot.reevaluate: never, or a file with structures")
        evaluated = [p for p in phases if p.structure is not None and (reevaluate or p.energy is None)]
        given = [p for p in phases if p.energy is not None and not reevaluate]
        scales = {p.scale for p in given}
        if given and (len(scales) != 1 or None in scales):
            raise ValueError(f"snapshot energies must share one known scale to be used as they are; "
                             f"found {sorted(map(str, scales))}")
        scale = scales.pop() if given else self.config.oracle.scale()
        rows = [
            _candidate_row(p.id, round_, "snapshot", p.structure, info={
                "source": p.source, "energy": p.energy, "scale": p.scale, "hull_reference": p.hull_reference,
                **p.info})
            for p in phases if p.structure is not None
        ]
        note = _hull_note(mp_hull, reevaluate, len(given), len(evaluated), self._oracle_label(), scale)
        with self.store.transaction():
            self.store.add_candidates(rows)
            self.store.set_meta("scale", scale)
            self.store.set_meta("reference_hull", "mp" if mp_hull else "none")
            self.store.set_meta("hull", note)
            ids = [p.id for p in evaluated]
            self.store.mark_selected((key, "reference") for key in ids)
            self.store.add_jobs(self._job_row(key, round_) for key in ids)
            if given and not mp_hull and scale != self.config.oracle.scale():
                self.store.log("scale-mismatch", f"snapshot energies are on the {scale} scale, the oracle's on "
                               f"{self.config.oracle.scale()}; they share one hull because snapshot.reevaluate "
                               "is 'never'")
            for phase in given:
                self.store.add_entry(_entry_row(
                    entry_id=f"e-{phase.id}", source="snapshot", round_=round_,
                    candidate_id=phase.id if phase.structure is not None else None, structure=phase.structure,
                    composition=phase.composition, energy=phase.energy, scale=scale, is_reference=True))
            self.store.set_meta("snapshot_version", snapshot.version)
            self.store.update_round_metrics(round_, {"references": len(phases), "reevaluated": reevaluate,
                                                     "snapshot_skipped": dict(snapshot.skipped)})
            skipped = f", {sum(snapshot.skipped.values())} rows skipped {dict(snapshot.skipped)}" \
                if snapshot.skipped else ""
            self.store.log("snapshot", f"{len(phases)} reference phases from {snapshot.version}{skipped}")
            self.store.log("hull", note)
            if snapshot.missing_from_mp:
                self.store.log("hull", f"MP's table has no elemental phase of {', '.join(snapshot.missing_from_mp)}: "
                               f"the {self._oracle_label()} energies of the snapshot's structures with "
                               f"{'it' if len(snapshot.missing_from_mp) == 1 else 'them'} join the hull instead")
            self._advance(round_, "snapshot", started)
        return 0

    def _reevaluate(self, phases: list) -> bool:
        """Reference phases go through the oracle unless their energies are already on its scale."""
        mode = self.config.snapshot.reevaluate
        if mode != "auto":
            return mode == "always"
        # Phases without energies need the oracle; an ML-potential oracle must judge candidates
        # against a hull in its own energy scale.
        return any(p.energy is None for p in phases) or self.config.oracle.kind == "ase"

    def _stage_generate(self, round_: int) -> int:
        started = time.time()
        funnel = self._screen(round_) if self.config.screening.enabled else None
        space = self._space()
        proposed = self.store.candidate_ids()
        rows, generated, rejected = [], Counter(), Counter()
        by_generator: dict[str, Counter] = {}
        marks: dict[str, str] = {}
        for name, budget, candidates, import_rejects in self._proposals(round_, marks):
            kept = 0
            counts = by_generator.setdefault(name, Counter())
            counts.update(import_rejects)
            for candidate in candidates:
                if kept >= budget:
                    break
                if candidate.id in proposed:
                    continue
                proposed.add(candidate.id)
                generated[name] += 1
                reason = validate_structure(candidate.structure, space.elements, space.max_atoms, space.max_elements)
                if reason:
                    counts[reason.split(":")[0]] += 1
                    continue
                kept += 1
                rows.append(_candidate_row(candidate.id, round_, candidate.generator, candidate.structure,
                                           candidate.parent_ids, candidate.info))
        for counts in by_generator.values():
            rejected.update(counts)
        with self.store.transaction():
            added = self.store.add_candidates(rows)
            for key, value in marks.items():
                self.store.set_meta(key, value)
            self.store.update_round_metrics(round_, {
                "generated": dict(generated), "rejected": dict(rejected), "valid": added,
                "rejected_by_generator": {name: dict(c) for name, c in by_generator.items() if c},
                **({"funnel": funnel} if funnel is not None else {})})
            self.store.log("generate", f"round {round_}: {added} candidates, {sum(rejected.values())} rejected")
            self._advance(round_, "generate", started)
        return 0

    def _screen(self, round_: int) -> dict:
        """Screen the substitution and SAPS candidates of the round in shards of parents,
        each shard committed on its own (a shard already in the store is not redone);
        returns the funnel's totals. Kept candidates arrive scored, the rest as summary rows."""
        space, generators, screening = self._space(), self.config.generators, self.config.screening
        known, structures = self._known_structures()
        chosen = [g for g in (generators.substitution, generators.saps) if g.enabled]
        parents = sorted(_parents(structures, space, chosen, generators.saps.enabled), key=lambda item: item[0])
        size = screening.parents_per_shard
        shards = [[(key, s.as_dict()) for key, s in parents[i:i + size]] for i in range(0, len(parents), size)]
        sub, sap = generators.substitution, generators.saps
        settings = ScreenSettings(
            tuple(space.elements), space.max_elements, space.max_atoms, frozenset(known),
            keep=screening.keep_per_shard,
            substitution={"threshold": sub.threshold, "alpha": sub.alpha, "charge_balanced": sub.charge_balanced}
            if sub.enabled else None,
            saps={"threshold": sap.threshold, "alpha": sap.alpha, "max_per_parent": sap.max_per_parent,
                  "supercell": sap.supercell, "charge_balanced": sap.charge_balanced} if sap.enabled else None)
        model_row = self.store.latest_model()
        context = ScreenContext(f"{self.dir.resolve()}:{round_}:{model_row['path']}",
                                model_files(self.dir / model_row["path"]),
                                [e.as_dict() for e in self._hull_entries()], self._scale(), settings)
        done = self.store.shards_done(round_)
        todo = [i for i in range(len(shards)) if i not in done]
        totals: Counter = Counter()
        for funnel in done.values():
            totals.update(funnel)
        client = self._screening_client()
        with self.progress(f"screening {len(shards)} shards", len(shards)) as advance:
            advance(len(done))

            def record(position: int, result) -> None:
                index = todo[position]
                fresh = [c for c, _ in result.kept if self.store.candidate(c.id) is None]
                predictions = {c.id: p for c, p in result.kept}
                with self.store.transaction():
                    self.store.add_candidates(_candidate_row(c.id, round_, c.generator, c.structure, c.parent_ids,
                                                             c.info, result.labels.get(c.id)) for c in fresh)
                    self.store.set_predictions((c.id, predictions[c.id].energy, predictions[c.id].std,
                                                predictions[c.id].ehull, None) for c in fresh)
                    self.store.add_shard(round_, index, dict(result.funnel), result.summary)
                    totals.update(result.funnel)
                    self.store.update_round_metrics(round_, {"funnel": dict(totals)})  # live in `status`
                advance(1)

            failed = run_shards(screen_task, context, [shards[i] for i in todo], record, client)
        if failed:
            raise StoreError(f"round {round_}: {len(failed)} screening shard(s) failed ("
                             + "; ".join(f"shard {todo[i]}: {e}" for i, e in sorted(failed.items())[:3])
                             + "); the shards that finished are kept: `gnome-loop resume` redoes the rest")
        return dict(totals)

    def _proposals(self, round_: int, marks: dict[str, str]) -> Iterator[tuple[str, int, Iterable[Candidate], Counter]]:
        """Each enabled generator's name, budget per round, candidates (best first) and
        the rejects it counted itself. An import file's rejects count in the first round
        that reads it; `marks` collects the store flags that say so."""
        space, generators = self._space(), self.config.generators
        known, structures = self._known_structures()

        screening = self.config.screening.enabled  # substitution and SAPS then run in shards (`_screen`)
        settings, rejects = generators.substitution, Counter()
        if settings.enabled and not screening:
            yield "substitution", settings.max_candidates, substitute(
                _parents(structures, space, [settings], images=False), space.elements, known,
                threshold=settings.threshold, alpha=settings.alpha, max_elements=space.max_elements,
                max_atoms=space.max_atoms, charge_balanced=settings.charge_balanced, rejected=rejects), rejects
        settings, rejects = generators.saps, Counter()
        if settings.enabled and not screening:
            yield "saps", settings.max_candidates, saps(
                _parents(structures, space, [settings], images=True), space.elements, known,
                threshold=settings.threshold, alpha=settings.alpha, max_elements=space.max_elements,
                max_atoms=space.max_atoms, max_per_parent=settings.max_per_parent, supercell=settings.supercell,
                charge_balanced=settings.charge_balanced, rejected=rejects), rejects
        seed = self.config.seed * 1000 + round_  # a new draw every round, the same on a re-run
        settings = generators.random
        if settings.enabled and settings.compositions:
            yield "random", settings.max_candidates, random_search(
                settings.compositions, settings.per_composition, space.elements, space.max_atoms, seed=seed,
                time_limit=settings.time_limit), Counter()
        settings = generators.composition
        if settings.enabled:
            yield "composition", settings.max_candidates, enumerate_candidates(
                space.elements, known, settings.n_compositions, settings.per_composition,
                max_elements=space.max_elements, max_atoms=space.max_atoms,
                model_predict=self._composition_scorer(), seed=seed, time_limit=settings.time_limit), Counter()
        accepted: list[Candidate] = []
        import_rejects: Counter = Counter()
        for path in generators.imported.paths:
            report = import_structures(path, space.elements, space.max_atoms, space.max_elements)
            accepted += report.accepted
            key = f"imported:{Path(path).resolve()}"
            if self.store.meta(key) is None:
                marks[key] = json.dumps(report.to_json())
                import_rejects.update(report.rejected)
        if generators.imported.paths:
            yield "import", generators.imported.max_candidates, accepted, import_rejects

    def _composition_scorer(self) -> Callable[[list[str]], list[float | None]] | None:
        """Predicted distance to the hull of formulas, from the campaign's model when it is
        a composition model (GNoME's composition pipeline); None otherwise."""
        if self.config.model.kind != "composition":
            return None
        model, hull = self._model(), self._hull()

        def energy_above_hull(formulas: list[str]) -> list[float | None]:
            energies, _ = model.predict([placeholder_structure(f) for f in formulas])
            return [hull.e_hull_of(f, e * Composition(f).num_atoms) for f, e in zip(formulas, energies)]

        return energy_above_hull

    def _stage_dedup(self, round_: int) -> int:
        started = time.time()
        new = self.store.candidates(round_=round_, status="new")
        labels = {row["fingerprint"] for row in new}
        known = self._known_phases(labels)
        known += [(c["id"], c["fingerprint"], structure_from_json(c["structure"]))
                  for c in self.store.candidates(status="new", fingerprints=labels) if c["round"] < round_]
        # Which of two matching candidates survives does not depend on the order they were
        # generated in: screened ones (scored already) best predicted first, as inside a
        # shard, so that where shards are cut does not decide which of two kept duplicates
        # survives; then the rest in id order.
        items = [(c["id"], c["fingerprint"], structure_from_json(c["structure"]))
                 for c in sorted(new, key=_dedup_order)]
        duplicates = find_duplicates(items, known)
        with self.store.transaction():
            self.store.mark_duplicates(duplicates)
            self.store.update_round_metrics(round_, {"unique": len(new) - len(duplicates)})
            self._advance(round_, "dedup", started)
        return 0

    def _stage_select(self, round_: int) -> int:
        started = time.time()
        rows = self.store.candidates(round_=round_, status="new")
        structures = [structure_from_json(r["structure"]) for r in rows]
        # screened candidates arrive scored against this round's hull: only the others are scored here
        todo = [i for i, r in enumerate(rows) if r["pred_ehull"] is None and r["score_error"] is None]
        updates = [(r["id"], r["pred_energy"], r["pred_std"], r["pred_ehull"], r["score_error"]) for r in rows]
        for index, update in zip(todo, self._score([rows[i] for i in todo], [structures[i] for i in todo])):
            updates[index] = update
        potential = self._potential() if self.config.prerelax.kind == "nequip" else None
        records = self._prerelax(rows, structures, updates, potential) if potential else {}
        scored = [Scored(row["id"], row["reduced_formula"], update[3], update[2]) for row, update in zip(rows, updates)]
        selection = self.config.selection
        picks = select_candidates(
            scored, selection.budget, selection.ehull_threshold, selection.per_composition,
            selection.explore_fraction, np.random.default_rng([self.config.seed, round_]), selection.strategy,
            selection.kappa, selection.fill_budget)
        metrics = {"prerelaxed": len(records), "prerelax_flagged": sum(1 for r in records.values() if r["flag"])}
        reason = None if picks else empty_reason(scored, selection.ehull_threshold)
        if reason:
            self.say(f"warning: round {round_} selected nothing: {reason}")
        with self.store.transaction():
            self.store.set_predictions(updates)
            self.store.set_prerelaxed((rows[i]["id"], record) for i, record in records.items())
            for index, record in records.items():
                if record["flag"]:
                    self.store.log("prerelax-flagged", f"{rows[index]['id']}: {record['flag']}")
            self.store.mark_selected((p.id, p.tag) for p in picks)
            self.store.add_jobs(self._job_row(p.id, round_) for p in picks)
            if reason:
                self.store.log("warning", f"round {round_} selected nothing: {reason}")
            self.store.update_round_metrics(round_, {
                "selected": len(picks), "unscored": sum(1 for u in updates if u[-1] is not None),
                **(metrics if potential else {}), **({"empty_reason": reason} if reason else {})})
            self._advance(round_, "select", started)
        return 0

    def _score(self, rows: list, structures: list) -> list[tuple]:
        """(id, energy, std, E_hull, error) per candidate: the energy model's prediction,
        judged against the current hull (one phase diagram per chemical system)."""
        predictions = score_structures(self._model(), self._hull(), structures, [row["id"] for row in rows])
        return [(row["id"], p.energy, p.std, p.ehull, p.error) for row, p in zip(rows, predictions)]

    def _prerelax(self, rows: list, structures: list, updates: list, potential: tuple) -> dict[int, dict]:
        """Pre-relax the shortlist (best predicted E_hull first; molecules stay as they
        are) with the campaign's NequIP and re-score the relaxed structures in `updates`.

        Returns each shortlisted candidate's record by index: FIRE's status, steps and
        energy, the force spread, the flag, and the relaxed structure unless flagged.
        Candidates that relax onto one structure, or onto a known phase, keep only the
        first: the others get an error and are not selected.
        """
        settings = self.config.prerelax
        ranked = sorted((i for i, u in enumerate(updates)
                         if u[3] is not None and not json.loads(rows[i]["info"]).get("molecule")),
                        key=lambda i: (updates[i][3], rows[i]["id"]))
        shortlist = ranked[:settings.shortlist] if settings.shortlist else ranked
        params, config, species = potential
        with self.progress("pre-relaxing (nequip)", len(shortlist)) as advance:
            results = prerelax([structures[i] for i in shortlist], params, config, fmax=settings.fmax,
                               max_steps=settings.max_steps, relax_cell=self.config.oracle.relax_cell,
                               max_force_std=settings.max_force_std, batch_size=settings.batch_size,
                               species=species)
            advance(len(shortlist))
        records, relaxed = {}, []
        for index, result in zip(shortlist, results):
            energy = result.relax.energy if result.relax is not None else None
            records[index] = {
                "status": result.relax.status if result.relax is not None else "not relaxed",
                "steps": result.relax.steps if result.relax is not None else 0,
                "energy": energy if energy is not None and math.isfinite(energy) else None,
                "force_std": result.force_std, "flag": result.flag, "structure": None}
            if result.structure is not None:
                relaxed.append((index, result.structure))
        labels = {index: symmetry_label(structure) for index, structure in relaxed}
        duplicates = find_duplicates([(rows[i]["id"], labels[i], s) for i, s in relaxed],
                                     self._known_phases(set(labels.values())))
        rescored = self._score([rows[i] for i, _ in relaxed], [s for _, s in relaxed])
        for (index, structure), update in zip(relaxed, rescored):
            key = rows[index]["id"]
            if key in duplicates:
                updates[index] = update[:3] + (None, f"pre-relaxes onto the same structure as {duplicates[key]}")
            elif update[-1] is not None:
                records[index]["flag"] = f"energy model failed on the relaxed structure: {update[-1]}"
                continue  # keeps its unrelaxed score
            else:
                updates[index] = update
            records[index]["structure"] = structure_to_json(structure)
        return records

    def _stage_submit(self, round_: int) -> int:
        started = time.time()
        pending = self.store.jobs(round_, states=["pending"])
        self._hand_over(pending)
        with self.store.transaction():
            self._advance(round_, "submit", started)
        return 0

    def _stage_wait(self, round_: int) -> int:
        """Ingest finished jobs, (re)run what needs running, and wait for the rest."""
        started = time.time()
        while True:
            submitted = self.store.jobs(round_, states=["submitted"])
            if self.scheduler.survives_exit:
                # jobs outside this process: the scheduler fails the ones it has lost and resubmits
                # the ones that never reached it
                self._set_refs(self.scheduler.check([self._jobdir(j) for j in submitted]))
            for job in submitted:
                self._ingest(job)
            todo = self.store.jobs(round_, states=["pending"])
            if not self.scheduler.survives_exit:
                # An in-process scheduler's jobs died with the process that ran them.
                todo += [j for j in self.store.jobs(round_, states=["submitted"]) if read_result(self._jobdir(j)) is None]
            if todo:
                self._hand_over(todo)
                continue
            unfinished = self.store.jobs(round_, states=["submitted"])
            if unfinished:
                return len(unfinished)
            with self.store.transaction():
                counts = self.store.job_counts(round_)
                self.store.update_round_metrics(round_, {"evaluated": counts.get("done", 0),
                                                         "failed": counts.get("failed", 0)})
                self._advance(round_, "wait", started)
            return 0

    def _stage_hull(self, round_: int) -> int:
        started = time.time()
        hull = self._hull()
        dropped = self._missing_terminals(hull) if round_ == 0 else []
        e_hulls = hull.all_e_above_hull()
        parents = e_above_hull_many(self._hull_entries(parents=True), hull)  # judged alone, not hull phases
        e_hulls.update((r.entry_id, r.e_above_hull) for r in parents)
        values = [(key, e, e is not None and e <= STABLE_TOL) for key, e in e_hulls.items()]
        with self.store.transaction():
            self.store.set_hull(values)
            if dropped:
                self.store.set_meta("dropped_elements", json.dumps(dropped))
                self.store.log("terminals-dropped", f"no terminal for {', '.join(dropped)} after round 0: "
                               "the campaign goes on without them (chemical_space.drop_missing_terminals)")
            self._advance(round_, "hull", started)
        return 0

    def _missing_terminals(self, hull: Hull) -> list[str]:
        """The elements of the space without a terminal in the hull once round 0's jobs are
        all known: none, or those the config lets the campaign drop. Otherwise ValueError
        naming each element, why its structures failed, and what to do.

        A terminal is any elemental entry of the hull: an evaluated structure, or an
        energy-only reference entry of the snapshot."""
        space = self.config.chemical_space
        missing = hull.missing_elements(space.elements)
        if not missing or (space.drop_missing_terminals and len(missing) < len(space.elements)):
            return missing
        failures: dict[str, list[str]] = {}
        for job in self.store.jobs(0, states=["failed"]):
            elements = chemsys_of(Composition(self.store.candidate(job.candidate_id)["reduced_formula"]))
            if len(elements) == 1:
                failures.setdefault(next(iter(elements)), []).append(f"{job.candidate_id}: {job.error}")
        why = "; ".join(f"{el}: " + (f"all {len(failures[el])} of its structures failed ({'; '.join(failures[el])})"
                                     if el in failures else "the snapshot holds no structure or entry of it")
                        for el in missing)
        them = "it" if len(missing) == 1 else "them"
        remedy = (f"Give a snapshot file with entries of {', '.join(missing)} on the oracle's energy scale "
                  "(snapshot: {source: file, path: ...}) in a new campaign")
        if len(missing) < len(space.elements):
            remedy += (f", or set chemical_space.drop_missing_terminals: true in {self.dir / 'config.yaml'} and run "
                       f"again to go on without {them}")
        raise ValueError(f"round 0 ended without a terminal (an elemental entry) for {', '.join(missing)}, so no "
                         f"compound with {them} could get an E_hull. {why}. {remedy}")

    def _dropped_elements(self) -> list[str]:
        """The elements the campaign went on without, for want of a terminal after round 0."""
        return json.loads(self.store.meta("dropped_elements") or "[]")

    def _space(self) -> ChemicalSpace:
        """The chemical space the generators work in: the config's, less the elements
        dropped at the end of round 0 for want of a terminal."""
        dropped = self._dropped_elements()
        space = self.config.chemical_space
        return space.model_copy(update={"elements": [el for el in space.elements if el not in dropped]})

    def _stage_train(self, round_: int) -> int:
        started = time.time()
        entries = [e for e in self.store.entries() if e["structure"]]
        if not entries:
            raise StoreError(f"round {round_}: no entries with structures to train on (every oracle job failed? "
                             "see `gnome-loop status`); a campaign needs at least one evaluated phase")
        model = make_model(self.config.model, seed=self.config.seed + round_)
        start, how = starting_model(self.config.model, self.config.chemical_space.elements)
        fit = model.fit([structure_from_json(e["structure"]) for e in entries],
                        np.array([e["energy_per_atom"] for e in entries]),
                        [e["reduced_formula"] for e in entries], **({"init": start} if start is not None else {}))
        relative = Path("models") / f"r{round_:03d}"
        target = self.dir / relative
        if target.exists():
            shutil.rmtree(target)
        model.save(target)
        metrics = {"model_val_mae": fit.get("val_mae"), "train_size": len(entries), "model_init": how}
        if self.config.prerelax.kind == "nequip":
            metrics.update(self._train_potential(round_, entries, target / "nequip"))
        with self.store.transaction():
            self.store.add_model(round_, 0, str(relative), fit.get("val_mae"))
            self.store.log("train", f"round {round_}: {model.name} trained {how} on {len(entries)} entries")
            self.store.update_round_metrics(round_, metrics)
            self._advance(round_, "train", started)
        return 0

    def _train_potential(self, round_: int, entries: list, target: Path) -> dict:
        """Train the NequIP pre-relaxer on every stored relaxation trajectory; its metrics."""
        settings = self.config.prerelax
        frames = training_frames([(structure_from_json(e["structure"]), json.loads(e["trajectory"]))
                                  for e in entries if e["trajectory"]], settings.frame_stride, settings.max_frames)
        if not frames:
            return {"nequip_frames": 0}  # no trajectories yet (energies without relaxations): nothing to learn
        config = NequIPConfig(cutoff=settings.cutoff, irreps=settings.irreps, blocks=settings.blocks,
                              radial_hidden=settings.radial_hidden,
                              avg_neighbors=average_neighbors(frames, settings.cutoff))
        with self.progress(f"training NequIP ({len(frames)} frames)", 1) as advance:
            params, fit = train_nequip(frames, config, members=settings.members, epochs=settings.epochs,
                                       batch_size=settings.train_batch_size, patience=settings.patience,
                                       seed=self.config.seed + round_)
            advance(1)
        save_nequip(target, params, config, fit)
        return {"nequip_frames": len(frames), "nequip_energy_mae": fit.get("energy_mae_meV_per_atom"),
                "nequip_force_mae": fit.get("force_mae_meV_per_A")}

    def _stage_metrics(self, round_: int) -> int:
        started = time.time()
        rows = self.store.query(
            "SELECT c.id, c.generator, c.explore, c.pick, c.pred_energy, c.pred_std, c.pred_ehull, e.energy_per_atom,"
            " e.e_hull, e.reduced_formula FROM candidates c JOIN jobs j ON j.candidate_id = c.id"
            " JOIN entries e ON e.candidate_id = c.id WHERE j.round = ? AND j.state = 'done'", (round_,))
        # hull references: MP's formulas when judged against MP's hull (parents are not references)
        reference_formulas = {r["reduced_formula"] for r in self.store.query(
            "SELECT reduced_formula FROM entries WHERE is_reference = 1")}
        stable = [r["e_hull"] is not None and r["e_hull"] <= STABLE_TOL for r in rows]
        hull = self._hull()
        unjudged = Counter(hull.unjudged_reason(Composition(r["composition"])) or "not judged yet"
                           for r in self.store.unjudged_entries(round_))
        values: dict = {"stable": sum(stable), "unjudged": sum(unjudged.values()), "unjudged_reasons": dict(unjudged)}
        if round_ > 0:
            values["new_stable"] = sum(1 for r, s in zip(rows, stable)
                                       if s and r["reduced_formula"] not in reference_formulas)
            values["hit_rate"] = hit_rate(sum(stable), len(rows))
            values["filter_mae"] = mean_absolute_error([r["pred_energy"] for r in rows],
                                                       [r["energy_per_atom"] for r in rows])
            values["spread_error_spearman"] = spread_error_correlation(
                [r["pred_std"] for r in rows], [r["pred_energy"] for r in rows], [r["energy_per_atom"] for r in rows])
            predicted = [r["pred_ehull"] is not None and r["pred_ehull"] <= STABLE_TOL for r in rows]
            values.update(classification(predicted, stable))
            exploit = [s for r, s in zip(rows, stable) if not r["explore"]]
            values["hit_rate_exploit"] = hit_rate(sum(exploit), len(exploit))
            for tag in (THRESHOLD, FILL, EXPLORE):  # below the threshold, filling the budget, at random
                flags = [s for r, s in zip(rows, stable) if r["pick"] == tag]
                values.update({f"evaluated_{tag}": len(flags), f"hit_rate_{tag}": hit_rate(sum(flags), len(flags))})
            by_generator: dict[str, list[bool]] = {}
            for row, is_stable in zip(rows, stable):
                by_generator.setdefault(row["generator"], []).append(is_stable)
            values["by_generator"] = {name: {"evaluated": len(flags), "stable": sum(flags),
                                             "hit_rate": hit_rate(sum(flags), len(flags))}
                                      for name, flags in sorted(by_generator.items())}
        with self.store.transaction():
            self.store.update_round_metrics(round_, values)
            self.store.log("round", f"round {round_} done: {values}")
            self._advance(round_, "metrics", started)
        return 0

    # --- jobs ----------------------------------------------------------------------------
    def _job_row(self, candidate_id: str, round_: int) -> dict:
        job_id = f"j-{candidate_id}"
        return {"id": job_id, "candidate_id": candidate_id, "round": round_, "oracle": self._oracle_label(),
                "workdir": str(Path("jobs") / f"r{round_:03d}" / job_id)}

    def _oracle_label(self) -> str:
        oracle = self.config.oracle
        return oracle.calculator if oracle.kind == "ase" else oracle.kind

    def _set_refs(self, refs: dict[Path, str] | None) -> None:
        """Record the scheduler's ids (SLURM job ids) of the job folders it was given."""
        if refs:
            by_dir = {self._jobdir(j).resolve(): j.id for j in self.store.jobs(states=["submitted"])}
            with self.store.transaction():
                self.store.set_refs({by_dir[Path(d).resolve()]: ref for d, ref in refs.items()
                                     if Path(d).resolve() in by_dir})

    def _jobdir(self, job: Job) -> Path:
        return self.dir / job.workdir

    def _hand_over(self, jobs: list[Job]) -> None:
        """Write the job folders (attempt = previous attempts + 1) and give them to the scheduler."""
        if not jobs:
            return
        for job in jobs:
            jobdir = self._jobdir(job)
            if (jobdir / "job.json").exists():  # a failed attempt's folder, or one that died unfinished
                _archive_attempt(jobdir, json.loads((jobdir / "job.json").read_text())["attempt"])
            candidate = self.store.candidate(job.candidate_id)
            oracle = self.config.oracle.model_dump()
            if json.loads(candidate["info"]).get("molecule"):
                oracle["relax_cell"] = False  # a molecule in a box: relaxing the box would collapse it
            # a trusted pre-relaxation (not flagged) is where the oracle starts; a retry starts
            # from the generated structure, in case the pre-relaxed one is what failed
            relaxed = json.loads(candidate["prerelax"] or "{}").get("structure") if job.attempts == 0 else None
            write_job(jobdir, job.id, job.candidate_id, structure_from_json(relaxed or candidate["structure"]),
                      oracle, attempt=job.attempts + 1)
        with self.store.transaction():
            self.store.mark_submitted(j.id for j in jobs)
        by_dir = {self._jobdir(j): j.id for j in jobs}
        with self.progress(f"oracle jobs ({self._oracle_label()})", len(jobs)) as advance:
            def on_done(jobdir: Path) -> None:
                job = self.store.job(by_dir[Path(jobdir)])
                if job is not None:
                    self._ingest(job)
                advance(1)
            self._set_refs(self.scheduler.execute(sorted(by_dir), on_done))

    def _ingest(self, job: Job) -> None:
        """Store a finished job's result once; failures are retried up to the limit."""
        jobdir = self._jobdir(job)
        result = read_result(jobdir)
        if result is None or result.attempt <= job.attempts:
            return  # not finished, or already ingested
        error = result.error if not result.ok else None
        candidate = self.store.candidate(job.candidate_id)
        if error is None:
            expected = Composition(candidate["reduced_formula"]).reduced_formula
            if result.structure.composition.reduced_formula != expected:
                error = f"composition changed: {result.structure.composition.reduced_formula} != {expected}"
            elif result.energy is None or not math.isfinite(result.energy):
                error = f"non-finite energy: {result.energy}"
        # a round-0 phase is a hull reference, or (judged against MP's hull) only a parent
        reference = job.round == 0 and json.loads(candidate["info"]).get("hull_reference", True)
        source = "oracle" if job.round > 0 else "reference" if reference else PARENT
        with self.store.transaction():
            if error is None:
                self.store.add_entry(_entry_row(
                    entry_id=f"e-{job.candidate_id}", source=source, round_=job.round,
                    candidate_id=job.candidate_id, structure=result.structure,
                    composition=result.structure.composition, energy=result.energy, scale=self._scale(),
                    is_reference=reference, trajectory=result.trajectory, data=result.info))
                self.store.finish_job(job.id, "done", result.attempt, None)
            else:
                final = result.attempt >= self.config.oracle.max_attempts
                self.store.finish_job(job.id, "failed" if final else "pending", result.attempt, error)
                self.store.log("job-failed", f"{job.id} attempt {result.attempt}: {error}"
                               + ("" if final else " (will retry)"))
        if error is not None:
            _archive_attempt(jobdir, result.attempt)

    def cancel(self, job_ids: list[str] | None = None) -> list[str]:
        """Stop unfinished jobs (all, or those named) and record them as failed: 'cancelled by user'.

        Jobs whose results are already in their folders are not touched (the next
        `resume` ingests them). The scheduler stops the others first (`scancel`).
        """
        with campaign_lock(self.dir):
            # a job that already finished is left for `resume` to ingest: cancelling never discards work
            jobs = [job for job in self.store.jobs(states=["pending", "submitted"])
                    if job.state == "pending" or read_result(self._jobdir(job)) is None]
            if job_ids is not None:
                unknown = sorted(set(job_ids) - {job.id for job in jobs})
                if unknown:
                    raise ValueError(f"no unfinished job with id {', '.join(unknown)} (see `gnome-loop status`)")
                jobs = [job for job in jobs if job.id in set(job_ids)]
            try:
                self.scheduler.cancel([self._jobdir(job) for job in jobs if job.state == "submitted"])
            finally:
                self.scheduler.close()
                self._scheduler = None
            # a job that finished while it was being cancelled keeps its result
            jobs = [job for job in jobs if job.state == "pending" or read_result(self._jobdir(job)) is None]
            with self.store.transaction():
                for job in jobs:
                    self.store.finish_job(job.id, "failed", job.attempts, "cancelled by user")
                    self.store.log("job-cancelled", job.id)
            return [job.id for job in jobs]

    # --- science helpers ---------------------------------------------------------------
    def _scale(self) -> str:
        """The energy scale of the campaign's hull, fixed when the snapshot was taken."""
        return self.store.meta("scale") or self.config.oracle.scale()

    def _hull(self) -> Hull:
        """The campaign's hull, kept for the life of the process and given only the new
        entries, so a stage rebuilds only the phase diagrams of systems that changed."""
        if self._hull_cache is None:
            self._hull_cache = Hull(scale=self._scale())
        self._hull_cache.add(e for e in self._hull_entries() if e.entry_id not in self._hull_cache)
        return self._hull_cache

    def _known_structures(self) -> tuple[set[str], list[tuple[str, Structure, float | None]]]:
        """The reduced formulas of every entry, and (id, structure, E_hull) of those with a
        structure: what the substitution generators start from."""
        entries = self.store.entries()
        return ({e["reduced_formula"] for e in entries},
                [(e["id"], structure_from_json(e["structure"]), e["e_hull"]) for e in entries if e["structure"]])

    def _known_phases(self, labels: set[str]) -> list[tuple[str, str, Structure]]:
        """(id, symmetry label, structure) of the entries in the dedup buckets `labels`."""
        return [(e["id"], e["fingerprint"], structure_from_json(e["structure"]))
                for e in self.store.entries(fingerprints=labels) if e["structure"]]

    def _hull_entries(self, parents: bool = False) -> list[ComputedEntry]:
        """The entries of the campaign's hull as the hull sees it (composition and corrected
        energy); with `parents`, instead the round-0 structures kept only as parents, which
        are judged against the hull but are not part of it."""
        return [ComputedEntry(Composition(e["composition"]), e["energy_corrected"], entry_id=e["id"],
                              data={"scale": e["scale"]})
                for e in self.store.entries(with_structure=False) if (e["source"] == PARENT) == parents]

    def _potential(self) -> tuple[dict, NequIPConfig, set[int]] | None:
        """The latest trained NequIP pre-relaxer (parameters, config, the atomic numbers it
        was trained on), or None before the first."""
        for row in self.store.query("SELECT path FROM models ORDER BY round DESC"):
            if (self.dir / row["path"] / "nequip").is_dir():
                params, config, metrics = load_nequip(self.dir / row["path"] / "nequip")
                return params, config, set(metrics["species"])
        return None

    def _model(self) -> EnergyModel:
        row = self.store.latest_model()
        if row is None:
            raise StoreError("no trained model in the campaign; round 0 must finish first")
        return load_model(self.dir / row["path"])

    # --- reading -------------------------------------------------------------------------
    def computed_entries(self) -> list[ComputedEntry]:
        """All entries of the campaign's hull: a `ComputedStructureEntry` for each entry
        with a structure, a plain `ComputedEntry` for an energy-only reference. Round-0
        parents judged against MP's hull are not hull entries and are left out."""
        out = []
        for e in self.store.entries():
            if e["source"] == PARENT:
                continue
            data = {"source": e["source"], "round": e["round"], "e_above_hull": e["e_hull"], "scale": e["scale"],
                    "candidate_id": e["candidate_id"]}
            if e["structure"]:
                out.append(ComputedStructureEntry(structure_from_json(e["structure"]), e["energy_corrected"],
                                                  entry_id=e["id"], data=data))
            else:
                out.append(ComputedEntry(Composition(e["composition"]), e["energy_corrected"], entry_id=e["id"],
                                         data=data))
        return out

    def _exported_entries(self) -> list[ComputedEntry]:
        """The entries to export, which `PhaseDiagram` accepts: all of them, less those
        with an element dropped at the end of round 0. ValueError, naming the elements,
        when an exported entry has an element without a terminal (round 0 is not done,
        or the campaign was made before round 0 checked its terminals)."""
        dropped = set(self._dropped_elements())
        entries = [e for e in self.computed_entries() if not chemsys_of(e.composition) & dropped]
        elements = set().union(*(chemsys_of(e.composition) for e in entries))
        missing = self._hull().missing_elements(elements)
        if missing:
            raise ValueError(
                f"cannot export: no terminal (elemental entry) for {', '.join(missing)}, so exports/entries.json.gz "
                "would not load into pymatgen's PhaseDiagram; finish round 0 (`gnome-loop run`), which stops and "
                "says what to do when an element has no terminal")
        return entries


    def round_table(self) -> list[dict]:
        """Per-round metrics for `status`: counts from the store, rates from the metrics stage."""
        picks = self.store.picks_by_round()
        table = []
        for row in self.store.rounds():
            metrics = json.loads(row["metrics"])
            counts = self.store.job_counts(row["round"])
            picked = picks.get(row["round"], {})
            generated = metrics.get("generated")
            table.append({
                "round": row["round"], "stage": row["stage"],
                "generated": sum(generated.values()) if generated is not None else metrics.get("references"),
                "generated_by": generated or {}, "rejected": metrics.get("rejected", {}),
                "rejected_by_generator": metrics.get("rejected_by_generator", {}),
                "by_generator": metrics.get("by_generator", {}),
                "unique": metrics.get("unique"), "selected": sum(picked.values()),
                # round 0 evaluates reference phases: no selection, no threshold
                "threshold_picks": picked.get(THRESHOLD, 0) if row["round"] else None,
                "fill_picks": picked.get(FILL, 0) if row["round"] else None,
                "empty_reason": metrics.get("empty_reason"),
                "hit_rate_threshold": metrics.get("hit_rate_threshold"), "hit_rate_fill": metrics.get("hit_rate_fill"),
                "evaluated": counts.get("done", 0), "failed": counts.get("failed", 0),
                "stable": metrics.get("stable"), "new_stable": metrics.get("new_stable"),
                "unjudged": metrics.get("unjudged"), "unjudged_reasons": metrics.get("unjudged_reasons", {}),
                "hit_rate": metrics.get("hit_rate"), "filter_mae": metrics.get("filter_mae"),
                "model_val_mae": metrics.get("model_val_mae"),
                "spread_error_spearman": metrics.get("spread_error_spearman"),
                "precision": metrics.get("precision"), "recall": metrics.get("recall"), "f1": metrics.get("f1"),
                "daf": metrics.get("daf"),
                "prerelax": {key: metrics[key] for key in PRERELAX_METRICS if key in metrics},
                "funnel": metrics.get("funnel", {}),
                "seconds": {k[len("seconds_"):]: v for k, v in metrics.items() if k.startswith("seconds_")},
            })
        return table

    def provenance(self) -> dict:
        """Where the campaign's numbers come from: stamped on every export."""
        from importlib.metadata import version

        oracle = self.config.oracle
        return {"campaign": self.config.name, "config_hash": self.store.meta("config_hash"),
                "snapshot": self.config.snapshot.source, "snapshot_version": self.store.meta("snapshot_version"),
                # a campaign made before gnome_loop recorded its hull used the snapshot's own
                "reference_hull": self.store.meta("reference_hull") or "none", "hull": self.store.meta("hull"),
                "oracle": self._oracle_label(), "oracle_kind": oracle.kind, "energy_scale": self._scale(),
                "dropped_elements": self._dropped_elements(),
                "oracle_scale": oracle.scale(),  # CHGNet's 'chgnet-mp2020' on MP's hull ('mp2020')
                "gnome_loop": version("gnome_loop"), "pymatgen": version("pymatgen"),
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def export(self, formats: list[str]) -> list[Path]:
        """Write the updated hull (`exports/`): csv (hull + summary), json (entries), cif-zip, extxyz.

        Every format carries the provenance: `provenance.json` beside them, and in
        each exported entry's data. `entries.json.gz` holds every entry the hull used,
        energy-only references as plain `ComputedEntry`s, so it loads into pymatgen's
        `PhaseDiagram` (`_exported_entries`).
        """
        unknown = sorted(set(formats) - set(EXPORT_FORMATS))
        if unknown:
            raise ValueError(f"unknown export format(s) {unknown}; use {', '.join(EXPORT_FORMATS)}")
        provenance = self.provenance()
        exported = self._exported_entries()
        for entry in exported:
            entry.data.update({key: provenance[key] for key in ("config_hash", "oracle", "energy_scale")})
        # the CSVs, CIFs and extxyz describe materials: entries with a structure
        entries = {e.entry_id: e for e in exported if isinstance(e, ComputedStructureEntry)}
        candidates = {r["id"]: r for r in self.store.query("SELECT id, generator, parent_ids FROM candidates")}
        meta = {key: {"round": e.data["round"],
                      "generator": candidates[e.data["candidate_id"]]["generator"]
                      if e.data["candidate_id"] in candidates else e.data["source"]}
                for key, e in entries.items()}
        hull = self._hull()
        rows = stable_rows(hull, entries, meta)
        folder = self.dir / "exports"
        folder.mkdir(exist_ok=True)
        written = [folder / "provenance.json"]
        write_json_atomic(written[0], provenance)
        if "csv" in formats:
            written.append(folder / "stable_materials_hull.csv")
            write_stable_hull_csv(rows, written[-1])
            summary = []
            for row in rows:
                entry = entries[row["MaterialId"]]
                candidate = candidates.get(entry.data["candidate_id"])
                parents = json.loads(candidate["parent_ids"]) if candidate else []
                summary.append(summary_row(row, entry.structure, parents, entry.data["source"]))
            written.append(folder / "stable_materials_summary.csv")
            write_stable_hull_csv(summary, written[-1], SUMMARY_CSV_COLUMNS)
        if "json" in formats:
            written.append(folder / "entries.json.gz")
            write_entries_json(exported, written[-1])
        if "cif-zip" in formats:
            written.append(folder / "by_id.zip")
            write_cif_zip({row["MaterialId"]: entries[row["MaterialId"]].structure for row in rows}, written[-1])
        if "extxyz" in formats:
            written.append(folder / "stable_materials.extxyz")
            write_extxyz([entries[row["MaterialId"]] for row in rows], written[-1])
        return written


def _parents(known: list, space, generators: list, images: bool) -> list:
    """Parent structures of the substitution generators `generators`, their sources pooled
    (a screening shard runs both on one list), with in-space images of file parents for SAPS."""
    if not generators:
        return []
    pooled = list(dict.fromkeys(source for g in generators for source in sources(g.parents)))
    return gather(pooled, known, max(g.parents_max_ehull for g in generators), space.elements, space.max_elements,
                  space.max_atoms, min(g.threshold for g in generators), generators[0].alpha,
                  max(g.max_outside_parents for g in generators), images)


def _hull_note(mp_hull: bool, reevaluate: bool, given: int, evaluated: int, oracle: str, scale: str) -> str:
    """One sentence for the round-0 log, the provenance and the report: which hull the
    campaign's candidates are judged against."""
    if mp_hull:
        return (f"judged against the Materials Project's hull: {given} MP stable phases of the space "
                f"(MP2020-corrected DFT energies shipped with gnome_loop) used as they are, with no "
                f"re-evaluation; the {evaluated} prototype and elemental structures are evaluated by {oracle} "
                f"as substitution parents, dedup references and training data only; candidates' {oracle} "
                "energies are judged against MP's DFT hull (the matbench-discovery protocol)")
    if reevaluate:
        return (f"self-consistent hull: all {evaluated} reference phases evaluated by {oracle} ({scale} scale); "
                f"candidates are judged against {oracle}'s own hull, not against DFT")
    return (f"the snapshot's own hull: {given} reference energies used as they are ({scale} scale)"
            + (f", {evaluated} structures without energies evaluated by {oracle}" if evaluated else ""))


def _dedup_order(row) -> tuple:
    """Candidates scored while screening first, by predicted E_hull; then the others; ties by id."""
    scored = row["pred_ehull"] is not None
    return (not scored, row["pred_ehull"] if scored else 0.0, row["id"])


def _candidate_row(candidate_id: str, round_: int, generator: str, structure, parent_ids=(), info=None,
                   label: str | None = None) -> dict:
    """A candidates-table row; `label` is the structure's symmetry label where known."""
    return {
        "id": candidate_id, "round": round_, "generator": generator, "parent_ids": json.dumps(list(parent_ids)),
        "structure": structure_to_json(structure), "reduced_formula": structure.composition.reduced_formula,
        "nsites": len(structure), "fingerprint": label or symmetry_label(structure), "info": json.dumps(info or {}),
    }


def _entry_row(entry_id: str, source: str, round_: int, candidate_id: str | None, structure, composition,
               energy: float, scale: str, is_reference: bool, trajectory: dict | None = None,
               data: dict | None = None) -> dict:
    composition = Composition(composition)
    return {
        "id": entry_id, "source": source, "round": round_, "candidate_id": candidate_id,
        "composition": composition.formula, "reduced_formula": composition.reduced_formula,
        "nsites": int(composition.num_atoms), "energy_corrected": float(energy),
        "energy_per_atom": float(energy) / composition.num_atoms, "scale": scale,
        "structure": structure_to_json(structure) if structure is not None else None,
        "fingerprint": symmetry_label(structure) if structure is not None else None,
        "trajectory": json.dumps(trajectory) if trajectory else None, "is_reference": int(is_reference),
        "data": json.dumps(data or {}),
    }


def _archive_attempt(jobdir: Path, attempt: int) -> None:
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
