"""Screening one shard of parent structures: generate → validate → score → dedup → keep.

GNoME screened over 10^9 candidates; a round at that scale cannot hold its
candidates in memory. The funnel is cut into shards of a few parent structures.
A shard generates its substitution and SAPS candidates, rejects invalid ones,
scores the rest with the energy model against the hull, and keeps in full only its
best `keep` unique candidates by predicted E_hull (duplicates are looked for, with a
bucketed `StructureMatcher`, among the candidates that could be kept). The others
leave only a summary row (id, formula, predicted E_hull, the symmetry label of
those examined, and whether the whole ensemble or its first member predicted it), so
memory is bounded by the shard, not the round. Duplicates across shards are the
caller's business (the campaign keeps a store index of (reduced formula, space group)
buckets). With a cascade margin, an ensemble's first member scores every candidate and
the whole ensemble only those that could be kept.

`score_structures` is also what the campaign's select stage uses: a structure the
model rejects, a NaN, or a system without a hull gets an error, never a number.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import substitute
from gnome_loop.hull import Hull, e_above_hull_many
from gnome_loop.models.base import NON_FINITE_PREDICTION, EnergyModel, predict_each
from gnome_loop.models.registry import load_model
from gnome_loop.structures import Candidate, ChemicalSpace, DuplicateIndex, symmetry_label, validate_structure


@dataclass(frozen=True)
class Prediction:
    """The energy model's verdict on one structure: energy per atom (eV), ensemble
    spread, E_hull (eV/atom) against the hull, or the error that replaces them."""

    energy: float | None
    std: float | None
    ehull: float | None
    error: str | None


def score_structures(model: EnergyModel, hull: Hull, structures: Sequence[Structure],
                     keys: Sequence[str]) -> list[Prediction]:
    """Predict every structure's energy and judge it against `hull` (one phase diagram
    per chemical system); `keys` name the structures in the hull computation."""
    predictions = _predict(model, structures)
    judged = {r.entry_id: r for r in e_above_hull_many(
        [ComputedEntry(structure.composition, energy * len(structure), entry_id=key)
         for key, structure, (energy, _, error) in zip(keys, structures, predictions) if error is None], hull)}
    out = []
    for key, (energy, std, error) in zip(keys, predictions):
        ehull = None
        if error is None:
            ehull = judged[key].e_above_hull
            if ehull is None:
                error = f"no hull: {judged[key].reason}"
        out.append(Prediction(energy, std, ehull, error))
    return out


def _predict(model: EnergyModel,
             structures: Sequence[Structure]) -> list[tuple[float | None, float | None, str | None]]:
    """(energy, std, error) per structure: a structure the model rejects or a NaN never reaches selection."""
    out = []
    for result in predict_each(model, structures):
        if result == NON_FINITE_PREDICTION:
            out.append((None, None, result))
        elif isinstance(result, str):
            out.append((None, None, f"model rejected the structure: {result}"))
        else:
            out.append((*result, None))
    return out


def first_stage(model: EnergyModel) -> EnergyModel | None:
    """The cascade's cheap first stage: the first member of an ensemble of several
    (`first_members`), or None for any other model."""
    if getattr(model, "settings", {}).get("members", 1) < 2 or not hasattr(model, "first_members"):
        return None
    return model.first_members(1)


def rescore_best(model: EnergyModel, hull: Hull, structures: Sequence[Structure], keys: Sequence[str],
                 first: Sequence[Prediction], predictions: list[Prediction], whole: list[bool], count: int,
                 margin: float) -> int:
    """The cascade's second stage, in place: the whole ensemble scores every structure
    not yet scored by it whose first-stage E_hull (`first`) is within `margin` eV/atom
    of the `count`-th best; `predictions` and `whole` (by the whole ensemble) are updated. Returns how many."""
    ehulls = sorted(p.ehull for p in first if p.error is None)
    if not ehulls:
        return 0
    cutoff = ehulls[min(count, len(ehulls)) - 1] + margin
    chosen = [i for i, p in enumerate(first) if not whole[i] and p.error is None and p.ehull <= cutoff]
    for index, prediction in zip(chosen, score_structures(model, hull, [structures[i] for i in chosen],
                                                          [keys[i] for i in chosen])):
        predictions[index], whole[index] = prediction, True
    return len(chosen)


@dataclass(frozen=True)
class ScreenSettings:
    """What a shard generates and keeps (the campaign's chemical space and generator settings)."""

    space: ChemicalSpace
    known_formulas: frozenset[str]
    keep: int = 100  # unique candidates kept in full per shard, lowest predicted E_hull first
    substitution: dict | None = field(default_factory=dict)  # substitute() options; None: off
    saps: dict | None = field(default_factory=dict)  # saps() options; None: off
    cascade_margin: float | None = None  # eV/atom; None: every candidate scored by the whole ensemble


@dataclass
class ShardResult:
    """A screened shard: its best unique candidates in full (with their predictions), a
    summary row for every other scored candidate, and the funnel's counts."""

    kept: list[tuple[Candidate, Prediction]]
    # (id, formula, symmetry label or None, E_hull, whether the whole ensemble predicted it)
    summary: list[tuple[str, str, str | None, float | None, bool]]
    funnel: Counter  # generated, valid, scored, rescored (cascade), examined, duplicates, kept; rejected:<reason>
    labels: dict[str, str] = field(default_factory=dict)  # symmetry label of each kept candidate, by id


def screen_shard(parents: Sequence[tuple[str, Structure]], settings: ScreenSettings, model: EnergyModel,
                 hull: Hull) -> ShardResult:
    """Generate, validate, score, then keep the best `settings.keep` unique candidates.

    The filter comes before dedup, as in GNoME: a structure match costs milliseconds
    a pair (5 ms on a 2-core CPU), scoring about one a structure, so only candidates
    that could be kept are matched. They are examined best first (predicted E_hull,
    then id), each against the better ones kept before it, inside its (reduced
    formula, space group) bucket; a duplicate is dropped and the next one examined
    until `keep` are kept.
    Candidates never examined have no symmetry label in their summary row.
    With `cascade_margin` (a screening cascade), the ensemble's first member scores
    every candidate and the whole ensemble those within the margin (eV/atom) of the
    `keep`-th best (more, should duplicates leave fewer than `keep`); only candidates
    the whole ensemble scored can be kept, the others' summary rows carry their first
    member's E_hull.
    Deterministic: the same parents and settings give the same result, whatever the
    worker. Duplicates that span shards are left to the campaign's dedup stage, which
    takes screened candidates in the same order (best first), so cutting a round into
    shards does not change which of two duplicates survives.
    """
    funnel: Counter = Counter()
    space = dict(elements=list(settings.space.elements), known_formulas=set(settings.known_formulas),
                 max_elements=settings.space.max_elements, max_atoms=settings.space.max_atoms)
    proposals: dict[str, Candidate] = {}
    implausible: Counter = Counter()  # refused by the generators (gnome_loop.generate.plausible)
    if settings.substitution is not None:
        for candidate in substitute(parents, **space, **settings.substitution, rejected=implausible):
            proposals.setdefault(candidate.id, candidate)
    if settings.saps is not None:
        for candidate in saps(parents, **space, **settings.saps, rejected=implausible):
            proposals.setdefault(candidate.id, candidate)
    funnel["generated"] = len(proposals) + sum(implausible.values())
    funnel.update({f"rejected:{reason}": n for reason, n in implausible.items()})

    valid = []
    for key in sorted(proposals):
        reason = validate_structure(proposals[key].structure, settings.space)
        if reason:
            funnel[f"rejected:{reason.category}"] += 1
        else:
            valid.append(proposals[key])
    funnel["valid"] = len(valid)

    structures, keys = [c.structure for c in valid], [c.id for c in valid]
    cheap = first_stage(model) if settings.cascade_margin is not None else None
    first = score_structures(cheap or model, hull, structures, keys)
    predictions, whole = list(first), [cheap is None] * len(valid)
    count = settings.keep
    while True:  # with the cascade: until `keep` are kept, or every candidate is the whole ensemble's
        if cheap is not None:
            funnel["rescored"] += rescore_best(model, hull, structures, keys, first, predictions, whole, count,
                                               settings.cascade_margin)
        kept, summary, labels, examined = _keep_best(valid, predictions, whole, settings.keep)
        short = settings.keep - len(kept)
        if short == 0 or all(w or p.error is not None for w, p in zip(whole, first)):
            break
        count = max(count + short, 2 * count)  # duplicates left the shard short: a wider cut, few passes
    funnel["scored"] = sum(p.error is None for p in predictions)
    funnel["examined"], funnel["duplicates"] = examined, examined - len(kept)  # shown as 0, not missing
    funnel["kept"] = len(kept)
    return ShardResult(kept, summary, funnel, labels)


def _keep_best(candidates: list[Candidate], predictions: list[Prediction], whole: list[bool], keep: int) -> tuple:
    """(kept, summary rows, labels of the kept, examined): the candidates examined best
    first (E_hull, then id; only those the whole ensemble scored, `whole`), each kept unless it
    matches a better one kept, until `keep` are kept; every other scored one a summary row."""
    scored = [(c, p, w) for c, p, w in zip(candidates, predictions, whole) if p.error is None]
    ranked = sorted(scored, key=lambda item: (item[1].ehull, item[0].id))  # the campaign's dedup order too
    index = DuplicateIndex()
    kept, summary, labels, examined = [], [], {}, 0
    for candidate, prediction, whole_ensemble in ranked:
        formula, label = candidate.structure.composition.reduced_formula, None
        if whole_ensemble and len(kept) < keep:
            label = symmetry_label(candidate.structure)
            examined += 1
            if index.add(candidate.id, label, candidate.structure) is None:
                kept.append((candidate, prediction))
                labels[candidate.id] = label
                continue
        summary.append((candidate.id, formula, label, prediction.ehull, whole_ensemble))
    return kept, summary, labels, examined


@dataclass(frozen=True)
class ScreenContext:
    """What every shard task of a round shares, shipped to each worker once: the energy
    model's files, the hull's entries and the settings. `key` names the round's
    model and hull; a worker builds them once per key and reuses them (and the
    model's compiled functions) for every shard it runs."""

    key: str
    model_files: dict[str, bytes]
    hull_entries: list[dict]  # ComputedEntry.as_dict()
    scale: str
    settings: ScreenSettings


#: Phase diagrams a worker keeps cached: a round touches tens of thousands of chemical
#: systems, and a worker's memory must not grow with the round.
WORKER_DIAGRAMS = 1000

#: Per worker process: the model and hull of the context being screened.
_LOADED: dict[str, tuple[EnergyModel, Hull]] = {}


def screen_task(context: ScreenContext, parents: list[tuple[str, dict]]) -> ShardResult:
    """One shard task (a dask task or a plain call): `parents` as (id, Structure.as_dict())."""
    if context.key not in _LOADED:
        _LOADED.clear()
        with tempfile.TemporaryDirectory() as folder:
            for name, data in context.model_files.items():
                (Path(folder) / name).write_bytes(data)
            model = load_model(folder)
        hull = Hull([ComputedEntry.from_dict(d) for d in context.hull_entries], scale=context.scale,
                    max_diagrams=WORKER_DIAGRAMS)
        _LOADED[context.key] = (model, hull)
    model, hull = _LOADED[context.key]
    return screen_shard([(key, Structure.from_dict(d)) for key, d in parents], context.settings, model, hull)


def model_files(directory: str | Path) -> dict[str, bytes]:
    """The files of a saved model (its top-level folder: parameters, settings, model card)."""
    return {path.name: path.read_bytes() for path in sorted(Path(directory).iterdir()) if path.is_file()}
