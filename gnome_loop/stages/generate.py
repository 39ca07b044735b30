"""The generate stage: every enabled generator proposes candidates, each one is
validated, and at most a generator's `max_candidates` valid new ones are kept
(docs/architecture.md, step 1). With `screening.enabled`, substitution and SAPS
run in shards instead (`stages.screening`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from pymatgen.core import Composition, Structure

from gnome_loop.config import SubstitutingGenerator
from gnome_loop.generate.composition import enumerate_candidates, placeholder_structure
from gnome_loop.generate.external import run_external
from gnome_loop.generate.generative import prompt_formulas, propose
from gnome_loop.generate.imported import DUPLICATE, import_structures
from gnome_loop.generate.parents import near_hull, pooled_parents
from gnome_loop.generate.permutation import permute
from gnome_loop.generate.random_search import random_search
from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import substitute
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.stages.screening import screen
from gnome_loop.store import Store, candidate_row
from gnome_loop.structures import Candidate, ChemicalSpace, structure_from_json, validate_structure


class Proposals(NamedTuple):
    """One generator's output in a round: its candidates (best first), the most it may
    add (`max_candidates`), and the rejects it counted itself; a generative model's
    samples drawn and fine-tuning, an external command's failure."""

    generator: str
    cap: int
    candidates: Iterable[Candidate]
    rejected: Counter
    samples: int | None = None
    training: dict | None = None
    failure: str | None = None


def generate(ctx: StageContext, round_: int) -> Decision:
    """Run the generators and keep each one's valid new candidates, up to its cap."""
    funnel = screen(ctx, round_) if ctx.config.screening.enabled else None
    space = ctx.space()
    proposed = ctx.store.candidate_ids()
    rows, generated, rejected, valid = [], Counter(), Counter(), Counter()
    by_generator: dict[str, Counter] = {}
    marks: dict[str, str] = {}
    samples, training, failures = {}, {}, {}
    for proposal in proposals(ctx, round_, marks):
        name = proposal.generator
        counts = by_generator.setdefault(name, Counter())
        counts.update(proposal.rejected)
        if proposal.samples is not None:
            samples[name] = proposal.samples
        if proposal.training is not None:
            training[name] = proposal.training
        if proposal.failure is not None:
            failures[name] = proposal.failure
        for candidate in proposal.candidates:
            if valid[name] >= proposal.cap:
                break
            if candidate.id in proposed:
                if proposal.samples is not None:  # a counted sample is accounted for, as the importer counts repeats
                    counts[DUPLICATE] += 1
                continue
            proposed.add(candidate.id)
            generated[name] += 1
            reason = validate_structure(candidate.structure, space)
            if reason:
                counts[reason.category] += 1
                continue
            valid[name] += 1
            rows.append(candidate_row(candidate.id, round_, candidate.generator, candidate.structure,
                                      candidate.parent_ids, candidate.info))
    for counts in by_generator.values():
        rejected.update(counts)

    def record(store: Store) -> None:
        added = store.add_candidates(rows)
        for key, value in marks.items():
            store.set_meta(key, value)
        store.update_round_metrics(round_, {
            "generated": dict(generated), "rejected": dict(rejected), "valid": added,
            "rejected_by_generator": {name: dict(c) for name, c in by_generator.items() if c},
            "samples_by_generator": samples, "generator_training": training,
            "generator_failures": failures, **({"funnel": funnel} if funnel is not None else {})})
        store.log("generate", f"round {round_}: {added} candidates, {sum(rejected.values())} rejected")
        for name, failure in failures.items():
            store.log("generator-failed", f"round {round_}: {name}: {failure}")

    return Decision(record)


class GeneratorInputs(NamedTuple):
    """What every generator of a round may start from."""

    ctx: StageContext
    space: ChemicalSpace
    known: set[str]  # reduced formulas of every entry
    structures: list[tuple[str, Structure, float | None]]  # (entry id, structure, E_hull)
    seed: int  # a new draw every round, the same on a re-run
    marks: dict[str, str]  # store flags to set with the round's candidates
    round_: int


def _substitution(given: GeneratorInputs) -> Proposals | None:
    settings = given.ctx.config.generators.substitution
    return _substituting(given, "substitution", settings, substitute, images=False)


def _saps(given: GeneratorInputs) -> Proposals | None:
    settings = given.ctx.config.generators.saps
    return _substituting(given, "saps", settings, saps, images=True, max_per_parent=settings.max_per_parent,
                         supercell=settings.supercell)


def _substituting(given: GeneratorInputs, name: str, settings: SubstitutingGenerator,
                  generator: Callable[..., Iterable[Candidate]], images: bool, **options) -> Proposals | None:
    """Substitution or SAPS on their pooled parents; off while screening runs them in shards (`screen`)."""
    if not settings.enabled or given.ctx.config.screening.enabled:
        return None
    space, rejects = given.space, Counter()
    return Proposals(name, settings.max_candidates, generator(
        pooled_parents(given.structures, space, [settings], images=images), space.elements, given.known,
        threshold=settings.threshold, alpha=settings.alpha, max_elements=space.max_elements,
        max_atoms=space.max_atoms, charge_balanced=settings.charge_balanced, rejected=rejects, **options), rejects)


def _permutation(given: GeneratorInputs) -> Proposals | None:
    """Ordering variants of the known phases near the hull, the most stable first."""
    settings = given.ctx.config.generators.permutation
    if not settings.enabled:
        return None
    judged = sorted((known for known in given.structures if known[2] is not None), key=lambda known: known[2])
    return Proposals("permutation", settings.max_candidates, permute(
        near_hull(judged, settings.parents_max_ehull), given.space, seed=given.seed,
        supercell=settings.supercell), Counter())


def _random(given: GeneratorInputs) -> Proposals | None:
    settings = given.ctx.config.generators.random
    if not (settings.enabled and settings.compositions):
        return None
    return Proposals("random", settings.max_candidates, random_search(
        settings.compositions, settings.per_composition, given.space.elements, given.space.max_atoms,
        seed=given.seed, time_limit=settings.time_limit), Counter())


def _composition(given: GeneratorInputs) -> Proposals | None:
    settings = given.ctx.config.generators.composition
    if not settings.enabled:
        return None
    space = given.space
    return Proposals("composition", settings.max_candidates, enumerate_candidates(
        space.elements, given.known, settings.n_compositions, settings.per_composition,
        max_elements=space.max_elements, max_atoms=space.max_atoms, model_predict=_composition_scorer(given.ctx),
        seed=given.seed, time_limit=settings.time_limit), Counter())


def _import(given: GeneratorInputs) -> Proposals | None:
    """Every import file's accepted structures; a file's rejects count in the first round
    that reads it, and `marks` gets the store flag that says so."""
    settings, space = given.ctx.config.generators.imported, given.space
    if not settings.paths:
        return None
    accepted: list[Candidate] = []
    rejects: Counter = Counter()
    for path in settings.paths:
        report = import_structures(path, space)
        accepted += report.accepted
        key = f"imported:{Path(path).resolve()}"
        if given.ctx.store.meta(key) is None:
            given.marks[key] = json.dumps(report.to_json())
            rejects.update(report.rejected)
    return Proposals("import", settings.max_candidates, accepted, rejects)


def _llm(given: GeneratorInputs) -> Proposals | None:
    return _generative(given, "llm")


def _flow(given: GeneratorInputs) -> Proposals | None:
    return _generative(given, "flow")


def _generative(given: GeneratorInputs, kind: str) -> Proposals | None:
    """The language model's or the flow's samples, fine-tuned first on the entries near
    the hull and on its earlier samples that the energy model rewarded
    (`generate.generative`), prompted with formulas of the space."""
    generators = given.ctx.config.generators
    settings = getattr(generators, kind)
    if not settings.enabled:
        return None
    known = [(e["reduced_formula"], e["e_hull"]) for e in given.ctx.store.entries(with_structure=False)]
    formulas = prompt_formulas(settings.prompts, settings.compositions, given.space, known,
                               _composition_scorer(given.ctx) if settings.prompts != "known" else None)
    wanted = settings.finetune_own_samples if settings.finetune_steps else 0
    own = [structure_from_json(row["structure"]) for row in given.ctx.store.best_predicted(kind, given.round_, wanted)]
    with given.ctx.progress(f"{kind}: fine-tuning and sampling", 1) as advance:
        made = propose(kind, generators, given.ctx.directory / "models", given.round_, given.seed,
                       given.structures, formulas, given.space.max_atoms, own)
        advance(1)
    return Proposals(kind, settings.max_candidates, made.candidates, made.rejected, made.samples, made.training)


def _external(given: GeneratorInputs) -> list[Proposals]:
    """Each external command's round (`generate.external`), run into generated/rNNN/<name>/."""
    space, folder = given.space, given.ctx.directory / "generated" / f"r{given.round_:03d}"
    proposed = []
    for entry in given.ctx.config.generators.external:
        values = {"elements": ",".join(space.elements), "max_elements": str(space.max_elements),
                  "max_atoms": str(space.max_atoms), "budget": str(entry.max_candidates), "seed": str(given.seed),
                  "round": str(given.round_)}
        with given.ctx.progress(f"external generator {entry.name}", 1) as advance:
            result = run_external(entry.name, entry.command, entry.timeout_s, folder, values, space)
            advance(1)
        proposed.append(Proposals(entry.name, entry.max_candidates, result.candidates, result.rejected,
                                  samples=result.written, failure=result.failure))
    return proposed


#: The generators of the loop, in the order they run: each gives its `Proposals` (a list
#: for one with several instances, the external commands), or None when it is off. Add a
#: generator here (and its section in `config.Generators`).
GENERATORS: tuple[Callable[[GeneratorInputs], Proposals | list[Proposals] | None], ...] = (
    _substitution, _saps, _permutation, _random, _composition, _import, _llm, _flow, _external)


def proposals(ctx: StageContext, round_: int, marks: dict[str, str]) -> Iterator[Proposals]:
    """Each enabled generator's proposals; `marks` collects the store flags to set."""
    known, structures = ctx.known_structures()
    given = GeneratorInputs(ctx, ctx.space(), known, structures, ctx.config.seed * 1000 + round_, marks, round_)
    for generator in GENERATORS:
        proposed = generator(given)
        yield from [proposed] if isinstance(proposed, Proposals) else proposed or []


def _composition_scorer(ctx: StageContext) -> Callable[[list[str]], list[float | None]] | None:
    """Predicted distance to the hull of formulas, from the campaign's model when it is
    a composition model (GNoME's composition pipeline); None otherwise."""
    if ctx.config.model.kind != "composition":
        return None
    model, hull = ctx.model(), ctx.hull()

    def energy_above_hull(formulas: list[str]) -> list[float | None]:
        energies, _ = model.predict([placeholder_structure(f) for f in formulas])
        return [hull.e_hull_of(f, e * Composition(f).num_atoms) for f, e in zip(formulas, energies)]

    return energy_above_hull
