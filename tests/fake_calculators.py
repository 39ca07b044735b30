"""Fake ASE calculators for tests: failures on purpose, and a cheap oracle on MP's scale.

`FlakyEMT` is EMT on elemental cells; on a compound it fails in one of three ways,
chosen by a hash of the reduced formula, so the same candidate always fails the
same way: an exception, a NaN energy, or a cell that blows up. `MPHullCalculator`
puts every structure at a chosen distance from MP's hull.
"""

import functools
import hashlib

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

MODES = ("raise", "nan", "explode", None)


def failure_mode(atoms) -> str | None:
    composition = Composition(atoms.get_chemical_formula())
    if len(composition.elements) == 1:
        return None
    digest = int(hashlib.md5(composition.reduced_formula.encode()).hexdigest(), 16)
    return MODES[digest % len(MODES)]


class FlakyEMT(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        mode = failure_mode(atoms if atoms is not None else self.atoms)
        if mode == "raise":
            raise RuntimeError("electronic loop did not converge (on purpose)")
        super().calculate(atoms, properties, system_changes)
        if mode == "nan":
            self.results["energy"] = self.results["free_energy"] = float("nan")
        elif mode == "explode":
            self.results["energy"] = self.results["free_energy"] = -100.0 * self.atoms.get_volume()
            self.results["forces"] = np.zeros((len(self.atoms), 3))
            self.results["stress"] = np.array([-1.0, -1.0, -1.0, 0.0, 0.0, 0.0])


class MPHullCalculator(Calculator):
    """A cheap oracle on MP's scale: a structure's energy is MP's hull energy at its
    composition (the shipped table) plus `SHIFTS[reduced formula]` eV/atom (0.05 for
    any other formula), with no forces or stress, so a relaxation stops at once.
    Declare it with `oracle.energy_scale: mp2020`."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    SHIFTS = {"LiO2": -0.03, "Li3O": 0.04}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        composition = Composition(self.atoms.get_chemical_formula())
        per_atom = mp_hull_energy(composition) + self.SHIFTS.get(composition.reduced_formula, 0.05)
        energy = per_atom * len(self.atoms)
        self.results = {"energy": energy, "free_energy": energy, "forces": np.zeros((len(self.atoms), 3)),
                        "stress": np.zeros(6)}


def mp_hull_energy(composition: Composition) -> float:
    """MP's hull energy per atom at `composition` (eV/atom), from the shipped table."""
    return _mp_diagram(frozenset(el.symbol for el in composition.elements)).get_hull_energy_per_atom(composition)


@functools.lru_cache(maxsize=16)
def _mp_diagram(elements: frozenset) -> PhaseDiagram:
    from gnome_loop.snapshot.reference import mp_reference_phases

    phases, _ = mp_reference_phases(sorted(elements))
    return PhaseDiagram([PDEntry(p.composition, p.energy) for p in phases])
