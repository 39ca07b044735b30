"""Resumable training of a generative model: an optimiser, a loop that can stop at any
step and go on, and its checkpoint file.

Both generators train the same way: Adam on a warm-up + cosine learning-rate schedule
(the schedule's position lives in the optimiser state), one jitted step per batch,
`batches(epoch)` the same for the same epoch. A checkpoint records the epoch and the
batches done inside it, so a run killed mid-epoch resumes at the next batch and ends
after as many steps as one that never stopped. Checkpoints are one msgpack file,
written atomically by the energy models' `gnome_loop.models.train.write_checkpoint`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax

from gnome_loop.models.train import read_checkpoint, write_checkpoint

#: (params, opt_state, batch, key) -> (params, opt_state, loss)
StepFn = Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, jax.Array]]


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int = 100,
                   final_fraction: float = 0.05) -> optax.GradientTransformation:
    """Adam with gradient clipping (norm 1) on a linear warm-up then cosine decay to
    `final_fraction` of `learning_rate` at `total_steps`."""
    warmup = max(1, min(warmup_steps, total_steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(total_steps, warmup + 1),
                                                  end_value=learning_rate * final_fraction)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def make_step(loss: Callable[[Any, Any, jax.Array], jax.Array], optimizer: optax.GradientTransformation) -> StepFn:
    """The jitted optimiser step on `loss(params, batch, key)`."""

    @jax.jit
    def step(params, opt_state, batch, key):
        value, grads = jax.value_and_grad(loss)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


class FitState(NamedTuple):
    """Where a run stands: `epoch` epochs and then `batch` batches of the next one done."""

    params: Any
    opt_state: Any
    epoch: int
    batch: int
    step: int
    loss_sum: float  # summed batch losses of the unfinished epoch
    history: dict  # per finished epoch: "train_loss", and "val_loss" when evaluated


def initial_fit_state(params, optimizer: optax.GradientTransformation) -> FitState:
    return FitState(params, optimizer.init(params), 0, 0, 0, 0.0, {"train_loss": [], "val_loss": []})


def save_fit_state(path: str | Path, state: FitState, meta: dict) -> None:
    """`state` and the JSON-able `meta` (what the run is) in one checkpoint file."""
    write_checkpoint(path, {"params": state.params, "opt_state": state.opt_state},
                     {**meta, "epoch": state.epoch, "batch": state.batch, "step": state.step,
                      "loss_sum": state.loss_sum, "history": state.history})


def load_fit_state(path: str | Path, template: FitState) -> tuple[FitState, dict]:
    """What `save_fit_state` wrote; `template` gives the tree shapes. ValueError naming
    the file when it is corrupt or from another network."""
    trees, meta = read_checkpoint(path, {"params": template.params, "opt_state": template.opt_state})
    state = FitState(trees["params"], trees["opt_state"], meta.pop("epoch"), meta.pop("batch"), meta.pop("step"),
                     meta.pop("loss_sum"), meta.pop("history"))
    return state, meta


def fit(step: StepFn, state: FitState, batches: Callable[[int], Sequence], epochs: int, key: jax.Array,
        checkpoint: Path | None = None, meta: dict | None = None, checkpoint_seconds: float = 180.0,
        deadline: float | None = None, evaluate: Callable[[Any], float] | None = None,
        on_epoch: Callable[[FitState], None] = lambda state: None) -> FitState:
    """Train from `state` to the end of `epochs` (or until `deadline`, a
    `time.monotonic()` value, is past) and return the state reached.

    Step n's randomness is `fold_in(key, n)`, so a resumed run draws what an unbroken
    one would. With `checkpoint`, the state is saved there (with `meta`) every
    `checkpoint_seconds`, after every epoch and on return. `evaluate(params)` gives
    the validation loss recorded after each epoch.
    """
    last_save = time.monotonic()

    def save(current: FitState) -> None:
        nonlocal last_save
        if checkpoint is not None:
            save_fit_state(checkpoint, current, meta or {})
            last_save = time.monotonic()

    params, opt_state = state.params, state.opt_state
    for epoch in range(state.epoch, epochs):
        for batch in list(batches(epoch))[state.batch:]:
            if deadline is not None and time.monotonic() > deadline:
                save(state)
                return state
            params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, state.step))
            state = state._replace(params=params, opt_state=opt_state, batch=state.batch + 1, step=state.step + 1,
                                   loss_sum=state.loss_sum + float(loss))
            if checkpoint is not None and time.monotonic() - last_save >= checkpoint_seconds:
                save(state)
        history = {"train_loss": state.history["train_loss"] + [state.loss_sum / max(state.batch, 1)],
                   "val_loss": state.history["val_loss"] + ([float(evaluate(params))] if evaluate else [])}
        state = state._replace(epoch=epoch + 1, batch=0, loss_sum=0.0, history=history)
        save(state)
        on_epoch(state)
    return state


def size_groups(sizes: np.ndarray, indices: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`indices` in batches of items of one size each (in their given order within a
    size), the batches shuffled: padding a batch to its largest item (a crystal's atoms,
    a CIF's tokens) then costs nothing, and there are as many compiled shapes as sizes."""
    groups = [indices[sizes[indices] == n] for n in np.unique(sizes[indices])]
    chunks = [group[i:i + batch_size] for group in groups for i in range(0, len(group), batch_size)]
    return [chunks[i] for i in rng.permutation(len(chunks))]
