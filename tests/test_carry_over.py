"""Candidates a round leaves unselected stay in the pool (`selection.carry_over`, on by
default): the next round scores them again with its retrained model against its hull and
may pick them; their job, and the pick, count in the round that picked them."""

from dataclasses import replace

import pytest

from gnome_loop.campaign import Campaign
from gnome_loop.config import parse_config
from gnome_loop.stages import select as select_stage
from tests.helpers import ci_config


def small_config(carry_over: bool) -> dict:
    """The CI EMT campaign cut down to seconds: three metals, two rounds of 3 jobs."""
    return ci_config(rounds=2, chemical_space={"elements": ["Ag", "Au", "Cu"]},
                     generators={"substitution": {"max_candidates": 20}, "saps": {"max_candidates": 20}},
                     oracle={"max_steps": 10, "fmax": 0.1},
                     selection={"budget": 3, "carry_over": carry_over})


@pytest.fixture
def scored(monkeypatch) -> list[list[dict]]:
    """Records the rows each select stage scores; in the second call (round 2) the first
    round-1 candidate by id is predicted far below the hull, everything else above it."""
    score = select_stage.score
    calls: list[list[dict]] = []

    def forced(ctx, rows, structures):
        calls.append([dict(row) for row in rows])
        predictions = score(ctx, rows, structures)
        earlier = sorted(row["id"] for row in rows if row["round"] < max(r["round"] for r in rows))
        favourite = earlier[0] if len(calls) == 2 and earlier else None
        return [p if p.ehull is None else replace(p, ehull=-0.5 if row["id"] == favourite else 0.5 + abs(p.ehull))
                for row, p in zip(rows, predictions)]

    monkeypatch.setattr(select_stage, "score", forced)
    return calls


def test_unselected_candidates_are_rescored_and_picked_in_a_later_round(tmp_path, scored):
    campaign = Campaign.create(parse_config(small_config(carry_over=True)), tmp_path / "c")
    assert campaign.run().status == "done"
    store = campaign.store
    job_round = {job.candidate_id: job.round for job in store.jobs()}
    first = store.candidates(round_=1, status="new")
    left = {row["id"] for row in first if job_round.get(row["id"]) != 1}
    assert len(first) > 3 and len(scored) == 2
    # round 2 scored every round-1 candidate that round 1 left, and its own
    second = {row["id"] for row in scored[1]}
    assert left <= second and {row["round"] for row in scored[1]} == {1, 2}  # never the snapshot's phases
    assert second - left == {row["id"] for row in store.candidates(round_=2, status="new")}
    table = campaign.round_table()
    assert table[2]["pool"] == len(second)
    # the round-1 candidate predicted best in round 2 was picked then, and counts there
    favourite = min(row["id"] for row in scored[1] if row["round"] == 1)
    assert store.candidate(favourite)["selected"] == 1 and store.candidate(favourite)["round"] == 1
    assert job_round[favourite] == 2
    assert [row["selected"] for row in table[1:]] == [3, 3]
    assert [len(store.jobs(round_=r)) for r in (1, 2)] == [3, 3]


def test_without_carry_over_a_round_chooses_among_its_own_candidates(tmp_path, scored):
    campaign = Campaign.create(parse_config(small_config(carry_over=False)), tmp_path / "c")
    assert campaign.run().status == "done"
    store = campaign.store
    assert {row["round"] for row in scored[1]} == {2}
    assert all(store.candidate(job.candidate_id)["round"] == 2 for job in store.jobs(round_=2))
    assert campaign.round_table()[2]["pool"] == len(store.candidates(round_=2, status="new"))
