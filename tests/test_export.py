"""Export writers: what they write reads back to the same hull and structures."""

import csv
import zipfile

import pytest
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from gnome_loop.export import STABLE_CSV_COLUMNS, stable_rows, write_cif_zip, write_entries_json, write_stable_hull_csv
from gnome_loop.hull import Hull
from gnome_loop.structures import default_matcher

from tests.helpers import REFERENCE, load_mp


def li_o_entries() -> dict[str, ComputedStructureEntry]:
    """Li, O2, Li2O (antifluorite, stable), Li2O2 (unstable, 0.1 eV/atom above the hull)."""
    structures = {
        "li": Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "o": Structure(Lattice.cubic(5.0), ["O", "O"], [[0, 0, 0], [0.24, 0, 0]]),
        "li2o": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "li2o2": Structure(
            Lattice.hexagonal(3.14, 7.65),
            ["Li", "Li", "O", "O"],
            [[0, 0, 0], [1 / 3, 2 / 3, 0.75], [1 / 3, 2 / 3, 0.15], [1 / 3, 2 / 3, 0.35]],
        ),
    }
    e_form = {"li": 0.0, "o": 0.0, "li2o": -2.0, "li2o2": -1.4}
    entries = {}
    for entry_id, structure in structures.items():
        composition = structure.composition
        energy = sum(REFERENCE[el.symbol] * n for el, n in composition.items()) + e_form[entry_id] * len(structure)
        entries[entry_id] = ComputedStructureEntry(structure, energy, entry_id=entry_id)
    return entries


@pytest.mark.parametrize("name", ["entries.json", "entries.json.gz"])
def test_entries_json_loads_back_into_the_same_phase_diagram(tmp_path, name):
    entries = li_o_entries()
    hull = Hull(entries.values())
    write_entries_json(list(entries.values()), tmp_path / name)
    loaded = loadfn(tmp_path / name)
    assert all(isinstance(entry, ComputedStructureEntry) for entry in loaded)
    diagram = PhaseDiagram(loaded)
    for entry in loaded:
        assert diagram.get_e_above_hull(entry) == pytest.approx(hull.e_above_hull(entry.entry_id), abs=1e-12)
        assert entry.structure == entries[entry.entry_id].structure


def test_stable_hull_csv_has_gnome_columns_and_values(tmp_path):
    entries = li_o_entries()
    hull = Hull(entries.values())
    meta = {"li2o": {"round": 2, "generator": "substitution"}}
    rows = stable_rows(hull, entries, meta)
    write_stable_hull_csv(rows, tmp_path / "stable_materials_hull.csv")

    with open(tmp_path / "stable_materials_hull.csv", newline="") as handle:
        assert handle.readline().strip() == ",".join(STABLE_CSV_COLUMNS)
        handle.seek(0)
        read = list(csv.DictReader(handle))
    assert [row["MaterialId"] for row in read] == ["li", "li2o", "o"]  # Li, Li2O, O2 by reduced formula
    li2o = read[1]
    assert li2o["Composition"] == "Li8O4"
    assert li2o["Reduced Formula"] == "Li2O"
    assert li2o["Elements"] == "['Li', 'O']"
    assert li2o["NSites"] == "12"
    assert float(li2o["Corrected Energy"]) == pytest.approx(entries["li2o"].energy)
    assert float(li2o["Formation Energy Per Atom"]) == pytest.approx(-2.0)
    # without Li2O the hull at x_O = 1/3 is the Li - Li2O2 tie line: 2/3 * -1.4 eV/atom
    assert float(li2o["Decomposition Energy Per Atom"]) == pytest.approx(-2.0 + 1.4 * 2 / 3)
    assert (li2o["Round"], li2o["Generator"]) == ("2", "substitution")
    assert (read[0]["Round"], read[0]["Generator"]) == ("", "")


def test_csv_rows_must_have_exactly_the_columns(tmp_path):
    with pytest.raises(ValueError, match="does not have the columns"):
        write_stable_hull_csv([{"MaterialId": "x"}], tmp_path / "bad.csv")


def test_stable_rows_on_materials_project(shared_data):
    entries, mp = load_mp(shared_data / "mp_chemsys" / "Li-Co-Ni-O.json.gz")
    hull = Hull(entries)
    rows = stable_rows(hull, {entry.entry_id: entry for entry in entries}, {})
    assert len(rows) == 24
    assert {row["MaterialId"] for row in rows} == {i for i, item in mp.items() if item["is_stable"]}
    for row in rows:
        assert row["Formation Energy Per Atom"] == pytest.approx(mp[row["MaterialId"]]["e_form_per_atom"], abs=1e-6)
        assert row["Decomposition Energy Per Atom"] <= 1e-6


def test_cif_zip_parses_back_to_the_same_structures(tmp_path):
    structures = {entry_id: entry.structure for entry_id, entry in li_o_entries().items()}
    write_cif_zip(structures, tmp_path / "by_id.zip")
    with zipfile.ZipFile(tmp_path / "by_id.zip") as archive:
        assert archive.namelist() == sorted(f"{entry_id}.cif" for entry_id in structures)
        parsed = {
            name.removesuffix(".cif"): Structure.from_str(archive.read(name).decode(), fmt="cif")
            for name in archive.namelist()
        }
    matcher = default_matcher()
    for entry_id, structure in structures.items():
        assert matcher.fit(parsed[entry_id], structure)
        assert parsed[entry_id].lattice.abc == pytest.approx(structure.lattice.abc, abs=1e-6)
    first = (tmp_path / "by_id.zip").read_bytes()
    write_cif_zip(structures, tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == first  # same structures, same bytes
