"""A model that predicts nothing below the threshold: the round fills its budget with
picks tagged 'fill' (hit rates per tag), or, with `selection.fill_budget: false`, selects
nothing, warns, and the second such round in a row stops the campaign with exit 2."""

import json
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign
from gnome_loop.cli import EXIT_BAD_INPUT, app
from gnome_loop.config import parse_config
from gnome_loop.hull import STABLE_TOL
from gnome_loop.metrics import hit_rate
from gnome_loop.stages import select as select_stage
from tests.helpers import ci_config, write_config

runner = CliRunner()


def small_config(rounds: int, **selection) -> dict:
    """The CI EMT campaign cut down to seconds: three metals, a few candidates, short relaxations."""
    return ci_config(rounds=rounds, chemical_space={"elements": ["Ag", "Au", "Cu"]},
                     generators={"substitution": {"max_candidates": 20}, "saps": {"max_candidates": 20}},
                     oracle={"max_steps": 10, "fmax": 0.1},
                     # each round chooses among its own candidates (tests/test_carry_over.py: the pool)
                     selection={"budget": 3, "carry_over": False, **selection})


@pytest.fixture
def below(monkeypatch) -> dict[int, int]:
    """The model predicts every candidate 1 eV/atom or more above the hull, except, in
    round r, the first `below[r]` candidates by id, predicted just under the threshold."""
    score = select_stage.score

    def forced(ctx, rows, structures):
        predictions = score(ctx, rows, structures)
        under = set(sorted(row["id"] for row in rows)[:below.get(rows[0]["round"], 0)]) if rows else set()
        return [p if p.ehull is None else replace(p, ehull=-0.01 if row["id"] in under else 1.0 + max(p.ehull, 0.0))
                for row, p in zip(rows, predictions)]

    below: dict[int, int] = {}
    monkeypatch.setattr(select_stage, "score", forced)
    return below


def test_a_round_with_nothing_below_the_threshold_still_sends_its_budget_tagged_fill(tmp_path, below):
    below[2] = 1  # round 1: nothing passes; round 2: one candidate passes
    campaign = Campaign.create(parse_config(small_config(rounds=2)), tmp_path / "c")
    assert campaign.run().status == "done"
    table = campaign.round_table()
    assert [(r["selected"], r["threshold_picks"], r["fill_picks"]) for r in table[1:]] == [(3, 0, 3), (3, 1, 2)]
    assert [len(campaign.store.jobs(round_=r)) for r in (1, 2)] == [3, 3]
    for round_ in (1, 2):
        rows = campaign.store.candidates(round_=round_, status="new")
        picked = [r for r in rows if r["selected"]]
        assert all(r["pick"] == ("threshold" if r["pred_ehull"] <= 0.05 else "fill") for r in picked)
        # the fill is the best predicted of the rest (at most 2 picks per formula)
        per_formula = {f: sum(r["reduced_formula"] == f for r in picked) for f in {r["reduced_formula"] for r in rows}}
        rest = [r["pred_ehull"] for r in rows if not r["selected"] and per_formula[r["reduced_formula"]] < 2]
        assert max(r["pred_ehull"] for r in picked) <= min(rest)
        # hit rates per tag, from the oracle's results in the store
        metrics = campaign.store.round_metrics(round_)
        for tag in ("threshold", "fill"):
            ids = {r["id"] for r in picked if r["pick"] == tag}
            stable = [e["e_hull"] <= STABLE_TOL for e in campaign.store.entries(with_structure=False)
                      if e["candidate_id"] in ids]
            assert metrics[f"evaluated_{tag}"] == len(stable) == len(ids)
            assert metrics[f"hit_rate_{tag}"] == hit_rate(sum(stable), len(stable))
        assert metrics["evaluated_explore"] == 0 and metrics["hit_rate_explore"] is None
    assert table[1]["hit_rate_threshold"] is None and table[1]["hit_rate_fill"] == table[1]["hit_rate"]
    assert all(r["empty_reason"] is None for r in table)
    assert "┃ sel ┃ thr ┃ fill ┃" in runner.invoke(app, ["status", str(tmp_path / "c")]).output
    status = runner.invoke(app, ["status", str(tmp_path / "c"), "--json"])
    assert [(r["threshold_picks"], r["fill_picks"]) for r in json.loads(status.output)["rounds"]] == \
        [(None, None), (0, 3), (1, 2)]


def test_with_fill_off_empty_rounds_warn_and_the_second_in_a_row_stops_the_campaign(tmp_path, below):
    directory = tmp_path / "c"
    config = small_config(rounds=3, fill_budget=False)
    init = runner.invoke(app, ["init", str(write_config(tmp_path / "c.yaml", config)), "-d", str(directory)])
    assert init.exit_code == 0, init.output
    result = runner.invoke(app, ["run", str(directory)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "rounds 1 and 2 selected nothing for the oracle" in result.output
    assert "selection.fill_budget: true" in result.output and "ehull_threshold (now 0.05)" in result.output
    assert "set 'rounds: 2' in config.yaml" in result.output
    assert "warning: round 1 selected nothing: none of the" in result.output  # said as it happened
    campaign = Campaign(directory)
    assert campaign.store.current_round() == (2, "done")  # whole: round 3 never started
    assert [len(campaign.store.jobs(round_=r)) for r in (1, 2)] == [0, 0]
    table = campaign.round_table()
    assert [(r["selected"], r["threshold_picks"], r["fill_picks"]) for r in table[1:]] == [(0, 0, 0)] * 2
    for row in table[1:]:
        scored = len(campaign.store.candidates(round_=row["round"], status="new"))
        assert row["empty_reason"].startswith(f"none of the {scored} scored candidates predicted below "
                                              "ehull_threshold 0.05 eV/atom")
    warnings = [e["msg"] for e in campaign.store.events(limit=500) if e["kind"] == "warning"]
    assert warnings == [f"round {r['round']} selected nothing: {r['empty_reason']}" for r in table[1:]]
    status = runner.invoke(app, ["status", str(directory)]).output
    assert "warning: round 1 selected nothing: none" in status and "warning: round 2 selected nothing: none" in status

    again = runner.invoke(app, ["run", str(directory)])  # nothing changed: stopped again, nothing run
    assert again.exit_code == EXIT_BAD_INPUT and campaign.store.current_round() == (2, "done")
    write_config(directory / "config.yaml", {**config, "rounds": 2})  # what the message offers
    closed = runner.invoke(app, ["run", str(directory)])
    assert closed.exit_code == 0 and "all rounds done" in closed.output
