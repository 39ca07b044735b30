"""Snapshots from a user's files.

- A monty-JSON list of computed entries (`load_entries_file`): from the Materials
  Project API, pymatgen `dumpfn`, or a previous campaign's export. Energies are
  taken as stored (`entry.energy`, corrections included) unless MP2020 is applied.
- A CSV table of compositions and corrected total energies (`load_energy_table`),
  like GNoME's and MP's summary tables: hull references without structures.
- Extended XYZ frames with energies (`load_extxyz_entries`).
- A folder (or zip) of CIFs without energies (`load_cif_folder`): known structures
  the oracle evaluates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from pathlib import Path

import ase.io
import pandas as pd
from monty.json import MontyEncoder
from monty.serialization import loadfn
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.compatibility import mp2020_correct
from gnome_loop.generate.imported import import_structures
from gnome_loop.hull import named_ids
from gnome_loop.snapshot.phases import KnownPhase
from gnome_loop.structures import ChemicalSpace, is_known_element, validate_structure

log = logging.getLogger(__name__)

def _entry_id(entry: ComputedEntry) -> str:
    """The entry's own id, or a content hash of the entry when it has none."""
    if entry.entry_id:
        return str(entry.entry_id)
    text = json.dumps(entry.as_dict(), cls=MontyEncoder, sort_keys=True)
    return "entry-" + hashlib.sha1(text.encode()).hexdigest()[:16]


def _energy_scale(entries: list[ComputedEntry]) -> str:
    """The energy scale of a whole file.

    Simplest honest rule: a file in which any entry carries energy adjustments or a
    non-zero correction is taken to hold MP2020-corrected energies ("mp2020", what
    the Materials Project serves); otherwise its energies are "uncorrected". The
    campaign applies corrections itself when it needs them.
    """
    corrected = any(entry.energy_adjustments or entry.correction != 0 for entry in entries)
    return "mp2020" if corrected else "uncorrected"


def _corrected(source: str, ids: list[str], entries: list, keep_unknown: bool) -> tuple[list[str], list]:
    """MP2020 corrections applied afresh (as pymatgen's `process_entries` does) to every entry
    that records its run type and POTCARs; the rest are kept as stored in a corrected file,
    left out of an uncorrected one. Every entry left out is logged with the reason."""
    kept_ids, kept = [], []
    for key, entry in zip(ids, entries):
        parameters = entry.parameters
        if parameters.get("run_type") and (parameters.get("potcar_spec") or parameters.get("potcar_symbols")):
            corrected, reason = mp2020_correct(entry)
        else:
            corrected, reason = (entry, None) if keep_unknown else (None, "no run type or POTCARs recorded: "
                                                                    "cannot apply MP2020 corrections")
        if corrected is None:
            log.warning("snapshot %s: entry %s left out: %s", source, key, reason)
            continue
        kept_ids.append(key)
        kept.append(corrected)
    return kept_ids, kept


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
    path: str | Path, space: ChemicalSpace = ChemicalSpace(), correct: bool = False
) -> list[KnownPhase]:
    """Known phases from a JSON (or .json.gz) list of ComputedEntry / ComputedStructureEntry.

    Keeps the entries whose compositions lie in `space` (`ChemicalSpace.holds`), in file
    order. With `correct` (the campaign's oracle is VASP with MP settings), MP2020 corrections are applied afresh with
    this pymatgen, exactly as to the oracle's own results, so that both share one
    scale; entries MP2020 rejects are left out and logged with the reason. Raises
    ValueError naming the problem for a missing or unreadable file, content that
    is not a list of entries, duplicated entry ids, or non-finite energies.
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

    return phases_of_entries(entries, f"file:{path.name}", space, correct)


def phases_of_entries(entries: list[ComputedEntry], source: str, space: ChemicalSpace = ChemicalSpace(),
                      correct: bool = False) -> list[KnownPhase]:
    """Known phases from computed entries (see `load_entries_file`); `source` labels where they came from."""
    ids = [_entry_id(entry) for entry in entries]
    repeated = sorted(key for key, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(f"{source}: {len(repeated)} entry ids appear more than once: {named_ids(repeated)}")
    non_finite = [key for key, entry in zip(ids, entries) if not math.isfinite(entry.energy)]
    if non_finite:
        raise ValueError(f"{source}: {len(non_finite)} entries have a non-finite energy: {named_ids(non_finite)}")

    scale = _energy_scale(entries)
    if correct:
        ids, entries = _corrected(source, ids, entries, keep_unknown=scale == "mp2020")
        scale = "mp2020"
    phases = []
    for key, entry in zip(ids, entries):
        if not space.holds(el.symbol for el in entry.composition.elements):
            continue
        info = {name: entry.data[name] for name in ("material_id", "run_type") if name in entry.data}
        phases.append(KnownPhase(key, structure=getattr(entry, "structure", None), energy=float(entry.energy),
                                 source=source, scale=scale, info=info, composition=entry.composition))
    return phases


#: Column names accepted for an energy table, first match wins (GNoME's and MP's release names first).
TABLE_COLUMNS = {
    "composition": ("Composition", "composition", "formula", "Reduced Formula"),
    "energy": ("Corrected Energy", "corrected_energy", "energy", "Energy"),
    "id": ("MaterialId", "material_id", "entry_id", "id"),
}


def read_energy_table(path: str | Path) -> tuple[list[ComputedEntry], Counter]:
    """Entries from a CSV(.gz) of compositions and corrected total energies (eV), and the
    rows skipped, counted by reason.

    The format of GNoME's and MP's summary tables (`Composition`, `Corrected Energy`,
    `MaterialId`; the other names of `TABLE_COLUMNS` work too). A row whose
    composition is unreadable or holds an unknown element, or whose energy is
    missing or not finite, is skipped; a row without an id is named `row-N`. A
    table without a composition or energy column is a ValueError. Repeated ids are
    kept (a `Hull` or the snapshot refuses them by name). Beware GNoME's release of MP's
    summary: its "Corrected Energy" is MP's uncorrected energy (the shipped table,
    `gnome_loop/data/mp_stable_phases.csv.gz`, is that release with MP2020's corrections).
    """
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {key: next((name for name in names if name in frame.columns), None)
               for key, names in TABLE_COLUMNS.items()}
    if columns["composition"] is None or columns["energy"] is None:
        raise ValueError(f"energy table {path} needs a composition column ({', '.join(TABLE_COLUMNS['composition'])})"
                         f" and an energy column ({', '.join(TABLE_COLUMNS['energy'])}); it has {list(frame.columns)}")
    entries, skipped = [], Counter()
    for index, row in enumerate(frame.to_dict("records")):
        try:
            composition = Composition(row[columns["composition"]])
            if not composition.num_atoms > 0:
                raise ValueError("empty")
        except Exception:  # pymatgen raises several kinds for a bad formula
            skipped["bad-composition"] += 1
            continue
        if not all(is_known_element(str(el)) for el in composition.elements):  # pymatgen reads 'Xx' as a dummy
            skipped["unknown-element"] += 1
            continue
        try:
            energy = float(row[columns["energy"]])
        except ValueError:
            energy = math.nan
        if not math.isfinite(energy):
            skipped["bad-energy"] += 1
            continue
        key = (row[columns["id"]].strip() if columns["id"] else "") or f"row-{index}"
        entries.append(ComputedEntry(composition, energy, entry_id=key))
    return entries, skipped


def load_energy_table(
    path: str | Path, space: ChemicalSpace, scale: str
) -> tuple[list[KnownPhase], Counter]:
    """Hull references (no structures: never substitution parents) from an energy table
    (`read_energy_table`) on the energy scale `scale`; repeated ids are a ValueError."""
    path = Path(path)
    entries, skipped = read_energy_table(path)
    repeated = sorted(key for key, count in Counter(e.entry_id for e in entries).items() if count > 1)
    if repeated:
        raise ValueError(f"energy table {path}: {len(repeated)} ids appear more than once: {named_ids(repeated)}")
    phases = []
    for entry in entries:
        if not space.holds(el.symbol for el in entry.composition.elements):
            continue
        phases.append(KnownPhase(entry.entry_id, structure=None, energy=entry.energy, source=f"file:{path.name}",
                                 scale=scale, composition=entry.composition))
    return phases, skipped


def load_extxyz_entries(
    path: str | Path, space: ChemicalSpace, scale: str
) -> tuple[list[KnownPhase], Counter]:
    """Known phases with structures and energies from extxyz frames (`energy` in the frame's info
    or its calculator: the total energy of the cell). Frames without a finite energy or a valid
    structure are skipped and counted by reason."""
    path = Path(path)
    skipped: Counter = Counter()
    phases = []
    try:
        frames = ase.io.read(path, ":", format="extxyz")
    except Exception as error:  # ase raises many kinds on a malformed file
        raise ValueError(f"extxyz file {path} cannot be read: {type(error).__name__}: {error}") from None
    for index, atoms in enumerate(frames):
        energy = atoms.info.get("energy")
        if energy is None and atoms.calc is not None:
            energy = atoms.calc.results.get("energy")
        try:
            energy = float(energy)
        except (TypeError, ValueError):
            energy = math.nan
        if not math.isfinite(energy):
            skipped["no-energy"] += 1
            continue
        structure = AseAtomsAdaptor.get_structure(atoms)
        problem = validate_structure(structure, space)
        if problem is not None:
            skipped[problem.category] += 1
            continue
        key = str(atoms.info.get("entry_id") or atoms.info.get("material_id") or f"frame-{index}")
        phases.append(KnownPhase(key, structure=structure, energy=energy, source=f"file:{path.name}", scale=scale))
    return phases, skipped


def load_cif_folder(
    path: str | Path, space: ChemicalSpace
) -> tuple[list[KnownPhase], Counter]:
    """Known structures without energies (substitution parents, evaluated by the oracle) from a
    folder or zip of CIFs (any format the importer reads); rejects are counted by reason."""
    report = import_structures(path, space, source=Path(path).name)
    phases = [KnownPhase(candidate.id, structure=candidate.structure, energy=None, source=f"file:{Path(path).name}",
                         scale=None, info={"source_id": candidate.info.get("source_id")})
              for candidate in report.accepted]
    return phases, Counter(report.rejected)


def read_entries(path: str | Path) -> tuple[list[ComputedEntry], Counter]:
    """Computed entries from any energy file this module reads, and the rows skipped by reason:
    an entries JSON (a list, or an MP snapshot's {"entries": [...]}), an energy table
    (CSV, CSV.gz) or extxyz frames with energies."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if name.endswith((".csv", ".csv.gz")):
        return read_energy_table(path)
    if name.endswith((".extxyz", ".xyz")):
        phases, skipped = load_extxyz_entries(path, ChemicalSpace(), scale="")
        return [ComputedStructureEntry(p.structure, p.energy, entry_id=p.id) for p in phases], skipped
    try:
        data = loadfn(path)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from None
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, ComputedEntry) for e in entries):
        raise ValueError(f"{path} must hold a list of ComputedEntry / ComputedStructureEntry (monty JSON)")
    return entries, Counter()
