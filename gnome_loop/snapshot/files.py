"""A snapshot from a user's entries file: a monty-JSON list of computed entries.

Such files come from the Materials Project API (`mp_api` `get_entries`), pymatgen
`dumpfn`, or a previous campaign's export. Energies are taken as they are stored:
`entry.energy`, which already includes any corrections.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

from monty.json import MontyEncoder
from monty.serialization import loadfn
from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.snapshot import KnownPhase

#: Most offending ids named in an error message.
MAX_NAMED = 10


def _entry_id(entry: ComputedEntry) -> str:
    """The entry's own id, or a content hash of the entry when it has none."""
    if entry.entry_id:
        return str(entry.entry_id)
    text = json.dumps(entry.as_dict(), cls=MontyEncoder, sort_keys=True)
    return "entry-" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _named(ids: list[str]) -> str:
    more = f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else ""
    return ", ".join(ids[:MAX_NAMED]) + more


def _energy_scale(entries: list[ComputedEntry]) -> str:
    """The energy scale of a whole file.

    Simplest honest rule: a file in which any entry carries energy adjustments or a
    non-zero correction is taken to hold MP2020-corrected energies ("mp2020", what
    the Materials Project serves); otherwise its energies are "uncorrected". The
    campaign applies corrections itself when it needs them.
    """
    corrected = any(entry.energy_adjustments or entry.correction != 0 for entry in entries)
    return "mp2020" if corrected else "uncorrected"


def read_entries_list(path: str | Path) -> list:
    """The list a monty-JSON entries file (optionally .gz) holds; ValueError if unreadable or not a list."""
    try:
        entries = loadfn(path)
    except (ValueError, OSError, EOFError) as error:  # bad JSON, bad gzip, bad text
        raise ValueError(f"entries file {path} is not readable JSON: {error}") from None
    if not isinstance(entries, list):
        raise ValueError(f"entries file {path} must hold a JSON list of entries, not a {type(entries).__name__}")
    return entries


def load_entries_file(
    path: str | Path, elements: list[str] | None = None, max_elements: int | None = None
) -> list[KnownPhase]:
    """Known phases from a JSON (or .json.gz) list of ComputedEntry / ComputedStructureEntry.

    Keeps the entries whose elements all lie in `elements` and number at most
    `max_elements` (None: no limit), in file order. Raises ValueError naming the
    problem for a missing or unreadable file, content that is not a list of
    entries, duplicated entry ids, or non-finite energies.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"entries file {path} does not exist")
    entries = read_entries_list(path)
    for index, entry in enumerate(entries):
        if not isinstance(entry, ComputedEntry):
            raise ValueError(
                f"entries file {path}: item {index} ({type(entry).__name__}) is not a "
                "ComputedEntry or ComputedStructureEntry (monty JSON with @module/@class)"
            )

    ids = [_entry_id(entry) for entry in entries]
    repeated = sorted(key for key, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(f"entries file {path}: {len(repeated)} entry ids appear more than once: {_named(repeated)}")
    non_finite = [key for key, entry in zip(ids, entries) if not math.isfinite(entry.energy)]
    if non_finite:
        raise ValueError(
            f"entries file {path}: {len(non_finite)} entries have a non-finite energy: {_named(non_finite)}"
        )

    scale = _energy_scale(entries)
    space = None if elements is None else set(elements)
    phases = []
    for key, entry in zip(ids, entries):
        symbols = {el.symbol for el in entry.composition.elements}
        if space is not None and not symbols <= space:
            continue
        if max_elements is not None and len(symbols) > max_elements:
            continue
        info = {name: entry.data[name] for name in ("material_id", "run_type") if name in entry.data}
        phases.append(
            KnownPhase(
                key,
                structure=getattr(entry, "structure", None),
                energy=float(entry.energy),
                source=f"file:{path.name}",
                scale=scale,
                info=info,
                composition=entry.composition,
            )
        )
    return phases
