"""The `vasp` oracle and MP2020 compatibility: real VASP outputs, MP inputs, job scripts run by bash."""

import copy
import gzip
import json
import py_compile
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Lattice, Structure
from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
from pymatgen.entries.computed_entries import ComputedEntry
from pymatgen.io.vasp import Incar, Poscar

from gnome_loop.compatibility import mp2020_correct, mp2020_correct_all
from gnome_loop.oracle import read_result, run_job, write_job
from gnome_loop.oracle.base import EXIT_MARKER, RESULT_FILE, SCRIPT_FILE, job_script
from gnome_loop.oracle.vasp import (VaspOracle, custodian_script, is_finished, parse_vasp_dir, run_body,
                                    write_vasp_inputs)

SI_ENERGIES = {"Si_mprelaxset_atomate": -10.84671647, "Si_double_relax_atomate": -10.84687704,
               "Si_relax_gga": -10.84147246}
MP_U = {"Co": 3.32, "Fe": 5.3, "Mn": 3.9, "Ni": 6.2}
ROCKSALT = [[0, 0, 0], [0.5, 0.5, 0.5]]
FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]

FAKE_VASP = '''\
"""A stand-in for VASP: records its arguments, writes the outputs of a real Si relaxation."""
import gzip, json, shutil, sys
from pathlib import Path

Path("args.json").write_text(json.dumps(sys.argv[1:]))
for name in ("vasprun.xml", "CONTCAR", "OUTCAR", "OSZICAR"):
    with gzip.open(Path({source!r}) / (name + ".gz"), "rb") as src, open(name, "wb") as dst:
        shutil.copyfileobj(src, dst)
'''


@pytest.fixture
def outputs(shared_data) -> Path:
    return shared_data / "vasp_outputs"


@pytest.fixture
def fake_vasp(tmp_path, outputs) -> str:
    """The command of a fake VASP that leaves Si_mprelaxset_atomate's outputs in the current folder."""
    script = tmp_path / "fake vasp.py"  # a space in the path: the command must be quoted to work
    script.write_text(FAKE_VASP.format(source=str(outputs / "Si_mprelaxset_atomate")))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


@pytest.fixture(autouse=True)
def no_potcars(monkeypatch):
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)


def si_structure(outputs: Path) -> Structure:
    return Poscar.from_file(outputs / "Si_mprelaxset_atomate" / "POSCAR.gz", check_for_potcar=False).structure


def run_bash(body: str, folder: Path) -> int:
    return subprocess.run(["bash", "-c", body], cwd=folder, capture_output=True).returncode


# --- parsing real VASP outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SI_ENERGIES))
def test_si_runs_parse_as_gga_with_their_energies(outputs, name):
    outcome = parse_vasp_dir(outputs / name, "Si")
    assert outcome.ok, outcome.reason
    assert outcome.run_type == "GGA" and outcome.formula == "Si"
    assert outcome.energy_uncorrected == pytest.approx(SI_ENERGIES[name], abs=1e-8)
    assert outcome.energy_corrected == outcome.energy_uncorrected  # MP2020 corrects nothing for Si
    assert outcome.energy_per_atom == pytest.approx(SI_ENERGIES[name] / 2)
    assert outcome.entry.entry_id and outcome.entry.correction == 0
    trajectory = outcome.trajectory
    assert trajectory["energies"][-1] == pytest.approx(outcome.energy_uncorrected, abs=1e-8)
    assert trajectory["converged"] is True
    assert {len(trajectory[key]) for key in ("energies", "forces", "stresses", "cells", "positions")} == {
        len(trajectory["energies"])}
    assert outcome.summary() == {"ok": True, "reason": None, "formula": "Si", "energy_corrected":
                                 outcome.energy_corrected, "energy_per_atom": outcome.energy_per_atom,
                                 "run_type": "GGA"}
    json.dumps(outcome.summary())
    json.dumps(trajectory)


def test_double_relax_trajectory_joins_both_runs(outputs):
    outcome = parse_vasp_dir(outputs / "Si_double_relax_atomate")
    energies = outcome.trajectory["energies"]
    assert len(energies) == 3 + 1
    assert energies[2] == pytest.approx(-10.84681056, abs=1e-8)  # the end of relax1
    assert energies[3] == pytest.approx(-10.84687704, abs=1e-8)  # relax2, the final energy


def test_stress_is_ase_voigt_in_ev_per_cubic_angstrom(outputs):
    outcome = parse_vasp_dir(outputs / "FeO_relax_ggau")
    with gzip.open(outputs / "FeO_relax_ggau" / "vasprun.xml.gz", "rt") as handle:
        text = handle.read()
    # the last <varray name="stress"> of the file, in kBar
    block = text[text.rindex('<varray name="stress" >'):].split("</varray>")[0]
    kbar = [[float(x) for x in line.split("<v>")[1].split("</v>")[0].split()] for line in block.splitlines()[1:4]]
    voigt = [kbar[0][0], kbar[1][1], kbar[2][2], kbar[1][2], kbar[0][2], kbar[0][1]]
    expected = [-0.1 * value / 160.21766208 for value in voigt]
    assert outcome.trajectory["stresses"][-1] == pytest.approx(expected, abs=1e-12)
    assert len(outcome.trajectory["forces"][-1]) == len(outcome.structure) and len(outcome.trajectory["energies"]) == 28


def test_feo_with_non_mp_u_and_potcar_is_rejected(outputs):
    outcome = parse_vasp_dir(outputs / "FeO_relax_ggau", "FeO")
    assert not outcome.ok and outcome.entry is None and outcome.energy_corrected is None
    assert outcome.reason.startswith("not MP-compatible")
    assert "U(Fe)=4.0 where MP2020 expects 5.3" in outcome.reason
    assert "POTCAR Fe where MP uses Fe_pv" in outcome.reason
    assert outcome.run_type == "GGA+U" and outcome.energy_uncorrected == pytest.approx(-28.21851457)


def test_electronically_unconverged_run_is_rejected(outputs):
    outcome = parse_vasp_dir(outputs / "VO_unconverged_electronic", "V2O5")
    assert not outcome.ok
    assert outcome.reason.startswith("not converged electronically")
    assert "ionic step 5" in outcome.reason and "NELM=100" in outcome.reason
    assert outcome.trajectory["converged"] is False


def test_truncated_vasprun_names_the_formula_from_atominfo(outputs, tmp_path):
    shutil.copy(outputs / "truncated_vasprun" / "vasprun.xml.gz", tmp_path)  # no POSCAR to fall back on
    outcome = parse_vasp_dir(tmp_path)
    assert not outcome.ok and outcome.reason.startswith("truncated vasprun.xml")
    assert "Premature end of data" in outcome.reason
    assert outcome.formula == "V2O5"


def test_missing_vasprun_and_composition_mismatch(outputs, tmp_path):
    shutil.copy(outputs / "Si_mprelaxset_atomate" / "POSCAR.gz", tmp_path)
    outcome = parse_vasp_dir(tmp_path)
    assert outcome.reason == f"no vasprun.xml in {tmp_path}" and outcome.formula == "Si"
    mismatch = parse_vasp_dir(outputs / "Si_relax_gga", "SiO2")
    assert not mismatch.ok and mismatch.reason.startswith("composition mismatch")
    assert "Si" in mismatch.reason and "SiO2" in mismatch.reason


def test_is_finished_reads_the_final_vasprun_or_the_exit_marker(outputs, tmp_path):
    assert is_finished(outputs / "Si_mprelaxset_atomate", double_relax=False)
    assert is_finished(outputs / "Si_double_relax_atomate", double_relax=True)
    assert not is_finished(outputs / "Si_double_relax_atomate", double_relax=False)
    assert not is_finished(outputs / "truncated_vasprun", double_relax=False)
    with gzip.open(outputs / "Si_relax_gga" / "vasprun.xml.gz", "rb") as handle:
        text = handle.read()
    (tmp_path / "vasprun.xml").write_bytes(text[: len(text) // 2])
    assert not is_finished(tmp_path, double_relax=False)
    (tmp_path / "vasprun.xml").write_bytes(text)
    assert is_finished(tmp_path, double_relax=False)
    (tmp_path / "vasprun.xml").unlink()
    (tmp_path / EXIT_MARKER).write_text("1\n")
    assert is_finished(tmp_path, double_relax=False)


# --- MP2020 compatibility ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Failed to guess oxidation states")
def test_mp2020_matches_pymatgen_on_li_fe_o(shared_data):
    entries = loadfn(shared_data / "mp_chemsys" / "Li-Fe-O_uncorrected.json.gz")
    assert len(entries) == 375
    before = [entry.correction for entry in entries]  # most carry stale MP2020 adjustments, to be replaced
    kept, rejected = mp2020_correct_all(entries)
    standard = MaterialsProject2020Compatibility().process_entries(copy.deepcopy(entries))
    assert rejected == [] and {e.entry_id for e in kept} == {e.entry_id for e in standard}
    assert [entry.correction for entry in entries] == before  # the inputs are left alone
    ours, theirs = PhaseDiagram(kept), PhaseDiagram(standard)
    reference = {entry.entry_id: theirs.get_e_above_hull(entry) for entry in standard}
    for entry in kept:
        assert ours.get_e_above_hull(entry) == pytest.approx(reference[entry.entry_id], abs=1e-6)
    again, reason = mp2020_correct(kept[0])  # idempotent: earlier adjustments are cleared first
    assert reason is None and again.energy == pytest.approx(kept[0].energy)


def entry(formula: str, run_type: str = "GGA", hubbards: dict | None = None,
          potcars: tuple[str, ...] = ()) -> ComputedEntry:
    """An uncorrected entry with the parameters MP2020 checks."""
    spec = [{"titel": f"PAW_PBE {symbol} 01Jan2000", "hash": None} for symbol in potcars]
    return ComputedEntry(formula, -10.0, entry_id=formula, parameters={
        "run_type": run_type, "hubbards": hubbards or {}, "potcar_spec": spec})


def test_mp2020_names_every_problem():
    corrected, reason = mp2020_correct(entry("Fe2O3", "GGA+U", {"Fe": 5.3}, ("Fe_pv", "O")))
    assert reason is None and corrected.correction < 0  # oxide and GGA+U mixing corrections
    cases = [
        (entry("Fe2O3", "R2SCAN", {}, ("Fe_pv", "O")), "run type 'R2SCAN' (MP2020 corrects GGA and GGA+U only)"),
        (entry("Fe2O3", "GGA", {}, ("Fe_pv", "O")), "no U on Fe where MP2020 expects U(Fe)=5.3"),
        (entry("Fe", "GGA+U", {"Fe": 5.3}, ("Fe_pv",)), "U(Fe)=5.3 where MP2020 expects no U (plain GGA)"),
        (entry("FeO", "GGA+U", {"Fe": 4.0}, ("Fe", "O")),
         "U(Fe)=4.0 where MP2020 expects 5.3; POTCAR Fe where MP uses Fe_pv"),
        (entry("LiO", "GGA", {}, ("O",)), "no POTCAR for Li where MP uses Li_sv"),
    ]
    for bad, problem in cases:
        assert mp2020_correct(bad) == (None, f"not MP-compatible: {problem}")
    kept, rejected = mp2020_correct_all([entry("Fe", potcars=("Fe_pv",)), *(bad for bad, _ in cases)])
    assert [e.entry_id for e in kept] == ["Fe"] and len(rejected) == len(cases)


# --- inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metal", sorted(MP_U))
def test_oxide_inputs_have_mp_u_and_magnetic_moments(tmp_path, metal):
    rocksalt = Structure(Lattice.cubic(4.3), [metal, "O"], ROCKSALT)
    write_vasp_inputs(tmp_path, rocksalt)
    incar = Incar.from_file(tmp_path / "INCAR")
    poscar = Poscar.from_file(tmp_path / "POSCAR", check_for_potcar=False)
    assert incar["LDAU"] is True
    assert dict(zip(poscar.site_symbols, incar["LDAUU"]))[metal] == MP_U[metal]
    moments = dict(zip((site.specie.symbol for site in poscar.structure), incar["MAGMOM"]))
    assert moments[metal] > 0
    assert not (tmp_path / "POTCAR").exists() and (tmp_path / "KPOINTS").exists()


def test_metal_gets_no_u_and_potcar_spec_names_mp_choices(tmp_path):
    (tmp_path / "cu").mkdir()
    write_vasp_inputs(tmp_path / "cu", Structure(Lattice.cubic(3.6), ["Cu"] * 4, FCC))
    assert not Incar.from_file(tmp_path / "cu" / "INCAR").get("LDAU", False)
    lifeo = Structure(Lattice.cubic(4.2), ["Li", "Fe", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0]])
    write_vasp_inputs(tmp_path, lifeo, incar={"NSW": 5})
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["Li_sv", "Fe_pv", "O"]
    assert not (tmp_path / "POTCAR").exists()
    assert Incar.from_file(tmp_path / "INCAR")["NSW"] == 5


def test_custodian_script_compiles_and_holds_the_command(tmp_path):
    oracle = VaspOracle("srun -n 4 'vasp std'", double_relax=True, custodian=True)
    body = oracle.write_inputs(tmp_path, Structure(Lattice.cubic(5.4), ["Si", "Si"], [[0, 0, 0], [0.25] * 3]))
    assert body.startswith("python run_custodian.py")
    script = tmp_path / "run_custodian.py"
    py_compile.compile(str(script), doraise=True)
    text = script.read_text()
    assert "['srun', '-n', '4', 'vasp std']" in text and "double_relaxation_run" in text
    for handler in ("VaspErrorHandler", "UnconvergedErrorHandler", "NonConvergingErrorHandler",
                    "PotimErrorHandler", "PositiveEnergyErrorHandler", "FrozenJobErrorHandler"):
        assert f"{handler}()" in text
    assert "double_relaxation_run" not in custodian_script("vasp_std", double_relax=False)


# --- job scripts -----------------------------------------------------------------------------------------


def test_command_words_are_never_shell_code(tmp_path, fake_vasp):
    assert run_bash(run_body("vasp_std; touch INJECTED", False, False), tmp_path) == 127  # no program 'vasp_std;'
    assert not (tmp_path / "INJECTED").exists()
    extra = """ "two words" "it's" ';' '$(touch INJECTED)' $(touch INJECTED2) ; touch INJECTED3 `touch INJECTED4`"""
    assert run_bash(run_body(fake_vasp + extra, False, False), tmp_path) == 0
    assert not list(tmp_path.glob("INJECTED*"))
    assert json.loads((tmp_path / "args.json").read_text()) == shlex.split(extra)
    assert parse_vasp_dir(tmp_path, "Si").ok


def test_failing_vasp_status_is_the_body_status(tmp_path):
    failing = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(3)'"
    assert run_bash(run_body(failing, False, False), tmp_path) == 3
    assert run_bash(run_body(failing, True, False), tmp_path) == 3
    assert not list(tmp_path.glob("*.relax1"))  # the second run never started


def test_double_relax_body_leaves_relax1_and_relax2(tmp_path, fake_vasp, outputs):
    (tmp_path / "INCAR").write_text("NSW = 99\n")
    shutil.copy(outputs / "Si_mprelaxset_atomate" / "POSCAR.gz", tmp_path / "POSCAR.gz")
    assert run_bash(run_body(fake_vasp, True, False), tmp_path) == 0
    for name in ("INCAR", "OUTCAR", "OSZICAR", "vasprun.xml", "CONTCAR"):
        assert (tmp_path / f"{name}.relax1").exists() and (tmp_path / f"{name}.relax2").exists()
    assert not (tmp_path / "vasprun.xml").exists()
    assert (tmp_path / "POSCAR").read_text() == (tmp_path / "CONTCAR.relax1").read_text()
    assert is_finished(tmp_path, double_relax=True)
    outcome = parse_vasp_dir(tmp_path, "Si")
    assert outcome.ok and len(outcome.trajectory["energies"]) == 3 + 3
    assert outcome.energy_corrected == pytest.approx(-10.84671647, abs=1e-8)


def vasp_job(jobdir: Path, structure: Structure, command: str) -> None:
    write_job(jobdir, "j-1", "c-1", structure, {"kind": "vasp", "vasp": {"command": command}}, attempt=1)


def test_vasp_job_folder_end_to_end(tmp_path, fake_vasp, outputs):
    jobdir = tmp_path / "job"
    vasp_job(jobdir, si_structure(outputs), fake_vasp)
    assert (jobdir / "POTCAR.spec").read_text().split() == ["Si"]
    assert read_result(jobdir) is None  # not run yet
    assert subprocess.run(["bash", str(jobdir / "run.sh")], capture_output=True).returncode == 0
    result = read_result(jobdir)
    assert result.ok, result.error
    assert result.energy == pytest.approx(-10.84671647, abs=1e-8) and result.attempt == 1 and result.steps == 3
    assert result.info["run_type"] == "GGA" and result.info["potcar_symbols"] == ["PAW_PBE Si 05Jan2001"]
    assert result.info["correction"] == 0 and result.info["exit_status"] == 0
    assert (jobdir / RESULT_FILE).exists()
    assert read_result(jobdir).energy == result.energy

    vasp_job(tmp_path / "again", si_structure(outputs), fake_vasp)
    in_process = run_job(tmp_path / "again")
    assert in_process.ok and in_process.energy == pytest.approx(-10.84671647, abs=1e-8)
    assert (tmp_path / "again" / RESULT_FILE).exists()


def test_unfinished_and_failed_job_folders(tmp_path, outputs):
    structure = si_structure(outputs)
    unfinished = tmp_path / "unfinished"
    vasp_job(unfinished, structure, "vasp_std")
    with gzip.open(outputs / "Si_relax_gga" / "vasprun.xml.gz", "rb") as handle:
        (unfinished / "vasprun.xml").write_bytes(handle.read()[:20000])
    assert read_result(unfinished) is None and not (unfinished / RESULT_FILE).exists()

    failed = tmp_path / "failed"
    vasp_job(failed, structure, f"""{shlex.quote(sys.executable)} -c "print('VASP crashed'); raise SystemExit(2)" """)
    assert subprocess.run(["bash", str(failed / "run.sh")], capture_output=True).returncode == 2
    result = read_result(failed)
    assert not result.ok and result.error.startswith("no vasprun.xml in")
    assert "status 2" in result.error and "VASP crashed" in result.error


def test_run_kills_vasp_at_the_time_limit(tmp_path, outputs):
    oracle = VaspOracle("sleep 30", max_seconds=0.5)
    (tmp_path / SCRIPT_FILE).write_text(job_script("j-1", 1, oracle.write_inputs(tmp_path, si_structure(outputs))))
    result = oracle.run(tmp_path, si_structure(outputs))
    assert not result.ok and result.error.startswith("time limit")
    assert not (tmp_path / EXIT_MARKER).exists()  # run.sh was killed with the program it ran


# --- the command line and a campaign run by hand ------------------------------------------------------------


def test_parse_vasp_prints_what_the_campaign_would_make_of_a_folder(outputs):
    from typer.testing import CliRunner

    from gnome_loop.cli import app

    runner = CliRunner()
    good = json.loads(runner.invoke(app, ["parse-vasp", str(outputs / "Si_relax_gga")]).stdout)
    assert good == {"ok": True, "reason": None, "formula": "Si", "energy_corrected": pytest.approx(-10.84147246),
                    "energy_per_atom": pytest.approx(-10.84147246 / 2), "run_type": "GGA"}
    bad = json.loads(runner.invoke(app, ["parse-vasp", str(outputs / "FeO_relax_ggau")]).stdout)
    assert bad["ok"] is False and bad["energy_corrected"] is None and bad["formula"] == "FeO"
    assert bad["reason"].startswith("not MP-compatible") and "U(Fe)=4.0" in bad["reason"]
    assert bad["run_type"] == "GGA+U"
    mismatch = runner.invoke(app, ["parse-vasp", str(outputs / "Si_relax_gga"), "--formula", "SiO2"])
    assert json.loads(mismatch.stdout)["reason"].startswith("composition mismatch")
    missing = runner.invoke(app, ["parse-vasp", str(outputs / "no-such-folder")])
    assert missing.exit_code == 2


def test_manual_vasp_campaign_ingests_folders_where_vasp_ran_by_hand(tmp_path, outputs):
    """The manifest lists run.sh; a user may also run VASP in the folder directly (no markers)."""
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import parse_config

    config = parse_config({
        "rounds": 0, "chemical_space": {"elements": ["Si"], "max_elements": 1}, "model": {"kind": "linear"},
        "oracle": {"kind": "vasp", "vasp": {"command": "vasp_std"}}, "scheduler": {"kind": "manual"}})
    campaign = Campaign.create(config, tmp_path / "campaign")
    outcome = campaign.run()
    assert outcome.status == "waiting" and outcome.waiting_jobs == 5  # ref-Si, its alpha-As template, 3 prototypes
    manifest = json.loads((tmp_path / "campaign" / "jobs" / "manifest.json").read_text())
    assert len(manifest) == 5
    for item in manifest:
        folder = Path(item["jobdir"])
        assert shlex.split(item["command"]) == ["bash", str(folder / SCRIPT_FILE)]
        assert {"INCAR", "KPOINTS", "POSCAR", "POTCAR.spec", SCRIPT_FILE, "job.json"} <= {p.name for p in folder.iterdir()}
    ref = next(Path(item["jobdir"]) for item in manifest if item["jobdir"].endswith("j-ref-Si"))
    for path in (outputs / "Si_relax_gga").iterdir():  # what VASP, run by hand, leaves behind
        shutil.copy(path, ref / path.name)
    half = next(Path(item["jobdir"]) for item in manifest if Path(item["jobdir"]) != ref)
    with gzip.open(outputs / "Si_relax_gga" / "vasprun.xml.gz", "rb") as source:
        (half / "vasprun.xml").write_bytes(source.read()[:20000])  # still running: no marker, cut-off file

    outcome = Campaign(tmp_path / "campaign").run()
    assert outcome.status == "waiting" and outcome.waiting_jobs == 4
    campaign = Campaign(tmp_path / "campaign")
    # MP's Si enters the hull as it is (VASP is on MP's scale); ref-Si is a parent, evaluated by hand
    (entry,) = [e for e in campaign.store.entries(with_structure=False) if e["candidate_id"]]
    assert entry["candidate_id"] == "ref-Si" and entry["energy_corrected"] == pytest.approx(-10.84147246)
    assert entry["scale"] == "mp2020"
    listed = [Path(item["jobdir"]) for item in json.loads((tmp_path / "campaign" / "jobs" / "manifest.json").read_text())]
    assert ref not in listed and half in listed


def test_markers_of_another_attempt_and_a_running_script_prove_nothing(tmp_path, outputs):
    jobdir = tmp_path / "job"
    vasp_job(jobdir, si_structure(outputs), "vasp_std")
    (jobdir / EXIT_MARKER).write_text("1 attempt 0\n")  # a stale script of an earlier attempt ended late
    assert read_result(jobdir) is None
    (jobdir / "gnome_loop.started").write_text("attempt 1 node7 123 0\n")  # this attempt runs (e.g. custodian)
    for path in (outputs / "Si_relax_gga").iterdir():  # ... and left a complete vasprun between two VASP runs
        shutil.copy(path, jobdir / path.name)
    assert read_result(jobdir) is None
    (jobdir / EXIT_MARKER).write_text("0 attempt 1\n")
    assert read_result(jobdir).ok


def test_double_relaxation_needs_its_second_run_and_a_cut_gzip_is_truncated(tmp_path, outputs):
    jobdir = tmp_path / "job"
    write_job(jobdir, "j-1", "c-1", si_structure(outputs),
              {"kind": "vasp", "vasp": {"command": "vasp_std", "double_relax": True}}, attempt=1)
    for path in (outputs / "Si_mprelaxset_atomate").iterdir():  # one relaxation only, as if relax1 was never moved
        shutil.copy(path, jobdir / path.name)
    (jobdir / EXIT_MARKER).write_text("1 attempt 1\n")
    result = read_result(jobdir)
    assert not result.ok and result.error.startswith("double relaxation: the second run left no vasprun.xml.relax2")

    cut = tmp_path / "cut"
    cut.mkdir()
    data = (outputs / "Si_relax_gga" / "vasprun.xml.gz").read_bytes()
    (cut / "vasprun.xml.gz").write_bytes(data[: len(data) // 2])  # cut at the byte level, mid-stream
    outcome = parse_vasp_dir(cut)
    assert not outcome.ok and outcome.reason.startswith("truncated vasprun.xml")
    assert parse_vasp_dir(outputs / "Si_relax_gga", "Si2").ok  # a formula need not be reduced
