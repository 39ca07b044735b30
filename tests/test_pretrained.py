"""Pretraining and fine-tuning: a killed training run resumes from its checkpoint and
ends where an uninterrupted one ends; a trained ensemble is fine-tuned onto another
energy scale; broken or foreign checkpoints give errors that name the file."""

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gnome_loop.models.ensemble import CompositionEnsemble, StructureEnsemble
from gnome_loop.models.pretrained import held_out, load_pretrained
from gnome_loop.models.split import is_train
from gnome_loop.models.train import load_train_state

CUTOFF = 4.0


def _rocksalts():
    pairs = [("Na", "Cl"), ("K", "Cl"), ("Li", "F"), ("Na", "F"), ("K", "Br"), ("Rb", "I"), ("Mg", "O"),
             ("Ca", "O"), ("Sr", "O"), ("Ba", "O"), ("Li", "Cl"), ("Cs", "F"), ("Na", "Br"), ("K", "F"),
             ("Li", "Br"), ("Rb", "Cl"), ("Cs", "Cl"), ("Na", "I"), ("Li", "I"), ("Mg", "S")]
    structures = []
    for a_ion, b_ion in pairs:
        for a in (4.8, 5.4):
            structures.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [a_ion, b_ion],
                                                        [[0, 0, 0], [0.5, 0.5, 0.5]]))
    return structures


def _energies(structures):
    """A structure-dependent energy per atom (composition and lattice constant)."""
    return np.array([-1.0 - 0.1 * sum(el.Z for el in s.composition.elements) / 20
                     + 0.5 * ((s.volume / len(s)) ** (1 / 3) % 1.0) for s in structures])


class Killed(Exception):
    pass


def test_a_killed_training_run_resumes_and_ends_with_the_same_steps(tmp_path):
    structures = _rocksalts()
    energies = _energies(structures)
    settings = dict(members=2, width=16, steps=1, cutoff=CUTOFF, epochs=6, batch_size=8, patience=100)

    whole = StructureEnsemble(**settings)
    whole.fit(structures, energies, checkpoint=tmp_path / "whole.msgpack")

    def kill_after_epoch_3(state):
        if state.epoch == 3:
            raise Killed  # after the checkpoint of epoch 3 was written (checkpoint_seconds=0)

    with pytest.raises(Killed):
        StructureEnsemble(**settings).fit(structures, energies, checkpoint=tmp_path / "run.msgpack",
                                          checkpoint_seconds=0, on_epoch=kill_after_epoch_3)
    seen = []
    resumed = StructureEnsemble(**settings)
    metrics = resumed.fit(structures, energies, checkpoint=tmp_path / "run.msgpack",
                          on_epoch=lambda state: seen.append(state.epoch))
    assert seen == [4, 5, 6]  # only the epochs the killed run had not done
    assert metrics["epochs"] == 6 and metrics["finished"]
    template = StructureEnsemble(**settings)
    template.fit(structures, energies, seconds=0)  # no epoch: just the shapes of a state
    steps = [load_train_state(tmp_path / name, _template_state(template))[0].n_steps
             for name in ("whole.msgpack", "run.msgpack")]
    assert steps[0] == steps[1] > 0
    np.testing.assert_allclose(resumed.predict(structures)[0], whole.predict(structures)[0], atol=1e-5)


def _template_state(model):
    from gnome_loop.models.train import TrainSettings, initial_state

    return initial_state(model._module(), model._sample_batch(), TrainSettings(members=model.settings["members"]))


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    structures = _rocksalts()
    energies = _energies(structures)
    settings = dict(members=2, width=16, steps=1, cutoff=CUTOFF, epochs=2, batch_size=8)
    StructureEnsemble(**settings).fit(structures, energies, checkpoint=tmp_path / "run.msgpack")
    with pytest.raises(ValueError, match="checkpoint of another training run"):
        StructureEnsemble(**settings).fit(structures, energies + 0.1, checkpoint=tmp_path / "run.msgpack")
    (tmp_path / "broken.msgpack").write_bytes(b"\x00not msgpack")
    with pytest.raises(ValueError, match="broken.msgpack"):
        StructureEnsemble(**settings).fit(structures, energies, checkpoint=tmp_path / "broken.msgpack")


def test_fine_tuning_moves_the_per_element_reference_to_a_new_scale():
    """A model trained on one scale, fine-tuned on the same structures shifted by
    per-element offsets (formation vs total energies; the pure elements, which every
    campaign holds, pin the new scale): it is right at once, before any epoch, and far
    better than the same epochs from scratch."""
    # one cell per formula (energies a composition model can fit), all on the training side
    compounds = [s for s in _rocksalts()[::2] if is_train(s.composition.reduced_formula)]
    elements = sorted({el.symbol for s in compounds for el in s.composition.elements})
    structures = compounds + [Structure(Lattice.cubic(3.0), [el], [[0, 0, 0]]) for el in elements]
    energies = np.array([-1.0 + 0.4 * np.sin(np.prod([el.Z for el in s.composition.elements])) for s in compounds]
                        + [0.0] * len(elements))  # formation energies: 0 for the elements
    base = CompositionEnsemble(members=2, width=32, epochs=400, batch_size=8, learning_rate=3e-3, patience=400)
    base.fit(structures, energies)
    offsets = {"Na": -1.3, "K": -1.1, "Li": -1.9, "Rb": -0.9, "Cs": -0.8, "Mg": -1.6, "Ca": -2.0, "Sr": -1.7,
               "Ba": -1.9, "Cl": -1.8, "F": -1.9, "Br": -1.6, "I": -1.5, "O": -4.9, "S": -4.1}
    shifted = energies + np.array([sum(offsets[el.symbol] * frac for el, frac in
                                       s.composition.fractional_composition.items()) for s in structures])
    no_epoch = CompositionEnsemble(members=2, width=32, epochs=1, batch_size=8)
    no_epoch.fit(structures, shifted, init=base, seconds=0)
    error_at_once = np.mean(np.abs(no_epoch.predict(structures)[0] - shifted))
    scratch = CompositionEnsemble(members=2, width=32, epochs=5, batch_size=8)
    scratch.fit(structures, shifted)
    error_scratch = np.mean(np.abs(scratch.predict(structures)[0] - shifted))
    assert np.mean(np.abs(base.predict(structures)[0] - energies)) < 0.05
    assert error_at_once < 0.05
    assert error_at_once < error_scratch / 2


def test_fine_tuning_needs_the_same_architecture():
    structures = _rocksalts()
    base = CompositionEnsemble(members=2, width=16, epochs=1, batch_size=8)
    base.fit(structures, _energies(structures))
    with pytest.raises(ValueError, match="cannot fine-tune"):
        CompositionEnsemble(members=2, width=32, epochs=1, batch_size=8).fit(structures, _energies(structures),
                                                                               init=base)


def test_broken_or_foreign_pretrained_checkpoints_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "missing")):
        load_pretrained(tmp_path / "missing")
    structures = _rocksalts()
    model = CompositionEnsemble(members=2, width=16, epochs=1, batch_size=8)
    model.fit(structures, _energies(structures))
    model.save(tmp_path / "broken")
    (tmp_path / "broken" / "params.msgpack").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken"):
        load_pretrained(tmp_path / "broken")
    model.save(tmp_path / "foreign")
    card = tmp_path / "foreign" / "model_card.json"
    card.write_text(card.read_text().replace("gnome-composition-ensemble", "someone-elses-model"))
    with pytest.raises(ValueError, match="unknown architecture"):
        load_pretrained(tmp_path / "foreign")


def test_held_out_systems_are_the_rich_li_co_ni_o_phases():
    assert held_out("LiCoO2") and held_out("LiNi0.5Co0.5O2") and held_out("Li2NiO3")
    assert not held_out("CoO") and not held_out("Li2O") and not held_out("LiMnO2") and not held_out("Li")


def _emt_config(tmp_path, **model):
    import yaml

    from gnome_loop.config import parse_config
    from tests.helpers import CI_CONFIG

    data = yaml.safe_load(CI_CONFIG.read_text())
    data["rounds"] = 0
    data["model"] = {"kind": "composition", "members": 2, "width": 16, "epochs": 3, "batch_size": 8, **model}
    return parse_config(data)


def _saved_composition_model(path, elements, width=16):
    structures = [Structure(Lattice.cubic(3.6), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
                  for a in elements for b in elements]
    model = CompositionEnsemble(members=2, width=width, epochs=2, batch_size=8)
    model.fit(structures, np.linspace(-4, -2, len(structures)))
    model.save(path)
    return model


def test_a_campaign_fine_tunes_the_model_it_is_given_and_says_so(tmp_path):
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import ConfigError

    elements = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"]
    start = _saved_composition_model(tmp_path / "start", elements)
    with pytest.raises(ConfigError, match="not a saved model"):
        Campaign.create(_emt_config(tmp_path, init=str(tmp_path / "nowhere")), tmp_path / "a")
    _saved_composition_model(tmp_path / "wide", elements, width=32)
    with pytest.raises(ConfigError, match="width 32"):
        Campaign.create(_emt_config(tmp_path, init=str(tmp_path / "wide")), tmp_path / "b")

    campaign = Campaign.create(_emt_config(tmp_path, init=str(tmp_path / "start")), tmp_path / "c")
    assert campaign.run().status == "done"
    metrics = json.loads(campaign.store.rounds()[0]["metrics"])
    assert metrics["model_init"].startswith(f"fine-tuned from {tmp_path / 'start'}")
    assert metrics["model_init"].endswith(f"(data {start.data_hash})")
    card = json.loads((tmp_path / "c" / "models" / "r000" / "model_card.json").read_text())
    assert card["metrics"]["fine_tuned_from"] == start.data_hash


def test_without_a_usable_pretrained_model_training_starts_from_scratch(tmp_path, monkeypatch):
    from gnome_loop.models import pretrained

    config = _emt_config(tmp_path).model
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "shipped")
    model, how = pretrained.starting_model(config, ["Cu", "Ag"])
    assert model is None and how.startswith("from scratch: no pretrained composition model")
    _saved_composition_model(tmp_path / "shipped" / "composition", ["Cu", "Ag"])
    model, how = pretrained.starting_model(config, ["Cu", "Ag", "Au"])
    assert model is None and how.endswith("never saw Au")
    model, how = pretrained.starting_model(config, ["Cu", "Ag"])
    assert model is not None and how.startswith("fine-tuned from")
    wide = config.model_copy(update={"width": 32})
    model, how = pretrained.starting_model(wide, ["Cu", "Ag"])
    assert model is None and "width 16 (config: 32)" in how


#: MAE the shipped models measured on MP-20 val (see their cards), eV/atom: the tests allow this much.
SHIPPED_MP20_MAE = {"composition": 0.15, "gnome": 0.08}


@pytest.mark.parametrize("kind", ["composition", "gnome"])
def test_a_shipped_model_loads_with_its_card_and_knows_mp(shared_data, kind):
    from gnome_loop.models.pretrained import pretrained_path

    model = load_pretrained(kind)
    card = json.loads((pretrained_path(kind) / "model_card.json").read_text())["metrics"]["pretraining"]
    assert "CC BY 4.0" in card["licence"] and card["script"] == "scripts/pretrain.py" and card["commit"]
    assert "Li-Co-Ni-O" in card["held_out"]
    # MP-20 validation formulas were left out of pretraining: its error there is on unseen formulas
    structures, energies = _mp20_val(shared_data)
    keep = [i for i, s in enumerate(structures) if model.input_error(s) is None]
    assert len(keep) >= 0.9 * len(structures)
    predicted, spread = model.predict([structures[i] for i in keep])
    mae = np.mean(np.abs(predicted - energies[keep]))
    assert mae == pytest.approx(card["mp20_val_mae"], abs=0.03) and mae < SHIPPED_MP20_MAE[kind]
    assert np.all(np.isfinite(spread)) and np.all(spread >= 0)


def _mp20_val(shared_data):
    """MP-20 validation structures and formation energies (formulas pretraining never saw)."""
    import pandas as pd

    frame = pd.read_csv(shared_data / "mp20_subset" / "val.csv.gz")
    structures = [Structure.from_str(cif, fmt="cif") for cif in frame["cif"]]
    return structures, frame["formation_energy_per_atom"].to_numpy()


@pytest.mark.parametrize("kind", ["composition", pytest.param("gnome", marks=pytest.mark.slow)])
def test_fine_tuning_the_shipped_model_beats_scratch_on_unseen_real_data(shared_data, kind):
    """Half of MP-20 val to train on, the other half (where its elements were seen) to
    judge, the same epochs for both: the fine-tuned shipped model must be far better than
    one trained from random members. (A campaign's data always hold every element.)"""
    structures, energies = _mp20_val(shared_data)
    train = np.arange(len(structures)) % 2 == 0
    seen = {el for s, t in zip(structures, train) if t for el in s.composition.elements}
    judged = ~train & np.array([set(s.composition.elements) <= seen for s in structures])
    pretrained = load_pretrained(kind)
    fitted = {}
    for how, init in (("fine-tuned", pretrained), ("scratch", None)):
        model = type(pretrained)(**{**pretrained.settings, "epochs": 10, "patience": 10, "batch_size": 16})
        model.fit([s for s, t in zip(structures, train) if t], energies[train], init=init)
        predicted, _ = model.predict([s for s, j in zip(structures, judged) if j])
        fitted[how] = float(np.mean(np.abs(predicted - energies[judged])))
    assert fitted["fine-tuned"] < 0.2  # the shipped models are at ~0.1 eV/atom on MP-20 val
    assert fitted["fine-tuned"] < fitted["scratch"] / 2, fitted
