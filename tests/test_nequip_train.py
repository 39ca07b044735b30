"""NequIP training on relaxation trajectories: it learns EMT forces and energies
beyond the trivial baselines, ensemble members differ, checkpoints round-trip, and
the ASE calculator gives the model's energy with forces that are its gradient.

The data are eight short EMT + FIRE relaxations (the ASE oracle, so trajectories are
in `OracleResult` format) of rattled and strained 2–4 atom Cu/Au cells. One small
2-member ensemble is trained once for the module (one compile of the train step).
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.models.nequip import NequIPConfig
from gnome_loop.models.nequip_train import (NequIPCalculator, force_uncertainty, frames_from_trajectory,
                                            load_nequip, predict_nequip, save_nequip, train_nequip)
from gnome_loop.oracle.ase_relax import AseRelaxOracle

# training a small ensemble takes one to two minutes on 2 cores: the slow suite runs it
pytestmark = pytest.mark.slow

CONFIG = NequIPConfig(cutoff=4.5, irreps="8x0e + 4x1o", blocks=2, n_basis=6, radial_hidden=16, avg_neighbors=40.0)


def cells() -> list[Structure]:
    """Rattled, strained fcc-based Cu/Au cells of 2 and 4 atoms, two of each composition."""
    rng = np.random.default_rng(3)
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    out = []
    for species, a in 2 * [(["Cu"] * 4, 3.61), (["Cu", "Cu", "Cu", "Au"], 3.75), (["Cu", "Au"], 3.8),
                           (["Au", "Au"], 4.08)]:
        if len(species) == 2:  # a body-centred tetragonal cell of fcc
            lattice, coords = np.diag([a / np.sqrt(2), a / np.sqrt(2), a]), [[0, 0, 0], [0.5, 0.5, 0.5]]
        else:
            lattice, coords = a * np.eye(3), fcc
        strain = np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3))
        structure = Structure(Lattice(lattice @ strain), species, coords)
        structure.perturb(0.15, min_distance=0.05, seed=int(rng.integers(1 << 30)))
        out.append(structure)
    return out


@pytest.fixture(scope="module")
def frames():
    oracle = AseRelaxOracle("emt", fmax=0.01, max_steps=10, relax_cell=True)
    out = []
    for structure in cells():
        result = oracle.relax(structure)
        out.extend(frames_from_trajectory(structure, result.trajectory))
    return out


@pytest.fixture(scope="module")
def trained(frames):
    # Energy weighted up from the default 1 (per-atom MSE, eV²) against forces' 10: with
    # 66 training frames, whose energies differ by tens of meV/atom, the default leaves
    # the energy term ~100× smaller than the force term and energies barely move.
    return train_nequip(frames, CONFIG, members=2, epochs=30, batch_size=8, learning_rate=1e-2,
                        energy_weight=100.0, val_fraction=0.25, patience=30, seed=0)


def test_frames_from_trajectory(frames):
    assert len(frames) == 8 * 11  # 10 FIRE steps and the initial one
    first = frames[0]
    assert first.forces.shape == (4, 3) and first.stress.shape == (6,)
    assert len({f.source for f in frames}) == 8
    atoms = AseAtomsAdaptor.get_atoms(frames[3].structure)
    atoms.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(frames[3].energy, abs=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), frames[3].forces, atol=1e-8)


def test_learns_energies_and_forces(trained):
    _, metrics = trained
    print({k: v for k, v in metrics.items() if k != "history"})
    assert metrics["n_val_frames"] == 2 * 11  # two whole trajectories
    assert metrics["force_mae_meV_per_A"] < 0.3 * metrics["force_mae_zero_meV_per_A"]
    assert metrics["energy_mae_meV_per_atom"] < 0.7 * metrics["energy_mae_shift_only_meV_per_atom"]


def test_ensemble_members_differ(trained, frames):
    params, _ = trained
    leaves = [np.asarray(x) for x in jax.tree.leaves(params["params"])]
    assert all(leaf.shape[0] == 2 for leaf in leaves)
    assert any(not np.allclose(leaf[0], leaf[1]) for leaf in leaves)
    prediction = predict_nequip(params, CONFIG, [f.structure for f in frames[::11]])
    assert prediction.energies.shape == (8, 2) and prediction.forces[0].shape == (4, 3, 2)
    spread = force_uncertainty(prediction.forces)
    assert spread.shape == (8,) and np.all(np.isfinite(spread)) and np.all(spread > 0)


def test_save_load_round_trip(trained, frames, tmp_path):
    params, metrics = trained
    save_nequip(tmp_path / "model", params, CONFIG, metrics)
    loaded, config, loaded_metrics = load_nequip(tmp_path / "model")
    assert config == CONFIG
    assert loaded_metrics["force_mae_meV_per_A"] == metrics["force_mae_meV_per_A"]
    structures = [f.structure for f in frames[::11]]
    before, after = predict_nequip(params, CONFIG, structures), predict_nequip(loaded, config, structures)
    np.testing.assert_array_equal(before.energies, after.energies)
    for a, b in zip(before.forces, after.forces):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="do not fit"):
        (tmp_path / "model" / "nequip.json").write_text(
            json.dumps({"config": dataclasses.asdict(dataclasses.replace(CONFIG, blocks=3)),
                                      "members": 2}))
        load_nequip(tmp_path / "model")


def test_calculator_matches_prediction_and_gradient(trained, frames):
    params, _ = trained
    structure = frames[2 * 11 + 4].structure  # Cu3Au, mid-relaxation
    calculator = NequIPCalculator(params, CONFIG)
    assert isinstance(calculator, Calculator)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    prediction = predict_nequip(params, CONFIG, [structure], batch_size=1)
    assert atoms.get_potential_energy() == pytest.approx(prediction.energies[0].mean(), abs=1e-5)
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, prediction.forces[0].mean(-1), atol=1e-5)
    assert atoms.get_stress().shape == (6,)

    step, numerical = 1e-3, np.zeros_like(forces)
    for atom in range(len(atoms)):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[atom, axis] += sign * step
                displaced.calc = calculator
                energies.append(displaced.get_potential_energy())
            numerical[atom, axis] = -(energies[0] - energies[1]) / (2 * step)
    # float32: round-off of the energy differences ~1e-7 × |E| / step
    np.testing.assert_allclose(forces, numerical, atol=5e-3 + 1e-2 * np.abs(forces).max())

    one = NequIPCalculator(params, CONFIG, member=1)
    atoms.calc = one
    assert atoms.get_potential_energy() == pytest.approx(prediction.energies[0, 1], abs=1e-5)
