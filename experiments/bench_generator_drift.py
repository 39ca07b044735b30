"""Benchmark: how fine-tuning steps on a campaign's few stable structures move the shipped
generators (why `generators.<kind>.finetune_steps` start from the checkpoint every round).

A campaign's generators are fine-tuned each round on the entries near the hull
(rejection-sampling fine-tuning). Early on these are a handful: Li-Co-Ni-O's unary and
binary MP phases on MP's hull (the snapshot of bench_discovery.py). Here the shipped
language model and flow are fine-tuned on them for 0, 20, 40 and 100 steps (the
campaign's batch size and learning rate), and each then samples the space's 40 best
ranked new formulas at every cell size up to 16 atoms, twice each (the same draws
for every step count). Reported: the language model's samples that pass every check
(`generative.checks`) with their rejects by reason, and the flow's samples that pass
the generate stage's structure validation. Chained fine-tuning, from the round before's
weights, would add 20 steps a round: 100 after five rounds.

    python experiments/bench_generator_drift.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import time
from collections import Counter

import jax
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition

from gnome_loop.config import FlowGenerator, LLMGenerator
from gnome_loop.generate.generative import PRETRAINED, Generator, _sample_llm, finetune, prompt_cells, prompt_formulas
from gnome_loop.generative import flow
from gnome_loop.hull import STABLE_TOL
from gnome_loop.structures import ChemicalSpace, validate_structure

from bench_discovery import SYSTEM, split_system
from common import bench_parser, write_results

SPACE = ChemicalSpace(("Li", "Co", "Ni", "O"), max_elements=4, max_atoms=16)


def samples_valid(model: Generator, rows: list, key: jax.Array) -> tuple[int, Counter]:
    """How many of the model's samples for `rows` (prompt cells) are valid, and the rejects."""
    if model.kind == "llm":
        kept, rejected = _sample_llm(model, rows, LLMGenerator(), key)
        return len(kept), rejected
    settings = FlowGenerator()
    structures = flow.sample(model.config, model.params, model.stats, rows, key, settings.steps,
                             settings.anti_annealing)
    rejected = Counter(reject.category for reject in (validate_structure(s, SPACE) for s in structures) if reject)
    return len(structures) - sum(rejected.values()), rejected


def snapshot_prompts(known: list) -> tuple[list[float], list[Composition]]:
    """The snapshot entries' E_hull on their own hull, and the in-space prompts that
    measure validity: the space's 40 best ranked new formulas at every cell size within
    SPACE.max_atoms, twice each."""
    diagram = PhaseDiagram(known)
    e_hulls = [diagram.get_e_above_hull(e) for e in known]
    formulas = prompt_formulas("ranked", 40, SPACE, [(e.composition.reduced_formula, e_hull)
                                                      for e, e_hull in zip(known, e_hulls)])
    return e_hulls, [cell for cell in prompt_cells(formulas, SPACE.max_atoms) for _ in range(2)]


def main() -> int:
    parser = bench_parser(__doc__, "bench_generator_drift", "the language model only, 0 and 100 steps")
    args = parser.parse_args()
    if not SYSTEM.is_file():
        print(f"skipped: {SYSTEM} not found (the reference data lie beside the dev checkout)")
        return 0
    known, _ = split_system(loadfn(SYSTEM))
    e_hulls, rows = snapshot_prompts(known)
    stable = [e for e, e_hull in zip(known, e_hulls) if e_hull <= STABLE_TOL]
    print(f"{len(stable)} stable phases to fine-tune on; {len(rows)} samples per model and step count")
    settings = LLMGenerator()
    result: dict = {"quick": args.quick, "stable_phases": len(stable), "samples": len(rows), "runs": {}}
    for kind in ("llm",) if args.quick else ("llm", "flow"):
        base = Generator.load(kind, PRETRAINED[kind])
        prompts = [cell for cell in rows if kind == "llm" or cell.num_atoms <= base.config.max_atoms]
        for steps in (0, 100) if args.quick else (0, 20, 40, 100):
            started = time.perf_counter()
            model, record = finetune(base, [e.structure for e in stable], steps, settings.finetune_learning_rate,
                                     settings.finetune_batch_size, seed=0)
            valid, rejected = samples_valid(model, prompts, jax.random.PRNGKey(7))
            result["runs"][f"{kind} {steps}"] = {
                "kind": kind, "steps": steps, "samples": len(prompts), "valid": valid,
                "valid_share": valid / len(prompts), "rejected": dict(rejected.most_common()),
                "loss_last": record.get("loss_last"), "seconds": round(time.perf_counter() - started, 1)}
            print(f"{kind:>4} {steps:>4} steps: {valid:>4} of {len(prompts)} valid  {dict(rejected.most_common())}",
                  flush=True)
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
