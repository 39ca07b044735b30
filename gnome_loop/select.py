"""Choosing which candidates the oracle evaluates (DESIGN §4 step 3).

GNoME keeps candidates whose predicted decomposition energy is below 50 meV/atom,
best first. We add a per-composition cap (so one formula cannot eat the budget) and
an optional exploration share picked at random and tagged, so hit-rate metrics of
the model-driven picks stay honest.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Scored:
    """A candidate as selection sees it."""

    id: str
    reduced_formula: str
    pred_ehull: float | None
    pred_std: float | None = None


@dataclass(frozen=True)
class Pick:
    id: str
    explore: bool


def acquisition(item: Scored, kappa: float = 0.0) -> float:
    """Lower is better: predicted E_hull, optionally minus kappa standard deviations (optimism)."""
    return item.pred_ehull - kappa * (item.pred_std or 0.0)


def select_candidates(
    scored: Sequence[Scored],
    budget: int,
    ehull_threshold: float,
    per_composition: int,
    explore_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
    strategy: str = "model",
    kappa: float = 0.0,
) -> list[Pick]:
    """Pick at most `budget` candidates.

    Candidates without a finite prediction are never picked. `strategy="random"`
    ignores the model entirely (the baseline that a campaign benchmark compares to).
    """
    rng = rng or np.random.default_rng(0)
    usable = sorted(
        (s for s in scored if s.pred_ehull is not None and math.isfinite(s.pred_ehull)), key=lambda s: s.id
    )
    n_explore = budget if strategy == "random" else int(round(budget * explore_fraction))
    per_formula: Counter[str] = Counter()
    picks: list[Pick] = []

    ranked = sorted(usable, key=lambda s: (acquisition(s, kappa), s.id))
    for item in ranked:
        if len(picks) >= budget - n_explore:
            break
        if item.pred_ehull > ehull_threshold or per_formula[item.reduced_formula] >= per_composition:
            continue
        picks.append(Pick(item.id, explore=False))
        per_formula[item.reduced_formula] += 1

    chosen = {p.id for p in picks}
    rest = [s for s in usable if s.id not in chosen]
    explored = 0
    for index in rng.permutation(len(rest)):
        if explored >= n_explore:
            break
        item = rest[int(index)]
        if per_formula[item.reduced_formula] >= per_composition:
            continue
        picks.append(Pick(item.id, explore=True))
        per_formula[item.reduced_formula] += 1
        explored += 1
    return picks
