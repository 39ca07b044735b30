"""The flow-matching structure generator: the symmetries of its vector field, a tiny
model that learns one structure family, FlowLLM refinement, checkpoints, and a
killed training run that resumes to the same end."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from gnome_loop.generative import flow
from gnome_loop.generative.training import fit, initial_fit_state, load_fit_state, make_optimizer, size_groups
from gnome_loop.structures import validate_structure

SMALL = flow.FlowConfig(max_atoms=6, width=32, layers=2, frequencies=4)


def rocksalt(a: float, shift) -> Structure:
    """Primitive rocksalt NaCl of cubic lattice constant `a`, translated by `shift`."""
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, ["Na", "Cl"], (np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) + shift) % 1.0)


def triclinic() -> Structure:
    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 81, 95, 103)
    return Structure(lattice, ["K", "Br", "Br", "O", "O"],
                     [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.7, 0.45], [0.8, 0.85, 0.1], [0.2, 0.5, 0.9]])


@pytest.fixture(scope="module")
def field():
    params = flow.init_params(SMALL, seed=3)
    model = flow.VectorField(SMALL)
    apply = jax.jit(lambda batch, t: model.apply(params, batch.species, batch.frac, batch.lattice, batch.mask, t))
    stats = flow.lattice_stats([triclinic()])
    return apply, stats


def test_vector_field_permutation_translation_and_rotation(field):
    apply, stats = field
    batch = flow.crystal_batch([triclinic()], stats, SMALL.max_atoms)
    t = np.array([0.3], np.float32)
    v_frac, v_lattice = map(np.asarray, apply(batch, t))
    assert np.abs(v_frac).max() > 1e-3 and np.abs(v_lattice).max() > 1e-3
    np.testing.assert_allclose(v_frac[0, :5].mean(axis=0), 0, atol=1e-6)  # no drift
    assert np.all(v_frac[0, 5:] == 0)  # padding does not move

    order = np.array([3, 0, 4, 2, 1, 5])  # atoms permuted (padding stays last)
    permuted = batch._replace(species=batch.species[:, order], frac=batch.frac[:, order], mask=batch.mask[:, order])
    p_frac, p_lattice = map(np.asarray, apply(permuted, t))
    np.testing.assert_allclose(p_frac, v_frac[:, order], atol=1e-5)
    np.testing.assert_allclose(p_lattice, v_lattice, atol=1e-5)

    shifted = batch._replace(frac=(batch.frac + np.array([0.37, -0.21, 1.64], np.float32)) % 1.0)
    s_frac, s_lattice = map(np.asarray, apply(shifted, t))
    np.testing.assert_allclose(s_frac * batch.mask[..., None], v_frac, atol=1e-4)
    np.testing.assert_allclose(s_lattice, v_lattice, atol=1e-4)

    rotation = Structure.from_sites(triclinic())
    angle = 0.7
    matrix = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotation.lattice = Lattice(triclinic().lattice.matrix @ matrix.T)  # the Cartesian frame turned
    rotated = flow.crystal_batch([rotation], stats, SMALL.max_atoms)
    r_frac, r_lattice = map(np.asarray, apply(rotated, t))
    np.testing.assert_allclose(r_frac, v_frac, atol=1e-4)
    np.testing.assert_allclose(r_lattice, v_lattice, atol=1e-4)


def test_padding_never_changes_the_field(field):
    """A crystal's velocities are the same padded to its own size or to any wider batch,
    beside other crystals or alone, and `take` cuts a batch to its largest crystal."""
    apply, stats = field
    structures = [triclinic(), rocksalt(5.6, 0.1)]
    t = np.array([0.4, 0.4], np.float32)
    wide = flow.crystal_batch(structures, stats, 12)
    w_frac, w_lattice = map(np.asarray, apply(wide, t))
    for indices, width in (([0], 5), ([1], 2), ([1, 0], 5)):
        narrow = flow.take(wide, np.array(indices), slots=3)
        assert narrow.species.shape == (3, width) and narrow.mask[len(indices):].sum() == 0
        n_frac, n_lattice = map(np.asarray, apply(narrow, np.full(3, 0.4, np.float32)))
        for row, index in enumerate(indices):
            np.testing.assert_allclose(n_frac[row], w_frac[index, :width], atol=1e-5)
            np.testing.assert_allclose(n_lattice[row], w_lattice[index], atol=1e-5)


def test_pair_update_is_a_dense_layer_on_the_concatenation():
    rng = np.random.default_rng(0)
    h, pair, g = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 3, 3, 8)), rng.normal(size=(2, 8))
    layer = flow.PairUpdate(8)
    params = layer.init(jax.random.PRNGKey(0), h, pair, g)
    inner = params["params"]
    concatenated = np.concatenate([np.repeat(h[:, :, None], 3, 2), np.repeat(h[:, None], 3, 1), pair,
                                   np.broadcast_to(g[:, None, None], pair.shape)], -1)
    first = jax.nn.swish(concatenated @ inner["kernel"] + inner["bias"])
    expected = first @ inner["Dense_0"]["kernel"] + inner["Dense_0"]["bias"]
    np.testing.assert_allclose(layer.apply(params, h, pair, g), expected, rtol=1e-4, atol=1e-5)


def test_size_groups_batch_crystals_of_one_size():
    sizes = np.array([5, 8, 5, 5, 8, 2, 5])
    chunks = size_groups(sizes, np.arange(7), 2, np.random.default_rng(0))
    assert sorted(int(i) for chunk in chunks for i in chunk) == list(range(7))
    assert all(len(set(sizes[chunk])) == 1 and len(chunk) <= 2 for chunk in chunks)
    assert len(chunks) == 4  # 5-atom: 2 + 2 crystals, 8-atom: 2, 2-atom: 1


def test_lattice_features_round_trip():
    for structure in (triclinic(), rocksalt(5.64, 0)):
        cell = flow.reduced(structure)
        back = flow.features_lattice(flow.lattice_features(cell.lattice, len(cell)), len(cell))
        np.testing.assert_allclose(back.parameters, cell.lattice.parameters, rtol=1e-6, atol=1e-6)
    stats = flow.lattice_stats([triclinic()])
    [back] = flow.to_structures(flow.crystal_batch([triclinic()], stats, 8), stats)
    assert StructureMatcher().fit(back, triclinic())


@pytest.fixture(scope="module")
def rocksalt_flow():
    """A tiny flow trained 300 steps on 64 rocksalt NaCl cells (a from 5.4 to 5.9 Å,
    randomly translated)."""
    rng = np.random.default_rng(0)
    family = [rocksalt(a, rng.random(3)) for a in rng.uniform(5.4, 5.9, 64)]
    stats = flow.lattice_stats(family)
    data = flow.crystal_batch(family, stats, 4)
    config = flow.FlowConfig(max_atoms=4, width=32, layers=2, frequencies=4)
    optimizer = make_optimizer(3e-3, 300, warmup_steps=30)
    step, params = flow.make_train_step(config, optimizer), flow.init_params(config)
    opt_state = optimizer.init(params)
    for index in range(300):
        rows = rng.choice(64, 32, replace=False)
        params, opt_state, _ = step(params, opt_state, flow.CrystalBatch(*(x[rows] for x in data)),
                                    jax.random.PRNGKey(index))
    return config, params, stats


def test_tiny_flow_learns_rocksalt(rocksalt_flow):
    config, params, stats = rocksalt_flow
    samples = flow.sample(config, params, stats, ["Na1Cl1"] * 32, jax.random.PRNGKey(7), steps=20)
    assert len(samples) == 32 and all(s.composition.reduced_formula == "NaCl" for s in samples)
    valid = [s for s in samples if validate_structure(s) is None]
    matched = [s for s in valid if StructureMatcher().fit(s, rocksalt(5.64, 0))]
    assert len(valid) >= 28 and len(matched) >= 24, (len(valid), len(matched))
    volumes = [s.volume for s in matched]
    assert 5.3**3 / 4 < min(volumes) and max(volumes) < 6.0**3 / 4  # the family's cell sizes


def octahedron_spread(structure: Structure) -> float:
    """Relative spread of Na's six shortest Na-Cl distances: 0 in rocksalt."""
    distances = sorted(n.nn_distance for n in structure.get_neighbors(structure[0], 5.0) if n.specie.symbol == "Cl")
    return float(np.std(distances[:6]) / np.mean(distances[:6]))


def test_flowllm_refines_a_distorted_start(rocksalt_flow):
    config, params, stats = rocksalt_flow
    rng = np.random.default_rng(1)
    starts = []
    for _ in range(8):
        start = rocksalt(5.64, rng.random(3))
        for index in range(len(start)):  # perturb(0.4), from this test's own generator
            direction = rng.normal(size=3)
            start.translate_sites([index], 0.4 * direction / np.linalg.norm(direction), frac_coords=False)
        start.scale_lattice(start.volume * rng.uniform(0.9, 1.1))
        starts.append(start)
    assert min(octahedron_spread(s) for s in starts) > 0.02
    refined = flow.refine(config, params, stats, starts, steps=20, t_start=0.5)
    assert sum(octahedron_spread(s) < 0.01 for s in refined) >= 7, [octahedron_spread(s) for s in refined]


def test_saved_flow_samples_the_same(rocksalt_flow, tmp_path):
    config, params, stats = rocksalt_flow
    flow.save_flow(tmp_path / "flow", config, params, stats, {"elements": ["Cl", "Na"]})
    config2, params2, stats2, card = flow.load_flow(tmp_path / "flow")
    assert config2 == config and card["elements"] == ["Cl", "Na"]
    key = jax.random.PRNGKey(3)
    a = flow.sample(config, params, stats, ["Na1Cl1"], key, steps=5)[0]
    b = flow.sample(config2, params2, stats2, ["Na1Cl1"], key, steps=5)[0]
    np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, rtol=1e-6)
    (tmp_path / "flow" / "model_card.json").write_text('{"architecture": "cif-transformer"}')
    with pytest.raises(ValueError, match="not a 'crystal-flow'"):
        flow.load_flow(tmp_path / "flow")


def test_killed_training_resumes_to_the_same_end(tmp_path):
    rng = np.random.default_rng(2)
    family = [rocksalt(a, rng.random(3)) for a in rng.uniform(5.4, 5.9, 12)]
    stats = flow.lattice_stats(family)
    data = flow.crystal_batch(family, stats, 4)
    config = flow.FlowConfig(max_atoms=4, width=16, layers=1, frequencies=2)
    optimizer = make_optimizer(1e-3, 12)
    step = flow.make_train_step(config, optimizer)

    def batches(epoch):
        order = np.random.default_rng(epoch).permutation(12)
        return [flow.CrystalBatch(*(x[order[i:i + 4]] for x in data)) for i in range(0, 12, 4)]

    fresh = initial_fit_state(flow.init_params(config), optimizer)
    key = jax.random.PRNGKey(0)
    whole = fit(step, fresh, batches, epochs=4, key=key)

    calls = 0

    def dying(*args):
        nonlocal calls
        calls += 1
        if calls > 7:
            raise KeyboardInterrupt("killed")
        return step(*args)

    checkpoint = tmp_path / "run.msgpack"
    with pytest.raises(KeyboardInterrupt):
        fit(dying, fresh, batches, epochs=4, key=key, checkpoint=checkpoint, meta={"run": "x"},
            checkpoint_seconds=0)
    saved, meta = load_fit_state(checkpoint, fresh)
    assert (saved.epoch, saved.batch, saved.step, meta["run"]) == (2, 1, 7, "x")  # mid-epoch
    resumed = fit(step, saved, batches, epochs=4, key=key, checkpoint=checkpoint)
    assert resumed.step == whole.step == 12 and resumed.epoch == 4
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(resumed.history["train_loss"], whole.history["train_loss"], rtol=1e-5)


def test_flowllm_training_takes_its_starts_from_the_batch():
    """With `given_start` the base points are the batch's second half (FlowLLM: the
    language model's samples); a start equal to its target has velocity 0 to learn."""
    stats = flow.lattice_stats([triclinic()])
    target = flow.crystal_batch([triclinic()] * 4, stats, SMALL.max_atoms)
    optimizer = make_optimizer(3e-3, 40, warmup_steps=4)
    step, params = flow.make_train_step(SMALL, optimizer, given_start=True), flow.init_params(SMALL)
    opt_state, losses = optimizer.init(params), []
    for index in range(40):
        params, opt_state, loss = step(params, opt_state, (target, target), jax.random.PRNGKey(index))
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.slow
def test_pretraining_script_runs_resumes_and_exports(shared_data, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_generative.py"
    command = [sys.executable, str(script), "flow", "--data", str(shared_data), "--limit", "80", "--epochs", "1",
               "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--eval-samples", "4"]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "epoch 1/1" in first and "exported" in first
    again = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "resuming" in again and "epoch 1/1" not in again  # nothing left to train
    config, _, _, card = flow.load_flow(tmp_path / "out")
    assert card["finished"] and card["steps"] >= 1 and "CC BY 4.0" in card["licence"]
    assert "Li" in card["elements"] and card["commit"]
