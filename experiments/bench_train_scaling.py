"""Benchmark: how a round's train stage grows with its data (issue 20).

Fine-tunes the shipped structure ensemble (a campaign's default: `model.init:
pretrained`, the `model` section's settings) on the first 200, 2,000 and 20,000
structures of mp37k (formation energies; cells of every size, as a campaign's
entries come) for `--epochs` epochs, and reports for each size:
- the fixed part: crystal graphs, the per-element reference against the pretrained
  network's predictions, the first epoch's compilation (first epoch minus a later one);
- seconds per epoch (train steps and validation; the mean of the epochs after the
  first), per 1,000 structures and per 10,000 atoms per epoch: the cost of a
  structure follows its atoms (edges), so the last should not grow with the data;
- the train stage a round would take at the campaign's epoch budget (fixed + epochs ×
  per epoch): `stage_seconds_at_patience` stops at the first early-stopping point
  (patience + 1 epochs), `stage_seconds_at_budget` runs every epoch.
Run it alone on the machine.

    python experiments/bench_train_scaling.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import gnome_loop  # noqa: F401  (before pandas: pyarrow's threads would miss gnome_loop/malloc.py's settings)
import pandas as pd
from pymatgen.core import Structure

from gnome_loop.config import Model
from gnome_loop.models.ensemble import StructureEnsemble
from gnome_loop.models.pretrained import load_pretrained

from common import DATA, bench_parser, write_results

SIZES = (200, 2000, 20000)


def mp37k(n: int) -> tuple[list[Structure], np.ndarray]:
    """The first `n` readable structures of mp37k and their formation energies per atom."""
    frame = pd.read_csv(DATA / "mp37k" / "mp37k_eform.csv.gz", nrows=int(n * 1.05) + 10)
    structures, energies = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif, energy in zip(frame["cif"], frame["formation_energy_per_atom"]):
            try:
                structures.append(Structure.from_str(cif, fmt="cif"))
            except (ValueError, KeyError, IndexError):
                continue
            energies.append(energy)
            if len(structures) == n:
                break
    return structures, np.array(energies)


def stage(structures: list[Structure], energies: np.ndarray, settings: dict, init) -> dict:
    """Fine-tune on the data for settings["epochs"] epochs; the times of its parts."""
    stamps: list[float] = []
    model = StructureEnsemble(**settings)
    started = time.perf_counter()
    fit = model.fit(structures, energies, init=init, on_epoch=lambda state: stamps.append(time.perf_counter()))
    ended = time.perf_counter()
    epochs = np.diff([started, *stamps])
    per_epoch = float(np.mean(epochs[1:])) if len(epochs) > 1 else float(epochs[0])
    budget, patience = Model().epochs, Model().patience
    fixed = float(epochs[0]) - per_epoch + (ended - stamps[-1])
    return {"structures": len(structures), "atoms_mean": float(np.mean([len(s) for s in structures])),
            "n_train": fit["n_train"], "epochs_run": len(stamps), "fixed_seconds": fixed,
            "first_epoch_seconds": float(epochs[0]), "seconds_per_epoch": per_epoch,
            "seconds_per_1000_per_epoch": 1000 * per_epoch / len(structures),
            "seconds_per_10000_atoms_per_epoch": 10000 * per_epoch / sum(len(s) for s in structures),
            "stage_seconds_at_patience": fixed + min(patience + 1, budget) * per_epoch,
            "stage_seconds_at_budget": fixed + budget * per_epoch}


def main() -> int:
    parser = bench_parser(__doc__, "bench_train_scaling", "200 and 2,000 structures only")
    parser.add_argument("--epochs", type=int, default=3, help="epochs run at each size (at least 2)")
    args = parser.parse_args()
    if not (DATA / "mp37k").is_dir():
        print(f"skipped: mp37k not found at {DATA}")
        return 0
    sizes = SIZES[:2] if args.quick else SIZES
    structures, energies = mp37k(max(sizes))
    settings = {**Model().model_dump(exclude={"kind", "init"}), "epochs": max(args.epochs, 2)}
    settings["patience"] = settings["epochs"]  # every epoch runs
    pretrained = load_pretrained("gnome")
    rows = []
    print(f"{'entries':>8} {'atoms':>6} {'fixed s':>8} {'s/epoch':>8} {'s/1000/epoch':>13} {'s/10^4 atoms':>13} "
          f"{'stage at patience':>18} {'stage at budget':>16}")
    for n in sizes:
        row = stage(structures[:n], energies[:n], settings, pretrained)
        rows.append(row)
        print(f"{n:8d} {row['atoms_mean']:6.1f} {row['fixed_seconds']:8.1f} {row['seconds_per_epoch']:8.2f} "
              f"{row['seconds_per_1000_per_epoch']:13.2f} {row['seconds_per_10000_atoms_per_epoch']:13.2f} "
              f"{row['stage_seconds_at_patience'] / 60:15.1f} min "
              f"{row['stage_seconds_at_budget'] / 60:13.1f} min", flush=True)
    write_results(args.json, {"quick": args.quick, "settings": settings, "rows": rows,
                              "seconds_per_1000_per_epoch": {str(r["structures"]): r["seconds_per_1000_per_epoch"]
                                                             for r in rows}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
