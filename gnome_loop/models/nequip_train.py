"""Training NequIP ensembles on relaxation trajectories, predicting with them, and an
ASE calculator.

Data: every oracle result stores its relaxation (`OracleResult.trajectory`: energy,
forces, stress, cell and positions per ionic step); `frames_from_trajectory` turns
one into `Frame`s. Validation frames are whole trajectories (split by the id of the
entry's structure), so frames of one relaxation never sit on both sides.

Loss (per member): energy_weight × MSE of the energy per atom (eV/atom)² +
force_weight × MSE of the force components (eV/Å)² + stress_weight × MSE of the
virial per atom (stress × volume / atoms, eV/atom: the energy's own scale) on the
frames that have a stress. The defaults, 1, 10 and 1, weight forces up as
NequIP-style training does (a frame has 3N force labels but one energy, and forces
drive relaxations); the stress matters because many relaxations of symmetric
candidates move only the cell, with every force zero by symmetry.

Members are trained together in one program (`train.each_member`): each has its
own initialisation and its own data order (the batches are stacked along the member
axis), Adam with a cosine-decayed learning rate, and keeps its parameters of best
validation loss (early stopping with `patience` epochs). All batches of a run are
padded to one shape, so the train step and the evaluation compile once. The spread of
the members' forces is the force uncertainty (`force_uncertainty`).

Checkpoints are safe formats: `params.msgpack` (the members' stacked parameters),
`nequip.json` (config, members) and `model_card.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase.calculators.calculator import Calculator, all_changes
from flax import serialization
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.models.base import data_hash, read_model_card, write_model_card
from gnome_loop.models.graph import power_of_two
from gnome_loop.models.nequip import (NequIPBatch, NequIPConfig, _init_network, energy_forces_stress,
                                      fit_species_shift, init_params, nequip_batch)
from gnome_loop.models.train import OPTIMIZER, each_member, over_members
from gnome_loop.structures import structure_id

ARCHITECTURE = "nequip"
PARAMS_FILE = "params.msgpack"
SETTINGS_FILE = "nequip.json"


@dataclasses.dataclass(frozen=True)
class Frame:
    """One labelled ionic step: `source` names the trajectory (for the split)."""

    structure: Structure
    energy: float  # total, eV
    forces: np.ndarray  # (n_atoms, 3), eV/Å
    stress: np.ndarray | None  # (6,) Voigt, eV/Å³, ASE's sign
    source: str


def frames_from_trajectory(structure: Structure, trajectory: dict, every: int = 1) -> list[Frame]:
    """The frames of every `every`-th step of `trajectory` (`OracleResult.trajectory`
    format) and of its last step (the relaxed geometry), with the species of
    `structure` (the entry the trajectory belongs to)."""
    source = structure_id(structure)
    stresses = trajectory.get("stresses") or []
    n_steps = len(trajectory.get("energies", []))
    frames = []
    for step in sorted(set(range(0, n_steps, every)) | ({n_steps - 1} if n_steps else set())):
        frame_structure = Structure(Lattice(trajectory["cells"][step]), structure.species,
                                    trajectory["positions"][step], coords_are_cartesian=True)
        stress = np.asarray(stresses[step], float) if step < len(stresses) else None
        frames.append(Frame(frame_structure, float(trajectory["energies"][step]),
                            np.asarray(trajectory["forces"][step], float), stress, source))
    return frames


def training_frames(relaxations: Sequence[tuple[Structure, dict]], every: int = 1,
                    max_frames: int | None = None) -> list[Frame]:
    """The frames of many relaxations ((structure, trajectory) pairs), every `every`-th
    step of each and its last, thinned evenly to at most `max_frames`.

    Relaxed geometries (the last steps) take at most half of `max_frames`, or the room
    the other frames leave: a set of endpoints alone, where every force is near
    zero, would teach a potential nothing about the way down.
    """
    per_relaxation = [frames_from_trajectory(structure, trajectory, every) for structure, trajectory in relaxations]
    frames = [f for group in per_relaxation for f in group]
    if max_frames is None or len(frames) <= max_frames:
        return frames
    last = [group[-1] for group in per_relaxation if group]
    rest = [f for group in per_relaxation for f in group[:-1]]
    n_last = min(len(last), max(max_frames // 2, max_frames - len(rest)))
    return _evenly(last, n_last) + _evenly(rest, max_frames - n_last)


def _evenly(items: list, count: int) -> list:
    """`count` ≤ len(items) items spread evenly over `items`, first and last included."""
    if count <= 0:
        return []
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


class Targets(NamedTuple):
    """Labels padded to a batch's graph and node slots."""

    energies: np.ndarray  # (G,) total eV
    forces: np.ndarray  # (N, 3) eV/Å
    stresses: np.ndarray  # (G, 6) Voigt eV/Å³
    has_stress: np.ndarray  # (G,) 1.0 where the frame has a stress label


class Prediction(NamedTuple):
    """Every member's prediction: the last axis is the member."""

    energies: np.ndarray  # (n, members) total eV
    forces: list[np.ndarray]  # n × (n_atoms, 3, members) eV/Å
    stresses: np.ndarray  # (n, 6, members) Voigt eV/Å³


def _padded(frames: Sequence[Frame], config: NequIPConfig, shape: tuple[int, int, int]) -> tuple[NequIPBatch, Targets]:
    """`frames` in one batch of `shape` = (graphs, min nodes, min edges), with their labels."""
    batch = nequip_batch([f.structure for f in frames], config.cutoff, *shape)
    energies = np.zeros(batch.cells.shape[0], np.float32)
    forces = np.zeros(batch.positions.shape, np.float32)
    stresses = np.zeros((batch.cells.shape[0], 6), np.float32)
    has_stress = np.zeros(batch.cells.shape[0], np.float32)
    energies[:len(frames)] = [f.energy for f in frames]
    if frames:
        forces[:sum(len(f.structure) for f in frames)] = np.concatenate([f.forces for f in frames])
    for index, frame in enumerate(frames):
        if frame.stress is not None:
            stresses[index], has_stress[index] = frame.stress, 1.0
    return batch, Targets(energies, forces, stresses, has_stress)


def _stack(items: Sequence) -> object:
    """Stack pytrees along a new leading (member) axis."""
    return jax.tree.map(lambda *leaves: np.stack(leaves), *items)


def _loss(energies: jax.Array, forces: jax.Array, stresses: jax.Array, batch: NequIPBatch, targets: Targets,
          weights: jax.Array) -> jax.Array:
    """weights · (MSE(energy per atom), MSE(force components), MSE(virial per atom)) on
    the real graphs and atoms (the virial on frames with a stress)."""
    atoms = jnp.maximum(batch.n_node, 1.0)
    per_atom = (energies - targets.energies) / atoms
    energy_mse = jnp.sum(batch.graph_mask * per_atom**2) / jnp.maximum(jnp.sum(batch.graph_mask), 1.0)
    force_mse = (jnp.sum(batch.node_mask[:, None] * (forces - targets.forces) ** 2)
                 / jnp.maximum(3.0 * jnp.sum(batch.node_mask), 1.0))
    volumes = jnp.abs(jnp.linalg.det(batch.cells))
    virial = (stresses - targets.stresses) * (volumes / atoms)[:, None]
    stress_mse = (jnp.sum(targets.has_stress[:, None] * virial**2)
                  / jnp.maximum(6.0 * jnp.sum(targets.has_stress), 1.0))
    return weights[0] * energy_mse + weights[1] * force_mse + weights[2] * stress_mse


@jax.jit
def _member_losses(energies: jax.Array, forces: jax.Array, stresses: jax.Array, batch: NequIPBatch,
                   targets: Targets, weights: jax.Array) -> jax.Array:
    """Every member's `_loss` on one batch (M,), jitted: run eagerly, each of its
    operations would be a compiled program of its own per shape."""
    return jax.vmap(_loss, in_axes=(0, 0, 0, None, None, None))(energies, forces, stresses, batch, targets, weights)


@jax.jit
def train_step(params: dict, opt_state, config: NequIPConfig, batch: NequIPBatch, targets: Targets,
               learning_rate: jax.Array, weights: jax.Array):
    """One Adam step of every member on its own batch (all arguments but `config`,
    `learning_rate` and `weights` carry the member axis). Shift and scale stay fixed."""

    def member(params, opt_state, batch, targets):
        def loss(network):
            energies, forces, stresses = energy_forces_stress({**params, "params": network}, config, batch)
            return _loss(energies, forces, stresses, batch, targets, weights)

        value, grads = jax.value_and_grad(loss)(params["params"])
        directions, opt_state = OPTIMIZER.update(grads, opt_state, params["params"])
        network = jax.tree.map(lambda p, d: p - learning_rate * d, params["params"], directions)
        return {**params, "params": network}, opt_state, value

    return each_member(member)(params, opt_state, batch, targets)


@jax.jit
def ensemble_outputs(params: dict, config: NequIPConfig, batch: NequIPBatch):
    """Energies (M, G), forces (M, N, 3) and stresses (M, G, 6) of every member on one batch."""
    return over_members(lambda p: energy_forces_stress(p, config, batch))(params)


def split_frames(frames: Sequence[Frame], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation frames; whole trajectories (by `source`) go
    to validation, a seeded random `val_fraction` of them (none when there is one)."""
    sources = sorted({f.source for f in frames})
    n_val = min(int(round(val_fraction * len(sources))), len(sources) - 1)
    val_sources = set(np.random.default_rng(seed).permutation(sources)[:max(n_val, 0)])
    is_val = np.array([f.source in val_sources for f in frames], bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _batch_shape(nodes: np.ndarray, edges: np.ndarray, batch_size: int) -> tuple[int, int, int]:
    """(graphs, nodes, edges) that hold any `batch_size` of the frames with these node
    and edge counts: one shape for the whole run, one compile."""
    nodes, edges = np.sort(nodes)[::-1], np.sort(edges)[::-1]
    return (batch_size, power_of_two(int(nodes[:batch_size].sum()) + 1),
            power_of_two(max(int(edges[:batch_size].sum()), 1)))


def _evaluate(params: dict, config: NequIPConfig, frames: Sequence[Frame], shape: tuple[int, int, int],
              weights: np.ndarray) -> dict:
    """Every member's loss on `frames` and the ensemble mean's MAEs (meV), with the
    baselines of predicting zero forces and the species shift alone."""
    losses, energy_errors, force_errors, shift_errors, stress_errors = [], [], [], [], []
    for start in range(0, len(frames), shape[0]):
        chunk = frames[start:start + shape[0]]
        batch, targets = _padded(chunk, config, shape)
        energies, forces, stresses = ensemble_outputs(params, config, batch)
        member_loss = _member_losses(energies, forces, stresses, batch, targets, weights)
        losses.append(np.asarray(member_loss) * len(chunk))
        energies, forces, stresses = np.asarray(energies), np.asarray(forces), np.asarray(stresses)
        n, atoms = len(chunk), np.asarray(batch.n_node[:len(chunk)])
        stress_errors.append(np.abs(stresses.mean(0)[:n] - targets.stresses[:n])[targets.has_stress[:n] > 0].ravel())
        real = int(np.sum(batch.node_mask))
        energy_errors.append(np.abs(energies.mean(0)[:n] - targets.energies[:n]) / atoms)
        force_errors.append(np.abs(forces.mean(0)[:real] - targets.forces[:real]).ravel())
        shift = np.asarray(params["shift"][0])[batch.species[:real]]
        shift_energy = np.bincount(batch.node_graph[:real], shift, minlength=n)[:n]
        shift_errors.append(np.abs(shift_energy - targets.energies[:n]) / atoms)
    forces_true = np.concatenate([f.forces.ravel() for f in frames])
    return {"loss": np.sum(losses, axis=0) / len(frames),
            "energy_mae_meV_per_atom": 1e3 * float(np.mean(np.concatenate(energy_errors))),
            "force_mae_meV_per_A": 1e3 * float(np.mean(np.concatenate(force_errors))),
            "stress_mae_meV_per_A3": 1e3 * float(np.mean(np.concatenate(stress_errors)))
            if np.concatenate(stress_errors).size else None,
            "energy_mae_shift_only_meV_per_atom": 1e3 * float(np.mean(np.concatenate(shift_errors))),
            "force_mae_zero_meV_per_A": 1e3 * float(np.mean(np.abs(forces_true)))}


def average_neighbors(frames: Sequence[Frame], cutoff: float) -> float:
    """Mean number of neighbours within `cutoff` per atom: `NequIPConfig.avg_neighbors` for these data."""
    edges = sum(len(f.structure.get_neighbor_list(r=cutoff)[0]) for f in frames)
    return edges / max(sum(len(f.structure) for f in frames), 1)


def _energy_scale(frames: Sequence[Frame], shift: dict[int, float]) -> float:
    """The network's output scale: the RMS of the force components (NequIP's default),
    or the RMS of the per-atom energy residuals after the species shift when that is
    larger: trajectories of symmetric cells can have every force zero."""
    forces = float(np.sqrt(np.mean(np.concatenate([f.forces.ravel() for f in frames]) ** 2)))
    residuals = [(f.energy - sum(shift.get(site.specie.Z, 0.0) for site in f.structure)) / len(f.structure)
                 for f in frames]
    return max(forces, float(np.sqrt(np.mean(np.square(residuals))))) or 1.0


def train_nequip(frames: Sequence[Frame], config: NequIPConfig, members: int = 1, epochs: int = 100,
                 batch_size: int = 8, learning_rate: float = 5e-3, energy_weight: float = 1.0,
                 force_weight: float = 10.0, stress_weight: float = 1.0, seed: int = 0, val_fraction: float = 0.2,
                 patience: int = 20, final_lr_fraction: float = 0.05) -> tuple[dict, dict]:
    """Train an ensemble of `members` NequIPs on `frames`; returns the stacked
    parameters (leading member axis) and metrics on the validation trajectories
    (`energy_mae_meV_per_atom`, `force_mae_meV_per_A`, `stress_mae_meV_per_A3` of the
    ensemble mean, and the baselines `energy_mae_shift_only_meV_per_atom`,
    `force_mae_zero_meV_per_A`), with `species`, the atomic numbers trained on.

    The species shift is fitted on the training frames' energies; the scale is
    `_energy_scale`'s. `config.avg_neighbors` is used as given; the
    data's value is reported as the metric `avg_neighbors`.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("cannot train NequIP on no frames")
    train, val = split_frames(frames, val_fraction, seed)
    train_frames, val_frames = [frames[i] for i in train], [frames[i] for i in val]
    nodes = np.array([len(f.structure) for f in frames])
    edges = np.array([len(f.structure.get_neighbor_list(r=config.cutoff)[0]) for f in frames])
    shape = _batch_shape(nodes, edges, batch_size)
    shift = fit_species_shift([f.structure for f in train_frames], [f.energy for f in train_frames])
    scale = _energy_scale(train_frames, shift)
    sample, _ = _padded(train_frames[:1], config, shape)
    keys = jax.random.split(jax.random.PRNGKey(seed), members)
    params = _stack([init_params(config, key, sample, shift, scale) for key in keys])
    opt_state = jax.vmap(OPTIMIZER.init)(params["params"])
    weights = np.array([energy_weight, force_weight, stress_weight], np.float32)
    steps_per_epoch = -(-len(train) // batch_size)
    schedule = optax.cosine_decay_schedule(learning_rate, max(epochs * steps_per_epoch, 1),
                                           alpha=final_lr_fraction)
    rngs = [np.random.default_rng([seed, member]) for member in range(members)]

    best, best_loss, since_best, step = params, np.full(members, np.inf), 0, 0
    history: dict[str, list] = {"train_loss": [], "val_loss": []}
    for epoch in range(epochs):
        orders = [rng.permutation(len(train_frames)) for rng in rngs]
        losses = []
        for start in range(0, len(train_frames), batch_size):
            batch, targets = _stack([_padded([train_frames[i] for i in order[start:start + batch_size]], config,
                                             shape) for order in orders])
            params, opt_state, loss = train_step(params, opt_state, config, batch, targets,
                                                 schedule(step), weights)
            losses.append(np.asarray(loss))
            step += 1
        history["train_loss"].append(np.mean(losses, axis=0).tolist())
        if not val_frames:
            best = params
            continue
        val_loss = _evaluate(params, config, val_frames, shape, weights)["loss"]
        history["val_loss"].append(val_loss.tolist())
        improved = val_loss < best_loss
        best_loss = np.where(improved, val_loss, best_loss)
        best = jax.tree.map(lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                            params, best)
        since_best = 0 if improved.any() else since_best + 1
        if since_best >= patience:
            break

    metrics = {"n_train_frames": len(train_frames), "n_val_frames": len(val_frames), "epochs": len(history["train_loss"]),
               "members": members, "energy_weight": energy_weight, "force_weight": force_weight,
               "stress_weight": stress_weight,
               "avg_neighbors": float(edges[train].sum() / nodes[train].sum()),
               "species": sorted({site.specie.Z for f in train_frames for site in f.structure}),
               "history": history,
               "data_hash": data_hash([f.structure for f in frames],
                                      np.array([f.energy / len(f.structure) for f in frames]))}
    if val_frames:
        evaluation = _evaluate(best, config, val_frames, shape, weights)
        metrics.update({key: value for key, value in evaluation.items() if key != "loss"},
                       val_loss=evaluation["loss"].tolist())
    return best, metrics


def predict_nequip(params: dict, config: NequIPConfig, structures: Sequence[Structure],
                   batch_size: int = 16) -> Prediction:
    """Every member's energies, forces and stresses for `structures` (batches padded to
    powers of two of nodes and edges, so repeated calls reuse few compiled shapes)."""
    energies, forces, stresses = [], [], []
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start:start + batch_size])
        batch = nequip_batch(chunk, config.cutoff, batch_size)
        e, f, s = (np.moveaxis(np.asarray(x, float), 0, -1) for x in ensemble_outputs(params, config, batch))
        energies.append(e[:len(chunk)])
        stresses.append(s[:len(chunk)])
        ends = np.cumsum([len(structure) for structure in chunk])
        forces.extend(np.split(f[:ends[-1]], ends[:-1]))
    members = jax.tree.leaves(params)[0].shape[0]
    return Prediction(np.concatenate(energies) if energies else np.zeros((0, members)), forces,
                      np.concatenate(stresses) if stresses else np.zeros((0, 6, members)))


def force_uncertainty(forces: Sequence[np.ndarray]) -> np.ndarray:
    """Per structure, the largest over atoms of the members' force spread (eV/Å): the
    standard deviation of the force vector, sqrt(Σ_xyz var over members)."""
    return np.array([float(np.sqrt(np.var(f, axis=-1).sum(axis=-1)).max()) for f in forces])


def save_nequip(path: str | Path, params: dict, config: NequIPConfig, metrics: dict) -> None:
    """Write the ensemble into the directory `path`."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PARAMS_FILE).write_bytes(serialization.to_bytes(params))
    members = int(jax.tree.leaves(params)[0].shape[0])
    settings = {"config": dataclasses.asdict(config), "members": members}
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    write_model_card(directory, ARCHITECTURE, metrics.get("data_hash", ""), metrics)


def load_nequip(path: str | Path) -> tuple[dict, NequIPConfig, dict]:
    """Parameters, config and metrics that `save_nequip` wrote; checks that the
    parameters have the shapes the config gives (traced, not compiled)."""
    directory = Path(path)
    card = read_model_card(directory, architecture=ARCHITECTURE)
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    config = NequIPConfig(**settings["config"])
    params = jax.tree.map(jnp.asarray, serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes()))
    network = jax.eval_shape(functools.partial(_init_network, config), jax.random.PRNGKey(0),
                             nequip_batch([], config.cutoff, 1))["params"]
    expected = jax.tree.map(lambda x: (settings["members"],) + x.shape, network)
    if jax.tree.map(np.shape, params["params"]) != expected:
        raise ValueError(f"{directory}: parameters do not fit the config in {SETTINGS_FILE}")
    return params, config, card["metrics"]


class NequIPCalculator(Calculator):
    """ASE calculator: energy, forces and stress of a NequIP ensemble (the mean over
    members, or one `member`), from a checkpoint directory or stacked parameters."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, path_or_params: str | Path | dict, config: NequIPConfig | None = None,
                 member: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(path_or_params, dict):
            if config is None:
                raise ValueError("NequIPCalculator needs a config with parameters")
            self.params, self.config = path_or_params, config
        else:
            self.params, self.config, _ = load_nequip(path_or_params)
        self.member = member

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        prediction = predict_nequip(self.params, self.config, [AseAtomsAdaptor.get_structure(self.atoms)], 1)
        pick = (lambda x: x.mean(-1)) if self.member is None else (lambda x: x[..., self.member])
        energy = float(pick(prediction.energies[0]))
        self.results = {"energy": energy, "free_energy": energy, "forces": pick(prediction.forces[0]),
                        "stress": pick(prediction.stresses[0])}
