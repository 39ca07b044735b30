"""NequIP: energies are invariant (rotation, translation, permutation, cell choice),
forces and stresses are equivariant and are the energy's derivatives, padding is
inert, and the species shift is a least-squares fit.

Small random networks (seeded) on a distorted 4-atom Cu/Au fcc cell and a distorted
SrTiO3 perovskite. Symmetry and padding tests run in float32; the finite-difference
tests run in float64 (`jax.enable_x64`): with a 1e-3 Å step, float32 round-off
(~1e-7 × |E| / step ≈ 2e-3 eV/Å) is comparable to these forces, while in float64 only
the O(step²) truncation of central differences is left, ~1e-5 relative here (hence
rtol 1e-4; a wrong derivative is off by O(1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from gnome_loop.models.nequip import NequIPConfig, energy_forces_stress, fit_species_shift, init_params, nequip_batch

CONFIG = NequIPConfig(irreps="8x0e + 4x1o + 2x2e", blocks=2, radial_hidden=16, avg_neighbors=30.0)
#: One padded shape for the float32 symmetry tests (one compile).
SHARED_SHAPE = {"n_graphs": 10, "min_nodes": 96, "min_edges": 3072}
#: One padded float64 shape for both finite-difference tests.
FLOAT64_SHAPE = {"min_edges": 256, "dtype": np.float64}


def cu_au() -> Structure:
    return Structure(Lattice([[3.62, 0.08, 0.0], [0.0, 3.55, 0.15], [0.1, 0.0, 3.7]]), ["Cu", "Au", "Cu", "Cu"],
                     [[0.0, 0.0, 0.0], [0.5, 0.52, 0.02], [0.47, 0.0, 0.5], [0.0, 0.5, 0.53]])


def perovskite() -> Structure:
    return Structure(Lattice([[3.9, 0.0, 0.05], [0.1, 3.95, 0.0], [0.0, 0.0, 4.0]]), ["Sr", "Ti", "O", "O", "O"],
                     [[0.0, 0.0, 0.0], [0.52, 0.49, 0.53], [0.5, 0.5, 0.02], [0.5, 0.03, 0.5], [0.01, 0.5, 0.5]])


@pytest.fixture(scope="module")
def params():
    # scale > 1 and nonzero shifts so that scale and shift take part in every check
    batch = nequip_batch([cu_au()], CONFIG.cutoff)
    return init_params(CONFIG, jax.random.PRNGKey(0), batch, shift={29: -3.7, 79: -3.2, 38: -1.6, 22: -7.8, 8: -4.9},
                       scale=3.0)


def predict(params, structures, **padding):
    out = energy_forces_stress(params, CONFIG, nequip_batch(structures, CONFIG.cutoff, **padding))
    return [np.asarray(x) for x in out]


def full(voigt: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def rotated(structure: Structure, rotation: np.ndarray) -> Structure:
    return Structure(Lattice(structure.lattice.matrix @ rotation.T), structure.species,
                     structure.cart_coords @ rotation.T, coords_are_cartesian=True)


def float64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@pytest.mark.parametrize("make", [cu_au, perovskite])
def test_invariance_and_equivariance(params, make):
    base = make()
    rotation = Rotation.random(random_state=7).as_matrix()
    turned = rotated(base, rotation)
    shifted = base.copy()
    shifted.translate_sites(list(range(len(base))), [0.13, 0.27, 0.61])  # wraps atoms back into the cell
    permuted = Structure(base.lattice, base.species[::-1], base.frac_coords[::-1])
    supercell = base * (2, 1, 1)
    structures = [base, turned, shifted, permuted, supercell]
    energies, forces, stresses = predict(params, structures, **SHARED_SHAPE)
    n = len(base)
    f = [forces[i * n:(i + 1) * n] for i in range(4)] + [forces[4 * n:6 * n]]
    scale = np.abs(forces[:6 * n]).max()
    assert scale > 1e-4  # a distorted cell: the forces being compared are not all zero

    np.testing.assert_allclose(energies[1:4], energies[0], rtol=1e-5)
    np.testing.assert_allclose(energies[4], 2 * energies[0], rtol=1e-5)
    np.testing.assert_allclose(f[1], f[0] @ rotation.T, atol=1e-4 * scale)  # F(Rx) = R F(x)
    np.testing.assert_allclose(f[2], f[0], atol=1e-4 * scale)
    np.testing.assert_allclose(f[3], f[0][::-1], atol=1e-4 * scale)
    # supercell atom k is the image of the cell atom at the same (folded) fractional position
    folded = np.mod(supercell.frac_coords * [2, 1, 1] + 1e-6, 1.0)
    image_of = [np.argmin(np.linalg.norm(np.mod(base.frac_coords + 1e-6, 1.0) - x, axis=1)) for x in folded]
    np.testing.assert_allclose(f[4], f[0][image_of], atol=1e-4 * scale)

    stress_scale = np.abs(stresses[0]).max()
    np.testing.assert_allclose(full(stresses[1]), rotation @ full(stresses[0]) @ rotation.T, atol=1e-4 * stress_scale)
    for other in (2, 3, 4):  # stress is intensive
        np.testing.assert_allclose(stresses[other], stresses[0], atol=1e-4 * stress_scale)


def test_padding_never_changes_a_result(params):
    alone = predict(params, [perovskite()])
    crowded = predict(params, [cu_au(), perovskite()], **SHARED_SHAPE)
    n_cu_au = len(cu_au())
    np.testing.assert_allclose(crowded[0][1], alone[0][0], rtol=1e-6)
    np.testing.assert_allclose(crowded[1][n_cu_au:n_cu_au + 5], alone[1][:5], atol=1e-6)
    np.testing.assert_allclose(crowded[2][1], alone[2][0], atol=1e-7)
    assert np.all(crowded[0][2:] == 0) and np.all(crowded[1][n_cu_au + 5:] == 0) and np.all(crowded[2][2:] == 0)


def test_forces_are_minus_the_energy_gradient(params):
    step = 1e-3
    with jax.enable_x64(True):
        params64 = float64(params)
        batch = nequip_batch([cu_au()], CONFIG.cutoff, **FLOAT64_SHAPE)
        _, forces, _ = energy_forces_stress(params64, CONFIG, batch)
        for atom, axis in [(1, 0), (2, 2), (3, 1)]:
            energies = []
            for sign in (1, -1):
                positions = batch.positions.copy()
                positions[atom, axis] += sign * step
                displaced = batch._replace(positions=positions)
                energies.append(float(energy_forces_stress(params64, CONFIG, displaced)[0][0]))
            numeric = -(energies[0] - energies[1]) / (2 * step)
            assert abs(float(forces[atom, axis])) > 1e-4
            np.testing.assert_allclose(float(forces[atom, axis]), numeric, rtol=1e-4)


def test_stress_is_the_strain_derivative_of_the_energy(params):
    step = 1e-3
    with jax.enable_x64(True):
        params64 = float64(params)
        batch = nequip_batch([perovskite()], CONFIG.cutoff, **FLOAT64_SHAPE)
        _, _, stresses = energy_forces_stress(params64, CONFIG, batch)
        volume = abs(np.linalg.det(batch.cells[0]))
        for voigt, (a, b) in [(0, (0, 0)), (5, (0, 1))]:
            direction = np.zeros((3, 3))
            direction[a, b] = direction[b, a] = 1.0 if a == b else 0.5  # ε symmetric, dE/dh = V σ_ab
            energies = []
            for sign in (1, -1):
                deformation = np.eye(3) + sign * step * direction
                strained = batch._replace(positions=batch.positions @ deformation,
                                          cells=batch.cells @ deformation)
                energies.append(float(energy_forces_stress(params64, CONFIG, strained)[0][0]))
            numeric = (energies[0] - energies[1]) / (2 * step * volume)
            assert abs(float(stresses[0, voigt])) > 1e-5
            np.testing.assert_allclose(float(stresses[0, voigt]), numeric, rtol=1e-4)


def test_species_shift_is_a_least_squares_fit():
    cu, au = 29, 79
    structures = [cu_au(), cu_au() * (1, 1, 2), Structure(Lattice.cubic(4.08), ["Au"], [[0, 0, 0]]),
                  Structure(Lattice.cubic(3.61), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])]
    energies = [3 * -3.7 + -3.2, 6 * -3.7 + 2 * -3.2, -3.2, 2 * -3.7]
    shift = fit_species_shift(structures, energies)
    assert shift.keys() == {cu, au}
    np.testing.assert_allclose([shift[cu], shift[au]], [-3.7, -3.2])
