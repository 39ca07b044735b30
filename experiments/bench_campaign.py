"""Benchmark: does the GNN ensemble find stable crystals faster than chance?

Runs the same campaign twice, with the same seed, candidates and oracle budget:
once selecting by the ensemble's predicted E_hull (`selection.strategy: model`),
once selecting at random (`strategy: random`). Reports the hit rate per round
(stable / evaluated) of both and the discovery acceleration factor per round,
DAF = hit rate of the ensemble / hit rate of random selection (the random arm
estimates the prevalence of stable candidates, as in matbench-discovery).

The default space is the EMT one of the tests (7 fcc metals, seconds per job);
`--oracle chgnet` runs the quickstart space with CHGNet as the oracle instead.

    python experiments/bench_campaign.py [--quick] [--oracle emt|chgnet] [--json PATH]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

from gnome_loop.campaign import Campaign
from gnome_loop.config import parse_config

from common import RESULTS, bench_parser, write_results

HERE = Path(__file__).parent


def config_for(oracle: str, strategy: str, quick: bool) -> dict:
    """The benchmark's campaign: the tests' EMT space or the quickstart space, with the
    GNoME ensemble as the model and a larger candidate pool than the tests use."""
    name = "ci_emt" if oracle == "emt" else "quickstart"
    data = yaml.safe_load((HERE / name / "config.yaml").read_text())
    data["name"] = f"bench-{oracle}-{strategy}"
    data["scheduler"] = {"kind": "inline"}
    data["selection"]["strategy"] = strategy
    if oracle == "emt":
        data["rounds"] = 3 if quick else 5
        data["chemical_space"]["max_atoms"] = 8
        data["generators"]["substitution"]["max_candidates"] = 300
        data["selection"]["budget"] = 12
        data["model"] = {"kind": "gnome", "members": 4, "width": 32, "cutoff": 4.0,
                         "epochs": 80 if quick else 200, "patience": 40, "learning_rate": 1e-3}
    elif quick:
        data["rounds"] = 2
    return data


def run_arm(oracle: str, strategy: str, quick: bool, workdir: Path) -> list[dict]:
    """Run one campaign to the end; its per-round table (round 0 is the bootstrap)."""
    config = parse_config(config_for(oracle, strategy, quick))
    campaign = Campaign.create(config, workdir / strategy)
    campaign.run()
    return [row for row in campaign.round_table() if row["round"] > 0]


def cumulative_hit_rate(rows: list[dict]) -> list[float | None]:
    """Stable / evaluated over all rounds so far, after each round."""
    out, stable, evaluated = [], 0, 0
    for row in rows:
        stable += row["stable"] or 0
        evaluated += row["evaluated"] or 0
        out.append(stable / evaluated if evaluated else None)
    return out


def main() -> int:
    parser = bench_parser(__doc__, None, "fewer rounds and epochs")
    parser.add_argument("--oracle", choices=("emt", "chgnet"), default="emt")
    args = parser.parse_args()
    target = args.json or RESULTS / ("bench_campaign.json" if args.oracle == "emt" else "bench_campaign_chgnet.json")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_campaign_") as tmp:
        arms = {strategy: run_arm(args.oracle, strategy, args.quick, Path(tmp)) for strategy in ("model", "random")}
    model, random = arms["model"], arms["random"]
    hit_model = [row["hit_rate"] for row in model]
    hit_random = [row["hit_rate"] for row in random]
    daf = [m / r if m is not None and r else None for m, r in zip(hit_model, hit_random)]
    cumulative = {name: cumulative_hit_rate(rows) for name, rows in arms.items()}
    result = {
        "oracle": args.oracle,
        "quick": args.quick,
        "hit_rate_ensemble": hit_model,
        "hit_rate_random": hit_random,
        "daf": daf,
        "hit_rate_cumulative_ensemble": cumulative["model"],
        "hit_rate_cumulative_random": cumulative["random"],
        "daf_cumulative": [m / r if m is not None and r else None
                           for m, r in zip(cumulative["model"], cumulative["random"])],
        "evaluated_ensemble": [row["evaluated"] for row in model],
        "evaluated_random": [row["evaluated"] for row in random],
        "new_stable_ensemble": [row["new_stable"] for row in model],
        "new_stable_random": [row["new_stable"] for row in random],
        "filter_mae": [row["filter_mae"] for row in model],
        "spread_error_spearman": [row["spread_error_spearman"] for row in model],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    fmt = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
    print(f"{'round':>5}{'hit (ensemble)':>16}{'hit (random)':>14}{'DAF':>7}{'new stable e/r':>16}{'filter MAE':>12}")
    for index, row in enumerate(model):
        print(f"{row['round']:>5}{fmt(hit_model[index]):>16}{fmt(hit_random[index]):>14}{fmt(daf[index]):>7}"
              f"{str(row['new_stable']) + '/' + str(random[index]['new_stable']):>16}{fmt(row['filter_mae']):>12}")
    print("cumulative hit rate, ensemble / random: " + ", ".join(
        f"{fmt(m)}/{fmt(r)}" for m, r in zip(cumulative["model"], cumulative["random"])))
    print(f"{result['wall_s']:.0f} s in all")
    write_results(target, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
