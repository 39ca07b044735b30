"""Where the structure GNN's time goes: per-part timings on realistic batches.

The batch is what `StructureEnsemble.predict` feeds the network for the MP-20
structures of `bench_filter.py` (packed into one padded shape); training's batch is
the one `fit` pads to. For width 64 and 256 it times, each jitted on its own:
the whole forward pass of 4 members (`make_predict`), one training step, and the parts of a
message-passing step (the edge layer's matmuls, the gathers of node projections onto
edges, the elementwise ops, the segment sum of messages, the node MLP); next to a
plain float32 matmul that measures this machine's reachable peak in the same run.
Then throughput against batch size: structures/s of scoring and of training steps
for batches of more and more graphs (a GPU needs thousands of graphs a call). Last,
the members batched by `jax.vmap` against one after the other (`jax.lax.map`), for
the structure GNN and the NequIP pre-relaxer (`member_layouts`).
FLOPs are XLA's own count (`cost_analysis`) for the compiled program, real work is
the analytic count on unpadded nodes and edges (`bench_filter.network_flops`).

    python experiments/profile_gnome.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gnome_loop.models.ensemble import StructureEnsemble
from gnome_loop.models.gnome import StructureGNN, gaussian_basis
from gnome_loop.models.graph import batch_graphs, crystal_graph
from gnome_loop.models.nequip import NequIPConfig, energy_forces_stress, init_params, nequip_batch
from gnome_loop.models.train import init_ensemble, make_predict, make_train_step, OPTIMIZER

from bench_filter import (best_seconds as seconds, candidate_structures, graphs_flops, matmul_peak, matmul_size,
                          network_flops)
from common import DATA, bench_parser, write_results


def xla_flops(function: Callable, *args) -> float:
    """FLOPs of the compiled program by XLA's cost analysis (padding included)."""
    analysis = jax.jit(function).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", float("nan")))


def parts(batch, width: int, members: int) -> dict[str, tuple[Callable, tuple, float]]:
    """The pieces of one message-passing step over `members` members, each with its
    arguments and its real FLOPs on this batch."""
    rng = np.random.default_rng(0)
    n_edges, n_nodes = len(batch.senders), len(batch.species)

    def array(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    e, h = array(members, n_edges, width), array(members, n_nodes, width)
    kernel, projected = array(members, width, width), array(members, n_nodes, width)
    senders, receivers = jnp.asarray(batch.senders), jnp.asarray(batch.receivers)
    return {
        "edge matmul (E,w)x(w,w)": (jax.jit(lambda e, k: jnp.einsum("mew,mwv->mev", e, k)), (e, kernel),
                                    2.0 * members * n_edges * width * width),
        "gather node projections to edges": (jax.jit(lambda p: p[:, senders] + p[:, receivers]), (projected,), 0.0),
        "swish + residual (edges)": (jax.jit(lambda e: e + jax.nn.swish(e)), (e,), 0.0),
        "segment sum of messages": (jax.jit(jax.vmap(lambda e: jax.ops.segment_sum(
            e, receivers, n_nodes, indices_are_sorted=True))), (e,), 0.0),
        "node matmul (N,3w)x(3w,w)": (jax.jit(lambda h, k: jnp.einsum("mnw,mwv->mnv", h, k)),
                                      (jnp.concatenate([h, h, h], -1), array(members, 3 * width, width)),
                                      2.0 * members * n_nodes * 3 * width * width),
        "gaussian basis (edges)": (jax.jit(lambda d: gaussian_basis(d, 4.0)), (jnp.asarray(batch.distances),), 0.0),
    }


def inference_batch(structures, batch_size: int = 64):
    """The fullest of the batches `StructureEnsemble.predict` makes of `structures` (all
    of one padded shape)."""
    model = StructureEnsemble(members=1, width=16, steps=3, cutoff=4.0, epochs=1, batch_size=batch_size)
    graphs = [crystal_graph(s, 4.0) for s in structures]
    return max((batch for _, batch in model._inference_batches(graphs)), key=lambda b: int(b.node_mask.sum()))


def profile(structures, width: int, members: int = 4, batch_size: int = 64) -> dict:
    model = StructureEnsemble(members=members, width=width, steps=3, cutoff=4.0, epochs=1, batch_size=batch_size)
    batch = inference_batch(structures, batch_size)
    real_nodes, real_edges = int(batch.node_mask.sum()), int(batch.edge_mask.sum())
    module = StructureGNN(width=width, steps=3, cutoff=4.0, avg_coordination=10.0)
    params = init_ensemble(module, batch, members, 0)
    predict = make_predict(module)
    forward_s = seconds(predict, params, batch)
    n_graphs = int(batch.graph_mask.sum())
    real = network_flops(model, real_nodes, real_edges, n_graphs)
    padded = network_flops(model, len(batch.species), len(batch.senders), len(batch.graph_mask))

    step = make_train_step(module)
    opt_state = jax.vmap(OPTIMIZER.init)(params)
    targets = jnp.zeros(len(batch.graph_mask), jnp.float32)
    train_s = seconds(lambda p, o: step(p, o, batch, targets, 1e-4), params, opt_state)
    rows = {name: {"seconds": seconds(fn, *args), "real_flops": flops}
            for name, (fn, args, flops) in parts(batch, width, members).items()}
    return {"width": width, "members": members, "graphs": n_graphs, "nodes_real": real_nodes,
            "nodes_padded": len(batch.species), "edges_real": real_edges, "edges_padded": len(batch.senders),
            "forward_s": forward_s, "forward_gflops_per_s": real / forward_s / 1e9,
            # XLA counts a loop's body once (the members in turn on a CPU): count the batched program
            "forward_xla_flops": xla_flops(lambda p: jax.vmap(module.apply, in_axes=(0, None))(p, batch), params),
            "forward_real_flops": real,
            "forward_padded_flops": padded, "train_step_s": train_s,
            "train_gflops_per_s": 3 * real / train_s / 1e9, "parts": rows}


#: The two ways of running an ensemble's members in one program: `train.each_member`
#: takes the first on an accelerator, the second on a CPU.
LAYOUTS = {"vmap": jax.vmap, "in_turn": lambda f: lambda params: jax.lax.map(f, params)}


def member_layouts(structures, members: int = 4) -> list[dict]:
    """Seconds of the members batched (`jax.vmap`) against one after the other
    (`jax.lax.map`), each inside one jitted program: the structure GNN's forward pass and
    its loss gradients on the inference batch at width 64 and 256, and the NequIP
    pre-relaxer's energies, forces and stresses on 16 structures."""
    batch = inference_batch(structures)
    targets = jnp.zeros(len(batch.graph_mask), jnp.float32)
    rows = []
    for width in (64, 256):
        module = StructureGNN(width=width, steps=3, cutoff=4.0, avg_coordination=10.0)
        params = init_ensemble(module, batch, members, 0)
        row = {"model": "gnome", "width": width}
        for name, layout in LAYOUTS.items():
            row[f"forward_{name}_s"] = seconds(jax.jit(layout(lambda p: module.apply(p, batch))), params)
            gradients = jax.value_and_grad(lambda p: jnp.mean((module.apply(p, batch) - targets) ** 2))
            row[f"gradients_{name}_s"] = seconds(jax.jit(layout(gradients)), params, repeats=3)
        rows.append(row)
    config = NequIPConfig()
    small = nequip_batch(structures[:16], config.cutoff)
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[
        init_params(config, key, small) for key in jax.random.split(jax.random.PRNGKey(0), members)])
    row = {"model": "nequip", "width": None}
    for name, layout in LAYOUTS.items():
        outputs = jax.jit(layout(lambda p: energy_forces_stress(p, config, small)))
        row[f"forward_{name}_s"] = seconds(outputs, params, repeats=3)
    rows.append(row)
    for row in rows:
        print(row, flush=True)
    return rows


#: Graphs per call of the throughput rows, (scoring, training), by platform.
SLOTS = {"cpu": ((64, 256), (64,)), "gpu": ((64, 1024, 16384), (64, 1024, 4096))}


def throughput(graphs, width: int, platform: str, members: int = 4) -> list[dict]:
    """Structures/s of scoring and of one training step for batches of more and more
    graphs (`graphs` cycled), with the real work's FLOP rate."""
    module = StructureGNN(width=width, steps=3, cutoff=4.0, avg_coordination=10.0)
    model = StructureEnsemble(members=members, width=width, steps=3, cutoff=4.0)
    predict, step = make_predict(module), make_train_step(module)
    scoring, training = SLOTS.get(platform, SLOTS["cpu"])
    rows = []
    for slots in sorted(set(scoring) | set(training)):
        chosen = [graphs[i % len(graphs)] for i in range(slots)]
        batch = batch_graphs(chosen, slots, 4.0)
        real = graphs_flops(model, chosen)
        params = init_ensemble(module, batch, members, 0)
        row = {"width": width, "graphs": slots, "edges_padded": len(batch.senders)}
        if slots in scoring:
            forward_s = seconds(predict, params, batch, repeats=3)
            row.update(structures_per_s=slots / forward_s, forward_gflops_per_s=real / forward_s / 1e9)
        if slots in training:
            opt_state, targets = jax.vmap(OPTIMIZER.init)(params), jnp.zeros(slots + 1, jnp.float32)
            train_s = seconds(lambda p, o: step(p, o, batch, targets, 1e-4), params, opt_state, repeats=3)
            row.update(train_structures_per_s=slots / train_s, train_gflops_per_s=3 * real / train_s / 1e9)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> int:
    parser = bench_parser(__doc__, "profile_gnome", "500 structures")
    args = parser.parse_args()
    if not (DATA / "mp20_subset").is_dir():
        print(f"skipped: reference data not found at {DATA}")
        return 0
    structures = candidate_structures(500 if args.quick else 2000)
    platform, size = jax.devices()[0].platform, matmul_size()
    peak = matmul_peak(size)
    graphs = [crystal_graph(s, 4.0) for s in structures]
    result = {"device": str(jax.devices()[0]), "cores": len(os.sched_getaffinity(0)), "matmul_size": size,
              "matmul_gflops_per_s": peak / 1e9, "widths": [profile(structures, w) for w in (64, 256)],
              "throughput": [row for w in (64, 256) for row in throughput(graphs, w, platform)],
              "member_layouts": member_layouts(structures)}
    print(f"{result['device']}, {result['cores']} cores: plain {size}² matmul {peak / 1e9:.1f} GFLOP/s")
    for row in result["widths"]:
        print(f"\nwidth {row['width']}: {row['graphs']} graphs, nodes {row['nodes_real']}/{row['nodes_padded']}, "
              f"edges {row['edges_real']}/{row['edges_padded']} (real/padded)")
        print(f"  forward {1e3 * row['forward_s']:.1f} ms = {row['forward_gflops_per_s']:.1f} GFLOP/s real work "
              f"({row['forward_real_flops'] / row['forward_xla_flops']:.0%} of XLA's count); train step "
              f"{1e3 * row['train_step_s']:.1f} ms = {row['train_gflops_per_s']:.1f} GFLOP/s (3x forward)")
        for name, part in row["parts"].items():
            rate = f"{part['real_flops'] / part['seconds'] / 1e9:7.1f} GFLOP/s" if part["real_flops"] else ""
            print(f"  {name:36} {1e3 * part['seconds']:8.2f} ms  {rate}")
    print(f"\n{'width':>5} {'graphs':>7} {'scoring/s':>11} {'GFLOP/s':>9} {'training/s':>11} {'GFLOP/s':>9}")
    for row in result["throughput"]:
        cells = [f"{row[k]:>{n}.1f}" if k in row else " " * n for k, n in (
            ("structures_per_s", 11), ("forward_gflops_per_s", 9), ("train_structures_per_s", 11),
            ("train_gflops_per_s", 9))]
        print(f"{row['width']:>5} {row['graphs']:>7} " + " ".join(cells))
    print(f"\n{'members':<24}{'vmap':>10}{'in turn':>10}{'speed-up':>10}  (seconds)")
    for row in result["member_layouts"]:
        name = f"{row['model']} {row['width'] or ''}".strip()
        for part in ("forward", "gradients"):
            if f"{part}_vmap_s" in row:
                vmap, in_turn = row[f"{part}_vmap_s"], row[f"{part}_in_turn_s"]
                print(f"{name + ' ' + part:<24}{vmap:>10.3f}{in_turn:>10.3f}{vmap / in_turn:>9.2f}x")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
