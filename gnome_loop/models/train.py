"""Training an ensemble: K members with stacked parameters, trained and evaluated
over the member axis in one compiled program per batch shape (`over_members`: one
member after the other on a CPU, `jax.vmap` on an accelerator).

Members differ by their random initialisation; they see the same batches. Adam
with a cosine-decayed learning rate (GNoME: ≈ 5e-4 with decay); each member keeps
its parameters of best validation MAE (early stopping).

A run can stop and go on: `train_ensemble` takes a `TrainState` to start from and
hands one to a callback after every epoch; `save_train_state`/`load_train_state`
write and read it as one msgpack file (pretraining spans sessions this way). The
same state with trained parameters at epoch 0 is how a model is fine-tuned.

Compiled programs are reused: the train step takes the learning rate as an argument
and is cached per network, and XLA's persistent cache (`~/.cache/gnome_loop/jax`,
unless JAX_COMPILATION_CACHE_DIR is set) keeps them across processes, so each
campaign round does not compile again.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

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


def each_member(function: Callable) -> Callable:
    """`function` mapped over the leading (member) axis of every argument, its results
    stacked. On a GPU or TPU the members run as one batched program (`jax.vmap`). On a
    CPU they run one after the other (`jax.lax.map`): there the batched program of a
    graph network costs 1.0-1.14× the members in turn, and its scratch memory is the
    members' together (1.25-1.8× under glibc's default malloc, which faults a program's
    scratch in on every call; docs/performance.md, issue 20)."""
    if jax.default_backend() == "cpu":
        return lambda *stacked: jax.lax.map(lambda member: function(*member), stacked)
    return jax.vmap(function)


def over_members(function: Callable) -> Callable:
    """`function(member_params, *shared)` as `(stacked_params, *shared)` -> results stacked
    over the members (`each_member`)."""
    return lambda params, *shared: each_member(lambda member: function(member, *shared))(params)


@functools.lru_cache(maxsize=CACHED_NETWORKS)
def make_predict(module: nn.Module) -> Callable:
    """(stacked params, batch) -> predictions of shape (members, graphs)."""
    return jax.jit(over_members(module.apply))


@functools.lru_cache(maxsize=CACHED_NETWORKS)
def make_train_step(module: nn.Module) -> Callable:
    """(params, opt_state, batch, targets, learning_rate) -> one Adam step of every member
    on the same batch (mean squared error on the real graphs)."""

    def loss(params, batch, targets):
        mask = batch.graph_mask
        residual = module.apply(params, batch) - targets
        return jnp.sum(mask * residual**2) / jnp.maximum(jnp.sum(mask), 1.0)

    def step(params, opt_state, batch, targets, learning_rate):
        losses, grads = over_members(jax.value_and_grad(loss))(params, batch, targets)
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


class TrainState(NamedTuple):
    """Where a training run stands after `epoch` epochs: enough to go on exactly where
    it stopped (a checkpoint) or to read off the result."""

    params: Any
    opt_state: Any
    best: Any  # each member's parameters at its best validation epoch so far
    best_mae: np.ndarray  # (members,) standardised validation MAE of `best`
    epoch: int
    n_steps: int
    since_best: int
    history: dict


def write_checkpoint(path: str | Path, trees: dict, meta: dict) -> None:
    """Write the pytrees `trees` (by name) and the JSON-able `meta` into one msgpack file,
    atomically: a kill mid-write leaves the previous checkpoint."""
    payload = serialization.to_state_dict(trees)
    payload["meta"] = json.dumps(meta)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(serialization.msgpack_serialize(payload))
    os.replace(partial, path)


def read_checkpoint(path: str | Path, templates: dict) -> tuple[dict, dict]:
    """The trees and meta that `write_checkpoint` wrote, shaped like `templates` (which
    hold the network's "params"). ValueError naming the file when it is corrupt or from
    another network."""
    try:
        raw = serialization.msgpack_restore(Path(path).read_bytes())
        meta = json.loads(raw.pop("meta"))
        trees = serialization.from_state_dict(templates, raw)
        same = jax.tree.map(np.shape, trees["params"]) == jax.tree.map(np.shape, templates["params"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable training checkpoint ({error})") from error
    if not same:
        raise ValueError(f"{path}: checkpoint parameters do not fit this network (another width or depth?)")
    return trees, meta


def save_train_state(path: str | Path, state: TrainState, meta: dict) -> None:
    """Write `state` and `meta` (JSON-able: what the run is, to refuse resuming another)
    into one checkpoint file."""
    write_checkpoint(path, {"params": state.params, "opt_state": state.opt_state, "best": state.best,
                            "best_mae": np.asarray(state.best_mae)},
                     {**meta, "epoch": state.epoch, "n_steps": state.n_steps, "since_best": state.since_best,
                      "history": state.history})


def load_train_state(path: str | Path, template: TrainState) -> tuple[TrainState, dict]:
    """The state and meta that `save_train_state` wrote; `template` gives the tree shapes."""
    arrays, meta = read_checkpoint(path, {"params": template.params, "opt_state": template.opt_state,
                                          "best": template.best, "best_mae": template.best_mae})
    state = TrainState(arrays["params"], arrays["opt_state"], arrays["best"], np.asarray(arrays["best_mae"]),
                       meta.pop("epoch"), meta.pop("n_steps"), meta.pop("since_best"), meta.pop("history"))
    return state, meta


def initial_state(module: nn.Module, sample_batch, settings: TrainSettings, init_params=None) -> TrainState:
    """Epoch 0: fresh members (or `init_params`, to fine-tune) and Adam's zero moments."""
    params = init_params if init_params is not None else init_ensemble(module, sample_batch, settings.members,
                                                                      settings.seed)
    return TrainState(params, jax.vmap(OPTIMIZER.init)(params), params, np.full(settings.members, np.inf),
                      0, 0, 0, {"train_loss": [], "val_mae": []})


def train_ensemble(
    module: nn.Module,
    train_batches: Callable[[int], list[Batch]],
    val_batches: list[Batch],
    settings: TrainSettings,
    state: TrainState | None = None,
    on_epoch: Callable[[TrainState], None] = lambda state: None,
    deadline: float | None = None,
) -> TrainState:
    """Train the ensemble; `train_batches(epoch)` gives that epoch's shuffled batches
    (the same for the same epoch, so a resumed run repeats nothing).

    `state` is where to start: `initial_state` (the default: fresh members) or a
    checkpoint. With starting parameters that were trained already (fine-tuning), they
    are validated first, so a member keeps them unless training improves on them.
    `on_epoch` sees the state after every epoch (to checkpoint or report); no epoch
    starts after `deadline` (a `time.monotonic()` value).
    Returns the last state: `best` holds the stacked parameters (each member at its
    best validation epoch, or the last epoch without validation data), `history` the
    per-epoch losses and MAEs; `finished(state, settings)` says whether it is done.
    """
    first = train_batches(0)
    schedule = optax.cosine_decay_schedule(settings.learning_rate, max(settings.epochs * len(first), 1),
                                           alpha=settings.final_lr_fraction)
    step, predict = make_train_step(module), make_predict(module)
    if state is None:
        state = initial_state(module, first[0][0], settings)
    elif state.epoch == 0 and val_batches:  # trained starting parameters (fine-tuning): the bar to beat
        state = state._replace(best_mae=member_mae(predict, state.params, val_batches))
    params, opt_state, best, best_mae = state.params, state.opt_state, state.best, state.best_mae
    n_steps, since_best, history = state.n_steps, state.since_best, state.history
    for epoch in range(state.epoch, settings.epochs):
        if since_best >= settings.patience or (deadline is not None and time.monotonic() > deadline):
            break
        losses = []
        for batch, targets in first if epoch == 0 else train_batches(epoch):
            params, opt_state, loss = step(params, opt_state, batch, targets, schedule(n_steps))
            n_steps += 1
            losses.append(np.asarray(loss))
        history["train_loss"].append(np.mean(losses, axis=0).tolist())
        if not val_batches:
            best = params
        else:
            mae = member_mae(predict, params, val_batches)
            history["val_mae"].append(mae.tolist())
            improved = mae < best_mae
            best_mae = np.where(improved, mae, best_mae)
            best = jax.tree.map(
                lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), params, best)
            since_best = 0 if improved.any() else since_best + 1
        state = TrainState(params, opt_state, best, best_mae, epoch + 1, n_steps, since_best, history)
        on_epoch(state)
    return state


def finished(state: TrainState, settings: TrainSettings) -> bool:
    """True when training has nothing left to do: all epochs, or early stopping."""
    return state.epoch >= settings.epochs or state.since_best >= settings.patience
