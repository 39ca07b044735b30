"""Fake ASE calculators for tests: failures on purpose, and a cheap oracle on MP's scale.

`FlakyEMT` is EMT on elemental cells; on a compound it fails in one of three ways,
chosen by a hash of the reduced formula, so the same candidate always fails the
same way: an exception, a NaN energy, or a cell that blows up. `RefusingEMT` and
`PairPotential` (any elements, a cheap stand-in for CHGNet) fail on the small cells
of one element: an elemental reference structure that fails. `MPHullCalculator`
puts every structure at a chosen distance from MP's hull.
"""

import functools
import hashlib

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.data import chemical_symbols, covalent_radii
from ase.neighborlist import neighbor_list
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

MODES = ("raise", "nan", "explode", None)


@functools.cache
def electronegativity(number: int) -> float:
    """Pauling electronegativity of an element (pymatgen's), looked up once."""
    return float(Element(chemical_symbols[number]).X)


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


def _refuse(atoms, element: str | None, max_atoms: int) -> None:
    """Raise for a cell of `element` alone with at most `max_atoms` atoms: a reference
    structure whose relaxation fails."""
    if element is not None and set(atoms.get_chemical_symbols()) == {element} and len(atoms) <= max_atoms:
        raise RuntimeError(f"{len(atoms)}-atom {element} cell refused (on purpose)")


class RefusingEMT(EMT):
    """EMT that fails on the cells of `element` alone with at most `max_atoms` atoms."""

    def __init__(self, element: str, max_atoms: int = 10**6, **kwargs):
        super().__init__(**kwargs)
        self.refused, self.max_atoms = element, max_atoms

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        _refuse(atoms if atoms is not None else self.atoms, self.refused, self.max_atoms)
        super().calculate(atoms, properties, system_changes)


class PairPotential(Calculator):
    """A cheap stand-in for CHGNet on any elements: a Lennard-Jones pair potential whose
    minimum lies at the sum of the covalent radii, deeper between unlike elements by their
    electronegativity difference (so compounds form), cut and shifted at 2.5 sigma.
    Like `RefusingEMT`, it can refuse the small cells of one element."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, element: str | None = None, max_atoms: int = 10**6, **kwargs):
        super().__init__(**kwargs)
        self.refused, self.max_atoms = element, max_atoms

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        _refuse(atoms, self.refused, self.max_atoms)
        numbers = atoms.numbers
        radii = covalent_radii[numbers]
        chi = np.array([electronegativity(z) for z in numbers])
        cutoff = 2.5 * 2 * radii.max() / 2 ** (1 / 6)
        i, j, d, vectors = neighbor_list("ijdD", atoms, cutoff)
        sigma = (radii[i] + radii[j]) / 2 ** (1 / 6)
        epsilon = 1.0 + np.abs(chi[i] - chi[j])
        inside = d < 2.5 * sigma
        i, j, d, vectors, sigma, epsilon = (x[inside] for x in (i, j, d, vectors, sigma, epsilon))
        x6 = (sigma / d) ** 6
        shift = 4 * epsilon * (2.5**-12 - 2.5**-6)
        energy = 0.5 * np.sum(4 * epsilon * (x6**2 - x6) - shift)
        slope = 4 * epsilon * (-12 * x6**2 + 6 * x6) / d  # dE/dr of each pair
        pair_forces = (slope / d)[:, None] * vectors  # on atom i, towards j when attractive
        forces = np.zeros((len(atoms), 3))
        np.add.at(forces, i, pair_forces)
        virial = 0.5 * np.einsum("p,pa,pb->ab", slope / d, vectors, vectors) / atoms.get_volume()
        self.results = {"energy": energy, "free_energy": energy, "forces": forces,
                        "stress": virial.ravel()[[0, 4, 8, 5, 2, 1]]}


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
    from gnome_loop.structures import ChemicalSpace

    phases, _ = mp_reference_phases(ChemicalSpace(tuple(elements)))
    return PhaseDiagram([PDEntry(p.composition, p.energy) for p in phases])
