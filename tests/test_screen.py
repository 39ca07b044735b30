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
from gnome_loop.structures import ChemicalSpace
from gnome_loop.structures import DuplicateIndex, find_duplicates, symmetry_label

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
    phases = load_prototypes(ChemicalSpace(ELEMENTS, 2, 8))
    return [(p.id, p.structure) for p in phases], frozenset(p.structure.composition.reduced_formula for p in phases)


def settings(known, keep: int, cascade_margin: float | None = None) -> ScreenSettings:
    return ScreenSettings(ChemicalSpace(ELEMENTS, 2, 8), known, keep=keep, substitution={"threshold": 0.001},
                          saps={"threshold": 0.001, "max_per_parent": 10}, cascade_margin=cascade_margin)


def test_a_shard_keeps_its_best_in_full_and_the_rest_as_summary_rows():
    structures, known = parents()
    result = screen_shard(structures, settings(known, keep=10), StubModel(), hull())
    funnel = result.funnel
    assert funnel["generated"] >= funnel["valid"] >= funnel["scored"] > funnel["examined"] >= funnel["kept"] == 10
    assert funnel["generated"] - funnel["valid"] == sum(v for k, v in funnel.items() if k.startswith("rejected:"))
    assert funnel["examined"] == funnel["kept"] + funnel["duplicates"]
    assert len(result.summary) == funnel["scored"] - funnel["kept"]
    kept = [p.ehull for _, p in result.kept]
    # only the candidates examined for duplicates carry a symmetry label; all others rank below the kept
    assert sum(1 for _, _, label, _, _ in result.summary if label is not None) == funnel["duplicates"]
    assert kept == sorted(kept) and max(kept) <= min(e for _, _, label, e, _ in result.summary if label is None)
    assert all(whole for *_, whole in result.summary)  # no cascade: the model scored every row
    assert all(c.structure.composition.reduced_formula != "AlPt3" for c, _ in result.kept)  # NaN: never scored
    ids = [c.id for c, _ in result.kept] + [row[0] for row in result.summary]
    assert len(ids) == len(set(ids))
    assert result.labels == {c.id: symmetry_label(c.structure) for c, _ in result.kept}


def test_a_shard_keeps_no_two_matching_structures_and_the_better_ranked_of_a_pair():
    """Every parent twice, the copy with its origin shifted: each candidate then has a twin
    with another id. Duplicates are searched among the best-ranked candidates, and of a
    pair the better-ranked one (the smaller id on a tie) is kept."""
    structures, known = parents()
    shifted = []
    for key, structure in structures:
        copy = structure.copy()
        copy.translate_sites(range(len(copy)), [0.013, 0.007, 0.002])
        shifted.append((key + "-shifted", copy))
    result = screen_shard(structures + shifted, settings(known, keep=10), StubModel(), hull())
    kept = [c for c, _ in result.kept]
    assert len(kept) == 10 and result.funnel["duplicates"] >= 5
    labelled = [(c.id, symmetry_label(c.structure), c.structure) for c in kept]
    assert find_duplicates(labelled) == {}
    rank = {c.id: (p.ehull, c.id) for c, p in result.kept}
    for key, _, label, ehull, _ in result.summary:
        if label is None:
            continue  # never examined
        twin = DuplicateIndex(labelled).add(key, label, next(s for s in _regenerate(structures + shifted, known)
                                                           if s[0] == key)[1])
        assert twin is not None and rank[twin] <= (ehull, key)


def _regenerate(structures, known):
    """(id, structure) of every candidate a shard of these parents proposes."""
    from gnome_loop.generate.saps import saps
    from gnome_loop.generate.substitution import substitute

    space = dict(elements=list(ELEMENTS), known_formulas=set(known), max_elements=2, max_atoms=8)
    made = substitute(structures, **space, threshold=0.001) + saps(structures, **space, threshold=0.001,
                                                                   max_per_parent=10)
    return [(c.id, c.structure) for c in made]


def test_shards_give_the_same_best_candidates_as_one_shard():
    structures, known = parents()
    whole = screen_shard(structures, settings(known, keep=10**6), StubModel(), hull())
    shards = [screen_shard(structures[i::3], settings(known, keep=10**6), StubModel(), hull()) for i in range(3)]
    # across shards, duplicates are removed as the campaign does: best predicted first, within
    # (formula, space group) buckets
    pooled = sorted((item for shard in shards for item in shard.kept), key=lambda item: (item[1].ehull, item[0].id))
    pooled = list({c.id: c for c, _ in pooled}.values())
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


def test_a_batch_with_refused_structures_is_split_around_them_not_predicted_one_by_one():
    from gnome_loop.models.base import predict_each

    structures, _ = parents()
    batch = [s for _, s in structures][:16] * 4  # 64 structures, two of them refused
    bad = {5, 40}

    class Refuses(StubModel):
        calls = 0

        def predict(self, chunk):
            Refuses.calls += 1
            if any(s is batch[i] for s in chunk for i in bad):
                raise ValueError("a refused structure")
            return super().predict(chunk)

    batch[5], batch[40] = batch[5].copy(), batch[40].copy()  # objects of their own
    results = predict_each(Refuses(), batch)
    expected = [tuple(map(float, pair)) for pair in zip(*StubModel().predict(batch))]
    assert [r for i, r in enumerate(results) if i not in bad] == [e for i, e in enumerate(expected) if i not in bad]
    assert results[5] == results[40] == "a refused structure"
    assert Refuses.calls <= 2 * 2 * 6 + 1  # two bisections of depth log2(64), not 64 calls

    class Foresees(Refuses):
        def input_error(self, structure):
            return "foreseen" if any(structure is batch[i] for i in bad) else None

    Refuses.calls = 0
    results = predict_each(Foresees(), batch)
    assert results[5] == results[40] == "foreseen"
    assert [r for i, r in enumerate(results) if i not in bad] == [e for i, e in enumerate(expected) if i not in bad]
    assert Refuses.calls == 1  # the refusals it foresees are set aside: one call for the rest


@pytest.mark.slow
def test_a_screened_round_in_shards_on_dask_selects_what_one_shard_selects(tmp_path):
    """The same campaign twice, the same seed: substitution and SAPS screened in shards of 3
    parents on a 2-worker dask cluster, or in one shard in this process."""
    import json
    from pathlib import Path

    import yaml

    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/ci_emt/config.yaml").read_text())
    data["rounds"] = 1
    data["screening"] = {"enabled": True, "parents_per_shard": 10**6, "keep_per_shard": 1000}
    whole = Campaign.create(parse_config(data), tmp_path / "whole")
    assert whole.run().status == "done"
    data["screening"]["parents_per_shard"] = 3
    data["scheduler"] = {"kind": "local", "workers": 2}
    sharded = Campaign.create(parse_config(data), tmp_path / "sharded")
    assert sharded.run().status == "done"

    def selected(campaign):
        return {r["id"] for r in campaign.store.candidates(round_=1, selected=True)}

    assert selected(sharded) == selected(whole) and len(selected(whole)) == 8
    metrics = json.loads(sharded.store.rounds()[1]["metrics"])
    shards = sharded.store.shards_done(1)
    assert len(shards) > 1 and metrics["funnel"]["kept"] == sum(f["kept"] for f in shards.values())
    assert metrics["funnel"]["scored"] >= json.loads(whole.store.rounds()[1]["metrics"])["funnel"]["scored"]
    unique = len(whole.store.candidates(round_=1, status="new"))
    assert len(sharded.store.candidates(round_=1, status="new")) == unique


@pytest.mark.slow
def test_with_a_scheduler_address_screening_runs_on_that_dask_cluster_whatever_runs_the_jobs(tmp_path):
    """Jobs in this process (`inline`, as sbatch would run them elsewhere), screening shards
    on the dask cluster at `scheduler.address`, as on a dask-jobqueue cluster."""
    import logging
    from pathlib import Path

    import yaml
    from distributed import Client, LocalCluster

    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/ci_emt/config.yaml").read_text())
    data.update(rounds=1, screening={"enabled": True, "parents_per_shard": 4, "keep_per_shard": 20})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        data["scheduler"] = {"kind": "inline", "address": cluster.scheduler_address}
        campaign = Campaign.create(parse_config(data), tmp_path / "campaign")
        assert campaign.run().status == "done"
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    shards = campaign.store.shards_done(1)
    assert "screen_task" in prefixes and len(shards) > 1
    assert len(campaign.store.candidates(round_=1, selected=True)) > 0


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

    import gnome_loop.stages.screening as screening_stage
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/ci_emt/config.yaml").read_text())
    data.update(rounds=1, screening={"enabled": True, "parents_per_shard": 2, "keep_per_shard": 5})
    clean = Campaign.create(parse_config(data), tmp_path / "clean")
    assert clean.run().status == "done"

    calls = []
    original = screening_stage.screen_task

    def dies_on_the_fourth_shard(context, parents):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the process is stopped in the middle of the stage
        return original(context, parents)

    monkeypatch.setattr(screening_stage, "screen_task", dies_on_the_fourth_shard)
    killed = Campaign.create(parse_config(data), tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert len(killed.store.shards_done(1)) == 3
    monkeypatch.setattr(screening_stage, "screen_task", original)
    resumed = Campaign(tmp_path / "killed")
    assert resumed.run().status == "done"

    def ids(campaign, table):
        return sorted(r["id"] for r in campaign.store.query(f"SELECT id FROM {table} WHERE round = 1"))

    assert ids(resumed, "candidates") == ids(clean, "candidates")
    assert ids(resumed, "screened") == ids(clean, "screened")
    assert resumed.store.shards_done(1) == clean.store.shards_done(1)
    assert {r["id"] for r in resumed.store.candidates(round_=1, selected=True)} == \
        {r["id"] for r in clean.store.candidates(round_=1, selected=True)}


class StubEnsemble(StubModel):
    """StubModel as a 4-member ensemble whose first member errs by up to ±0.05 eV/atom,
    a fixed function of the structure (so the cascade's first stage ranks differently)."""

    settings = {"members": 4}

    def first_members(self, count):
        full = self

        class FirstMember:
            def predict(self, structures):
                energies, _ = full.predict(structures)
                return energies + 0.05 * np.sin([37.0 * s.volume for s in structures]), np.zeros(len(structures))

        return FirstMember()


def test_the_cascade_keeps_only_whole_ensemble_predictions_and_with_a_wide_margin_changes_nothing():
    structures, known = parents()
    plain = screen_shard(structures, settings(known, keep=10), StubEnsemble(), hull())
    wide = screen_shard(structures, settings(known, 10, cascade_margin=10.0), StubEnsemble(), hull())
    assert [(c.id, p) for c, p in wide.kept] == [(c.id, p) for c, p in plain.kept]
    assert wide.funnel["rescored"] == wide.funnel["scored"] == plain.funnel["scored"]

    narrow = screen_shard(structures, settings(known, 10, cascade_margin=0.0), StubEnsemble(), hull())
    assert narrow.funnel["scored"] == plain.funnel["scored"] > 2 * narrow.funnel["rescored"] >= 20
    whole = dict(zip([c.id for c, _ in narrow.kept],
                     score_structures(StubEnsemble(), hull(), [c.structure for c, _ in narrow.kept],
                                      [c.id for c, _ in narrow.kept])))
    assert all(p == whole[c.id] for c, p in narrow.kept)  # the kept carry the whole ensemble's verdict
    # duplicates among the first ones rescored: more are rescored until ten are kept
    assert len(narrow.kept) == 10 and len({c.id for c, _ in narrow.kept} & {c.id for c, _ in plain.kept}) >= 5
    assert narrow.funnel["duplicates"] > 0 and len(narrow.summary) == narrow.funnel["scored"] - 10
    first = {row[0]: row[3] for row in narrow.summary}
    plain_rows = {row[0]: row[3] for row in plain.summary}
    assert sum(abs(first[k] - plain_rows[k]) > 1e-6 for k in first if k in plain_rows) > len(first) // 2
    # each summary row says which stage predicted it: the whole ensemble for those rescored but not kept
    rescored_rows = [row for row in narrow.summary if row[4]]
    assert len(rescored_rows) == narrow.funnel["rescored"] - 10
    assert all(abs(row[3] - plain_rows[row[0]]) < 1e-9 for row in rescored_rows if row[0] in plain_rows)


def test_a_model_without_members_is_scored_in_one_stage():
    structures, known = parents()
    plain = screen_shard(structures, settings(known, keep=10), StubModel(), hull())
    cascade = screen_shard(structures, settings(known, 10, cascade_margin=0.0), StubModel(), hull())
    assert [(c.id, p) for c, p in cascade.kept] == [(c.id, p) for c, p in plain.kept]
    assert "rescored" not in cascade.funnel and cascade.funnel == plain.funnel
