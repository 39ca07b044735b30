"""Candidates from generative models: import what MatterGen, CrystaLLM, FlowLLM, CDVAE...
wrote to disk, and count what cannot be used.

Accepted inputs are a single file or a folder searched recursively:

* CIF files (``.cif``), including files with several ``data_`` blocks;
* zip archives of any of these (nested zips too);
* CSV tables (``.csv``, ``.csv.gz``) with a ``cif`` column; a ``material_id`` or
  ``id`` column, when present, names the row;
* extended XYZ (``.extxyz``, ``.xyz``), one entry per frame;
* POSCAR files (``POSCAR*``, ``CONTCAR*``, ``*.vasp``, ``*.poscar``);
* JSON (``.json``): a pymatgen ``Structure`` dict, an entry dict with a ``structure``,
  or a list / mapping of them.

Any of these may also be gzipped (``.gz``). Other files (READMEs, licences, CSV tables
without a ``cif`` column such as per-method energy summaries) are skipped and listed
in :attr:`ImportReport.skipped_files`; they are not entries.

Every entry is parsed and validated on its own, so a malformed one never stops the
import: it is counted under a reject category, the first word of its reason. The
categories are those of :func:`gnome_loop.structures.validate_structure` (empty,
disordered, non-finite, degenerate-cell, outside-space, too-many-elements,
too-many-atoms, volume, overlapping-atoms) plus ``unparseable`` (text no parser
understands: truncated, garbage, unreadable archive), ``unknown-element`` (a symbol
that is not a chemical element, e.g. ``Xx``) and ``duplicate`` (the same structure,
by :attr:`Candidate.id`, earlier in the same import).

Longer than 450 lines: it reads every structure-file format the project accepts,
one small reader each, so that the formats are read in one place.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import sys
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from pymatgen.core import Element, Structure

from gnome_loop.structures import Candidate, ChemicalSpace, is_known_element, validate_structure

log = logging.getLogger(__name__)

#: How many "source: reason" examples the report keeps per category.
MAX_EXAMPLES = 3
#: Nested archives deeper than this are not opened (guards against zip recursion).
MAX_ARCHIVE_DEPTH = 4
#: Occupancies summing above 1 by more than this are unphysical.
OCCUPANCY_TOLERANCE = 1e-3
#: CSV column holding the CIF text (case-insensitive).
CIF_COLUMNS = ("cif",)
#: CSV columns naming a row, first present wins (case-insensitive); else "row<i>".
ID_COLUMNS = ("material_id", "id", "structure_id", "name")

#: Categories of parse failures (validation adds those of `validate_structure`).
UNPARSEABLE = "unparseable"
UNKNOWN_ELEMENT = "unknown-element"
NON_FINITE = "non-finite"
OVERLAPPING = "overlapping-atoms"
DEGENERATE = "degenerate-cell"
DUPLICATE = "duplicate"

#: Why a file of another kind (a README, a licence) is skipped.
NOT_A_STRUCTURE_FILE = "not a structure file"
#: Pseudo-format of an entry standing for a container that could not be read.
UNREADABLE = "unreadable"
#: What `iter_sources` reads, in words (for messages).
SUPPORTED = ("CIF (.cif), extxyz (.extxyz, .xyz), POSCAR (POSCAR*, CONTCAR*, .vasp, .poscar), pymatgen JSON "
             "(.json: structures or computed entries), a CSV (.csv) with a 'cif' column, a .zip of any of these, "
             "or a folder of them; any file may be gzipped (.gz)")

_CIF_NUMERIC_KEYS = tuple(f"_cell_length_{x}" for x in "abc") + tuple(
    f"_cell_angle_{x}" for x in ("alpha", "beta", "gamma")
) + tuple(f"_atom_site_fract_{x}" for x in "xyz") + tuple(f"_atom_site_cartn_{x}" for x in "xyz")


class Source(NamedTuple):
    """One structure entry under a path: where it is (`id`), its format and text, and,
    for a row of a CSV table, the row's cells by column (what `gnome-loop train` learns)."""

    id: str
    fmt: str
    text: str
    row: dict[str, str] | None = None


class SkippedFile(str):
    """A file that holds no structure entries: the text "name: why", with its `why`."""

    why: str

    def __new__(cls, name: str, why: str) -> "SkippedFile":
        skipped = super().__new__(cls, f"{name}: {why}")
        skipped.why = why
        return skipped

    def __getnewargs__(self) -> tuple[str, str]:  # copies and pickles
        return self[:-len(self.why) - 2], self.why


class RejectedEntry(ValueError):
    """An entry that cannot become a candidate; ``category`` is the counted reject reason."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


@dataclass
class ImportReport:
    """What an import produced: the accepted candidates and the rejects by category.

    ``len(accepted) + sum(rejected.values()) == read`` always holds.
    """

    accepted: list[Candidate] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    read: int = 0
    #: Files that hold no structure entries ("path: why"), e.g. READMEs.
    skipped_files: list[SkippedFile] = field(default_factory=list)

    def reject(self, source_id: str, category: str, reason: str) -> None:
        """Count one rejected entry and keep its reason as an example."""
        self.rejected[category] += 1
        examples = self.examples.setdefault(category, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{source_id}: {reason}")

    def to_json(self) -> dict:
        """A JSON-ready summary: counts and examples, no structures."""
        return {
            "read": self.read,
            "accepted": len(self.accepted),
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "examples": {key: list(value) for key, value in sorted(self.examples.items())},
            "skipped_files": len(self.skipped_files),
            "skipped_examples": self.skipped_files[:MAX_EXAMPLES],
        }


# --------------------------------------------------------------------------- sources


def iter_sources(path: Path | str, skipped: list[SkippedFile] | None = None) -> Iterator[Source]:
    """Yield a :class:`Source` for every structure entry under `path`.

    `path` is a file (CIF, zip, CSV, extxyz, POSCAR, JSON, possibly gzipped) or a
    folder searched recursively. Ids name the entry inside its container:
    ``"file.zip:dir/member.cif"``, ``"file.csv:row17"`` (or ``"file.csv:<material_id>"``),
    ``"file.extxyz:frame3"``, ``"file.cif:block2"``; inside a folder they start with the
    path relative to it. Formats are ``cif``, ``extxyz``, ``poscar``, ``json``, or
    ``unreadable`` for a container that could not be opened (its text is the error;
    :func:`parse_entry` rejects it as unparseable). Entries come in file order, files
    of a folder sorted by path, members of a zip in archive order. Files holding no
    entries are appended to `skipped` as :class:`SkippedFile` (``"name: why"``).
    """
    path = Path(path)
    if skipped is None:
        skipped = []
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = file.relative_to(path)
            if any(part.startswith(".") or part == "__MACOSX" for part in relative.parts):
                continue
            yield from _iter_file(relative.as_posix(), file, skipped)
    elif path.is_file():
        yield from _iter_file(path.name, path, skipped)
    else:
        raise FileNotFoundError(f"no file or folder at {path}")


def _iter_file(label: str, file: Path, skipped: list[SkippedFile]) -> Iterator[Source]:
    if _kind(file.name) is None:
        skipped.append(SkippedFile(label, NOT_A_STRUCTURE_FILE))
        return
    try:
        data = file.read_bytes()
    except OSError as exc:
        yield Source(label, UNREADABLE, f"cannot read the file ({exc})")
        return
    yield from _iter_blob(label, file.name, data, skipped, depth=0)


def file_format(name: str) -> str | None:
    """The format a file name implies, through a ``.gz`` ending: ``cif``, ``extxyz``,
    ``csv``, ``zip``, ``json``, ``poscar``, or None for a file that holds no structures."""
    kind = _kind(name)
    return _kind(name[:-3]) if kind == "gz" else kind


def _kind(name: str) -> str | None:
    """The container or structure format a file name implies, None if none."""
    lower = name.rsplit("/", 1)[-1].lower()
    if lower.endswith(".gz"):
        return "gz" if _kind(lower[:-3]) is not None else None
    if lower.endswith(".cif") or lower.endswith(".mcif"):
        return "cif"
    if lower.endswith(".extxyz") or lower.endswith(".xyz"):
        return "extxyz"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".vasp") or lower.endswith(".poscar") or lower.startswith(("poscar", "contcar")):
        return "poscar"
    return None


def _iter_blob(label: str, name: str, data: bytes, skipped: list[SkippedFile], depth: int) -> Iterator[Source]:
    """Entries of one file's content; `name` (a base name) decides its format."""
    kind = _kind(name)
    if kind is None:
        skipped.append(SkippedFile(label, NOT_A_STRUCTURE_FILE))
    elif kind == "gz":
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            yield Source(label, UNREADABLE, f"corrupt gzip data ({exc})")
            return
        yield from _iter_blob(label, name[:-3], inner, skipped, depth)
    elif kind == "zip":
        yield from _iter_zip(label, data, skipped, depth)
    elif kind == "csv":
        yield from _iter_csv(label, _decode(data), skipped)
    elif kind == "cif":
        yield from _iter_cif_blocks(label, _decode(data))
    elif kind == "extxyz":
        yield from _iter_xyz_frames(label, _decode(data))
    elif kind == "json":
        yield from _iter_json(label, _decode(data), skipped)
    else:  # poscar
        yield Source(label, "poscar", _decode(data))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _iter_zip(label: str, data: bytes, skipped: list[SkippedFile], depth: int) -> Iterator[Source]:
    if depth >= MAX_ARCHIVE_DEPTH:
        skipped.append(SkippedFile(label, f"archive nested deeper than {MAX_ARCHIVE_DEPTH}"))
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        yield Source(label, UNREADABLE, f"corrupt zip archive ({exc})")
        return
    with archive:
        for info in members:
            member = info.filename
            parts = member.split("/")
            member_label = f"{label}:{member}"
            if any(part.startswith(".") or part == "__MACOSX" for part in parts):
                continue
            if _kind(parts[-1]) is None:
                skipped.append(SkippedFile(member_label, NOT_A_STRUCTURE_FILE))
                continue
            try:
                content = archive.read(info)
            except Exception as exc:  # bad CRC, truncated member, unsupported compression
                yield Source(member_label, UNREADABLE, f"cannot read the archive member ({exc})")
                continue
            yield from _iter_blob(member_label, parts[-1], content, skipped, depth + 1)


def _iter_csv(label: str, text: str, skipped: list[SkippedFile]) -> Iterator[Source]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a CIF can exceed the 128 kB default
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        skipped.append(SkippedFile(label, "empty table"))
        return
    except csv.Error as exc:
        yield Source(label, UNREADABLE, f"malformed CSV header ({exc})")
        return
    lowered = [column.strip().lower() for column in header]
    cif_col = next((header[lowered.index(name)] for name in CIF_COLUMNS if name in lowered), None)
    if cif_col is None:
        skipped.append(SkippedFile(label, f"no cif column (columns: {', '.join(header[:8])})"))
        return
    row_index = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a broken quote swallows the rest of the table
            yield Source(f"{label}:row{row_index}", UNREADABLE, f"malformed CSV from here on ({exc})")
            return
        if not cells:
            continue
        row = dict(zip(header, cells))
        yield Source(f"{label}:{row_id(row) or f'row{row_index}'}", "cif", row.get(cif_col, ""), row)
        row_index += 1


def row_id(row: dict[str, str]) -> str:
    """A CSV row's own name: the cell of its first id column (`ID_COLUMNS`, any case), "" if none."""
    cells = {column.strip().lower(): cell for column, cell in row.items()}
    return next((cells[name] for name in ID_COLUMNS if name in cells), "").strip()


def _iter_cif_blocks(label: str, text: str) -> Iterator[Source]:
    """One entry per ``data_`` block (one entry for a file with a single block)."""
    starts: list[int] = []
    lines = text.splitlines(keepends=True)
    in_text_field = False
    for number, line in enumerate(lines):
        if line.startswith(";"):
            in_text_field = not in_text_field
        elif not in_text_field and line.lstrip().lower().startswith("data_"):
            starts.append(number)
    if len(starts) <= 1:
        yield Source(label, "cif", text)
        return
    starts[0] = 0  # comments before the first block stay with it
    for index, (start, end) in enumerate(zip(starts, starts[1:] + [len(lines)])):
        yield Source(f"{label}:block{index}", "cif", "".join(lines[start:end]))


def _iter_xyz_frames(label: str, text: str) -> Iterator[Source]:
    """One entry per (extended) XYZ frame: an atom count, a comment line, count lines.

    Frames are cut from the text so that a broken frame is one reject, not the end
    of the file; a count line that is not a number makes the rest one bad entry.
    """
    lines = text.splitlines(keepends=True)
    position, frame = 0, 0
    while position < len(lines):
        if not lines[position].strip():
            position += 1
            continue
        try:
            count = int(lines[position].strip())
        except ValueError:
            count = -1
        if count < 0:
            yield Source(f"{label}:frame{frame}", "extxyz", "".join(lines[position:]))
            return
        yield Source(f"{label}:frame{frame}", "extxyz", "".join(lines[position:position + count + 2]))
        position += count + 2
        frame += 1


def _iter_json(label: str, text: str, skipped: list[SkippedFile]) -> Iterator[Source]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        yield Source(label, UNREADABLE, f"malformed JSON ({exc})")
        return
    if isinstance(data, dict) and not _looks_like_structure(data):
        items = [(f"{label}:{key}", value) for key, value in data.items() if isinstance(value, dict)]
    elif isinstance(data, list):
        items = [(f"{label}:item{index}", value) for index, value in enumerate(data)]
    else:
        items = [(label, data)]
    if not items:
        skipped.append(SkippedFile(label, "no structures in the JSON"))
    for item_label, item in items:
        yield Source(item_label, "json", json.dumps(item))


def _looks_like_structure(data: dict) -> bool:
    return "sites" in data or "structure" in data or data.get("@class") in ("Structure", "IStructure")


# --------------------------------------------------------------------------- parsing


def parse_entry(text: str, fmt: str) -> Structure:
    """Parse one entry's text (`fmt`: cif, extxyz, poscar or json) into a Structure.

    Raises :class:`RejectedEntry` (a ValueError) whose ``category`` says why the text
    gives no usable structure: ``unparseable``, ``unknown-element``, ``non-finite``,
    ``overlapping-atoms`` (two atoms on one site, which the CIF reader would merge) or
    ``degenerate-cell``. Parser warnings are captured, never printed. The structure
    is returned without oxidation states; everything else is left to
    :func:`gnome_loop.structures.validate_structure`.
    """
    if not text or not text.strip():
        raise RejectedEntry(UNPARSEABLE, "empty text")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if fmt == "cif":
                structure = _parse_cif(text)
            elif fmt in ("extxyz", "xyz"):
                structure = _parse_extxyz(text)
            elif fmt == "poscar":
                structure = _parse_poscar(text)
            elif fmt == "json":
                structure = _parse_json(text)
            elif fmt == UNREADABLE:
                raise RejectedEntry(UNPARSEABLE, text)
            else:
                raise RejectedEntry(UNPARSEABLE, f"unsupported format {fmt!r}")
            return _finish(structure)
        except RejectedEntry:
            raise
        except Exception as exc:  # any parser failure is a reject, never a crash
            raise RejectedEntry(*_classify_failure(exc, caught)) from exc


def _classify_failure(exc: Exception, caught: list[warnings.WarningMessage]) -> tuple[str, str]:
    """Reject category and detail for an exception raised by a parser."""
    message = _one_line(f"{type(exc).__name__}: {exc}")
    texts = [str(w.message) for w in caught]
    for text in [str(exc), *texts]:
        if "is not a valid Element" in text:
            return UNKNOWN_ELEMENT, _one_line(text)
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) \
            and re.fullmatch(r"[A-Z][a-z]{0,2}", exc.args[0]) and not is_known_element(exc.args[0]):
        return UNKNOWN_ELEMENT, f"{exc.args[0]!r} is not a chemical element"
    if "thickness" in message:
        return DEGENERATE, message
    if texts:
        message += f" (parser warning: {_one_line(texts[0])})"
    return UNPARSEABLE, message


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _parse_cif(text: str) -> Structure:
    from pymatgen.io.cif import CifParser

    try:
        parser = CifParser.from_str(text, check_cif=False)  # its composition check only warns
        structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception:
        _diagnose_cif(text)  # raises a specific reject when it finds one
        raise
    if not structures:
        raise RejectedEntry(UNPARSEABLE, "no structure in the CIF")
    # pymatgen guesses an element from odd symbols ("Nq" becomes N) and silently drops
    # sites whose symbol it cannot read at all ("?"): check the symbols it was given.
    cif_file = getattr(parser, "_cif", None)  # the tokenised file; private, so optional
    if cif_file is not None:
        for block in cif_file.data.values():
            _check_cif_symbols({key.lower(): value for key, value in block.data.items()})
    return structures[0]


def _as_list(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _check_cif_symbols(data: dict) -> None:
    """Reject a block whose atom sites do not all name a chemical element.

    A ``_atom_site_type_symbol`` must be an element symbol, optionally followed by a
    charge (``Fe3+``); without that column the label must start with one (``Fe1``).
    """
    if "_atom_site_type_symbol" in data:
        for symbol in _as_list(data["_atom_site_type_symbol"]):
            letters = re.match(r"[A-Za-z]*", str(symbol)).group()
            if not is_known_element(letters.title()):
                raise RejectedEntry(UNKNOWN_ELEMENT, f"atom type {symbol!r} is not a chemical element")
    else:
        for label in _as_list(data.get("_atom_site_label")):
            letters = re.match(r"[A-Za-z]*", str(label)).group()
            if not (is_known_element(letters[:2].title()) or is_known_element(letters[:1].upper())):
                raise RejectedEntry(UNKNOWN_ELEMENT, f"atom label {label!r} names no chemical element")


def _diagnose_cif(text: str) -> None:
    """Find why pymatgen could not build a structure from a CIF it tokenised.

    NaN or infinite numbers, symbols that are no element, and atoms of different
    sites on one position (pymatgen merges them into one site with occupancy > 1,
    then gives up) get their own category; anything else is left to the caller.
    """
    from pymatgen.io.cif import CifFile

    try:
        blocks = [{key.lower(): value for key, value in block.data.items()}
                  for block in CifFile.from_str(text).data.values()]
    except Exception:
        return
    for data in blocks:
        for key in _CIF_NUMERIC_KEYS:
            for value in _as_list(data.get(key)):
                number = _cif_float(value)
                if number is not None and not math.isfinite(number):
                    raise RejectedEntry(NON_FINITE, f"{key} is {value}")
        _check_cif_symbols(data)
        listed = [_cif_float(value) for value in _as_list(data.get("_atom_site_occupancy"))]
        if any(value is not None and value > 1 + OCCUPANCY_TOLERANCE for value in listed):
            raise RejectedEntry(UNPARSEABLE, "a listed site occupancy exceeds 1")
    if _has_coincident_atoms(text):
        raise RejectedEntry(OVERLAPPING, "atoms of different sites share one position")


def _has_coincident_atoms(text: str) -> bool:
    """True when the CIF parses once occupancy > 1 is allowed and some site has it."""
    from pymatgen.io.cif import CifParser

    try:
        structures = CifParser.from_str(text).parse_structures(primitive=False, check_occu=False, on_error="raise")
    except Exception:
        return False
    return any(site.species.num_atoms > 1 + OCCUPANCY_TOLERANCE for s in structures for site in s)


def _cif_float(value: object) -> float | None:
    """A CIF number (standard uncertainty in parentheses allowed), None if not a number."""
    if not isinstance(value, str):
        return None
    try:
        return float(re.sub(r"\(\d*\)$", "", value.strip()))
    except ValueError:
        return None


def _parse_extxyz(text: str) -> Structure:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = read(io.StringIO(text), format="extxyz", index=0)
    if len(atoms) == 0:
        raise RejectedEntry("empty", "the frame has no atoms")
    if atoms.cell.rank < 3:
        raise RejectedEntry(DEGENERATE, "the frame has no 3D periodic cell (Lattice=...)")
    return AseAtomsAdaptor.get_structure(atoms)


def _parse_poscar(text: str) -> Structure:
    from pymatgen.io.vasp import Poscar

    return Poscar.from_str(text, read_velocities=False).structure


def _parse_json(text: str) -> Structure:
    data = json.loads(text)
    if isinstance(data, dict) and "structure" in data and "sites" not in data:
        data = data["structure"]
    if isinstance(data, str):  # a CIF or POSCAR stored as a string
        raise RejectedEntry(UNPARSEABLE, "JSON holds a string, not a structure dict")
    if not isinstance(data, dict):
        raise RejectedEntry(UNPARSEABLE, f"JSON holds a {type(data).__name__}, not a structure dict")
    return Structure.from_dict(data)


def _finish(structure: Structure) -> Structure:
    """Checks every format shares: real elements, occupancies ≤ 1; drops oxidation states."""
    for site in structure:
        for specie, amount in site.species.items():
            if not Element.is_valid_symbol(getattr(specie, "symbol", str(specie))):
                raise RejectedEntry(UNKNOWN_ELEMENT, f"{specie} is not a chemical element")
        if site.species.num_atoms > 1 + OCCUPANCY_TOLERANCE:
            raise RejectedEntry(OVERLAPPING, f"site occupancy {site.species.num_atoms:g} > 1")
    structure.remove_oxidation_states()
    return structure


# --------------------------------------------------------------------------- import


def import_structures(
    path: Path | str,
    space: ChemicalSpace = ChemicalSpace(),
    source: str = "imported",
) -> ImportReport:
    """Import every structure under `path` as a candidate, counting the rejects.

    Each entry is parsed (:func:`parse_entry`) and validated
    (:func:`gnome_loop.structures.validate_structure` in `space`); a repeat of an
    accepted structure (same :attr:`Candidate.id`) counts as ``duplicate``. Accepted
    structures become ``Candidate(structure, "import", (), {"source": source, "source_id": id})``.
    """
    report = ImportReport()
    seen: dict[str, str] = {}
    for entry in iter_sources(path, skipped=report.skipped_files):
        report.read += 1
        try:
            structure = parse_entry(entry.text, entry.fmt)
            reason = validate_structure(structure, space)
        except RejectedEntry as exc:
            report.reject(entry.id, exc.category, str(exc))
            continue
        except Exception as exc:  # validation tripping over a pathological structure
            report.reject(entry.id, UNPARSEABLE, _one_line(f"{UNPARSEABLE}: {type(exc).__name__}: {exc}"))
            continue
        if reason is not None:
            report.reject(entry.id, reason.category, reason)
            continue
        candidate = Candidate(structure, generator="import", parent_ids=(),
                              info={"source": source, "source_id": entry.id})
        key = candidate.id
        first = seen.get(key)
        if first is not None:
            report.reject(entry.id, DUPLICATE, f"{DUPLICATE}: same structure as {first}")
            continue
        seen[key] = entry.id
        report.accepted.append(candidate)
    log.info("imported %s: %d read, %d accepted, rejected %s", path, report.read, len(report.accepted),
             dict(report.rejected))
    return report
