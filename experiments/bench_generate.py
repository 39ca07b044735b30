"""Benchmark: candidate generators and dedup on real structures.

- SAPS and whole-species substitution candidates per second, with the MP-20 subset
  (../shared/data/mp20_subset) as parents and its elements as the chemical space.
- Dedup of >= 10,000 candidates with planted duplicates (supercells, permuted sites,
  translated origins of MP-20 structures): `find_duplicates` (buckets by formula and
  space group, StructureMatcher inside a bucket) against naive all-pairs
  StructureMatcher on a subset: the same duplicate groups, and the speed ratio.
- Import of every file in ../shared/data/generated: accepted and rejected by reason.

    python experiments/bench_generate.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import Counter

import numpy as np
import gnome_loop  # noqa: F401  (before pandas: pyarrow's threads would miss gnome_loop/malloc.py's settings)
import pandas as pd
from pymatgen.core import Structure

from gnome_loop.generate.imported import import_structures
from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import substitute
from gnome_loop.structures import default_matcher, find_duplicates, symmetry_label

from common import DATA, bench_parser, write_results


def mp20() -> list[tuple[str, Structure]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(str(row.material_id), Structure.from_str(row.cif, fmt="cif"))
                for name in ("train", "val")
                for row in pd.read_csv(DATA / "mp20_subset" / f"{name}.csv.gz").itertuples()]


def generator_rates(parents: list[tuple[str, Structure]]) -> dict:
    """Candidates per second of SAPS and substitution over the same parents."""
    elements = sorted({el.symbol for _, s in parents for el in s.composition})
    known = {s.composition.reduced_formula for _, s in parents}
    substitute(parents[:2], elements, known)  # load the substitution model outside the timing
    out = {}
    for name, run in (("saps", lambda: saps(parents, elements, known, max_elements=4, max_per_parent=20)),
                      ("substitution", lambda: substitute(parents, elements, known, max_elements=4))):
        started = time.perf_counter()
        made = run()
        seconds = time.perf_counter() - started
        out[name] = {"parents": len(parents), "candidates": len(made), "seconds": round(seconds, 2),
                     "per_s": len(made) / seconds}
    return out


def planted(bases: list[tuple[str, Structure]], copies: int, seed: int = 0) -> list[tuple[str, str, Structure]]:
    """Each base, then `copies` disguised copies of it: a supercell, permuted sites and a
    shifted origin, in turn. Ids say which base a copy came from ("base~k")."""
    rng = np.random.default_rng(seed)
    items = []
    for key, base in bases:
        items.append((key, base))
        for k in range(copies):
            copy = base.copy()
            if k % 3 == 0:
                copy.make_supercell([2, 1, 1] if k % 2 == 0 else [1, 1, 2])
            if k % 3 == 1 or k >= 3:
                copy = Structure.from_sites([copy[i] for i in rng.permutation(len(copy))])
            if k % 3 == 2 or k >= 3:
                copy.translate_sites(list(range(len(copy))), rng.random(3), frac_coords=True)
            items.append((f"{key}~{k}", copy))
    order = rng.permutation(len(items))
    return [(items[i][0], "", items[i][1]) for i in order]


def naive_duplicates(items: list[tuple[str, str, Structure]]) -> tuple[dict[str, str], dict]:
    """StructureMatcher on every pair, no buckets; duplicates are the connected
    components of the matches. Also the time spent on pairs of equal and of different
    reduced formula (the matcher rejects the latter early), to extrapolate the cost."""
    matcher = default_matcher()
    leader = list(range(len(items)))

    def find(i: int) -> int:
        while leader[i] != i:
            leader[i] = leader[leader[i]]
            i = leader[i]
        return i

    formulas = [s.composition.reduced_formula for _, _, s in items]
    cost = {"same_formula_s": 0.0, "same_formula_pairs": 0, "other_s": 0.0, "other_pairs": 0}
    for i in range(len(items)):
        for j in range(i):
            started = time.perf_counter()
            match = matcher.fit(items[i][2], items[j][2])
            kind = "same_formula" if formulas[i] == formulas[j] else "other"
            cost[f"{kind}_s"] += time.perf_counter() - started
            cost[f"{kind}_pairs"] += 1
            if match:
                leader[find(i)] = find(j)
    first: dict[int, str] = {}
    out = {}
    for index, (key, _, _) in enumerate(items):
        root = find(index)
        if root in first:
            out[key] = first[root]
        else:
            first[root] = key
    return out, cost


def naive_estimate(items: list[tuple[str, str, Structure]], cost: dict) -> float:
    """Seconds naive all-pairs matching would take on `items`, from the per-pair costs."""
    per_formula = Counter(s.composition.reduced_formula for _, _, s in items)
    same = sum(n * (n - 1) // 2 for n in per_formula.values())
    other = len(items) * (len(items) - 1) // 2 - same
    return (same * cost["same_formula_s"] / max(cost["same_formula_pairs"], 1)
            + other * cost["other_s"] / max(cost["other_pairs"], 1))


def bucketed_duplicates(items: list[tuple[str, str, Structure]]) -> tuple[dict[str, str], float]:
    """`find_duplicates` with the symmetry labels computed inside the timing."""
    started = time.perf_counter()
    labelled = [(key, symmetry_label(structure), structure) for key, _, structure in items]
    return find_duplicates(labelled), time.perf_counter() - started


def groups(items, duplicates: dict[str, str]) -> set[frozenset[str]]:
    """The partition of ids into duplicate groups (independent of which member leads)."""
    lead = {key: duplicates.get(key, key) for key, _, _ in items}
    out: dict[str, set[str]] = {}
    for key, leader in lead.items():
        out.setdefault(leader, set()).add(key)
    return {frozenset(group) for group in out.values()}


def dedup(bases: list[tuple[str, Structure]], copies: int, subset: int) -> dict:
    items = planted(bases, copies)
    found, seconds = bucketed_duplicates(items)
    truth = {key: key.split("~")[0] for key, _, _ in items}
    caught = sum(1 for key in found if truth[key] == truth[found[key]])
    planted_total = sum(1 for key in truth if "~" in key)

    small = planted(bases[: subset // (copies + 1)], copies, seed=1)
    small_found, small_seconds = bucketed_duplicates(small)
    started = time.perf_counter()
    naive, cost = naive_duplicates(small)
    naive_seconds = time.perf_counter() - started
    estimate = naive_estimate(items, cost)
    return {
        "candidates": len(items), "duplicates_found": len(found), "planted_duplicates": planted_total,
        "planted_recovered": caught, "wrong_merges": len(found) - caught, "seconds": round(seconds, 1),
        "per_s": len(items) / seconds,
        "subset": len(small), "subset_bucketed_s": round(small_seconds, 2), "subset_naive_s": round(naive_seconds, 1),
        "subset_speedup": naive_seconds / small_seconds,
        "dedup_same_result": groups(small, small_found) == groups(small, naive),
        "subset_differences": sorted(sorted(g) for g in groups(small, small_found) ^ groups(small, naive))[:6],
        "naive_full_estimate_s": round(estimate), "naive_pair_costs": cost,
        "dedup_speedup_vs_naive": estimate / seconds,
    }


def imports() -> dict:
    out = {}
    for path in sorted((DATA / "generated").rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.suffix in (".zip", ".gz", ".csv", ".cif"):
            started = time.perf_counter()
            report = import_structures(path)
            out[str(path.relative_to(DATA / "generated"))] = {
                "read": report.read, "accepted": len(report.accepted), "rejected": dict(report.rejected),
                "seconds": round(time.perf_counter() - started, 1)}
    return out


def main() -> int:
    parser = bench_parser(__doc__, "bench_generate", "fewer parents and a smaller naive subset")
    args = parser.parse_args()
    if not (DATA / "mp20_subset").is_dir():
        print(f"skipped: reference data not found at {DATA}")
        return 0
    started = time.perf_counter()
    structures = mp20()
    rates = generator_rates(structures[: 100 if args.quick else 300])
    copies = 10
    bases = structures[: 10000 // (copies + 1) + 1]
    deduped = dedup(bases, copies, subset=110 if args.quick else 220)
    imported = imports() if (DATA / "generated").is_dir() else {}
    result = {
        "quick": args.quick,
        "saps_per_s": rates["saps"]["per_s"], "substitution_per_s": rates["substitution"]["per_s"],
        "dedup_speedup_vs_naive": deduped["dedup_speedup_vs_naive"], "dedup_same_result": deduped["dedup_same_result"],
        "generators": rates, "dedup": deduped, "import": imported,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(f"{'generator':<14}{'parents':>8}{'candidates':>12}{'seconds':>9}{'per s':>9}")
    for name, row in rates.items():
        print(f"{name:<14}{row['parents']:>8}{row['candidates']:>12}{row['seconds']:>9.1f}{row['per_s']:>9.1f}")
    print(f"dedup: {deduped['candidates']} candidates, {deduped['duplicates_found']} duplicates found "
          f"({deduped['planted_recovered']}/{deduped['planted_duplicates']} planted recovered, "
          f"{deduped['wrong_merges']} wrong merges) in {deduped['seconds']} s; naive all-pairs on "
          f"{deduped['subset']}: {deduped['subset_naive_s']} s vs {deduped['subset_bucketed_s']} s bucketed "
          f"({deduped['subset_speedup']:.1f}x), same result: {deduped['dedup_same_result']}; naive on all "
          f"{deduped['candidates']} (estimated from its per-pair costs): {deduped['naive_full_estimate_s']} s = "
          f"{deduped['dedup_speedup_vs_naive']:.0f}x the bucketed time")
    print(f"{'import':<48}{'read':>6}{'accepted':>10}  rejected")
    for name, row in imported.items():
        print(f"{name:<48}{row['read']:>6}{row['accepted']:>10}  {row['rejected'] or '-'}")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
