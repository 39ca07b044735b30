"""Benchmark: leave-out rediscovery on a real MP chemical system (Li-Co-Ni-O).

The campaign starts from every unary and binary MP entry of Li-Co-Ni-O (DFT,
MP2020-corrected) as its snapshot, used as they are (`snapshot.reevaluate: never`);
CHGNet is the oracle, its energies judged against that MP hull (the
matbench-discovery protocol: CHGNet 0.3.0 predicts on the MP2020 scale). The
ternary and quaternary phases are hidden: the campaign must find them. Substitution
and SAPS start from the known phases, the AFLOW prototypes and mp37k's ground states
of other elements (ranked by how likely they substitute into the space; the space's
own ternaries are never parents), so each round's pool is tens of times the budget,
as in GNoME. Three arms run with the same seeds, generators and oracle budget:

- random: candidates selected at random (estimates the prevalence of hits);
- scratch: the GNoME GNN ensemble trained from random members on the campaign's data;
- pretrained: the shipped pretrained ensemble, fine-tuned on the campaign's data.

More arms (not run by default) measure a generative model in the loop: the shipped flow
(`flow-*`) or language model (`llm-*`) as the only generator, prompted with the space's
ranked new formulas and its known compounds, either fine-tuned each round on the
oracle's stable results (`*-finetuned`: the campaign default, 20 steps from the
checkpoint at learning rate 1e-4 on every stable entry so far) or kept frozen
(`*-frozen`); `flow-finetuned-near` learns from every entry within 0.1 eV/atom of the
campaign's hull instead (more of the model's own samples), `flow-finetuned-long` for
300 steps at 1e-3 (which moves the flow further: bench_generator_transfer.py), and
`flow-finetuned-own` as long, also on its own 32 samples of earlier rounds that the
pretrained filter (retrained each round) puts nearest the hull. Their
candidates are picked at random (32 a round, 16 with --quick), so that what the oracle
finds measures the generator, not a filter. Reported per round, seeds pooled:
the hit rate of the generator's evaluated candidates against the campaign's hull
(`hit_rate_generated_finetuned|frozen` for the flow, `..._llm_finetuned|frozen` for
the language model), and, finer, their E_hull against MP's whole hull of the space
(the hidden ternaries included): the share within 0.1 eV/atom (`near_hull_rate_generated_*`)
and the median (`ehull_mp_generated_*`); against its frozen arm, rounds and seeds
pooled, each fine-tuned arm's Mann-Whitney p (`ehull_mp_p_vs_frozen_*`) and Fisher's
exact p of the near-hull shares (`near_hull_p_vs_frozen_*`).

Reported per round and cumulatively: hit rate (oracle E_hull <= 0 against the
campaign's hull), DAF against random, filter MAE on the evaluated candidates, and
how many MP ternaries/quaternaries on MP's hull or within 50 meV/atom of it were
rediscovered (StructureMatcher, pymatgen defaults). The pretrained models' MAE on
MP-20 val is reported beside the from-scratch numbers of `bench_model.py`.

    python experiments/bench_discovery.py [--quick] [--arms random,scratch,pretrained] [--seeds 0,1]
        [--keep DIR] [--json PATH]

Each arm runs once per seed; hit rates pool the seeds (a run of 48 picks leaves the
random baseline itself uncertain by about two hits). `--arms` and `--seeds` run some
arms or seeds and keep the others from the earlier results in `--json` (for example
the pretrained arm again after a new checkpoint).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from monty.serialization import dumpfn, loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.entries.computed_entries import ComputedEntry
from scipy.stats import fisher_exact, mannwhitneyu

from gnome_loop.campaign import Campaign
from gnome_loop.config import parse_config
from gnome_loop.generate.parents import FORMULA_SUM
from gnome_loop.models.registry import load_model

from common import DATA, RESULTS, bench_parser, write_results

SYSTEM = DATA / "mp_chemsys" / "Li-Co-Ni-O.json.gz"
MP37K = DATA / "mp37k" / "mp37k_eform.csv.gz"
#: MP phases within this distance of MP's hull count as rediscoverable, eV/atom.
TARGET_EHULL = 0.05
ARMS = ("random", "scratch", "pretrained")
#: The generative arms: one model alone, fine-tuned each round or frozen (name -> generator,
#: key suffix, its fine-tuning settings). Each arm pins its fine-tuning in full rather than
#: take the campaign's defaults, so that a new default does not change what an arm means;
#: `earlier_runs` leaves out stored runs fine-tuned for other steps or at another rate.
GENERATIVE_ARMS = {
    "flow-finetuned": ("flow", "finetuned", {"finetune_steps": 20, "finetune_learning_rate": 1e-4}),
    "flow-frozen": ("flow", "frozen", {"finetune_steps": 0}),
    "flow-finetuned-near": ("flow", "finetuned_near", {"finetune_steps": 20, "finetune_learning_rate": 1e-4,
                                                       "finetune_max_ehull": 0.1}),
    "flow-finetuned-long": ("flow", "finetuned_long", {"finetune_steps": 300, "finetune_learning_rate": 1e-3}),
    # as long, plus its own 32 samples of earlier rounds that the (pretrained) filter puts nearest the hull
    "flow-finetuned-own": ("flow", "finetuned_own", {"finetune_steps": 300, "finetune_learning_rate": 1e-3,
                                                     "finetune_own_samples": 32}),
    "llm-finetuned": ("llm", "llm_finetuned", {"finetune_steps": 20, "finetune_learning_rate": 1e-4}),
    "llm-frozen": ("llm", "llm_frozen", {"finetune_steps": 0}),
}
#: Generated candidates this close to MP's hull count as near it (MatterGen's S.U.N. threshold), eV/atom.
NEAR_HULL = 0.1


def campaign_config(arm: str, snapshot: Path, parents: Path, quick: bool, seed: int = 0) -> dict:
    """One arm's campaign: same space, snapshot, generators, budget and seed. Substitution
    and SAPS draw on the known phases, the prototypes and `parents` (crystals of other
    elements), so that the pool is much larger than the budget, as in GNoME."""
    sources = ["known", "prototypes", str(parents)]
    model = {"kind": "gnome", "init": "scratch" if arm == "scratch" else "pretrained",
             "epochs": 60 if quick else 150, "patience": 30}
    generators = {"substitution": {"max_candidates": 2000, "parents": sources, "max_outside_parents": 5000},
                  "saps": {"max_candidates": 500, "parents": sources}}
    generative, rewarded_by_filter = arm in GENERATIVE_ARMS, False
    if generative:  # one model alone, ~6 candidates per pick
        kind, _, settings = GENERATIVE_ARMS[arm]
        rewarded_by_filter = settings.get("finetune_own_samples", 0) > 0
        generators = {"substitution": {"enabled": False}, "saps": {"enabled": False},
                      kind: {"enabled": True, "checkpoint": "pretrained", "prompts": "both", "compositions": 40,
                             "samples_per_prompt": 4, "max_candidates": 200, **settings}}
    at_random = arm == "random" or generative
    return {
        "name": f"discovery-{arm}", "seed": seed, "rounds": 2 if quick else 3,
        "chemical_space": {"elements": ["Li", "Co", "Ni", "O"], "max_elements": 4, "max_atoms": 16},
        "snapshot": {"source": "file", "path": str(snapshot), "reevaluate": "never"},
        "generators": generators,
        # the arms that pick at random never read their model (the cheap baseline keeps them fast),
        # except as the reward of a generator's own samples
        "model": {"kind": "linear"} if at_random and not rewarded_by_filter else model,
        "selection": {"budget": (8 if quick else 16) * (2 if generative else 1), "per_composition": 2,
                      "strategy": "random" if at_random else "model"},
        "oracle": {"kind": "ase", "calculator": "chgnet", "fmax": 0.1, "max_steps": 150, "max_attempts": 2},
        "scheduler": {"kind": "inline"},
    }


def split_system(entries: list, diagram: PhaseDiagram | None = None) -> tuple[list, list]:
    """The unary and binary entries (the snapshot), and the ternary and richer MP phases
    on or within TARGET_EHULL of MP's hull (`diagram`, made of `entries` unless given):
    what a campaign should rediscover."""
    diagram = diagram or PhaseDiagram(entries)
    known = [e for e in entries if len(e.composition.elements) <= 2]
    targets = [e for e in entries if len(e.composition.elements) >= 3
               and diagram.get_e_above_hull(e) <= TARGET_EHULL]
    return known, targets


def outside_parents(path: Path) -> Path:
    """Write mp37k's ground state of each composition with a negative formation energy to
    `path` (a CSV of CIFs): the crystals of other elements that substitution starts from
    (GNoME substituted from all the stable crystals it knew). Phases of the space's own
    elements are never outside parents (`generate/parents.py` scores them 0), so the
    hidden ternaries stay hidden."""
    import pandas as pd
    from pymatgen.core import Composition

    table = pd.read_csv(MP37K, usecols=["material_id", "formation_energy_per_atom", "cif"])
    table = table[table["formation_energy_per_atom"] < 0]
    table["formula"] = [Composition(FORMULA_SUM.search(cif).group(1)).reduced_formula for cif in table["cif"]]
    ground = table.sort_values("formation_energy_per_atom").drop_duplicates("formula")
    ground[["material_id", "cif"]].to_csv(path, index=False)
    return path


def rediscovered(campaign: Campaign, targets: list) -> dict[str, float]:
    """MP ids of targets matched by a structure the campaign's oracle evaluated, each with
    the oracle's energy minus MP's (eV/atom) for the lowest match: how far the oracle
    itself sits from the DFT it is judged against."""
    matcher = StructureMatcher()
    found = {}
    evaluated = [e for e in campaign.computed_entries() if e.data["source"] == "oracle"]
    for target in targets:
        formula = target.composition.reduced_formula
        matches = [e.energy_per_atom for e in evaluated
                   if e.composition.reduced_formula == formula and matcher.fit(e.structure, target.structure)]
        if matches:
            found[str(target.entry_id)] = min(matches) - target.energy_per_atom
    return found


def round1_model_dft_mae(campaign: Campaign, targets: list) -> float | None:
    """MAE of the model that chose round 1's candidates (trained in round 0) on the hidden
    targets at MP's relaxed structures against MP's DFT energies, eV/atom: the filter's
    error against DFT, apart from the oracle's distance from DFT and from relaxation."""
    directory = campaign.dir / "models" / "r000"
    if not (directory / "model_card.json").is_file():
        return None
    model = load_model(directory)
    predicted, _ = model.predict([target.structure for target in targets])
    return float(np.mean(np.abs(predicted - np.array([t.energy_per_atom for t in targets]))))


def cumulative(rows: list[dict]) -> float | None:
    stable = sum(row["stable"] or 0 for row in rows)
    evaluated = sum(row["evaluated"] or 0 for row in rows)
    return stable / evaluated if evaluated else None


def pretrained_mp20(results: Path) -> dict:
    """MP-20 val MAE of the shipped pretrained models (from their cards) beside the
    from-scratch numbers that bench_model.py measured."""
    from gnome_loop.models.pretrained import PRETRAINED_DIR

    out = {}
    for kind in ("structure", "composition"):
        card = PRETRAINED_DIR / kind / "model_card.json"
        if card.is_file():
            out[f"pretrained_{kind}_mp20_val_mae"] = json.loads(card.read_text())["metrics"]["pretraining"][
                "mp20_val_mae"]
    scratch = results / "bench_model.json"
    if scratch.is_file():
        out["scratch_bench_model"] = {key: value for key, value in json.loads(scratch.read_text()).items()
                                      if "mae" in key.lower()}
    return out


def run_arm(arm: str, seed: int, snapshot: Path, parents: Path, targets: list, mp_hull: PhaseDiagram, workdir: Path,
            quick: bool) -> dict:
    """One arm's campaign with one seed, run to the end: its per-round table, rediscoveries and time
    (and, for a generative arm, its evaluated candidates' E_hull against MP's hull per round)."""
    started = time.perf_counter()
    config = parse_config(campaign_config(arm, snapshot, parents, quick, seed))
    campaign = Campaign.create(config, workdir / f"{arm}-seed{seed}")
    campaign.run()
    found = rediscovered(campaign, targets)
    run = {"seed": seed, "rounds": [row for row in campaign.round_table() if row["round"] > 0],
           "rediscovered": sorted(found), "oracle_minus_dft": found,
           "round1_model_dft_mae": round1_model_dft_mae(campaign, targets) if arm in ("scratch", "pretrained")
           else None,
           "seconds": round(time.perf_counter() - started)}
    if arm in GENERATIVE_ARMS:
        run["generated_ehull_mp"] = generated_ehulls(campaign, mp_hull, GENERATIVE_ARMS[arm][0])
    return run


def generated_ehulls(campaign: Campaign, diagram: PhaseDiagram, generator: str) -> list[list[float]]:
    """Per round (1, 2, ...), the E_hull against `diagram` (MP's whole hull of the space, the
    phases the campaign must find included) of each candidate of `generator` that the oracle
    evaluated, eV/atom: how near the truth its samples land, finer than hits on the campaign's
    own hull. The oracle's energies are on MP's MP2020 scale (CHGNet)."""
    origins = campaign.store.origins()
    rounds: dict[int, list[float]] = {}
    for entry in campaign.computed_entries():
        origin = origins.get(entry.data["candidate_id"] or "")
        if entry.data["source"] == "oracle" and origin is not None and origin["generator"] == generator:
            plain = ComputedEntry(entry.composition, entry.energy)
            e_hull = diagram.get_decomp_and_e_above_hull(plain, allow_negative=True)[1]
            rounds.setdefault(entry.data["round"], []).append(round(float(e_hull), 4))
    return [rounds.get(index, []) for index in range(1, max(rounds, default=0) + 1)]


def earlier_runs(path: Path, quick: bool) -> dict:
    """Runs ({arm: {seed: run}}) a previous run of the same mode wrote to `path`, kept when
    `--arms` or `--seeds` runs others; a generative arm's runs from before its candidates
    were picked at random (without `generated_ehull_mp`) are left out, not pooled."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    if previous.get("quick") != quick:
        return {}
    return {arm: {run["seed"]: run for run in runs if arm not in GENERATIVE_ARMS or same_protocol(arm, run)}
            for arm, runs in previous.get("runs", {}).items()}


def same_protocol(arm: str, run: dict) -> bool:
    """Whether a stored run of a generative arm was made as the arm is now: candidates
    picked at random (it has `generated_ehull_mp`) and its rounds fine-tuned for the
    arm's steps (at its learning rate, where the record has one), on no more of its own
    samples than the arm allows."""
    kind, _, settings = GENERATIVE_ARMS[arm]
    records = [row.get("generator_training", {}).get(kind, {}) for row in run["rounds"]]
    steps = {record.get("steps") for record in records} - {None}
    rates = {record["learning_rate"] for record in records if record.get("steps") and "learning_rate" in record}
    own = max((record.get("own_samples", 0) for record in records), default=0)
    return ("generated_ehull_mp" in run and steps <= {0, settings["finetune_steps"]}
            and rates <= {settings.get("finetune_learning_rate")} and own <= settings.get("finetune_own_samples", 0))


def pooled(runs: list[dict], index: int | None = None) -> float | None:
    """Hit rate over the runs' rounds (round `index` only, or all of them), pooling the seeds."""
    rows = [row for run in runs for i, row in enumerate(run["rounds"]) if index is None or i == index]
    return cumulative(rows)


def per_round(runs: list[dict], key: str) -> list[float | None]:
    """The mean of `key` per round over the runs (seeds)."""
    rounds = max(len(run["rounds"]) for run in runs)
    out = []
    for index in range(rounds):
        values = [run["rounds"][index][key] for run in runs if index < len(run["rounds"])
                  and run["rounds"][index][key] is not None]
        out.append(sum(values) / len(values) if values else None)
    return out


def summary(runs: dict, quick: bool) -> dict:
    """The issue's keys from the arms' runs, seeds pooled (None where an arm has not run)."""
    arms = {arm: sorted(runs[arm].values(), key=lambda run: run["seed"]) for arm in ARMS if runs.get(arm)}
    total = {arm: pooled(arms[arm]) if arm in arms else None for arm in ARMS}
    daf = {arm: total[arm] / total["random"] if total[arm] is not None and total["random"] else None
           for arm in ("scratch", "pretrained")}
    rounds = {arm: max(len(run["rounds"]) for run in arms[arm]) for arm in arms}
    return {
        "quick": quick,
        "seeds": {arm: sorted(by_seed) for arm, by_seed in runs.items() if by_seed},
        **{f"hit_rate_{arm}": [pooled(arms[arm], i) for i in range(rounds[arm])] if arm in arms else None
           for arm in ARMS},
        **{f"hit_rate_cumulative_{arm}": total[arm] for arm in ARMS},
        **{f"stable_{arm}": [sum(row["stable"] or 0 for row in run["rounds"]) for run in arms[arm]]
           if arm in arms else None for arm in ARMS},
        "daf_pretrained": daf["pretrained"], "daf_scratch": daf["scratch"],
        **{f"filter_mae_{arm}": per_round(arms[arm], "filter_mae") if arm in arms else None
           for arm in ("scratch", "pretrained")},
        **{f"evaluated_{arm}": [sum(run["rounds"][i]["evaluated"] or 0 for run in arms[arm] if i < len(run["rounds"]))
                                for i in range(rounds[arm])] if arm in arms else None for arm in ARMS},
        **{f"rediscovered_{arm}": sorted({mp_id for run in arms[arm] for mp_id in run["rediscovered"]})
           if arm in arms else None for arm in ARMS},
        # the train stage's wall time per round: fine-tuning vs training from scratch
        **{f"train_seconds_{arm}": [sum(run["rounds"][i]["seconds"].get("train") or 0 for run in arms[arm])
                                    / len(arms[arm]) for i in range(rounds[arm])] if arm in arms else None
           for arm in ("scratch", "pretrained")},
        # the filter against DFT (round-0 model on the hidden phases at MP's structures) and
        # the oracle against DFT (rediscovered phases): the filter MAE on the picks holds both
        **{f"round1_model_dft_mae_{arm}": mean_of([run.get("round1_model_dft_mae") for run in arms[arm]])
           if arm in arms else None for arm in ("scratch", "pretrained")},
        "oracle_minus_dft_mean": mean_of([gap for runs_ in arms.values() for run in runs_
                                          for gap in run.get("oracle_minus_dft", {}).values()]),
        "seconds": {arm: sum(run["seconds"] for run in by_seed.values()) for arm, by_seed in runs.items() if by_seed},
        **generative_summary(runs),
    }


def generative_summary(runs: dict) -> dict:
    """The generative arms' keys (None where an arm has not run)."""
    out = {}
    for arm, (generator, label, _) in GENERATIVE_ARMS.items():
        by_seed = sorted(runs.get(arm, {}).values(), key=lambda run: run["seed"])
        out[f"hit_rate_generated_{label}"] = generated_hit_rates(by_seed, generator) if by_seed else None
        quality = generated_quality(by_seed, label) if any("generated_ehull_mp" in run for run in by_seed) else {}
        out.update({f"{key}_generated_{label}": quality.get(f"{key}_generated_{label}")
                    for key in ("near_hull_rate", "ehull_mp")})
        if not arm.endswith("frozen"):
            out.update(against_frozen(all_ehulls(by_seed), all_ehulls(runs.get(f"{generator}-frozen", {}).values()),
                                      label))
    return out


def against_frozen(tuned: list[float], frozen: list[float], label: str) -> dict:
    """A fine-tuned arm's E_hulls against its frozen arm's: Mann-Whitney p of the whole
    distributions and Fisher's exact p of the shares within NEAR_HULL (None without both)."""
    if not (tuned and frozen):
        return {f"ehull_mp_p_vs_frozen_{label}": None, f"near_hull_p_vs_frozen_{label}": None}
    near = [[sum(e <= NEAR_HULL for e in side), sum(e > NEAR_HULL for e in side)] for side in (tuned, frozen)]
    return {f"ehull_mp_p_vs_frozen_{label}": float(mannwhitneyu(tuned, frozen).pvalue),
            f"near_hull_p_vs_frozen_{label}": float(fisher_exact(near)[1])}


def all_ehulls(runs) -> list[float]:
    """Every evaluated generated candidate's E_hull against MP's hull, rounds and seeds pooled."""
    return [e for run in runs for values in run.get("generated_ehull_mp", []) for e in values]


def generated_hit_rates(runs: list[dict], generator: str) -> list[float | None]:
    """Per round, the stable share of the generator's evaluated candidates, seeds pooled."""
    rounds = max(len(run["rounds"]) for run in runs)
    out = []
    for index in range(rounds):
        counts = [run["rounds"][index].get("by_generator", {}).get(generator, {}) for run in runs
                  if index < len(run["rounds"])]
        evaluated = sum(c.get("evaluated", 0) for c in counts)
        out.append(sum(c.get("stable", 0) for c in counts) / evaluated if evaluated else None)
    return out


def generated_quality(runs: list[dict], label: str) -> dict:
    """Per round, seeds pooled, of the generated candidates' E_hull against MP's hull: the
    share within NEAR_HULL and the median (None for a round without any)."""
    pooled_rounds = [sum((run["generated_ehull_mp"][index] for run in runs
                          if index < len(run.get("generated_ehull_mp", []))), [])
                     for index in range(max(len(run.get("generated_ehull_mp", [])) for run in runs))]
    return {f"near_hull_rate_generated_{label}": [float(np.mean(np.array(values) <= NEAR_HULL)) if values else None
                                                  for values in pooled_rounds],
            f"ehull_mp_generated_{label}": [float(np.median(values)) if values else None for values in pooled_rounds]}


def mean_of(values: list) -> float | None:
    """The mean of the values that are not None, or None."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def print_table(result: dict, targets: int) -> None:
    fmt = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
    column = lambda key, index: fmt(result[key][index] if result[key] and index < len(result[key]) else None)  # noqa: E731
    print(f"{'round':>5}" + "".join(f"{'hit ' + arm:>16}" for arm in ARMS)
          + f"{'MAE scratch':>13}{'MAE pretrained':>16}")
    for index in range(max(len(result[f"hit_rate_{arm}"] or []) for arm in ARMS)):
        print(f"{index + 1:>5}" + "".join(f"{column(f'hit_rate_{arm}', index):>16}" for arm in ARMS)
              + f"{column('filter_mae_scratch', index):>13}{column('filter_mae_pretrained', index):>16}")
    print("cumulative hit rate: " + ", ".join(f"{arm} {fmt(result[f'hit_rate_cumulative_{arm}'])}" for arm in ARMS)
          + f"; DAF pretrained {fmt(result['daf_pretrained'])}, scratch {fmt(result['daf_scratch'])}")
    print("rediscovered: " + ", ".join(f"{arm} {len(result[f'rediscovered_{arm}'] or [])}" for arm in ARMS)
          + f" of {targets}")
    print("round-1 model vs MP DFT on the hidden phases, MAE: " + ", ".join(
        f"{arm} {fmt(result[f'round1_model_dft_mae_{arm}'])}" for arm in ("scratch", "pretrained"))
          + f"; oracle minus DFT on the rediscovered phases, mean: {fmt(result['oracle_minus_dft_mean'])}")
    for arm, (_, label, _) in GENERATIVE_ARMS.items():
        if result[f"hit_rate_generated_{label}"]:
            rows = {key: ", ".join(map(fmt, result[f"{key}_generated_{label}"] or []))
                    for key in ("hit_rate", "near_hull_rate", "ehull_mp")}
            print(f"{arm}, per round: hit rate of its candidates {rows['hit_rate']}; within {NEAR_HULL} eV/atom of "
                  f"MP's hull {rows['near_hull_rate']}; median E_hull vs MP {rows['ehull_mp']}"
                  + (f"; against frozen, Mann-Whitney p = {result[f'ehull_mp_p_vs_frozen_{label}']:.2f}, "
                     f"near-hull share Fisher p = {result[f'near_hull_p_vs_frozen_{label}']:.2f}"
                     if result.get(f"ehull_mp_p_vs_frozen_{label}") is not None else ""))


def main() -> int:
    parser = bench_parser(__doc__, "bench_discovery", "2 rounds of 8 jobs, fewer epochs")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help="arms to run, comma-separated (also: " + ", ".join(GENERATIVE_ARMS) + "); the "
                             "others are kept from an earlier run in --json")
    parser.add_argument("--seeds", default="0", help="seeds to run each arm with, comma-separated (pooled)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the arms' campaigns in this folder (to study them)")
    args = parser.parse_args()
    if not (SYSTEM.is_file() and MP37K.is_file()):
        print(f"skipped: {SYSTEM} or {MP37K} not found (the reference data lie beside the dev checkout)")
        return 0
    chosen = [arm for arm in (*ARMS, *GENERATIVE_ARMS) if arm in args.arms.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    started = time.perf_counter()
    mp_entries = loadfn(SYSTEM)
    mp_hull = PhaseDiagram(mp_entries)
    known, targets = split_system(mp_entries, mp_hull)
    print(f"snapshot: {len(known)} unary and binary MP entries; {len(targets)} ternary/quaternary MP phases "
          f"within {TARGET_EHULL * 1000:.0f} meV/atom of MP's hull to rediscover")
    runs = earlier_runs(args.json, args.quick)
    with tempfile.TemporaryDirectory(prefix="bench_discovery_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        snapshot = workdir / "li-co-ni-o_binaries.json.gz"
        dumpfn(known, snapshot)
        parents = outside_parents(workdir / "mp37k_ground_states.csv.gz")
        for seed in seeds:
            for arm in chosen:
                run = run_arm(arm, seed, snapshot, parents, targets, mp_hull, workdir, args.quick)
                runs.setdefault(arm, {})[seed] = run
                print(f"{arm} seed {seed}: {run['seconds']} s, hit rates {[row['hit_rate'] for row in run['rounds']]}, "
                      f"rediscovered {run['rediscovered']}", flush=True)
    result = {**summary(runs, args.quick), "targets": len(targets), "snapshot_entries": len(known),
              **pretrained_mp20(RESULTS), "runs": {arm: list(by_seed.values()) for arm, by_seed in runs.items()},
              "wall_s_this_run": round(time.perf_counter() - started, 1)}
    print_table(result, len(targets))
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
