"""Discovery metrics as the field defines them (docs/architecture.md: the metrics stage).

- hit rate (GNoME): stable / evaluated by the oracle;
- precision, recall, F1 of "predicted stable" against "oracle stable";
- DAF (matbench-discovery): precision / prevalence of stable among the evaluated.
Stability uses E_hull <= 5e-5 eV/atom (GNoME's tolerance), see `hull.STABLE_TOL`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr


def hit_rate(n_stable: int, n_evaluated: int) -> float | None:
    """Share of oracle-evaluated candidates that are stable (None when nothing was evaluated)."""
    return n_stable / n_evaluated if n_evaluated else None


#: What the metrics stage counts per generator and round (`by_generator`).
JUDGED = ("valid", "unique", "novel", "evaluated", "stable")
#: What `generator_totals` counts per generator.
GENERATOR_COUNTS = ("samples", "generated", "rejected", "failed", *JUDGED)


def generator_totals(rounds: Sequence[dict]) -> dict[str, dict]:
    """Per generator, by name, over the rounds of `Campaign.round_table`: samples drawn
    (generative models and external commands; None for the others), candidates generated, rejected, valid,
    unique and novel, evaluated, stable, the hit rate (None when nothing was evaluated)
    and the rounds it failed in."""
    totals: dict[str, Counter] = {}
    for row in rounds:
        for name, n in row["generated_by"].items():
            totals.setdefault(name, Counter())["generated"] += n
        for name, n in row["samples_by_generator"].items():
            totals.setdefault(name, Counter())["samples"] += n
        for name, rejects in row["rejected_by_generator"].items():
            totals.setdefault(name, Counter())["rejected"] += sum(rejects.values())
        for name in row["generator_failures"]:
            totals.setdefault(name, Counter())["failed"] += 1
        for name, counts in row["by_generator"].items():
            totals.setdefault(name, Counter()).update({k: counts.get(k, 0) for k in JUDGED})
    return {name: {**{key: counts[key] for key in GENERATOR_COUNTS}, "samples": counts.get("samples"),
                   "hit_rate": hit_rate(counts["stable"], counts["evaluated"])}
            for name, counts in sorted(totals.items())}


def mean_absolute_error(predicted: Sequence[float | None], actual: Sequence[float]) -> float | None:
    """MAE over the pairs whose prediction exists and is finite."""
    pairs = [(p, a) for p, a in zip(predicted, actual) if p is not None and math.isfinite(p) and math.isfinite(a)]
    if not pairs:
        return None
    return float(np.mean([abs(p - a) for p, a in pairs]))


def classification(predicted_stable: Sequence[bool], stable: Sequence[bool]) -> dict[str, float | None]:
    """Precision, recall, F1 and DAF of the stability call."""
    pred = np.asarray(predicted_stable, dtype=bool)
    true = np.asarray(stable, dtype=bool)
    tp = int(np.sum(pred & true))
    precision = tp / int(pred.sum()) if pred.sum() else None
    recall = tp / int(true.sum()) if true.sum() else None
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    prevalence = float(true.mean()) if len(true) else None
    daf = precision / prevalence if precision is not None and prevalence else None
    return {"precision": precision, "recall": recall, "f1": f1, "daf": daf}


def spread_error_correlation(spread: Sequence[float | None], predicted: Sequence[float | None],
                             actual: Sequence[float]) -> float | None:
    """Spearman correlation between the model's uncertainty and its absolute error: does
    the ensemble know when it is wrong? None with fewer than 3 usable pairs or no spread."""
    rows = [(s, abs(p - a)) for s, p, a in zip(spread, predicted, actual)
            if s is not None and p is not None and math.isfinite(p) and math.isfinite(a)]
    if len(rows) < 3 or len({s for s, _ in rows}) < 2:
        return None
    return float(spearmanr([s for s, _ in rows], [e for _, e in rows]).statistic)
