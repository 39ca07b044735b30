"""Benchmark: E_hull of many candidates against the Materials Project hull.

- Reference: the 31,840 MP2020-corrected stable phases of
  ../shared/data/mp_reference/mp_materials_summary.csv.gz (`read_energy_table`).
- Candidates near the hull, seed 0: MP phases of a system or mixtures a*A + b*B of two,
  at the MP energy per atom plus N(0, 0.05) + 0.02 eV/atom. "clustered": 10,000 in the
  subsystems of 100 systems of >= 3 elements drawn from random MP rows (a campaign
  round: many candidates per explored system); "clustered_400": the same over 400
  systems; "spread": 10,000 random MP rows, nearly one per system (the worst case).
- `e_above_hull_many` against the naive way, a fresh `PhaseDiagram` per candidate
  from the reference entries of its chemical system, timed on a random subset and
  extrapolated per candidate; max |difference| over the subset. Neither timing
  includes indexing the reference by chemical system (done once per reference).
- pymatgen's `PatchedPhaseDiagram` over the whole reference (not with --quick): build
  time, per-candidate time and agreement on the clustered subset.
- Every reference row on its own hull (`hull_table`, not with --quick).

    python experiments/bench_hull.py [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PhaseDiagram
from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.hull import Chemsys, Hull, chemsys_of, e_above_hull_many, hull_table
from gnome_loop.snapshot.files import read_energy_table

from common import DATA, bench_parser, write_results

TABLE = DATA / "mp_reference" / "mp_materials_summary.csv.gz"
NOISE, SHIFT = 0.05, 0.02  # eV/atom added to the candidates' energies


def by_system(entries: list[ComputedEntry]) -> dict[Chemsys, list[ComputedEntry]]:
    out = defaultdict(list)
    for entry in entries:
        out[chemsys_of(entry.composition)].append(entry)
    return out


def within(system: Chemsys, index: dict[Chemsys, list[ComputedEntry]]) -> list[ComputedEntry]:
    """Reference entries whose elements are a subset of `system`."""
    return [entry for size in range(1, len(system) + 1) for sub in combinations(sorted(system), size)
            for entry in index.get(frozenset(sub), ())]


def perturbed(key: str, composition, energy_per_atom: float, rng: np.random.Generator) -> ComputedEntry:
    energy = energy_per_atom + rng.normal(0.0, NOISE) + SHIFT
    return ComputedEntry(composition, energy * composition.num_atoms, entry_id=key)


def clustered(reference: list[ComputedEntry], count: int, n_systems: int, seed: int = 0) -> list[ComputedEntry]:
    """`count` candidates in the subsystems of `n_systems` systems of >= 3 elements drawn
    from random MP rows: half MP phases, half mixtures a*A + b*B (a, b in 1..3) of two
    of them at the mixture's energy."""
    rng = np.random.default_rng(seed)
    index, hull = by_system(reference), Hull(reference)
    systems: list[Chemsys] = []
    for i in rng.permutation(len(reference)):
        system = chemsys_of(reference[i].composition)
        if len(system) >= 3 and system not in systems and not hull.missing_elements(system):
            systems.append(system)
        if len(systems) == n_systems:
            break
    pools = [within(system, index) for system in systems]
    out = []
    for i in range(count):
        pool = pools[rng.integers(len(pools))]
        a, b = pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]
        if i % 2 == 0:
            out.append(perturbed(f"c{i}", a.composition, a.energy_per_atom, rng))
            continue
        ka, kb = (int(k) for k in rng.integers(1, 4, size=2))
        ca, cb = a.composition.reduced_composition * ka, b.composition.reduced_composition * kb
        composition = ca + cb
        energy = (ca.num_atoms * a.energy_per_atom + cb.num_atoms * b.energy_per_atom) / composition.num_atoms
        out.append(perturbed(f"c{i}", composition, energy, rng))
    return out


def spread(reference: list[ComputedEntry], count: int, seed: int = 0) -> list[ComputedEntry]:
    """`count` candidates at the compositions of random MP rows (all elemental references present)."""
    rng = np.random.default_rng(seed)
    hull = Hull(reference)
    rows = [e for e in reference if not hull.missing_elements(e.composition)]
    return [perturbed(f"s{k}", rows[i].composition, rows[i].energy_per_atom, rng)
            for k, i in enumerate(rng.choice(len(rows), size=count, replace=False))]


def naive(candidate: ComputedEntry, index: dict[Chemsys, list[ComputedEntry]]) -> float:
    diagram = PhaseDiagram(within(chemsys_of(candidate.composition), index))
    return diagram.get_decomp_and_e_above_hull(candidate, allow_negative=True)[1]


def compare(reference: list[ComputedEntry], candidates: list[ComputedEntry], subset: int, seed: int = 1) -> dict:
    """`e_above_hull_many` on all candidates (a fresh `Hull`: no diagram cached) against
    the naive way on a random subset, extrapolated per candidate."""
    hull = Hull(reference)
    started = time.perf_counter()
    results = e_above_hull_many(candidates, hull)
    seconds = time.perf_counter() - started
    index = by_system(reference)
    picked = np.random.default_rng(seed).choice(len(candidates), size=subset, replace=False)
    started = time.perf_counter()
    values = [naive(candidates[i], index) for i in picked]
    naive_seconds = time.perf_counter() - started
    naive_all = naive_seconds / subset * len(candidates)
    return {
        "candidates": len(candidates), "systems": len({chemsys_of(c.composition) for c in candidates}),
        "diagrams_built": hull.pd_builds, "no_hull": dict(Counter(r.reason for r in results if r.reason)),
        "seconds": round(seconds, 2), "per_candidate_ms": 1000 * seconds / len(candidates),
        "naive_subset": subset, "naive_subset_s": round(naive_seconds, 2),
        "naive_per_candidate_ms": 1000 * naive_seconds / subset, "naive_extrapolated_s": round(naive_all, 1),
        "speedup_vs_naive": naive_all / seconds,
        "max_abs_diff": float(max(abs(results[i].e_above_hull - value) for i, value in zip(picked, values))),
        "below_hull": sum(r.e_above_hull is not None and r.e_above_hull < 0 for r in results),
    }


def patched(reference: list[ComputedEntry], candidates: list[ComputedEntry], subset: int, seed: int = 1) -> dict:
    """pymatgen's PatchedPhaseDiagram over every reference entry whose system has its
    elemental references (it refuses the others): build time, then the clustered
    subset, counting candidates no single patch holds (pymatgen falls back to an SLSQP
    fit there) and the largest difference from the exact value."""
    hull = Hull(reference)
    usable = [e for e in reference if not hull.missing_elements(e.composition)]
    started = time.perf_counter()
    diagram = PatchedPhaseDiagram(usable)
    build = time.perf_counter() - started
    picked = np.random.default_rng(seed).choice(len(candidates), size=subset, replace=False)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns where it falls back to SLSQP
        values = [diagram.get_decomp_and_e_above_hull(candidates[i], allow_negative=True, on_error="ignore")[1]
                  for i in picked]
    seconds = time.perf_counter() - started
    index = by_system(reference)
    diffs = [np.inf if value is None else abs(value - naive(candidates[i], index)) for i, value in zip(picked, values)]
    uncovered = sum(not any(space.issuperset(candidates[i].elements) for space in diagram.spaces) for i in picked)
    return {"entries": len(usable), "patches": len(diagram.spaces), "build_s": round(build, 1),
            "subset": subset, "per_candidate_ms": 1000 * seconds / subset,
            "not_in_one_patch": uncovered, "max_abs_diff": float(max(diffs))}


def own_hull(reference: list[ComputedEntry]) -> dict:
    started = time.perf_counter()
    hull = Hull(reference)
    results = hull_table(reference, hull)
    seconds = time.perf_counter() - started
    values = [r.e_above_hull for r in results if r.e_above_hull is not None]
    return {"rows": len(results), "seconds": round(seconds, 1), "diagrams_built": hull.pd_builds,
            "max_e_above_hull": max(values), "above_1e-6": sum(v > 1e-6 for v in values),
            "no_hull": dict(Counter(r.reason for r in results if r.reason))}


def main() -> int:
    parser = bench_parser(__doc__, "bench_hull",
                          "2,000 clustered and 500 spread candidates, a naive subset of 100, no PPD or own hull")
    args = parser.parse_args()
    if not TABLE.is_file():
        print(f"skipped: reference data not found at {DATA}")
        return 0
    started = time.perf_counter()
    reference, skipped = read_energy_table(TABLE)
    load_s = time.perf_counter() - started
    started_index = time.perf_counter()
    Hull(reference)
    index_s = time.perf_counter() - started_index
    count, subset = (2000, 100) if args.quick else (10000, 300)
    main_candidates = clustered(reference, count, n_systems=count // 100)
    scenarios = {"clustered": main_candidates}
    if not args.quick:
        scenarios["clustered_400"] = clustered(reference, count, n_systems=400)
    scenarios["spread"] = spread(reference, 500 if args.quick else count)
    runs = {name: compare(reference, candidates, subset) for name, candidates in scenarios.items()}
    main_run = runs["clustered"]
    result = {
        "quick": args.quick, "reference_rows": len(reference), "reference_skipped": dict(skipped),
        "reference_load_s": round(load_s, 1), "reference_index_s": round(index_s, 2),
        "candidates": main_run["candidates"], "speedup_vs_naive": main_run["speedup_vs_naive"],
        "max_abs_diff": main_run["max_abs_diff"], "seconds": main_run["seconds"],
        "naive_extrapolated_s": main_run["naive_extrapolated_s"], "scenarios": runs,
    }
    if not args.quick:
        result["patched_phase_diagram"] = patched(reference, main_candidates, subset)
        result["own_hull"] = own_hull(reference)
    result["wall_s"] = round(time.perf_counter() - started, 1)

    print(f"reference: {len(reference)} MP rows read in {load_s:.1f} s (skipped: {dict(skipped) or 'none'}), "
          f"indexed by system in {index_s:.2f} s (in neither timing below)")
    print(f"{'candidates':<14}{'count':>7}{'systems':>9}{'diagrams':>10}{'ours s':>8}{'naive s*':>10}"
          f"{'speedup':>9}{'max |diff|':>12}")
    for name, run in runs.items():
        print(f"{name:<14}{run['candidates']:>7}{run['systems']:>9}{run['diagrams_built']:>10}{run['seconds']:>8.1f}"
              f"{run['naive_extrapolated_s']:>10.1f}{run['speedup_vs_naive']:>8.1f}x{run['max_abs_diff']:>12.1e}")
    print(f"* naive = a fresh PhaseDiagram per candidate, timed on {subset} random candidates of each set "
          f"and extrapolated per candidate; max |diff| (eV/atom) over those {subset}")
    if "patched_phase_diagram" in result:
        ppd = result["patched_phase_diagram"]
        print(f"PatchedPhaseDiagram: {ppd['patches']} patches over {ppd['entries']} entries built in "
              f"{ppd['build_s']} s, then {ppd['per_candidate_ms']:.1f} ms per candidate; of {ppd['subset']} "
              f"clustered candidates {ppd['not_in_one_patch']} lie in no single patch (SLSQP fallback), "
              f"max |diff| {ppd['max_abs_diff']:.1e} eV/atom")
        own = result["own_hull"]
        print(f"own hull of the {own['rows']} reference rows: {own['seconds']} s, {own['diagrams_built']} "
              f"diagrams, max E_hull {own['max_e_above_hull']:.1e}, {own['above_1e-6']} above 1e-6, "
              f"no hull: {own['no_hull']}")
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
