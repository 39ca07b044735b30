"""Benchmark: throughput of the whole scoring path against CHGNet single points.

Structures in → crystal graphs → 4-member GNoME ensemble → median and spread out,
on >= 2,000 structures of <= 20 atoms (the MP-20 subset plus strained copies),
timed on a second pass (a screening run compiles its few padded shapes once),
against CHGNet 0.3.0 single-point energies on a sample of the same structures in
the same run. Reports structures/s of both and their ratio, the share of time in
graph building vs the network, and the achieved FLOP rate: the network's
multiply-adds are counted analytically from the layer sizes and the real (unpadded)
node and edge counts, so padding is charged as waste, not as work.

    python experiments/bench_filter.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import jax
import numpy as np
import pandas as pd
from pymatgen.core import Structure

from gnome_loop.models.ensemble import StructureEnsemble
from gnome_loop.models.gnome import N_GAUSSIANS
from gnome_loop.models.graph import crystal_graph

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
    flops = network_flops(model, sum(g.n_node for g in graphs), sum(g.n_edge for g in graphs), n)

    chgnet_rate, sample = None, []
    if not args.no_chgnet:
        from chgnet.model import CHGNet

        chgnet = CHGNet.load(verbose=False)
        sample = structures[: args.chgnet_sample or (100 if args.quick else 400)]
        chgnet.predict_structure(sample[:4], batch_size=4)
        started = time.perf_counter()
        chgnet.predict_structure(sample, batch_size=16)
        chgnet_rate = len(sample) / (time.perf_counter() - started)

    cores = len(os.sched_getaffinity(0))
    if jax.devices()[0].platform == "gpu":
        # H100 SXM float32 without tensor cores: 67 TFLOP/s (NVIDIA's datasheet).
        peak, peak_basis = 67e12, "H100 SXM fp32 datasheet"
    else:
        # cores × 2 FMA units × 8 float32 lanes (AVX2) × 2 flops at an assumed 2.5 GHz.
        peak, peak_basis = cores * 2 * 8 * 2 * 2.5e9, f"{cores} cores x 32 flop/cycle (AVX2 FMA) x 2.5 GHz"
    result = {
        "structures": n, "gnn_structures_per_s": gnn_rate, "gnn_first_pass_structures_per_s": n / cold_s, "chgnet_structures_per_s": chgnet_rate,
        "ratio_vs_chgnet": gnn_rate / chgnet_rate if chgnet_rate else None, "chgnet_sample": len(sample),
        "graph_share": graph_s / total_s, "network_share": network_s / total_s,
        "network_gflops_per_s": flops / network_s / 1e9, "peak_gflops_assumed": peak / 1e9, "peak_basis": peak_basis,
        "peak_fraction": flops / network_s / peak, "device": str(jax.devices()[0]), "cores": cores,
    }
    print(f"{'path':<28}{'structures/s':>14}")
    print(f"{'GNoME ensemble (4 members)':<28}{gnn_rate:>14.1f}")
    print(f"{'  first pass (compiling)':<28}{n / cold_s:>14.1f}")
    if chgnet_rate:
        print(f"{'CHGNet single point':<28}{chgnet_rate:>14.1f}")
        print(f"ratio vs CHGNet {result['ratio_vs_chgnet']:.1f}x")
    print(f"on {result['device']}: time in graph building {100 * result['graph_share']:.0f} %, "
          f"network {100 * result['network_share']:.0f} %; network {result['network_gflops_per_s']:.1f} GFLOP/s "
          f"= {100 * result['peak_fraction']:.2f} % of an assumed {peak / 1e9:.0f} GFLOP/s peak ({peak_basis})")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
