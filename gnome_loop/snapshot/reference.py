"""The embedded reference hull: the Materials Project's stable phases, shipped in the package.

`gnome_loop/data/mp_stable_phases.csv.gz` holds the 31,840 phases of MP's convex hull
that GNoME's data release lists (composition, material id, MP's uncorrected and
MP2020-corrected total energies; no structures), built by
`scripts/build_reference_hull.py`, which applies the MP2020 corrections the release
leaves out; its card beside it names the source, licence (CC BY 4.0, Materials
Project data), attribution and caveats (rows the release lacks, such as MgO). Nothing is
downloaded at run time. Energies on MP's scale (VASP with MP's settings, CHGNet, a
potential declared MP2020-compatible) are judged against it as matbench-discovery
judges them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.hull import chemsys_of
from gnome_loop.snapshot.phases import KnownPhase, Snapshot
from gnome_loop.snapshot.files import read_energy_table
from gnome_loop.structures import ChemicalSpace

DATA = Path(__file__).resolve().parents[1] / "data"
MP_TABLE = DATA / "mp_stable_phases.csv.gz"
MP_CARD = DATA / "mp_stable_phases.card.json"
#: The energy scale of the table (`gnome_loop.config.OracleConfig.scale`'s name for MP's own).
MP_SCALE = "mp2020"


def mp_card() -> dict:
    """The table's card: source, licence, attribution, rows and how it was made."""
    return json.loads(MP_CARD.read_text())


@functools.lru_cache(maxsize=1)
def mp_reference_entries() -> tuple[ComputedEntry, ...]:
    """Every MP stable phase as a `ComputedEntry` (entry_id = MP's material id), read once per process."""
    entries, skipped = read_energy_table(MP_TABLE)
    if skipped:
        raise ValueError(f"{MP_TABLE} has unreadable rows {dict(skipped)}: rebuild it with "
                         "scripts/build_reference_hull.py")
    for entry in entries:
        entry.data["scale"] = MP_SCALE
    return tuple(entries)


def mp_reference_phases(space: ChemicalSpace) -> tuple[list[KnownPhase], list[str]]:
    """MP's stable phases in `space` (`ChemicalSpace.holds`; the space must name its elements), as
    energy-only known phases on the MP2020 scale, and the elements MP's table has no elemental
    phase of (noble gases, Yb, actinides beyond Pu, ...), which therefore lack a hull corner."""
    phases = [KnownPhase(str(entry.entry_id), structure=None, energy=entry.energy, source="mp-reference",
                         scale=MP_SCALE, composition=entry.composition)
              for entry in mp_reference_entries() if space.holds(chemsys_of(entry.composition))]
    corners = {symbol for phase in phases if len(chemsys_of(phase.composition)) == 1
               for symbol in chemsys_of(phase.composition)}
    return phases, sorted(set(space.elements) - corners)


def with_mp_reference(snapshot: Snapshot, space: ChemicalSpace) -> Snapshot:
    """The snapshot with MP's stable phases of the space added as the hull, its own phases kept
    as substitution parents, dedup references and training data only.

    A phase of the snapshot stays a hull reference where one of its elements has no
    elemental phase in MP's table: the oracle's energies then give that corner.
    """
    mp, missing = mp_reference_phases(space)
    for phase in snapshot.phases:
        phase.hull_reference = bool(chemsys_of(phase.composition) & set(missing))
    card = mp_card()
    version = (f"{snapshot.version} as parents; hull: {len(mp)} of the {card['rows']:,} Materials Project stable "
               f"phases ({card['name']}, {MP_TABLE.name} sha256 {card['sha256'][:12]})")
    return Snapshot(snapshot.phases + mp, snapshot.skipped, version, missing_from_mp=missing)
