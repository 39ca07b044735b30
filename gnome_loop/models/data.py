"""Structures and energies from files, for using a model without a campaign.

`read_structures` reads the structures to predict for from a CIF file, a folder or
zip of CIFs, a CSV with a `cif` column, an extxyz file or a monty-JSON entries file;
unreadable items are skipped and counted by reason. `read_labelled` reads training
data (structures with a target value) from a CSV, an entries file or an extxyz file
and fails on any unreadable item. `predict_rows` predicts for many structures at once
and turns the ones the model refuses into a row with the reason instead of a crash.
"""

from __future__ import annotations

import csv
import gzip
import math
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from gnome_loop.models.base import EnergyModel, predict_each

SUPPORTED = ("a .cif file, a folder or .zip of CIFs, a .csv(.gz) with a 'cif' column, an .extxyz file, "
             "or a monty-JSON entries file (.json, .json.gz)")
#: The target computed from the energy itself (entries: corrected energy; extxyz: calculator energy).
ENERGY_PER_ATOM = "energy_per_atom"
#: Structures per model call in `predict_rows` (`predict_each` sets refused ones aside).
CHUNK = 256

#: (id, structure or why it cannot be used, target value or None)
Item = tuple[str, Structure | str, float | None]


def read_structures(path: str | Path) -> tuple[list[tuple[str, Structure]], dict[str, int]]:
    """(id, structure) pairs from `path` and the number of skipped items by reason.

    Ids are file names without extension (CIFs), the `material_id` or `id` column or
    else the row number (CSV), `info["id"]` or else the frame number (extxyz) and the
    entry ids (entries). Raises ValueError for a file of unknown kind.
    """
    structures, skipped = [], Counter()
    for key, structure, _ in _items(Path(path), target=None):
        if isinstance(structure, str):
            skipped[structure] += 1
        else:
            structures.append((key, structure))
    return structures, dict(skipped)


def read_labelled(path: str | Path, target: str) -> tuple[list[str], list[Structure], np.ndarray]:
    """Ids, structures and `target` values for training, from a CSV with a `cif` column
    and a `target` column, an entries file or an extxyz file.

    For entries and extxyz the target is looked up in `entry.data` / `atoms.info`;
    "energy_per_atom" is the entry's (corrected) energy or the calculator energy per
    atom. Raises ValueError for a missing target (naming what is available), an
    unreadable structure or a non-finite target.
    """
    path = Path(path)
    if _kind(path) not in ("csv", "extxyz", "entries"):
        raise ValueError(f"{path}: training data needs energies: use a .csv(.gz) with a 'cif' column and a "
                         "target column, an .extxyz file or a monty-JSON entries file")
    ids, structures, values, bad = [], [], [], []
    for key, structure, value in _items(path, target):
        if isinstance(structure, str):
            bad.append(f"{key} ({structure})")
        elif not math.isfinite(value):
            bad.append(f"{key} ({target} = {value})")
        else:
            ids.append(key)
            structures.append(structure)
            values.append(value)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{path}: {len(bad)} items are unusable for training: {', '.join(bad[:5])}{more}")
    if not structures:
        raise ValueError(f"{path} holds no structures")
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


# --- file kinds ----------------------------------------------------------------------------


def _kind(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    for kind, endings in (("cif", (".cif",)), ("zip", (".zip",)), ("csv", (".csv", ".csv.gz")),
                          ("extxyz", (".extxyz", ".xyz")), ("entries", (".json", ".json.gz"))):
        if name.endswith(endings):
            return kind
    raise ValueError(f"{path}: unknown file type; supported: {SUPPORTED}")


def _items(path: Path, target: str | None) -> Iterator[Item]:
    kind = _kind(path)
    if kind in ("cif", "folder", "zip"):
        for key, text in _cif_texts(path, kind):
            yield key, _parse_cif(text) if text is not None else "not a CIF file", None
    elif kind == "csv":
        yield from _csv_items(path, target)
    elif kind == "extxyz":
        yield from _extxyz_items(path, target)
    else:
        yield from _entry_items(path, target)


def _cif_texts(path: Path, kind: str) -> Iterator[tuple[str, str | None]]:
    """(id, CIF text) from a file, folder or zip; text None for a file that is not a CIF."""
    if kind == "cif":
        yield path.stem, path.read_text(errors="replace")
    elif kind == "folder":
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            yield file.stem, file.read_text(errors="replace") if file.suffix.lower() == ".cif" else None
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                for member in sorted(m for m in archive.namelist() if not m.endswith("/")):
                    is_cif = member.lower().endswith(".cif")
                    text = archive.read(member).decode(errors="replace") if is_cif else None
                    yield Path(member).stem, text
        except zipfile.BadZipFile as error:
            raise ValueError(f"{path} is not a readable zip file: {error}") from None


def _parse_cif(text: str) -> Structure | str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(text, fmt="cif")
    except Exception:  # pymatgen's CIF parser raises many kinds of errors on bad text
        return "unparsable CIF"
    return _checked(structure)


def _checked(structure: Structure) -> Structure | str:
    """The structure, or why it is unusable as input."""
    if len(structure) == 0:
        return "empty structure"
    if not (np.all(np.isfinite(structure.cart_coords)) and np.all(np.isfinite(structure.lattice.matrix))):
        return "non-finite coordinates"
    if not structure.volume > 1e-6:
        return "zero-volume cell"
    return structure


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _missing_target(path: Path, target: str, available) -> ValueError:
    return ValueError(f"{path}: no target {target!r}; available: {', '.join(sorted(available)) or 'none'}")


def _csv_items(path: Path, target: str | None) -> Iterator[Item]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable CSV file: {error}") from None
    columns = list(rows[0]) if rows else []
    if "cif" not in columns:
        raise ValueError(f"{path} has no 'cif' column; columns: {', '.join(columns) or 'none'}")
    if target is not None and target not in columns:
        raise _missing_target(path, target, columns)
    id_column = next((c for c in ("material_id", "id") if c in columns), None)
    for number, row in enumerate(rows):
        key = row[id_column] if id_column else str(number)
        yield key, _parse_cif(row["cif"] or ""), None if target is None else _number(row[target])


def _extxyz_items(path: Path, target: str | None) -> Iterator[Item]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as error:  # ase raises many kinds of errors on bad text
        raise ValueError(f"{path} is not a readable extxyz file: {error}") from None
    if target not in (None, ENERGY_PER_ATOM) and not any(target in atoms.info for atoms in frames):
        raise _missing_target(path, target, {ENERGY_PER_ATOM, *(k for atoms in frames for k in atoms.info)})
    for number, atoms in enumerate(frames):
        key = str(atoms.info.get("id", number))
        if not all(atoms.pbc) or atoms.cell.rank < 3:
            yield key, "no periodic cell", None
            continue
        value = None
        if target == ENERGY_PER_ATOM:
            value = atoms.get_potential_energy() / len(atoms) if atoms.calc is not None else math.nan
        elif target is not None:
            value = _number(atoms.info.get(target))
        yield key, _checked(AseAtomsAdaptor.get_structure(atoms)), value


def _entry_items(path: Path, target: str | None) -> Iterator[Item]:
    from gnome_loop.snapshot.files import read_entries_list

    entries = read_entries_list(path)
    data = [getattr(entry, "data", {}) for entry in entries]
    if target not in (None, ENERGY_PER_ATOM) and not any(target in keys for keys in data):
        raise _missing_target(path, target, {ENERGY_PER_ATOM, *(key for keys in data for key in keys)})
    for number, entry in enumerate(entries):
        key = str(getattr(entry, "entry_id", None) or number)
        if not isinstance(entry, ComputedStructureEntry):
            yield key, "not a ComputedStructureEntry", None
            continue
        value = None
        if target == ENERGY_PER_ATOM:
            value = entry.energy_per_atom
        elif target is not None:
            value = _number(entry.data.get(target))
        yield key, _checked(entry.structure), value
