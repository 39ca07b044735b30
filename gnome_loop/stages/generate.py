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

from pymatgen.core import Composition

from gnome_loop.generate.composition import enumerate_candidates, placeholder_structure
from gnome_loop.generate.imported import import_structures
from gnome_loop.generate.parents import pooled_parents
from gnome_loop.generate.random_search import random_search
from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import substitute
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.stages.screening import screen
from gnome_loop.store import Store, candidate_row
from gnome_loop.structures import Candidate, validate_structure


class Proposals(NamedTuple):
    """One generator's output in a round: its candidates (best first), the most it may
    add (`max_candidates`), and the rejects it counted itself."""

    generator: str
    cap: int
    candidates: Iterable[Candidate]
    rejected: Counter


def generate(ctx: StageContext, round_: int) -> Decision:
    """Run the generators and keep each one's valid new candidates, up to its cap."""
    funnel = screen(ctx, round_) if ctx.config.screening.enabled else None
    space = ctx.space()
    proposed = ctx.store.candidate_ids()
    rows, generated, rejected = [], Counter(), Counter()
    by_generator: dict[str, Counter] = {}
    marks: dict[str, str] = {}
    for name, cap, candidates, own_rejects in proposals(ctx, round_, marks):
        kept = 0
        counts = by_generator.setdefault(name, Counter())
        counts.update(own_rejects)
        for candidate in candidates:
            if kept >= cap:
                break
            if candidate.id in proposed:
                continue
            proposed.add(candidate.id)
            generated[name] += 1
            reason = validate_structure(candidate.structure, space.elements, space.max_atoms, space.max_elements)
            if reason:
                counts[reason.split(":")[0]] += 1
                continue
            kept += 1
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
            **({"funnel": funnel} if funnel is not None else {})})
        store.log("generate", f"round {round_}: {added} candidates, {sum(rejected.values())} rejected")

    return Decision(record)


def proposals(ctx: StageContext, round_: int, marks: dict[str, str]) -> Iterator[Proposals]:
    """Each enabled generator's proposals. An import file's rejects count in the first
    round that reads it; `marks` collects the store flags that say so."""
    space, generators = ctx.space(), ctx.config.generators
    known, structures = ctx.known_structures()

    screening = ctx.config.screening.enabled  # substitution and SAPS then run in shards (`screen`)
    settings, rejects = generators.substitution, Counter()
    if settings.enabled and not screening:
        yield Proposals("substitution", settings.max_candidates, substitute(
            pooled_parents(structures, space, [settings], images=False), space.elements, known,
            threshold=settings.threshold, alpha=settings.alpha, max_elements=space.max_elements,
            max_atoms=space.max_atoms, charge_balanced=settings.charge_balanced, rejected=rejects), rejects)
    settings, rejects = generators.saps, Counter()
    if settings.enabled and not screening:
        yield Proposals("saps", settings.max_candidates, saps(
            pooled_parents(structures, space, [settings], images=True), space.elements, known,
            threshold=settings.threshold, alpha=settings.alpha, max_elements=space.max_elements,
            max_atoms=space.max_atoms, max_per_parent=settings.max_per_parent, supercell=settings.supercell,
            charge_balanced=settings.charge_balanced, rejected=rejects), rejects)
    seed = ctx.config.seed * 1000 + round_  # a new draw every round, the same on a re-run
    settings = generators.random
    if settings.enabled and settings.compositions:
        yield Proposals("random", settings.max_candidates, random_search(
            settings.compositions, settings.per_composition, space.elements, space.max_atoms, seed=seed,
            time_limit=settings.time_limit), Counter())
    settings = generators.composition
    if settings.enabled:
        yield Proposals("composition", settings.max_candidates, enumerate_candidates(
            space.elements, known, settings.n_compositions, settings.per_composition,
            max_elements=space.max_elements, max_atoms=space.max_atoms,
            model_predict=_composition_scorer(ctx), seed=seed, time_limit=settings.time_limit), Counter())
    accepted: list[Candidate] = []
    import_rejects: Counter = Counter()
    for path in generators.imported.paths:
        report = import_structures(path, space.elements, space.max_atoms, space.max_elements)
        accepted += report.accepted
        key = f"imported:{Path(path).resolve()}"
        if ctx.store.meta(key) is None:
            marks[key] = json.dumps(report.to_json())
            import_rejects.update(report.rejected)
    if generators.imported.paths:
        yield Proposals("import", generators.imported.max_candidates, accepted, import_rejects)


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
