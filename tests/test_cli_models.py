"""`gnome-loop train` and `predict`: models without a campaign, from every supported
file kind; unreadable items are skipped and counted, refused structures say why."""

import csv
import io
import math
import re
import zipfile

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from monty.serialization import dumpfn
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry
from pymatgen.io.ase import AseAtomsAdaptor
from typer.testing import CliRunner

from gnome_loop.cli import app
from gnome_loop.models.data import read_labelled, read_structures

runner = CliRunner()
COLUMNS = ["id", "formula", "energy_per_atom", "uncertainty", "error"]
TINY = ["--members", "2", "--width", "16", "--seed", "1"]


def rocksalt(a: float, cation: str, anion: str) -> Structure:
    """Primitive rock-salt cell of cubic lattice constant `a`."""
    fcc = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(fcc, [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl(a: float, cation: str, anion: str) -> Structure:
    return Structure(Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def write_training_csv(path) -> None:
    """20 rows: rock-salt and CsCl halides with a made-up formation energy (AgF and CuCl
    fall in the validation split)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "formation_energy_per_atom", "cif"])
        for i, cation in enumerate(["Li", "Na", "K", "Cu", "Ag"]):
            for j, anion in enumerate(["F", "Cl"]):
                a, energy = 4.6 + 0.3 * i + 0.5 * j, -2.0 + 0.1 * i + 0.5 * j
                writer.writerow([f"rs-{cation}{anion}", energy, rocksalt(a, cation, anion).to(fmt="cif")])
                writer.writerow([f"cs-{cation}{anion}", energy + 0.1, cscl(0.6 * a, cation, anion).to(fmt="cif")])


def write_cif_zip(path, extra: dict[str, str] | None = None) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("NaCl.cif", rocksalt(5.6, "Na", "Cl").to(fmt="cif"))
        archive.writestr("KF.cif", cscl(3.2, "K", "F").to(fmt="cif"))
        archive.writestr("MgO.cif", rocksalt(4.2, "Mg", "O").to(fmt="cif"))  # elements unseen in training
        for name, text in (extra or {}).items():
            archive.writestr(name, text)


def malformed() -> dict[str, str]:
    cif = rocksalt(5.6, "Na", "Cl").to(fmt="cif")
    return {"truncated.cif": cif[: len(cif) // 2], "nan.cif": cif.replace("0.50000000", "nan"),
            "README.txt": "not a structure"}


def write_extxyz(path) -> None:
    frames = []
    for key, structure in [("x-LiCl", rocksalt(5.1, "Li", "Cl")), ("x-AgF", cscl(3.0, "Ag", "F"))]:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info["id"] = key
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * len(atoms))
        frames.append(atoms)
    write(path, frames, format="extxyz")


def write_entries(path) -> None:
    entries = [ComputedStructureEntry(rocksalt(5.6, "Na", "Cl"), energy=-6.0, correction=-1.0, entry_id="e-NaCl"),
               ComputedStructureEntry(cscl(3.4, "Cu", "F"), energy=-8.0, entry_id="e-CuF")]
    dumpfn(entries, str(path))


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def assert_no_nan(rows: list[dict]) -> None:
    for row in rows:
        assert "nan" not in " ".join(row.values()).lower()
        assert bool(row["error"]) != bool(row["energy_per_atom"])
        if not row["error"]:
            assert math.isfinite(float(row["energy_per_atom"])) and float(row["uncertainty"]) >= 0


@pytest.fixture(scope="module")
def composition_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("composition")
    write_training_csv(folder / "train.csv")
    result = runner.invoke(app, ["train", str(folder / "train.csv"), "-o", str(folder / "model"),
                                 "--kind", "composition", "--epochs", "5", *TINY])
    assert result.exit_code == 0, result.output
    assert re.search(r"val MAE, meV/atom\W+\d+", result.output) and re.search(r"n_val\W+4\b", result.output)
    assert "spread/error Spearman" in result.output
    return folder / "model"


def test_predict_reads_every_file_kind(composition_model, tmp_path):
    write_cif_zip(tmp_path / "cifs.zip")
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "NaF.cif").write_text(rocksalt(4.6, "Na", "F").to(fmt="cif"))
    (folder / "KCl.cif").write_text(cscl(3.8, "K", "Cl").to(fmt="cif"))
    write_extxyz(tmp_path / "frames.extxyz")
    write_entries(tmp_path / "entries.json.gz")
    expected = {"cifs.zip": ["KF", "MgO", "NaCl"], "cifs": ["KCl", "NaF"],
                "frames.extxyz": ["x-LiCl", "x-AgF"], "entries.json.gz": ["e-NaCl", "e-CuF"]}
    for name, ids in expected.items():
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["predict", str(composition_model), str(tmp_path / name), "-o", str(out)])
        assert result.exit_code == 0, result.output
        rows = read_csv(out)
        assert [row["id"] for row in rows] == ids
        assert_no_nan(rows)
    zipped = {row["id"]: row for row in read_csv(tmp_path / "cifs.zip.csv")}
    assert "Mg" in zipped["MgO"]["error"] and zipped["MgO"]["formula"] == "MgO"
    assert not zipped["NaCl"]["error"] and not zipped["KF"]["error"]
    result = runner.invoke(app, ["predict", str(composition_model), str(tmp_path / "cifs.zip")])
    assert result.exit_code == 0, result.output
    assert "predicted 2, refused 1" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["id"] for row in rows] == ["KF", "MgO", "NaCl"]


def test_malformed_items_are_counted_not_fatal(composition_model, tmp_path):
    write_cif_zip(tmp_path / "cifs.zip", extra=malformed())
    structures, skipped = read_structures(tmp_path / "cifs.zip")
    assert sorted(key for key, _ in structures) == ["KF", "MgO", "NaCl"]
    assert skipped == {"non-finite": 1, "unparseable": 1, "not a structure file": 1}
    result = runner.invoke(app, ["predict", str(composition_model), str(tmp_path / "cifs.zip"),
                                 "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    assert "skipped 3: 1 × non-finite, 1 × unparseable, 1 × not a structure file" in result.output
    assert len(read_csv(tmp_path / "out.csv")) == 3

    frames = [AseAtomsAdaptor.get_atoms(rocksalt(5.6, "Na", "Cl")) for _ in range(2)]
    frames[1].positions[0] = np.nan
    write(tmp_path / "frames.extxyz", frames, format="extxyz")
    structures, skipped = read_structures(tmp_path / "frames.extxyz")
    assert [key for key, _ in structures] == ["0"] and skipped == {"non-finite": 1}


def test_structure_gnn_refuses_with_a_reason(tmp_path):
    write_training_csv(tmp_path / "train.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "-o", str(tmp_path / "gnn"),
                                 "--kind", "gnome", "--epochs", "3", "--cutoff", "4.0", *TINY])
    assert result.exit_code == 0, result.output
    assert "gnome-structure-ensemble" in result.output
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "NaCl.cif").write_text(rocksalt(5.6, "Na", "Cl").to(fmt="cif"))
    (folder / "squashed.cif").write_text(cscl(0.5, "Na", "Cl").to(fmt="cif"))
    (folder / "MgO.cif").write_text(rocksalt(4.2, "Mg", "O").to(fmt="cif"))
    result = runner.invoke(app, ["predict", str(tmp_path / "gnn"), str(folder), "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in read_csv(tmp_path / "out.csv")}
    assert_no_nan(list(rows.values()))
    assert not rows["NaCl"]["error"]
    assert "apart" in rows["squashed"]["error"] and "Mg" in rows["MgO"]["error"]
    assert "predicted 1, refused 2" in result.output


def test_bad_inputs_exit_2_with_a_message(composition_model, tmp_path):
    (tmp_path / "structures.txt").write_text("NaCl")
    result = runner.invoke(app, ["predict", str(composition_model), str(tmp_path / "structures.txt")])
    assert result.exit_code == 2 and "unknown file type" in result.output and ".extxyz" in result.output
    write_training_csv(tmp_path / "train.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "-o", str(tmp_path / "m"),
                                 "--target", "band_gap"])
    assert result.exit_code == 2
    assert "band_gap" in result.output and "formation_energy_per_atom" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "-o", str(tmp_path / "m"), "--members", "0"])
    assert result.exit_code == 2 and "members" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path / "train.csv")])
    assert result.exit_code == 2 and "not a saved model" in result.output


def test_read_labelled_from_entries_extxyz_and_csv(tmp_path):
    write_entries(tmp_path / "entries.json")
    ids, structures, energies = read_labelled(tmp_path / "entries.json", "energy_per_atom")
    assert ids == ["e-NaCl", "e-CuF"] and len(structures) == 2
    np.testing.assert_allclose(energies, [-3.5, -4.0])  # corrected energy per atom
    write_extxyz(tmp_path / "frames.extxyz")
    ids, _, energies = read_labelled(tmp_path / "frames.extxyz", "energy_per_atom")
    assert ids == ["x-LiCl", "x-AgF"] and np.allclose(energies, -3.0)
    with pytest.raises(ValueError, match="available: energy_per_atom"):
        read_labelled(tmp_path / "frames.extxyz", "formation_energy_per_atom")
    write_training_csv(tmp_path / "train.csv")
    ids, structures, energies = read_labelled(tmp_path / "train.csv", "formation_energy_per_atom")
    assert len(ids) == len(structures) == len(energies) == 20 and ids[0] == "rs-LiF"
    (tmp_path / "NaCl.cif").write_text(rocksalt(5.6, "Na", "Cl").to(fmt="cif"))
    with pytest.raises(ValueError, match="needs energies"):
        read_labelled(tmp_path / "NaCl.cif", "energy_per_atom")


def test_read_labelled_reads_the_mp20_subset(shared_data):
    path = shared_data / "mp20_subset" / "train.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ids, structures, energies = read_labelled(path, "formation_energy_per_atom")
    assert len(ids) == len(structures) == len(energies) == 847
    assert ids[0] == "mp-3507" and np.all(np.isfinite(energies))
