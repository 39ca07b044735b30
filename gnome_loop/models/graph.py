"""Crystal graphs for the GNNs: periodic neighbour lists and padded batches.

A crystal graph has one node per atom of the cell and one directed edge per
neighbour within the cutoff, periodic images included (pymatgen's
`get_neighbor_list`, vectorised C code). Batches are padded to a few fixed sizes
("buckets") so that XLA compiles a handful of shapes, not one per batch: padding
nodes and edges belong to an extra, masked padding graph and never change a
prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from pymatgen.core import Structure

from gnome_loop.structures import MIN_DISTANCE, close_pairs, packing_volume, shortest_contact

#: Largest atomic number of the species embedding table (Z = 1 … 94); index 0 is padding.
MAX_Z = 94


class GraphError(ValueError):
    """A structure that cannot become a graph, with the reason."""


@dataclass(frozen=True)
class CrystalGraph:
    """One crystal: atomic numbers and directed edges (sender → receiver) with lengths in Å."""

    species: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    distances: np.ndarray

    @property
    def n_node(self) -> int:
        return len(self.species)

    @property
    def n_edge(self) -> int:
        return len(self.senders)


class GraphBatch(NamedTuple):
    """Padded arrays of several graphs (a JAX pytree). The last graph is padding."""

    species: np.ndarray  # (N,) int32, 0 on padding nodes
    senders: np.ndarray  # (E,) int32
    receivers: np.ndarray  # (E,) int32
    distances: np.ndarray  # (E,) float32
    node_graph: np.ndarray  # (N,) int32: graph index of each node
    n_node: np.ndarray  # (G,) float32: real nodes per graph
    node_mask: np.ndarray  # (N,) float32
    edge_mask: np.ndarray  # (E,) float32
    graph_mask: np.ndarray  # (G,) float32


def graph_input_error(structure: Structure) -> str | None:
    """Why `structure` cannot go into the network, or None. Checked before any model call."""
    return _site_error(structure) or _contact_error(shortest_contact(structure, MIN_DISTANCE))


def _site_error(structure: Structure) -> str | None:
    """`graph_input_error`'s checks other than the neighbour search for close contacts,
    and a cell too small for any (which would make that search huge)."""
    if len(structure) == 0:
        return "empty structure: no atoms"
    if not structure.is_ordered:
        return "disordered structure: partial occupancies"
    if not (np.all(np.isfinite(structure.cart_coords)) and np.all(np.isfinite(structure.lattice.matrix))):
        return "NaN or infinite coordinates"
    per_atom = structure.volume / len(structure)
    if per_atom < packing_volume(MIN_DISTANCE):
        return f"atoms less than {MIN_DISTANCE} Å apart: {per_atom:.3g} Å³ per atom"
    too_heavy = sorted({site.specie.symbol for site in structure if site.specie.Z > MAX_Z})
    if too_heavy:
        return f"element(s) {','.join(too_heavy)} outside the embedding table (Z <= {MAX_Z})"
    return None


def _contact_error(distance: float) -> str | None:
    return f"atoms {distance:.3f} Å apart (< {MIN_DISTANCE} Å)" if distance < MIN_DISTANCE else None


def crystal_graph(structure: Structure, cutoff: float) -> CrystalGraph:
    """The periodic graph of `structure` within `cutoff` Å; raises GraphError with a reason."""
    error = _site_error(structure)
    if error:
        raise GraphError(error)
    centers, points, distances = close_pairs(structure, max(cutoff, MIN_DISTANCE))  # the edges, the contacts check
    error = _contact_error(distances.min(initial=np.inf))
    if error:
        raise GraphError(error)
    if cutoff < MIN_DISTANCE:  # a cutoff below the contact limit: the search went that far for the check
        centers, points, distances = close_pairs(structure, cutoff)
    order = np.argsort(centers, kind="stable")  # receivers sorted: the network's segment sums rely on it
    return CrystalGraph(
        species=np.array([site.specie.Z for site in structure], dtype=np.int32),
        senders=points[order].astype(np.int32),
        receivers=centers[order].astype(np.int32),
        distances=distances[order].astype(np.float32),
    )


def bucket(n: float, minimum: int = 16, per_octave: int = 2) -> int:
    """Smallest size on a grid of `per_octave` sizes between powers of two,
    2^k · (1 + j / per_octave), that holds n (at least `minimum`): 2^k or 1.5·2^k by
    default. `minimum` and `per_octave` are powers of two, `per_octave` ≤ `minimum`."""
    if minimum & (minimum - 1) or per_octave & (per_octave - 1) or not 1 <= per_octave <= minimum:
        raise ValueError(f"bucket grid of {per_octave} sizes an octave from {minimum}: need powers of two, "
                         "the first no larger than the second")
    size = minimum
    while size < n:
        size += max((1 << (size.bit_length() - 1)) // per_octave, 1)
    return size


def power_of_two(n: float, minimum: int = 16) -> int:
    """Smallest power of two that holds n (at least `minimum`, itself a power of two).

    The coarser padding of inference and relaxation, whose inputs take every size:
    each padded shape is a compiled program kept for the life of the process (about
    230 memory maps each on CPU, of the 65,530 a process may hold), so sizes a factor
    two apart keep the set of shapes small and fixed.
    """
    return max(minimum, 1 << int(np.ceil(np.log2(max(n, 1.0)))))


def batch_graphs(graphs: Sequence[CrystalGraph], n_graphs: int, cutoff: float,
                 min_nodes: int = 0, min_edges: int = 0) -> GraphBatch:
    """Pad `graphs` into one batch of `n_graphs` real slots plus a padding graph.

    Node and edge counts are padded to `min_nodes` and `min_edges` where the graphs fit
    them (training pads every batch to one shape), else rounded up to a `bucket`;
    padding edges join the padding node to itself at a distance beyond the cutoff.
    """
    if len(graphs) > n_graphs:
        raise ValueError(f"{len(graphs)} graphs do not fit a batch of {n_graphs}")
    n_real_nodes = sum(g.n_node for g in graphs)
    n_real_edges = sum(g.n_edge for g in graphs)
    n_nodes = min_nodes if n_real_nodes + 1 <= min_nodes else bucket(n_real_nodes + 1)
    n_edges = min_edges if max(n_real_edges, 1) <= min_edges else bucket(max(n_real_edges, 1))
    pad_graph = n_graphs
    species = np.zeros(n_nodes, np.int32)
    node_graph = np.full(n_nodes, pad_graph, np.int32)
    senders = np.full(n_edges, n_nodes - 1, np.int32)
    receivers = np.full(n_edges, n_nodes - 1, np.int32)
    distances = np.full(n_edges, 2.0 * cutoff, np.float32)
    n_node = np.zeros(n_graphs + 1, np.float32)
    node_at, edge_at = 0, 0
    for index, graph in enumerate(graphs):
        nodes = slice(node_at, node_at + graph.n_node)
        edges = slice(edge_at, edge_at + graph.n_edge)
        species[nodes] = graph.species
        node_graph[nodes] = index
        senders[edges] = graph.senders + node_at
        receivers[edges] = graph.receivers + node_at
        distances[edges] = graph.distances
        n_node[index] = graph.n_node
        node_at, edge_at = node_at + graph.n_node, edge_at + graph.n_edge
    node_mask = (np.arange(n_nodes) < node_at).astype(np.float32)
    edge_mask = (np.arange(n_edges) < edge_at).astype(np.float32)
    graph_mask = (np.arange(n_graphs + 1) < len(graphs)).astype(np.float32)
    return GraphBatch(species, senders, receivers, distances, node_graph, n_node, node_mask, edge_mask, graph_mask)


def pack_graphs(graphs: Sequence[CrystalGraph], order: Sequence[int], n_graphs: int,
                max_nodes: int, max_edges: int) -> list[np.ndarray]:
    """Split `order` into consecutive batches of at most `n_graphs` graphs whose nodes
    (plus the padding node) and edges fit `max_nodes` and `max_edges`.

    Training pads every batch to one shape; packing by size budget instead of by graph
    count keeps that shape near the average batch rather than the largest possible one
    (jraph's `dynamically_batch` does the same). A graph larger than the budgets alone
    raises ValueError.
    """
    batches: list[list[int]] = [[]]
    nodes, edges = 1, 0
    for index in order:
        graph = graphs[index]
        if graph.n_node + 1 > max_nodes or graph.n_edge > max_edges:
            raise ValueError(f"graph {index} ({graph.n_node} nodes, {graph.n_edge} edges) exceeds the batch budget")
        full = len(batches[-1]) == n_graphs
        if full or nodes + graph.n_node > max_nodes or edges + graph.n_edge > max_edges:
            batches.append([])
            nodes, edges = 1, 0
        batches[-1].append(index)
        nodes, edges = nodes + graph.n_node, edges + graph.n_edge
    return [np.array(batch, dtype=int) for batch in batches if batch]


def average_coordination(graphs: Sequence[CrystalGraph]) -> float:
    """Mean number of neighbours per atom: GNoME divides summed messages by this constant."""
    nodes = sum(g.n_node for g in graphs)
    return max(1.0, sum(g.n_edge for g in graphs) / max(nodes, 1))
