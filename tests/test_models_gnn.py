"""The GNoME networks and their ensembles: they learn, they are invariant, padding is
inert, bad inputs are refused before the network, checkpoints are safe and checked."""

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from gnome_loop.models.registry import load_model
from gnome_loop.models.composition import composition_input_error
from gnome_loop.models.ensemble import CompositionEnsemble, StructureEnsemble, median_and_spread
from gnome_loop.models.gnome import StructureGNN
from gnome_loop.models.graph import GraphError, batch_graphs, crystal_graph
from gnome_loop.models.linear import LinearElementModel
from gnome_loop.models.split import is_train
from gnome_loop.models.train import init_ensemble, make_predict
from gnome_loop.structures import minimum_distance

CUTOFF = 4.0


def rocksalt(a=5.64, species=("Na", "Cl")):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite(a=3.9):
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(a), ["Sr", "Ti", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def random_model(members=3, width=32):
    module = StructureGNN(width=width, steps=2, cutoff=CUTOFF, avg_coordination=8.0)
    params = init_ensemble(module, batch_graphs([], 4, CUTOFF), members, seed=1)
    predict = make_predict(module)

    def energies(structures):
        batch = batch_graphs([crystal_graph(s, CUTOFF) for s in structures], 4, CUTOFF)
        return np.asarray(predict(params, batch))[:, :len(structures)]

    return energies


def test_invariant_to_permutation_translation_and_cell_choice():
    energies = random_model()
    base = perovskite()
    permuted = Structure(base.lattice, list(reversed(base.species)), list(reversed(base.frac_coords)))
    shifted = base.copy()
    shifted.translate_sites(list(range(len(base))), [0.13, 0.27, 0.61])
    supercell = base * (2, 1, 1)
    conventional = rocksalt()
    primitive = conventional.get_primitive_structure()
    assert len(primitive) == 2 and len(conventional) == 8
    out = energies([base, permuted, shifted, supercell])
    for column in range(1, 4):
        np.testing.assert_allclose(out[:, column], out[:, 0], atol=2e-5)
    pair = energies([conventional, primitive])
    np.testing.assert_allclose(pair[:, 0], pair[:, 1], atol=2e-5)


def test_padding_never_changes_a_prediction():
    energies = random_model()
    alone = energies([perovskite()])[:, 0]
    crowded = energies([rocksalt(), perovskite(), rocksalt(6.0, ("K", "Br"))])[:, 1]
    np.testing.assert_allclose(alone, crowded, atol=2e-5)


def test_members_differ_and_median_spread_is_per_structure():
    members = random_model(members=5)([perovskite(), rocksalt()])
    assert np.ptp(members[:, 0]) > 1e-4  # independent initialisations disagree
    median, spread = median_and_spread(members)
    np.testing.assert_allclose(median, np.median(members, axis=0))
    np.testing.assert_allclose(spread, np.percentile(members, 75, 0) - np.percentile(members, 25, 0))
    _, std = median_and_spread(members[:3])
    np.testing.assert_allclose(std, np.std(members[:3], axis=0))


@pytest.mark.parametrize(
    "structure, reason",
    [
        (Structure(Lattice.cubic(4), [], []), "empty"),
        (Structure(Lattice.cubic(5), ["Am", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]), "outside the embedding table"),
        (Structure(Lattice.cubic(5), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]]), "apart"),
        (Structure(Lattice.cubic(5), ["Na", "Cl"], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]), "0.000 Å apart"),
        (Structure(Lattice.orthorhombic(0.4, 1, 1), ["Na"], [[0, 0, 0]]), "0.400 Å apart"),  # its own image
        (Structure(Lattice.cubic(0.01), ["Na"], [[0, 0, 0]]), "less than 0.5 Å apart"),  # no neighbour search
        (Structure(Lattice.cubic(5), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]]), "NaN"),
    ],
)
def test_bad_inputs_are_refused_before_the_network(structure, reason):
    with pytest.raises(GraphError, match=reason):
        crystal_graph(structure, CUTOFF)


def _training_set():
    """Rock salts and perovskites whose formulas all fall on the training side of the split."""
    structures = []
    for a_ion, b_ion in [("Na", "Cl"), ("K", "Cl"), ("Li", "F"), ("Na", "F"), ("K", "Br"), ("Rb", "I"),
                         ("Mg", "O"), ("Ca", "O"), ("Sr", "O"), ("Ba", "O"), ("Li", "Cl"), ("Cs", "F")]:
        for a in (4.8, 5.4):  # two volumes of each formula: energies a composition model cannot fit
            structures.append(rocksalt(a, (a_ion, b_ion)))
    return [s for s in structures if is_train(s.composition.reduced_formula)]


def test_structure_ensemble_overfits_a_tiny_set_and_beats_linear():
    structures = _training_set()
    # a structure-dependent energy: depends on the lattice constant, not only on composition
    energies = np.array([-1.0 - 0.3 * len(s.composition) + 0.5 * (s.volume / len(s)) ** (1 / 3) % 1.0
                         for s in structures])
    model = StructureEnsemble(members=2, width=32, steps=2, cutoff=CUTOFF, epochs=400, batch_size=8,
                              learning_rate=3e-3)
    metrics = model.fit(structures, energies)
    assert metrics["n_val"] == 0
    predicted, _ = model.predict(structures)
    gnn_mae = np.mean(np.abs(predicted - energies))
    linear = LinearElementModel()
    linear.fit(structures, energies)
    linear_mae = np.mean(np.abs(linear.predict(structures)[0] - energies))
    assert gnn_mae < 0.01
    assert gnn_mae < linear_mae / 3


def test_checkpoints_round_trip_and_are_checked(tmp_path):
    structures = _training_set()
    energies = np.linspace(-3, -1, len(structures))
    for cls in (StructureEnsemble, CompositionEnsemble):
        model = cls(members=2, width=16, steps=1, cutoff=CUTOFF, epochs=3, batch_size=8)
        model.fit(structures, energies)
        model.save(tmp_path / cls.name)
        loaded = load_model(tmp_path / cls.name)
        assert type(loaded) is cls
        np.testing.assert_allclose(loaded.predict(structures)[0], model.predict(structures)[0], rtol=1e-6)
        assert not list((tmp_path / cls.name).glob("*.pkl"))
    with pytest.raises(ValueError, match="not 'gnome-structure-ensemble'"):
        StructureEnsemble.load(tmp_path / CompositionEnsemble.name)
    # a checkpoint whose parameters do not fit the stated settings
    state = (tmp_path / StructureEnsemble.name / "ensemble.json")
    state.write_text(state.read_text().replace('"width": 16', '"width": 24'))
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / StructureEnsemble.name)


def test_unknown_element_at_prediction_is_a_clear_error():
    structures = _training_set()
    model = CompositionEnsemble(members=2, width=16, epochs=2, batch_size=8)
    model.fit(structures, np.linspace(-3, -1, len(structures)))
    with pytest.raises(ValueError, match="Zr"):
        model.predict([rocksalt(4.5, ("Zr", "C"))])


def test_volume_augmentation_keeps_each_members_lowest_energy(tmp_path):
    structures = _training_set()
    model = StructureEnsemble(members=2, width=16, steps=1, cutoff=CUTOFF, epochs=3, batch_size=8)
    model.fit(structures, np.linspace(-3, -1, len(structures)))
    plain = model.member_predictions(structures)
    by_volume = [plain]
    for factor in (0.9, 1.1):
        scaled = [s.copy() for s in structures]
        for s in scaled:
            s.scale_lattice(s.volume * factor)
        by_volume.append(model.member_predictions(scaled))
    model.settings["volume_augmentation"] = [0.9, 1.1]
    np.testing.assert_allclose(model.member_predictions(structures), np.min(by_volume, axis=0), rtol=1e-6)
    model.save(tmp_path / "tta")  # the option travels with the checkpoint
    assert load_model(tmp_path / "tta").settings["volume_augmentation"] == [0.9, 1.1]


def test_the_first_members_predict_as_they_do_in_the_whole_ensemble():
    structures = _training_set()
    model = StructureEnsemble(members=3, width=16, steps=1, cutoff=CUTOFF, epochs=3, batch_size=8)
    model.fit(structures, np.linspace(-3, -1, len(structures)))
    whole = model.member_predictions(structures)
    one = model.first_members(1)
    np.testing.assert_allclose(one.member_predictions(structures), whole[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.predict(structures)[0], whole[0], rtol=1e-5, atol=1e-6)
    assert model.settings["members"] == 3 and model.member_predictions(structures).shape[0] == 3  # untouched
    with pytest.raises(ValueError, match="cannot take 4 of 3"):
        model.first_members(4)


def test_training_batches_are_packed_into_one_budget():
    from gnome_loop.models.graph import pack_graphs

    graphs = [crystal_graph(s, CUTOFF) for s in _training_set()]
    order = np.random.default_rng(0).permutation(len(graphs))
    max_nodes = max(g.n_node for g in graphs) * 3 + 1
    max_edges = max(g.n_edge for g in graphs) * 3
    batches = pack_graphs(graphs, order, 4, max_nodes, max_edges)
    np.testing.assert_array_equal(np.concatenate(batches), order)  # every graph once, in order
    for batch in batches:
        assert len(batch) <= 4
        assert sum(graphs[i].n_node for i in batch) + 1 <= max_nodes
        assert sum(graphs[i].n_edge for i in batch) <= max_edges
    with pytest.raises(ValueError, match="exceeds the batch budget"):
        pack_graphs(graphs, order, 4, 2, max_edges)


def test_bucket_sizes_lie_on_a_grid_just_above_the_request():
    from gnome_loop.models.graph import bucket

    assert [bucket(n) for n in (1, 17, 25, 33, 49, 100, 11475)] == [16, 24, 32, 48, 64, 128, 12288]
    for n in range(1, 5000, 7):
        size = bucket(n, per_octave=8)
        octave = 1 << (size.bit_length() - 1)
        assert size >= n and (size - octave) % (octave // 8) == 0
        assert size <= max(16, 1.125 * n)
    with pytest.raises(ValueError, match="powers of two"):
        bucket(33, per_octave=3)


def test_training_shape_holds_an_average_batch_with_little_padding():
    structures = [rocksalt(5.64), perovskite(), *_training_set()] * 3
    structures += [rocksalt(5.64).make_supercell([2, 1, 1], in_place=False), perovskite(4.1)]
    model = StructureEnsemble(members=1, width=8, steps=1, cutoff=CUTOFF, batch_size=8)
    features = model._features(structures)
    model._prepare(features, np.arange(len(features)))
    nodes, edges = model._train_shape
    average = 8 * np.mean([g.n_edge for g in features])
    assert average <= edges <= 1.125 * average
    assert nodes - 1 >= 8 * np.mean([g.n_node for g in features])
    batches = model._batches(features, np.zeros(len(features)), np.arange(len(features)), fixed=True)
    assert {(len(b.species), len(b.senders)) for b, _ in batches} == {(nodes, edges)}  # exactly that shape


def test_predictions_are_packed_into_few_shapes_and_equal_one_by_one_predictions():
    """Structures of 8 to 24 atoms in calls of every size: a few compiled shapes (each ~10 MB
    for the life of a screening worker), and the same numbers as predicting each alone."""
    model = StructureEnsemble(members=2, width=16, steps=2, cutoff=CUTOFF, epochs=1, batch_size=8)
    structures = _training_set()
    model.fit(structures, np.array([-0.01 * s.volume / len(s) for s in structures]))
    rng = np.random.default_rng(0)
    pool = []
    for repeat in range(1, 4):
        for structure in structures:
            scaled = structure * (repeat, 1, 1)
            scaled.apply_strain(rng.uniform(-0.05, 0.05, 3))
            pool.append(scaled)
    alone = np.concatenate([model.member_predictions([s]) for s in pool[:12]], axis=1)
    np.testing.assert_allclose(model.member_predictions(pool[:12]), alone, atol=1e-5)
    for size in (5, 17, 40, len(pool)):
        order = rng.permutation(len(pool))[:size]
        model.member_predictions([pool[i] for i in order])
    assert model._predict._cache_size() <= 6


def test_inference_batches_keep_to_the_edge_cap(monkeypatch):
    """Dense cells get fewer graphs a call, not a larger call: no batch has more edges
    than the cap (or than its one graph, where that is larger), and the numbers do not
    change."""
    import gnome_loop.models.ensemble as ensemble

    model = StructureEnsemble(members=2, width=16, steps=2, cutoff=CUTOFF, epochs=1, batch_size=8)
    structures = _training_set()
    model.fit(structures, np.array([-0.01 * s.volume / len(s) for s in structures]))
    pool = [s * (repeat, 1, 1) for repeat in (1, 2, 3) for s in structures]
    graphs = model._features(pool)
    uncapped = model.member_predictions(pool)
    monkeypatch.setattr(ensemble, "MAX_BATCH_EDGES", 300)
    monkeypatch.setattr(ensemble, "MAX_BATCH_EDGES_ACCELERATOR", 300)
    largest = max(g.n_edge for g in graphs)
    assert largest > 300 and sum(g.n_edge for g in graphs[:8]) > 600  # the cap binds
    chunks = list(model._inference_batches(graphs))
    assert sorted(i for chunk, _ in chunks for i in chunk) == list(range(len(pool)))
    for _, batch in chunks:
        assert len(batch.senders) <= max(512, 1 << int(np.ceil(np.log2(largest))))
    assert len(chunks) > len(pool) / 8
    np.testing.assert_allclose(model.member_predictions(pool), uncapped, atol=1e-5)


def test_inference_calls_are_closed_by_their_edges(monkeypatch):
    """Graph slots and the node budget follow the edge budget, not the training batch
    size, so the edges close a call: nearly every edge a call computes is a real one
    (a padding edge costs as much), and the numbers are those of one graph at a time."""
    import gnome_loop.models.ensemble as ensemble

    model = StructureEnsemble(members=2, width=16, steps=2, cutoff=CUTOFF, epochs=1, batch_size=4)
    structures = _training_set()
    model.fit(structures, np.array([-0.01 * s.volume / len(s) for s in structures]))
    pool = [s * (repeat, 1, 1) for repeat in (1, 2) for s in structures] * 3
    graphs = model._features(pool)
    monkeypatch.setattr(ensemble, "MAX_BATCH_EDGES", 2048)
    monkeypatch.setattr(ensemble, "MAX_BATCH_EDGES_ACCELERATOR", 2048)
    calls = list(model._inference_batches(graphs))
    assert len(calls) > 3 and sum(len(chunk) for chunk, _ in calls) == len(pool)
    assert max(len(chunk) for chunk, _ in calls) > model.settings["batch_size"]
    real = sum(g.n_edge for g in graphs)
    assert real / sum(len(batch.senders) for _, batch in calls) > 0.8
    alone = np.concatenate([model.member_predictions([s]) for s in pool[:6]], axis=1)
    np.testing.assert_allclose(model.member_predictions(pool)[:, :6], alone, atol=1e-5)


def test_graphs_without_edges_are_scored_in_calls_of_their_size():
    """Isolated atoms (cells wider than the cutoff) have no edges: their calls hold all of
    them, not a node budget scaled by a near-zero edge count."""
    model = StructureEnsemble(members=2, width=8, steps=1, cutoff=CUTOFF, epochs=1, batch_size=4)
    structures = _training_set()
    model.fit(structures, np.array([-0.01 * s.volume / len(s) for s in structures]))
    lonely = [Structure(Lattice.cubic(5.0 + 0.01 * i), ["Na"], [[0, 0, 0]]) for i in range(300)]
    graphs = model._features(lonely)
    assert all(g.n_edge == 0 for g in graphs)
    calls = list(model._inference_batches(graphs))
    assert len(calls) == 1 and len(calls[0][1].species) == 512 and len(calls[0][1].graph_mask) == 513
    together = model.member_predictions(lonely)
    np.testing.assert_allclose(together[:, :3], model.member_predictions(lonely[:3]), atol=1e-5)


def test_models_foresee_their_refusals():
    """Each model says in advance (`input_error`) why `predict` would refuse a structure,
    which `predict_each` uses to set such structures aside before the batch call."""
    train = [rocksalt(a) for a in (5.4, 5.6, 5.8)] + [perovskite(a) for a in (3.8, 3.9, 4.0)]
    energies = np.array([-3.5, -3.6, -3.55, -8.0, -8.1, -8.05])
    unseen = Structure(Lattice.cubic(3.0), ["Xe"], [[0, 0, 0]])
    crowded = rocksalt(0.8)  # 0.4 Å apart
    models = [LinearElementModel(), StructureEnsemble(members=2, width=8, steps=1, epochs=1, cutoff=CUTOFF),
              CompositionEnsemble(members=2, width=8, epochs=1)]
    for model in models:
        assert model.input_error(unseen) is None  # unfitted: predict() itself says why
        model.fit(train, energies)
        assert "Xe" in model.input_error(unseen) and model.input_error(train[0]) is None
        with pytest.raises(ValueError, match="Xe"):
            model.predict([unseen])
    assert "apart" in models[1].input_error(crowded)
    with pytest.raises(GraphError, match="apart"):
        models[1].predict([crowded])
    assert "more than 8 elements" in composition_input_error(Composition("LiBeBCNOFNaMg"))
    squeezed = rocksalt(1.2)  # 0.6 Å apart as given, 0.48 Å in the copy at half the volume
    augmented = StructureEnsemble(members=2, width=8, steps=1, epochs=1, cutoff=CUTOFF, volume_augmentation=[0.5])
    augmented.fit(train, energies)
    assert models[1].input_error(squeezed) is None and "volume" in augmented.input_error(squeezed)
    with pytest.raises(GraphError):
        augmented.predict([squeezed])


def test_graph_edges_are_every_neighbour_within_the_cutoff():
    """The edges, found by the same neighbour search that checks for close contacts, are
    pymatgen's neighbour list within the cutoff (images of an atom itself included)."""
    rng = np.random.default_rng(1)
    for n in (1, 3, 6):
        structure = Structure(Lattice.from_parameters(3.1, 4.2, 5.3, 70, 95, 110), ["Na"] * n, rng.random((n, 3)))
        if minimum_distance(structure) < 0.6:
            continue
        graph = crystal_graph(structure, CUTOFF)
        centers, points, _, distances = structure.get_neighbor_list(r=CUTOFF)
        expected = sorted(zip(centers.tolist(), points.tolist(), np.round(distances, 4).tolist()))
        found = sorted(zip(graph.receivers.tolist(), graph.senders.tolist(),
                           np.round(graph.distances.astype(float), 4).tolist()))
        assert found == expected
        assert list(graph.receivers) == sorted(graph.receivers)
        assert crystal_graph(structure, 0.4).n_edge == 0  # a cutoff below the contact limit: no pair that close
