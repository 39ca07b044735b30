"""Oracle `vasp`: job folders for VASP with the Materials Project's settings.

`write_inputs` writes MPRelaxSet's inputs and the bash lines that run VASP once,
or twice as atomate2's double relaxation, optionally under custodian's error
handlers. The folder runs wherever it is (a cluster, a user's shell, or this
process); `collect` turns its finished outputs into a total energy on the
MP2020-corrected scale, or into a failed result that says exactly why the run
cannot join MP's hull (died mid-write, unconverged, wrong U or POTCAR, ...).
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import signal
import subprocess
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

import numpy as np
from lxml import etree
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry
from pymatgen.io.vasp import Poscar, Vasprun
from pymatgen.io.vasp.sets import MPRelaxSet

from gnome_loop.compatibility import mp2020_correct
from gnome_loop.oracle.base import SCRIPT_FILE, OracleResult, exit_status, has_started

VASP_LOG = "vasp.out"
CUSTODIAN_SCRIPT = "run_custodian.py"
CUSTODIAN_LOG = "custodian.out"
#: Outputs renamed NAME.relaxN after each run of a double relaxation (atomate2's names).
RELAX_OUTPUTS = ("INCAR", "OUTCAR", "OSZICAR", "vasprun.xml", "CONTCAR")
#: 1 eV/Å^3 in GPa.
EV_PER_A3_IN_GPA = 160.21766208
#: VASP's stress in kBar to eV/Å^3 with ASE's sign (VASP reports it with the opposite sign).
KBAR_TO_ASE_STRESS = -0.1 / EV_PER_A3_IN_GPA
#: Matrix indices of the Voigt order xx, yy, zz, yz, xz, xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def write_vasp_inputs(jobdir: Path, structure: Structure, incar: dict | None = None) -> None:
    """Write MPRelaxSet's INCAR, KPOINTS, POSCAR and POTCAR.spec (POTCAR when `PMG_VASP_PSP_DIR` is set).

    POTCARs are licensed and often absent where jobs are prepared: POTCAR.spec names
    MP's choice, one symbol a line, for whoever runs the job to assemble the POTCAR.
    """
    jobdir = Path(jobdir)
    inputs = MPRelaxSet(structure, user_incar_settings=incar or {})
    inputs.incar.write_file(jobdir / "INCAR")
    inputs.kpoints.write_file(jobdir / "KPOINTS")
    inputs.poscar.write_file(jobdir / "POSCAR")
    if os.environ.get("PMG_VASP_PSP_DIR"):
        inputs.potcar.write_file(jobdir / "POTCAR")
    else:
        (jobdir / "POTCAR.spec").write_text("\n".join(inputs.potcar_symbols) + "\n")


def command_words(command: str) -> list[str]:
    """The VASP command split like a shell would (quotes honoured, nothing expanded)."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise ValueError(f"the VASP command {command!r} cannot be split into words: {error}") from None
    if not words:
        raise ValueError("the VASP command is empty")
    return words


def run_body(command: str, double_relax: bool, custodian: bool) -> str:
    """The bash lines of `run.sh` that run VASP in the folder; their exit status is VASP's.

    Every word of `command` is quoted, so `;`, `$(...)` or quotes in the config are
    literal arguments and never shell code. A double relaxation runs VASP again from
    the first run's CONTCAR only if the first run succeeded.
    """
    if custodian:
        return f"python {CUSTODIAN_SCRIPT} > {CUSTODIAN_LOG} 2>&1"
    vasp = " ".join(shlex.quote(word) for word in command_words(command))
    if not double_relax:
        return f"{vasp} > {VASP_LOG} 2>&1"
    names = " ".join(RELAX_OUTPUTS)
    return (
        f"{vasp} > {VASP_LOG} 2>&1\n"
        "vasp_status=$?\n"
        'if [ "$vasp_status" -eq 0 ]; then\n'
        f'    for name in {names}; do if [ -e "$name" ]; then mv "$name" "$name.relax1"; fi; done\n'
        f"    cp CONTCAR.relax1 POSCAR && cp INCAR.relax1 INCAR && {vasp} >> {VASP_LOG} 2>&1\n"
        "    vasp_status=$?\n"
        f'    for name in {names}; do if [ -e "$name" ]; then mv "$name" "$name.relax2"; fi; done\n'
        "fi\n"
        '(exit "$vasp_status")\n'
    )


def custodian_script(command: str, double_relax: bool) -> str:
    """`run_custodian.py`: VASP under custodian's standard handlers (custodian must be installed where it runs)."""
    jobs = "VaspJob.double_relaxation_run(VASP_CMD)" if double_relax else "[VaspJob(VASP_CMD)]"
    return (
        '"""Run VASP under custodian\'s error handlers (written by gnome_loop)."""\n'
        "from custodian.custodian import Custodian\n"
        "from custodian.vasp.handlers import (FrozenJobErrorHandler, NonConvergingErrorHandler,\n"
        "                                     PositiveEnergyErrorHandler, PotimErrorHandler,\n"
        "                                     UnconvergedErrorHandler, VaspErrorHandler)\n"
        "from custodian.vasp.jobs import VaspJob\n\n"
        f"VASP_CMD = {command_words(command)!r}\n"
        "handlers = [VaspErrorHandler(), UnconvergedErrorHandler(), NonConvergingErrorHandler(),\n"
        "            PotimErrorHandler(), PositiveEnergyErrorHandler(), FrozenJobErrorHandler()]\n"
        f"Custodian(handlers, {jobs}, max_errors=5).run()\n"
    )


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _is_complete(path: Path) -> bool:
    """Whether a vasprun ends with `</modeling>`: only the tail is kept (a .gz is streamed through)."""
    try:
        with _open(path) as handle:
            if path.name.endswith(".gz"):
                tail = b""
                while chunk := handle.read(1 << 20):
                    tail = (tail + chunk)[-1024:]
            else:
                handle.seek(max(path.stat().st_size - 1024, 0))
                tail = handle.read()
    except (OSError, EOFError, zlib.error):  # absent, or a .gz still being written
        return False
    return tail.rstrip().endswith(b"</modeling>")


def is_finished(jobdir: Path, double_relax: bool) -> bool:
    """Whether `run.sh` of this attempt has ended, or VASP run by hand (no `run.sh`) left a
    complete final vasprun. While `run.sh` runs, a complete vasprun proves nothing: custodian
    may be about to run VASP again."""
    jobdir = Path(jobdir)
    if exit_status(jobdir) is not None:
        return True
    if has_started(jobdir):
        return False
    name = "vasprun.xml.relax2" if double_relax else "vasprun.xml"
    return any(_is_complete(jobdir / f"{name}{ext}") for ext in ("", ".gz"))


@dataclass
class VaspOutcome:
    """What a VASP folder holds: an MP2020-corrected entry, or the reason there is none.

    Energies are totals in eV; `trajectory` follows `OracleResult.trajectory`.
    """

    ok: bool
    reason: str | None = None
    formula: str | None = None
    run_type: str | None = None
    energy_corrected: float | None = None
    energy_uncorrected: float | None = None
    energy_per_atom: float | None = None
    entry: ComputedStructureEntry | None = None
    structure: Structure | None = None
    trajectory: dict = field(default_factory=dict)
    hubbards: dict = field(default_factory=dict)
    potcar_symbols: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """The JSON-able gist, for reports."""
        return {"ok": self.ok, "reason": self.reason, "formula": self.formula,
                "energy_corrected": self.energy_corrected, "energy_per_atom": self.energy_per_atom,
                "run_type": self.run_type}


def _vasprun_paths(jobdir: Path) -> list[Path]:
    """`vasprun.xml.relaxN[.gz]` in order of N when there are any, else `vasprun.xml[.gz]`."""
    relaxes: dict[int, Path] = {}
    for path in sorted(jobdir.glob("vasprun.xml.relax*")):  # a plain file sorts before its .gz
        match = re.fullmatch(r"vasprun\.xml\.relax(\d+)(\.gz)?", path.name)
        if match:
            relaxes.setdefault(int(match[1]), path)
    if relaxes:
        return [relaxes[n] for n in sorted(relaxes)]
    return [path for path in (jobdir / "vasprun.xml", jobdir / "vasprun.xml.gz") if path.exists()][:1]


def _atominfo_formula(path: Path) -> str | None:
    """The reduced formula from a vasprun's `<atominfo>`, parsed incrementally so a cut-off file gives it too."""
    symbols = None
    try:
        with _open(path) as handle:
            for _, element in ElementTree.iterparse(handle):
                if element.tag == "atominfo":
                    symbols = [rc.find("c").text.strip() for array in element.iter("array")
                               if array.get("name") == "atoms" for rc in array.iter("rc")]
                    break
    except (ElementTree.ParseError, OSError, EOFError, zlib.error):
        return None
    try:
        return Composition(Counter(symbols)).reduced_formula if symbols else None
    except ValueError:  # a symbol VASP wrote that is no element
        return None


def _input_formula(jobdir: Path) -> str | None:
    """The reduced formula from CONTCAR or POSCAR, None when neither can be read."""
    for name in ("CONTCAR", "CONTCAR.gz", "POSCAR", "POSCAR.gz"):
        path = jobdir / name
        if path.exists():
            try:
                return Poscar.from_file(path, check_for_potcar=False).structure.composition.reduced_formula
            except (ValueError, IndexError, OSError, EOFError):  # empty or half-written
                continue
    return None


def _step_energy(step: dict) -> float:
    """Total energy (sigma -> 0) of one ionic step, taken as `Vasprun.final_energy` takes the last one.

    Some VASP versions write e_0_energy = 0 into the ionic step; the energy is then
    e_fr_energy plus the last electronic step's e_0 - e_fr.
    """
    energy = step["e_0_energy"]
    if step.get("electronic_steps"):
        last = step["electronic_steps"][-1]
        rebuilt = np.round(last["e_0_energy"] - last["e_fr_energy"] + step["e_fr_energy"], 8)
        if abs(energy - rebuilt) > 1e-7:
            return float(rebuilt)
    return float(energy)


def _trajectory(runs: list[Vasprun]) -> dict:
    """Per-ionic-step energies, forces, stresses (Voigt, eV/Å^3, ASE's sign), cells and positions of all runs."""
    trajectory: dict = {"energies": [], "forces": [], "stresses": [], "cells": [], "positions": []}
    for run in runs:
        for step in run.ionic_steps:
            stress = np.asarray(step["stress"]) * KBAR_TO_ASE_STRESS
            trajectory["energies"].append(_step_energy(step))
            trajectory["forces"].append(np.asarray(step["forces"], dtype=float).tolist())
            trajectory["stresses"].append([float(stress[i, j]) for i, j in VOIGT])
            trajectory["cells"].append(step["structure"].lattice.matrix.tolist())
            trajectory["positions"].append(step["structure"].cart_coords.tolist())
    trajectory["converged"] = bool(runs[-1].converged)
    return trajectory


def parse_vasp_dir(jobdir: Path, expected_formula: str | None = None) -> VaspOutcome:
    """Read the final VASP run in `jobdir` and MP2020-correct it, or say why it cannot be used.

    A double relaxation's `vasprun.xml.relaxN` are read in order: the last one gives
    the energy and structure, all of them the trajectory.
    """
    jobdir = Path(jobdir)
    paths = _vasprun_paths(jobdir)
    if not paths:
        return VaspOutcome(ok=False, reason=f"no vasprun.xml in {jobdir}", formula=_input_formula(jobdir))
    runs = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pymatgen warns about POTCARs and unconverged runs
                runs.append(Vasprun(path, parse_dos=False, parse_eigen=False, parse_potcar_file=False))
        except (etree.XMLSyntaxError, ElementTree.ParseError, EOFError, zlib.error) as error:  # also a cut .gz
            return VaspOutcome(ok=False, reason=f"truncated vasprun.xml (the run died mid-write): {path.name}: {error}",
                               formula=_atominfo_formula(path) or _input_formula(jobdir))
    final = runs[-1]
    outcome = VaspOutcome(
        ok=False,
        formula=final.final_structure.composition.reduced_formula,
        run_type=final.run_type,
        energy_uncorrected=float(final.final_energy),
        structure=final.final_structure,
        trajectory=_trajectory(runs),
        hubbards={element: float(u) for element, u in final.hubbards.items()},
        potcar_symbols=list(final.potcar_symbols),
    )
    if not final.converged_electronic:
        outcome.reason = (f"not converged electronically: ionic step {len(final.ionic_steps)} of {paths[-1].name} "
                          f"ran out of electronic steps (NELM={final.parameters.get('NELM')})")
    elif not final.converged_ionic:
        forces = np.asarray(final.ionic_steps[-1]["forces"])
        outcome.reason = (f"not converged ionically: NSW={final.parameters.get('NSW')} ionic steps done, "
                          f"last max force {np.linalg.norm(forces, axis=1).max():.3f} eV/Å")
    elif expected_formula is not None and outcome.formula != Composition(expected_formula).reduced_formula:
        outcome.reason = f"composition mismatch: the run holds {outcome.formula}, the job expected {expected_formula}"
    else:
        outcome.entry, outcome.reason = mp2020_correct(final.get_computed_entry(inc_structure=True))
    if outcome.entry is not None:
        outcome.ok = True
        outcome.energy_corrected = float(outcome.entry.energy)
        outcome.energy_per_atom = outcome.energy_corrected / len(outcome.structure)
    return outcome


def _log_tail(jobdir: Path, size: int = 600) -> str:
    """'; ' and the end of VASP's (and custodian's) log, '' when there is none."""
    parts = []
    for name in (VASP_LOG, CUSTODIAN_LOG):
        path = jobdir / name
        if path.exists():
            with open(path, "rb") as handle:
                handle.seek(max(path.stat().st_size - size, 0))
                text = handle.read().decode(errors="replace").strip()
            if text:
                parts.append(f"{name} ends: {' | '.join(text.splitlines())}")
    return "".join(f"; {part}" for part in parts)


class VaspOracle:
    """VASP with MPRelaxSet settings, run by the folder's `run.sh`; energies are MP2020-corrected totals."""

    name = "vasp"

    def __init__(self, command: str, double_relax: bool = False, custodian: bool = False, incar: dict | None = None,
                 max_seconds: float | None = None, scale: str = "mp2020") -> None:
        self.command = command
        self.double_relax = double_relax
        self.custodian = custodian
        self.incar = dict(incar or {})
        self.max_seconds = max_seconds
        self.scale = scale

    def write_inputs(self, jobdir: Path, structure: Structure) -> str:
        """VASP's inputs (and `run_custodian.py` when custodian runs VASP)."""
        jobdir = Path(jobdir)
        write_vasp_inputs(jobdir, structure, self.incar)
        if self.custodian:
            (jobdir / CUSTODIAN_SCRIPT).write_text(custodian_script(self.command, self.double_relax))
        return run_body(self.command, self.double_relax, self.custodian)

    def run(self, jobdir: Path, structure: Structure) -> OracleResult:
        """Run `run.sh` now; after `max_seconds` it is killed with everything it started."""
        jobdir = Path(jobdir)
        process = subprocess.Popen(["bash", SCRIPT_FILE], cwd=jobdir, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=self.max_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return OracleResult(ok=False, error=f"time limit: VASP still ran after {self.max_seconds} s and was killed")
        except BaseException:  # Ctrl-C or a dying worker: VASP must not outlive the job that runs it
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        result = self.collect(jobdir, structure)
        if result is None:
            return OracleResult(ok=False, error=f"run.sh exited with status {process.returncode} and left no "
                                f"finished run{_log_tail(jobdir)}")
        return result

    def collect(self, jobdir: Path, structure: Structure) -> OracleResult | None:
        """The result of a finished run in `jobdir`, None while VASP has not finished."""
        jobdir = Path(jobdir)
        if not is_finished(jobdir, self.double_relax):
            return None
        outcome = parse_vasp_dir(jobdir, structure.composition.reduced_formula)
        if self.double_relax and outcome.ok and not _vasprun_paths(jobdir)[-1].name.startswith("vasprun.xml.relax2"):
            outcome.ok, outcome.reason = False, "double relaxation: the second run left no vasprun.xml.relax2"
        status = exit_status(jobdir)
        info = {
            "run_type": outcome.run_type,
            "energy_uncorrected": outcome.energy_uncorrected,
            "correction": outcome.entry.correction if outcome.entry is not None else None,
            "formula": outcome.formula,
            "hubbards": outcome.hubbards,
            "potcar_symbols": outcome.potcar_symbols,
            "exit_status": status,
        }
        steps = len(outcome.trajectory.get("energies", []))
        if not outcome.ok:
            error = outcome.reason
            if status:
                error += f"; run.sh exited with status {status}{_log_tail(jobdir)}"
            return OracleResult(ok=False, error=error, steps=steps, info=info)
        return OracleResult(ok=True, energy=outcome.energy_corrected, structure=outcome.structure,
                            trajectory=outcome.trajectory, steps=steps, info=info)
