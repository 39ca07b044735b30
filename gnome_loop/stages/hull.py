"""The hull stage: E_hull of every entry against the updated hull, and the stable
set (docs/architecture.md, step 6). At the end of round 0 it checks that every
element of the space has a terminal.
"""

from __future__ import annotations

import json

from pymatgen.core import Composition

from gnome_loop.hull import STABLE_TOL, Hull, chemsys_of, e_above_hull_many
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.store import Store


def hull(ctx: StageContext, round_: int) -> Decision:
    """Judge every entry, and the round-0 parents, against the hull."""
    current = ctx.hull()
    dropped = _missing_terminals(ctx, current) if round_ == 0 else []
    e_hulls = current.all_e_above_hull()
    parents = e_above_hull_many(ctx.hull_entries(parents=True), current)  # judged alone, not hull phases
    e_hulls.update((r.entry_id, r.e_above_hull) for r in parents)
    values = [(key, e, e is not None and e <= STABLE_TOL) for key, e in e_hulls.items()]

    def record(store: Store) -> None:
        store.set_hull(values)
        if dropped:
            store.set_meta("dropped_elements", json.dumps(dropped))
            store.log("terminals-dropped", f"no terminal for {', '.join(dropped)} after round 0: "
                      "the campaign goes on without them (chemical_space.drop_missing_terminals)")

    return Decision(record)


def _missing_terminals(ctx: StageContext, current: Hull) -> list[str]:
    """The elements of the space without a terminal in the hull once round 0's jobs are
    all known: none, or those the config lets the campaign drop. Otherwise ValueError
    naming each element, why its structures failed, and what to do.

    A terminal is any elemental entry of the hull: an evaluated structure, or an
    energy-only reference entry of the snapshot."""
    space = ctx.config.chemical_space
    missing = current.missing_elements(space.elements)
    if not missing or (space.drop_missing_terminals and len(missing) < len(space.elements)):
        return missing
    failures: dict[str, list[str]] = {}
    for job in ctx.store.jobs(0, states=["failed"]):
        elements = chemsys_of(Composition(ctx.store.candidate(job.candidate_id)["reduced_formula"]))
        if len(elements) == 1:
            failures.setdefault(next(iter(elements)), []).append(f"{job.candidate_id}: {job.error}")
    why = "; ".join(f"{el}: " + (f"all {len(failures[el])} of its structures failed ({'; '.join(failures[el])})"
                                 if el in failures else "the snapshot holds no structure or entry of it")
                    for el in missing)
    them = "it" if len(missing) == 1 else "them"
    remedy = (f"Give a snapshot file with entries of {', '.join(missing)} on the oracle's energy scale "
              "(snapshot: {source: file, path: ...}) in a new campaign")
    if len(missing) < len(space.elements):
        remedy += (f", or set chemical_space.drop_missing_terminals: true in {ctx.directory / 'config.yaml'} and run "
                   f"again to go on without {them}")
    raise ValueError(f"round 0 ended without a terminal (an elemental entry) for {', '.join(missing)}, so no "
                     f"compound with {them} could get an E_hull. {why}. {remedy}")
