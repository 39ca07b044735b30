"""The generative models in the loop: prompts from the chemical space, per-round
fine-tuning on the entries near the hull (saved once per round, re-used on a re-run),
checked samples with their rejects counted, FlowLLM mode, a campaign round with both
models that is re-run after a kill without inserting anything twice, and the config
errors at init. The models are tiny: a language model overfitted on two Au-Cu CIFs
and an untrained flow."""

import json
import random
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign
from gnome_loop.cli import app
from gnome_loop.config import ConfigError, parse_config
from gnome_loop.generate import generative
from gnome_loop.generate.generative import Generator, finetune, prompt_cells, prompt_formulas, propose, round_generator
from gnome_loop.generative import cif_lm, flow
from gnome_loop.generative import cif_tokens as ct
from gnome_loop.generative.training import make_optimizer
from gnome_loop.stages.generate import generate
from gnome_loop.screen import Prediction
from gnome_loop.store import Store, candidate_row
from gnome_loop.structures import ChemicalSpace, structure_from_json, structure_to_json
from tests.helpers import FCC, quick_config, run_with_kills, write_config

CU3AU = Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"], FCC)
CUAU = Structure(Lattice.tetragonal(2.8, 3.7), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
CUAU3 = Structure(Lattice.cubic(3.95), ["Cu", "Au", "Au", "Au"], FCC)
TINY_LM = cif_lm.LMConfig(max_len=160, width=64, depth=2, heads=4)
TINY_FLOW = flow.FlowConfig(max_atoms=4, width=16, layers=1, frequencies=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Folders of a language model that writes Cu3Au's and CuAu's CIFs back (150 steps on
    those two) and of an untrained flow with Au-Cu lattice statistics."""
    folder = tmp_path_factory.mktemp("checkpoints")
    tokens = cif_lm.token_batch([ct.canonical_cif(s) for s in (CU3AU, CUAU)], TINY_LM.max_len)
    params = cif_lm.init_params(TINY_LM)
    optimizer = make_optimizer(3e-3, 150, warmup_steps=10)
    step, state = cif_lm.make_train_step(TINY_LM, optimizer), optimizer.init(params)
    for _ in range(150):
        params, state, loss = step(params, state, tokens, jax.random.PRNGKey(0))
    assert float(loss) < 0.1
    cif_lm.save_lm(folder / "lm", TINY_LM, params, {"elements": ["Au", "Cu"]})
    flow.save_flow(folder / "flow", TINY_FLOW, flow.init_params(TINY_FLOW), flow.lattice_stats([CU3AU, CUAU]),
                   {"elements": ["Au", "Cu"]})
    return {"llm": folder / "lm", "flow": folder / "flow"}


def generators(checkpoints: dict[str, Path], **sections) -> dict:
    """`generators` settings of both models on the checkpoints (greedy language model)."""
    common = {"prompts": "known", "compositions": 2, "samples_per_prompt": 2, "batch_size": 16,
              "finetune_steps": 2, "finetune_batch_size": 2}
    settings = {"llm": {**common, "enabled": True, "checkpoint": str(checkpoints["llm"]), "top_k": 1},
                "flow": {**common, "enabled": True, "checkpoint": str(checkpoints["flow"]), "steps": 5}}
    for kind, changes in sections.items():
        settings[kind].update(changes)
    return settings


def test_prompts_come_from_the_space_ranked_known_or_both():
    space = ChemicalSpace(("Co", "Li", "O"), 3, 8)
    known = [("Li2O", 0.0), ("CoO", 0.02), ("Li", 0.0), ("LiCoO2", None), ("Co3O4", 0.01)]
    assert prompt_formulas("known", 3, space, known) == ["Li2O", "Co3O4", "CoO"]  # compounds, nearest the hull first
    # new charge-balanced formulas of at most 8 atoms; without a scorer the smallest first
    assert prompt_formulas("ranked", 10, space, known) == ["Co2O3", "Li2CoO2", "Li2Co2O3", "Li3CoO3", "Li4CoO3"]
    assert prompt_formulas("both", 5, space, known) == ["Co2O3", "Li2O", "Li2CoO2", "Co3O4", "Li2Co2O3"]
    assert prompt_formulas("ranked", 2, space, known, scorer=lambda formulas: [-len(f) for f in formulas]) == [
        "Li2Co2O3", "Li2CoO2"]  # the scorer's lowest first
    assert prompt_cells(["Li2O", "LiCoO2"], 8) == [Composition("Li2O"), Composition("Li4O2"), Composition("LiCoO2"),
                                                   Composition("Li2Co2O4")]


@pytest.mark.parametrize("kind", ["llm", "flow"])
def test_finetuning_on_the_entries_near_the_hull_is_saved_once_per_round(checkpoints, tmp_path, monkeypatch, kind):
    settings = parse_config(quick_config(generators=generators(
        checkpoints, **{kind: {"finetune_steps": 10, "finetune_learning_rate": 1e-3, "finetune_max_ehull": 0.01}})))
    settings = getattr(settings.generators, kind)
    models = tmp_path / "models"
    (models / "r001" / f"{kind}.partial").mkdir(parents=True)  # left by a kill while saving
    entries = [("e-1", CUAU3, 0.0), ("e-2", CUAU, 0.005), ("e-3", CU3AU, 0.2), ("e-4", CUAU, None)]
    model, record = round_generator(kind, settings, models, 1, entries, seed=3)
    assert record["steps"] == 10 and record["structures"] == 2  # CuAu3 and CuAu: within 0.01 eV/atom
    assert record["learning_rate"] == 1e-3 and record["batch_size"] == settings.finetune_batch_size == 2  # how
    assert record["start"] == str(checkpoints[kind]) and record["weights"] == f"models/r001/{kind}"
    saved = Generator.load(kind, models / "r001" / kind)
    assert saved.card["finetune"] == record and saved.card["elements"] == ["Au", "Cu"]
    assert not (models / "r001" / f"{kind}.partial").exists()
    for a, b in zip(jax.tree.leaves(saved.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, b)
    if kind == "llm":  # the stable structure became likelier
        evaluate = cif_lm.make_eval_loss(TINY_LM)
        tokens = cif_lm.token_batch([ct.canonical_cif(CUAU3)], TINY_LM.max_len)
        before = Generator.load(kind, checkpoints[kind]).params
        assert float(evaluate(model.params, tokens)) < float(evaluate(before, tokens))
    else:  # the flow keeps its checkpoint's lattice statistics
        np.testing.assert_array_equal(saved.stats.mean, Generator.load(kind, checkpoints[kind]).stats.mean)

    def no_training(*args, **kwargs):
        raise AssertionError("trained twice")

    monkeypatch.setattr(generative, "finetune", no_training)
    again, same = round_generator(kind, settings, models, 1, entries, seed=3)  # a re-run of the round
    assert same == record
    monkeypatch.undo()
    _, second = round_generator(kind, settings, models, 2, entries + [("e-5", CU3AU, 0.0)], seed=4)
    # from the checkpoint again (steps never add up over rounds), on every entry near the hull so far
    assert second["start"] == str(checkpoints[kind]) and second["structures"] == 3
    assert second["weights"] == f"models/r002/{kind}"
    alone, _ = round_generator(kind, settings, tmp_path / "fresh" / "models", 2, entries + [("e-5", CU3AU, 0.0)],
                               seed=4)
    saved_second = Generator.load(kind, models / "r002" / kind)
    for a, b in zip(jax.tree.leaves(saved_second.params), jax.tree.leaves(alone.params)):
        np.testing.assert_array_equal(a, b)  # round 1's weights played no part
    frozen = settings.model_copy(update={"finetune_steps": 0})
    _, untouched = round_generator(kind, frozen, tmp_path / "other", 1, entries, seed=3)
    assert untouched["steps"] == 0 and untouched["weights"] == str(checkpoints[kind])
    assert not (tmp_path / "other").exists()


def test_flowllm_refines_the_language_models_valid_samples(checkpoints, tmp_path):
    config = parse_config(quick_config(generators=generators(
        checkpoints, flow={"start": "llm", "start_time": 0.5, "finetune_steps": 0},
        llm={"enabled": False, "finetune_steps": 0})))
    made = propose("flow", config.generators, tmp_path / "models", 1, 5, [], ["Cu3Au", "CuAu"], 8)
    # prompts within the flow's 4 atoms: Cu3Au, CuAu, Cu2Au2; greedy samples repeat, and Cu2Au2 is no CIF it knows
    assert made.samples == 6
    assert sum(made.rejected.values()) + len(made.candidates) == 6
    assert made.rejected["duplicate"] >= 2 and len(made.candidates) >= 2
    assert {c.structure.composition.reduced_formula for c in made.candidates} <= {"Cu3Au", "CuAu"}
    assert {c.generator for c in made.candidates} == {"flow"}
    for candidate in made.candidates:
        assert Composition(candidate.info["prompt"]) == candidate.structure.composition


def test_the_best_predicted_own_samples_leave_out_duplicates_judged_and_later_ones(tmp_path):
    store = Store(tmp_path / "c.db", create=True)
    cells = [CU3AU.copy() for _ in range(9)]
    for index, cell in enumerate(cells):
        cell.scale_lattice(cell.volume * (1 + 0.01 * index))
    rounds = [1, 1, 1, 1, 2, 1, 1, 1, 1]
    makers = ["flow", "flow", "flow", "llm", "flow", "flow", "flow", "flow", "flow"]
    ehulls = [0.05, 0.01, -0.02, -0.5, -0.5, -0.4, 0.02, None, 0.01]
    with store.transaction():
        store.add_candidates(candidate_row(f"c{i}", r, maker, cell)
                             for i, (r, maker, cell) in enumerate(zip(rounds, makers, cells)))
        store.set_predictions([(f"c{i}", Prediction(None if e is None else -1.0, 0.0, e, None if e is not None
                                                    else "score failed")) for i, e in enumerate(ehulls)])
        store.mark_duplicates({"c5": "c2"})  # predicted among the best, but a repeat
        store.mark_selected([("c2", "threshold")])  # sent to the oracle: its entry judges it
        store.set_prerelaxed([("c8", {"status": "ok", "structure": structure_to_json(cells[0])})])
    picked = store.best_predicted("flow", 2, 3)
    # c3 is the language model's, c4 of round 2, c7's score failed; c1 and c8 tie, by id
    assert [row["id"] for row in picked] == ["c1", "c8", "c6"]
    assert [row["pred_ehull"] for row in picked] == [0.01, 0.01, 0.02]
    assert structure_from_json(picked[0]["structure"]) == cells[1]
    assert structure_from_json(picked[1]["structure"]) == cells[0]  # the pre-relaxed structure, the one scored
    assert store.best_predicted("flow", 1, 5) == [] and len(store.best_predicted("flow", 2, 10)) == 4
    assert store.best_predicted("flow", 2, 0) == []


def test_own_samples_need_a_structure_model_to_rank_them():
    with pytest.raises(ConfigError, match="finetune_own_samples"):
        parse_config(quick_config(model={"kind": "linear"}, generators={"flow": {"finetune_own_samples": 8}}))
    assert parse_config(quick_config(model={"kind": "gnome"}, generators={"flow": {"finetune_own_samples": 8}}))


def test_a_model_also_learns_from_its_own_samples_that_the_filter_rewarded(checkpoints, tmp_path, monkeypatch):
    """Round 2 of a campaign fine-tunes the flow on the entries near the hull and then on
    its round-1 samples that the energy model put nearest the hull (the store's choice,
    tested above)."""
    config = quick_config(generators=generators(checkpoints, llm={"enabled": False},
                                                flow={"finetune_own_samples": 2, "samples_per_prompt": 6}))
    config.update(rounds=2, model={"kind": "gnome", "init": "scratch", "members": 2, "width": 16, "epochs": 10,
                                   "patience": 10})  # a structure model to rank the samples
    taught, chosen = [], []

    def spy_finetune(model, structures, *args):
        taught.append(list(structures))
        return finetune(model, structures, *args)

    def spy_choice(store, *args):
        chosen.append((args, best_predicted(store, *args)))
        return chosen[-1][1]

    monkeypatch.setattr(generative, "finetune", spy_finetune)
    best_predicted = Store.best_predicted
    monkeypatch.setattr(Store, "best_predicted", spy_choice)
    campaign = Campaign.create(parse_config(config), tmp_path / "c")
    assert campaign.run().status == "done"
    assert [args for args, _ in chosen] == [("flow", 1, 2), ("flow", 2, 2)] and chosen[0][1] == []
    rows = chosen[1][1]
    assert len(rows) == 2 and all(campaign.store.candidate(row["id"])["round"] == 1 for row in rows)
    assert taught[1][-2:] == [structure_from_json(row["structure"]) for row in rows]  # after the entries
    records = [campaign.round_table()[r]["generator_training"]["flow"] for r in (1, 2)]
    assert records[0]["own_samples"] == 0 and records[1]["own_samples"] == 2
    result = CliRunner().invoke(app, ["status", str(tmp_path / "c")])
    assert result.exit_code == 0 and "2 of its own samples that the energy model put nearest it" in " ".join(
        result.output.split())  # however the console wraps it


def test_llm_and_flow_in_a_campaign_round_rerun_after_a_kill(checkpoints, tmp_path, monkeypatch):
    """Round 1 with both models; its generate stage first runs without committing (a kill
    before its transaction), then the campaign resumes: the weights are re-used, not
    trained again, and the same candidates are inserted once."""
    config = quick_config(generators=generators(checkpoints))
    directory = tmp_path / "c"
    Campaign.create(parse_config(config), directory).run()
    config["rounds"] = 1
    write_config(directory / "config.yaml", config)
    campaign = Campaign(directory)
    killed = generate(campaign.context, 1)
    assert campaign.store.candidates(round_=1) == []
    shutil.copy(directory / "campaign.db", tmp_path / "killed.db")
    copy = Store(tmp_path / "killed.db")
    with copy.transaction():  # what the killed run would have inserted
        killed.record(copy)
    killed_ids = {row["id"] for row in copy.candidates(round_=1)}
    copy.close()

    def no_training(*args, **kwargs):
        raise AssertionError("trained twice")

    monkeypatch.setattr(generative, "finetune", no_training)
    assert campaign.run().status == "done"
    rows = campaign.store.candidates(round_=1)
    assert {row["id"] for row in rows} == killed_ids and len(rows) == len(killed_ids)
    round_1 = campaign.round_table()[1]
    # known prompts Cu3Au and CuAu: 2 + 4 cells (8 atoms at most), 3 within the flow's 4 atoms; 2 samples each
    assert round_1["samples_by_generator"] == {"llm": 12, "flow": 6}
    for kind in ("llm", "flow"):
        rejected = sum(round_1["rejected_by_generator"].get(kind, {}).values())
        counts = round_1["by_generator"][kind]
        assert counts["valid"] + rejected == round_1["samples_by_generator"][kind]  # every sample accounted for
        assert counts["valid"] == sum(row["generator"] == kind for row in rows) >= counts["unique"] >= counts["novel"]
        training = round_1["generator_training"][kind]
        assert training["steps"] == 2 and training["structures"] >= 3  # Cu3Au and the elements on the hull
        card = json.loads((directory / "models" / "r001" / kind / "model_card.json").read_text())
        assert card["finetune"] == training  # beside the energy model, which the train stage wrote after
    assert round_1["generated_by"]["llm"] >= 2 and round_1["rejected_by_generator"]["llm"]["duplicate"] >= 2
    assert (directory / "models" / "r001" / "model_card.json").exists()
    assert {json.loads(row["info"])["weights"] for row in rows} == {"models/r001/llm", "models/r001/flow"}
    result = CliRunner().invoke(app, ["status", str(directory)])
    assert result.exit_code == 0 and "llm" in result.output and "samples" in result.output
    assert "fine-tuned 2 steps at learning rate 0.0001 on" in result.output


@pytest.mark.slow
def test_kill_9_during_generation_then_resume_inserts_each_candidate_once(checkpoints, tmp_path):
    """`gnome-loop run` killed with SIGKILL at random moments of rounds 1 and 2's
    generate stage (fine-tuning both models, then sampling), then resumed: the same
    candidates as an unbroken campaign, each inserted once, and the same samples counted."""
    sections = {kind: {"finetune_steps": 40} for kind in ("llm", "flow")}
    config = quick_config(rounds=2, generators=generators(checkpoints, **sections))
    reference, directory = tmp_path / "reference", tmp_path / "killed"
    Campaign.create(parse_config(config), reference).run()
    Campaign.create(parse_config(config), directory)
    rng = random.Random(5)

    def kill_at(run: int, current: tuple[int, str] | None) -> bool:
        return run < 4 and current is not None and current[0] >= 1 and current[1] == "generate"

    # each kill lands inside the stage: loading, fine-tuning or sampling
    kills = run_with_kills(directory, kill_at, lambda: rng.uniform(0.5, 6.0))
    assert len(kills) >= 2, kills
    assert sum(stage == "generate" for _, stage in kills) >= 2, kills  # the kills landed in the stage
    resumed, unbroken = Campaign(directory), Campaign(reference)
    for round_ in (1, 2):
        rows = [row["id"] for row in resumed.store.candidates(round_=round_)]
        assert len(rows) == len(set(rows)) > 0
        assert set(rows) == {row["id"] for row in unbroken.store.candidates(round_=round_)}
        mine, theirs = resumed.round_table()[round_], unbroken.round_table()[round_]
        for key in ("samples_by_generator", "by_generator", "rejected_by_generator", "generator_training"):
            assert mine[key] == theirs[key], key


@pytest.mark.parametrize("changes, hint", [
    ({"llm": {"checkpoint": "{flow}"}}, "generators.llm.checkpoint: {flow} holds a 'crystal-flow' model, not a "
                                        "'cif-transformer'"),
    ({"flow": {"checkpoint": "/no/such/folder"}}, "generators.flow.checkpoint: no generator in /no/such/folder"),
    ({"flow": {"checkpoint": "{foreign}"}}, "{foreign} was trained on no structure holding Au, Cu"),
    ({"llm": {"enabled": False, "checkpoint": "/no/such"}, "flow": {"start": "llm"}},  # FlowLLM needs the llm
     "generators.llm.checkpoint: no generator in /no/such"),
])
def test_a_checkpoint_that_cannot_serve_fails_at_init(checkpoints, tmp_path, changes, hint):
    foreign = tmp_path / "foreign"
    shutil.copytree(checkpoints["flow"], foreign)
    card = json.loads((foreign / "model_card.json").read_text())
    (foreign / "model_card.json").write_text(json.dumps({**card, "elements": ["Cl", "Na"]}))
    paths = {"flow": str(checkpoints["flow"]), "foreign": str(foreign)}
    changes = {kind: {key: value.format(**paths) if isinstance(value, str) else value for key, value in section.items()}
               for kind, section in changes.items()}
    with pytest.raises(ConfigError) as error:
        Campaign.create(parse_config(quick_config(generators=generators(checkpoints, **changes))), tmp_path / "c")
    assert hint.format(**paths) in str(error.value)
    assert not (tmp_path / "c").exists()


def test_generative_settings_are_checked():
    for section, hint in (({"llm": {"prompts": "all"}}, "generators.llm.prompts"),
                          ({"flow": {"start": "cdvae"}}, "generators.flow.start"),
                          ({"llm": {"temperature": 0}}, "generators.llm.temperature")):
        with pytest.raises(ConfigError, match=hint):
            parse_config(quick_config(generators=section))
    assert parse_config(quick_config()).generators.llm.enabled is False  # off by default


@pytest.mark.parametrize("kind", ["llm", "flow"])
def test_the_shipped_generators_serve_the_elements_they_were_trained_on(kind):
    """Both ship (trained on mp37k); a space with an element no MP training cell holds
    (neon) is refused with the element named."""
    assert generative.resolved_checkpoint(kind, "pretrained", ["Li", "Co", "O"]) == "pretrained"
    with pytest.raises(ValueError, match="trained on no structure holding Ne$"):
        generative.resolved_checkpoint(kind, "pretrained", ["Na", "Ne"])


def test_the_shipped_flow_writes_cells_of_the_right_density_for_a_prompt(tmp_path):
    """`checkpoint: pretrained` loads the flow trained on mp37k (no Au-Cu ternaries held
    out); frozen, it writes Cu3Au and CuAu cells near their real density (Cu3Au: 13.2
    Å³/atom) with metallic bond lengths, not noise."""
    config = parse_config(quick_config(generators={"flow": {
        "enabled": True, "checkpoint": "pretrained", "finetune_steps": 0, "samples_per_prompt": 2}}))
    made = propose("flow", config.generators, tmp_path / "models", 1, 20, [], ["Cu3Au", "CuAu"], 8)
    assert made.samples == 12 and len(made.candidates) >= 10  # 6 cells of at most 8 atoms, 2 samples each
    for candidate in made.candidates:
        structure = candidate.structure
        assert Composition(candidate.info["prompt"]) == structure.composition
        assert 11.0 < structure.volume / len(structure) < 17.5
    nearest = [min(s.distance_matrix[np.triu_indices(len(s), 1)]) for s in (c.structure for c in made.candidates)]
    assert np.median(nearest) > 2.3


def test_the_shipped_language_model_writes_valid_cifs_for_a_prompt(tmp_path):
    """`checkpoint: pretrained` loads the language model trained on mp37k; frozen, it
    writes Cu3Au and CuAu cells that parse and keep the prompt's formula and space group
    (about 60 % of samples; the rest are counted as rejects with their reason, never
    dropped), recalls Cu3Au's ordered L1_2 structure, and gives metallic densities and
    bond lengths, not noise."""
    config = parse_config(quick_config(generators={"llm": {
        "enabled": True, "checkpoint": "pretrained", "finetune_steps": 0, "samples_per_prompt": 4}}))
    made = propose("llm", config.generators, tmp_path / "models", 1, 20, [], ["Cu3Au", "CuAu"], 8)
    assert made.samples == 24 == len(made.candidates) + sum(made.rejected.values())
    assert len(made.candidates) >= 8, made.rejected
    structures = [candidate.structure for candidate in made.candidates]
    assert all(Composition(c.info["prompt"]) == c.structure.composition for c in made.candidates)
    assert any(StructureMatcher().fit(structure, CU3AU) for structure in structures)
    assert 12.0 < np.median([s.volume / len(s) for s in structures]) < 18.0
    assert np.median([min(s.distance_matrix[np.triu_indices(len(s), 1)]) for s in structures]) > 2.3
