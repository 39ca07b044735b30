"""Write the structure GNN's reference outputs: `tests/data/gnome_reference.npz`.

A fixed batch of four small hand-made crystals (plus the padding graph), the
parameters of a 2-member ensemble of width 32 (seeded), its predictions and the
gradients of a squared-error loss with respect to every parameter. Made once with
the implementation before the performance work of issue 20, so that
`tests/test_model_reference.py` checks every later implementation against it
(predictions and gradients within float32 tolerance). Re-run it only to record a
deliberate change of the network's function.

    python scripts/make_model_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from pymatgen.core import Lattice, Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gnome_loop.models.gnome import StructureGNN  # noqa: E402
from gnome_loop.models.graph import GraphBatch, average_coordination, batch_graphs, crystal_graph  # noqa: E402

OUT = ROOT / "tests" / "data" / "gnome_reference.npz"
WIDTH, STEPS, CUTOFF, MEMBERS = 32, 3, 4.0, 2
TARGETS = np.array([-0.5, 0.2, -1.0, 0.7, 0.0], np.float32)  # the last graph is padding


def reference_structures() -> list[Structure]:
    """Rock salt, an ordered fcc alloy, a distorted perovskite and a layered oxide."""
    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    return [
        Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, fcc + [[x + 0.5 if x == 0 else x - 0.5 for x in p]
                                                                        for p in fcc]),
        Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"], fcc),
        Structure(Lattice.from_parameters(3.9, 3.95, 4.05, 90, 91, 90), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.52, 0.49], [0.5, 0.5, 0.02], [0.5, 0.03, 0.5], [0.02, 0.5, 0.5]]),
        Structure(Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O", "O"],
                  [[0, 0, 0.5], [0, 0, 0], [1 / 3, 2 / 3, 0.26], [2 / 3, 1 / 3, 0.74]]),
    ]


def reference_batch() -> tuple[GraphBatch, float]:
    graphs = [crystal_graph(s, CUTOFF) for s in reference_structures()]
    return batch_graphs(graphs, len(graphs), CUTOFF), average_coordination(graphs)


def loss(module: StructureGNN, params, batch: GraphBatch) -> jax.Array:
    """Squared error on the real graphs (as in training) against fixed targets."""
    return jnp.sum(batch.graph_mask * (module.apply(params, batch) - TARGETS) ** 2)


def main() -> int:
    batch, coordination = reference_batch()
    module = StructureGNN(width=WIDTH, steps=STEPS, cutoff=CUTOFF, avg_coordination=coordination)
    keys = jax.random.split(jax.random.PRNGKey(0), MEMBERS)
    params = jax.vmap(lambda key: module.init(key, batch))(keys)
    predictions = jax.vmap(module.apply, in_axes=(0, None))(params, batch)
    grads = jax.vmap(jax.grad(lambda p: loss(module, p, batch)))(params)
    arrays = {f"batch/{name}": np.asarray(value) for name, value in batch._asdict().items()}
    arrays |= {f"params/{'/'.join(path)}": np.asarray(v) for path, v in traverse_util.flatten_dict(params).items()}
    arrays |= {f"grads/{'/'.join(path)}": np.asarray(v) for path, v in traverse_util.flatten_dict(grads).items()}
    arrays |= {"predictions": np.asarray(predictions), "avg_coordination": np.float32(coordination)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT}: {len(arrays)} arrays, predictions {np.asarray(predictions).round(4).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
