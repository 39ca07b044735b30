"""Benchmark: the NequIP pre-relaxer, what it learns and what it buys.

1. Accuracy on held-out relaxations, per round of data. AFLOW prototypes decorated
   with a space's elements are perturbed (0.15 Å rattle, up to 5 % strain) and
   relaxed by the oracle
   (EMT, and CHGNet unless --no-chgnet); the relaxations are split into four equal
   parts: the first is the held-out test set, and the potential is trained on one,
   two and three of the others ("rounds of data") with the campaign's default
   settings. Energy MAE (meV/atom) and force MAE (meV/Å) of the ensemble mean on
   every frame of the test relaxations, beside the baselines (species shift only;
   zero forces).
2. Throughput of the batched JAX FIRE relaxer against ASE's FIRE relaxing the same
   structures one by one with the same potential (`NequIPCalculator`), both warm
   (compiled), in one run.
3. Hit rate and DAF at the same oracle budget, in the GNN campaign benchmark
   (`bench_campaign.py`, EMT): selection by the GNoME ensemble with and without
   `prerelax: nequip`, and random selection as the prevalence estimate.

    python experiments/bench_prerelax.py [--quick] [--no-chgnet] [--json PATH]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.filters import UnitCellFilter
from ase.optimize import FIRE
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.campaign import Campaign
from gnome_loop.config import Prerelax, parse_config
from gnome_loop.models.graph import GraphError
from gnome_loop.models.nequip import NequIPConfig
from gnome_loop.models.nequip_train import (NequIPCalculator, average_neighbors, predict_nequip, train_nequip,
                                             training_frames)
from gnome_loop.oracle.ase_relax import AseRelaxOracle
from gnome_loop.prerelax import prerelax
from gnome_loop.snapshot.prototypes import prototype_templates
from gnome_loop.structures import validate_structure

from bench_campaign import config_for, cumulative_hit_rate
from common import bench_parser, write_results

SPACES = {"emt": ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"], "chgnet": ["Li", "Mg", "Al", "Si", "O", "S"]}


def perturbed_prototypes(elements: list[str], count: int, seed: int) -> list:
    """`count` AFLOW prototypes (≤ 8 atoms, ≤ 2 elements) decorated with random elements
    of the space, scaled to a packing fraction of 0.6 of atomic spheres, then
    strained (up to 5 %) and rattled (0.15 Å)."""
    rng = np.random.default_rng(seed)
    templates = [s for _, s in prototype_templates() if len(s) <= 8 and len(s.composition.elements) <= 2]
    out = []
    for index in rng.permutation(len(templates)):
        if len(out) == count:
            break
        template = templates[index]
        chosen = dict(zip(template.composition.elements,
                          rng.choice(elements, len(template.composition.elements), replace=False)))
        structure = Structure(template.lattice, [chosen[site.specie] for site in template], template.frac_coords)
        spheres = sum(4 / 3 * np.pi * float(site.specie.atomic_radius) ** 3 for site in structure)
        structure.scale_lattice(spheres / 0.6)
        strain = np.eye(3) + np.diag(rng.uniform(-0.05, 0.05, 3))
        rattle = rng.normal(0.0, 0.15 / np.sqrt(3), (len(structure), 3))
        structure = Structure(Lattice(structure.lattice.matrix @ strain), structure.species,
                              structure.cart_coords @ strain + rattle, coords_are_cartesian=True)
        if validate_structure(structure) is None:
            out.append(structure)
    return out


def relaxations(oracle_name: str, count: int, max_steps: int, seed: int) -> list[tuple]:
    """(structure, trajectory) of `count` oracle relaxations of perturbed prototypes."""
    oracle = AseRelaxOracle(oracle_name, fmax=0.05, max_steps=max_steps, relax_cell=True)
    out = []
    for structure in perturbed_prototypes(SPACES[oracle_name], count, seed):
        result = oracle.relax(structure)
        out.append((result.structure, result.trajectory))
    return out


def settings(frames: list | None = None) -> tuple[NequIPConfig, Prerelax]:
    """The campaign's default pre-relaxer, normalised to the neighbour count of `frames`."""
    defaults = Prerelax(kind="nequip")
    config = NequIPConfig(cutoff=defaults.cutoff, irreps=defaults.irreps, blocks=defaults.blocks,
                          radial_hidden=defaults.radial_hidden)
    if frames:
        config = dataclasses.replace(config, avg_neighbors=average_neighbors(frames, defaults.cutoff))
    return config, defaults


def accuracy_per_round(data: list[tuple], seed: int, rounds: tuple[int, ...] = (1, 2, 3)
                       ) -> tuple[list[dict], dict, NequIPConfig]:
    """Train on `rounds` quarters of the relaxations (1, 2, 3); test on the held-out quarter."""
    _, defaults = settings()
    parts = np.array_split(np.random.default_rng(seed).permutation(len(data)), 4)
    test = training_frames([data[i] for i in parts[0]])
    rows, params = [], None
    for k in rounds:
        train = training_frames([data[i] for p in parts[1:k + 1] for i in p], defaults.frame_stride,
                                defaults.max_frames)
        config, _ = settings(train)
        started = time.perf_counter()
        params, fit = train_nequip(train, config, members=defaults.members, epochs=defaults.epochs,
                                   batch_size=defaults.train_batch_size, patience=defaults.patience, seed=seed)
        seconds = time.perf_counter() - started
        prediction = predict_nequip(params, config, [f.structure for f in test])
        energy = 1e3 * np.mean([abs(e.mean() - f.energy) / len(f.structure)
                                for e, f in zip(prediction.energies, test)])
        force = 1e3 * np.mean(np.concatenate([np.abs(p.mean(-1) - f.forces).ravel()
                                              for p, f in zip(prediction.forces, test)]))
        rows.append({"rounds_of_data": k, "train_frames": len(train), "test_frames": len(test),
                     "energy_mae_meV_per_atom": float(energy), "force_mae_meV_per_A": float(force),
                     "force_mae_zero_meV_per_A": float(1e3 * np.mean(np.concatenate(
                         [np.abs(f.forces).ravel() for f in test]))),
                     "train_s": round(seconds, 1)})
    return rows, params, config


def speedup(params: dict, config: NequIPConfig, structures: list, max_steps: int) -> dict:
    """Warm structures/s of `prerelax` (batched) and of ASE FIRE one by one, same potential and fmax."""
    _, defaults = settings()

    def batched() -> list:
        return prerelax(structures, params, config, fmax=defaults.fmax, max_steps=max_steps, max_force_std=1e9,
                        batch_size=defaults.batch_size)

    def one_by_one() -> list[int]:
        calculator = NequIPCalculator(params, config)
        steps = []
        for structure in structures:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.calc = calculator
            optimizer = FIRE(UnitCellFilter(atoms), logfile=None)
            try:
                optimizer.run(fmax=defaults.fmax, steps=max_steps)
            except GraphError:  # atoms collapsed: the batched relaxer stops these as "exploded"
                pass
            steps.append(optimizer.nsteps)
        return steps

    batched(), one_by_one()  # compile every shape first: the timings below are warm
    started = time.perf_counter()
    results = batched()
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    ase_steps = one_by_one()
    ase_s = time.perf_counter() - started
    return {"structures": len(structures), "batched_s": round(batched_s, 2), "ase_s": round(ase_s, 2),
            "batched_structures_per_s": len(structures) / batched_s, "ase_structures_per_s": len(structures) / ase_s,
            "batched_speedup_vs_ase": ase_s / batched_s,
            "mean_steps_batched": float(np.mean([r.relax.steps for r in results])),
            "mean_steps_ase": float(np.mean(ase_steps)),
            "exploded_batched": sum(1 for r in results if r.relax.status == "exploded")}


def campaign_arms(quick: bool, workdir: Path) -> dict:
    """Hit rates of the GNN campaign: with and without the pre-relaxer, and random selection."""
    arms = {}
    for name, strategy, with_prerelax in (("model", "model", False), ("model+prerelax", "model", True),
                                          ("random", "random", False)):
        data = config_for("emt", strategy, quick)
        if with_prerelax:
            data["prerelax"] = {"kind": "nequip"}
        campaign = Campaign.create(parse_config(data), workdir / name.replace("+", "_"))
        started = time.perf_counter()
        campaign.run()
        rows = [row for row in campaign.round_table() if row["round"] > 0]
        arms[name] = {"hit_rate": [row["hit_rate"] for row in rows], "evaluated": [row["evaluated"] for row in rows],
                      "cumulative": cumulative_hit_rate(rows), "wall_s": round(time.perf_counter() - started, 1)}
    prevalence = arms["random"]["cumulative"][-1]
    for name in ("model", "model+prerelax"):
        final = arms[name]["cumulative"][-1]
        arms[name]["daf"] = final / prevalence if final is not None and prevalence else None
    return arms


def main() -> int:
    parser = bench_parser(__doc__, "bench_prerelax",
                          "fewer relaxations, trainings (1 and 3 quarters of the data) and campaign rounds")
    parser.add_argument("--no-chgnet", action="store_true", help="EMT trajectories only")
    args = parser.parse_args()
    count, steps = (24, 60) if args.quick else (48, 100)

    started = time.perf_counter()
    accuracy, trained = {}, {}
    for oracle in ("emt",) if args.no_chgnet else ("emt", "chgnet"):
        t = time.perf_counter()
        data = relaxations(oracle, count, steps, seed=0)
        print(f"{oracle}: {len(data)} relaxations, {sum(len(t['energies']) for _, t in data)} frames "
              f"in {time.perf_counter() - t:.0f} s")
        accuracy[oracle], params, config = accuracy_per_round(data, seed=0, rounds=(1, 3) if args.quick else (1, 2, 3))
        trained[oracle] = (params, config)
        write_results(args.json, {"quick": args.quick, "partial": True, "accuracy_per_round": accuracy})
    params, config = trained["emt"]
    timing = speedup(params, config, perturbed_prototypes(SPACES["emt"], 32, seed=1), max_steps=steps)
    write_results(args.json, {"quick": args.quick, "partial": True, "accuracy_per_round": accuracy,
                              "relaxer": timing})
    with tempfile.TemporaryDirectory(prefix="bench_prerelax_") as tmp:
        arms = campaign_arms(args.quick, Path(tmp))

    last = accuracy["emt"][-1]
    result = {
        "quick": args.quick,
        "energy_mae_meV_per_atom": last["energy_mae_meV_per_atom"],
        "force_mae_meV_per_A": last["force_mae_meV_per_A"],
        "daf_with_prerelax": arms["model+prerelax"]["daf"],
        "daf_without_prerelax": arms["model"]["daf"],
        "batched_speedup_vs_ase": timing["batched_speedup_vs_ase"],
        "accuracy_per_round": accuracy, "relaxer": timing, "campaign": arms,
        "wall_s": round(time.perf_counter() - started, 1),
    }

    fmt = lambda value, digits=1: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
    print(f"{'oracle':>7}{'rounds':>7}{'frames':>8}{'E MAE meV/at':>14}{'F MAE meV/Å':>13}{'F zero':>8}{'train s':>9}")
    for oracle, rows in accuracy.items():
        for row in rows:
            print(f"{oracle:>7}{row['rounds_of_data']:>7}{row['train_frames']:>8}"
                  f"{fmt(row['energy_mae_meV_per_atom']):>14}{fmt(row['force_mae_meV_per_A']):>13}"
                  f"{fmt(row['force_mae_zero_meV_per_A']):>8}{row['train_s']:>9}")
    print(f"relaxing {timing['structures']} structures: batched {timing['batched_structures_per_s']:.2f}/s, "
          f"ASE one by one {timing['ase_structures_per_s']:.2f}/s: {timing['batched_speedup_vs_ase']:.1f}x "
          f"(mean steps {timing['mean_steps_batched']:.0f} vs {timing['mean_steps_ase']:.0f})")
    print(f"{'arm':>16}{'hit rate per round':>26}{'cumulative':>12}{'DAF':>6}{'wall s':>8}")
    for name, arm in arms.items():
        print(f"{name:>16}{' '.join(fmt(h, 2) for h in arm['hit_rate']):>26}{fmt(arm['cumulative'][-1], 2):>12}"
              f"{fmt(arm.get('daf'), 2):>6}{arm['wall_s']:>8}")
    print(f"{result['wall_s']:.0f} s in all")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
