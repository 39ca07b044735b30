"""Pre-relaxation with a NequIP ensemble: the relaxer's neighbour list (built with a
skin, rebuilt only when stale) gives the same energies, forces and stresses as a
fresh NequIP batch; flags say why a candidate's relaxation is not trusted; the
checkpoint drives the ASE oracle through `calculator_args`; training frames keep
every relaxed geometry; padded shapes come from a small fixed set, so that rounds of
training and relaxing in one process stop compiling programs (issue 24: each holds
memory maps until the process dies of them).

Small random networks (seeded, two members) keep the compiles short.
"""

import contextlib
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.models.graph import power_of_two
from gnome_loop.models.nequip import NequIPConfig, init_params, nequip_batch
from gnome_loop.models.nequip_train import (Frame, average_neighbors, ensemble_outputs, save_nequip, train_nequip,
                                            training_frames)
from gnome_loop.oracle import make_oracle
from gnome_loop.prerelax import nequip_compute_factory, prerelax
from gnome_loop.relax import RelaxResult, fire_init, pad_structures

CONFIG = NequIPConfig(cutoff=3.5, irreps="8x0e + 4x1o + 2x2e", blocks=1, radial_hidden=16, avg_neighbors=20.0)


def cu_au(a: float = 3.7) -> Structure:
    return Structure(Lattice.cubic(a), ["Cu", "Au", "Cu", "Cu"],
                     [[0.0, 0.0, 0.0], [0.5, 0.52, 0.02], [0.47, 0.0, 0.5], [0.0, 0.5, 0.53]])


def nial() -> Structure:
    return Structure(Lattice.cubic(2.9), ["Ni", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def params():
    batch = nequip_batch([cu_au()], CONFIG.cutoff)
    members = [init_params(CONFIG, jax.random.PRNGKey(seed), batch, shift={28: -4.0, 13: -3.0, 29: -3.5, 79: -3.2},
                           scale=0.5) for seed in (0, 1)]
    return jax.tree.map(lambda *leaves: np.stack(leaves), *members)


def reference(params, structures):
    """Mean over members on a freshly built NequIP batch."""
    energies, forces, stresses = ensemble_outputs(params, CONFIG, nequip_batch(structures, CONFIG.cutoff))
    return np.asarray(energies).mean(0), np.asarray(forces).mean(0), np.asarray(stresses).mean(0)


def test_relaxer_potential_equals_a_fresh_batch_before_and_after_moves(params):
    structures = [cu_au(), nial()]
    batch = pad_structures(structures)
    compute = nequip_compute_factory(params, CONFIG)(batch)
    n = len(structures)
    atoms = sum(len(s) for s in structures)
    with jax.enable_x64(True):
        energies, forces, stresses = (np.asarray(x) for x in compute(batch.positions, batch.cells))
    e_ref, f_ref, s_ref = reference(params, structures)
    np.testing.assert_allclose(energies[:n], e_ref[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forces[:atoms], f_ref[:atoms], atol=1e-4)
    np.testing.assert_allclose(stresses[:n], s_ref[:n], atol=1e-5)

    # move atoms by 0.2 Å and strain the cells by 2 %: within the skin, the old list still holds every pair
    rng = np.random.default_rng(0)
    positions = batch.positions.copy()
    positions[:atoms] += rng.uniform(-0.2, 0.2, (atoms, 3))
    cells = batch.cells.copy()
    cells[:n] *= 1.02
    moved = [Structure(Lattice(cells[g]), s.species, positions[batch.node_graph == g], coords_are_cartesian=True)
             for g, s in enumerate(structures)]
    with jax.enable_x64(True):
        energies, forces, stresses = (np.asarray(x) for x in compute(positions, cells))
    e_ref, f_ref, s_ref = reference(params, moved)
    np.testing.assert_allclose(energies[:n], e_ref[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forces[:atoms], f_ref[:atoms], atol=1e-4)
    np.testing.assert_allclose(stresses[:n], s_ref[:n], atol=1e-5)


def test_neighbour_list_is_rebuilt_when_a_pair_may_cross_the_cutoff_and_only_then(params):
    # two atoms 5.1 Å apart along x in a 12 Å cell: beyond cutoff + skin (4.5 Å), not in the list
    structure = Structure(Lattice.cubic(12.0), ["Cu", "Au"], [[0.3, 0.5, 0.5], [0.725, 0.5, 0.5]])
    batch = pad_structures([structure])
    compute = nequip_compute_factory(params, CONFIG)(batch)
    with jax.enable_x64(True):
        compute(batch.positions, batch.cells)
        assert compute.neighbour_list["builds"] == 1
        # the cell follows a 1 % strain and the atoms with it: no pair can cross, no rebuild
        strain = np.diag([1.01, 1.0, 1.0])
        followed = batch.positions.copy()
        followed[:2] = batch.positions[:2] @ strain
        cells = batch.cells.copy()
        cells[0] = batch.cells[0] @ strain
        compute(followed, cells)
        assert compute.neighbour_list["builds"] == 1
        # the cell shrinks 40 % along x with the atoms held still in Cartesian space: their image
        # distance 7.2 − 5.1 = 2.1 Å is inside the 3.5 Å cutoff now, so the list must be rebuilt
        cells[0] = batch.cells[0] @ np.diag([0.6, 1.0, 1.0])
        energies, forces, _ = (np.asarray(x) for x in compute(batch.positions, cells))
    assert compute.neighbour_list["builds"] == 2
    moved = Structure(Lattice(cells[0]), structure.species, batch.positions[:2], coords_are_cartesian=True)
    e_ref, f_ref, _ = reference(params, [moved])
    assert abs(f_ref[:2]).max() > 1e-5  # the pair interacts (weakly: a small random network)
    np.testing.assert_allclose(energies[0], e_ref[0], rtol=1e-5)
    np.testing.assert_allclose(forces[:2], f_ref[:2], rtol=1e-3, atol=1e-7)


def test_prerelax_lowers_the_energy_and_flags_what_it_cannot_trust(params, monkeypatch):
    start = cu_au(3.9)
    (result,) = prerelax([start], params, CONFIG, fmax=1e-4, max_steps=40, max_force_std=1e6)
    assert result.flag == "" and result.structure is not None
    assert result.relax.steps > 5 and result.relax.energies[-1] < result.relax.energies[0]
    assert result.force_std is not None and result.force_std > 0  # two random members disagree

    (strict,) = prerelax([start], params, CONFIG, fmax=0.05, max_steps=40, max_force_std=1e-9)
    assert strict.flag.startswith("force uncertainty") and strict.structure is None
    assert strict.relax.structure is not None  # the relaxed geometry is kept for inspection, not used

    (unseen,) = prerelax([start], params, CONFIG, species={29})  # trained on Cu only: Au is unknown
    assert unseen.flag == "element(s) Au absent from the potential's training data" and unseen.relax is None

    exploded = RelaxResult(None, float("nan"), 3, False, "exploded", "atoms 0.3 Å apart", [1.0], [])
    monkeypatch.setattr("gnome_loop.prerelax.relax_batch", lambda structures, *a, **k: [exploded] * len(structures))
    (bad,) = prerelax([start], params, CONFIG)
    assert bad.flag == "exploded: atoms 0.3 Å apart" and bad.structure is None and bad.force_std is None


def test_checkpoint_drives_the_ase_oracle(params, tmp_path):
    save_nequip(tmp_path / "nequip", params, CONFIG, {})
    oracle = make_oracle({"kind": "ase", "calculator": "gnome_loop.models.nequip_train:NequIPCalculator",
                          "calculator_args": {"path_or_params": str(tmp_path / "nequip")},
                          "fmax": 0.05, "max_steps": 5, "relax_cell": False})
    result = oracle.relax(nial())
    e_ref, _, _ = reference(params, [nial()])
    assert result.ok and result.trajectory["energies"][0] == pytest.approx(float(e_ref[0]), abs=1e-5)


def test_training_frames_keep_every_relaxed_geometry():
    structure = nial()
    trajectories = []
    for n_steps in (7, 4, 30):
        trajectories.append((structure, {
            "energies": [-1.0 - 0.01 * i for i in range(n_steps)], "forces": [[[0.0] * 3] * 2] * n_steps,
            "stresses": [[0.0] * 6] * n_steps, "cells": [structure.lattice.matrix.tolist()] * n_steps,
            "positions": [structure.cart_coords.tolist()] * n_steps}))
    frames = training_frames(trajectories, every=3)
    assert [f.energy for f in frames[:3]] == pytest.approx([-1.0, -1.03, -1.06])  # steps 0, 3, 6 (the last)
    assert len(frames) == 3 + 2 + 11  # 29, the last of 30 steps, is kept beside 0, 3, ..., 27
    thinned = training_frames(trajectories, every=1, max_frames=8)
    assert len(thinned) == 8
    assert {-1.06, -1.03, -1.29} <= {round(f.energy, 2) for f in thinned}  # the three last steps

    # many short relaxations: their endpoints take half the frames, the way down the other half
    many = training_frames(trajectories[1:2] * 10, every=1, max_frames=8)
    assert [round(f.energy, 2) for f in many].count(-1.03) == 4 and len(many) == 8


@pytest.mark.slow
def test_campaign_trains_the_potential_and_oracle_jobs_start_from_prerelaxed_structures(tmp_path):
    import json

    import yaml

    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config
    from gnome_loop.structures import structure_from_json
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/ci_emt/config.yaml").read_text())
    data.update(rounds=1, model={"kind": "gnome", "members": 2, "width": 16, "epochs": 20, "patience": 10},
                prerelax={"kind": "nequip", "epochs": 3, "max_frames": 40, "shortlist": 12,
                                    "irreps": "8x0e + 4x1o + 2x2e", "blocks": 1, "max_steps": 30})
    campaign = Campaign.create(parse_config(data), tmp_path / "c")
    assert campaign.run().status == "done"
    round0, round1 = campaign.round_table()
    assert round0["prerelax"]["nequip_frames"] == 40 and (tmp_path / "c" / "models" / "r000" / "nequip").is_dir()
    assert round0["prerelax"]["nequip_force_mae"] > 0 and "nequip_frames" in round1["prerelax"]

    records = {r["id"]: json.loads(r["prerelax"]) for r in campaign.store.query(
        "SELECT id, prerelax FROM candidates WHERE round = 1 AND prerelax IS NOT NULL")}
    scored = campaign.store.query("SELECT id, pred_ehull FROM candidates WHERE round = 1 AND pred_ehull IS NOT NULL")
    assert len(records) == round1["prerelax"]["prerelaxed"] == min(12, len(scored))
    assert round1["prerelax"]["prerelax_flagged"] == sum(1 for r in records.values() if r["flag"])
    for job in campaign.store.jobs(1):
        started = Structure.from_dict(json.loads((tmp_path / "c" / job.workdir / "job.json").read_text())["structure"])
        record = records.get(job.candidate_id)
        if record and record["structure"]:
            expected = structure_from_json(record["structure"])
        else:
            expected = structure_from_json(campaign.store.candidate(job.candidate_id)["structure"])
        assert np.allclose(started.lattice.matrix, expected.lattice.matrix)
        assert np.allclose(started.cart_coords, expected.cart_coords)


#: The JAX event recorded once for every XLA program built (compiled, or loaded from the persistent cache).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting_programs():
    """A one-item list counting the XLA programs built inside the block: each is kept
    for the life of the process and holds about 230 memory maps on CPU (issue 24)."""
    count = [0]

    def listener(event: str, duration: float, **kwargs) -> None:
        count[0] += event == COMPILE_EVENT

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def memory_maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def test_padded_shapes_of_any_batch_come_from_a_small_fixed_set():
    rng = np.random.default_rng(0)
    cells = {n: Structure(Lattice.cubic(2.6 * n ** (1 / 3)), ["Cu"] * n, rng.uniform(0, 1, (n, 3)))
             for n in range(1, 33)}
    shapes = set()
    for _ in range(100):  # 1 to 16 structures of 1 to 32 atoms in a batch of 16
        state = fire_init(pad_structures([cells[n] for n in rng.integers(1, 33, rng.integers(1, 17))], n_graphs=16))
        shapes.add((len(state.positions), len(state.pair_i)))
    powers = {1 << k for k in range(4, 17)}
    assert {nodes for nodes, _ in shapes} <= {16, 32, 64, 128, 256, 512}
    assert {pairs for _, pairs in shapes} <= powers and len(shapes) <= 20
    assert {power_of_two(n) for n in range(1, 65537)} == powers  # 13 sizes for 1 to 65,536 edges
    assert all(n <= power_of_two(n) < max(2 * n, 17) for n in range(1, 5000))
    batch = nequip_batch([cu_au(), nial(), cu_au(3.9)], CONFIG.cutoff, 4)
    assert {len(batch.species), len(batch.senders)} <= powers


def test_a_new_avg_neighbors_reuses_the_compiled_programs(params):
    batch = nequip_batch([cu_au(), nial()], CONFIG.cutoff, 4)
    ensemble_outputs(params, CONFIG, batch)
    energies = []
    with counting_programs() as programs:
        for avg_neighbors in (7.0, 13.3, 41.9):  # measured anew on every round's data
            config = dataclasses.replace(CONFIG, avg_neighbors=avg_neighbors)
            energies.append(np.asarray(ensemble_outputs(params, config, batch)[0]))
    assert programs[0] == 0
    assert not np.allclose(energies[0], energies[1])  # the value is used, not baked in


def fcc_cell(atoms: int, seed: int, scale: float = 1.0) -> Structure:
    """A strained, rattled fcc Cu cell of 1, 2, 4 or 8 atoms, the same for the same `seed`."""
    rng = np.random.default_rng(seed)
    a = 3.7 * scale
    if atoms in (4, 8):
        cell = Structure(Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        cell.make_supercell([1, 1, atoms // 4])
    else:
        cell = Structure(Lattice([[a / 2, a / 2, 0], [0, a / 2, a / 2], [a / 2, 0, a / 2]]), ["Cu"], [[0, 0, 0]])
        cell.make_supercell([1, 1, atoms])
    cell = Structure(Lattice(cell.lattice.matrix @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3)))),
                     cell.species, cell.frac_coords)
    cell.perturb(0.1, min_distance=0.02, seed=seed)
    return cell


def emt_frame(structure: Structure, source: str) -> Frame:
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = EMT()
    return Frame(structure, float(atoms.get_potential_energy()), atoms.get_forces(), atoms.get_stress(), source)


@pytest.mark.slow
def test_rounds_of_training_and_relaxing_stop_compiling_programs_and_mapping_memory():
    """A campaign trains and relaxes round after round in one process. Every round brings
    more frames and a new measured `avg_neighbors`; after a warm-up of two rounds (the
    training batch shape settles once four of the largest frames exist) no round may
    build a new XLA program, and the process's memory maps stay where they were."""
    config = NequIPConfig(cutoff=3.5, irreps="4x0e + 2x1o", blocks=1, n_basis=4, radial_hidden=8)
    candidates = [fcc_cell(n, 100 + i) for i, n in enumerate((1, 2, 2, 4, 4, 8))]
    frames, programs, maps, averages = [], [], [], []
    with counting_programs() as count:
        for round_ in range(6):
            rng = np.random.default_rng(round_)
            cells = [fcc_cell(n, seed) for seed, n in enumerate((8, 8, 4, 4, 2, 1))]
            cells.append(fcc_cell(2, 50, scale=0.9 + 0.03 * round_))  # another density: another avg_neighbors
            for index, cell in enumerate(cells):
                for site in np.flatnonzero(rng.random(len(cell)) < 0.3):
                    cell.replace(int(site), "Au")
                frames.append(emt_frame(cell, f"{round_}-{index}"))
            config = dataclasses.replace(config, avg_neighbors=average_neighbors(frames, config.cutoff))
            trained, _ = train_nequip(frames, config, members=2, epochs=2, batch_size=4, seed=round_)
            results = prerelax(candidates, trained, config, max_steps=5, batch_size=4, max_force_std=1e9)
            assert all(r.relax is not None for r in results)
            programs.append(count[0])
            maps.append(memory_maps())
            averages.append(config.avg_neighbors)
    assert len(set(averages)) == len(averages)  # every round's config differs
    assert programs[2:] == [programs[1]] * 4, programs
    assert max(maps[2:]) <= maps[1] + 100, maps  # one more program would add about 230
