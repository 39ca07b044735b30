"""Pretrain the energy models that ship with gnome_loop, resumably.

    python scripts/pretrain.py structure     # GNoME structure GNN ensemble on mp37k (hours on 2 cores)
    python scripts/pretrain.py composition   # composition ensemble on matbench's formation energies
    python scripts/pretrain.py structure --export   # write the best weights so far into the package

Training state is saved to `--workdir` every `--checkpoint-minutes` and at the end;
running the same command again (after a kill, or in a later session) resumes where
the last checkpoint stopped and ends after the same number of steps. When training
ends (all epochs, or early stopping), or with `--export`, the best weights are
written to `gnome_loop/models/pretrained/<kind>/` with a model card naming the data,
their licence, this script and the commit. JAX uses a GPU where one is installed.

What is trained on, and why (a 2-core CPU sets the budget):
- structure: mp37k (an ≈2018 Materials Project set: formation energies per atom
  from pre-MP2020 corrections) restricted to cells of at most 20 atoms (≈19,600 of
  36,645: an epoch takes minutes, and a campaign's candidates are mostly that
  small); formation energies below -5 eV/atom are dropped (4 rows from -5.0 to
  -13.6, far below matbench's physical minimum of -4.6: data errors).
- composition: matbench_mp_e_form, the lowest formation energy of each reduced
  formula (the composition model answers "how low can this formula go").
- both: phases of three or more elements of Li-Co-Ni-O are left out (the discovery
  benchmark rediscovers them), and so is every formula of the MP-20 validation
  subset (`mp20_subset/val`), so that the MAE reported on it is on unseen formulas.
Validation: GNoME's split by MD5 of the reduced formula (15 %).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gnome_loop.generate.composition import placeholder_structure  # noqa: E402
from gnome_loop.models.composition import composition_input_error  # noqa: E402
from gnome_loop.models.ensemble import CompositionEnsemble, StructureEnsemble  # noqa: E402
from gnome_loop.models.pretrained import PRETRAINED_DIR, held_out  # noqa: E402
from gnome_loop.models.train import TrainState  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: Formation energies below this are data errors in mp37k (see the module docstring).
MIN_FORMATION_ENERGY = -5.0
#: Settings of each pretrained ensemble (the campaign's `model` section must match them).
SETTINGS = {
    "structure": {"members": 4, "width": 64, "steps": 3, "cutoff": 4.0, "epochs": 100, "batch_size": 32,
                  "learning_rate": 1e-3, "patience": 15, "seed": 0},
    "composition": {"members": 4, "width": 64, "epochs": 60, "batch_size": 128, "learning_rate": 1e-3,
                    "patience": 10, "seed": 0},
}
LICENCE = ("Materials Project data, CC BY 4.0 (A. Jain et al., APL Materials 1, 011002 (2013)); "
           "distributed by {source} under the MIT licence")


def mp20_val_formulas(data: Path) -> set[str]:
    """Reduced formulas of the MP-20 validation subset (kept out of pretraining)."""
    path = data / "mp20_subset" / "val.csv.gz"
    frame = pd.read_csv(path, usecols=["pretty_formula"])
    return {Composition(f).reduced_formula for f in frame["pretty_formula"]}


def parallel_map(function: Callable, items: Sequence, jobs: int) -> list:
    """`[function(item) for item in items]`, in `jobs` processes when jobs > 1: parsing
    CIFs and finding symmetry are CPU-bound and independent per structure (minutes on
    one core for mp37k). `function` must be a module-level function; the processes are
    spawned (a forked JAX process can deadlock)."""
    if jobs <= 1 or len(items) < 4 * jobs:
        return [function(item) for item in items]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return list(pool.map(function, items, chunksize=max(1, len(items) // (8 * jobs))))


def default_jobs() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0))


def read_cif(cif: str) -> Structure | None:
    """The structure of a CIF, or None where pymatgen cannot read it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Structure.from_str(cif, fmt="cif")
        except (ValueError, KeyError, IndexError):
            return None


def structure_data(data: Path, max_atoms: int, limit: int | None, jobs: int = 1) -> tuple[list, np.ndarray, dict]:
    """mp37k structures of at most `max_atoms` atoms, their formation energies per atom,
    and the counts of what was left out and why (CIFs read in `jobs` processes)."""
    frame = pd.read_csv(data / "mp37k" / "mp37k_eform.csv.gz", nrows=limit)
    excluded_formulas = mp20_val_formulas(data)
    structures, energies, dropped = [], [], {"too many atoms": 0, "held-out system": 0, "MP-20 val formula": 0,
                                            "formation energy outlier": 0, "unreadable CIF": 0}
    read = parallel_map(read_cif, list(frame["cif"]), jobs)
    for structure, energy in zip(read, frame["formation_energy_per_atom"]):
        if structure is None:
            dropped["unreadable CIF"] += 1
            continue
        reason = _excluded(structure.composition, energy, excluded_formulas)
        if len(structure) > max_atoms:
            reason = "too many atoms"
        if reason:
            dropped[reason] += 1
            continue
        structures.append(structure)
        energies.append(energy)
    return structures, np.array(energies), dropped


def composition_data(data: Path, limit: int | None) -> tuple[list, np.ndarray, dict]:
    """One placeholder structure per reduced formula of matbench_mp_e_form with its lowest
    formation energy per atom, and the counts of what was left out and why."""
    frame = pd.read_csv(data / "matbench" / "mp_e_form_compositions.csv.gz", nrows=limit)
    frame["formula"] = [Composition(c).reduced_formula for c in frame["composition"]]
    lowest = frame.groupby("formula")["e_form"].min()
    excluded_formulas = mp20_val_formulas(data)
    structures, energies = [], []
    dropped = {"polymorph above the formula's lowest": len(frame) - len(lowest), "held-out system": 0,
               "MP-20 val formula": 0, "formation energy outlier": 0, "too many elements": 0}
    for formula, energy in lowest.items():
        composition = Composition(formula)
        reason = _excluded(composition, energy, excluded_formulas)
        if composition_input_error(composition):
            reason = "too many elements"
        if reason:
            dropped[reason] += 1
            continue
        structures.append(placeholder_structure(formula))
        energies.append(energy)
    return structures, np.array(energies), dropped


def _excluded(composition: Composition, energy: float, excluded_formulas: set[str]) -> str | None:
    if held_out(composition):
        return "held-out system"
    if composition.reduced_formula in excluded_formulas:
        return "MP-20 val formula"
    if energy < MIN_FORMATION_ENERGY:
        return "formation energy outlier"
    return None


def mp20_val_mae(model, data: Path) -> float | None:
    """MAE of the model's formation energies on the MP-20 validation subset (eV/atom)."""
    frame = pd.read_csv(data / "mp20_subset" / "val.csv.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(cif, fmt="cif") for cif in frame["cif"]]
    keep = [i for i, s in enumerate(structures) if model.input_error(s) is None]
    predicted, _ = model.predict([structures[i] for i in keep])
    return float(np.mean(np.abs(predicted - frame["formation_energy_per_atom"].to_numpy()[keep])))


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_run(argv: list[str] | None, description: str, settings: dict,
              more_options: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
              ) -> tuple[argparse.Namespace, dict]:
    """A pretraining command line (this script's and pretrain_generative.py's): the kind
    of model, `more_options`, the run's options; and the kind's settings with --epochs
    applied. Exits with status 2 when the data folder is missing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("kind", choices=sorted(settings))
    more_options(parser)
    add_run_options(parser)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.exit(2, f"no data folder at {args.data}: pretraining needs ../shared/data\n")
    return args, dict(settings[args.kind], **({"epochs": args.epochs} if args.epochs else {}))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a resumable pretraining run."""
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "gnome_loop" / "pretrain",
                        help="where the training checkpoint lives between runs")
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: the package's)")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--max-atoms", type=int, default=20, help="largest cell of the mp37k structure set")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N rows (tests)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs (tests)")
    parser.add_argument("--hours", type=float, default=None, help="train no further after this long (then resume)")
    parser.add_argument("--export", action="store_true", help="export the checkpoint's (best) weights now")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="processes that read and prepare the structures (default: the usable cores)")


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_run(argv, __doc__.split("\n\n")[0], SETTINGS)
    started = time.time()
    if args.kind == "structure":
        structures, energies, dropped = structure_data(args.data, args.max_atoms, args.limit, args.jobs)
        model = StructureEnsemble(**settings)
        source = "kdmsit/crysxpp and kdmsit/MEGNet (mp37k_eform.csv.gz)"
    else:
        structures, energies, dropped = composition_data(args.data, args.limit)
        model = CompositionEnsemble(**settings)
        source = "materialsproject/matbench (matbench_mp_e_form)"
    print(f"{args.kind}: {len(structures)} samples; left out {dropped} ({time.time() - started:.0f} s)", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.workdir / f"{args.kind}.msgpack"
    if args.export and not checkpoint.exists():
        print(f"no checkpoint at {checkpoint} to export", file=sys.stderr)
        return 2

    def report(state: TrainState) -> None:
        val = f", val MAE {np.round(np.array(state.history['val_mae'][-1]) * model.scale, 4).tolist()} eV/atom" \
            if state.history["val_mae"] else ""
        print(f"epoch {state.epoch}/{settings['epochs']}: {state.n_steps} steps, train loss "
              f"{np.mean(state.history['train_loss'][-1]):.4f}{val} ({(time.time() - started) / 60:.1f} min)",
              flush=True)

    fit = model.fit(structures, energies, checkpoint=checkpoint, checkpoint_seconds=60 * args.checkpoint_minutes,
                    on_epoch=report, seconds=0 if args.export else args.hours and 3600 * args.hours)
    print(f"epochs {fit['epochs']} ({'finished' if fit['finished'] else 'not finished'}), "
          f"validation MAE {fit['val_mae']:.4f} eV/atom", flush=True)
    if not (fit["finished"] or args.export):
        print(f"stopped with training left to do: run the same command again to resume from {checkpoint}")
        return 0
    out = args.out or PRETRAINED_DIR / args.kind
    mp20 = mp20_val_mae(model, args.data)
    model.metrics["pretraining"] = {
        "data": source, "samples": len(structures), "left_out": dropped,
        "licence": LICENCE.format(source=source), "script": "scripts/pretrain.py", "commit": commit(),
        "target": "formation energy per atom (eV/atom)", "mp20_val_mae": mp20,
        "validation": "MD5 of the reduced formula, 15 % (GNoME's split)",
        "finished": fit["finished"], "wall_seconds_this_run": round(time.time() - started),
        "held_out": "phases of three or more elements of Li-Co-Ni-O; every formula of mp20_subset/val"}
    model.save(out)
    print(f"exported to {out}: validation MAE {fit['val_mae']:.4f}, MP-20 val MAE {mp20:.4f} eV/atom")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
