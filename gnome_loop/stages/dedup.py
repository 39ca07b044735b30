"""The dedup stage: drop the round's candidates already known or already proposed,
bucketed by (reduced formula, space group) and matched only inside a bucket
(docs/architecture.md, step 2).
"""

from __future__ import annotations

import sqlite3

from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.store import Store
from gnome_loop.structures import find_duplicates, structure_from_json


def dedup(ctx: StageContext, round_: int) -> Decision:
    """Mark the round's duplicates of known phases, earlier candidates and each other."""
    store = ctx.store
    new = store.candidates(round_=round_, status="new")
    labels = {row["symmetry_label"] for row in new}
    known = ctx.known_phases(labels)
    known += [(c["id"], c["symmetry_label"], structure_from_json(c["structure"]))
              for c in store.candidates(status="new", labels=labels) if c["round"] < round_]
    # Which of two matching candidates survives does not depend on the order they were
    # generated in: screened ones (scored already) best predicted first, as inside a
    # shard, so that where shards are cut does not decide which of two kept duplicates
    # survives; then the rest in id order.
    items = [(c["id"], c["symmetry_label"], structure_from_json(c["structure"])) for c in sorted(new, key=_order)]
    duplicates = find_duplicates(items, known)

    def record(store: Store) -> None:
        store.mark_duplicates(duplicates)
        store.update_round_metrics(round_, {"unique": len(new) - len(duplicates)})

    return Decision(record)


def _order(row: sqlite3.Row) -> tuple:
    """Candidates scored while screening first, by predicted E_hull; then the others; ties by id."""
    scored = row["pred_ehull"] is not None
    return (not scored, row["pred_ehull"] if scored else 0.0, row["id"])
