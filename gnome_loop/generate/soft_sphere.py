"""A cheap cleanup of generated structures before a real relaxation: harmonic soft
spheres that push overlapping atoms apart (`soft_sphere_relax`, random search's
`relax="soft-sphere"`), and a few FIRE steps with any ASE calculator (`relax_structure`).
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
from ase.optimize import FIRE
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor


class SoftSphereCalculator(Calculator):
    """Harmonic soft spheres: u(d) = ε/2 (1 - d/σ)^2 for d < σ, zero beyond.

    σ of a pair is `scale` × the sum of the two covalent radii (ASE's table), so the
    potential only pushes overlapping atoms apart; with cell relaxation it expands
    the cell until nothing overlaps. `epsilon` in eV.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, scale: float = 1.0, epsilon: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale, self.epsilon = scale, epsilon

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        radii = self.scale * covalent_radii[self.atoms.numbers]
        i, j, vectors = neighbor_list("ijD", self.atoms, radii, self_interaction=False)
        distance = np.linalg.norm(vectors, axis=1)
        keep = distance > 1e-8
        i, j, vectors, distance = i[keep], j[keep], vectors[keep], distance[keep]
        sigma = radii[i] + radii[j]
        overlap = 1.0 - distance / sigma
        # every pair appears twice (i, j) and (j, i): each carries half the energy
        energy = 0.25 * self.epsilon * float(np.sum(overlap**2))
        slope = -self.epsilon * overlap / sigma  # du/dd
        pair_force = (slope / distance)[:, None] * vectors  # on atom i, away from j
        forces = np.zeros((len(self.atoms), 3))
        np.add.at(forces, i, pair_force)
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = forces
        if self.atoms.cell.rank == 3:
            virial = 0.5 * np.einsum("p,pa,pb->ab", slope / distance, vectors, vectors)
            stress = virial / self.atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
        else:
            self.results["stress"] = np.zeros(6)


def relax_structure(
    structure: Structure, calculator: Calculator, steps: int = 50, fmax: float = 0.05, relax_cell: bool = False
) -> Structure:
    """`steps` FIRE steps with an ASE calculator, the cell fixed or relaxed with
    ASE's FrechetCellFilter. Species stay those of `structure`."""
    from ase.filters import FrechetCellFilter

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calculator
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    FIRE(target, logfile=None).run(fmax=fmax, steps=steps)
    return Structure(atoms.cell.array, [site.species for site in structure], atoms.get_scaled_positions(wrap=True))


def soft_sphere_relax(structure: Structure, steps: int = 50, scale: float = 1.0, relax_cell: bool = False) -> Structure:
    """Push apart atoms closer than `scale` × the sum of their covalent radii with a
    soft-sphere potential (`SoftSphereCalculator`): a cheap cleanup before a real
    relaxation, not a physical model."""
    return relax_structure(structure, SoftSphereCalculator(scale=scale), steps=steps, fmax=1e-3, relax_cell=relax_cell)
