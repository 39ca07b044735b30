"""Training an ensemble: K members with stacked parameters, trained and evaluated
under `jax.vmap` over the member axis in one compiled program per batch shape.

Members differ by their random initialisation; they see the same batches. Adam
with a cosine-decayed learning rate (GNoME: ≈ 5e-4 with decay); each member keeps
its parameters of best validation MAE (early stopping).

Compiled programs are reused: the train step takes the learning rate as an argument
and is cached per network, and XLA's persistent cache (`~/.cache/gnome_loop/jax`,
unless JAX_COMPILATION_CACHE_DIR is set) keeps them across processes, so each
campaign round does not compile again.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "gnome_loop" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

#: (batch, standardised targets padded to the batch's graph slots)
Batch = tuple[object, np.ndarray]


@dataclass(frozen=True)
class TrainSettings:
    members: int = 4
    epochs: int = 300
    learning_rate: float = 5e-4
    final_lr_fraction: float = 0.05
    patience: int = 60
    seed: int = 0


def init_ensemble(module: nn.Module, sample_batch, members: int, seed: int):
    """Stacked parameters of `members` independently initialised copies of `module`."""
    keys = jax.random.split(jax.random.PRNGKey(seed), members)
    return jax.vmap(lambda key: module.init(key, sample_batch))(keys)


#: Adam's moment estimates; the learning rate is applied in the step (see `make_train_step`).
OPTIMIZER = optax.scale_by_adam()


#: Networks whose jitted functions are kept. A network's compiled programs live as long as
#: its functions (a few hundred memory maps each on CPU) and every round's network is new
#: (its average coordination is measured on the round's data), so a long campaign keeps
#: only the last few (issue 24).
CACHED_NETWORKS = 4


@functools.lru_cache(maxsize=CACHED_NETWORKS)
def make_predict(module: nn.Module) -> Callable:
    """(stacked params, batch) -> predictions of shape (members, graphs)."""
    return jax.jit(jax.vmap(module.apply, in_axes=(0, None)))


@functools.lru_cache(maxsize=CACHED_NETWORKS)
def make_train_step(module: nn.Module) -> Callable:
    """(params, opt_state, batch, targets, learning_rate) -> one Adam step of every member
    on the same batch (mean squared error on the real graphs)."""

    def loss(params, batch, targets):
        mask = batch.graph_mask
        residual = module.apply(params, batch) - targets
        return jnp.sum(mask * residual**2) / jnp.maximum(jnp.sum(mask), 1.0)

    def step(params, opt_state, batch, targets, learning_rate):
        losses, grads = jax.vmap(jax.value_and_grad(loss), in_axes=(0, None, None))(params, batch, targets)
        directions, opt_state = jax.vmap(OPTIMIZER.update)(grads, opt_state, params)
        params = jax.tree.map(lambda p, d: p - learning_rate * d, params, directions)
        return params, opt_state, losses

    return jax.jit(step)


def member_mae(predict: Callable, params, batches: Iterable[Batch]) -> np.ndarray:
    """Mean absolute error of each member over `batches` (standardised units)."""
    total, count = 0.0, 0.0
    for batch, targets in batches:
        mask = np.asarray(batch.graph_mask)
        total = total + np.sum(np.abs(np.asarray(predict(params, batch)) - targets) * mask, axis=1)
        count += mask.sum()
    return total / max(count, 1.0)


def train_ensemble(
    module: nn.Module,
    train_batches: Callable[[int], list[Batch]],
    val_batches: list[Batch],
    settings: TrainSettings,
):
    """Train the ensemble; `train_batches(epoch)` gives that epoch's shuffled batches.

    Returns the stacked parameters (each member at its best validation epoch, or the
    last epoch without validation data) and a history of per-epoch losses and MAEs.
    """
    first = train_batches(0)
    schedule = optax.cosine_decay_schedule(settings.learning_rate, max(settings.epochs * len(first), 1),
                                           alpha=settings.final_lr_fraction)
    params = init_ensemble(module, first[0][0], settings.members, settings.seed)
    opt_state = jax.vmap(OPTIMIZER.init)(params)
    step, predict = make_train_step(module), make_predict(module)
    n_steps = 0

    best = params
    best_mae = np.full(settings.members, np.inf)
    history: dict[str, list] = {"train_loss": [], "val_mae": []}
    since_best = 0
    for epoch in range(settings.epochs):
        losses = []
        for batch, targets in first if epoch == 0 else train_batches(epoch):
            params, opt_state, loss = step(params, opt_state, batch, targets, schedule(n_steps))
            n_steps += 1
            losses.append(np.asarray(loss))
        history["train_loss"].append(np.mean(losses, axis=0).tolist())
        if not val_batches:
            best = params
            continue
        mae = member_mae(predict, params, val_batches)
        history["val_mae"].append(mae.tolist())
        improved = mae < best_mae
        best_mae = np.where(improved, mae, best_mae)
        best = jax.tree.map(
            lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), params, best)
        since_best = 0 if improved.any() else since_best + 1
        if since_best >= settings.patience:
            break
    return best, history
