"""`gnome-loop generate ...`: each generator from the command line, extxyz + JSON out."""

import json
import zipfile

from ase.io import read as ase_read
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from gnome_loop.cli import EXIT_BAD_INPUT, app
from gnome_loop.structures import validate_structure

runner = CliRunner()


def licoo2() -> Structure:
    return Structure.from_spacegroup("R-3m", Lattice.hexagonal(2.816, 14.05), ["Li", "Co", "O"],
                                     [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2604]])


def frames_and_summary(output):
    frames = ase_read(output, index=":")
    return frames, json.loads(output.with_suffix(".json").read_text())


def test_saps_writes_one_frame_per_candidate_on_the_parent_cell(tmp_path):
    parent = tmp_path / "LiCoO2.cif"
    licoo2().to(filename=str(parent))
    output = tmp_path / "out" / "saps.extxyz"
    result = runner.invoke(app, ["generate", "saps", str(parent), "-o", str(output), "--elements", "Li,Co,Ni,O"])
    assert result.exit_code == 0, result.output
    frames, summary = frames_and_summary(output)
    assert summary["generator"] == "saps" and summary["written"] == len(frames) > 0
    for atoms in frames:
        assert len(atoms) == len(licoo2())  # the parent's cell, no supercell asked for
        assert set(atoms.get_chemical_symbols()) <= {"Li", "Co", "Ni", "O"}
        assert atoms.info["generator"] == "saps" and atoms.info["id"].startswith("c-")
    result = runner.invoke(app, ["generate", "saps", str(parent), "-o", str(output), "--supercell", "2,1,1",
                                 "--max-atoms", "24"])
    frames, _ = frames_and_summary(output)
    assert result.exit_code == 0 and {len(a) for a in frames} == {2 * len(licoo2())}


def test_substitution_proposes_only_new_compositions(tmp_path):
    parent = tmp_path / "LiCoO2.cif"
    licoo2().to(filename=str(parent))
    output = tmp_path / "sub.extxyz"
    result = runner.invoke(app, ["generate", "substitution", str(parent), "-o", str(output),
                                 "--elements", "Li,Na,Co,Ni,Fe,O,S"])
    assert result.exit_code == 0, result.output
    frames, summary = frames_and_summary(output)
    formulas = {Structure(a.cell[:], a.get_chemical_symbols(), a.positions, coords_are_cartesian=True)
                .composition.reduced_formula for a in frames}
    assert frames and "LiCoO2" not in formulas
    assert summary["by_generator"] == {"substitution": len(frames)}


def test_import_counts_broken_entries_by_reason(tmp_path):
    good = licoo2()
    archive = tmp_path / "gen.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("good.cif", good.to(fmt="cif"))
        handle.writestr("cut.cif", good.to(fmt="cif")[:150])
        handle.writestr("nan.cif", good.to(fmt="cif").replace("2.81600000", "nan", 1))
    output = tmp_path / "imp.extxyz"
    result = runner.invoke(app, ["generate", "import", str(archive), "-o", str(output)])
    assert result.exit_code == 0, result.output
    frames, summary = frames_and_summary(output)
    assert len(frames) == 1 and summary["read"] == 3
    assert summary["rejected"] == {"non-finite": 1, "unparseable": 1}


def test_random_search_output_and_impossible_requests(tmp_path):
    output = tmp_path / "r.extxyz"
    result = runner.invoke(app, ["generate", "random", "MgO", "--per-composition", "2", "-o", str(output),
                                 "--time-limit", "30"])
    assert result.exit_code == 0, result.output
    frames, _ = frames_and_summary(output)
    assert len(frames) == 2
    for atoms in frames:
        structure = Structure(atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True)
        assert structure.composition.reduced_formula == "MgO" and validate_structure(structure) is None
    result = runner.invoke(app, ["generate", "random", "Li2O5", "--space-group", "225", "-o", str(output)])
    assert result.exit_code == EXIT_BAD_INPUT and "fits no Wyckoff positions" in result.output


def test_composition_enumeration_skips_known_formulas(tmp_path):
    known = tmp_path / "known.cif"
    licoo2().to(filename=str(known))
    output = tmp_path / "c.extxyz"
    result = runner.invoke(app, ["generate", "composition", "Li,Co,O", "-o", str(output), "--known", str(known),
                                 "--n-compositions", "2", "--per-composition", "1", "--time-limit", "30"])
    assert result.exit_code == 0, result.output
    frames, summary = frames_and_summary(output)
    chosen = [formula for formula, _ in summary["search"]["chosen"]]
    assert len(chosen) == 2 and "LiCoO2" not in chosen
    assert frames and all(a.info["generator"] == "composition" for a in frames)
