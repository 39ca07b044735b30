"""Choosing which candidates the oracle evaluates (docs/architecture.md: the select stage).

GNoME keeps candidates whose predicted decomposition energy is below 50 meV/atom,
best first. We add a per-composition cap (so one formula cannot eat the budget), an
optional fill of the budget left over by the threshold (best predicted first, so a
round whose model predicts nothing below the threshold still sends jobs and learns)
and an optional exploration share picked at random. Every pick is tagged with why it
was taken, so hit-rate metrics stay honest per tag.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Scored:
    """A candidate as selection sees it."""

    id: str
    reduced_formula: str
    pred_ehull: float | None
    pred_std: float | None = None


#: Why a candidate was picked: predicted below the threshold, filling the budget the
#: threshold left over, or drawn at random (exploration).
THRESHOLD, FILL, EXPLORE = "threshold", "fill", "explore"


@dataclass(frozen=True)
class Pick:
    id: str
    tag: str

    @property
    def explore(self) -> bool:
        return self.tag == EXPLORE


def acquisition(item: Scored, kappa: float = 0.0) -> float:
    """Lower is better: predicted E_hull, optionally minus kappa standard deviations (optimism)."""
    return item.pred_ehull - kappa * (item.pred_std or 0.0)


def _usable(item: Scored) -> bool:
    return item.pred_ehull is not None and math.isfinite(item.pred_ehull)


def select_candidates(
    scored: Sequence[Scored],
    budget: int,
    ehull_threshold: float,
    per_composition: int,
    explore_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
    strategy: str = "model",
    kappa: float = 0.0,
    fill_budget: bool = False,
) -> list[Pick]:
    """Pick at most `budget` candidates, tagged THRESHOLD, FILL or EXPLORE.

    The model's share of the budget goes first to candidates predicted below
    `ehull_threshold`, in acquisition order; with `fill_budget` what they leave of
    it goes to the next best above the threshold (without it: GNoME's strict rule,
    the share stays unspent). Candidates without a finite prediction are never
    picked. `strategy="random"` ignores the model entirely (the baseline that a
    campaign benchmark compares to).
    """
    rng = rng or np.random.default_rng(0)
    usable = sorted((s for s in scored if _usable(s)), key=lambda s: s.id)
    n_explore = budget if strategy == "random" else int(round(budget * explore_fraction))
    per_formula: Counter[str] = Counter()
    picks: list[Pick] = []
    chosen: set[str] = set()

    def take(items: Iterable[Scored], tag: str, until: int) -> None:
        for item in items:
            if len(picks) >= until:
                return
            if item.id in chosen or per_formula[item.reduced_formula] >= per_composition:
                continue
            picks.append(Pick(item.id, tag))
            chosen.add(item.id)
            per_formula[item.reduced_formula] += 1

    ranked = sorted(usable, key=lambda s: (acquisition(s, kappa), s.id))
    take((s for s in ranked if s.pred_ehull <= ehull_threshold), THRESHOLD, budget - n_explore)
    if fill_budget:
        take(ranked, FILL, budget - n_explore)
    rest = [s for s in usable if s.id not in chosen]
    take((rest[int(i)] for i in rng.permutation(len(rest))), EXPLORE, len(picks) + n_explore)
    return picks


def empty_reason(scored: Sequence[Scored], ehull_threshold: float) -> str:
    """Why `select_candidates` picked nothing from `scored`, in words a user can act on."""
    usable = [s for s in scored if _usable(s)]
    if not scored:
        return "no new unique candidates"
    if not usable:
        return f"the model could score none of the {len(scored)} candidates"
    best = min(s.pred_ehull for s in usable)
    return (f"none of the {len(usable)} scored candidates predicted below ehull_threshold {ehull_threshold} "
            f"eV/atom (best {best:.3f}) and fill_budget is off")
