"""Known-materials snapshots: the prototype default and entries files."""

import gzip
import itertools
import math

import numpy as np
import pytest
from monty.serialization import dumpfn
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gnome_loop.config import parse_config
from gnome_loop.snapshot import KnownPhase, load_snapshot
from gnome_loop.snapshot.files import load_entries_file
from gnome_loop.snapshot.prototypes import (ELEMENT_TEMPLATES, element_kind, elemental_phases, elemental_reference,
                                            load_prototypes, prototype_templates)
from gnome_loop.structures import ChemicalSpace, minimum_distance, validate_structure

EMT_SPACE = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"]
IONIC_SPACE = ["Li", "Na", "K", "Mg", "Ca", "Al", "Si", "Ti", "Fe", "O", "S", "Cl"]
LI_CO_NI_O = "mp_chemsys/Li-Co-Ni-O.json.gz"


def _elements(phase: KnownPhase) -> set[str]:
    return {el.symbol for el in phase.composition.elements}


def test_emt_space_has_cu3au_and_every_reference():
    phases = load_prototypes(ChemicalSpace(EMT_SPACE, 3, 20))
    by_id = {phase.id: phase for phase in phases}
    cu3au = by_id["proto-AB3_cP4_221_a_c-Cu3Au"]
    assert cu3au.info["strukturbericht"] == "L1_2"
    assert cu3au.structure.composition.reduced_formula == "Cu3Au"
    assert {f"ref-{el}" for el in EMT_SPACE} <= set(by_id)
    assert [phase.id for phase in phases] == sorted(by_id)
    for phase in phases:
        assert _elements(phase) <= set(EMT_SPACE)
        assert len(phase.structure) <= 20 and len(_elements(phase)) <= 3
        assert phase.energy is None and phase.scale is None


def test_limits_drop_prototypes_but_never_references():
    phases = load_prototypes(ChemicalSpace(EMT_SPACE, 1, 1))
    assert {phase.id for phase in phases if phase.source == "ase-reference"} == {f"ref-{el}" for el in EMT_SPACE}
    assert all(len(phase.structure) == 1 for phase in phases if phase.source == "prototypes")


def test_ionic_space_references_are_valid_and_oxygen_is_a_molecule():
    phases = load_prototypes(ChemicalSpace(IONIC_SPACE, 3, 20))
    refs = {phase.id: phase for phase in phases if phase.source == "ase-reference"}
    assert set(refs) == {f"ref-{el}" for el in IONIC_SPACE}
    for phase in phases:
        assert _elements(phase) <= set(IONIC_SPACE)
        assert validate_structure(phase.structure, ChemicalSpace(IONIC_SPACE)) is None, phase.id

    oxygen = refs["ref-O"]
    assert oxygen.info["molecule"] is True
    distances = oxygen.structure.distance_matrix[np.triu_indices(len(oxygen.structure), k=1)]
    assert distances.min() > 1.0
    assert any(abs(d - 1.21) < 0.05 for d in distances)
    assert refs["ref-Fe"].info == {"reference_state": "bcc", "molecule": False}
    assert refs["ref-Cl"].info["molecule"] is True


def test_every_element_gets_a_reference():
    # Elements ASE cannot build as a crystal fall back to a molecule or an fcc cell.
    for symbol in ["H", "N", "F", "B", "P", "S", "Mn", "Ga", "Se", "Te", "I", "He", "Pu"]:
        structure, state = elemental_reference(symbol)
        assert {el.symbol for el in structure.composition.elements} == {symbol}
        assert validate_structure(structure) is None, (symbol, state)


def test_each_element_gets_a_bounded_handful_of_elemental_structures():
    phases = load_prototypes(ChemicalSpace(IONIC_SPACE, 3, 16))
    by_element: dict[str, list[str]] = {}
    for phase in phases:
        if len(_elements(phase)) == 1:
            by_element.setdefault(_elements(phase).pop(), []).append(phase.id)
    for symbol in IONIC_SPACE:
        assert 2 <= len(by_element[symbol]) <= 5, (symbol, by_element[symbol])
    # sulfur, lost by the quickstart with its one guessed fcc cell, now has chains, layers and networks too
    assert set(by_element["S"]) == {"ref-S", "ref-S-diamond", "ref-S-alpha-As", "ref-S-alpha-Se", "ref-S-sc"}
    # ASE knows fcc Al: one stand-in, the next close packing; Mg's hcp, its own prototype, gets fcc
    assert set(by_element["Al"]) == {"ref-Al", "ref-Al-hcp"}
    assert set(by_element["Mg"]) == {"ref-Mg", "ref-Mg-fcc", "proto-A_hP2_194_c-Mg"}
    assert set(by_element["Si"]) >= {"ref-Si", "ref-Si-alpha-As"} and "ref-Si-sc" not in by_element["Si"]
    assert set(by_element["O"]) == {"ref-O", "ref-O-alpha-I2", "proto-A_hR2_166_c-O2", "proto-A_mC4_12_i-O2"}


@pytest.mark.parametrize("symbol", ["H", "He", "B", "C", "N", "O", "Na", "Si", "P", "S", "Cl", "Fe", "Se", "I", "Pu"])
def test_elemental_templates_are_valid_and_scaled_to_the_element(symbol):
    phases = elemental_phases(symbol)
    assert len(phases) == len({phase.id for phase in phases}) <= 1 + max(map(len, ELEMENT_TEMPLATES.values()))
    for phase in phases:
        assert phase.composition.reduced_formula == phase.structure.composition.reduced_formula
        assert {el.symbol for el in phase.structure.composition.elements} == {symbol}
        assert validate_structure(phase.structure) is None, phase.id
    templates = [phase for phase in phases if phase.source == "element-template"]
    assert templates and all(phase.info["molecule"] is False for phase in templates)
    if phases[0].info["reference_state"] not in ("fcc from atomic radius", "diatomic molecule"):
        assert len(templates) == 1  # ASE knows the crystal: one stand-in is enough
    if element_kind(symbol) == "covalent":  # crystals are scaled to the element's bond
        bonds = {round(minimum_distance(phase.structure), 6) for phase in templates}
        assert len(bonds) == 1


def test_prototypes_are_deterministic_and_not_shared():
    first = load_prototypes(ChemicalSpace(EMT_SPACE, 3, 20))
    first[0].structure.scale_lattice(1000.0)
    second = load_prototypes(ChemicalSpace(EMT_SPACE, 3, 20))
    assert [phase.id for phase in first] == [phase.id for phase in second]
    assert second[0].structure.volume != pytest.approx(1000.0)


def test_templates_cover_the_library_up_to_four_elements():
    templates = prototype_templates()
    ids = [key for key, _ in templates]
    assert len(ids) == len(set(ids)) > 250
    assert "proto-AB_cF8_225_a_b-NaCl" in ids
    assert all(len(structure.composition.elements) <= 4 for _, structure in templates)


def test_known_phase_needs_a_composition():
    with pytest.raises(ValueError, match="structure or a composition"):
        KnownPhase("x", structure=None, energy=-1.0, source="test", scale=None)


def test_file_snapshot_loads_every_mp_entry(shared_data):
    phases = load_entries_file(shared_data / LI_CO_NI_O)
    assert len(phases) == 775
    assert len({phase.id for phase in phases}) == 775
    assert {phase.scale for phase in phases} == {"mp2020"}
    assert {phase.source for phase in phases} == {"file:Li-Co-Ni-O.json.gz"}
    assert all(math.isfinite(phase.energy) and phase.structure is not None for phase in phases)
    assert phases[0].info["material_id"] in phases[0].id


def test_file_snapshot_filters_to_a_subspace(shared_data):
    config = parse_config(
        {
            "chemical_space": {"elements": ["Li", "O"], "max_elements": 2},
            "snapshot": {"source": "file", "path": str(shared_data / LI_CO_NI_O)},
        }
    )
    phases = load_snapshot(config).phases
    assert len(phases) == 53
    assert all(_elements(phase) <= {"Li", "O"} for phase in phases)
    assert {"Li", "O"} <= set(itertools.chain.from_iterable(_elements(phase) for phase in phases))


def test_prototype_snapshot_from_config():
    config = parse_config({"chemical_space": {"elements": EMT_SPACE}})
    assert [phase.id for phase in load_snapshot(config).phases] == [phase.id for phase in load_prototypes(ChemicalSpace(EMT_SPACE, 3, 20))]


def _structure_entry(entry_id: str, energy: float, correction: float = 0.0) -> ComputedStructureEntry:
    structure = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return ComputedStructureEntry(structure, energy, correction=correction, entry_id=entry_id)


def test_small_files_keep_energies_scale_and_hash_ids(tmp_path):
    path = tmp_path / "entries.json"
    dumpfn([_structure_entry("a", -10.0), ComputedEntry("Li2O", -14.0), ComputedEntry("Co", -7.0, entry_id="c")], path)
    phases = load_entries_file(path, ChemicalSpace(("Li", "O"), 2))
    assert [phase.energy for phase in phases] == [-10.0, -14.0]
    assert {phase.scale for phase in phases} == {"uncorrected"}
    assert phases[1].structure is None and phases[1].composition.reduced_formula == "Li2O"
    assert phases[1].id.startswith("entry-") and phases[1].id == load_entries_file(path)[1].id

    corrected = tmp_path / "corrected.json.gz"
    dumpfn([_structure_entry("a", -10.0, correction=-1.0)], corrected)
    [phase] = load_entries_file(corrected)
    assert phase.scale == "mp2020" and phase.energy == pytest.approx(-11.0)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_entries_file(tmp_path / "nothing.json")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", b"[{not json", "not readable JSON"),
        ("bad.json.gz", b"not gzip at all", "not readable JSON"),
        ("dict.json", b'{"a": 1}', "must hold a JSON list"),
        ("numbers.json", b"[1, 2]", "item 0 \\(int\\) is not a ComputedEntry"),
    ],
)
def test_malformed_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_entries_file(path)


def test_duplicated_ids_are_named(tmp_path):
    path = tmp_path / "dup.json.gz"
    dumpfn([_structure_entry("mp-1", -1.0), _structure_entry("mp-2", -2.0), _structure_entry("mp-1", -3.0)], path)
    assert gzip.open(path).read()  # really gzipped
    with pytest.raises(ValueError, match="1 entry ids appear more than once: mp-1"):
        load_entries_file(path)


def test_non_finite_energies_are_counted_and_named(tmp_path):
    path = tmp_path / "nan.json"
    entries = [_structure_entry("ok", -1.0), _structure_entry("n1", float("nan")), _structure_entry("n2", float("inf"))]
    dumpfn(entries, path)
    with pytest.raises(ValueError, match="2 entries have a non-finite energy: n1, n2"):
        load_entries_file(path)


def test_uncorrected_mp_file_joins_a_vasp_campaign_on_mps_corrected_scale(shared_data, tmp_path):
    """A VASP campaign started from uncorrected MP entries corrects them itself: its hull is MP2020's."""
    from monty.serialization import loadfn
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    from gnome_loop.campaign import Campaign

    path = shared_data / "mp_chemsys" / "Li-Fe-O_uncorrected.json.gz"
    config = parse_config({
        "rounds": 0, "chemical_space": {"elements": ["Fe", "Li", "O"]},
        "snapshot": {"source": "file", "path": str(path)}, "model": {"kind": "linear"},
        "oracle": {"kind": "vasp"}})
    campaign = Campaign.create(config, tmp_path / "campaign")
    assert campaign.run().status == "done"
    assert campaign.store.meta("scale") == "mp2020"
    ours = {e["id"][len("e-"):]: e["e_hull"] for e in campaign.store.entries(with_structure=False)}

    standard = MaterialsProject2020Compatibility().process_entries(loadfn(path))
    diagram = PhaseDiagram(standard)
    expected = {str(e.entry_id): diagram.get_e_above_hull(e) for e in standard}
    assert set(ours) == set(expected) and len(ours) > 300
    assert max(abs(ours[key] - expected[key]) for key in expected) < 1e-6


def test_energy_table_loads_mp_summary_rows_as_structureless_references(shared_data):
    from gnome_loop.snapshot.files import load_energy_table

    path = shared_data / "mp_reference" / "mp_materials_summary.csv.gz"
    phases, skipped = load_energy_table(path, ChemicalSpace(("Li", "Fe", "O"), 3), "mp2020")
    assert not skipped  # the table holds MP's stable set: 9 phases of Li-Fe-O and its subsystems
    assert all(p.structure is None and p.scale == "mp2020" for p in phases)
    assert "mp-1960" in {p.id for p in phases}  # Li2O
    assert sorted(p.composition.reduced_formula for p in phases) == [
        "Fe", "Li", "Li2FeO3", "Li2O", "Li2O2", "Li5FeO4", "LiFeO2", "LiO8", "O2"]


def test_energy_table_counts_malformed_rows_and_refuses_repeated_ids(tmp_path):
    from gnome_loop.snapshot.files import load_energy_table

    path = tmp_path / "table.csv"
    path.write_text("Composition,MaterialId,Corrected Energy\nLi2O1,a,-14.3\nXx2O,b,-3\nLi1,c,nan\nO2,d,\n((,f,-1\n"
                    "Li1,e,-1.9\n")
    phases, skipped = load_energy_table(path, ChemicalSpace(), "mp2020")
    assert [p.id for p in phases] == ["a", "e"]
    assert skipped == {"unknown-element": 1, "bad-energy": 2, "bad-composition": 1}
    path.write_text("Composition,MaterialId,Corrected Energy\nLi1,a,-1.9\nLi2,a,-3.8\n")
    with pytest.raises(ValueError, match="1 ids appear more than once: a"):
        load_energy_table(path, ChemicalSpace(), "mp2020")
    path.write_text("formula_pretty,e\nLi,-1\n")
    with pytest.raises(ValueError, match="needs a composition column"):
        load_energy_table(path, ChemicalSpace(), "mp2020")


def test_extxyz_snapshot_keeps_energies_and_counts_frames_without(tmp_path):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    from gnome_loop.snapshot.files import load_extxyz_entries

    frames = []
    for key, energy in (("cu", -3.7), ("no-energy", None), ("au", -3.2)):
        atoms = AseAtomsAdaptor.get_atoms(Structure(Lattice.cubic(3.6), ["Cu" if key != "au" else "Au"], [[0, 0, 0]]))
        atoms.info["entry_id"] = key
        if energy is not None:
            atoms.info["energy"] = energy
        frames.append(atoms)
    ase.io.write(tmp_path / "refs.extxyz", frames, format="extxyz")
    phases, skipped = load_extxyz_entries(tmp_path / "refs.extxyz", ChemicalSpace(("Cu", "Au"), 2, 8), "emt")
    assert [(p.id, p.energy, p.scale) for p in phases] == [("cu", -3.7, "emt"), ("au", -3.2, "emt")]
    assert skipped == {"no-energy": 1} and phases[0].structure.composition.reduced_formula == "Cu"


def test_cif_folder_snapshot_is_evaluated_by_the_oracle(tmp_path):
    from gnome_loop.campaign import Campaign

    folder = tmp_path / "cifs"
    folder.mkdir()
    for name, a in (("cu", 3.6), ("ag", 4.1)):
        Structure(Lattice.cubic(a), [name.title()] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) \
            .to(filename=str(folder / f"{name}.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    config = parse_config({"rounds": 0, "chemical_space": {"elements": ["Cu", "Ag"], "max_elements": 2},
                           "snapshot": {"source": "file", "path": str(folder)}, "model": {"kind": "linear"}})
    campaign = Campaign.create(config, tmp_path / "campaign")
    assert campaign.run().status == "done"
    metrics = campaign.store.round_metrics(0)
    assert metrics["reevaluated"] is True and metrics["references"] == 2
    assert metrics["snapshot_skipped"] == {"unparseable": 1}
    assert len(campaign.store.entries()) == 2 and campaign.store.meta("snapshot_version") == "cifs/"


def test_energy_only_references_cannot_be_reevaluated(tmp_path):
    from gnome_loop.campaign import Campaign

    path = tmp_path / "refs.csv"
    path.write_text("Composition,MaterialId,Corrected Energy\nCu1,a,-3.7\n")
    config = parse_config({"rounds": 0, "chemical_space": {"elements": ["Cu"]},
                           "snapshot": {"source": "file", "path": str(path)}, "model": {"kind": "linear"}})
    with pytest.raises(ValueError, match="energies but no structures"):
        Campaign.create(config, tmp_path / "campaign").run()


def test_init_refuses_a_missing_snapshot_file_and_keeps_the_path_absolute(tmp_path, monkeypatch):
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import ConfigError

    settings = {"rounds": 0, "chemical_space": {"elements": ["Cu"]}, "snapshot": {"source": "file", "path": "refs.csv"}}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="snapshot.path: refs.csv not found"):
        Campaign.create(parse_config(settings), tmp_path / "campaign")
    (tmp_path / "refs.csv").write_text("Composition,MaterialId,Corrected Energy\nCu1,a,-3.7\n")
    campaign = Campaign.create(parse_config(settings), tmp_path / "campaign")
    assert campaign.config.snapshot.path == str(tmp_path / "refs.csv")
