"""The select stage: the energy model scores the round's unique candidates against
the current hull, the NequIP pre-relaxer (`prerelax: nequip`) relaxes and re-scores
the shortlist, and `gnome_loop.select` picks the oracle's jobs (docs/architecture.md,
step 3).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass, replace

import numpy as np
from pymatgen.core import Structure

from gnome_loop.prerelax import Potential, PrerelaxResult, load_potential, prerelax
from gnome_loop.screen import Prediction, score_structures
from gnome_loop.select import Scored, empty_reason, select_candidates
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.stages.jobs import job_row
from gnome_loop.store import Store
from gnome_loop.structures import find_duplicates, structure_from_json, structure_to_json, symmetry_label


@dataclass
class PrerelaxRecord:
    """A shortlisted candidate's pre-relaxation as stored: FIRE's status, steps and
    energy, the force spread, the flag ("" when trusted), and the relaxed structure
    (JSON) where it is used."""

    status: str
    steps: int
    energy: float | None
    force_std: float | None
    flag: str
    structure: str | None = None

    @classmethod
    def of(cls, result: PrerelaxResult) -> PrerelaxRecord:
        relax = result.relax
        energy = relax.energy if relax is not None else None
        return cls(relax.status if relax is not None else "not relaxed", relax.steps if relax is not None else 0,
                   energy if energy is not None and math.isfinite(energy) else None, result.force_std, result.flag)


def select(ctx: StageContext, round_: int) -> Decision:
    """Score the pool (the round's unique candidates, and with `selection.carry_over` those
    that earlier rounds left unselected) and choose the oracle's jobs."""
    config = ctx.config
    rows = pool(ctx.store, round_, config.selection.carry_over)
    structures = [structure_from_json(r["structure"]) for r in rows]
    # screened candidates arrive scored against this round's hull: only the others, and the
    # earlier rounds' (scored by an older model against an older hull), are scored here
    todo = [i for i, r in enumerate(rows) if r["round"] < round_ or (r["pred_ehull"] is None and r["score_error"] is None)]
    predictions = [Prediction(r["pred_energy"], r["pred_std"], r["pred_ehull"], r["score_error"]) for r in rows]
    for index, prediction in zip(todo, score(ctx, [rows[i] for i in todo], [structures[i] for i in todo])):
        predictions[index] = prediction
    potential = latest_potential(ctx) if config.prerelax.kind == "nequip" else None
    records = _prerelax(ctx, rows, structures, predictions, potential) if potential else {}
    scored = [Scored(row["id"], row["reduced_formula"], p.ehull, p.std) for row, p in zip(rows, predictions)]
    selection = config.selection
    picks = select_candidates(
        scored, selection.budget, selection.ehull_threshold, selection.per_composition,
        selection.explore_fraction, np.random.default_rng([config.seed, round_]), selection.strategy,
        selection.kappa, selection.fill_budget)
    metrics = {"prerelaxed": len(records), "prerelax_flagged": sum(1 for r in records.values() if r.flag)}
    reason = None if picks else empty_reason(scored, selection.ehull_threshold)
    if reason:
        ctx.say(f"warning: round {round_} selected nothing: {reason}")

    def record(store: Store) -> None:
        store.set_predictions((row["id"], p) for row, p in zip(rows, predictions))
        store.set_prerelaxed((rows[i]["id"], asdict(r)) for i, r in records.items())
        for index, prerelaxed in records.items():
            if prerelaxed.flag:
                store.log("prerelax-flagged", f"{rows[index]['id']}: {prerelaxed.flag}")
        store.mark_selected((p.id, p.tag) for p in picks)
        store.add_jobs(job_row(ctx, p.id, round_) for p in picks)
        if reason:
            store.log("warning", f"round {round_} selected nothing: {reason}")
        store.update_round_metrics(round_, {
            "selected": len(picks), "pool": len(rows), "unscored": sum(1 for p in predictions if p.error is not None),
            **(metrics if potential else {}), **({"empty_reason": reason} if reason else {})})

    return Decision(record)


def pool(store: Store, round_: int, carry_over: bool) -> list[sqlite3.Row]:
    """The candidates a round chooses among: its unique ones, plus with `carry_over` every
    unique candidate of an earlier round that was never selected (not round 0's: the
    snapshot's known phases)."""
    if not carry_over:
        return store.candidates(round_=round_, status="new")
    return [row for row in store.candidates(status="new", selected=False) if 0 < row["round"] <= round_]


def score(ctx: StageContext, rows: list[sqlite3.Row], structures: list[Structure]) -> list[Prediction]:
    """The energy model's prediction of each candidate, judged against the current hull
    (one phase diagram per chemical system)."""
    return score_structures(ctx.model(), ctx.hull(), structures, [row["id"] for row in rows])


def latest_potential(ctx: StageContext) -> Potential | None:
    """The latest trained NequIP pre-relaxer, or None before the first."""
    for path in ctx.store.model_paths():
        if (ctx.directory / path / "nequip").is_dir():
            return load_potential(ctx.directory / path / "nequip")
    return None


def _prerelax(ctx: StageContext, rows: list[sqlite3.Row], structures: list[Structure],
              predictions: list[Prediction], potential: Potential) -> dict[int, PrerelaxRecord]:
    """Pre-relax the shortlist (best predicted E_hull first; molecules stay as they
    are) with the campaign's NequIP and re-score the relaxed structures in `predictions`.

    Returns each shortlisted candidate's record by index. Candidates that relax onto
    one structure, or onto a known phase, keep only the first: the others get an
    error and are not selected.
    """
    settings = ctx.config.prerelax
    ranked = sorted((i for i, p in enumerate(predictions)
                     if p.ehull is not None and not json.loads(rows[i]["info"]).get("molecule")),
                    key=lambda i: (predictions[i].ehull, rows[i]["id"]))
    shortlist = ranked[:settings.shortlist] if settings.shortlist else ranked
    with ctx.progress("pre-relaxing (nequip)", len(shortlist)) as advance:
        results = prerelax([structures[i] for i in shortlist], potential.params, potential.config,
                           fmax=settings.fmax, max_steps=settings.max_steps, relax_cell=ctx.config.oracle.relax_cell,
                           max_force_std=settings.max_force_std, batch_size=settings.batch_size,
                           species=potential.species)
        advance(len(shortlist))
    records, relaxed = {}, []
    for index, result in zip(shortlist, results):
        records[index] = PrerelaxRecord.of(result)
        if result.structure is not None:
            relaxed.append((index, result.structure))
    labels = {index: symmetry_label(structure) for index, structure in relaxed}
    duplicates = find_duplicates([(rows[i]["id"], labels[i], s) for i, s in relaxed],
                                 ctx.known_phases(set(labels.values())))
    rescored = score(ctx, [rows[i] for i, _ in relaxed], [s for _, s in relaxed])
    for (index, structure), prediction in zip(relaxed, rescored):
        key = rows[index]["id"]
        if key in duplicates:
            predictions[index] = replace(prediction, ehull=None,
                                         error=f"pre-relaxes onto the same structure as {duplicates[key]}")
        elif prediction.error is not None:
            records[index].flag = f"energy model failed on the relaxed structure: {prediction.error}"
            continue  # keeps its unrelaxed score
        else:
            predictions[index] = prediction
        records[index].structure = structure_to_json(structure)
    return records
