"""Selection: threshold, per-composition cap, budget, fill, exploration, NaN handling."""


import numpy as np

from gnome_loop.select import EXPLORE, FILL, THRESHOLD, Scored, empty_reason, select_candidates


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


def test_fill_tops_up_the_budget_best_predicted_first_and_tagged():
    picks = select_candidates(_pool(), budget=6, ehull_threshold=0.02, per_composition=2, fill_budget=True)
    assert [(p.id, p.tag) for p in picks] == [("a", THRESHOLD), ("b", THRESHOLD), ("d", THRESHOLD),
                                              ("e", FILL), ("f", FILL)]  # c: capped; g, h: no prediction
    strict = select_candidates(_pool(), budget=6, ehull_threshold=0.02, per_composition=2)
    assert [(p.id, p.tag) for p in strict] == [("a", THRESHOLD), ("b", THRESHOLD), ("d", THRESHOLD)]


def test_nothing_below_the_threshold_fills_the_whole_budget_or_nothing():
    pool = [Scored(f"x{i}", f"F{i % 4}", 0.3 - i / 100) for i in range(10)]  # x9 best, all above 0.05
    filled = select_candidates(pool, budget=5, ehull_threshold=0.05, per_composition=1, fill_budget=True)
    assert [p.id for p in filled] == ["x9", "x8", "x7", "x6"]  # four formulas, one each
    assert {p.tag for p in filled} == {FILL} and not any(p.explore for p in filled)
    assert select_candidates(pool, budget=5, ehull_threshold=0.05, per_composition=1, fill_budget=False) == []
    assert empty_reason(pool, 0.05) == ("none of the 10 scored candidates predicted below ehull_threshold 0.05 "
                                        "eV/atom (best 0.210) and fill_budget is off")
    assert empty_reason([Scored("n", "F", None), Scored("m", "F", float("nan"))], 0.05) == \
        "the model could score none of the 2 candidates"
    assert empty_reason([], 0.05) == "no new unique candidates"


def test_fill_ranks_by_the_lower_confidence_bound_with_kappa():
    pool = [Scored("sure", "A", 0.20, 0.0), Scored("unsure", "B", 0.25, 0.10), Scored("far", "C", 0.60, 0.10)]
    by_mean = select_candidates(pool, budget=2, ehull_threshold=0.05, per_composition=1, fill_budget=True)
    assert [p.id for p in by_mean] == ["sure", "unsure"]
    optimistic = select_candidates(pool, budget=2, ehull_threshold=0.05, per_composition=1, fill_budget=True,
                                   kappa=1.0)
    assert [(p.id, p.tag) for p in optimistic] == [("unsure", FILL), ("sure", FILL)]  # 0.15 before 0.20


def test_fill_takes_the_model_share_and_exploration_keeps_its_own():
    pool = [Scored(f"x{i}", f"F{i}", i / 100) for i in range(30)]
    picks = select_candidates(pool, budget=10, ehull_threshold=0.05, per_composition=1, explore_fraction=0.3,
                              rng=np.random.default_rng(3), fill_budget=True)
    tags = [p.tag for p in picks]
    assert tags == [THRESHOLD] * 6 + [FILL] + [EXPLORE] * 3
    assert picks[6].id == "x6"  # the best one above the threshold
    assert len({p.id for p in picks}) == 10


def test_spread_error_correlation():
    from gnome_loop.metrics import spread_error_correlation

    actual = [0.0, 0.0, 0.0, 0.0]
    assert spread_error_correlation([0.1, 0.2, 0.3, 0.4], [0.01, 0.05, 0.1, 0.3], actual) == 1.0
    assert spread_error_correlation([0.4, 0.3, 0.2, 0.1], [0.01, 0.05, 0.1, 0.3], actual) == -1.0
    assert spread_error_correlation([0.1, 0.1, 0.1, 0.1], [0.01, 0.05, 0.1, 0.3], actual) is None
    assert spread_error_correlation([0.1, None, 0.3], [0.01, 0.05, None], [0.0, 0.0, 0.0]) is None
