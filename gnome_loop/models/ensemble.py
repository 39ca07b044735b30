"""Ensembles of GNoME networks as energy models for the campaign.

The target is the energy per atom as a residual over a per-element linear
reference, standardised. K members are trained together in one compiled program
(`train.over_members`); the prediction is the median over members and the
uncertainty their interquartile range (the standard deviation below 4 members).
Validation is GNoME's split by an MD5 hash of the reduced formula.

Checkpoints are safe formats only: `params.msgpack` (flax serialisation of the
stacked parameters), `ensemble.json` (settings, reference, standardisation) and
`model_card.json`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import serialization
from pymatgen.core import Structure
from scipy.stats import spearmanr

from gnome_loop.models.base import data_hash, read_model_card, write_model_card
from gnome_loop.models.composition import CompositionModel, batch_compositions, composition_input_error
from gnome_loop.models.gnome import StructureGNN
from gnome_loop.models.graph import (average_coordination, batch_graphs, bucket, crystal_graph,
                                     graph_input_error, pack_graphs, power_of_two)
from gnome_loop.models.linear import LinearElementModel
from gnome_loop.models.split import split_indices
from gnome_loop.models.train import (TrainSettings, TrainState, finished, init_ensemble, initial_state,
                                     load_train_state, make_predict, save_train_state, train_ensemble)
from gnome_loop.structures import MIN_DISTANCE, shortest_contact

PARAMS_FILE = "params.msgpack"
SETTINGS_FILE = "ensemble.json"
#: Batches hold up to this multiple of an average batch's nodes (in inference, of the
#: nodes that come with the edge budget).
PACKING_SLACK = 1.1
#: Sizes an octave of the training batch shape's grid (`graph.bucket`): one shape is
#: compiled per training run, so a fine grid costs no compilation and saves padding. On
#: MP structures of up to 80 atoms, batches of 64, real edges went from 76 % of the
#: padded ones (2 sizes an octave, 1.1 × the average edges) to 90 % (docs/performance.md).
TRAIN_GRID = 8
#: Edges of one inference call on a CPU, unless a single graph has more: the activations
#: of a call grow with its edges (about 4 kB an edge at 4 members of width 64), so dense
#: cells get fewer graphs a call rather than a larger call. A CPU scores as many
#: structures a second at 64 graphs a call as at 256 (docs/performance.md).
MAX_BATCH_EDGES = 16384
#: The same on an accelerator, which is busy only with large calls: on an H200, calls of
#: 1,024 MP-20 graphs (~200,000 edges) scored 344,000 structures/s, calls of 64 graphs
#: 75,000 (experiments/results/profile_gnome_h200.json).
MAX_BATCH_EDGES_ACCELERATOR = 262144
#: Settings that fix a network's shape: a trained ensemble fine-tunes only into the same ones.
ARCHITECTURE = ("members", "width", "steps", "cutoff")
#: How strongly fine-tuning keeps each per-element reference at its prior, in pure-element
#: samples' worth of evidence: an element met only in a few compounds stays near it.
REFERENCE_PRIOR_WEIGHT = 1.0


class GNNEnsemble:
    """Shared machinery; `StructureEnsemble` and `CompositionEnsemble` say what a sample is."""

    name = "gnn-ensemble"

    def __init__(self, members: int = 4, width: int = 64, steps: int = 3, cutoff: float = 4.0,
                 epochs: int = 300, batch_size: int = 32, learning_rate: float = 5e-4, patience: int = 60,
                 seed: int = 0, volume_augmentation: Sequence[float] = ()) -> None:
        self.settings = {"members": members, "width": width, "steps": steps, "cutoff": cutoff, "epochs": epochs,
                         "batch_size": batch_size, "learning_rate": learning_rate, "patience": patience,
                         "seed": seed, "volume_augmentation": [float(v) for v in volume_augmentation]}
        self.reference = LinearElementModel()
        self.shift, self.scale = 0.0, 1.0
        self.avg_coordination = 10.0
        self.params = None
        self.metrics: dict = {}
        self.data_hash = ""
        self._predict = None

    # --- what a sample is (overridden) -------------------------------------------------
    def _module(self):
        raise NotImplementedError

    def _features(self, structures: Sequence[Structure]) -> list:
        raise NotImplementedError

    def _sample_error(self, structure: Structure) -> str | None:
        """Why `structure` cannot be a sample (none by default)."""
        return None

    def _batch(self, features: list, fixed: bool = False):
        """One padded batch; `fixed` pads to the one training shape (one compile per fit)."""
        raise NotImplementedError

    # --- batching ------------------------------------------------------------------------
    def _chunks(self, features: list, order: np.ndarray, fixed: bool) -> list[np.ndarray]:
        """The samples of each batch, in `order`: `batch_size` at a time by default."""
        size = self.settings["batch_size"]
        return [order[start:start + size] for start in range(0, len(order), size)]

    def _batches(self, features: list, targets: np.ndarray | None, order: np.ndarray, fixed: bool = False):
        out = []
        for chunk in self._chunks(features, order, fixed):
            padded = np.zeros(self.settings["batch_size"] + 1, np.float32)
            if targets is not None:
                padded[:len(chunk)] = targets[chunk]
            out.append((self._batch([features[i] for i in chunk], fixed), padded))
        return out

    # --- EnergyModel protocol ------------------------------------------------------------
    def fit(self, structures: list[Structure], energies_per_atom: np.ndarray,
            formulas: list[str] | None = None, init: "GNNEnsemble | None" = None,
            checkpoint: Path | None = None, checkpoint_seconds: float = 120.0,
            on_epoch: Callable[[TrainState], None] = lambda state: None, seconds: float | None = None) -> dict:
        """Train on the formula-hash training split with early stopping on the rest.

        `init`, a trained ensemble of the same architecture, is fine-tuned instead of
        starting from random members: its network and standardisation are kept, and
        the per-element reference is refitted on these data against what its network
        predicts, so another energy scale (formation vs total energies, DFT vs an ML
        potential) moves the per-element terms, not the network. With `checkpoint`,
        the training state is saved there every `checkpoint_seconds` and at the end,
        and a run that finds it resumes where it stopped (same data and settings only).
        With `seconds`, no epoch starts after that long: the model is then the best so
        far, and `metrics["finished"]` is False until a later run completes it.
        """
        if not structures:
            raise ValueError("cannot fit a model on no structures")
        y = np.asarray(energies_per_atom, dtype=float)
        formulas = formulas or [s.composition.reduced_formula for s in structures]
        train, val = split_indices(formulas)
        features = self._features(structures)
        # The per-element reference is fitted on all data: a handful of numbers, and it
        # makes every element of the data predictable (validation MAE is then very
        # slightly optimistic; the network itself never sees validation targets).
        if init is None:
            self.reference.fit(structures, y, formulas)
            residual = y - self.reference.predict(structures)[0]
            self.shift = float(np.mean(residual[train]))
            self.scale = float(np.std(residual[train])) or 1.0
        else:
            self._adopt(init)
            without_network = y - np.median(self._network_energies(features), axis=0)
            self.reference.fit(structures, without_network, formulas, prior=reference_prior(
                init.reference, structures, without_network), prior_weight=REFERENCE_PRIOR_WEIGHT)
            residual = y - self.reference.predict(structures)[0]
        targets = ((residual - self.shift) / self.scale).astype(np.float32)
        self._prepare(features, train, constants=init is None)
        module = self._module()
        settings = TrainSettings(members=self.settings["members"], epochs=self.settings["epochs"],
                                 learning_rate=self.settings["learning_rate"], patience=self.settings["patience"],
                                 seed=self.settings["seed"])
        self.data_hash = data_hash(structures, y)
        state = initial_state(module, self._sample_batch(), settings, init.params) if init is not None else None
        meta = {"architecture": self.name, "data_hash": self.data_hash, "settings": self.settings,
                "init": init.data_hash if init is not None else None}
        if checkpoint is not None and Path(checkpoint).exists():
            state, saved = load_train_state(checkpoint, state or initial_state(module, self._sample_batch(), settings))
            if saved != meta:
                raise ValueError(f"{checkpoint} is the checkpoint of another training run (other data, settings "
                                 "or starting model); delete it or give another path")
        saved_at = [time.monotonic()]

        def after_epoch(state: TrainState) -> None:
            if checkpoint is not None and time.monotonic() - saved_at[0] >= checkpoint_seconds:
                save_train_state(checkpoint, state, meta)
                saved_at[0] = time.monotonic()
            on_epoch(state)

        def shuffled(epoch: int) -> list:
            order = np.random.default_rng([self.settings["seed"], epoch]).permutation(train)
            return self._batches(features, targets, order, fixed=True)

        val_batches = self._batches(features, targets, val) if len(val) else []
        deadline = time.monotonic() + seconds if seconds is not None else None
        state = train_ensemble(module, shuffled, val_batches, settings, state, after_epoch, deadline)
        if checkpoint is not None and state.epoch > 0:
            save_train_state(checkpoint, state, meta)
        self.params, self._predict = state.best, make_predict(module)
        self.metrics = {"n_train": len(train), "n_val": len(val), "epochs": state.epoch,
                        "finished": finished(state, settings), "val_mae": None, "spread_error_spearman": None,
                        "fine_tuned_from": init.data_hash if init is not None else None}
        if len(val):  # at the given geometry: volume augmentation would bias the error low
            mean, spread = median_and_spread(GNNEnsemble.member_predictions(self, [structures[i] for i in val]))
            errors = np.abs(mean - y[val])
            self.metrics["val_mae"] = float(np.mean(errors))
            if len(val) > 2 and np.ptp(spread) > 0:
                self.metrics["spread_error_spearman"] = float(spearmanr(spread, errors).statistic)
        return self.metrics

    def _adopt(self, init: "GNNEnsemble") -> None:
        """Take the network, its standardisation and its data-set constants from `init`;
        ValueError when its architecture differs from this ensemble's settings."""
        if type(init) is not type(self) or any(init.settings[k] != self.settings[k] for k in ARCHITECTURE):
            theirs = ", ".join(f"{k} {init.settings.get(k)}" for k in ARCHITECTURE)
            raise ValueError(f"cannot fine-tune a {init.name} ({theirs}) as a {self.name} with "
                             + ", ".join(f"{k} {self.settings[k]}" for k in ARCHITECTURE))
        if init.params is None:
            raise ValueError(f"cannot fine-tune from an untrained {init.name}")
        self.params, self.shift, self.scale = init.params, init.shift, init.scale
        self.avg_coordination, self._predict = init.avg_coordination, init._predict

    def _prepare(self, features: list, train: np.ndarray, constants: bool = True) -> None:
        """The training batch shape; with `constants`, data-set constants of the module too
        (a fine-tuned network keeps those it was trained with)."""

    def _network_energies(self, features: list) -> np.ndarray:
        """What the network adds to the per-element reference, eV/atom: (members, samples)."""
        if self.params is None:
            raise ValueError(f"{self.name} is not trained: call fit() or load() first")
        raw = np.zeros((self.settings["members"], len(features)))
        for chunk, batch in self._inference_batches(features):
            raw[:, chunk] = np.asarray(self._predict(self.params, batch))[:, :len(chunk)]
        return raw * self.scale + self.shift

    def member_predictions(self, structures: Sequence[Structure]) -> np.ndarray:
        """Energy per atom from every member: shape (members, structures)."""
        if self.params is None:
            raise ValueError(f"{self.name} is not trained: call fit() or load() first")
        base = self.reference.predict(list(structures))[0]
        return self._network_energies(self._features(structures)) + base[None, :]

    def _inference_batches(self, features: list) -> Iterator[tuple[np.ndarray, object]]:
        """(indices, padded batch) for prediction: `batch_size` samples at a time by default."""
        size = self.settings["batch_size"]
        for start in range(0, len(features), size):
            chunk = np.arange(start, min(start + size, len(features)))
            yield chunk, self._batch([features[i] for i in chunk])

    def input_error(self, structure: Structure) -> str | None:
        """Why `structure` cannot be predicted (an element the linear reference never saw,
        or a structure that cannot be a sample), or None."""
        return self.reference.input_error(structure) or self._sample_error(structure)

    def predict(self, structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
        """Median energy per atom over members and its spread (IQR, or std below 4 members).

        Raises ValueError naming the reason for a structure the network cannot take.
        """
        return median_and_spread(self.member_predictions(structures))

    def first_members(self, count: int) -> "GNNEnsemble":
        """The same model with only its first `count` members: a cheaper, rougher filter
        (the screening cascade's first stage); its parameters are a slice of these."""
        if not 1 <= count <= self.settings["members"] or self.params is None:
            raise ValueError(f"{self.name}: cannot take {count} of {self.settings['members']} trained members")
        part = copy.copy(self)
        part.settings = {**self.settings, "members": count}
        part.params = jax.tree.map(lambda leaf: leaf[:count], self.params)
        return part

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PARAMS_FILE).write_bytes(serialization.to_bytes(self.params))
        state = {"settings": self.settings, "shift": self.shift, "scale": self.scale,
                 "avg_coordination": self.avg_coordination,
                 "reference": {"elements": self.reference.elements, "mu": self.reference.mu.tolist(),
                               "residual_std": self.reference.residual_std}}
        (directory / SETTINGS_FILE).write_text(json.dumps(state, indent=2) + "\n")
        write_model_card(directory, self.name, self.data_hash, {**self.metrics, "settings": self.settings})

    @classmethod
    def load(cls, directory: Path) -> "GNNEnsemble":
        card = read_model_card(directory, architecture=cls.name)
        state = json.loads((Path(directory) / SETTINGS_FILE).read_text())
        model = cls(**state["settings"])
        model.shift, model.scale = state["shift"], state["scale"]
        model.avg_coordination = state["avg_coordination"]
        model.reference.elements = state["reference"]["elements"]
        model.reference.mu = np.array(state["reference"]["mu"])
        model.reference.residual_std = state["reference"]["residual_std"]
        model.metrics, model.data_hash = card["metrics"], card["data_hash"]
        module = model._module()
        # the parameters' shapes only: running the initialisation op by op took 4 s
        template = jax.eval_shape(lambda: init_ensemble(module, model._sample_batch(), model.settings["members"], 0))
        try:
            params = serialization.from_bytes(template, (Path(directory) / PARAMS_FILE).read_bytes())
            same = jax.tree.map(np.shape, params) == jax.tree.map(np.shape, template)
        except (ValueError, KeyError, TypeError) as error:
            params, same = None, str(error)
        if same is not True:
            raise ValueError(f"{directory}: parameters do not fit the {cls.name} settings in {SETTINGS_FILE}"
                             + (f" ({same})" if same else ""))
        model.params = params
        model._predict = make_predict(module)
        return model

    def _sample_batch(self):
        raise NotImplementedError


def reference_prior(pretrained: LinearElementModel, structures: Sequence[Structure],
                    without_network: np.ndarray) -> dict[str, float]:
    """Each element's per-element reference before fine-tuning sees the compounds: from
    its lowest pure-element sample where the data hold one (this pins a new energy scale:
    a total energy per atom, an ML potential's offsets), else the pretrained one."""
    terminals: dict[str, float] = {}
    for structure, energy in zip(structures, without_network):
        if len(structure.composition.elements) == 1:
            element = structure.composition.elements[0].symbol
            terminals[element] = min(float(energy), terminals.get(element, np.inf))
    return {**dict(zip(pretrained.elements, pretrained.mu.tolist())), **terminals}


def median_and_spread(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over the member axis and the interquartile range (std below 4 members)."""
    median = np.median(members, axis=0)
    if members.shape[0] >= 4:
        spread = np.percentile(members, 75, axis=0) - np.percentile(members, 25, axis=0)
    else:
        spread = np.std(members, axis=0)
    return median, spread


class StructureEnsemble(GNNEnsemble):
    """Ensemble of GNoME structure GNNs (crystal graphs within `cutoff`)."""

    name = "gnome-structure-ensemble"

    def _module(self) -> StructureGNN:
        return StructureGNN(width=self.settings["width"], steps=self.settings["steps"],
                            cutoff=self.settings["cutoff"], avg_coordination=self.avg_coordination)

    def _features(self, structures):
        return [crystal_graph(s, self.settings["cutoff"]) for s in structures]

    def _sample_error(self, structure):
        """`graph_input_error`, and, with volume augmentation, atoms too close in the most
        compressed copy (its distances shrink by the cube root of the factor)."""
        error = graph_input_error(structure)
        factor = min([1.0, *self.settings["volume_augmentation"]])
        shrink = factor ** (1 / 3)
        if error is None and factor < 1.0 and shortest_contact(structure, MIN_DISTANCE / shrink) * shrink < MIN_DISTANCE:
            error = f"atoms closer than {MIN_DISTANCE} Å in the copy at {factor} of the volume"
        return error

    def _batch(self, features, fixed=False):
        nodes, edges = self._train_shape if fixed else (0, 0)
        return batch_graphs(features, self.settings["batch_size"], self.settings["cutoff"], nodes, edges)

    def member_predictions(self, structures: Sequence[Structure]) -> np.ndarray:
        """Energy per atom from every member; with `volume_augmentation` each member's
        lowest energy over the cell as given and rescaled to each listed volume factor.

        Test-time augmentation as in GNoME's structural filter: unrelaxed substitutions
        often sit at the wrong volume, and the relaxation will find the better one.
        """
        energies = super().member_predictions(structures)
        for factor in self.settings["volume_augmentation"]:
            scaled = [s.copy() for s in structures]
            for structure in scaled:
                structure.scale_lattice(structure.volume * factor)
            energies = np.minimum(energies, super().member_predictions(scaled))
        return energies

    def _inference_batches(self, features):
        """Graphs packed, in order, into calls of one padded shape filled to an edge
        budget: the graphs' edges up to MAX_BATCH_EDGES (MAX_BATCH_EDGES_ACCELERATOR on a
        GPU), never less than the largest graph, rounded up to a power of two. Padding
        edges cost as much as real ones, so the node budget follows the edges with slack
        and the graph slots the nodes, and the edges close a call (padding nodes and
        slots cost little). Every new shape is a compiled program of about 10 MB kept for the life
        of the process: a worker screening millions of candidates of every size compiles
        a handful this way, not one per bucket pair."""
        if not features:
            return
        cutoff = self.settings["cutoff"]
        nodes = np.array([g.n_node for g in features])
        edges = np.array([g.n_edge for g in features])
        cap = MAX_BATCH_EDGES if jax.default_backend() == "cpu" else MAX_BATCH_EDGES_ACCELERATOR
        max_edges = power_of_two(max(min(edges.sum(), cap), edges.max(), 1))
        # nodes in proportion to the edges, with slack; at most all of them (graphs without
        # edges: isolated atoms) and at most as many as the edge cap
        nodes_per_edge = nodes.sum() / max(edges.sum(), 1)
        wanted = min(PACKING_SLACK * max_edges * nodes_per_edge, nodes.sum(), cap)
        max_nodes = power_of_two(max(wanted, nodes.max()) + 1)
        slots = min(power_of_two(PACKING_SLACK * wanted / nodes.mean()), max_nodes)
        for chunk in pack_graphs(features, np.arange(len(features)), slots, max_nodes, max_edges):
            yield chunk, batch_graphs([features[i] for i in chunk], slots, cutoff, max_nodes, max_edges)

    def _chunks(self, features, order, fixed):
        if not fixed:
            return super()._chunks(features, order, fixed)
        return pack_graphs(features, order, self.settings["batch_size"], *self._train_shape)

    def _prepare(self, features, train, constants=True):
        graphs = [features[i] for i in train]
        if constants:
            self.avg_coordination = average_coordination(graphs)
        # Training batches are packed into one shape, never less than the largest single
        # graph: an average batch's edges rounded up on a grid of TRAIN_GRID sizes an
        # octave (at most 12.5 % over), and PACKING_SLACK times its nodes (padding nodes
        # cost little), so the edges close a batch and padding edges, which cost as much
        # as real ones, stay few.
        size = self.settings["batch_size"]
        nodes = np.array([g.n_node for g in graphs])
        edges = np.array([g.n_edge for g in graphs])
        self._train_shape = (
            bucket(max(PACKING_SLACK * size * nodes.mean(), nodes.max()) + 1, per_octave=TRAIN_GRID),
            bucket(max(size * edges.mean(), edges.max(), 1), per_octave=TRAIN_GRID))

    def _sample_batch(self):
        return batch_graphs([], self.settings["batch_size"], self.settings["cutoff"])


class CompositionEnsemble(GNNEnsemble):
    """Ensemble of GNoME composition models (deep sets over formulas)."""

    name = "gnome-composition-ensemble"

    def _module(self) -> CompositionModel:
        return CompositionModel(width=self.settings["width"])

    def _features(self, structures):
        return [s.composition for s in structures]

    def _sample_error(self, structure):
        return composition_input_error(structure.composition)

    def _batch(self, features, fixed=False):
        return batch_compositions(features, self.settings["batch_size"])

    def _sample_batch(self):
        return batch_compositions([], self.settings["batch_size"])

