"""Benchmark: fine-tuning the shipped structure ensemble vs training it from scratch,
same data, same settings (a campaign's train stage, measured alone).

The data are a real campaign's first training set: every unary and binary MP entry of
Li-Co-Ni-O (DFT total energies per atom, MP2020-corrected: not the formation
energies the model was pretrained on, so the per-element reference must move). Both
runs use the campaign defaults of `model` (4 members, width 64, 300 epochs, patience
60, formula-hash validation split); reported: wall time of `fit`, epochs run, and
validation MAE. The issue's target: fine-tuning costs no more wall time than training
from scratch at the same data size. Run it alone on the machine (2 cores).

    python experiments/bench_finetune.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from monty.serialization import loadfn

from gnome_loop.config import Model
from gnome_loop.models.ensemble import StructureEnsemble
from gnome_loop.models.pretrained import load_pretrained

from bench_discovery import SYSTEM, split_system
from common import bench_parser, write_results


def main() -> int:
    parser = bench_parser(__doc__, "bench_finetune", "30 epochs instead of the campaign default")
    args = parser.parse_args()
    if not SYSTEM.is_file():
        print(f"skipped: {SYSTEM} not found (the reference data lie beside the dev checkout)")
        return 0
    entries, _ = split_system(loadfn(SYSTEM))  # the unary and binary MP entries
    structures = [e.structure for e in entries]
    energies = np.array([e.energy_per_atom for e in entries])
    settings = Model().model_dump(exclude={"kind", "init"})
    if args.quick:
        settings["epochs"] = 30
    pretrained = load_pretrained("gnome")
    result = {"quick": args.quick, "entries": len(entries), "settings": settings}
    for how, init in (("scratch", None), ("fine_tuned", pretrained)):
        model = StructureEnsemble(**settings)
        started = time.perf_counter()
        fit = model.fit(structures, energies, init=init)
        result[f"seconds_{how}"] = round(time.perf_counter() - started, 1)
        result[f"epochs_{how}"] = fit["epochs"]
        result[f"val_mae_{how}"] = fit["val_mae"]
        print(f"{how:>10}: {result[f'seconds_{how}']:7.1f} s, {fit['epochs']} epochs, "
              f"val MAE {fit['val_mae']:.3f} eV/atom ({fit['n_train']} train, {fit['n_val']} val)", flush=True)
    result["time_ratio_fine_tuned_vs_scratch"] = round(result["seconds_fine_tuned"] / result["seconds_scratch"], 2)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
