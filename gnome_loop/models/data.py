"""Structures and energies from files, for using a model without a campaign.

Files are read as imports and file snapshots read them (`generate.imported`: its
formats, containers and reject reasons), so every command agrees on what a file holds.
`read_structures` reads the structures to predict for; entries that give no usable
structure, and files that hold none, are skipped and counted by reason. `read_labelled`
reads training data (structures with a target value) from a CSV, extxyz or JSON
entries file and fails on any unusable entry. `predict_rows` predicts for many
structures at once and turns the ones the model refuses into a row with the reason
instead of a crash.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple

import numpy as np
from monty.json import MontyDecoder
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from gnome_loop.generate.imported import (SUPPORTED, RejectedEntry, SkippedFile, Source, file_format, iter_sources,
                                          parse_entry, row_id)
from gnome_loop.models.base import EnergyModel, predict_each
from gnome_loop.structures import Reject, unusable

#: The target computed from the energy itself (entries: corrected energy; extxyz: calculator energy).
ENERGY_PER_ATOM = "energy_per_atom"
#: The file formats that carry values to train on.
LABELLED = ("csv", "extxyz", "json")
#: Structures per model call in `predict_rows` (`predict_each` sets refused ones aside).
CHUNK = 256


class Item(NamedTuple):
    """One entry of a file: its id, the file (or archive member) it is in, its structure
    or why it is unusable, and the values stored beside it."""

    id: str
    file: str
    structure: Structure | Reject
    values: dict


def read_structures(path: str | Path) -> tuple[list[tuple[str, Structure]], dict[str, int]]:
    """(id, structure) pairs from `path` and the number of skipped entries and files by reason.

    `path` is anything the importer reads (`SUPPORTED`). An id is the entry's own id
    where it has one (a CSV row's id column, an extxyz frame's `id`, a computed entry's
    `entry_id`), else its file's name without extension when the entry is a whole file,
    else its position among the entries read (the row, frame or item number of a
    single file). Pairs come file by file, files and archive members in natural name
    order (so a zip reads like its folder), entries of a file in file order. Raises
    ValueError for a file of unknown type.
    """
    path = Path(path)
    _format(path)  # a file of unknown type is an error, not a skip
    skipped_files: list[SkippedFile] = []
    items = sorted(_items(path, skipped_files), key=lambda item: _natural(item.file))
    skipped = Counter(item.structure.category for item in items if isinstance(item.structure, Reject))
    skipped.update(skipped_file.why for skipped_file in skipped_files)
    return [(item.id, item.structure) for item in items if not isinstance(item.structure, Reject)], dict(skipped)


def read_labelled(path: str | Path, target: str) -> tuple[list[str], list[Structure], np.ndarray]:
    """Ids, structures and `target` values for training, from a CSV with a `cif` column
    and a `target` column, an extxyz file or a JSON file of computed entries.

    For extxyz and entries the target is looked up in `atoms.info` / `entry.data`;
    "energy_per_atom" is the calculator energy per atom or the entry's (corrected)
    energy per atom. Ids are those of `read_structures`, in file order. Raises
    ValueError for a missing target (naming what is available), an unusable entry or
    a non-finite target.
    """
    path = Path(path)
    if _format(path) not in LABELLED:
        raise ValueError(f"{path}: training data needs energies: use a .csv(.gz) with a 'cif' column and a "
                         "target column, an .extxyz file or a JSON file of computed entries")
    skipped_files: list[SkippedFile] = []
    items = list(_items(path, skipped_files))
    if not items:
        raise ValueError(f"{path} holds no structures" + "".join(f"; {line}" for line in skipped_files))
    if not any(target in item.values for item in items):
        available = sorted({key for item in items for key in item.values})
        raise ValueError(f"{path}: no target {target!r}; available: {', '.join(available) or 'none'}")
    ids, structures, values, bad = [], [], [], []
    for item in items:
        value = _number(item.values.get(target))
        if isinstance(item.structure, Reject):
            bad.append(f"{item.id} ({item.structure})")
        elif not math.isfinite(value):
            bad.append(f"{item.id} ({target} = {value})")
        else:
            ids.append(item.id)
            structures.append(item.structure)
            values.append(value)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{path}: {len(bad)} items are unusable for training: {', '.join(bad[:5])}{more}")
    return ids, structures, np.array(values, dtype=float)


def predict_rows(model: EnergyModel, items: list[tuple[str, Structure]]) -> list[dict]:
    """One row per (id, structure): id, formula, energy_per_atom, uncertainty, error.

    A structure the model refuses (it raises ValueError) or predicts as non-finite gets
    None for energy and uncertainty and the reason in `error`; otherwise `error` is "".
    """
    structures = [structure for _, structure in items]
    results = []
    for start in range(0, len(structures), CHUNK):
        results.extend(predict_each(model, structures[start:start + CHUNK]))
    rows = []
    for (key, structure), result in zip(items, results):
        row = {"id": key, "formula": structure.composition.reduced_formula, "energy_per_atom": None,
               "uncertainty": None, "error": ""}
        if isinstance(result, str):
            row["error"] = result
        else:
            row["energy_per_atom"], row["uncertainty"] = result
        rows.append(row)
    return rows


# --- entries -------------------------------------------------------------------------------


def _format(path: Path) -> str | None:
    """The format of the file `path` (`file_format`), None for a folder; raises for a
    missing path or a file of unknown type."""
    if path.is_dir():
        return None
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    fmt = file_format(path.name)
    if fmt is None:
        raise ValueError(f"{path}: unknown file type; supported: {SUPPORTED}")
    return fmt


def _items(path: Path, skipped_files: list[SkippedFile]) -> Iterator[Item]:
    """Every entry under `path`, parsed and checked as an import does (`unusable` instead of
    the campaign's rules: a model judges the rest); files without entries go to `skipped_files`."""
    for number, entry in enumerate(iter_sources(path, skipped_files)):
        container, _, part = entry.id.rpartition(":")
        whole_file = file_format(part) is not None
        try:
            structure = parse_entry(entry.text, entry.fmt)
        except RejectedEntry as error:
            structure, reason = None, Reject(error.category, error.detail)
        else:
            reason = unusable(structure)
        own_id, values = _labels(entry, structure)
        name = own_id or (_stem(part) if whole_file else str(number))
        yield Item(name, entry.id if whole_file else container, reason or structure, values)


def _labels(entry: Source, structure: Structure | None) -> tuple[str, dict]:
    """The entry's own id ("" where it has none) and the values stored beside its structure:
    a CSV row's cells, an extxyz frame's info and energy, a computed entry's data and energy."""
    if entry.row is not None:
        return row_id(entry.row), entry.row
    if entry.fmt == "extxyz" and structure is not None:
        calc = getattr(structure, "calc", None)  # pymatgen keeps the frame's calculator and info
        energy = calc.results.get("energy", math.nan) if calc is not None else math.nan
        info = structure.properties
        return str(info.get("id", "")), {**info, ENERGY_PER_ATOM: energy / len(structure)}
    if entry.fmt == "json":
        computed = _computed_entry(entry.text)
        if computed is not None:
            return str(computed.entry_id or ""), {**computed.data, ENERGY_PER_ATOM: computed.energy_per_atom}
    return "", {}


def _computed_entry(text: str) -> ComputedStructureEntry | None:
    """The computed entry a JSON entry holds (monty JSON), None for anything else."""
    try:
        decoded = MontyDecoder().process_decoded(json.loads(text))
    except Exception:  # a malformed entry is no entry: its structure alone is read
        return None
    return decoded if isinstance(decoded, ComputedStructureEntry) else None


def _stem(name: str) -> str:
    """A file name without its folders and extension (and without ``.gz``)."""
    name = PurePosixPath(name).name
    return PurePosixPath(name[:-3] if name.lower().endswith(".gz") else name).stem


def _natural(text: str) -> list:
    """`text` as a sort key that compares runs of digits as numbers (x2 before x10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _number(text: object) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
