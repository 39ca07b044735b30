"""Benchmark: leave-out rediscovery on a real MP chemical system (Li-Co-Ni-O).

The campaign starts from every unary and binary MP entry of Li-Co-Ni-O (DFT,
MP2020-corrected) as its snapshot, used as they are (`snapshot.reevaluate: never`);
CHGNet is the oracle, its energies judged against that MP hull (the
matbench-discovery protocol: CHGNet 0.3.0 predicts on the MP2020 scale). The
ternary and quaternary phases are hidden: the campaign must find them. Three arms
run with the same seed, generators and oracle budget:

- random: candidates selected at random (estimates the prevalence of hits);
- scratch: the GNoME GNN ensemble trained from random members on the campaign's data;
- pretrained: the shipped pretrained ensemble, fine-tuned on the campaign's data.

Reported per round and cumulatively: hit rate (oracle E_hull <= 0 against the
campaign's hull), DAF against random, filter MAE on the evaluated candidates, and
how many MP ternaries/quaternaries on MP's hull or within 50 meV/atom of it were
rediscovered (StructureMatcher, pymatgen defaults). The pretrained models' MAE on
MP-20 val is reported beside the from-scratch numbers of `bench_model.py`.

    python experiments/bench_discovery.py [--quick] [--arms random,scratch,pretrained] [--json PATH]

`--arms` runs some arms and keeps the others from the earlier results in `--json`
(for example the pretrained arm again after a new checkpoint).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from monty.serialization import dumpfn, loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.structure_matcher import StructureMatcher

from gnome_loop.campaign import Campaign
from gnome_loop.config import parse_config

from common import DATA, RESULTS, bench_parser, write_results

SYSTEM = DATA / "mp_chemsys" / "Li-Co-Ni-O.json.gz"
#: MP phases within this distance of MP's hull count as rediscoverable, eV/atom.
TARGET_EHULL = 0.05
ARMS = ("random", "scratch", "pretrained")


def campaign_config(arm: str, snapshot: Path, quick: bool) -> dict:
    """One arm's campaign: same space, snapshot, generators, budget and seed."""
    model = {"kind": "gnome", "init": "pretrained" if arm == "pretrained" else "scratch",
             "epochs": 60 if quick else 150, "patience": 30}
    return {
        "name": f"discovery-{arm}", "seed": 0, "rounds": 2 if quick else 3,
        "chemical_space": {"elements": ["Li", "Co", "Ni", "O"], "max_elements": 4, "max_atoms": 16},
        "snapshot": {"source": "file", "path": str(snapshot), "reevaluate": "never"},
        "generators": {"substitution": {"max_candidates": 300}, "saps": {"max_candidates": 300}},
        # the random arm never reads its model: the cheap baseline keeps it fast
        "model": {"kind": "linear"} if arm == "random" else model,
        "selection": {"budget": 8 if quick else 16, "per_composition": 2,
                      "strategy": "random" if arm == "random" else "model"},
        "oracle": {"kind": "ase", "calculator": "chgnet", "fmax": 0.1, "max_steps": 150, "max_attempts": 2},
        "scheduler": {"kind": "inline"},
    }


def split_system(entries: list) -> tuple[list, list]:
    """The unary and binary entries (the snapshot), and the ternary and richer MP phases
    on or within TARGET_EHULL of MP's hull (what a campaign should rediscover)."""
    diagram = PhaseDiagram(entries)
    known = [e for e in entries if len(e.composition.elements) <= 2]
    targets = [e for e in entries if len(e.composition.elements) >= 3
               and diagram.get_e_above_hull(e) <= TARGET_EHULL]
    return known, targets


def rediscovered(campaign: Campaign, targets: list) -> list[str]:
    """MP ids of targets matched by a structure the campaign's oracle evaluated."""
    matcher = StructureMatcher()
    found = []
    evaluated = [e for e in campaign.computed_entries() if e.data["source"] == "oracle"]
    for target in targets:
        formula = target.composition.reduced_formula
        if any(e.composition.reduced_formula == formula and matcher.fit(e.structure, target.structure)
               for e in evaluated):
            found.append(str(target.entry_id))
    return found


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


def run_arm(arm: str, snapshot: Path, targets: list, workdir: Path, quick: bool) -> dict:
    """One arm's campaign, run to the end: its per-round table, rediscoveries and time."""
    started = time.perf_counter()
    campaign = Campaign.create(parse_config(campaign_config(arm, snapshot, quick)), workdir / arm)
    campaign.run()
    return {"rounds": [row for row in campaign.round_table() if row["round"] > 0],
            "rediscovered": rediscovered(campaign, targets), "seconds": round(time.perf_counter() - started)}


def earlier_arms(path: Path, quick: bool) -> dict:
    """Arms a previous run of the same mode wrote to `path` (kept when `--arms` reruns others)."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    return previous.get("arms", {}) if previous.get("quick") == quick else {}


def summary(arms: dict, quick: bool) -> dict:
    """The issue's keys from the arms' tables (None where an arm has not run)."""
    hit = {arm: [row["hit_rate"] for row in arms[arm]["rounds"]] if arm in arms else None for arm in ARMS}
    total = {arm: cumulative(arms[arm]["rounds"]) if arm in arms else None for arm in ARMS}
    daf = {arm: total[arm] / total["random"] if total[arm] is not None and total["random"] else None
           for arm in ("scratch", "pretrained")}
    return {
        "quick": quick,
        **{f"hit_rate_{arm}": hit[arm] for arm in ARMS},
        **{f"hit_rate_cumulative_{arm}": total[arm] for arm in ARMS},
        "daf_pretrained": daf["pretrained"], "daf_scratch": daf["scratch"],
        **{f"filter_mae_{arm}": [row["filter_mae"] for row in arms[arm]["rounds"]] if arm in arms else None
           for arm in ("scratch", "pretrained")},
        **{f"evaluated_{arm}": [row["evaluated"] for row in arms[arm]["rounds"]] if arm in arms else None
           for arm in ARMS},
        **{f"rediscovered_{arm}": arms[arm]["rediscovered"] if arm in arms else None for arm in ARMS},
        # the train stage's wall time per round: fine-tuning vs training from scratch
        **{f"train_seconds_{arm}": [row["seconds"].get("train") for row in arms[arm]["rounds"]] if arm in arms
           else None for arm in ("scratch", "pretrained")},
        "seconds": {arm: arms[arm]["seconds"] for arm in arms},
    }


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


def main() -> int:
    parser = bench_parser(__doc__, "bench_discovery", "2 rounds of 8 jobs, fewer epochs")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help="arms to run, comma-separated; the others are kept from an earlier run in --json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the arms' campaigns in this folder (to study them)")
    args = parser.parse_args()
    if not SYSTEM.is_file():
        print(f"skipped: {SYSTEM} not found (the reference data lie beside the dev checkout)")
        return 0
    chosen = [arm for arm in ARMS if arm in args.arms.split(",")]
    started = time.perf_counter()
    known, targets = split_system(loadfn(SYSTEM))
    print(f"snapshot: {len(known)} unary and binary MP entries; {len(targets)} ternary/quaternary MP phases "
          f"within {TARGET_EHULL * 1000:.0f} meV/atom of MP's hull to rediscover")
    arms = earlier_arms(args.json, args.quick)
    with tempfile.TemporaryDirectory(prefix="bench_discovery_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        snapshot = workdir / "li-co-ni-o_binaries.json.gz"
        dumpfn(known, snapshot)
        for arm in chosen:
            arms[arm] = run_arm(arm, snapshot, targets, workdir, args.quick)
            print(f"{arm}: {arms[arm]['seconds']} s, hit rates {[row['hit_rate'] for row in arms[arm]['rounds']]}, "
                  f"rediscovered {arms[arm]['rediscovered']}", flush=True)
    result = {**summary(arms, args.quick), "targets": len(targets), "snapshot_entries": len(known),
              **pretrained_mp20(RESULTS), "arms": arms, "wall_s_this_run": round(time.perf_counter() - started, 1)}
    print_table(result, len(targets))
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
