"""Round 0's first stage: the known phases (docs/architecture.md, "Round 0").

Those with usable energies enter the hull as they are; those without (or all,
when re-evaluated) become round-0 oracle jobs. Judged against MP's stable phases,
the snapshot's structures are evaluated as parents, not hull phases.
"""

from __future__ import annotations

from gnome_loop.snapshot import KnownPhase, load_snapshot
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.stages.jobs import job_row
from gnome_loop.store import Store, candidate_row, entry_row


def snapshot(ctx: StageContext, round_: int) -> Decision:
    """Take the snapshot: its phases as candidates, entries and round-0 jobs."""
    config = ctx.config
    taken = load_snapshot(config, cache_dir=ctx.directory / "snapshot")
    phases = taken.phases
    mp_hull = config.resolved_reference_hull() == "mp"
    reevaluate = not mp_hull and _reevaluate(ctx, phases)
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
    scale = scales.pop() if given else config.oracle.scale()
    rows = [
        candidate_row(p.id, round_, "snapshot", p.structure, info={
            "source": p.source, "energy": p.energy, "scale": p.scale, "hull_reference": p.hull_reference, **p.info})
        for p in phases if p.structure is not None
    ]
    oracle = ctx.oracle_label()
    note = hull_note(mp_hull, reevaluate, len(given), len(evaluated), oracle, scale)

    def record(store: Store) -> None:
        store.add_candidates(rows)
        store.set_meta("scale", scale)
        store.set_meta("reference_hull", "mp" if mp_hull else "none")
        store.set_meta("hull", note)
        ids = [p.id for p in evaluated]
        store.mark_selected((key, "reference") for key in ids)
        store.add_jobs(job_row(ctx, key, round_) for key in ids)
        if given and not mp_hull and scale != config.oracle.scale():
            store.log("scale-mismatch", f"snapshot energies are on the {scale} scale, the oracle's on "
                      f"{config.oracle.scale()}; they share one hull because snapshot.reevaluate is 'never'")
        for phase in given:
            store.add_entry(entry_row(
                entry_id=f"e-{phase.id}", source="snapshot", round_=round_,
                candidate_id=phase.id if phase.structure is not None else None, structure=phase.structure,
                composition=phase.composition, energy=phase.energy, scale=scale, is_reference=True))
        store.set_meta("snapshot_version", taken.version)
        store.update_round_metrics(round_, {"references": len(phases), "reevaluated": reevaluate,
                                            "snapshot_skipped": dict(taken.skipped)})
        skipped = f", {sum(taken.skipped.values())} rows skipped {dict(taken.skipped)}" if taken.skipped else ""
        store.log("snapshot", f"{len(phases)} reference phases from {taken.version}{skipped}")
        store.log("hull", note)
        if taken.missing_from_mp:
            store.log("hull", f"MP's table has no elemental phase of {', '.join(taken.missing_from_mp)}: "
                      f"the {oracle} energies of the snapshot's structures with "
                      f"{'it' if len(taken.missing_from_mp) == 1 else 'them'} join the hull instead")

    return Decision(record)


def _reevaluate(ctx: StageContext, phases: list[KnownPhase]) -> bool:
    """Reference phases go through the oracle unless their energies are already on its scale."""
    mode = ctx.config.snapshot.reevaluate
    if mode != "auto":
        return mode == "always"
    # Phases without energies need the oracle; an ML-potential oracle must judge candidates
    # against a hull in its own energy scale.
    return any(p.energy is None for p in phases) or ctx.config.oracle.kind == "ase"


def hull_note(mp_hull: bool, reevaluate: bool, given: int, evaluated: int, oracle: str, scale: str) -> str:
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
