"""Flow matching for crystal structure prediction: given a composition, a structure
(FlowMM: Miller et al., ICML 2024; DiffCSP: Jiao et al., NeurIPS 2023).

A crystal of N atoms is a point on (torus of fractional coordinates)^N × (lattice
parameters). The lattice is Niggli-reduced (unique up to rotation) and written as
six numbers: log lengths, less a third of log N so that the cell's scale does not
depend on its size (our choice), and the angles mapped from FlowMM's interval
(59.9°, 120.1°) to the real line by a logit, as FlowMM's `LatticeParams` does; each
is standardised by the training set's mean and spread.

Training (conditional flow matching): a start x0 from the base distribution (uniform
fractional coordinates, standard normal lattice, FlowMM's "normal base"), a time t,
and the point x_t on the shortest path to the data x1: fractional coordinates move
along the wrapped difference (the torus's geodesic: FlowMM's `FlatTorus01.logmap`),
the lattice along a straight line. The network regresses the path's constant
velocity; the coordinates' mean velocity (a drift of the whole crystal, which a
translation-invariant network cannot see) is removed from target and prediction
alike (FlowMM's `MaskedNoDriftFlatTorus01.proju`). Sampling integrates the learned
field from x0 with N Euler steps. FlowLLM mode (Sriram et al., NeurIPS 2024) starts
the integration from a structure the language model wrote instead of from noise.

The vector field is periodic, translation and permutation invariant/equivariant and
rotation invariant by construction: atoms see each other through Fourier features of
their fractional-coordinate differences (periodic in each coordinate; DiffCSP's
CSPNet), the cell through its Niggli parameters, which no rotation changes. Messages
run between all pairs of atoms of the cell (≤ 20 atoms), with GNoME's swish MLPs.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from pymatgen.core import Composition, Element, Lattice, Structure

from gnome_loop.generative.checkpoint import load_params, read_card, save_generator
from gnome_loop.generative.training import make_step
from gnome_loop.models.gnome import MLP
from gnome_loop.models.graph import MAX_Z

ARCHITECTURE = "crystal-flow"
#: FlowMM's bounds of a Niggli cell's angles, degrees (`lattice_params.py`).
ANGLE_BOUNDS = (59.9, 120.1)
#: Smallest standard deviation of a lattice feature (one family can fix an angle exactly).
MIN_STD = 0.1


@dataclass(frozen=True)
class FlowConfig:
    """The network's shape and the loss's weights."""

    max_atoms: int = 20
    width: int = 128
    layers: int = 4
    frequencies: int = 8  # Fourier features sin/cos(2π k Δf), k = 1 … frequencies
    coord_weight: float = 12.0  # a wrapped uniform displacement has variance 1/12: both terms O(1)


class LatticeStats(NamedTuple):
    """Mean and spread of the six lattice features over the training set."""

    mean: np.ndarray
    std: np.ndarray


class CrystalBatch(NamedTuple):
    """Padded crystals (a JAX pytree): N atoms per slot at most, padding masked."""

    species: np.ndarray  # (B, N) int32 atomic numbers, 0 on padding
    frac: np.ndarray  # (B, N, 3) fractional coordinates in [0, 1)
    lattice: np.ndarray  # (B, 6) standardised lattice features
    mask: np.ndarray  # (B, N) float32, 1 on real atoms


def lattice_features(lattice: Lattice, n_atoms: int) -> np.ndarray:
    """The six unstandardised features of a (Niggli-reduced) lattice of `n_atoms` atoms."""
    low, high = ANGLE_BOUNDS
    lengths = np.log(lattice.abc) - np.log(n_atoms) / 3
    share = np.clip((np.array(lattice.angles) - low) / (high - low), 1e-4, 1 - 1e-4)
    return np.concatenate([lengths, np.log(share / (1 - share))])


def features_lattice(features: np.ndarray, n_atoms: int) -> Lattice:
    """The lattice of six unstandardised features (the inverse of `lattice_features`)."""
    low, high = ANGLE_BOUNDS
    lengths = np.exp(features[:3] + np.log(n_atoms) / 3)
    angles = low + (high - low) / (1 + np.exp(-features[3:]))
    return Lattice.from_parameters(*lengths, *angles)


def reduced(structure: Structure) -> Structure:
    """The structure on its Niggli-reduced cell: the same atoms, a cell unique up to rotation."""
    return structure.get_reduced_structure("niggli")


def lattice_stats(structures: Sequence[Structure]) -> LatticeStats:
    """Mean and spread (at least MIN_STD) of the lattice features of `structures`."""
    features = np.array([lattice_features(reduced(s).lattice, len(s)) for s in structures])
    return LatticeStats(features.mean(axis=0), np.maximum(features.std(axis=0), MIN_STD))


def crystal_batch(structures: Sequence[Structure], stats: LatticeStats, max_atoms: int,
                  slots: int | None = None) -> CrystalBatch:
    """Structures as one padded batch of `slots` (default: as many as structures)."""
    slots = slots or len(structures)
    species = np.zeros((slots, max_atoms), np.int32)
    frac = np.zeros((slots, max_atoms, 3), np.float32)
    lattice = np.zeros((slots, 6), np.float32)
    mask = np.zeros((slots, max_atoms), np.float32)
    for row, structure in enumerate(structures):
        if len(structure) > max_atoms:
            raise ValueError(f"{structure.composition.formula}: {len(structure)} atoms > {max_atoms}")
        cell = reduced(structure)
        n = len(cell)
        species[row, :n] = [site.specie.Z for site in cell]
        frac[row, :n] = cell.frac_coords % 1.0
        lattice[row] = (lattice_features(cell.lattice, n) - stats.mean) / stats.std
        mask[row, :n] = 1.0
    return CrystalBatch(species, frac, lattice, mask)


def take(batch: CrystalBatch, indices: np.ndarray, slots: int) -> CrystalBatch:
    """The crystals `indices` of `batch` as a batch of `slots` (empty slots after them),
    its atom axis cut to the largest of them: every batch of one size has one shape."""
    n = int(batch.mask[indices].sum(axis=1).max(initial=1))
    rows = np.concatenate([indices, np.full(slots - len(indices), -1)]).astype(int)
    real = rows >= 0

    def pick(x: np.ndarray) -> np.ndarray:
        return np.where(real.reshape(-1, *[1] * (x.ndim - 1)), x[rows], 0).astype(x.dtype)

    return CrystalBatch(pick(batch.species[:, :n]), pick(batch.frac[:, :n]), pick(batch.lattice),
                        pick(batch.mask[:, :n]))


def to_structures(batch: CrystalBatch, stats: LatticeStats) -> list[Structure]:
    """The real slots of a batch as Structures (padding slots, with no atoms, skipped)."""
    out = []
    for species, frac, lattice, mask in zip(*(np.asarray(x) for x in batch)):
        n = int(mask.sum())
        if n:
            features = np.asarray(lattice, float) * stats.std + stats.mean
            out.append(Structure(features_lattice(features, n), [Element.from_Z(int(z)) for z in species[:n]],
                                 np.asarray(frac[:n], float) % 1.0))
    return out


def wrap(delta: jax.Array) -> jax.Array:
    """A fractional difference folded into [-0.5, 0.5): the torus's shortest way."""
    return (delta + 0.5) % 1.0 - 0.5


def remove_drift(velocity: jax.Array, mask: jax.Array) -> jax.Array:
    """Velocities (B, N, 3) less their mean over each crystal's real atoms, padding zeroed."""
    mean = jnp.sum(velocity * mask[..., None], axis=1, keepdims=True) / jnp.maximum(
        jnp.sum(mask, axis=1)[:, None, None], 1.0)
    return (velocity - mean) * mask[..., None]


class PairUpdate(nn.Module):
    """The message MLP on [h_i, h_j, pair_ij, g] for every pair of atoms, its first
    layer split by input block: the atom and crystal blocks are projected once per
    atom and per crystal and then broadcast, so a pair costs 2 w² multiply-adds, not
    5 w² (the same function as a dense layer on the concatenation; the GNN's
    `EdgeUpdate` does the same on sparse edges)."""

    width: int

    @nn.compact
    def __call__(self, h: jax.Array, pair: jax.Array, g: jax.Array) -> jax.Array:
        w = self.width
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4 * w, w))
        bias = self.param("bias", nn.initializers.zeros_init(), (w,))
        first = (pair @ kernel[2 * w:3 * w] + (h @ kernel[:w])[:, :, None] + (h @ kernel[w:2 * w])[:, None, :]
                 + (g @ kernel[3 * w:] + bias)[:, None, None])
        return nn.Dense(w)(nn.swish(first))


class VectorField(nn.Module):
    """(species, fractional coordinates, lattice features, mask, t) -> their velocities.

    Any number of atom slots N works (the weights do not depend on it): a batch is
    padded only to its largest crystal."""

    config: FlowConfig

    @nn.compact
    def __call__(self, species: jax.Array, frac: jax.Array, lattice: jax.Array, mask: jax.Array,
                 t: jax.Array) -> tuple[jax.Array, jax.Array]:
        width, k = self.config.width, jnp.arange(1, self.config.frequencies + 1)
        pair_mask = (mask[:, :, None] * mask[:, None, :])[..., None]
        n_atoms = jnp.maximum(jnp.sum(mask, axis=1), 1.0)[:, None]
        phases = 2 * jnp.pi * (frac[:, None, :, :] - frac[:, :, None, :])[..., None] * k  # (B, N, N, 3, K): j - i
        pair = nn.Dense(width)(jnp.concatenate([jnp.sin(phases), jnp.cos(phases)], -1).reshape(*phases.shape[:3], -1))
        times = 2 * jnp.pi * t[:, None] * jnp.arange(1, 5)
        g = MLP((width, width))(jnp.concatenate([lattice, jnp.sin(times), jnp.cos(times)], -1))
        h = nn.Embed(MAX_Z + 1, width)(species) * mask[..., None]
        for _ in range(self.config.layers):
            messages = jnp.sum(PairUpdate(width)(h, pair, g) * pair_mask, axis=2) / n_atoms[..., None]
            h = nn.LayerNorm()(h + MLP((width, width))(jnp.concatenate([h, messages], -1))) * mask[..., None]
            pooled = jnp.sum(h, axis=1) / n_atoms
            g = g + MLP((width, width))(jnp.concatenate([g, pooled], -1))
        return remove_drift(nn.Dense(3)(h), mask), MLP((width, 6))(g)


def init_params(config: FlowConfig, seed: int = 0) -> Any:
    n = config.max_atoms
    return VectorField(config).init(jax.random.PRNGKey(seed), jnp.ones((1, n), jnp.int32), jnp.zeros((1, n, 3)),
                                    jnp.zeros((1, 6)), jnp.ones((1, n)), jnp.zeros(1))


def flow_loss(model: VectorField, params: Any, target: CrystalBatch, start_frac: jax.Array,
              start_lattice: jax.Array, t: jax.Array) -> jax.Array:
    """Conditional flow-matching loss of the paths from the starts to `target` at times `t`."""
    mask = target.mask
    delta = wrap(target.frac - start_frac)
    frac_t = (start_frac + t[:, None, None] * delta) % 1.0
    lattice_t = (1 - t[:, None]) * start_lattice + t[:, None] * target.lattice
    v_frac, v_lattice = model.apply(params, target.species, frac_t, lattice_t, mask, t)
    present = (jnp.sum(mask, axis=1) > 0).astype(jnp.float32)
    coord = jnp.sum((v_frac - remove_drift(delta, mask)) ** 2) / jnp.maximum(3 * jnp.sum(mask), 1.0)
    cell = jnp.sum(present[:, None] * (v_lattice - (target.lattice - start_lattice)) ** 2) / jnp.maximum(
        6 * jnp.sum(present), 1.0)
    return model.config.coord_weight * coord + cell


def base_sample(key: jax.Array, batch: CrystalBatch) -> tuple[jax.Array, jax.Array]:
    """Uniform fractional coordinates and standard normal lattice features."""
    frac_key, lattice_key = jax.random.split(key)
    return (jax.random.uniform(frac_key, batch.frac.shape),
            jax.random.normal(lattice_key, batch.lattice.shape))


def sampled_loss(model: VectorField, params: Any, target: CrystalBatch, key: jax.Array,
                 start: CrystalBatch | None = None) -> jax.Array:
    """`flow_loss` at random times, from `start` or from base samples drawn with `key`."""
    start_key, time_key = jax.random.split(key)
    start_frac, start_lattice = (start.frac, start.lattice) if start is not None else base_sample(start_key, target)
    t = jax.random.uniform(time_key, (target.frac.shape[0],))
    return flow_loss(model, params, target, start_frac, start_lattice, t)


@functools.lru_cache(maxsize=4)
def make_train_step(config: FlowConfig, optimizer: optax.GradientTransformation, given_start: bool = False):
    """(params, opt_state, batch, key) -> (params, opt_state, loss), jitted.

    The batch is a CrystalBatch of targets whose starts come from the base
    distribution, or with `given_start` a pair (targets, starts): FlowLLM's training,
    whose base distribution is the language model's samples.
    """
    model = VectorField(config)

    def loss(params, batch, key):
        target, start = batch if given_start else (batch, None)
        return sampled_loss(model, params, target, key, start)

    return make_step(loss, optimizer)


@functools.lru_cache(maxsize=4)
def make_eval_loss(config: FlowConfig):
    """(params, batch, key) -> the flow-matching loss from base samples drawn with `key`, jitted."""
    model = VectorField(config)
    return jax.jit(lambda params, batch, key: sampled_loss(model, params, batch, key))


@functools.lru_cache(maxsize=8)
def _integrate(config: FlowConfig, steps: int):
    """Euler integration of the field from time t0 to 1 in `steps` steps, jitted."""
    model = VectorField(config)

    @jax.jit
    def run(params, species, frac, lattice, mask, t0, speedup):
        dt = (1.0 - t0) / steps

        def euler(index, state):
            frac, lattice = state
            t = jnp.full(frac.shape[0], t0 + index * dt)
            v_frac, v_lattice = model.apply(params, species, frac, lattice, mask, t)
            return (frac + dt * (1 + speedup * t[:, None, None]) * v_frac) % 1.0, lattice + dt * v_lattice

        return jax.lax.fori_loop(0, steps, euler, (frac, lattice))

    return run


def integrate(config: FlowConfig, params: Any, start: CrystalBatch, steps: int = 100,
              t_start: float = 0.0, speedup: float = 0.0) -> CrystalBatch:
    """The batch `start` carried by the learned field from `t_start` to 1.

    `speedup` s > 0 is FlowMM's inference anti-annealing: the coordinates' velocity is
    scaled by 1 + s t, so atoms settle into their sites before the end instead of
    drifting between them (Miller et al. 2024 report higher CSP match rates with it)."""
    frac, lattice = _integrate(config, steps)(params, start.species, start.frac, start.lattice, start.mask,
                                              jnp.float32(t_start), jnp.float32(speedup))
    return start._replace(frac=np.asarray(frac), lattice=np.asarray(lattice))


def composition_batch(compositions: Sequence[Composition | str], max_atoms: int) -> CrystalBatch:
    """Atoms of each cell composition (counts as written: "Na4Cl4" is 8 atoms), at the
    origin, padded to the largest cell; ValueError for a cell of over `max_atoms` atoms."""
    rows = [sorted(el.Z for el, amount in Composition(c).items() for _ in range(int(round(amount))))
            for c in compositions]
    for composition, zs in zip(compositions, rows):
        if not 0 < len(zs) <= max_atoms:
            raise ValueError(f"{composition}: {len(zs)} atoms, not 1 to {max_atoms}")
    width = max(map(len, rows), default=1)
    species = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    for index, zs in enumerate(rows):
        species[index, : len(zs)], mask[index, : len(zs)] = zs, 1.0
    return CrystalBatch(species, np.zeros((len(rows), width, 3), np.float32), np.zeros((len(rows), 6), np.float32),
                        mask)


def sample(config: FlowConfig, params: Any, stats: LatticeStats, compositions: Sequence[Composition | str],
           key: jax.Array, steps: int = 100, speedup: float = 0.0) -> list[Structure]:
    """One structure per cell composition, integrated from the base distribution."""
    batch = composition_batch(compositions, config.max_atoms)
    frac, lattice = base_sample(key, batch)
    return to_structures(integrate(config, params, batch._replace(frac=frac, lattice=lattice), steps,
                                   speedup=speedup), stats)


def refine(config: FlowConfig, params: Any, stats: LatticeStats, starts: Sequence[Structure], steps: int = 100,
           t_start: float = 0.0) -> list[Structure]:
    """FlowLLM mode: each start structure (the language model's sample) carried by the
    field from `t_start` to 1; with a flow trained on such starts (`given_start`),
    `t_start` 0 is FlowLLM proper."""
    return to_structures(integrate(config, params, crystal_batch(starts, stats, config.max_atoms), steps, t_start),
                         stats)


def save_flow(directory: str | Path, config: FlowConfig, params: Any, stats: LatticeStats,
              card: dict | None = None) -> None:
    """Parameters and a model card (config, lattice statistics, plus `card`)."""
    save_generator(directory, params, {**(card or {}), "architecture": ARCHITECTURE, "config": asdict(config),
                                       "lattice_stats": {"mean": np.asarray(stats.mean).tolist(),
                                                         "std": np.asarray(stats.std).tolist()}})


def load_flow(directory: str | Path) -> tuple[FlowConfig, Any, LatticeStats, dict]:
    """The config, parameters, lattice statistics and card saved by `save_flow`."""
    card = read_card(directory, ARCHITECTURE)
    config = FlowConfig(**card["config"])
    stats = LatticeStats(np.array(card["lattice_stats"]["mean"]), np.array(card["lattice_stats"]["std"]))
    return config, load_params(directory, init_params(config)), stats, card
