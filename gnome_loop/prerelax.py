"""Pre-relaxation of candidates with a trained NequIP ensemble (IS2RE before scoring).

A generated candidate sits away from its relaxed geometry; the energy models were
trained on relaxed structures. Relaxing candidates first with a learned potential
before predicting their energy (IS2RE) is how the leading models of
matbench-discovery work (Riebesell et al., 2023; there one universal potential both
relaxes and predicts). The potential here is the campaign's own NequIP ensemble,
trained on the oracle's relaxation trajectories; the energy model then scores the
relaxed structure.

`prerelax(structures, params, config)` relaxes the structures in padded batches
with the batched FIRE of `gnome_loop.relax`, on the ensemble's mean energy, and
then measures the members' force spread at the relaxed geometry. A candidate is
flagged (`PrerelaxResult.flag`) when it holds an element absent from the
potential's training data (it is then not relaxed at all), when its relaxation
exploded, or when that spread is above `max_force_std` (or not finite): the
potential is outside what it has seen, so its relaxed geometry is not to be
trusted and the caller keeps the unrelaxed one. A relaxation that ran out of
steps is used as it stands (status "max_steps").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from pymatgen.core import Lattice, Structure

from gnome_loop.models.graph import power_of_two
from gnome_loop.models.nequip import NequIPBatch, NequIPConfig
from gnome_loop.models.nequip_train import ensemble_outputs, force_uncertainty, load_nequip, predict_nequip
from gnome_loop.relax import RelaxBatch, RelaxResult, relax_batch

#: Extra neighbour-list radius (Å): the list is rebuilt only when atoms or the cell
#: have moved enough that a pair could have crossed the cutoff.
SKIN = 1.0


class Potential(NamedTuple):
    """A trained NequIP pre-relaxer: the members' stacked parameters, its config, and the
    atomic numbers it was trained on."""

    params: dict
    config: NequIPConfig
    species: set[int]


def load_potential(path: str | Path) -> Potential:
    """The pre-relaxer that `save_nequip` wrote into `path`."""
    params, config, metrics = load_nequip(path)
    return Potential(params, config, set(metrics["species"]))


@dataclass(frozen=True)
class PrerelaxResult:
    """A candidate's pre-relaxation: the FIRE result, the ensemble's force spread at
    its end (eV/Å, None when it exploded) and why it is flagged ("" when it is not)."""

    relax: RelaxResult | None  # None when the candidate was not relaxed (unseen element)
    force_std: float | None
    flag: str

    @property
    def structure(self) -> Structure | None:
        """The relaxed structure to use, or None when flagged."""
        return None if self.flag or self.relax is None else self.relax.structure


def nequip_compute_factory(params: dict, config: NequIPConfig, skin: float = SKIN):
    """A `relax_batch` compute factory: the ensemble's mean energy, forces and stress,
    with a neighbour list of radius cutoff + `skin` rebuilt only when needed.

    Pairs between cutoff and cutoff + skin contribute exactly nothing (the radial
    envelope is zero there), so the energy does not depend on when the list was built.
    The list is stale when a pair could have crossed from beyond cutoff + skin to
    inside the cutoff: with T = C_built⁻¹ C the cell's deformation since the build,
    S = T − I and u the displacement of each atom from where the deformation alone
    would have taken it (r − r_built T), a pair distance shrinks by at most
    ‖S‖·d + 2 max|u|, so the list holds while 2 max|u| + ‖S‖ (cutoff + skin) ≤ skin.
    """

    def factory(batch: RelaxBatch):
        species = np.asarray(batch.species)
        node_graph = np.asarray(batch.node_graph)
        n_real = int(np.sum(batch.graph_mask))
        built: dict = {}

        def build(positions: np.ndarray, cells: np.ndarray) -> None:
            senders, receivers, shifts = [], [], []
            for graph in range(n_real):
                atoms = np.flatnonzero(node_graph == graph)
                structure = Structure(Lattice(cells[graph]), species[atoms], positions[atoms],
                                      coords_are_cartesian=True)
                centers, points, images, _ = structure.get_neighbor_list(r=config.cutoff + skin)
                order = np.argsort(centers, kind="stable")
                receivers.append(atoms[centers[order]])
                senders.append(atoms[points[order]])
                shifts.append(np.rint(images[order]).astype(np.int32))
            n_edges = sum(len(r) for r in receivers)
            # a power of two, never smaller than the last list's: one compiled shape per batch
            size = max(power_of_two(n_edges), len(built.get("senders", ())))
            pad = len(species) - 1  # the last atom is padding; its edges go to its own image
            built.update(
                senders=np.concatenate(senders + [np.full(size - n_edges, pad)]).astype(np.int32),
                receivers=np.concatenate(receivers + [np.full(size - n_edges, pad)]).astype(np.int32),
                shifts=np.concatenate(shifts + [np.tile([[1, 0, 0]], (size - n_edges, 1))]).astype(np.int32),
                edge_mask=(np.arange(size) < n_edges).astype(np.float32),
                positions=positions.copy(), cells=cells.copy(), builds=built.get("builds", 0) + 1)

        def stale(positions: np.ndarray, cells: np.ndarray) -> bool:
            if not built:
                return True
            deformation = np.linalg.solve(built["cells"][:n_real], cells[:n_real])  # (G, 3, 3)
            real = node_graph < n_real
            followed = np.einsum("ni,nij->nj", built["positions"][real], deformation[node_graph[real]])
            moved = np.max(np.linalg.norm(positions[real] - followed, axis=1), initial=0.0)
            stretched = np.max(np.linalg.norm(deformation - np.eye(3), ord=2, axis=(1, 2)), initial=0.0)
            return 2.0 * moved + stretched * (config.cutoff + skin) > skin

        def compute(positions: jax.Array, cells: jax.Array):
            positions_np, cells_np = np.asarray(positions), np.asarray(cells)
            if stale(positions_np, cells_np):
                build(positions_np, cells_np)
            # the potential runs in float32 (as trained; FIRE's own state stays float64)
            cells32 = cells_np.astype(np.float32)
            cells32[-1] = 2.0 * config.cutoff * np.eye(3)  # the padding graph's cell: padding edges stay long
            nequip = NequIPBatch(
                species, positions_np.astype(np.float32), cells32, built["senders"], built["receivers"],
                built["shifts"], node_graph, np.bincount(node_graph, minlength=len(cells32)).astype(np.float32),
                np.asarray(batch.node_mask, np.float32), built["edge_mask"], np.asarray(batch.graph_mask, np.float32))
            energies, forces, stresses = ensemble_outputs(params, config, nequip)
            return tuple(jnp.mean(x, 0).astype(jnp.float64) for x in (energies, forces, stresses))

        compute.neighbour_list = built  # for inspection: "builds" counts the (re)builds
        return compute

    return factory


def prerelax(structures: Sequence[Structure], params: dict, config: NequIPConfig, fmax: float = 0.05,
             max_steps: int = 150, relax_cell: bool = True, max_force_std: float = 0.5,
             batch_size: int = 16, species: set[int] | None = None) -> list[PrerelaxResult]:
    """Relax `structures` with the NequIP ensemble `params` (stacked members), `batch_size`
    at a time; one result per structure, in order. `species`: the atomic numbers the
    potential was trained on (None: trust every element).

    Structures are batched by size (similar sizes pad least) into batches of a fixed
    number of graphs, so the compiled step is reused across batches.
    """
    unseen = {}
    for index, structure in enumerate(structures):
        missing = sorted({site.specie.symbol for site in structure if species is not None
                          and site.specie.Z not in species})
        if missing:
            unseen[index] = f"element(s) {', '.join(missing)} absent from the potential's training data"
    order = sorted((i for i in range(len(structures)) if i not in unseen), key=lambda i: len(structures[i]))
    results: dict[int, RelaxResult] = {}
    factory = nequip_compute_factory(params, config)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        relaxed = relax_batch([structures[i] for i in chunk], factory, fmax=fmax, max_steps=max_steps,
                              relax_cell=relax_cell, n_graphs=batch_size)
        results.update(zip(chunk, relaxed))
    finished = [i for i in order if results[i].structure is not None]
    spread = dict(zip(finished, force_uncertainty(
        predict_nequip(params, config, [results[i].structure for i in finished], batch_size).forces)))
    out = []
    for index in range(len(structures)):
        result, std = results.get(index), spread.get(index)
        if index in unseen:
            flag = unseen[index]
        elif result.structure is None:
            flag = f"exploded: {result.reason}"
        elif not std <= max_force_std:  # NaN too
            flag = f"force uncertainty {std:.3g} eV/Å > {max_force_std:g}"
        else:
            flag = ""
        out.append(PrerelaxResult(result, None if std is None else float(std), flag))
    return out
