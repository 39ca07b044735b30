"""Batched FIRE relaxation (gnome_loop.relax) with a pure-JAX Morse potential for Cu.

The potential lives here, not in the product: Morse with Girifalco & Weizer's Cu
parameters (Phys. Rev. 114, 687 (1959)), energy and force shifted to zero at a 6 Å
cutoff, periodic images from pymatgen's neighbour search (the code behind
`Structure.get_neighbor_list`) rebuilt at every call. Ag atoms get the same Morse
without its repulsive term: an attraction that nothing stops, to make structures
explode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.optimization.neighbors import find_points_in_spheres

from gnome_loop.relax import RelaxBatch, pad_structures, relax_batch

MORSE_D, MORSE_ALPHA, MORSE_R0 = 0.3429, 1.3588, 2.866  # eV, 1/Å, Å
CUTOFF = 6.0
VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])


def _shifted_pair(r: jax.Array, repulsive: jax.Array) -> jax.Array:
    """Morse energy minus its value and slope at the cutoff: energy and force go smoothly to 0 there."""
    x = jnp.exp(-MORSE_ALPHA * (r - MORSE_R0))
    xc = np.exp(-MORSE_ALPHA * (CUTOFF - MORSE_R0))
    value, slope = repulsive * xc**2 - 2.0 * xc, -2.0 * MORSE_ALPHA * (repulsive * xc**2 - xc)
    return MORSE_D * (repulsive * x**2 - 2.0 * x - value - (r - CUTOFF) * slope)


def _energies(positions, cells, strain, edges):
    """Energy of each graph after straining its cell and atoms by (1 + strain)."""
    centre, neighbour, offsets, graph, mask, repulsive, node_graph = edges
    deform = jnp.eye(3) + strain
    positions = jnp.einsum("ni,nij->nj", positions, deform[node_graph])
    cells = cells @ deform
    vectors = positions[neighbour] + jnp.einsum("ei,eij->ej", offsets, cells[graph]) - positions[centre]
    r = jnp.linalg.norm(jnp.where(mask[:, None], vectors, 1.0), axis=-1)
    pair = jnp.where(mask, 0.5 * _shifted_pair(r, repulsive), 0.0)
    return jax.ops.segment_sum(pair, graph, cells.shape[0])


@jax.jit
def _energy_forces_stress(positions, cells, edges):
    """Energies, forces = -dE/dr and stress = dE/dstrain / volume (Voigt, ASE's sign)."""
    def total(positions, strain):
        energies = _energies(positions, cells, strain, edges)
        return energies.sum(), energies

    (_, energies), (grad_positions, grad_strain) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        positions, jnp.zeros_like(cells))
    stress = grad_strain / jnp.abs(jnp.linalg.det(cells))[:, None, None]
    return energies, -grad_positions, stress[:, VOIGT[0], VOIGT[1]]


def morse_factory(batch: RelaxBatch):
    """compute(positions, cells) for `batch`: a fresh neighbour list at every call, edges padded to 2^k >= 2048."""
    atoms = [np.flatnonzero((batch.node_graph == g) & batch.node_mask) for g in range(len(batch.graph_mask))]
    node_graph = jnp.asarray(batch.node_graph)

    def compute(positions, cells):
        positions_np, cells_np = np.asarray(positions), np.asarray(cells)
        parts = []
        for g, index in enumerate(atoms):
            if len(index) == 0:
                continue
            coords = np.ascontiguousarray(positions_np[index])
            i, j, offsets, distances = find_points_in_spheres(
                coords, coords, CUTOFF, np.ones(3, np.int64), np.ascontiguousarray(cells_np[g]))
            keep = distances > 1e-8
            parts.append((index[i[keep]], index[j[keep]], offsets[keep], np.full(keep.sum(), g)))
        centre, neighbour, offsets, graph = (np.concatenate(p) for p in zip(*parts))
        size = max(1 << int(np.ceil(np.log2(max(len(centre), 1)))), 2048)  # few shapes: few compilations
        pad = size - len(centre)
        repulsive = (batch.species[centre] != 47).astype(float)
        edges = (np.pad(centre, (0, pad)), np.pad(neighbour, (0, pad)), np.pad(offsets, ((0, pad), (0, 0))),
                 np.pad(graph, (0, pad)), np.arange(size) < len(centre), np.pad(repulsive, (0, pad)), node_graph)
        return _energy_forces_stress(positions, cells, edges)

    return compute


def evaluate(structure: Structure) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces and 3x3 stress of one structure under the Morse potential."""
    with jax.enable_x64(True):
        batch = pad_structures([structure])
        energy, forces, stress = morse_factory(batch)(jnp.asarray(batch.positions), jnp.asarray(batch.cells))
    full = np.asarray(stress)[0][np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])]
    return float(energy[0]), np.asarray(forces)[: len(structure)], full


def fcc(a: float, element: str = "Cu") -> Structure:
    """The 4-atom cubic cell of fcc."""
    return Structure(Lattice.cubic(a), [element] * 4, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def rattled(structure: Structure, amount: float, seed: int, strain=(0.03, 0.0, -0.01)) -> Structure:
    """`structure` strained along x, y, z and its atoms moved at random by up to `amount` Å."""
    rng = np.random.default_rng(seed)
    matrix = structure.lattice.matrix @ np.diag(1.0 + np.asarray(strain))
    coords = structure.cart_coords @ np.diag(1.0 + np.asarray(strain))
    coords = coords + rng.uniform(-amount, amount, coords.shape)
    return Structure(Lattice(matrix), structure.species, coords, coords_are_cartesian=True)


def fcc_primitive(a: float) -> Structure:
    return Structure(Lattice(0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Cu"], [[0, 0, 0]])


def with_nan_energy(graph: int, after_calls: int):
    """A compute_factory: the Morse potential, but graph `graph` gets a NaN energy from call `after_calls` on."""
    def factory(batch: RelaxBatch):
        compute, calls = morse_factory(batch), []

        def broken(positions, cells):
            energies, forces, stresses = compute(positions, cells)
            calls.append(1)
            return (energies.at[graph].set(jnp.nan) if len(calls) > after_calls else energies), forces, stresses

        return broken

    return factory


A_MORSE = 3.78  # about the lattice constant of this Morse potential (the cell test finds it exactly)


def test_fire_lowers_the_energy_and_stops_below_fmax():
    """Cu: a 4-atom cell strained by +3 % / -1 % and rattled by 0.1 Å, atoms and cell relaxed.

    FIRE is not a descent method: it coasts with a velocity, and a step can overshoot
    a valley so that the energy rises. It then finds the power P = F·v <= 0 at the
    new point and zeroes the velocity (a restart). What FIRE does guarantee on a
    smooth landscape with short steps is that it descends while P stays positive:
    the energy may rise only at an evaluation where it restarts. That, a lower final
    energy, and forces below fmax at the returned structure are what is asserted.
    (This case does go uphill twice, at evaluations 4 and 12, so a plain "the energy
    never rises" would be false.)
    """
    start = rattled(fcc(A_MORSE), 0.1, seed=0)
    fmax = 0.01
    result = relax_batch([start], morse_factory, fmax=fmax, max_steps=300)[0]

    assert result.status == "converged" and result.converged and result.reason == ""
    assert 0 < result.steps < 300 and len(result.energies) == result.steps + 1
    energies = np.array(result.energies)
    assert energies[-1] < energies[0] - 0.1 and result.energy == energies[-1]
    uphill = set(np.flatnonzero(np.diff(energies) > 1e-12) + 1)
    assert uphill <= set(result.restarts)
    assert len(result.restarts) < result.steps / 4

    energy, forces, stress = evaluate(result.structure)
    assert energy == pytest.approx(result.energy, abs=1e-9)
    assert np.linalg.norm(forces, axis=1).max() < fmax
    # The cell force FIRE converged: virial @ inv(D.T) / n_atoms, D the deformation from the start.
    deform_t = np.linalg.solve(start.lattice.matrix, result.structure.lattice.matrix)
    cell_force = -result.structure.volume * stress @ np.linalg.inv(deform_t) / len(start)
    assert np.linalg.norm(cell_force, axis=1).max() < fmax


def emt_factory(batch: RelaxBatch):
    """compute(positions, cells) with ASE's EMT, one structure at a time in numpy:
    the relaxer takes any potential, JAX or not."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    species, node_graph = np.asarray(batch.species), np.asarray(batch.node_graph)

    def compute(positions, cells):
        positions, cells = np.asarray(positions), np.asarray(cells)
        energies, forces, stresses = np.zeros(len(cells)), np.zeros_like(positions), np.zeros((len(cells), 6))
        for graph in range(int(np.sum(batch.graph_mask))):
            atoms_of = node_graph == graph
            atoms = Atoms(numbers=species[atoms_of], positions=positions[atoms_of], cell=cells[graph], pbc=True)
            atoms.calc = EMT()
            energies[graph] = atoms.get_potential_energy()
            forces[atoms_of] = atoms.get_forces()
            stresses[graph] = atoms.get_stress(voigt=True)
        return energies, forces, stresses

    return compute


def test_fire_relaxes_an_emt_alloy_downhill_to_fmax():
    """CuAu (L1_0-like cubic cell, EMT), strained and rattled: the energy falls except
    where FIRE restarts, and the returned structure's EMT forces are below fmax."""
    from ase.calculators.emt import EMT
    from pymatgen.io.ase import AseAtomsAdaptor

    start = rattled(Structure(Lattice.cubic(3.85), ["Cu", "Au", "Cu", "Au"],
                              [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]), 0.1, seed=3)
    fmax = 0.02
    result = relax_batch([start], emt_factory, fmax=fmax, max_steps=400)[0]

    assert result.status == "converged" and 0 < result.steps < 400
    energies = np.array(result.energies)
    assert energies[-1] < energies[0] - 0.05
    assert set(np.flatnonzero(np.diff(energies) > 1e-12) + 1) <= set(result.restarts)
    atoms = AseAtomsAdaptor.get_atoms(result.structure)
    atoms.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(result.energy, abs=1e-9)
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < fmax


def test_steps_match_ase_fire_on_a_unit_cell_filter():
    """The same trajectory, energy for energy, as ASE's FIRE on ASE's UnitCellFilter."""
    from ase.calculators.calculator import Calculator, all_changes
    from ase.filters import UnitCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    class Morse(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            energy, forces, stress = evaluate(AseAtomsAdaptor.get_structure(self.atoms))
            self.results = {"energy": energy, "forces": forces, "stress": stress[VOIGT[0], VOIGT[1]]}

    start = rattled(fcc(A_MORSE), 0.1, seed=0)
    ours = relax_batch([start], morse_factory, fmax=1e-6, max_steps=30)[0]
    atoms = AseAtomsAdaptor.get_atoms(start)
    atoms.calc = Morse()
    ase_energies = []
    optimizer = FIRE(UnitCellFilter(atoms), logfile=None)
    optimizer.attach(lambda: ase_energies.append(atoms.get_potential_energy()))
    optimizer.run(fmax=1e-6, steps=30)

    assert ours.status == "max_steps" and ours.steps == 30 and ours.structure is not None
    np.testing.assert_allclose(ours.energies, ase_energies, rtol=0, atol=1e-9)


def test_batched_equals_one_by_one():
    structures = [
        rattled(fcc(A_MORSE), 0.1, seed=1),
        rattled(fcc_primitive(A_MORSE), 0.0, seed=0, strain=(0.02, 0.02, 0.04)),
        rattled(fcc(A_MORSE).make_supercell([2, 1, 1], in_place=False), 0.08, seed=2, strain=(0.0, -0.02, 0.01)),
    ]
    together = relax_batch(structures, morse_factory)
    alone = [relax_batch([structure], morse_factory)[0] for structure in structures]

    for batched, single in zip(together, alone):
        assert batched.status == single.status == "converged"
        assert batched.energy == pytest.approx(single.energy, abs=1e-6)
        assert batched.steps == single.steps


def test_cell_relaxes_to_the_lattice_constant_of_the_potential():
    """An isotropically stretched and a compressed cubic cell end at the minimum of E(a)."""
    grid = np.linspace(3.70, 3.86, 41)
    scan = [fcc(a) for a in grid]
    with jax.enable_x64(True):
        batch = pad_structures(scan)
        energies = np.asarray(morse_factory(batch)(jnp.asarray(batch.positions), jnp.asarray(batch.cells))[0])
    best = int(np.argmin(energies[: len(grid)]))
    near = slice(best - 3, best + 4)
    quadratic = np.polyfit(grid[near], energies[near], 2)
    a_scan = -quadratic[1] / (2 * quadratic[0])
    assert grid[1] < a_scan < grid[-2]

    results = relax_batch([fcc(a_scan * 1.03), fcc(a_scan * 0.97)], morse_factory, fmax=1e-3)
    for result in results:
        assert result.converged
        np.testing.assert_allclose(result.structure.lattice.abc, a_scan, atol=1e-3)
        np.testing.assert_allclose(result.structure.lattice.angles, 90.0, atol=1e-6)


def test_exploding_structures_are_flagged_and_the_rest_of_the_batch_is_unaffected():
    healthy = rattled(fcc(A_MORSE), 0.1, seed=0)
    overlapping = Structure(Lattice.cubic(A_MORSE), ["Cu", "Cu"], [[0, 0, 0], [0.3 / A_MORSE, 0, 0]])
    collapsing = fcc(4.09, "Ag")  # Morse without repulsion: atoms and cell fall together
    poisoned = rattled(fcc(A_MORSE), 0.1, seed=3)  # its energy turns NaN after 3 evaluations

    results = relax_batch([healthy, overlapping, collapsing, poisoned], with_nan_energy(graph=3, after_calls=3))
    alone = relax_batch([healthy], morse_factory)[0]

    assert [r.status for r in results] == ["converged", "exploded", "exploded", "exploded"]
    for result in results[1:]:
        assert result.structure is None and not result.converged
    assert results[1].reason.startswith("atoms 0.300 Å apart") and results[1].steps == 0
    assert results[2].reason.startswith("volume changed by a factor 0.") and results[2].steps > 0
    assert results[3].reason == "non-finite energy, forces or stress at step 3" and results[3].steps == 3
    assert results[0].steps == alone.steps
    np.testing.assert_allclose(results[0].energies, alone.energies, rtol=0, atol=1e-10)
    np.testing.assert_allclose(results[0].structure.cart_coords, alone.structure.cart_coords, rtol=0, atol=1e-10)


def test_padding_does_not_change_results():
    structures = [rattled(fcc(A_MORSE), 0.1, seed=4), rattled(fcc_primitive(A_MORSE), 0.0, seed=0)]
    tight = relax_batch(structures, morse_factory)
    padded = relax_batch(structures, morse_factory, n_graphs=5, n_nodes=40)

    for a, b in zip(tight, padded):
        assert a.status == b.status == "converged" and a.steps == b.steps
        np.testing.assert_allclose(a.energies, b.energies, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.structure.cart_coords, b.structure.cart_coords, rtol=0, atol=1e-10)
        np.testing.assert_allclose(a.structure.lattice.matrix, b.structure.lattice.matrix, rtol=0, atol=1e-10)


def test_max_steps_returns_the_last_structure_unconverged():
    result = relax_batch([rattled(fcc(A_MORSE), 0.1, seed=0)], morse_factory, max_steps=3)[0]
    assert result.status == "max_steps" and not result.converged and result.steps == 3
    assert len(result.energies) == 4 and result.structure is not None
    assert result.reason.startswith("max force") and result.reason.endswith("after 3 steps")
