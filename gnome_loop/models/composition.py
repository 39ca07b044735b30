"""GNoME's composition model in flax: a deep set over the elements of a formula.

Each element is a species embedding with its atomic fraction; the per-element
features are pooled with fraction weights (GNoME: one node per element with
one-hot × fraction; a deep set is the complete-graph model without messages). It
scores formulas before any structure exists (composition enumeration).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from pymatgen.core import Composition

from gnome_loop.models.gnome import MLP
from gnome_loop.models.graph import MAX_Z

class CompositionBatch(NamedTuple):
    """Padded formulas: element slots per formula; the last formula is padding."""

    species: np.ndarray  # (G, M) int32, 0 on empty slots
    fractions: np.ndarray  # (G, M) float32
    graph_mask: np.ndarray  # (G,) float32


#: Most distinct elements of a formula the composition model takes.
MAX_ELEMENTS = 8


def composition_input_error(composition: Composition) -> str | None:
    """Why the composition model cannot take `composition`, or None."""
    if len(composition.elements) > MAX_ELEMENTS:
        return f"{composition.reduced_formula} has more than {MAX_ELEMENTS} elements"
    return None


def batch_compositions(compositions: Sequence[Composition], n_graphs: int) -> CompositionBatch:
    """Pad formulas into one batch of `n_graphs` slots plus a padding formula."""
    species = np.zeros((n_graphs + 1, MAX_ELEMENTS), np.int32)
    fractions = np.zeros((n_graphs + 1, MAX_ELEMENTS), np.float32)
    for row, composition in enumerate(compositions):
        error = composition_input_error(composition)
        if error:
            raise ValueError(error)
        items = sorted(composition.fractional_composition.items(), key=lambda item: item[0].Z)
        for column, (element, fraction) in enumerate(items):
            species[row, column] = element.Z
            fractions[row, column] = fraction
    graph_mask = (np.arange(n_graphs + 1) < len(compositions)).astype(np.float32)
    return CompositionBatch(species, fractions, graph_mask)


class CompositionModel(nn.Module):
    """GNoME's composition model as a deep set: formula in, standardised energy per atom out."""

    width: int = 128

    @nn.compact
    def __call__(self, batch: CompositionBatch) -> jax.Array:
        present = (batch.species > 0)[..., None].astype(jnp.float32)
        features = jnp.concatenate([nn.Embed(MAX_Z + 1, self.width)(batch.species), batch.fractions[..., None]], -1)
        h = MLP((self.width, self.width))(features)
        pooled = jnp.sum(h * batch.fractions[..., None] * present, axis=1)
        return MLP((self.width, self.width, 1))(pooled)[:, 0]
