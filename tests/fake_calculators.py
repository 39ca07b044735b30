"""ASE calculators that fail on purpose, for tests of the campaign's failure handling.

`FlakyEMT` is EMT on elemental cells; on a compound it fails in one of three ways,
chosen by a hash of the reduced formula, so the same candidate always fails the
same way: an exception, a NaN energy, or a cell that blows up.
"""

import hashlib

import numpy as np
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
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
