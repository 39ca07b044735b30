"""Screened generation (`screening.enabled`): the round's substitution and SAPS
candidates generated, scored and cut in shards of parents on the dask cluster, each
shard committed on its own (docs/architecture.md, "Scale").
"""

from __future__ import annotations

from collections import Counter

from gnome_loop.execute.shards import run_shards
from gnome_loop.generate.parents import pooled_parents
from gnome_loop.screen import ScreenContext, ScreenSettings, ShardResult, model_files, screen_task
from gnome_loop.stages.context import StageContext
from gnome_loop.store import StoreError, candidate_row


def screen(ctx: StageContext, round_: int) -> dict:
    """Screen the round in shards (a shard already in the store is not redone); returns
    the funnel's totals. Kept candidates arrive scored, the rest as summary rows."""
    store = ctx.store
    known, structures = ctx.known_structures()
    shards = _shards(ctx, structures)
    model_row = store.latest_model()
    context = ScreenContext(f"{ctx.directory.resolve()}:{round_}:{model_row['path']}",
                            model_files(ctx.directory / model_row["path"]),
                            [e.as_dict() for e in ctx.hull_entries()], ctx.scale(), _settings(ctx, known))
    done = store.shards_done(round_)
    todo = [i for i in range(len(shards)) if i not in done]
    totals: Counter = Counter()
    for funnel in done.values():
        totals.update(funnel)
    client = ctx.screening_client()
    with ctx.progress(f"screening {len(shards)} shards", len(shards)) as advance:
        advance(len(done))

        def record(position: int, result: ShardResult) -> None:
            index = todo[position]
            fresh = [(c, p) for c, p in result.kept if store.candidate(c.id) is None]
            with store.transaction():
                store.add_candidates(candidate_row(c.id, round_, c.generator, c.structure, c.parent_ids,
                                                   c.info, result.labels.get(c.id)) for c, _ in fresh)
                store.set_predictions((c.id, p) for c, p in fresh)
                store.add_shard(round_, index, dict(result.funnel), result.summary)
                totals.update(result.funnel)
                store.update_round_metrics(round_, {"funnel": dict(totals)})  # live in `status`
            advance(1)

        failed = run_shards(screen_task, context, [shards[i] for i in todo], record, client)
    if failed:
        raise StoreError(f"round {round_}: {len(failed)} screening shard(s) failed ("
                         + "; ".join(f"shard {todo[i]}: {e}" for i, e in sorted(failed.items())[:3])
                         + "); the shards that finished are kept: `gnome-loop resume` redoes the rest")
    return dict(totals)


def _shards(ctx: StageContext, structures: list) -> list[list[tuple[str, dict]]]:
    """The round's parents, sorted by id and cut into shards of `parents_per_shard`."""
    generators = ctx.config.generators
    chosen = [g for g in (generators.substitution, generators.saps) if g.enabled]
    parents = sorted(pooled_parents(structures, ctx.space(), chosen, generators.saps.enabled),
                     key=lambda item: item[0])
    size = ctx.config.screening.parents_per_shard
    return [[(key, s.as_dict()) for key, s in parents[i:i + size]] for i in range(0, len(parents), size)]


def _settings(ctx: StageContext, known: set[str]) -> ScreenSettings:
    """What every shard generates and keeps: the space, the known formulas, the generators' settings."""
    space, generators = ctx.space(), ctx.config.generators
    sub, sap = generators.substitution, generators.saps
    return ScreenSettings(
        space, frozenset(known),
        keep=ctx.config.screening.keep_per_shard,
        cascade_margin=ctx.config.screening.cascade_margin,
        substitution={"threshold": sub.threshold, "alpha": sub.alpha, "charge_balanced": sub.charge_balanced}
        if sub.enabled else None,
        saps={"threshold": sap.threshold, "alpha": sap.alpha, "max_per_parent": sap.max_per_parent,
              "supercell": sap.supercell, "charge_balanced": sap.charge_balanced} if sap.enabled else None)
