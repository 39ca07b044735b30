"""The structure GNN computes what it computed before its performance work (issue 20):
predictions and parameter gradients on a fixed batch equal those recorded in
`tests/data/gnome_reference.npz` (made by `scripts/make_model_reference.py`) within
float32 tolerance."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from gnome_loop.models.gnome import StructureGNN
from gnome_loop.models.graph import GraphBatch
from gnome_loop.models.train import make_predict, over_members

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_model_reference import CUTOFF, OUT, STEPS, WIDTH, loss, reference_batch  # noqa: E402


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(OUT) as data:
        return dict(data)


def tree(reference: dict, prefix: str) -> dict:
    return traverse_util.unflatten_dict({tuple(key.split("/")[1:]): value for key, value in reference.items()
                                         if key.startswith(prefix + "/")})


def test_the_reference_batch_is_still_built_the_same(reference):
    batch, coordination = reference_batch()
    for name, value in batch._asdict().items():
        np.testing.assert_array_equal(value, reference[f"batch/{name}"], err_msg=name)
    assert np.isclose(coordination, reference["avg_coordination"])


@pytest.mark.parametrize("members", ["vmap", "over_members"])
def test_predictions_and_gradients_equal_the_recorded_ones(reference, members):
    """Both ways of running the members (the reference was made with vmap; training and
    prediction run `over_members`, a loop on a CPU) give the recorded numbers."""
    batch = GraphBatch(**{name: reference[f"batch/{name}"] for name in GraphBatch._fields})
    module = StructureGNN(width=WIDTH, steps=STEPS, cutoff=CUTOFF,
                          avg_coordination=float(reference["avg_coordination"]))
    params = tree(reference, "params")
    if members == "vmap":
        predictions = jax.vmap(module.apply, in_axes=(0, None))(params, batch)
        grads = jax.vmap(jax.grad(lambda p: loss(module, p, batch)))(params)
    else:
        predictions = make_predict(module)(params, batch)
        grads = jax.jit(over_members(jax.grad(lambda p, b: loss(module, p, b))))(params, batch)
    np.testing.assert_allclose(predictions, reference["predictions"], rtol=1e-4, atol=1e-5)
    grads = traverse_util.flatten_dict(grads)
    recorded = traverse_util.flatten_dict(tree(reference, "grads"))
    assert grads.keys() == recorded.keys()
    for path, value in recorded.items():
        np.testing.assert_allclose(grads[path], value, rtol=1e-3, atol=1e-5, err_msg="/".join(path))


def test_members_run_batched_on_an_accelerator_give_the_same_numbers(reference, monkeypatch):
    """`over_members` vmaps where the backend is not a CPU: the same predictions as the loop."""
    batch = GraphBatch(**{name: reference[f"batch/{name}"] for name in GraphBatch._fields})
    module = StructureGNN(width=WIDTH, steps=STEPS, cutoff=CUTOFF,
                          avg_coordination=float(reference["avg_coordination"]))
    params = tree(reference, "params")
    looped = over_members(module.apply)(params, batch)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    batched = over_members(module.apply)(params, batch)
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched, reference["predictions"], rtol=1e-4, atol=1e-5)
