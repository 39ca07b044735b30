"""Benchmark: throughput of the whole scoring path against CHGNet single points.

Structures in → crystal graphs → 4-member GNoME ensemble → median and spread out,
on >= 2,000 structures of <= 20 atoms (the MP-20 subset plus strained copies),
timed on a second pass (a screening run compiles its few padded shapes once),
against CHGNet 0.3.0 single-point energies on a sample of the same structures in
the same run. Reports structures/s of both and their ratio, the share of time in
graph building vs the network, and the achieved FLOP rate: the network's
multiply-adds are counted analytically from the layer sizes and the real (unpadded)
node and edge counts, so padding is charged as waste, not as work. The peak is
measured in the same run by a plain float32 matmul (JAX's default precision) on the
same cores (`peak_fraction`; `peak_fraction_assumed` keeps the earlier runs' assumed
160 GFLOP/s for comparison). Training: structures/s of the ensemble's train steps on
its own padded training batches (a backward pass counted as twice the forward), and
seconds per 1,000 structures per epoch; width 256 (GNoME's) scored the same way.

    python experiments/bench_filter.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import gnome_loop  # noqa: F401  (before pandas: pyarrow's threads would miss gnome_loop/malloc.py's settings)
import pandas as pd
from pymatgen.core import Structure

from gnome_loop.models.ensemble import StructureEnsemble
from gnome_loop.models.gnome import N_GAUSSIANS
from gnome_loop.models.graph import crystal_graph
from gnome_loop.models.train import OPTIMIZER, make_train_step

from common import DATA, bench_parser, write_results


def candidate_structures(n: int) -> list[Structure]:
    """MP-20 structures, then copies strained by a few percent, until there are n."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = [Structure.from_str(cif, fmt="cif")
                for name in ("train", "val")
                for cif in pd.read_csv(DATA / "mp20_subset" / f"{name}.csv.gz")["cif"]]
    rng = np.random.default_rng(0)
    out = list(base)
    while len(out) < n:
        copy = base[len(out) % len(base)].copy()
        copy.apply_strain(rng.uniform(-0.03, 0.03, 3))
        out.append(copy)
    return out[:n]


def network_flops(model: StructureEnsemble, n_nodes: int, n_edges: int, n_graphs: int) -> float:
    """Floating-point operations (2 per multiply-add) of one forward pass of all members."""
    w, steps = model.settings["width"], model.settings["steps"]
    per_step = (n_edges * (w * w + w * w)              # edge MLP: e block of layer 1, layer 2
                + n_nodes * 2 * w * w                  # layer 1's h_s, h_r blocks, once per node
                + n_nodes * (3 * w * w + w * w)        # node MLP on [h, messages, g]
                + n_graphs * (2 * w * w + w * w))      # global MLP on [g, pooled]
    macs = n_edges * N_GAUSSIANS * w + steps * per_step + n_graphs * (w * w + w)
    return 2.0 * macs * model.settings["members"]


#: Float32 FLOP/s assumed for this 2-core CPU before the peak was measured (AVX2 FMA at 2.5 GHz).
ASSUMED_PEAK = 160e9


def graphs_flops(model: StructureEnsemble, graphs: list) -> float:
    """`network_flops` of one forward pass over `graphs` (their real nodes and edges)."""
    return network_flops(model, sum(g.n_node for g in graphs), sum(g.n_edge for g in graphs), len(graphs))


def best_seconds(function, *args, repeats: int = 5) -> float:
    """Best wall time of `function(*args)` over `repeats` calls after one warm-up call."""
    jax.block_until_ready(function(*args))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(function(*args))
        best = min(best, time.perf_counter() - started)
    return best


def matmul_size() -> int:
    """The side of the peak's matmul: large enough to keep this backend's device busy."""
    return 8192 if jax.devices()[0].platform == "gpu" else 2048


def matmul_peak(n: int) -> float:
    """FLOP/s of an n × n float32 matmul (JAX's default precision: TF32 on a recent GPU):
    the machine's reachable peak for this run."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    return 2.0 * n**3 / best_seconds(jax.jit(lambda x, y: x @ y), a, a)


def network_rate(model: StructureEnsemble, graphs: list) -> float:
    """FLOP/s of real work of the network alone over `graphs` (prebuilt; batching
    included), best of three passes after a compiling one."""
    return graphs_flops(model, graphs) / best_seconds(model._network_energies, graphs, repeats=3)


def training_rate(model: StructureEnsemble, structures: list[Structure]) -> tuple[float, float]:
    """(structures/s, FLOP/s of real work) of the train steps over the training batches
    that `fit` made for `structures` (a compiling pass, then the best of three passes:
    one pass of ~6 s moved by ±5 % from run to run on a shared VM)."""
    graphs = model._features(structures)
    targets = np.zeros(len(graphs), np.float32)
    batches = model._batches(graphs, targets, np.arange(len(graphs)), fixed=True)
    step = make_train_step(model._module())
    params, opt_state = model.params, jax.vmap(OPTIMIZER.init)(model.params)

    def epoch():
        nonlocal params, opt_state
        for batch, padded_targets in batches:
            params, opt_state, loss = step(params, opt_state, batch, padded_targets, 1e-4)
        return loss

    seconds = best_seconds(epoch, repeats=3)
    return len(graphs) / seconds, 3 * graphs_flops(model, graphs) / seconds


def main() -> int:
    parser = bench_parser(__doc__, "bench_filter", "100 structures timed with CHGNet instead of 400")
    parser.add_argument("--chgnet-sample", type=int, default=None, help="structures timed with CHGNet")
    parser.add_argument("--no-chgnet", action="store_true",
                        help="time the GNN path alone (a GPU machine without CHGNet installed)")
    args = parser.parse_args()
    if not (DATA / "mp20_subset").is_dir():
        print(f"skipped: reference data not found at {DATA}")
        return 0
    n = 2000
    structures = candidate_structures(n)
    model = StructureEnsemble(members=4, width=64, steps=3, cutoff=4.0, epochs=1, batch_size=64)
    model.fit(structures, np.zeros(n))  # one epoch: the weights do not matter for throughput
    started = time.perf_counter()
    model.predict(structures)  # the first pass compiles each padded batch shape once
    cold_s = time.perf_counter() - started

    started = time.perf_counter()
    graphs = [crystal_graph(s, model.settings["cutoff"]) for s in structures]
    graph_s = time.perf_counter() - started
    started = time.perf_counter()
    model.predict(structures)
    total_s = time.perf_counter() - started  # predict builds the graphs again
    network_s = max(total_s - graph_s, 1e-9)
    gnn_rate = n / total_s
    flops = graphs_flops(model, graphs)

    chgnet_rate, sample = None, []
    if not args.no_chgnet:
        from chgnet.model import CHGNet

        chgnet = CHGNet.load(verbose=False)
        sample = structures[: args.chgnet_sample or (100 if args.quick else 400)]
        chgnet.predict_structure(sample[:4], batch_size=4)
        started = time.perf_counter()
        chgnet.predict_structure(sample, batch_size=16)
        chgnet_rate = len(sample) / (time.perf_counter() - started)

    train_rate, train_flops = training_rate(model, structures)
    wide = StructureEnsemble(members=4, width=256, steps=3, cutoff=4.0, epochs=1, batch_size=64)
    wide.fit(structures[:200], np.zeros(200))  # the weights do not matter for throughput
    wide_flops = network_rate(wide, graphs[:500])

    cores = len(os.sched_getaffinity(0))
    platform, size = jax.devices()[0].platform, matmul_size()
    peak = matmul_peak(size)
    network_rate_flops = flops / network_s
    result = {
        "structures": n, "gnn_structures_per_s": gnn_rate, "gnn_first_pass_structures_per_s": n / cold_s,
        "chgnet_structures_per_s": chgnet_rate,
        "ratio_vs_chgnet": gnn_rate / chgnet_rate if chgnet_rate else None, "chgnet_sample": len(sample),
        "graph_share": graph_s / total_s, "network_share": network_s / total_s,
        "network_gflops_per_s": network_rate_flops / 1e9, "peak_gflops_measured": peak / 1e9,
        "peak_basis": f"{size}² float32 matmul, same run, {cores} cores",
        "peak_fraction": network_rate_flops / peak,
        "peak_fraction_assumed": network_rate_flops / ASSUMED_PEAK if platform == "cpu" else None,
        "train_structures_per_s": train_rate, "train_seconds_per_1000_per_epoch": 1000 / train_rate,
        "train_gflops_per_s": train_flops / 1e9, "train_peak_fraction": train_flops / peak,
        "width256_gflops_per_s": wide_flops / 1e9, "width256_peak_fraction": wide_flops / peak,
        "device": str(jax.devices()[0]), "cores": cores,
    }
    print(f"{'path':<28}{'structures/s':>14}")
    print(f"{'GNoME ensemble (4 members)':<28}{gnn_rate:>14.1f}")
    print(f"{'  first pass (compiling)':<28}{n / cold_s:>14.1f}")
    if chgnet_rate:
        print(f"{'CHGNet single point':<28}{chgnet_rate:>14.1f}")
        print(f"ratio vs CHGNet {result['ratio_vs_chgnet']:.1f}x")
    print(f"{'training (width 64)':<28}{train_rate:>14.1f}   ({1000 / train_rate:.1f} s per 1,000 per epoch)")
    print(f"on {result['device']}: time in graph building {100 * result['graph_share']:.0f} %, "
          f"network {100 * result['network_share']:.0f} %; peak {peak / 1e9:.0f} GFLOP/s ({result['peak_basis']})")
    for name, rate, fraction in (("scoring, width 64", "network_gflops_per_s", "peak_fraction"),
                                 ("training, width 64", "train_gflops_per_s", "train_peak_fraction"),
                                 ("scoring, width 256", "width256_gflops_per_s", "width256_peak_fraction")):
        print(f"  {name:20} {result[rate]:8.1f} GFLOP/s = {100 * result[fraction]:5.1f} % of the peak")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
