"""Helpers that several test modules share (test modules never import each other)."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pytest
import yaml
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

ROOT = Path(__file__).resolve().parents[1]
#: The reference data: ../shared/data beside the checkout, or GNOME_LOOP_DATA as for the benchmarks.
SHARED_DATA = Path(os.environ.get("GNOME_LOOP_DATA") or ROOT.parent / "shared" / "data")
CI_CONFIG = ROOT / "experiments" / "ci_emt" / "config.yaml"
#: Fractional coordinates of the four atoms of a conventional fcc cell.
FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
#: The campaign tables of schema version 6 less the screening ones (`store.SCREENING_SCHEMA_V6`),
#: frozen: the migration tests build databases of older versions from them.
TABLES_V6 = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, stage TEXT NOT NULL, started REAL, finished REAL,"
    " metrics TEXT NOT NULL DEFAULT '{}')",
    "CREATE TABLE IF NOT EXISTS candidates (id TEXT PRIMARY KEY, round INTEGER NOT NULL, generator TEXT NOT NULL,"
    " parent_ids TEXT NOT NULL DEFAULT '[]', structure TEXT NOT NULL, reduced_formula TEXT NOT NULL,"
    " nsites INTEGER NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'new', duplicate_of TEXT,"
    " pred_energy REAL, pred_std REAL, pred_ehull REAL, score_error TEXT, selected INTEGER NOT NULL DEFAULT 0,"
    " explore INTEGER NOT NULL DEFAULT 0, info TEXT NOT NULL DEFAULT '{}', prerelax TEXT, pick TEXT)",
    "CREATE INDEX IF NOT EXISTS candidates_round ON candidates(round)",
    "CREATE INDEX IF NOT EXISTS candidates_fingerprint ON candidates(fingerprint)",
    "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, candidate_id TEXT NOT NULL UNIQUE, round INTEGER NOT NULL,"
    " oracle TEXT NOT NULL, state TEXT NOT NULL, workdir TEXT NOT NULL, scheduler_ref TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0, error TEXT, submitted REAL, finished REAL)",
    "CREATE INDEX IF NOT EXISTS jobs_round ON jobs(round, state)",
    "CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, source TEXT NOT NULL, round INTEGER NOT NULL,"
    " candidate_id TEXT, composition TEXT NOT NULL, reduced_formula TEXT NOT NULL, nsites INTEGER NOT NULL,"
    " energy_corrected REAL NOT NULL, energy_per_atom REAL NOT NULL, scale TEXT NOT NULL, structure TEXT,"
    " fingerprint TEXT, trajectory TEXT, e_hull REAL, is_stable INTEGER NOT NULL DEFAULT 0,"
    " is_reference INTEGER NOT NULL DEFAULT 0, data TEXT NOT NULL DEFAULT '{}')",
    "CREATE TABLE IF NOT EXISTS models (round INTEGER NOT NULL, member INTEGER NOT NULL, path TEXT NOT NULL,"
    " val_mae REAL, PRIMARY KEY (round, member))",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL,"
    " msg TEXT NOT NULL)"]
#: Elemental energies, eV/atom, of the synthetic Li-Na-O entries.
REFERENCE = {"Li": -1.9, "Na": -1.3, "O": -4.95}


def spinel_mgal2o4() -> Structure:
    """MgAl2O4, Fd-3m origin choice 1, a = 8.083 Å, O at x = 0.387 (u = 0.262 in
    origin choice 2); primitive cell Mg2Al4O8."""
    conventional = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(8.083), ["Mg", "Al", "O"], [[0, 0, 0], [0.625, 0.625, 0.625], [0.387, 0.387, 0.387]]
    )
    return conventional.get_primitive_structure()


def layered_licoo2() -> Structure:
    """LiCoO2, R-3m hexagonal setting, a = 2.816 Å, c = 14.05 Å, O at z = 0.2604: Li3Co3O6."""
    return Structure.from_spacegroup(
        "R-3m", Lattice.hexagonal(2.816, 14.05), ["Li", "Co", "O"], [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2604]]
    )


def ci_config(**sections) -> dict:
    """The CI EMT config with some sections updated."""
    data = yaml.safe_load(CI_CONFIG.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def quick_config(**sections) -> dict:
    """The CI EMT config cut down for tests of a generator in a campaign round: Au-Cu, 2
    jobs a round, relaxations of the positions only (no cell filter: fast) and capped at 10 steps,
    substitution and SAPS off (`sections` update it)."""
    data = ci_config(rounds=0, chemical_space={"elements": ["Au", "Cu"]}, selection={"budget": 2},
                     oracle={"max_steps": 10, "relax_cell": False},
                     generators={"substitution": {"enabled": False}, "saps": {"enabled": False}})
    for key, value in sections.items():
        if isinstance(value, dict):
            for name, setting in value.items():
                data[key][name] = {**data[key].get(name, {}), **setting} if isinstance(setting, dict) else setting
        else:
            data[key] = value
    return data


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@lru_cache(maxsize=1)
def load_mp(path: Path) -> tuple[list[ComputedStructureEntry], dict[str, dict]]:
    """Entries of an MP chemical-system file and MP's own fields (top-level keys
    `e_above_hull`, `is_stable`, `e_form_per_atom` of each JSON dict) by entry id."""
    with gzip.open(path, "rt") as handle:
        raw = json.load(handle)
    entries = [ComputedStructureEntry.from_dict(item) for item in raw]
    return entries, {item["entry_id"]: item for item in raw}


def run_with_kills(directory: Path, kill_at: Callable[[int, tuple[int, str] | None], bool],
                   delay: Callable[[], float], max_runs: int = 20) -> list[tuple[int, str] | None]:
    """`gnome-loop run directory` again and again until the campaign finishes; run k is
    killed with SIGKILL `delay()` seconds after `kill_at(k, (round, stage))` first holds.
    The (round, stage) at each kill, in order. Fails when a run exits on its own with an
    error, or neither finishes nor is killed within 10 minutes."""
    from gnome_loop.store import Store

    watcher, kills = Store(directory / "campaign.db"), []
    for run in range(max_runs):
        process = subprocess.Popen([sys.executable, "-m", "gnome_loop.cli", "run", str(directory)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if kill_at(run, watcher.current_round()):
                time.sleep(delay())
                process.send_signal(signal.SIGKILL)
                if process.wait() == -signal.SIGKILL:  # not when it finished during the delay
                    kills.append(watcher.current_round())
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            pytest.fail("a run neither finished the campaign nor was killed in 10 minutes")
        if process.returncode == 0:
            return kills
        assert process.returncode == -signal.SIGKILL, f"a run failed on its own (exit {process.returncode})"
    pytest.fail(f"the campaign did not finish in {max_runs} runs")
