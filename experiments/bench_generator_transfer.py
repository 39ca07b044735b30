"""Benchmark: does fine-tuning the shipped flow on what a campaign found help it predict
the structures the campaign has not found yet? (issue 19: the mechanism by which the
in-loop fine-tuning could make the generator better as a campaign goes.)

Li-Co-Ni-O's ternary and quaternary MP phases within 0.05 eV/atom of MP's hull are
held out of the shipped generators' pretraining (scripts/pretrain_generative.py). Those
of at most the flow's 20 atoms (primitive cell) are split by reduced formula into two
halves: `found` (as if the oracle had already put them on the hull) and `unseen`. The
flow is fine-tuned, from the checkpoint as in a campaign, on a reward set:

- `stable`: the snapshot's stable unary and binary phases plus the found half;
- `near`: the snapshot's phases within 0.1 eV/atom of its hull plus the found half;
- `unseen` (a ceiling, not a campaign's choice): the unseen half itself;

for several step counts and learning rates (`--steps`, `--learning-rates`; the
campaign's default is 20 steps at 1e-4) at the campaign's batch size. Reported for
each: the flow-matching loss on the unseen half (mean over 16 noise draws; lower: the
model puts more weight on those structures), the CSP match rate on the unseen half
(4 samples per structure of its own cell composition, StructureMatcher stol 0.5,
angle_tol 10, ltol 0.3, as bench_generative.py: the share of samples that match, and of
structures matched by any of its 4), and the validity of 144 samples of the space's 40
best ranked new formulas (the drift of bench_generator_drift.py). Two splits; the
summary averages them per setting. A later run with other settings adds its rows to
those of the same mode (quick or not) in --json.

    python experiments/bench_generator_transfer.py [--quick] [--json PATH]
        [--rewards stable,near,unseen] [--steps 20,100,300] [--learning-rates 1e-4] [--baseline 1]
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.structure_matcher import StructureMatcher

from gnome_loop.config import FlowGenerator
from gnome_loop.generate.generative import PRETRAINED, Generator, finetune
from gnome_loop.generative import flow
from gnome_loop.hull import STABLE_TOL

from bench_discovery import SYSTEM, split_system
from bench_generative import MATCHER
from bench_generator_drift import samples_valid, snapshot_prompts
from common import bench_parser, write_results

SAMPLES_PER_TARGET = 4
LOSS_DRAWS = 16


def split_targets(targets: list, max_atoms: int, seed: int) -> tuple[list, list]:
    """The targets' primitive structures of at most `max_atoms` atoms, split in two by
    reduced formula (every polymorph of a formula on one side)."""
    small = [s for s in (e.structure.get_primitive_structure() for e in targets) if len(s) <= max_atoms]
    formulas = sorted({s.composition.reduced_formula for s in small})
    chosen = set(np.random.default_rng(seed).permutation(formulas)[: len(formulas) // 2])
    return ([s for s in small if s.composition.reduced_formula in chosen],
            [s for s in small if s.composition.reduced_formula not in chosen])


def heldout_loss(model: Generator, structures: list) -> float:
    """The flow-matching loss on `structures`, averaged over LOSS_DRAWS noise draws."""
    batch = flow.crystal_batch(structures, model.stats, model.config.max_atoms)
    loss = flow.make_eval_loss(model.config)
    return float(np.mean([loss(model.params, batch, jax.random.PRNGKey(k)) for k in range(LOSS_DRAWS)]))


def csp_match(model: Generator, structures: list, key: jax.Array) -> tuple[float, float]:
    """The share of SAMPLES_PER_TARGET samples per structure (its own cell composition)
    that match it, and the share of structures that any of its samples matches."""
    settings = FlowGenerator()
    cells = [s.composition for s in structures for _ in range(SAMPLES_PER_TARGET)]
    samples = flow.sample(model.config, model.params, model.stats, cells, key, settings.steps,
                          settings.anti_annealing)
    matcher = StructureMatcher(**MATCHER)
    hits = np.array([matcher.fit(sample, structures[i // SAMPLES_PER_TARGET]) for i, sample in enumerate(samples)])
    per_target = hits.reshape(len(structures), SAMPLES_PER_TARGET)
    return float(hits.mean()), float(per_target.any(axis=1).mean())


def main() -> int:
    parser = bench_parser(__doc__, "bench_generator_transfer", "one split, 0 and 100 steps")
    parser.add_argument("--rewards", default="stable,near,unseen", help="reward sets, comma-separated")
    parser.add_argument("--steps", default="20,100,300", help="fine-tuning step counts, comma-separated")
    parser.add_argument("--learning-rates", default="1e-4", help="Adam learning rates, comma-separated")
    parser.add_argument("--baseline", type=int, choices=(0, 1), default=1, help="1: also the checkpoint as it is")
    args = parser.parse_args()
    if not SYSTEM.is_file():
        print(f"skipped: {SYSTEM} not found (the reference data lie beside the dev checkout)")
        return 0
    entries = loadfn(SYSTEM)
    known, targets = split_system(entries, PhaseDiagram(entries))
    e_hulls, prompts = snapshot_prompts(known)
    snapshot = {"stable": [e.structure for e, e_hull in zip(known, e_hulls) if e_hull <= STABLE_TOL],
                "near": [e.structure for e, e_hull in zip(known, e_hulls) if e_hull <= 0.1 + STABLE_TOL]}
    base = Generator.load("flow", PRETRAINED["flow"])
    settings = FlowGenerator()
    if args.quick:
        plan = [("none", 0, 0.0), ("stable", 100, settings.finetune_learning_rate)]
    else:
        plan = ([("none", 0, 0.0)] * args.baseline
                + [(reward, int(steps), float(rate)) for reward in args.rewards.split(",")
                   for steps in args.steps.split(",") for rate in args.learning_rates.split(",")])
    earlier = json.loads(args.json.read_text()) if args.json.exists() else {}
    result: dict = {"quick": args.quick, "samples_per_target": SAMPLES_PER_TARGET,
                    "validity_samples": len(prompts), "batch_size": settings.finetune_batch_size,
                    "runs": earlier.get("runs", {}) if earlier.get("quick") == args.quick else {}}
    for split in (0,) if args.quick else (0, 1):
        found, unseen = split_targets(targets, base.config.max_atoms, split)
        print(f"split {split}: {len(found)} found, {len(unseen)} unseen structures")
        for reward, steps, rate in plan:
            started = time.perf_counter()
            learn = {"none": [], "unseen": unseen, **{k: v + found for k, v in snapshot.items()}}[reward]
            model, record = finetune(base, learn, steps, rate, settings.finetune_batch_size, seed=split)
            per_sample, any_of = csp_match(model, unseen, jax.random.PRNGKey(100 + split))
            valid, _ = samples_valid(model, prompts, jax.random.PRNGKey(7))
            row = {"split": split, "reward": reward, "steps": steps, "learning_rate": rate,
                   "learned_from": record["structures"],
                   "found": len(found), "unseen": len(unseen), "unseen_loss": heldout_loss(model, unseen),
                   "unseen_match_per_sample": per_sample, "unseen_matched_any": any_of,
                   "valid_share": valid / len(prompts), "seconds": round(time.perf_counter() - started, 1)}
            result["runs"][f"split {split} {reward} {steps} {rate:g}"] = row
            print(f"{reward:>7} {steps:>4} steps lr {rate:g} ({row['learned_from']:>3} structures): unseen loss "
                  f"{row['unseen_loss']:.4f}, match {per_sample:.3f} per sample, {any_of:.3f} any of "
                  f"{SAMPLES_PER_TARGET}; valid {row['valid_share']:.3f}  [{row['seconds']} s]", flush=True)
    result["summary"] = summary(result["runs"])
    write_results(args.json, result)
    return 0


def summary(runs: dict) -> dict:
    """The splits' mean of each measure per setting (reward, steps, learning rate), printed
    as a table."""
    settings: dict = {}
    for row in runs.values():
        settings.setdefault(f"{row['reward']} {row['steps']} {row['learning_rate']:g}", []).append(row)
    measures = ("unseen_loss", "unseen_match_per_sample", "unseen_matched_any", "valid_share")
    out = {name: {"splits": len(rows), **{m: float(np.mean([row[m] for row in rows])) for m in measures}}
           for name, rows in settings.items()}
    print(f"{'reward steps lr':<22} splits  loss    match/sample  matched any  valid")
    for name, row in out.items():
        print(f"{name:<22} {row['splits']:>6}  {row['unseen_loss']:.4f}  {row['unseen_match_per_sample']:>12.3f}"
              f"  {row['unseen_matched_any']:>11.3f}  {row['valid_share']:.3f}")
    return out


if __name__ == "__main__":
    sys.exit(main())
