"""Benchmark: do the energy models learn real chemistry?

Trains on the MP-20 subset (../shared/data/mp20_subset, formation energy per atom)
and reports the validation MAE of the GNoME structure GNN ensemble, the composition
ensemble and the per-element linear baseline, plus the Spearman correlation between
the ensemble's spread and its absolute error. Then trains on the Li-Co-Ni-O MP
system (energy per atom, split by formula hash).

    python experiments/bench_model.py [--quick] [--json PATH]
"""

from __future__ import annotations

import gzip
import json
import sys
import time
import warnings

import numpy as np
import gnome_loop  # noqa: F401  (before pandas: pyarrow's threads would miss gnome_loop/malloc.py's settings)
import pandas as pd
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry
from scipy.stats import spearmanr

from gnome_loop.models.ensemble import CompositionEnsemble, StructureEnsemble
from gnome_loop.models.linear import LinearElementModel
from gnome_loop.models.split import split_indices

from common import DATA, bench_parser, write_results


def load_mp20(name: str) -> tuple[list[Structure], np.ndarray]:
    frame = pd.read_csv(DATA / "mp20_subset" / f"{name}.csv.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(cif, fmt="cif") for cif in frame["cif"]]
    return structures, frame["formation_energy_per_atom"].to_numpy(dtype=float)


def load_chemsys(max_atoms: int) -> tuple[list[Structure], np.ndarray]:
    with gzip.open(DATA / "mp_chemsys" / "Li-Co-Ni-O.json.gz", "rt") as handle:
        entries = [ComputedStructureEntry.from_dict(d) for d in json.load(handle)]
    entries = [e for e in entries if len(e.structure) <= max_atoms]
    return [e.structure for e in entries], np.array([e.energy_per_atom for e in entries])


def evaluate(model, train: tuple, val: tuple) -> dict:
    """Fit on `train`, report MAE (and spread/error rank correlation) on `val`."""
    started = time.perf_counter()
    model.fit(*train)
    fitted = time.perf_counter() - started
    mean, spread = model.predict(val[0])
    errors = np.abs(mean - val[1])
    rho = float(spearmanr(spread, errors).statistic) if np.ptp(spread) > 0 else None
    print(f"  {type(model).__name__}: fitted in {fitted:.0f} s, validation MAE {errors.mean():.3f} eV/atom", flush=True)
    return {"val_mae": float(errors.mean()), "spread_error_spearman": rho, "fit_s": round(fitted, 1)}


def models(quick: bool, seed: int = 0) -> dict:
    epochs = 40 if quick else 300
    gnn = dict(members=4, width=48 if quick else 96, steps=3, cutoff=4.0, epochs=epochs,
               batch_size=32, learning_rate=2e-3 if quick else 1e-3, patience=40, seed=seed)
    return {
        "linear": LinearElementModel(),
        "composition": CompositionEnsemble(**{**gnn, "epochs": 3 * epochs}),
        "structure": StructureEnsemble(**gnn),
    }


def main() -> int:
    parser = bench_parser(__doc__, "bench_model", "smaller networks and fewer epochs (< 5 min)")
    args = parser.parse_args()
    if not (DATA / "mp20_subset").is_dir():
        print(f"skipped: reference data not found at {DATA}")
        return 0

    started = time.perf_counter()
    train, val = load_mp20("train"), load_mp20("val")
    mp20 = {name: evaluate(model, train, val) for name, model in models(args.quick).items()}

    structures, energies = load_chemsys(max_atoms=20 if args.quick else 40)
    formulas = [s.composition.reduced_formula for s in structures]
    tr, va = split_indices(formulas)
    pick = lambda idx: ([structures[i] for i in idx], energies[idx])  # noqa: E731
    chemsys_models = models(args.quick)
    if args.quick:  # larger cells, fewer epochs: the quick run stays under 5 minutes
        chemsys_models["structure"].settings["epochs"] = 30
    chemsys = {name: evaluate(model, pick(tr), pick(va))
               for name, model in chemsys_models.items() if name != "composition"}

    result = {
        "quick": args.quick,
        "mp20_val_mae_structure": mp20["structure"]["val_mae"],
        "mp20_val_mae_composition": mp20["composition"]["val_mae"],
        "mp20_val_mae_linear": mp20["linear"]["val_mae"],
        "spread_error_spearman": mp20["structure"]["spread_error_spearman"],
        "structure_vs_linear": mp20["linear"]["val_mae"] / mp20["structure"]["val_mae"],
        "lcno_val_mae_structure": chemsys["structure"]["val_mae"],
        "lcno_val_mae_linear": chemsys["linear"]["val_mae"],
        "details": {"mp20": mp20, "Li-Co-Ni-O": chemsys},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(f"{'data':<14}{'model':<14}{'val MAE meV/at':>16}{'spread~error ρ':>16}{'fit s':>8}")
    for data, rows in (("MP-20", mp20), ("Li-Co-Ni-O", chemsys)):
        for name, row in rows.items():
            rho = "-" if row["spread_error_spearman"] is None else f"{row['spread_error_spearman']:.2f}"
            print(f"{data:<14}{name:<14}{1000 * row['val_mae']:>16.1f}{rho:>16}{row['fit_s']:>8.1f}")
    print(f"structure GNN vs linear on MP-20: {result['structure_vs_linear']:.2f}x lower MAE "
          f"({result['wall_s']:.0f} s in all)")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
