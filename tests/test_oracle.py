"""The `ase` oracle and the job-folder protocol: relaxations, round trips, failures."""

import json
import math

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

from gnome_loop.config import OracleConfig
from gnome_loop.oracle import AseRelaxOracle, make_oracle, read_result, run_job, write_job
from gnome_loop.oracle.base import explosion
from tests.helpers import FCC



def fcc_cu(a: float = 3.8) -> Structure:
    return Structure(Lattice.cubic(a), ["Cu"] * 4, FCC)


class FakeCalculator(Calculator):
    """Zero forces and stress, energy 0: subclasses break one thing each."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {
            "energy": self.energy(self.atoms),
            "forces": np.zeros((len(self.atoms), 3)),
            "stress": self.stress(self.atoms),
        }

    def energy(self, atoms):
        return 0.0

    def stress(self, atoms):
        return np.zeros(6)


class RaisingCalculator(FakeCalculator):
    def energy(self, atoms):
        raise RuntimeError("the calculator broke on purpose")


class NanCalculator(FakeCalculator):
    def energy(self, atoms):
        return float("nan")


class ExpandingCalculator(FakeCalculator):
    """Energy falls without bound as the cell grows: a relaxation that blows up."""

    def energy(self, atoms):
        return -atoms.get_volume()

    def stress(self, atoms):
        return np.array([-1.0, -1.0, -1.0, 0.0, 0.0, 0.0])


def run_with(tmp_path, calculator: str, structure: Structure | None = None, max_steps: int = 300):
    oracle = OracleConfig(calculator=calculator, max_steps=max_steps).model_dump()
    write_job(tmp_path / "job", "j-1", "c-1", structure or fcc_cu(), oracle, attempt=1)
    return run_job(tmp_path / "job")


def test_emt_relaxes_strained_copper():
    fmax = 0.01
    structure = fcc_cu(3.8)
    structure.translate_sites([0], [0.05, 0.0, 0.0], frac_coords=False)  # forces worth relaxing
    oracle = AseRelaxOracle("emt", fmax=fmax, max_steps=300, relax_cell=True)
    result = oracle.relax(structure)

    assert result.ok and result.error is None
    trajectory = result.trajectory
    assert trajectory["converged"]
    assert len(trajectory["energies"]) == result.steps + 1  # the initial point and every step
    assert trajectory["energies"][-1] == pytest.approx(result.energy)
    assert result.energy < trajectory["energies"][0]
    assert np.linalg.norm(trajectory["forces"][-1], axis=1).max() < fmax
    assert len(trajectory["stresses"][-1]) == 6
    assert np.allclose(trajectory["cells"][-1], result.structure.lattice.matrix)
    assert np.array(trajectory["positions"]).shape == (result.steps + 1, 4, 3)
    assert result.structure.lattice.abc == pytest.approx((3.6, 3.6, 3.6), abs=0.015)
    assert oracle.name == "ase:emt" and oracle.scale == "emt"


def test_fixed_cell_relaxation_keeps_the_lattice():
    result = AseRelaxOracle("emt", fmax=0.05, max_steps=50, relax_cell=False).relax(fcc_cu(3.8))
    assert result.ok
    assert result.structure.lattice.abc == pytest.approx((3.8, 3.8, 3.8))


def test_unconverged_relaxation_is_not_a_failure():
    result = AseRelaxOracle("emt", fmax=1e-6, max_steps=3, relax_cell=True).relax(fcc_cu(3.8))
    assert result.ok
    assert result.steps == 3
    assert result.trajectory["converged"] is False


def test_run_job_round_trip(tmp_path):
    jobdir = tmp_path / "jobs" / "r001" / "j-1"
    oracle = OracleConfig(calculator="emt").model_dump()
    write_job(jobdir, "j-1", "c-1", fcc_cu(3.7), oracle, attempt=2)
    assert json.loads((jobdir / "job.json").read_text())["candidate_id"] == "c-1"
    assert read_result(jobdir) is None

    result = run_job(str(jobdir))
    assert result.ok and result.attempt == 2 and result.wall_s > 0
    stored = json.loads((jobdir / "result.json").read_text())
    assert stored["ok"] and stored["attempt"] == 2

    again = read_result(jobdir)
    assert again.energy == result.energy
    assert again.structure == result.structure
    assert again.trajectory == result.trajectory
    assert not list(jobdir.glob(".*"))  # no temporary files left behind


def test_raising_calculator_gives_a_failed_result(tmp_path):
    result = run_with(tmp_path, "tests.test_oracle:RaisingCalculator")
    assert not result.ok
    assert result.error == "RuntimeError: the calculator broke on purpose"
    assert result.attempt == 1
    assert read_result(tmp_path / "job").error == result.error


def test_nan_energy_gives_a_failed_result(tmp_path):
    result = run_with(tmp_path, "tests.test_oracle:NanCalculator")
    assert not result.ok
    assert result.error == "non-finite energy: nan"
    assert result.energy is None
    json.loads((tmp_path / "job" / "result.json").read_text(), parse_constant=pytest.fail)  # strict JSON


def test_exploding_cell_gives_a_failed_result(tmp_path):
    result = run_with(tmp_path, "tests.test_oracle:ExpandingCalculator", max_steps=30)
    assert not result.ok
    assert result.error.startswith("exploded cell: volume per atom changed by a factor")
    assert math.isfinite(result.energy)


def test_overlapping_atoms_give_a_failed_result(tmp_path):
    # the fake calculator leaves atoms where they are: 0.3 Å apart
    structure = Structure(Lattice.cubic(4.0), ["Cu", "Cu"], [[0, 0, 0], [0.075, 0, 0]])
    result = run_with(tmp_path, "tests.test_oracle:FakeCalculator", structure=structure)
    assert not result.ok
    assert result.error.startswith("exploded cell: overlapping-atoms")


def test_unknown_calculator_and_oracle_kind(tmp_path):
    result = run_with(tmp_path, "tests.test_oracle:NoSuchCalculator")
    assert not result.ok and result.error.startswith("AttributeError")
    with pytest.raises(ValueError, match="unknown oracle kind 'gaussian'"):
        make_oracle({"kind": "gaussian"})


def test_make_oracle_from_config():
    oracle = make_oracle(OracleConfig(calculator="emt", fmax=0.02, max_steps=7, energy_scale="my-emt"))
    assert isinstance(oracle, AseRelaxOracle)
    assert (oracle.fmax, oracle.max_steps, oracle.relax_cell, oracle.scale) == (0.02, 7, True, "my-emt")


def test_truncated_result_is_a_failed_result(tmp_path):
    result = run_with(tmp_path, "emt")
    path = tmp_path / "job" / "result.json"
    path.write_text(path.read_text()[:50])
    broken = read_result(tmp_path / "job")
    assert not broken.ok
    assert broken.error.startswith("unreadable result.json")
    assert result.ok


@pytest.mark.slow
def test_chgnet_relaxes_rock_salt():
    pytest.importorskip("chgnet")
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl = nacl.get_primitive_structure()
    oracle = make_oracle(OracleConfig(calculator="chgnet", fmax=0.05, max_steps=100))
    result = oracle.relax(nacl)
    assert result.ok and oracle.scale == "chgnet-mp2020"
    assert result.steps > 0 and result.energy < result.trajectory["energies"][0]
    per_atom = result.energy / len(result.structure)
    assert math.isfinite(per_atom)
    assert -4.5 < per_atom < -2.5
    assert len(result.trajectory["stresses"]) == len(result.trajectory["energies"])


def test_relaxation_past_its_time_limit_fails_with_the_reason(tmp_path):
    oracle = {"kind": "ase", "calculator": "emt", "fmax": 0.001, "max_steps": 500, "relax_cell": True,
              "max_seconds": 1e-6, "max_attempts": 1}
    write_job(tmp_path, "j-1", "c-1", fcc_cu(), oracle, attempt=1)
    result = run_job(tmp_path)
    assert not result.ok
    assert result.error.startswith("TimeoutError: time limit")


def scaled(structure: Structure, factor: float) -> Structure:
    """A copy with the volume multiplied by `factor`."""
    copy = structure.copy()
    copy.scale_lattice(structure.volume * factor)
    return copy


def test_explosion_rule_limits_the_volume_change_of_dense_cells_only():
    cu = fcc_cu(3.6)
    assert explosion(cu, scaled(cu, 2.9)) is None
    assert explosion(cu, scaled(cu, 3.5)) == "volume per atom changed by a factor 3.5"
    assert explosion(cu, scaled(cu, 0.3)) == "volume per atom changed by a factor 0.3"
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert explosion(nacl, scaled(nacl, 3.5)).startswith("volume per atom changed")  # one element is not vdW
    # one-atom cells and cells of molecule-forming elements only may swell: the quickstart's S grew 3.31 times
    sulfur = Structure(Lattice([[0, 1.41, 1.41], [1.41, 0, 1.41], [1.41, 1.41, 0]]), ["S"], [[0, 0, 0]])
    assert explosion(sulfur, scaled(sulfur, 3.31)) is None
    copper = Structure(Lattice.cubic(2.3), ["Cu"], [[0, 0, 0]])
    assert explosion(copper, scaled(copper, 3.5)) is None
    clo2 = Structure(Lattice.cubic(3.0), ["Cl", "O", "O"], [[0, 0, 0], [0.45, 0, 0], [0, 0.45, 0]])
    assert explosion(clo2, scaled(clo2, 5.0)) is None
    # ... but never beyond the absolute limits, nor onto each other
    runaway = explosion(sulfur, scaled(sulfur, 50.0))
    assert runaway.startswith("volume:") and "outside [2.0, 200.0]" in runaway
    collapsed = Structure(Lattice.cubic(6.0), ["S", "S"], [[0, 0, 0], [0.06, 0, 0]])
    assert explosion(clo2, collapsed).startswith("overlapping-atoms")


def test_a_molecule_in_a_box_keeps_its_box(tmp_path):
    # the campaign turns relax_cell off for molecules: even a potential that swells cells cannot swell it
    o2 = Structure(Lattice.cubic(7.0), ["O", "O"], [[0.5, 0.5, 0.41], [0.5, 0.5, 0.59]])
    oracle = OracleConfig(calculator="tests.test_oracle:ExpandingCalculator", max_steps=30, relax_cell=False)
    write_job(tmp_path, "j-1", "c-1", o2, oracle.model_dump(), attempt=1)
    result = run_job(tmp_path)
    assert result.ok, result.error
    assert result.structure.volume == pytest.approx(o2.volume)
