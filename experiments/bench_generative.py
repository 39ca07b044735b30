"""Generative models: crystal structure prediction (perov_5, carbon_24) and S.U.N. rates.

    python experiments/bench_generative.py                 # CSP on every validation structure, S.U.N. of 500
    python experiments/bench_generative.py --quick         # 300 structures per data set, S.U.N. of 50
    python experiments/bench_generative.py --parts sun --sun-samples 200
    python experiments/bench_generative.py --parts validity   # the language model, constrained or not

Crystal structure prediction (CDVAE's task, the figures DiffCSP and FlowMM report): for
each structure of a genbench validation split, one sample for its cell composition;
a match is pymatgen's StructureMatcher at stol 0.5, angle_tol 10°, ltol 0.3, and RMSE
is its normalised root-mean-square displacement over the matched pairs. CDVAE's
protocol, as DiffCSP and FlowMM run it: a match is where `get_rms_dist` finds one
(`match_rate_fit` is the stricter count of `StructureMatcher.fit`), and only between a
valid sample and a valid target: no two atoms closer than 0.5 Å, and a composition
that passes SMACT's charge-neutrality and Pauling tests (or is one element, or metals
only); 51 of perov_5's reported targets fail that test and can never match. Published
match rates (test split; ours is CDVAE's validation split, the test split is not in
the shared data): perov_5 45 % CDVAE, 52 % DiffCSP, 54 % FlowMM; carbon_24 17 % CDVAE,
17 % DiffCSP, 23 % FlowMM.

FlowMM's inference anti-annealing (coordinates' velocity × (1 + s t)) is tuned on the
first `TUNE_ROWS` validation structures and the match rate reported on the others.

S.U.N. (MatterGen's measure): of the first N samples per source as written (one that
does not parse counts as invalid), the share that is valid (CDVAE's validity, above),
then relaxed by CHGNet (FIRE, cell relaxed) unique (no earlier relaxed sample of the
source matches it, `structures.default_matcher`), new (no mp37k structure of its
formula matches it) and stable: E_hull ≤ 0.1 eV/atom (MatterGen's threshold; ≤ 0 also
reported) against MP's stable phases with MP2020 corrections (the embedded reference
hull, from ../shared/data/mp_reference; CHGNet's energies are on that scale). The sources: the published models' outputs in ../shared/data/generated
(CDVAE, CrystaLLM, MatterGen and Random of matgen_baselines; crystal-text-llm), and,
prompted with the MatterGen set's compositions (so that they answer the same
question: a structure for each of those compositions), the shipped flow, language
model and FlowLLM (the flow refining the language model's valid samples from t = 0.5)
and pyxtal random search. `--sun-sources` runs some sources only, keeping the others'
rows asked for the same sample count from the results file (a source with fewer
entries gives all it has: CDVAE's 478). The CHGNet relaxations are cached by
structure (`--sun-cache`): a killed run resumes, and a later run with more samples
relaxes only the new ones.
The language model samples with constrained decoding (`cif_grammar`), as a campaign
does by default; the validity part checks its samples for the S.U.N. compositions with
and without the constraints, rejects by reason.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import json
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import gnome_loop  # noqa: F401  (before pandas: pyarrow's threads would miss gnome_loop/malloc.py's settings)
import pandas as pd
import smact
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry
from smact.screening import pauling_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import DATA, bench_parser, write_results  # noqa: E402
from gnome_loop.generate.imported import iter_sources, parse_entry  # noqa: E402
from gnome_loop.generate.parents import FORMULA_SUM  # noqa: E402
from gnome_loop.generate.random_search import random_structures  # noqa: E402
from gnome_loop.generative import cif_lm, cif_tokens, flow  # noqa: E402
from gnome_loop.generative.checks import Reject, check_sample  # noqa: E402
from gnome_loop.hull import Hull, e_above_hull_many  # noqa: E402
from gnome_loop.oracle.ase_relax import AseRelaxOracle  # noqa: E402
from gnome_loop.snapshot.reference import mp_reference_entries  # noqa: E402
from gnome_loop.structures import default_matcher, find_duplicates, symmetry_label  # noqa: E402

PRETRAINED = Path(__file__).resolve().parents[1] / "gnome_loop" / "generative" / "pretrained"
#: CDVAE's, DiffCSP's and FlowMM's CSP matcher.
MATCHER = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}
#: Validation structures on which the anti-annealing strength is chosen (not reported).
TUNE_ROWS = 200
SPEEDUPS = (0.0, 2.0, 5.0, 10.0)
#: FlowLLM's start times tried (the time at which the language model's structure enters the flow).
START_TIMES = (0.0, 0.5, 0.8)
PUBLISHED = {"perov_5": {"CDVAE": 0.4504, "DiffCSP": 0.5202, "FlowMM": 0.5358},
             "carbon_24": {"CDVAE": 0.1709, "DiffCSP": 0.1754, "FlowMM": 0.2289}}


def validation_structures(dataset: str) -> list[Structure]:
    """The genbench validation split's structures, in the file's order."""
    with gzip.open(DATA / "genbench" / dataset / "val.csv.gz", "rt") as handle:
        table = pd.read_csv(io.StringIO(handle.read()))
    return [Structure.from_str(text, fmt="cif") for text in table["cif"]]


def structurally_valid(structure: Structure) -> bool:
    """CDVAE's structural validity: every interatomic distance over 0.5 Å, volume over 0.1 Å³."""
    if structure.volume <= 0.1:
        return False
    distances = structure.distance_matrix
    return len(structure) < 2 or bool(distances[np.triu_indices(len(structure), 1)].min() > 0.5)


def composition_valid(composition: Composition) -> bool:
    """SMACT validity as CDVAE and DiffCSP define it: one element, or metals only (an
    alloy), or oxidation states from SMACT's lists that balance the cell's counts
    (divided by their gcd) and pass SMACT's Pauling test (cations less electronegative
    than anions; an element without an electronegativity passes)."""
    symbols = [element.symbol for element in composition]
    if len(symbols) == 1 or all(symbol in smact.metals for symbol in symbols):
        return True
    counts = np.array([int(round(composition[symbol])) for symbol in symbols])
    counts //= np.gcd.reduce(counts)
    elements = [smact.Element(symbol) for symbol in symbols]
    # an element without SMACT oxidation states (noble gases, Pm, Ra ...) balances nothing
    for charges in itertools.product(*(element.oxidation_states or () for element in elements)):
        if int(np.dot(charges, counts)) == 0:
            try:
                if pauling_test(charges, [element.pauling_eneg for element in elements]):
                    return True
            except TypeError:  # an electronegativity is missing
                return True
    return False


def valid(structure: Structure) -> bool:
    """CDVAE's validity of a sample: structural and compositional."""
    return structurally_valid(structure) and composition_valid(structure.composition)


def match(samples: list[Structure | None], targets: list[Structure]) -> dict:
    """CDVAE's CSP metrics: a valid sample matches when `StructureMatcher.get_rms_dist`
    finds a mapping (the protocol behind the published figures); `match_rate_fit` counts
    only those `StructureMatcher.fit` also accepts (its RMS within stol: stricter).
    RMSE: mean normalised RMS displacement over the matches (NaN with none). A sample
    of None (a language model's text that is no valid CIF) is invalid."""
    matcher = StructureMatcher(**MATCHER)
    distances, fits = [], 0
    ok = [sample is not None and valid(sample) for sample in samples]
    for sample, target, sample_ok in zip(samples, targets, ok):
        if not (sample_ok and valid(target)):  # DiffCSP's rule: both valid
            continue
        try:
            rms = matcher.get_rms_dist(sample, target)
        except Exception:  # a degenerate sample cell: no match
            rms = None
        if rms is not None:
            distances.append(rms[0])
            fits += bool(rms[0] <= MATCHER["stol"] and matcher.fit(sample, target))
    n = max(len(targets), 1)
    return {"match_rate": len(distances) / n, "match_rate_fit": fits / n, "valid": sum(ok) / max(len(samples), 1),
            "rmse": float(np.mean(distances)) if distances else float("nan")}


def chunks(items: list, size: int = 256):
    """(offset, part) of `items` in parts of `size`: each part gets its own random key."""
    return ((start, items[start:start + size]) for start in range(0, len(items), size))


def flow_csp(directory: Path, targets: list[Structure], speedup: float, seed: int = 0,
             steps: int = 100) -> list[Structure]:
    """One flow sample per target's cell composition."""
    config, params, stats, _ = flow.load_flow(directory)
    return [structure for start, part in chunks(targets)
            for structure in flow.sample(config, params, stats, [s.composition for s in part],
                                         jax.random.fold_in(jax.random.PRNGKey(seed), start), steps=steps,
                                         speedup=speedup)]


def lm_outcomes(directory: Path, compositions: Sequence[Composition], seed: int = 0, size: int = 256,
                constrained: bool = True) -> list[Structure | Reject]:
    """One language-model CIF per cell composition, prompted with its formula in parts of
    `size` (CrystaLLM's sampling, as in a campaign: temperature 1, top 10 tokens), checked
    as a campaign checks it: its structure, or why it has none."""
    config, params, _ = cif_lm.load_lm(directory)
    out: list[Structure | Reject] = []
    for start, part in chunks(compositions, size):
        texts = cif_lm.sample(config, params, [cif_tokens.prompt(c) for c in part],
                              jax.random.fold_in(jax.random.PRNGKey(seed), start), top_k=10, constrained=constrained)
        out += [check_sample(text, finished, c) for (text, finished), c in zip(texts, part)]
    return out


def lm_samples(directory: Path, compositions: Sequence[Composition], seed: int = 0,
               size: int = 256) -> list[Structure | None]:
    """`lm_outcomes`, None for a rejected sample."""
    return [None if isinstance(o, Reject) else o for o in lm_outcomes(directory, compositions, seed, size)]


def refined_by_flow(drafts: list[Structure | None], directory: Path, t_start: float,
                    size: int = 256) -> list[Structure | None]:
    """FlowLLM mode: the flow at `directory` carries each language-model sample from
    `t_start` to 1 (the flows here were trained from noise, so `t_start` is tuned); None
    where there is no sample or its cell is over the flow's size."""
    config, params, stats, _ = flow.load_flow(directory)
    fits = [s is not None and len(s) <= config.max_atoms for s in drafts]
    starts = [s for s, ok in zip(drafts, fits) if ok]
    refined = iter([r for _, part in chunks(starts, size) for r in flow.refine(config, params, stats, part,
                                                                                t_start=t_start)])
    return [next(refined) if ok else None for ok in fits]


def csp(dataset: str, model: str, limit: int | None) -> dict | None:
    """Match rate of `model` (flow, llm or flowllm: the shipped `<kind>-<dataset>`
    checkpoints) on `dataset`'s validation split, its one setting (the flow's
    anti-annealing, FlowLLM's start time) chosen on the first TUNE_ROWS structures; None
    where a checkpoint it needs is missing."""
    folders = {kind: PRETRAINED / f"{kind}-{dataset}" for kind in ("flow", "lm")}
    needed = {"flow": ["flow"], "llm": ["lm"], "flowllm": ["lm", "flow"]}[model]
    missing = [str(folders[kind]) for kind in needed if not folders[kind].is_dir()]
    if missing:
        print(f"{dataset} {model}: no model at {', '.join(missing)} (scripts/pretrain_generative.py)")
        return None
    targets = validation_structures(dataset)
    tune, report = targets[:TUNE_ROWS], targets[TUNE_ROWS:][:limit]
    if model == "llm":
        def generate(rows, _):
            return lm_samples(folders["lm"], [s.composition for s in rows])
        settings = (None,)
    elif model == "flow":
        def generate(rows, speedup):
            return flow_csp(folders["flow"], rows, speedup)
        settings = SPEEDUPS
    else:
        drafts: dict[int, list[Structure | None]] = {}

        def generate(rows, t_start):  # the language model drafts each row set once; each start time refines them
            if id(rows) not in drafts:
                drafts[id(rows)] = lm_samples(folders["lm"], [s.composition for s in rows])
            return refined_by_flow(drafts[id(rows)], folders["flow"], t_start)
        settings = START_TIMES
    tuning = {setting: match(generate(tune, setting), tune)["match_rate"] for setting in settings} \
        if len(settings) > 1 else {}
    best = max(settings, key=lambda s: (tuning[s], -s)) if tuning else None
    started = time.time()
    metrics = match(generate(report, best), report)
    return {"models": [str(folders[kind].relative_to(PRETRAINED.parents[2])) for kind in needed],
            "structures": len(report), **metrics, "setting": best, "tuning_match_rates": tuning,
            "seconds": round(time.time() - started), "published": PUBLISHED[dataset]}


#: Published generators' outputs (../shared/data/generated), by source name.
IMPORTED = {"CDVAE": "matgen_baselines/CDVAE.zip", "CrystaLLM": "matgen_baselines/CrystaLLM.zip",
            "MatterGen": "matgen_baselines/MatterGen.zip", "Random (matgen_baselines)": "matgen_baselines/Random.zip",
            "crystal-text-llm": "crystal_text_llm_llama2_7B_t1.0_p1.0.csv.gz"}
#: S.U.N.'s stability thresholds, eV/atom above MP's hull.
STABLE = (0.1, 0.0)


def imported(name: str, n: int) -> list[Structure | None]:
    """The first `n` entries of a published generator's output as it wrote them (None
    where one does not parse: an invalid sample, not a skipped one)."""
    out: list[Structure | None] = []
    for source in itertools.islice(iter_sources(DATA / "generated" / IMPORTED[name]), n):
        try:
            out.append(parse_entry(source.text, source.fmt))
        except ValueError:
            out.append(None)
    return out


#: The shipped models answer S.U.N.'s compositions in chunks of this many, each with its own
#: key: a composition's sample does not depend on how many are asked for (the cache below).
CHUNK = 50
#: FlowLLM's start time with the shipped flow (trained from noise; tuned on perov_5's CSP).
FLOWLLM_T_START = 0.5


def flow_prompted(compositions: tuple[Composition, ...], seed: int = 0) -> list[Structure | None]:
    """The shipped flow's structure for each cell composition (None: a cell over its size)."""
    config, params, stats, _ = flow.load_flow(PRETRAINED / "flow")
    drawn: list[Structure | None] = []
    for start, chunk in chunks(compositions, CHUNK):
        fits = [c for c in chunk if c.num_atoms <= config.max_atoms]
        made = iter(flow.sample(config, params, stats, fits, jax.random.fold_in(jax.random.PRNGKey(seed), start),
                                speedup=5.0) if fits else [])
        drawn += [next(made) if c.num_atoms <= config.max_atoms else None for c in chunk]
    return drawn


@functools.lru_cache(maxsize=1)
def lm_prompted(compositions: tuple[Composition, ...], seed: int = 0) -> list[Structure | None]:
    """The shipped language model's checked CIF for each cell composition (None: rejected);
    kept for FlowLLM, which refines the same samples."""
    return lm_samples(PRETRAINED / "lm", compositions, seed, CHUNK)


def flowllm_prompted(compositions: tuple[Composition, ...], seed: int = 0) -> list[Structure | None]:
    """FlowLLM: the shipped flow refines each valid sample of the shipped language model
    from FLOWLLM_T_START."""
    return refined_by_flow(lm_prompted(compositions, seed), PRETRAINED / "flow", FLOWLLM_T_START, CHUNK)


def pyxtal_prompted(compositions: tuple[Composition, ...], seed: int = 0) -> list[Structure | None]:
    """pyxtal random search's structure for each cell composition (None: it found none)."""
    searched: list[Structure | None] = []
    for index, composition in enumerate(compositions):
        found = random_structures(composition, 1, formula_units=[1], max_atoms=int(composition.num_atoms),
                                  seed=seed + index, time_limit=10.0)
        searched.append(found[0].structure if found else None)
    return searched


#: Sources prompted with S.U.N.'s compositions, and the shipped models each needs.
PROMPTED = {"flow (ours)": (flow_prompted, ("flow",)), "language model (ours)": (lm_prompted, ("lm",)),
            "FlowLLM (ours)": (flowllm_prompted, ("lm", "flow")), "pyxtal random search": (pyxtal_prompted, ())}


def known_structures(formulas: set[str]) -> dict[str, list[Structure]]:
    """mp37k's structures of these reduced formulas (the novelty reference)."""
    table = pd.read_csv(DATA / "mp37k" / "mp37k_eform.csv.gz", usecols=["material_id", "cif"])
    out: dict[str, list[Structure]] = {}
    for cif in table["cif"]:
        match = FORMULA_SUM.search(cif)
        if match and Composition(match.group(1)).reduced_formula in formulas:
            structure = Structure.from_str(cif, fmt="cif")
            out.setdefault(structure.composition.reduced_formula, []).append(structure)
    return out


def structure_key(structure: Structure) -> str:
    """A structure's content hash: the relaxation cache's key."""
    return hashlib.sha1(json.dumps(structure.as_dict(), sort_keys=True).encode()).hexdigest()


def relaxed(structures: list[Structure], cache: Path, max_steps: int = 300) -> list[tuple[Structure, float] | None]:
    """Each structure after a CHGNet relaxation (FIRE, cell relaxed) with its total energy
    (eV), None where the relaxation fails. Results are appended to `cache` (JSON lines by
    the input's hash) as they come and read back from it: a killed run, or a later one
    with more samples, relaxes nothing twice."""
    done: dict[str, dict] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            done[row["key"]] = row
    oracle = AseRelaxOracle("chgnet", fmax=0.05, max_steps=max_steps, relax_cell=True, max_seconds=300)
    cache.parent.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Structure, float] | None] = []
    for structure in structures:
        key = structure_key(structure)
        if key not in done:
            try:
                result = oracle.relax(structure)
            except Exception:  # a relaxation that blows up judges nothing
                result = None
            ok = result is not None and result.ok and np.isfinite(result.energy)
            done[key] = {"key": key, "structure": result.structure.as_dict() if ok else None,
                         "energy": float(result.energy) if ok else None}
            with cache.open("a") as handle:
                handle.write(json.dumps(done[key]) + "\n")
        row = done[key]
        out.append((Structure.from_dict(row["structure"]), row["energy"]) if row["structure"] else None)
    return out


def relaxed_e_hull(structures: list[Structure], cache: Path) -> list[tuple[Structure, float | None] | None]:
    """Each structure after a CHGNet relaxation (`relaxed`) with its E_hull (eV/atom)
    against MP's hull (None where the hull cannot judge it); None where the relaxation fails."""
    rows = relaxed(structures, cache)
    entries = [ComputedEntry(row[0].composition, row[1], entry_id=f"s{index}")
               for index, row in enumerate(rows) if row is not None]
    e_hull = iter(e_above_hull_many(entries, Hull(mp_reference_entries())))
    return [(row[0], next(e_hull).e_above_hull) if row is not None else None for row in rows]


def sun(samples: list[Structure | None], known: dict[str, list[Structure]], cache: Path) -> dict:
    """Of a source's samples (None: a sample it failed to give): valid (`valid`), then
    relaxed by CHGNet, unique among the relaxed valid ones, new against `known`, and
    stable; each count and the S.U.N. rates over all samples (MatterGen's order:
    uniqueness and novelty of the relaxed structures)."""
    ok = [s for s in samples if s is not None and valid(s)]
    judged = [row for row in relaxed_e_hull(ok, cache) if row is not None]
    items = [(str(i), symmetry_label(structure), structure) for i, (structure, _) in enumerate(judged)]
    repeats = find_duplicates(items)
    unique = [row for (i, _, _), row in zip(items, judged) if i not in repeats]
    matcher = default_matcher()
    new = [(structure, e) for structure, e in unique
           if not any(matcher.fit(structure, k) for k in known.get(structure.composition.reduced_formula, []))]
    n = max(len(samples), 1)
    out = {"samples": len(samples), "valid": len(ok), "relaxed": len(judged), "unique": len(unique), "new": len(new)}
    for threshold in STABLE:
        out[f"sun_{threshold}"] = sum(e is not None and e <= threshold + 1e-9 for _, e in new)
        out[f"sun_rate_{threshold}"] = out[f"sun_{threshold}"] / n
    return out


def sun_rates(n: int, cache: Path, names: list[str]) -> dict:
    """S.U.N. of `n` samples of each source of `names`; the prompted ones answer the first
    `n` cell compositions of the MatterGen set (relaxations cached in `cache`)."""
    compositions = tuple(s.composition for s in imported("MatterGen", -(-n // CHUNK) * CHUNK) if s is not None)
    sources = {}
    for name in names:
        if name in IMPORTED:
            sources[name] = imported(name, n)
            continue
        make, models = PROMPTED[name]
        missing = [kind for kind in models if not (PRETRAINED / kind).is_dir()]
        if missing:
            print(f"{name}: no model at {', '.join(missing)} (scripts/pretrain_generative.py): left out")
            continue
        sources[name] = make(compositions)[:n]
    formulas = {s.composition.reduced_formula for samples in sources.values() for s in samples if s is not None}
    known = known_structures(formulas)
    rows = {}
    for name, samples in sources.items():
        started = time.time()
        rows[name] = {**sun(samples, known, cache), "asked": n, "seconds": round(time.time() - started)}
        print(f"{name}: {rows[name]}", flush=True)
    return rows


def lm_validity(n: int) -> dict:
    """The shipped language model's samples for the first `n` cell compositions of the
    MatterGen set (as S.U.N. prompts them), checked, with and without constrained
    decoding: valid share, rejects by reason, seconds."""
    compositions = [s.composition for s in imported("MatterGen", n) if s is not None]
    rows = {}
    for constrained in (True, False):
        started = time.time()
        outcomes = lm_outcomes(PRETRAINED / "lm", compositions, 0, CHUNK, constrained)
        rejected = Counter(o.reason for o in outcomes if isinstance(o, Reject))
        valid = len(outcomes) - sum(rejected.values())
        name = "constrained" if constrained else "unconstrained"
        rows[name] = {"samples": len(compositions), "valid": valid, "valid_share": valid / max(len(compositions), 1),
                      "rejected": dict(rejected.most_common()), "seconds": round(time.time() - started)}
        print(f"language model, {name}: {rows[name]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "bench_generative", "300 validation structures per data set, S.U.N. of 50")
    parser.add_argument("--parts", default="csp,sun,validity",
                        help="csp, sun, validity (the language model's, constrained or not), comma-separated")
    parser.add_argument("--datasets", default="perov_5,carbon_24", help="CSP's data sets")
    parser.add_argument("--models", default="flow,llm,flowllm", help="CSP's models (those with a checkpoint run)")
    parser.add_argument("--sun-samples", type=int, default=None, help="samples per source (500; quick: 50)")
    parser.add_argument("--sun-sources", default=None,
                        help="S.U.N.'s sources, comma-separated (default: all); the others' rows asked for the "
                             "same sample count are kept from --json")
    parser.add_argument("--sun-cache", type=Path, default=Path.home() / ".cache" / "gnome_loop" / "sun_relaxations.jsonl",
                        help="CHGNet relaxations done so far (JSON lines; resumes a killed or a larger run)")
    args = parser.parse_args(argv)
    sun_names = args.sun_sources.split(",") if args.sun_sources else [*IMPORTED, *PROMPTED]
    unknown = sorted(set(sun_names) - {*IMPORTED, *PROMPTED})
    if unknown:
        parser.error(f"unknown S.U.N. source(s) {unknown}; known: {[*IMPORTED, *PROMPTED]}")
    if not (DATA / "genbench").is_dir():
        print(f"no genbench data at {DATA}: nothing to benchmark", file=sys.stderr)
        return 2
    parts = args.parts.split(",")
    results: dict = {**(json.loads(args.json.read_text()) if args.json.exists() else {}), "matcher": MATCHER,
                     "quick": args.quick}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "csp" in parts:
            results.setdefault("csp", {})
            for dataset in args.datasets.split(","):
                for model in args.models.split(","):
                    row = csp(dataset, model, 300 if args.quick else None)
                    if row is not None:
                        results["csp"].setdefault(dataset, {})[model] = row
                        results[f"{dataset.replace('_', '')}_match_rate_{model}"] = row["match_rate"]
        if "sun" in parts:
            n = args.sun_samples or (50 if args.quick else 500)
            kept = {name: row for name, row in results.get("sun", {}).items() if row.get("asked", row["samples"]) == n}
            results["sun"] = {**kept, **sun_rates(n, args.sun_cache, sun_names)}
            results["sun_rate"] = {name: row["sun_rate_0.1"] for name, row in results["sun"].items()}
        if "validity" in parts and (PRETRAINED / "lm").is_dir():
            results["lm_validity"] = lm_validity(args.sun_samples or (50 if args.quick else 200))
    print_tables(results)
    write_results(args.json, results)
    return 0


def print_tables(results: dict) -> None:
    if results.get("csp"):
        print(f"{'data set':10} {'model':8} {'structures':>10} {'valid':>6} {'match rate':>10} {'(fit)':>6} "
              f"{'RMSE':>6} {'setting':>7}  published")
        for dataset, rows in results["csp"].items():
            for model, row in rows.items():
                published = ", ".join(f"{k} {v:.0%}" for k, v in row["published"].items())
                print(f"{dataset:10} {model:8} {row['structures']:10d} {row['valid']:6.1%} {row['match_rate']:10.1%} "
                      f"{row['match_rate_fit']:6.1%} {row['rmse']:6.3f} {str(row['setting']):>7}  {published}")
    if results.get("sun"):
        print(f"\n{'source':28} {'samples':>7} {'valid':>6} {'unique':>6} {'new':>5} {'S.U.N. 0.1':>10} {'S.U.N. 0':>9}")
        for name, row in results["sun"].items():
            print(f"{name:28} {row['samples']:7d} {row['valid']:6d} {row['unique']:6d} {row['new']:5d} "
                  f"{row['sun_rate_0.1']:10.1%} {row['sun_rate_0.0']:9.1%}")
    if results.get("lm_validity"):
        print(f"\n{'language model':14} {'samples':>7} {'valid':>6}  rejects")
        for name, row in results["lm_validity"].items():
            print(f"{name:14} {row['samples']:7d} {row['valid_share']:6.1%}  {row['rejected']}")


if __name__ == "__main__":
    raise SystemExit(main())
