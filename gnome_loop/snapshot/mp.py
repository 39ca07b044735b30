"""A snapshot fetched from the Materials Project: every GGA/GGA+U entry of a chemical space.

`fetch_mp_entries` asks MP (through mp-api's `MPRester`) for the thermo documents of
every chemical system of a campaign's space in one query, keeps the entries of the
GGA_GGA+U thermo type (MP2020-corrected, as MP serves them; r2SCAN and mixed ones are
dropped) that have structures, and records MP's database version.

`write_mp_snapshot` caches such a snapshot as a gzipped monty-JSON object::

    {"database_version": "2025.09.25", "endpoint": "https://api.materialsproject.org/",
     "chemsys": ["Li", "O", "Li-O"], "fetched": "2026-01-01T00:00:00+00:00",
     "entries": [<ComputedStructureEntry as_dict>, ...]}

Its "entries" list is exactly a plain entries file (the list the file loader reads),
so `json.load(...)["entries"]` written out on its own is a valid entries file.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from monty.json import MontyDecoder, MontyEncoder
from mp_api.client import MPRester, MPRestError
from mp_api.client.core.utils import validate_endpoint
from pymatgen.entries.computed_entries import ComputedStructureEntry
from requests.exceptions import RequestException

#: The thermo type of MP's GGA/GGA+U hull (MP2020-corrected energies).
GGA_THERMO_TYPE = "GGA_GGA+U"
#: Keys of a snapshot file besides "entries".
HEADER_KEYS = ("database_version", "endpoint", "chemsys", "fetched")
#: Where a campaign keeps its MP snapshot (inside the campaign's snapshot folder).
CACHE_FILE = "mp_entries.json.gz"


class MPFetchError(ConnectionError):
    """A request to the Materials Project API failed (connection, HTTP status or bad answer)."""


@dataclass
class MPSnapshot:
    """GGA/GGA+U entries of some chemical systems, with where and when MP served them."""

    entries: list[ComputedStructureEntry]
    database_version: str
    endpoint: str
    chemsys: list[str]
    fetched: str


def chemical_systems(elements: list[str], max_elements: int | None = None) -> list[str]:
    """Every chemical system of `elements` with at most `max_elements` elements
    (None: all), as sorted dash-joined strings, smallest systems first."""
    symbols = sorted(set(elements))
    if not symbols:
        raise ValueError("no elements given")
    largest = len(symbols) if max_elements is None else min(max_elements, len(symbols))
    return [
        "-".join(combo) for size in range(1, largest + 1) for combo in itertools.combinations(symbols, size)
    ]


def fetch_mp_entries(
    elements: list[str],
    max_elements: int | None = None,
    api_key: str | None = None,
    endpoint: str | None = None,
) -> MPSnapshot:
    """Fetch every GGA/GGA+U `ComputedStructureEntry` of the chemical space from MP.

    The API key is `api_key` or the `MP_API_KEY` environment variable (ValueError when
    neither is set); `endpoint` defaults to mp-api's own. Entries are sorted by their
    MP entry id (e.g. "mp-1234-GGA"), one per id. Raises `MPFetchError` naming the
    endpoint and the step that failed when MP cannot be reached or answers an error.
    """
    systems = chemical_systems(elements, max_elements)
    api_key = api_key or os.environ.get("MP_API_KEY")
    if not api_key:
        raise ValueError("no Materials Project API key: pass api_key or set the MP_API_KEY environment variable")
    url = validate_endpoint(endpoint)

    # Constructing MPRester checks the key's form and asks the endpoint's /heartbeat
    # for the database version.
    step = "setting up the client (/heartbeat)"
    try:
        with MPRester(api_key=api_key, endpoint=url, use_document_model=False, mute_progress_bars=True) as rester:
            if not rester.db_version:
                raise MPFetchError(f"Materials Project API at {url} reported no database version")
            step = f"querying thermo documents of {len(systems)} chemical systems"
            docs = rester.materials.thermo.search(
                chemsys=systems, thermo_types=[GGA_THERMO_TYPE], all_fields=False, fields=["entries", "thermo_type"]
            )
            version = rester.db_version
    except (RequestException, MPRestError, KeyError, ValueError) as error:
        # mp-api reads /heartbeat without checking its status: an error page shows up as a missing key.
        detail = f"the answer lacks {error}" if isinstance(error, KeyError) else str(error)
        raise MPFetchError(f"Materials Project API at {url}: {step} failed: {detail}") from error

    by_id: dict[str, ComputedStructureEntry] = {}
    for doc in docs:
        if doc.get("thermo_type") != GGA_THERMO_TYPE:
            continue
        for entry_dict in (doc.get("entries") or {}).values():
            if not entry_dict.get("structure"):
                continue
            entry = ComputedStructureEntry.from_dict(entry_dict)
            if not entry.entry_id:
                raise MPFetchError(f"Materials Project API at {url} served an entry without an entry_id")
            by_id.setdefault(str(entry.entry_id), entry)
    return MPSnapshot(
        entries=[by_id[key] for key in sorted(by_id)],
        database_version=version,
        endpoint=url,
        chemsys=systems,
        fetched=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_mp_snapshot(snapshot: MPSnapshot, path: Path) -> None:
    """Write the snapshot as gzipped monty JSON, atomically (a temporary file, then os.replace)."""
    path = Path(path)
    payload = {key: getattr(snapshot, key) for key in HEADER_KEYS}
    payload["entries"] = [entry.as_dict() for entry in snapshot.entries]
    text = json.dumps(payload, cls=MontyEncoder)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(tmp, "wt") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_mp_snapshot(path: Path) -> MPSnapshot:
    """Read a snapshot written by `write_mp_snapshot`; ValueError if the file is not one."""
    path = Path(path)
    try:
        with gzip.open(path, "rt") as handle:
            payload = json.load(handle, cls=MontyDecoder)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"MP snapshot {path} is not readable gzipped JSON: {error}") from None
    missing = [key for key in (*HEADER_KEYS, "entries") if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ValueError(f"MP snapshot {path} lacks {', '.join(missing)}")
    entries = payload["entries"]
    if not all(isinstance(entry, ComputedStructureEntry) for entry in entries):
        raise ValueError(f"MP snapshot {path}: entries must all be ComputedStructureEntry objects")
    return MPSnapshot(entries=entries, **{key: payload[key] for key in HEADER_KEYS})


def cached_mp_snapshot(elements: list[str], max_elements: int | None, endpoint: str | None,
                       cache_dir: Path | None) -> MPSnapshot:
    """The snapshot cached in `cache_dir/mp_entries.json.gz`, fetched (and cached) on first use,
    so that a resumed campaign never asks MP again and keeps the database version it started from."""
    path = None if cache_dir is None else Path(cache_dir) / CACHE_FILE
    if path is not None and path.exists():
        return read_mp_snapshot(path)
    snapshot = fetch_mp_entries(elements, max_elements, endpoint=endpoint)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp_snapshot(snapshot, path)
    return snapshot
