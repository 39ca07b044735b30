"""NequIP, an E(3)-equivariant interatomic potential, in flax and e3nn-jax.

NequIP (Batzner et al., Nat. Commun. 13, 2453, 2022) carries per-atom features
that are irreducible representations of O(3) (scalars, vectors, rank-2 tensors).
Each interaction block takes the tensor product of a neighbour's features with
the spherical harmonics of the edge direction, weighted per path by an MLP of
the edge length (a trainable Bessel basis times a smooth polynomial envelope),
sums the messages over neighbours, and applies a linear map, a gated nonlinearity
and a species-dependent linear self-connection. A linear readout of the scalars
gives per-atom energies, rescaled and shifted per species, summed per crystal.
GNoME trained such a potential with a 5 Å cutoff (Merchant et al., Nature 624,
80, 2023, Methods), the default here.

Edge vectors are computed inside the jitted function from positions, cells and
integer image shifts, so forces (−∂E/∂positions) and stress ((1/V) ∂E/∂ε for a
symmetric strain ε applied to positions and cell, ASE's sign convention, eV/Å³)
are exact gradients of the energy. Batches are padded like `graph.py`'s: padding
nodes and edges belong to a masked padding graph whose edges are longer than the
cutoff, so they carry zero weight, and no edge has zero length (no NaN gradients).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from pymatgen.core import Structure

from gnome_loop.models.graph import MAX_Z, GraphError, graph_input_error, power_of_two

#: Voigt order of the stress (ASE): xx, yy, zz, yz, xz, xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass(frozen=True)
class NequIPConfig:
    """Hyperparameters; a JAX pytree whose one leaf is `avg_neighbors`.

    `irreps` are the hidden features of every block (l ≤ `sh_lmax`, parities of
    the spherical harmonics: 0e, 1o, 2e); the defaults are small for CPU (NequIP's
    papers use 32–64 channels per l). `avg_neighbors` is the mean number of edges
    per atom in the training data: summed messages are divided by its square
    root, as in NequIP, so their scale does not grow with the cutoff.

    The jitted functions take the config as an ordinary argument: the architecture
    (the other fields) is static, but `avg_neighbors`, measured anew on every
    round's data, is traced, so a new value reuses the compiled programs (as a
    static field it made every round compile every program again, issue 24).
    """

    cutoff: float = 5.0
    irreps: str = "32x0e + 16x1o + 8x2e"
    blocks: int = 3
    n_basis: int = 8
    sh_lmax: int = 2
    radial_hidden: int = 64
    radial_layers: int = 2
    avg_neighbors: float = 40.0
    envelope_p: int = 6


jax.tree_util.register_dataclass(NequIPConfig, data_fields=["avg_neighbors"],
                                 meta_fields=[f.name for f in fields(NequIPConfig) if f.name != "avg_neighbors"])


class NequIPBatch(NamedTuple):
    """Padded crystals for NequIP (a JAX pytree). The last graph is padding.

    Edge e points from receiver to sender's periodic image:
    r_e = positions[senders[e]] + shifts[e] @ cells[g] − positions[receivers[e]].
    """

    species: np.ndarray  # (N,) int32, 0 on padding nodes
    positions: np.ndarray  # (N, 3) Cartesian, Å
    cells: np.ndarray  # (G, 3, 3) lattice vectors as rows, Å
    senders: np.ndarray  # (E,) int32
    receivers: np.ndarray  # (E,) int32, sorted
    shifts: np.ndarray  # (E, 3) int32 image offsets in lattice vectors
    node_graph: np.ndarray  # (N,) int32: graph index of each node
    n_node: np.ndarray  # (G,) float32: real nodes per graph
    node_mask: np.ndarray  # (N,) float32
    edge_mask: np.ndarray  # (E,) float32
    graph_mask: np.ndarray  # (G,) float32


def nequip_batch(structures: Sequence[Structure], cutoff: float, n_graphs: int | None = None,
                 min_nodes: int = 0, min_edges: int = 0, dtype: type = np.float32) -> NequIPBatch:
    """Pad `structures` into one batch of `n_graphs` real slots (default: as many as
    structures) plus a padding graph; raises GraphError naming a bad structure.

    Node and edge counts are rounded up to a power of two (at least `min_nodes`,
    `min_edges`) so that XLA compiles few shapes. Padding edges join the last
    (padding) node to its image one padding cell away, 2 × cutoff.
    """
    n_graphs = len(structures) if n_graphs is None else n_graphs
    if len(structures) > n_graphs:
        raise ValueError(f"{len(structures)} structures do not fit a batch of {n_graphs}")
    lists = []
    for structure in structures:
        error = graph_input_error(structure)
        if error:
            raise GraphError(error)
        centers, points, images, _ = structure.get_neighbor_list(r=cutoff)
        order = np.argsort(centers, kind="stable")  # receivers sorted for the segment sums
        lists.append((centers[order], points[order], images[order]))
    n_real_nodes = sum(len(s) for s in structures)
    n_real_edges = sum(len(centers) for centers, _, _ in lists)
    n_nodes = power_of_two(max(n_real_nodes + 1, min_nodes))
    n_edges = power_of_two(max(n_real_edges, 1, min_edges))

    species = np.zeros(n_nodes, np.int32)
    positions = np.zeros((n_nodes, 3), dtype)
    cells = np.tile(2.0 * cutoff * np.eye(3, dtype=dtype), (n_graphs + 1, 1, 1))
    senders = np.full(n_edges, n_nodes - 1, np.int32)
    receivers = np.full(n_edges, n_nodes - 1, np.int32)
    shifts = np.tile(np.array([1, 0, 0], np.int32), (n_edges, 1))
    node_graph = np.full(n_nodes, n_graphs, np.int32)
    n_node = np.zeros(n_graphs + 1, np.float32)
    node_at, edge_at = 0, 0
    for index, (structure, (centers, points, images)) in enumerate(zip(structures, lists)):
        nodes = slice(node_at, node_at + len(structure))
        edges = slice(edge_at, edge_at + len(centers))
        species[nodes] = [site.specie.Z for site in structure]
        positions[nodes] = structure.cart_coords
        cells[index] = structure.lattice.matrix
        senders[edges] = points + node_at
        receivers[edges] = centers + node_at
        shifts[edges] = np.rint(images)
        node_graph[nodes] = index
        n_node[index] = len(structure)
        node_at, edge_at = node_at + len(structure), edge_at + len(centers)
    node_mask = (np.arange(n_nodes) < node_at).astype(np.float32)
    edge_mask = (np.arange(n_edges) < edge_at).astype(np.float32)
    graph_mask = (np.arange(n_graphs + 1) < len(structures)).astype(np.float32)
    return NequIPBatch(species, positions, cells, senders, receivers, shifts, node_graph, n_node,
                       node_mask, edge_mask, graph_mask)


def fit_species_shift(structures: Sequence[Structure], energies: Sequence[float]) -> dict[int, float]:
    """Per-species energy (eV/atom, keyed by Z) that best explains the total
    `energies` (eV) by least squares on the element counts: the model's shift, so
    that the network learns only what composition alone does not explain."""
    elements = sorted({site.specie.Z for structure in structures for site in structure})
    column = {z: i for i, z in enumerate(elements)}
    counts = np.zeros((len(structures), len(elements)))
    for row, structure in enumerate(structures):
        for site in structure:
            counts[row, column[site.specie.Z]] += 1
    mu = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)[0]
    return {z: float(mu[column[z]]) for z in elements}


def bessel_basis(lengths: jax.Array, frequencies: jax.Array, cutoff: float) -> jax.Array:
    """sqrt(2/c) sin(w_n r/c) / r, NequIP's radial basis (w_n start at nπ and are trained)."""
    r = lengths[:, None]
    return jnp.sqrt(2.0 / cutoff) * jnp.sin(frequencies * r / cutoff) / r


def polynomial_envelope(lengths: jax.Array, cutoff: float, p: int = 6) -> jax.Array:
    """DimeNet's envelope: 1 at r = 0, 0 at and beyond the cutoff with p − 1
    vanishing derivatives there, so energy and forces are smooth as atoms cross it."""
    x = lengths / cutoff
    u = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
    return jnp.where(x < 1.0, u, 0.0)


def edge_vectors(batch: NequIPBatch, positions: jax.Array, strain: jax.Array) -> jax.Array:
    """r_e of every edge after the strain ε = sym(`strain`) (G, 3, 3) is applied to
    positions and cells (r → r (I + ε), rows as vectors)."""
    deformation = jnp.eye(3, dtype=positions.dtype) + 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    positions = jnp.einsum("ni,nij->nj", positions, deformation[batch.node_graph])
    cells = jnp.asarray(batch.cells, positions.dtype) @ deformation
    edge_cells = cells[batch.node_graph[batch.receivers]]
    offsets = jnp.einsum("ei,eij->ej", jnp.asarray(batch.shifts, positions.dtype), edge_cells)
    return positions[batch.senders] + offsets - positions[batch.receivers]


class RadialMLP(nn.Module):
    """Edge-length features → tensor-product weights. No biases: zero features at the
    cutoff give zero weights, so the envelope's smoothness carries through."""

    hidden: int
    layers: int
    outputs: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.layers):
            x = nn.silu(nn.Dense(self.hidden, use_bias=False)(x))
        return nn.Dense(self.outputs, use_bias=False)(x)


class Interaction(nn.Module):
    """One NequIP block: linear, convolution with the edge harmonics weighted by the
    radial MLP, sum over neighbours, linear, gate, plus a species-dependent linear
    self-connection of the block's input."""

    config: NequIPConfig

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray, species: jax.Array, harmonics: e3nn.IrrepsArray,
                 radial: jax.Array, senders: jax.Array, receivers: jax.Array) -> e3nn.IrrepsArray:
        config = self.config
        irreps = e3nn.Irreps(config.irreps).regroup()
        skip = e3nn.flax.Linear(irreps, num_indexed_weights=MAX_Z + 1, force_irreps_out=True)(species, x)

        h = e3nn.flax.Linear(x.irreps)(x)
        messages = e3nn.tensor_product(h[senders], harmonics, filter_ir_out=irreps)
        messages = messages * RadialMLP(config.radial_hidden, config.radial_layers,
                                        messages.irreps.num_irreps)(radial)
        summed = jax.ops.segment_sum(messages.array, receivers, x.shape[0], indices_are_sorted=True)
        h = e3nn.IrrepsArray(messages.irreps, summed / jnp.sqrt(config.avg_neighbors))

        scalars = irreps.filter(keep=["0e", "0o"])
        gated = irreps.filter(drop=["0e", "0o"])
        h = e3nn.flax.Linear(scalars + e3nn.Irreps(f"{gated.num_irreps}x0e") + gated)(h)
        h = e3nn.gate(h, even_act=jax.nn.silu, even_gate_act=jax.nn.sigmoid)
        return skip + h.rechunk(irreps)


class NequIP(nn.Module):
    """Species and edge vectors in, unscaled energy of every atom out (N,)."""

    config: NequIPConfig

    @nn.compact
    def __call__(self, species: jax.Array, vectors: jax.Array, senders: jax.Array, receivers: jax.Array,
                 edge_mask: jax.Array) -> jax.Array:
        config = self.config
        lengths = jnp.linalg.norm(vectors, axis=-1)
        frequencies = self.param("bessel_frequencies", lambda key: jnp.pi * jnp.arange(1, config.n_basis + 1.0))
        envelope = polynomial_envelope(lengths, config.cutoff, config.envelope_p) * edge_mask
        radial = bessel_basis(lengths, frequencies, config.cutoff) * envelope[:, None]
        harmonics = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(config.sh_lmax), vectors,
                                             normalize=True, normalization="component")

        n_scalars = e3nn.Irreps(config.irreps).filter(keep=["0e"]).num_irreps
        x = e3nn.IrrepsArray(f"{n_scalars}x0e", nn.Embed(MAX_Z + 1, n_scalars)(species))
        for _ in range(config.blocks):
            x = Interaction(config)(x, species, harmonics, radial, senders, receivers)
        return e3nn.flax.Linear("1x0e")(x).array[:, 0]


@jax.jit
def _init_network(config: NequIPConfig, key: jax.Array, batch: NequIPBatch) -> dict:
    """The network's variables, jitted: e3nn-jax run eagerly takes tens of seconds."""
    vectors = edge_vectors(batch, jnp.asarray(batch.positions), jnp.zeros(batch.cells.shape))
    return NequIP(config).init(key, batch.species, vectors, batch.senders, batch.receivers, batch.edge_mask)


def init_params(config: NequIPConfig, key: jax.Array, batch: NequIPBatch,
                shift: dict[int, float] | None = None, scale: float = 1.0) -> dict:
    """Parameters: the network's (`"params"`, trained) and the per-species energy
    `"shift"` and `"scale"` tables (indexed by Z; fitted constants, not trained).

    Per-atom energy = scale[Z] × network + shift[Z]. Pass `fit_species_shift`'s
    result as `shift` and, as NequIP does by default, the RMS of the training force
    components as `scale` (the same for every species): the network then learns
    forces in units of their typical size, whatever the data's energy scale. With
    energies only, the RMS of the per-atom energy residuals after the shift is the
    stand-in.
    """
    variables = _init_network(config, key, batch)
    shift_table = np.zeros(MAX_Z + 1, np.float32)
    for z, value in (shift or {}).items():
        shift_table[z] = value
    return {"params": variables["params"], "shift": jnp.asarray(shift_table),
            "scale": jnp.full(MAX_Z + 1, scale, jnp.float32)}


def graph_energies(params: dict, config: NequIPConfig, batch: NequIPBatch, positions: jax.Array,
                   strain: jax.Array) -> jax.Array:
    """Total energy (eV) of every graph (G,) at `positions` under `strain`; 0 on padding graphs."""
    vectors = edge_vectors(batch, positions, strain)
    atomic = NequIP(config).apply({"params": params["params"]}, batch.species, vectors, batch.senders,
                                  batch.receivers, batch.edge_mask)
    atomic = (atomic * params["scale"][batch.species] + params["shift"][batch.species]) * batch.node_mask
    energies = jax.ops.segment_sum(atomic, batch.node_graph, batch.cells.shape[0])
    return energies * batch.graph_mask


@jax.jit
def energy_forces_stress(params: dict, config: NequIPConfig,
                         batch: NequIPBatch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Energies (G,) in eV, forces (N, 3) in eV/Å and stresses (G, 6) in eV/Å³ (Voigt
    xx, yy, zz, yz, xz, xy; ASE's sign: positive under tension)."""
    positions = jnp.asarray(batch.positions)
    strain = jnp.zeros(batch.cells.shape, positions.dtype)

    def total(positions, strain):
        energies = graph_energies(params, config, batch, positions, strain)
        return jnp.sum(energies), energies

    (d_positions, d_strain), energies = jax.grad(total, argnums=(0, 1), has_aux=True)(positions, strain)
    forces = -d_positions * batch.node_mask[:, None]
    volumes = jnp.abs(jnp.linalg.det(jnp.asarray(batch.cells, positions.dtype)))
    stresses = jnp.stack([d_strain[:, i, j] for i, j in VOIGT], axis=-1) / volumes[:, None]
    return energies, forces, stresses * batch.graph_mask[:, None]
