"""The metrics stage and the round table of `status`: per round and per generator,
what was generated, selected, evaluated and found stable, and how well the filter
did (docs/architecture.md, step 8; definitions in `gnome_loop.metrics`).
"""

from __future__ import annotations

import json
from collections import Counter

from pymatgen.core import Composition

from gnome_loop.hull import STABLE_TOL
from gnome_loop.metrics import classification, hit_rate, mean_absolute_error, spread_error_correlation
from gnome_loop.select import EXPLORE, FILL, THRESHOLD
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.store import Store

#: Round metrics of the NequIP pre-relaxer (`prerelax: nequip`) shown by `status`.
PRERELAX_METRICS = ("nequip_frames", "nequip_energy_mae", "nequip_force_mae", "prerelaxed", "prerelax_flagged")


def metrics(ctx: StageContext, round_: int) -> Decision:
    """Judge the round: stable counts, hit rates (per pick tag and generator), filter errors."""
    store = ctx.store
    rows = store.evaluated(round_)
    # hull references: MP's formulas when judged against MP's hull (parents are not references)
    reference_formulas = store.reference_formulas()
    stable = [r["e_hull"] is not None and r["e_hull"] <= STABLE_TOL for r in rows]
    hull = ctx.hull()
    unjudged = Counter(hull.unjudged_reason(Composition(r["composition"])) or "not judged yet"
                       for r in store.unjudged_entries(round_))
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
        candidates = store.generator_counts(round_)
        by_generator: dict[str, list[bool]] = {name: [] for name in candidates}
        for row, is_stable in zip(rows, stable):
            by_generator.setdefault(row["generator"], []).append(is_stable)
        values["by_generator"] = {name: {**candidates.get(name, {}), "evaluated": len(flags), "stable": sum(flags),
                                         "hit_rate": hit_rate(sum(flags), len(flags))}
                                  for name, flags in sorted(by_generator.items())}

    def record(store: Store) -> None:
        store.update_round_metrics(round_, values)
        store.log("round", f"round {round_} done: {values}")

    return Decision(record)


def round_table(store: Store) -> list[dict]:
    """Per-round metrics for `status`: counts from the store, rates from the metrics stage."""
    picks = store.picks_by_round()
    table = []
    for row in store.rounds():
        metrics = json.loads(row["metrics"])
        counts = store.job_counts(row["round"])
        picked = picks.get(row["round"], {})
        generated = metrics.get("generated")
        table.append({
            "round": row["round"], "stage": row["stage"],
            "generated": sum(generated.values()) if generated is not None else metrics.get("references"),
            "generated_by": generated or {}, "rejected": metrics.get("rejected", {}),
            "rejected_by_generator": metrics.get("rejected_by_generator", {}),
            "by_generator": metrics.get("by_generator", {}),
            "samples_by_generator": metrics.get("samples_by_generator", {}),
            "generator_training": metrics.get("generator_training", {}),
            "generator_failures": metrics.get("generator_failures", {}),
            "unique": metrics.get("unique"), "pool": metrics.get("pool"), "selected": sum(picked.values()),
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
