"""Helpers that several test modules share (test modules never import each other)."""

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

import yaml
from pymatgen.entries.computed_entries import ComputedStructureEntry

ROOT = Path(__file__).resolve().parents[1]
#: The reference data: ../shared/data beside the checkout, or GNOME_LOOP_DATA as for the benchmarks.
SHARED_DATA = Path(os.environ.get("GNOME_LOOP_DATA") or ROOT.parent / "shared" / "data")
CI_CONFIG = ROOT / "experiments" / "ci_emt" / "config.yaml"
#: Fractional coordinates of the four atoms of a conventional fcc cell.
FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
#: Elemental energies, eV/atom, of the synthetic Li-Na-O entries.
REFERENCE = {"Li": -1.9, "Na": -1.3, "O": -4.95}


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
