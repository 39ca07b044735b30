"""Screening shards: the funnel's counts add up, a shard keeps its best candidates in
full and the rest as summary rows, and cutting the parents into shards changes
nothing about which candidates come out on top.

The energy model is a stub with a known answer (energy per atom falls with the
volume per atom and with the number of elements), so that the test is about the
funnel, not about learning; the generators and the hull are the real ones.
"""

import numpy as np
import pytest
from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.hull import Hull
from gnome_loop.screen import ScreenSettings, score_structures, screen_shard
from gnome_loop.snapshot.prototypes import load_prototypes
from gnome_loop.structures import find_duplicates, symmetry_label

ELEMENTS = ("Ag", "Al", "Au", "Cu", "Ni", "Pd", "Pt")


class StubModel:
    """Energy per atom = −0.02 × volume per atom − 0.1 × elements; spread 0.01; NaN for Pt3Al."""

    def predict(self, structures):
        energies = np.array([-0.02 * s.volume / len(s) - 0.1 * len(s.composition.elements) for s in structures])
        energies[[s.composition.reduced_formula == "AlPt3" for s in structures]] = np.nan
        return energies, np.full(len(structures), 0.01)


def hull() -> Hull:
    return Hull([ComputedEntry(el, -1.0, entry_id=f"ref-{el}") for el in ELEMENTS], scale="stub")


def parents():
    phases = load_prototypes(list(ELEMENTS), 2, 8)
    return [(p.id, p.structure) for p in phases], frozenset(p.structure.composition.reduced_formula for p in phases)


def settings(known, keep: int) -> ScreenSettings:
    return ScreenSettings(ELEMENTS, 2, 8, known, keep=keep, substitution={"threshold": 0.001},
                          saps={"threshold": 0.001, "max_per_parent": 10})


def test_a_shard_keeps_its_best_in_full_and_the_rest_as_summary_rows():
    structures, known = parents()
    result = screen_shard(structures, settings(known, keep=10), StubModel(), hull())
    funnel = result.funnel
    assert funnel["generated"] >= funnel["valid"] >= funnel["unique"] >= funnel["scored"] > funnel["kept"] == 10
    assert funnel["generated"] - funnel["valid"] == sum(v for k, v in funnel.items() if k.startswith("rejected:"))
    assert len(result.summary) == funnel["scored"] - funnel["kept"]
    kept = [p.ehull for _, p in result.kept]
    assert kept == sorted(kept) and max(kept) <= min(e for *_, e in result.summary)
    assert all(c.structure.composition.reduced_formula != "AlPt3" for c, _ in result.kept)  # NaN: never scored
    ids = [c.id for c, _ in result.kept] + [row[0] for row in result.summary]
    assert len(ids) == len(set(ids))


def test_shards_give_the_same_best_candidates_as_one_shard():
    structures, known = parents()
    whole = screen_shard(structures, settings(known, keep=10**6), StubModel(), hull())
    shards = [screen_shard(structures[i::3], settings(known, keep=10**6), StubModel(), hull()) for i in range(3)]
    # across shards, duplicates are removed as the campaign does: in id order, within (formula, space group) buckets
    pooled = sorted((c for shard in shards for c, _ in shard.kept), key=lambda c: c.id)
    pooled = list({c.id: c for c in pooled}.values())
    duplicates = find_duplicates([(c.id, symmetry_label(c.structure), c.structure) for c in pooled])
    survivors = {c.id for c in pooled if c.id not in duplicates}
    assert survivors == {c.id for c, _ in whole.kept}
    assert sum(s.funnel["generated"] for s in shards) >= whole.funnel["generated"]


def test_score_structures_names_what_it_cannot_score():
    structures, _ = parents()
    cu3au = next(s for _, s in structures if s.composition.reduced_formula == "Cu3Au")
    pt3al = cu3au.copy().replace_species({"Cu": "Pt", "Au": "Al"})
    cu = next(s for _, s in structures if s.composition.reduced_formula == "Cu")
    orphan = Hull([ComputedEntry("Cu", -1.0, entry_id="ref-Cu")], scale="stub")
    (nan, ok, no_hull) = score_structures(StubModel(), orphan, [pt3al, cu, cu.copy().replace_species({"Cu": "Ag"})],
                                          ["a", "b", "c"])
    assert nan.error == "non-finite prediction" and nan.ehull is None
    assert ok.error is None and ok.ehull is not None
    assert no_hull.error.startswith("no hull") and no_hull.ehull is None


@pytest.mark.slow
def test_a_screened_round_on_dask_selects_what_the_classic_round_selects(tmp_path):
    """The same campaign twice, the same seed: substitution and SAPS run in shards of 3
    parents on a 2-worker dask cluster, or in one piece in this process."""
    import json
    from pathlib import Path

    import yaml

    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/ci_emt/config.yaml").read_text())
    data["rounds"] = 1
    data["generators"] = {"substitution": {"max_candidates": 10**6}, "saps": {"max_candidates": 10**6}}
    classic = Campaign.create(parse_config(data), tmp_path / "classic")
    assert classic.run().status == "done"
    data["screening"] = {"enabled": True, "parents_per_shard": 3, "keep_per_shard": 1000}
    data["scheduler"] = {"kind": "local", "workers": 2}
    screened = Campaign.create(parse_config(data), tmp_path / "screened")
    assert screened.run().status == "done"

    def selected(campaign):
        return {r["id"] for r in campaign.store.candidates(round_=1, selected=True)}

    assert selected(screened) == selected(classic) and len(selected(classic)) == 8
    metrics = json.loads(screened.store.rounds()[1]["metrics"])
    shards = screened.store.shards_done(1)
    assert len(shards) > 1 and metrics["funnel"]["kept"] == sum(f["kept"] for f in shards.values())
    unique_classic = len(classic.store.candidates(round_=1, status="new"))
    assert len(screened.store.candidates(round_=1, status="new")) == unique_classic


def _die_once(marker_dir, task):
    """A shard task whose first run kills its worker process outright (as an OOM kill would)."""
    import os
    from pathlib import Path

    marker = Path(marker_dir) / f"ran-{task}"
    if task == 2 and not marker.exists():
        marker.write_text("")
        os._exit(1)
    return task * 10


@pytest.mark.slow
def test_a_worker_that_dies_mid_shard_loses_nothing(tmp_path):
    import logging

    from distributed import Client, LocalCluster

    from gnome_loop.execute.shards import run_shards

    results = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        failed = run_shards(_die_once, str(tmp_path), list(range(6)), lambda i, r: results.append((i, r)), client)
    assert failed == {}
    assert sorted(results) == [(i, 10 * i) for i in range(6)]  # each shard once, the killed one redone
    assert (tmp_path / "ran-2").exists()


@pytest.mark.slow
def test_a_screening_stage_killed_half_way_resumes_without_losing_or_repeating(tmp_path, monkeypatch):
    from pathlib import Path

    import yaml

    import gnome_loop.campaign as campaign_module
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/ci_emt/config.yaml").read_text())
    data.update(rounds=1, screening={"enabled": True, "parents_per_shard": 2, "keep_per_shard": 5})
    clean = Campaign.create(parse_config(data), tmp_path / "clean")
    assert clean.run().status == "done"

    calls = []
    original = campaign_module.screen_task

    def dies_on_the_fourth_shard(context, parents):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the process is stopped in the middle of the stage
        return original(context, parents)

    monkeypatch.setattr(campaign_module, "screen_task", dies_on_the_fourth_shard)
    killed = Campaign.create(parse_config(data), tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert len(killed.store.shards_done(1)) == 3
    monkeypatch.setattr(campaign_module, "screen_task", original)
    resumed = Campaign(tmp_path / "killed")
    assert resumed.run().status == "done"

    def ids(campaign, table):
        return sorted(r["id"] for r in campaign.store.query(f"SELECT id FROM {table} WHERE round = 1"))

    assert ids(resumed, "candidates") == ids(clean, "candidates")
    assert ids(resumed, "screened") == ids(clean, "screened")
    assert resumed.store.shards_done(1) == clean.store.shards_done(1)
    assert {r["id"] for r in resumed.store.candidates(round_=1, selected=True)} == \
        {r["id"] for r in clean.store.candidates(round_=1, selected=True)}
