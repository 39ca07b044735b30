"""Batched FIRE relaxation of crystals, atoms and cell together, on padded JAX arrays.

Many structures relax at once: their atoms are concatenated into padded arrays
(one padding graph at the end, as in `gnome_loop.models.graph`), and every FIRE
quantity (time step, mixing factor, power, step length, convergence) is kept per
structure, so a structure relaxes as it would alone (to rounding: about 1e-14 eV).

The potential
-------------
`relax_batch(structures, compute_factory)` pads the structures into a `RelaxBatch`
and calls `compute_factory(batch)` once; it returns `compute`, which is then called
once per FIRE step::

    compute(positions (N, 3), cells (G, 3, 3)) -> energies (G,) eV,
                                                  forces (N, 3) eV/Å,
                                                  stresses (G, 6) eV/Å^3

with the current padded positions and cells (float64 JAX arrays; rows of a cell are
its lattice vectors). Stresses are Voigt (xx, yy, zz, yz, xz, xy) with ASE's sign
(stress = dE/dstrain / volume: negative under compression). Values on padding
atoms and graphs, and on structures that already finished, are ignored. `compute`
may keep state between calls: a JAX potential with a fixed-size neighbour list
builds it with a skin and rebuilds it when an atom (or the strained cell) has moved
more than half the skin since the last build.

The cell
--------
The cell degrees of freedom are those of ASE's `UnitCellFilter`: the cell is
`reference_cell @ D.T` with D the deformation gradient from the starting cell; FIRE
moves `n_atoms * D` and the atoms' positions in the undeformed frame (`r @ inv(D.T)`).
Their forces are the exact gradients of the energy, as ASE computes them: the
atomic forces times D, and the virial (-volume * stress) times inv(D.T) divided by
the number of atoms (ASE's `cell_factor`, which makes cell forces comparable to
atomic forces). Exact gradients matter: FIRE's power P = F·v then tells honestly
whether the last step went downhill. The external pressure is 0. ASE's
`FrechetCellFilter` (D = expm(U), moving U) behaves better for large strains, but
the matrix exponential and its derivative made the jitted step about three times
slower to compile (measured: ~1.5 s → ~4.5 s on CPU); pre-relaxation stays well
inside the volume factor of 3 below, where D does as well. A structure has
converged when every atomic force (Cartesian) and every row of the cell force is
below `fmax`.

Safety
------
A structure whose energy, forces or stress are not finite, whose volume changes by
more than a factor 3, or whose atoms come closer than 0.5 Å is stopped as
"exploded" with the reason and no structure; the rest of the batch goes on.

FIRE follows Bitzek et al., PRL 97, 170201 (2006) with ASE's constants and its
Euler step with a capped step length (`FireConfig`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from pymatgen.core import Lattice, Structure

from gnome_loop.models.graph import power_of_two
from gnome_loop.structures import MAX_VOLUME_FACTOR, MIN_DISTANCE

#: Per-graph status codes of `FireState.status`.
RUNNING, CONVERGED, MAX_STEPS, NON_FINITE_EVALUATION, TOO_CLOSE, VOLUME, PADDING = range(7)

#: Periodic image shifts searched by the closest-approach check.
_SHIFTS = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=3)))
#: Voigt index of each entry of a symmetric 3x3 tensor (xx, yy, zz, yz, xz, xy).
_VOIGT = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])

Compute = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


class RelaxBatch(NamedTuple):
    """The padded structures handed to `compute_factory`. The last graph is padding."""

    species: np.ndarray  # (N,) int32 atomic numbers, 0 on padding atoms
    positions: np.ndarray  # (N, 3) float64 starting Cartesian positions, Å
    cells: np.ndarray  # (G, 3, 3) float64 starting cells, rows are lattice vectors
    node_graph: np.ndarray  # (N,) int32 graph of each atom
    node_mask: np.ndarray  # (N,) bool, False on padding atoms
    graph_mask: np.ndarray  # (G,) bool, False on padding graphs


class FireConfig(NamedTuple):
    """FIRE's constants: ASE's defaults (unit masses, dt in units where F·dt² is in Å)."""

    dt_start: float = 0.1
    dt_max: float = 1.0
    n_min: int = 5  # downhill steps before dt may grow
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99
    max_step: float = 0.2  # longest step of one structure (all its coordinates), Å


class FireState(NamedTuple):
    """Everything FIRE carries from one step to the next (a JAX pytree)."""

    positions: jax.Array  # (N, 3) Cartesian, Å
    cell: jax.Array  # (G, 3, 3)
    reference_cell: jax.Array  # (G, 3, 3) starting cell: strains are measured from it
    velocities: jax.Array  # (N, 3) of the positions in the undeformed frame
    cell_velocities: jax.Array  # (G, 3, 3) of n_atoms * D (cell = reference_cell @ D.T)
    dt: jax.Array  # (G,)
    alpha: jax.Array  # (G,)
    n_positive: jax.Array  # (G,) int32 downhill steps since the last restart
    steps: jax.Array  # (G,) int32 FIRE updates taken
    status: jax.Array  # (G,) int32 status code, RUNNING until a graph finishes
    node_graph: jax.Array  # (N,) int32
    node_mask: jax.Array  # (N,) bool
    pair_i: jax.Array  # (P,) int32 atom pairs of one graph (i <= j) for the distance check
    pair_j: jax.Array  # (P,) int32

    @property
    def done(self) -> jax.Array:
        """(G,) bool: converged, out of steps, exploded or padding; done graphs never move."""
        return self.status != RUNNING


class StepReport(NamedTuple):
    """Per graph, what one `fire_step` found at the positions it was given."""

    energy: jax.Array  # (G,)
    status: jax.Array  # (G,) status after this evaluation
    restart: jax.Array  # (G,) bool: P <= 0, velocities were zeroed
    max_force: jax.Array  # (G,) largest atomic or cell force, eV/Å
    min_distance: jax.Array  # (G,) closest approach of two atoms, Å
    volume_ratio: jax.Array  # (G,) volume over the starting volume


@dataclass(frozen=True)
class RelaxResult:
    """One relaxed structure, or why it was given up (`structure` None when exploded)."""

    structure: Structure | None
    energy: float
    steps: int
    converged: bool
    status: str  # "converged" | "max_steps" | "exploded"
    reason: str
    energies: list[float]  # energy at every evaluation: the start, then after each step
    restarts: list[int]  # evaluations where FIRE found P <= 0 and zeroed the velocities


def pad_structures(structures: Sequence[Structure], n_graphs: int | None = None,
                   n_nodes: int | None = None) -> RelaxBatch:
    """Pad `structures` into `n_graphs` graph slots plus a padding graph.

    There is always at least one padding atom (it belongs to the padding graph).
    Defaults: one slot per structure, and atoms rounded up to a power of two so that
    repeated batches compile few shapes.
    """
    if any(not structure.is_ordered for structure in structures):
        raise ValueError("relaxation needs ordered structures (no partial occupancies)")
    n_graphs = len(structures) if n_graphs is None else n_graphs
    n_atoms = sum(len(structure) for structure in structures)
    n_nodes = power_of_two(n_atoms + 1) if n_nodes is None else n_nodes
    if n_graphs < len(structures) or n_nodes <= n_atoms:
        raise ValueError(f"{len(structures)} structures with {n_atoms} atoms do not fit "
                         f"{n_graphs} graphs and {n_nodes} atoms (one of them padding)")
    species = np.zeros(n_nodes, np.int32)
    positions = np.zeros((n_nodes, 3))
    cells = np.tile(np.eye(3), (n_graphs + 1, 1, 1))
    node_graph = np.full(n_nodes, n_graphs, np.int32)
    at = 0
    for index, structure in enumerate(structures):
        atoms = slice(at, at + len(structure))
        species[atoms] = [site.specie.Z for site in structure]
        positions[atoms] = structure.cart_coords
        cells[index] = structure.lattice.matrix
        node_graph[atoms] = index
        at += len(structure)
    return RelaxBatch(species, positions, cells, node_graph, np.arange(n_nodes) < at,
                      np.arange(n_graphs + 1) < len(structures))


def fire_init(batch: RelaxBatch, config: FireConfig = FireConfig()) -> FireState:
    """The state before the first step: zero velocities and strain, ASE's starting dt and alpha.

    The atom pairs of the distance check are padded to a power of two with pairs of
    the last (padding) atom, so that the step compiles for few shapes.
    """
    n_graphs, n_nodes = len(batch.graph_mask), len(batch.node_graph)
    pairs = []
    for graph in range(n_graphs):
        atoms = np.flatnonzero((batch.node_graph == graph) & batch.node_mask)
        i, j = np.triu_indices(len(atoms))
        pairs.append(np.stack([atoms[i], atoms[j]]))
    pairs = np.concatenate(pairs, axis=1)
    pairs = np.pad(pairs, ((0, 0), (0, power_of_two(pairs.shape[1]) - pairs.shape[1])), constant_values=n_nodes - 1)
    cells = jnp.asarray(batch.cells)
    return FireState(
        positions=jnp.asarray(batch.positions),
        cell=cells,
        reference_cell=cells,
        velocities=jnp.zeros((n_nodes, 3)),
        cell_velocities=jnp.zeros((n_graphs, 3, 3)),
        dt=jnp.full(n_graphs, config.dt_start),
        alpha=jnp.full(n_graphs, config.alpha_start),
        n_positive=jnp.zeros(n_graphs, jnp.int32),
        steps=jnp.zeros(n_graphs, jnp.int32),
        status=jnp.where(jnp.asarray(batch.graph_mask), RUNNING, PADDING).astype(jnp.int32),
        node_graph=jnp.asarray(batch.node_graph),
        node_mask=jnp.asarray(batch.node_mask),
        pair_i=jnp.asarray(pairs[0], jnp.int32),
        pair_j=jnp.asarray(pairs[1], jnp.int32),
    )


def min_distances(positions: jax.Array, cell: jax.Array, node_graph: jax.Array,
                  pair_i: jax.Array, pair_j: jax.Array) -> jax.Array:
    """(G,) closest approach of two atoms (periodic images included) in each graph, Å.

    Fractional differences are wrapped to [-0.5, 0.5] and the 27 neighbouring images
    searched: any other image is at least 1.5 cell heights away, so the result is
    exact below 0.5 Å whenever every height of the cell exceeds 1/3 Å.
    """
    graph = node_graph[pair_i]
    frac = jnp.einsum("ni,nij->nj", positions, jnp.linalg.inv(cell)[node_graph])
    delta = frac[pair_j] - frac[pair_i]
    images = (delta - jnp.round(delta))[:, None, :] + _SHIFTS[None]
    lengths = jnp.linalg.norm(jnp.einsum("pki,pij->pkj", images, cell[graph]), axis=-1)
    itself = (pair_i == pair_j)[:, None] & jnp.all(_SHIFTS == 0.0, axis=-1)[None]
    closest = jnp.where(itself, jnp.inf, lengths).min(axis=1)
    return jax.ops.segment_min(closest, graph, cell.shape[0])


def _cell_forces(cell: jax.Array, stresses: jax.Array, deform_t: jax.Array, n_atoms: jax.Array) -> jax.Array:
    """Forces on n_atoms * D: -dE/dD / n_atoms = virial @ inv(D.T) / n_atoms, (G, 3, 3)."""
    volume = jnp.abs(jnp.linalg.det(cell))
    virial = -volume[:, None, None] * stresses[:, _VOIGT]
    return virial @ jnp.linalg.inv(deform_t) / n_atoms[:, None, None]


@partial(jax.jit, static_argnames=("relax_cell", "config"))
def fire_step(state: FireState, energies: jax.Array, forces: jax.Array, stresses: jax.Array, *,
              fmax: float | jax.Array, max_steps: int | jax.Array, relax_cell: bool,
              config: FireConfig = FireConfig()) -> tuple[FireState, StepReport]:
    """Judge the evaluation at `state`'s positions, then take one FIRE step for the graphs still running.

    A running graph finishes here when its evaluation is non-finite, too compressed
    or stretched, converged (all forces < fmax), or after `max_steps` updates;
    finished graphs keep their positions, so the state always holds the structure
    that was judged last.
    """
    n_graphs = state.cell.shape[0]
    graph = state.node_graph

    def per_graph(values: jax.Array) -> jax.Array:
        return jax.ops.segment_sum(values, graph, n_graphs)

    bad_atoms = per_graph((~jnp.all(jnp.isfinite(forces), -1) & state.node_mask).astype(jnp.int32))
    finite = jnp.isfinite(energies) & (bad_atoms == 0)
    if relax_cell:
        finite &= jnp.all(jnp.isfinite(stresses), -1)
    forces = jnp.where(state.node_mask[:, None] & finite[graph][:, None], forces, 0.0)
    n_atoms = jnp.maximum(per_graph(state.node_mask.astype(forces.dtype)), 1.0)
    deform_t = jnp.linalg.solve(state.reference_cell, state.cell)  # D.T
    atom_forces = jnp.einsum("ni,nji->nj", forces, deform_t[graph])  # f @ D: on positions in the undeformed frame
    cell_forces = jnp.zeros_like(state.cell_velocities)
    if relax_cell:
        cell_forces = jnp.where(finite[:, None, None], _cell_forces(state.cell, stresses, deform_t, n_atoms), 0.0)

    distance = min_distances(state.positions, state.cell, graph, state.pair_i, state.pair_j)
    volume_ratio = jnp.abs(jnp.linalg.det(state.cell) / jnp.linalg.det(state.reference_cell))
    max_force = jnp.maximum(
        jax.ops.segment_max(jnp.linalg.norm(forces, axis=-1), graph, n_graphs),
        jnp.linalg.norm(cell_forces, axis=-1).max(axis=-1))
    judged = jnp.select(
        [~finite, distance < MIN_DISTANCE,
         (volume_ratio > MAX_VOLUME_FACTOR) | (volume_ratio < 1.0 / MAX_VOLUME_FACTOR),
         max_force < fmax, state.steps >= max_steps],
        [NON_FINITE_EVALUATION, TOO_CLOSE, VOLUME, CONVERGED, MAX_STEPS], RUNNING)
    status = jnp.where(state.status == RUNNING, judged, state.status).astype(jnp.int32)
    moving = status == RUNNING

    # FIRE: mix the velocity towards the force while the power is positive, restart when it is not.
    def dot(atoms_a: jax.Array, atoms_b: jax.Array, cell_a: jax.Array, cell_b: jax.Array) -> jax.Array:
        return per_graph(jnp.sum(atoms_a * atoms_b, -1)) + jnp.sum(cell_a * cell_b, (1, 2))

    power = dot(atom_forces, state.velocities, cell_forces, state.cell_velocities)
    force_norm = jnp.sqrt(dot(atom_forces, atom_forces, cell_forces, cell_forces))
    speed = jnp.sqrt(dot(state.velocities, state.velocities, state.cell_velocities, state.cell_velocities))
    started = state.steps > 0  # ASE: no power test before the first step
    downhill = started & (power > 0.0)
    restart = started & (power <= 0.0)
    keep = jnp.where(downhill, 1.0 - state.alpha, jnp.where(restart, 0.0, 1.0))
    push = jnp.where(downhill, state.alpha * speed / jnp.where(force_norm > 0.0, force_norm, 1.0), 0.0)
    grow = downhill & (state.n_positive > config.n_min)
    dt = jnp.where(grow, jnp.minimum(state.dt * config.f_inc, config.dt_max),
                   jnp.where(restart, state.dt * config.f_dec, state.dt))
    alpha = jnp.where(grow, state.alpha * config.f_alpha, jnp.where(restart, config.alpha_start, state.alpha))
    n_positive = jnp.where(downhill, state.n_positive + 1, jnp.where(restart, 0, state.n_positive))
    # v <- (1 - alpha) v + alpha |v| F/|F| while downhill, 0 on a restart; then v <- v + dt F.
    velocities = keep[graph][:, None] * state.velocities + (push + dt)[graph][:, None] * atom_forces
    cell_velocities = keep[:, None, None] * state.cell_velocities + (push + dt)[:, None, None] * cell_forces

    step = dt[graph][:, None] * velocities
    cell_step = dt[:, None, None] * cell_velocities
    length = jnp.sqrt(dot(step, step, cell_step, cell_step))
    scale = jnp.where(length > config.max_step, config.max_step / jnp.where(length > 0.0, length, 1.0), 1.0)
    undeformed = jnp.einsum("ni,nij->nj", state.positions, jnp.linalg.inv(deform_t)[graph])
    new_deform_t = deform_t + (scale / n_atoms)[:, None, None] * jnp.swapaxes(cell_step, 1, 2)
    positions = jnp.einsum("ni,nij->nj", undeformed + scale[graph][:, None] * step, new_deform_t[graph])

    node_moving = moving[graph][:, None]
    cell_moving = moving[:, None, None]
    new_state = state._replace(
        positions=jnp.where(node_moving, positions, state.positions),
        cell=jnp.where(cell_moving, state.reference_cell @ new_deform_t, state.cell),
        velocities=jnp.where(node_moving, velocities, state.velocities),
        cell_velocities=jnp.where(cell_moving, cell_velocities, state.cell_velocities),
        dt=jnp.where(moving, dt, state.dt),
        alpha=jnp.where(moving, alpha, state.alpha),
        n_positive=jnp.where(moving, n_positive, state.n_positive),
        steps=state.steps + moving,
        status=status,
    )
    report = StepReport(energies, status, restart & moving, max_force, distance, volume_ratio)
    return new_state, report


def relax_batch(
    structures: Sequence[Structure],
    compute_factory: Callable[[RelaxBatch], Compute],
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
    config: FireConfig = FireConfig(),
    n_graphs: int | None = None,
    n_nodes: int | None = None,
) -> list[RelaxResult]:
    """Relax `structures` together with FIRE; one result per structure, in order.

    `compute_factory(batch)` builds the potential for the padded batch (module
    docstring). Runs in float64 (JAX's x64 mode, for this call only) so that
    tight `fmax` and batch-independent results are not limited by float32.
    `n_graphs`/`n_nodes` pad further (see `pad_structures`); results do not depend on them.
    """
    if not structures:
        return []
    with jax.enable_x64(True):
        batch = pad_structures(structures, n_graphs, n_nodes)
        compute = compute_factory(batch)
        state = fire_init(batch, config)
        count = len(structures)
        energies: list[list[float]] = [[] for _ in structures]
        restarts: list[list[int]] = [[] for _ in structures]
        reasons = [""] * count
        while not bool(jnp.all(state.done)):
            running = np.flatnonzero(np.asarray(state.status[:count]) == RUNNING)
            state, report = fire_step(state, *compute(state.positions, state.cell),
                                      fmax=fmax, max_steps=max_steps, relax_cell=relax_cell, config=config)
            report = jax.device_get(report)
            for index in running:
                energies[index].append(float(report.energy[index]))
                if report.restart[index]:
                    restarts[index].append(len(energies[index]) - 1)
                reasons[index] = _reason(report, index, len(energies[index]) - 1, max_steps)
        positions, cells, steps, status = jax.device_get((state.positions, state.cell, state.steps, state.status))
    results = []
    for index, structure in enumerate(structures):
        atoms = batch.node_graph == index
        exploded = status[index] in (NON_FINITE_EVALUATION, TOO_CLOSE, VOLUME)
        relaxed = None if exploded else Structure(
            Lattice(cells[index]), structure.species, positions[atoms], coords_are_cartesian=True,
            site_properties=structure.site_properties)
        results.append(RelaxResult(
            structure=relaxed, energy=energies[index][-1], steps=int(steps[index]),
            converged=bool(status[index] == CONVERGED),
            status="exploded" if exploded else "converged" if status[index] == CONVERGED else "max_steps",
            reason=reasons[index], energies=energies[index], restarts=restarts[index]))
    return results


def _reason(report: StepReport, index: int, evaluation: int, max_steps: int) -> str:
    """Why graph `index` stopped at this evaluation, in words ("" while it runs or when it converged)."""
    code = report.status[index]
    if code == NON_FINITE_EVALUATION:
        return f"non-finite energy, forces or stress at step {evaluation}"
    if code == TOO_CLOSE:
        return f"atoms {report.min_distance[index]:.3f} Å apart (< {MIN_DISTANCE} Å) at step {evaluation}"
    if code == VOLUME:
        return (f"volume changed by a factor {report.volume_ratio[index]:.3g} "
                f"(limit {MAX_VOLUME_FACTOR:g}) at step {evaluation}")
    if code == MAX_STEPS:
        return f"max force {report.max_force[index]:.3g} eV/Å after {max_steps} steps"
    return ""
