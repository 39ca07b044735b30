"""The embedded reference hull (issue 23): MP's stable phases ship in the package, an
MP2020-scale campaign judges its candidates against them (the matbench-discovery
protocol), an EMT campaign keeps its self-consistent hull, and `gnome-loop hull
--reference mp` uses the shipped table."""

import csv
import gzip
import json
from pathlib import Path

import pytest
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from ase.io import write
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign
from gnome_loop.cli import app
from gnome_loop.config import ConfigError, parse_config
from gnome_loop.report import write_report
from gnome_loop.snapshot import load_snapshot
from gnome_loop.store import PARENT
from gnome_loop.snapshot.reference import MP_CARD, MP_TABLE, mp_card, mp_reference_entries, mp_reference_phases
from gnome_loop.structures import ChemicalSpace

#: MP's Li-O hull in the shipped table: (reduced formula, material id, MP2020-corrected total energy of
#: the cell, eV): the release's energy plus the oxide (-0.687 eV/O), peroxide (-0.465) and superoxide
#: (-0.161) corrections (LiO8 is Li+ in solid O2: MP's bond-length rule calls it a superoxide).
LI_O = {("Li", "d90afeb9f0dd1cc16afbebf8ba0147e6", -5.73580694), ("Li2O", "mp-1960", -14.95060048),
        ("Li2O2", "mp-841", -40.62889738), ("LiO8", "mp-1235059", -45.3362327), ("O2", "mp-12957", -39.58368804)}
#: The fake MP-scale oracle's distance from MP's hull, eV/atom (tests/fake_calculators.py).
SHIFTS = {"LiO2": -0.03, "Li3O": 0.04}


def test_shipped_table_loads_with_its_card():
    entries = mp_reference_entries()
    assert len(entries) == 31_840
    card = mp_card()
    assert card["rows"] == 31_840 and MP_CARD.exists()
    assert "CC BY 4.0" in card["licence"] and "APL Materials 1, 011002 (2013)" in card["attribution"]
    assert card["source"]["commit"].startswith("4023209")
    assert card["made_by"]["script"] == "scripts/build_reference_hull.py"
    assert 0.2e6 < MP_TABLE.stat().st_size < 2e6
    with gzip.open(MP_TABLE, "rt") as handle:
        assert next(csv.reader(handle)) == ["Composition", "MaterialId", "Uncorrected Energy", "Corrected Energy"]
    li2o = next(e for e in entries if e.entry_id == "mp-1960")
    assert li2o.composition.reduced_formula == "Li2O" and li2o.energy == pytest.approx(-14.95060048, abs=1e-12)


def test_table_is_the_shared_release_table_with_mps_corrections(shared_data):
    """The release's energies are MP's uncorrected ones; the table adds the MP2020
    corrections, and then equals MP's own corrected energies wherever the shared data hold
    them (23 Li-Co-Ni-O phases: oxides with U on Co and Ni, peroxide, superoxide, metals)."""
    source = shared_data / "mp_reference" / "mp_materials_summary.csv.gz"
    with gzip.open(source, "rt") as handle:
        release = {r["MaterialId"]: r["Corrected Energy"] for r in csv.DictReader(handle)}
    with gzip.open(MP_TABLE, "rt") as handle:
        table = {r["MaterialId"]: r for r in csv.DictReader(handle)}
    assert {key: row["Uncorrected Energy"] for key, row in table.items()} == release
    mp = {str(e.entry_id).split("-GGA")[0]: e for e in loadfn(shared_data / "mp_chemsys" / "Li-Co-Ni-O.json.gz")}
    entries = {str(e.entry_id): e for e in mp_reference_entries()}
    shared = sorted(set(entries) & set(mp))
    assert len(shared) == 23
    for key in shared:
        assert float(table[key]["Uncorrected Energy"]) / mp[key].composition.num_atoms == pytest.approx(
            mp[key].uncorrected_energy_per_atom, abs=1e-4)  # the release's "corrected" energy is not
        assert entries[key].energy_per_atom == pytest.approx(mp[key].energy_per_atom, abs=1e-6), key


def test_elements_without_an_mp_corner_are_named():
    phases, missing = mp_reference_phases(ChemicalSpace(("Xe", "F", "Yb"), max_elements=2))
    assert missing == ["Xe", "Yb"]
    assert {p.composition.reduced_formula for p in phases} == {"F2"}  # no Xe-F or Yb-F binary either


@pytest.mark.parametrize("oracle, snapshot, expected", [
    ({"calculator": "chgnet"}, {}, "mp"),
    ({"kind": "vasp"}, {}, "mp"),
    ({"calculator": "tests.fake_calculators:MPHullCalculator", "energy_scale": "mp2020"}, {}, "mp"),
    ({"calculator": "emt"}, {}, "none"),
    ({"calculator": "chgnet"}, {"source": "file", "path": "x.csv"}, "none"),
    ({"calculator": "chgnet"}, {"reevaluate": "always"}, "none"),  # a self-consistent hull asked for
])
def test_auto_reference_hull_is_decided_by_the_oracles_scale(oracle, snapshot, expected):
    config = parse_config({"chemical_space": {"elements": ["Li", "O"]}, "oracle": oracle, "snapshot": snapshot})
    assert config.snapshot.reference_hull == "auto"
    assert config.resolved_reference_hull() == expected


@pytest.mark.parametrize("settings, message", [
    ({"oracle": {"calculator": "emt"}}, "needs an oracle on MP's MP2020 scale"),
    ({"oracle": {"calculator": "chgnet"}, "snapshot": {"source": "file", "path": "x.csv", "reference_hull": "mp"}},
     "brings its own references"),
    ({"oracle": {"kind": "vasp"}, "snapshot": {"reference_hull": "mp", "reevaluate": "always"}},
     "no structures to re-evaluate"),
])
def test_mp_hull_with_incomparable_energies_is_refused(settings, message):
    data = {"chemical_space": {"elements": ["Cu"]}, "snapshot": {"reference_hull": "mp"}, **settings}
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_mp_snapshot_keeps_prototypes_as_parents_and_mp_phases_as_the_hull():
    config = parse_config({"chemical_space": {"elements": ["Li", "O"], "max_elements": 2},
                           "oracle": {"kind": "vasp"}, "snapshot": {"reference_hull": "mp"}})
    snapshot = load_snapshot(config)
    energy_only = [p for p in snapshot.phases if p.structure is None]
    assert {(p.composition.reduced_formula, p.id, p.energy) for p in energy_only} == LI_O
    assert all(p.scale == "mp2020" and p.hull_reference for p in energy_only)
    parents = [p for p in snapshot.phases if p.structure is not None]
    assert {"ref-Li", "ref-O"} <= {p.id for p in parents}
    assert all(p.energy is None and not p.hull_reference for p in parents)
    assert snapshot.missing_from_mp == []


def test_structures_of_an_element_mp_lacks_stay_hull_references():
    config = parse_config({"chemical_space": {"elements": ["Xe", "F"], "max_elements": 2},
                           "oracle": {"kind": "vasp"}, "snapshot": {"reference_hull": "mp"}})
    snapshot = load_snapshot(config)
    assert snapshot.missing_from_mp == ["Xe"]
    by_id = {p.id: p for p in snapshot.phases}
    assert by_id["ref-Xe"].hull_reference and not by_id["ref-F"].hull_reference  # Xe's corner: the oracle's


def _import_file(path: Path) -> Path:
    """Two candidates for the campaign to import: LiO2 (the fake oracle puts it 30 meV/atom
    below MP's hull) and Li3O (40 meV/atom above)."""
    lio2 = Structure(Lattice.cubic(4.0), ["Li", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.15], [0.5, 0.5, 0.85]])
    li3o = Structure(Lattice.cubic(3.9), ["O", "Li", "Li", "Li"],
                     [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    write(path, [AseAtomsAdaptor.get_atoms(s) for s in (lio2, li3o)], format="extxyz")
    return path


@pytest.fixture(scope="module")
def mp_campaign(tmp_path_factory) -> Path:
    """A quickstart-like campaign on Li-O with a fake MP2020-scale oracle: one round that
    evaluates two imported candidates."""
    folder = tmp_path_factory.mktemp("mp")
    config = parse_config({
        "name": "li_o_mp", "rounds": 1, "chemical_space": {"elements": ["Li", "O"], "max_elements": 2, "max_atoms": 8},
        "generators": {"substitution": {"enabled": False}, "saps": {"enabled": False},
                       "import": {"paths": [str(_import_file(folder / "candidates.extxyz"))]}},
        "model": {"kind": "linear"}, "selection": {"budget": 4, "ehull_threshold": 100.0},
        "oracle": {"calculator": "tests.fake_calculators:MPHullCalculator", "energy_scale": "mp2020"}})
    directory = folder / "campaign"
    assert Campaign.create(config, directory).run().status == "done"
    return directory


def test_mp2020_campaign_hull_holds_every_mp_vertex_at_mps_energy(mp_campaign):
    campaign = Campaign(mp_campaign)
    assert "reference_hull: mp" in (mp_campaign / "config.yaml").read_text()  # decided at init, frozen
    entries = campaign.store.entries(with_structure=False)
    references = {(e["reduced_formula"], e["id"][len("e-"):], e["energy_corrected"])
                  for e in entries if e["source"] == "snapshot"}
    assert references == LI_O  # Li2O among them, at MP's corrected energy
    hull = campaign.context.hull()
    assert all(f"e-{key}" in hull and hull[f"e-{key}"].energy == energy for _, key, energy in LI_O)
    # the hull is MP's phases plus the candidates, exactly as pymatgen builds it; MP's LiO8
    # (Li+ in solid O2) stays one of its vertices
    diagram = PhaseDiagram([PDEntry(Composition(e["composition"]), e["energy_corrected"], name=e["id"])
                            for e in entries if e["source"] in ("snapshot", "oracle")])
    for entry in diagram.all_entries:
        assert hull.e_above_hull(entry.name) == pytest.approx(diagram.get_e_above_hull(entry), abs=1e-9)
    stable = {e["reduced_formula"] for e in entries if e["source"] == "snapshot" and e["is_stable"]}
    assert stable == {"Li", "Li2O", "Li2O2", "LiO8", "O2"}
    assert hull.e_above_hull("e-mp-1235059") == 0.0
    parents = [e for e in entries if e["source"] == PARENT]  # prototypes and elemental structures, evaluated
    assert {"e-ref-Li", "e-ref-O"} <= {e["id"] for e in parents}
    assert not any(e["id"] in hull for e in parents) and not any(e["is_reference"] for e in parents)
    assert all(e["e_hull"] == pytest.approx(0.05, abs=1e-6) for e in parents)  # the fake oracle's shift
    events = [row["msg"] for row in campaign.store.events(limit=500)]
    assert any("matbench-discovery protocol" in msg and "no re-evaluation" in msg for msg in events)
    provenance = campaign.provenance()
    assert provenance["reference_hull"] == "mp" and "Materials Project's hull" in provenance["hull"]
    assert provenance["energy_scale"] == provenance["oracle_scale"] == "mp2020"


def test_candidates_below_mps_hull_are_stable_and_above_are_not(mp_campaign):
    campaign = Campaign(mp_campaign)
    mp = [PDEntry(p.composition, p.energy) for p in mp_reference_phases(ChemicalSpace(("Li", "O")))[0]]
    found = {e["reduced_formula"]: e for e in campaign.store.entries(with_structure=False) if e["source"] == "oracle"}
    assert set(found) == set(SHIFTS)
    for formula, shift in SHIFTS.items():
        entry = found[formula]
        candidate = PDEntry(Composition(entry["composition"]), entry["energy_corrected"])
        alone = PhaseDiagram(mp).get_e_above_hull(candidate, allow_negative=True)
        assert alone == pytest.approx(shift, abs=1e-6)
        assert entry["e_hull"] == pytest.approx(PhaseDiagram(mp + [candidate]).get_e_above_hull(candidate), abs=1e-6)
        assert bool(entry["is_stable"]) is (shift < 0)
    assert found["LiO2"]["e_hull"] == pytest.approx(0.0, abs=1e-6)
    assert found["Li3O"]["e_hull"] == pytest.approx(0.04, abs=1e-6)
    metrics = campaign.store.round_metrics(1)
    assert metrics["stable"] == 1 and metrics["new_stable"] == 1  # LiO2: not an MP formula


def test_hull_command_judges_against_the_shipped_table(mp_campaign, tmp_path):
    campaign = Campaign(mp_campaign)
    rows = [e for e in campaign.store.entries(with_structure=False) if e["source"] == "oracle"]
    table = tmp_path / "candidates.csv"
    table.write_text("Composition,MaterialId,Corrected Energy\n"
                     + "".join(f"{e['composition'].replace(' ', '')},{e['reduced_formula']},{e['energy_corrected']!r}\n"
                               for e in rows) + "Li2O1,at-mp,-14.95060048\n")
    result = CliRunner().invoke(app, ["hull", str(table), "--reference", "mp", "-o", str(tmp_path / "hull.csv")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "hull.csv") as handle:
        e_hull = {r["entry_id"]: float(r["e_above_hull"]) for r in csv.DictReader(handle)}
    assert e_hull == pytest.approx({"LiO2": -0.03, "Li3O": 0.04, "at-mp": 0.0}, abs=1e-6)


def test_report_draws_mps_hull_and_names_it(mp_campaign, tmp_path):
    written = write_report(Campaign(mp_campaign), tmp_path, chemsys=["Li-O"])
    page = (tmp_path / "report.md").read_text()
    assert "Hull: judged against the Materials Project's hull" in page
    assert tmp_path / "phase_diagram_Li-O.png" in written


def test_emt_campaign_keeps_its_self_consistent_hull_and_says_so(tmp_path):
    config = parse_config({"rounds": 0, "chemical_space": {"elements": ["Cu", "Au"], "max_elements": 2,
                                                           "max_atoms": 4}, "model": {"kind": "linear"}})
    campaign = Campaign.create(config, tmp_path / "campaign")
    assert campaign.config.snapshot.reference_hull == "none"
    assert campaign.run().status == "done"
    entries = campaign.store.entries(with_structure=False)
    assert entries and all(e["source"] == "reference" and e["is_reference"] and e["scale"] == "emt" for e in entries)
    assert not any(e["id"].startswith("e-mp-") for e in entries)
    events = [row["msg"] for row in campaign.store.events(limit=100)]
    assert any("self-consistent hull" in msg and "emt" in msg for msg in events)
    assert campaign.provenance()["reference_hull"] == "none"
    assert campaign.provenance()["hull"].startswith("self-consistent hull")


@pytest.mark.slow
def test_chgnet_campaign_is_judged_against_mp_by_default(tmp_path):
    pytest.importorskip("chgnet")
    config = parse_config({"rounds": 0, "chemical_space": {"elements": ["Li", "O"], "max_elements": 2,
                                                           "max_atoms": 8},
                           "model": {"kind": "linear"}, "oracle": {"calculator": "chgnet", "max_steps": 100}})
    campaign = Campaign.create(config, tmp_path / "campaign")
    assert campaign.config.snapshot.reference_hull == "mp"
    assert campaign.run().status == "done"
    entries = campaign.store.entries(with_structure=False)
    mp = [e for e in entries if e["source"] == "snapshot"]
    assert {(e["reduced_formula"], e["id"][len("e-"):], e["energy_corrected"]) for e in mp} == LI_O
    pd_entries = [PDEntry(Composition(e["composition"]), e["energy_corrected"]) for e in mp]
    diagram = PhaseDiagram(pd_entries)
    for entry, row in zip(pd_entries, mp):  # no discovery yet: the hull of MP's energies as they are
        assert row["e_hull"] == pytest.approx(diagram.get_e_above_hull(entry), abs=1e-9)
    assert {e["reduced_formula"] for e in mp if e["is_stable"]} == {"Li", "Li2O", "Li2O2", "LiO8", "O2"}
    parents = [e for e in entries if e["source"] == PARENT]
    assert {"e-ref-Li", "e-ref-O"} <= {e["id"] for e in parents}
    assert all(e["e_hull"] is not None for e in parents)  # CHGNet's energies judged against MP's hull
