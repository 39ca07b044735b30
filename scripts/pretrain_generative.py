"""Pretrain the generative models that ship with gnome_loop, resumably.

    python scripts/pretrain_generative.py lm             # CIF language model on mp37k
    python scripts/pretrain_generative.py flow           # flow-matching CSP on mp37k
    python scripts/pretrain_generative.py flow --dataset perov_5   # ... or on a genbench set
    python scripts/pretrain_generative.py lm --export    # write the weights so far into the package

The training state is saved to `--workdir` every `--checkpoint-minutes`, after every
epoch and when `--hours` runs out; the same command again (after a kill, or in a later
session) resumes at the next batch and ends after the same number of steps. When all
epochs are done, or with `--export`, the weights go to
`gnome_loop/generative/pretrained/<kind>/` (mp37k: the models a campaign's
`checkpoint: pretrained` loads) or `<kind>-<dataset>/` (a genbench set: the
benchmarks' models), or `--out`, with a model card naming the data, their licence,
this script, the commit and the metrics. JAX uses a GPU where one is installed.

Data (`../shared/data`): mp37k's cells of at most `--max-atoms` atoms, with the rules
of the energy models' pretraining (`scripts/pretrain.py`): phases of three or more
elements of Li-Co-Ni-O and every formula of MP-20's validation subset are left out.
Or a genbench training split (perov_5, carbon_24: CDVAE's splits). The language model
reads each structure as our symmetrised CIF, augmented every epoch (random Wyckoff
representatives and site order: the same structure in other words); the flow reads
the Niggli cell, in batches of crystals of one size (padded to that size only: the
all-pairs network's cost grows with the square of the padding). Validation: GNoME's
split by MD5 of the reduced formula (15 %), or for a set of one formula (carbon_24) by
MD5 of each structure's position.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.vasp import Poscar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pretrain import LICENCE, commit, parallel_map, parse_run, structure_data  # noqa: E402

from gnome_loop.generative import cif_lm, cif_tokens, flow  # noqa: E402
from gnome_loop.generative.checks import check_samples  # noqa: E402
from gnome_loop.generative.training import (fit, initial_fit_state, load_fit_state,  # noqa: E402
                                            make_optimizer, size_groups)
from gnome_loop.models.split import is_train, split_indices  # noqa: E402

PRETRAINED_DIR = ROOT / "gnome_loop" / "generative" / "pretrained"
#: Settings of each shipped generator (a checkpoint resumes only under the same ones).
#: The language model is CPU-sized (an epoch of mp37k: about 11 min on one core; perov_5's
#: CIFs are under 230 tokens): a GPU trains GNoME-scale widths in minutes (the perov_5
#: model took 5.1 min on an H200, data and compilation included), a 2-core CPU does not.
SETTINGS = {
    "lm": {"max_len": 512, "width": 128, "depth": 4, "heads": 4, "epochs": 20, "batch_size": 32,
           "learning_rate": 1e-3, "warmup_steps": 500, "seed": 0},
    "flow": {"width": 128, "layers": 4, "frequencies": 8, "epochs": 300, "batch_size": 64,
             "learning_rate": 1e-3, "warmup_steps": 500, "seed": 0},
}
SOURCES = {
    "mp37k": ("kdmsit/crysxpp and kdmsit/MEGNet (mp37k_eform.csv.gz)",
              LICENCE.format(source="kdmsit/crysxpp and kdmsit/MEGNet")),
    "perov_5": ("CDVAE's perov_5 train split via usnistgov/jarvis_leaderboard (Castelli et al. 2012)",
                "NIST terms of use (jarvis_leaderboard); CDVAE splits, MIT (txie-93/cdvae)"),
    "carbon_24": ("CDVAE's carbon_24 train split via usnistgov/jarvis_leaderboard (Pickard 2020, AIRSS)",
                  "NIST terms of use (jarvis_leaderboard); CDVAE splits, MIT (txie-93/cdvae)"),
}
#: The language model's batches are padded to a multiple of this many tokens.
LENGTH_BUCKET = 32
#: CSP matching of the generative benchmarks (CDVAE, DiffCSP, FlowMM).
BENCH_MATCHER = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


def genbench_structures(data: Path, name: str, limit: int | None) -> tuple[list[Structure], dict]:
    """A genbench training split's structures (POSCAR strings keyed by id, their line
    breaks written as the two characters backslash and n)."""
    with gzip.open(data / "genbench" / name / "train_poscar.json.gz", "rt") as handle:
        poscars = list(json.load(handle).values())[:limit]
    return [Poscar.from_str(text.replace("\\n", "\n")).structure for text in poscars], {}


def symmetrised(structure: Structure) -> cif_tokens.SymmetrisedCrystal | None:
    """`cif_tokens.symmetrise(structure)`, or None where that fails."""
    try:
        return cif_tokens.symmetrise(structure)
    except ValueError:
        return None


def lm_texts(structures: list[Structure], max_len: int, jobs: int = 1) -> tuple[list, list[Structure], dict]:
    """Each structure's symmetrised crystal (for augmentation) where its CIF fits `max_len`
    (symmetry found in `jobs` processes)."""
    crystals, kept, dropped = [], [], Counter()
    for structure, crystal in zip(structures, parallel_map(symmetrised, structures, jobs)):
        if crystal is None:
            dropped["symmetrisation failed"] += 1
            continue
        if len(cif_tokens.encode(cif_tokens.write_cif(crystal))) + 1 > max_len:
            dropped[f"CIF longer than {max_len} tokens"] += 1
            continue
        crystals.append(crystal)
        kept.append(structure)
    return crystals, kept, dict(dropped)


def split(structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices: GNoME's split by MD5 of the reduced formula, or,
    for a set of one formula (carbon_24: all carbon, which that split keeps whole in
    training), by MD5 of each structure's position in the set."""
    formulas = [s.composition.reduced_formula for s in structures]
    if len(set(formulas)) > 1:
        return split_indices(formulas)
    mask = np.array([is_train(str(index)) for index in range(len(structures))], dtype=bool)
    return np.flatnonzero(mask), np.flatnonzero(~mask)


class Run(NamedTuple):
    """What training one kind of generator needs, and how to export it."""

    config: Any
    params: Any
    make_step: Callable
    batches: Callable[[int], list]
    evaluate: Callable[[Any], float]  # params -> validation loss
    metrics: Callable[[Any], dict]  # params -> the card's metrics
    structures: list[Structure]
    dropped: dict
    n_train: int
    save: Callable[[Path, Any, dict], None]  # (folder, params, card)


def lm_run(settings: dict, structures: list[Structure], n_eval: int, jobs: int = 1) -> Run:
    """The language model's step, batches, validation and end-of-run metrics (validity)."""
    config = cif_lm.LMConfig(**{k: settings[k] for k in ("max_len", "width", "depth", "heads")})
    crystals, structures, dropped = lm_texts(structures, config.max_len, jobs)
    train, val = split(structures)
    size = settings["batch_size"]
    # batches of CIFs of one length bucket, padded to its end: augmentation keeps a CIF's length
    # (a CIF of n tokens and its end token are padded to ceil((n + 1) / B) * B: bucket n // B)
    buckets = np.array([len(cif_tokens.encode(cif_tokens.write_cif(c))) // LENGTH_BUCKET for c in crystals])

    def tokens(chunk: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        return cif_lm.token_batch([cif_tokens.write_cif(crystals[i], rng) for i in chunk], config.max_len,
                                  multiple=LENGTH_BUCKET)

    def batches(epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([settings["seed"], epoch])
        return [tokens(chunk, rng) for chunk in size_groups(buckets, rng.permutation(train), size, rng)]

    val_tokens = [tokens(chunk, None) for chunk in size_groups(buckets, val, size, np.random.default_rng(0))]
    eval_loss = cif_lm.make_eval_loss(config)

    def evaluate(params) -> float:
        return float(np.mean([eval_loss(params, batch) for batch in val_tokens])) if val_tokens else float("nan")

    def metrics(params) -> dict:
        rows = (val if len(val) else train)[:n_eval]
        prompts = [cif_tokens.prompt(crystals[i].composition) for i in rows]
        samples = cif_lm.sample(config, params, prompts, jax.random.PRNGKey(settings["seed"]), top_k=10)
        checked = check_samples(samples)
        return {"val_loss_nats_per_token": evaluate(params), "samples": checked.total,
                "valid": len(checked.structures), "rejected": dict(checked.rejected)}

    return Run(config, cif_lm.init_params(config, settings["seed"]), cif_lm.make_train_step, batches, evaluate,
               metrics, structures, dropped, len(train),
               lambda out, params, card: cif_lm.save_lm(out, config, params, card))


def flow_run(settings: dict, structures: list[Structure], n_eval: int) -> Run:
    """The flow's step, batches, validation and end-of-run metrics (CSP match rate)."""
    config = flow.FlowConfig(max_atoms=max(map(len, structures)),
                             **{k: settings[k] for k in ("width", "layers", "frequencies")})
    train, val = split(structures)
    stats = flow.lattice_stats([structures[i] for i in train])
    data = flow.crystal_batch(structures, stats, config.max_atoms)
    sizes, size = data.mask.sum(axis=1).astype(int), settings["batch_size"]

    def batches(epoch: int) -> list[flow.CrystalBatch]:
        rng = np.random.default_rng([settings["seed"], epoch])
        return [flow.take(data, chunk, size) for chunk in size_groups(sizes, rng.permutation(train), size, rng)]

    eval_loss = flow.make_eval_loss(config)

    def evaluate(params) -> float:
        key = jax.random.PRNGKey(settings["seed"])
        losses = [eval_loss(params, flow.take(data, chunk, size), jax.random.fold_in(key, i))
                  for i, chunk in enumerate(size_groups(sizes, val, size, np.random.default_rng(0)))]
        return float(np.mean(losses)) if losses else float("nan")

    def metrics(params) -> dict:
        chosen = [structures[i] for i in (val if len(val) else train)[:n_eval]]
        samples = flow.sample(config, params, stats, [s.composition for s in chosen],
                              jax.random.PRNGKey(settings["seed"]), steps=100)
        matcher = StructureMatcher(**BENCH_MATCHER)
        matched = sum(matcher.fit(a, b) for a, b in zip(samples, chosen))
        return {"val_loss": evaluate(params), "csp_samples": len(chosen),
                "csp_match_rate": matched / max(len(chosen), 1), "matcher": BENCH_MATCHER}

    return Run(config, flow.init_params(config, settings["seed"]), flow.make_train_step, batches, evaluate,
               metrics, structures, {}, len(train),
               lambda out, params, card: flow.save_flow(out, config, params, stats, card))


def main(argv: list[str] | None = None) -> int:
    def more_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", choices=sorted(SOURCES), default="mp37k")
        parser.add_argument("--eval-samples", type=int, default=32, help="samples drawn for the card's metrics")

    args, settings = parse_run(argv, __doc__.split("\n\n")[0], SETTINGS, more_options)
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.dataset == "mp37k":
            structures, _, dropped = structure_data(args.data, args.max_atoms, args.limit, args.jobs)
        else:
            structures, dropped = genbench_structures(args.data, args.dataset, args.limit)
        if args.kind == "lm":
            run = lm_run(settings, structures, args.eval_samples, args.jobs)
        else:
            run = flow_run(settings, structures, args.eval_samples)
    dropped, structures = {**dropped, **run.dropped}, run.structures
    print(f"{args.kind} on {args.dataset}: {len(structures)} structures ({run.n_train} training); left out "
          f"{dropped} ({time.time() - started:.0f} s)", flush=True)

    steps_per_epoch = len(run.batches(0))
    optimizer = make_optimizer(settings["learning_rate"], settings["epochs"] * steps_per_epoch,
                               settings["warmup_steps"])
    fresh = initial_fit_state(run.params, optimizer)
    meta = {"kind": args.kind, "dataset": args.dataset, "settings": settings, "limit": args.limit,
            "max_atoms": args.max_atoms}
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.workdir / f"generative-{args.kind}-{args.dataset}.msgpack"
    state = fresh
    if checkpoint.exists():
        state, saved = load_fit_state(checkpoint, fresh)
        if {k: saved.get(k) for k in meta} != meta:
            print(f"{checkpoint} is another run ({ {k: saved.get(k) for k in meta} }): use another --workdir",
                  file=sys.stderr)
            return 2
        print(f"resuming from {checkpoint}: epoch {state.epoch}, step {state.step}", flush=True)
    elif args.export:
        print(f"no checkpoint at {checkpoint} to export", file=sys.stderr)
        return 2

    def report(current) -> None:
        print(f"epoch {current.epoch}/{settings['epochs']}: {current.step} steps, train loss "
              f"{current.history['train_loss'][-1]:.4f}, validation loss {current.history['val_loss'][-1]:.4f} "
              f"({(time.time() - started) / 60:.1f} min)", flush=True)

    if not args.export:
        deadline = time.monotonic() + 3600 * args.hours if args.hours else None
        state = fit(run.make_step(run.config, optimizer), state, run.batches, settings["epochs"],
                    jax.random.PRNGKey(settings["seed"]), checkpoint=checkpoint, meta=meta,
                    checkpoint_seconds=60 * args.checkpoint_minutes, deadline=deadline, evaluate=run.evaluate,
                    on_epoch=report)
    finished = state.epoch >= settings["epochs"]
    if not (finished or args.export):
        print(f"stopped at epoch {state.epoch}, step {state.step}: run the same command again to resume from "
              f"{checkpoint}")
        return 0
    out = args.out or PRETRAINED_DIR / (args.kind if args.dataset == "mp37k" else f"{args.kind}-{args.dataset}")
    source, licence = SOURCES[args.dataset]
    card = {"data": source, "dataset": args.dataset, "licence": licence, "samples": len(structures),
            "training_samples": run.n_train, "left_out": dropped, "script": "scripts/pretrain_generative.py",
            "commit": commit(), "settings": settings, "epochs": state.epoch, "steps": state.step,
            "finished": finished, "history": state.history, "metrics": run.metrics(state.params),
            "elements": sorted({el.symbol for s in structures for el in s.composition.elements}),
            "validation": "MD5 of the reduced formula, 15 % (GNoME's split)",
            "held_out": "phases of three or more elements of Li-Co-Ni-O; every formula of mp20_subset/val"
            if args.dataset == "mp37k" else "none (genbench's own train split)",
            "wall_seconds_this_run": round(time.time() - started)}
    run.save(out, state.params, card)
    print(f"exported to {out}: {json.dumps(card['metrics'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
