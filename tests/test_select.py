"""Selection: threshold, per-composition cap, budget, exploration, NaN handling."""


import numpy as np

from gnome_loop.select import Scored, select_candidates


def _pool():
    return [
        Scored("a", "AB", -0.10), Scored("b", "AB", -0.05), Scored("c", "AB", -0.04),
        Scored("d", "A2B", 0.01), Scored("e", "AB2", 0.04), Scored("f", "AB3", 0.20),
        Scored("g", "A3B", float("nan")), Scored("h", "A3B2", None),
    ]


def test_best_first_under_threshold_with_cap():
    picks = select_candidates(_pool(), budget=10, ehull_threshold=0.05, per_composition=2)
    assert [p.id for p in picks] == ["a", "b", "d", "e"]  # c: cap of 2 per formula; f above threshold
    assert not any(p.explore for p in picks)


def test_budget_is_respected():
    picks = select_candidates(_pool(), budget=2, ehull_threshold=0.05, per_composition=2)
    assert [p.id for p in picks] == ["a", "b"]


def test_nan_and_missing_predictions_are_never_picked():
    pool = _pool()
    for strategy in ("model", "random"):
        picks = select_candidates(pool, budget=8, ehull_threshold=1.0, per_composition=5, strategy=strategy,
                                  rng=np.random.default_rng(1))
        assert {"g", "h"}.isdisjoint(p.id for p in picks)
        assert len(picks) == 6


def test_exploration_share_is_tagged_and_seeded():
    pool = [Scored(f"x{i}", f"F{i}", i / 100) for i in range(30)]
    picks = select_candidates(pool, budget=10, ehull_threshold=0.05, per_composition=1, explore_fraction=0.3,
                              rng=np.random.default_rng(3))
    exploit = [p.id for p in picks if not p.explore]
    explore = [p.id for p in picks if p.explore]
    assert exploit == [f"x{i}" for i in range(6)]  # 7 model picks wanted, only 6 under the threshold
    assert len(explore) == 3 and set(explore).isdisjoint(exploit)
    again = select_candidates(pool, budget=10, ehull_threshold=0.05, per_composition=1, explore_fraction=0.3,
                              rng=np.random.default_rng(3))
    assert again == picks
    assert len(picks) == 9  # the unused model share is not handed to exploration


def test_spread_error_correlation():
    from gnome_loop.metrics import spread_error_correlation

    actual = [0.0, 0.0, 0.0, 0.0]
    assert spread_error_correlation([0.1, 0.2, 0.3, 0.4], [0.01, 0.05, 0.1, 0.3], actual) == 1.0
    assert spread_error_correlation([0.4, 0.3, 0.2, 0.1], [0.01, 0.05, 0.1, 0.3], actual) == -1.0
    assert spread_error_correlation([0.1, 0.1, 0.1, 0.1], [0.01, 0.05, 0.1, 0.3], actual) is None
    assert spread_error_correlation([0.1, None, 0.3], [0.01, 0.05, None], [0.0, 0.0, 0.0]) is None
