"""Oracle `ase`: relax a structure with an ASE calculator.

CHGNet stands in for DFT (its energies already live on the MP2020-corrected scale,
so no correction is ever applied on top), EMT serves tests and quick demos, and any
other ASE calculator can be named by import path. Cell and positions are relaxed
together with FIRE on a `FrechetCellFilter`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import shlex
import sys
import time
from pathlib import Path

from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.config import OracleConfig
from gnome_loop.oracle.base import OracleResult

#: The CHGNet weights used: 0.3.0 ships inside the chgnet wheel, nothing is downloaded.
CHGNET_MODEL = "0.3.0"


@functools.cache
def _chgnet_model():
    """The pretrained CHGNet on the CPU, loaded once per process."""
    from chgnet.model import CHGNet

    return CHGNet.load(model_name=CHGNET_MODEL, use_device="cpu", verbose=False)


def make_calculator(name: str, **kwargs) -> Calculator:
    """An ASE calculator from its name: 'emt', 'chgnet' or an import path 'package.module:Class'
    (called with `kwargs`, e.g. the checkpoint of `gnome_loop.models.nequip_train:NequIPCalculator`)."""
    if name == "emt":
        return EMT()
    if name == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device it runs on
            return CHGNetCalculator(model=_chgnet_model(), use_device="cpu")
    module, _, class_name = name.partition(":")
    if not module or not class_name:
        raise ValueError(f"unknown calculator {name!r}; use 'emt', 'chgnet' or 'package.module:Class'")
    return getattr(importlib.import_module(module), class_name)(**kwargs)


class AseRelaxOracle:
    """Relax with FIRE until the largest force is below `fmax` eV/Å or `max_steps` are done.

    Running out of steps is not a failure (an ML potential is a stand-in for DFT): the
    result says `steps` and `trajectory["converged"]`. The job script of a folder is
    `gnome-loop run-job .`, which writes `result.json` itself.
    """

    def __init__(self, calculator: str, fmax: float, max_steps: int, relax_cell: bool, scale: str = "",
                 max_seconds: float | None = None, calculator_args: dict | None = None) -> None:
        self.calculator_name = calculator
        self.calculator_args = dict(calculator_args or {})
        self.fmax = fmax
        self.max_steps = max_steps
        self.relax_cell = relax_cell
        self.max_seconds = max_seconds
        self.name = f"ase:{calculator}"
        self.scale = scale or OracleConfig(calculator=calculator).scale()

    @functools.cached_property
    def calculator(self) -> Calculator:
        """Made on first use: reading a job folder's result never loads a model."""
        return make_calculator(self.calculator_name, **self.calculator_args)

    def write_inputs(self, jobdir: Path, structure: Structure) -> str:
        """Nothing beyond `job.json` is needed; the script runs the job with this Python's gnome_loop."""
        return f"{shlex.quote(sys.executable)} -m gnome_loop run-job ."

    def run(self, jobdir: Path, structure: Structure) -> OracleResult:
        return self.relax(structure)

    def collect(self, jobdir: Path, structure: Structure) -> OracleResult | None:
        return None  # `gnome-loop run-job` writes result.json itself

    def relax(self, structure: Structure) -> OracleResult:
        """Relax `structure`; the trajectory records every optimiser step, the initial one included."""
        start = time.perf_counter()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = self.calculator
        has_stress = "stress" in getattr(self.calculator, "implemented_properties", ())
        trajectory: dict = {"energies": [], "forces": [], "stresses": [], "cells": [], "positions": []}

        def record() -> None:
            elapsed = time.perf_counter() - start
            if self.max_seconds is not None and elapsed > self.max_seconds:
                raise TimeoutError(f"time limit: {elapsed:.0f} s > {self.max_seconds} s after "
                                   f"{len(trajectory['energies'])} steps")
            trajectory["energies"].append(float(atoms.get_potential_energy()))
            trajectory["forces"].append(atoms.get_forces().tolist())
            if has_stress:
                trajectory["stresses"].append(atoms.get_stress(voigt=True).tolist())
            trajectory["cells"].append(atoms.cell.array.tolist())
            trajectory["positions"].append(atoms.positions.tolist())

        optimizer = FIRE(FrechetCellFilter(atoms) if self.relax_cell else atoms, logfile=None)
        optimizer.attach(record)
        trajectory["converged"] = bool(optimizer.run(fmax=self.fmax, steps=self.max_steps))
        return OracleResult(
            ok=True,
            energy=float(atoms.get_potential_energy()),
            structure=AseAtomsAdaptor.get_structure(atoms.copy()),  # the copy drops the calculator
            trajectory=trajectory,
            wall_s=time.perf_counter() - start,
            steps=optimizer.nsteps,
        )
