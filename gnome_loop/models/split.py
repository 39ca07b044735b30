"""The train/validation split of energy models, by a hash of the reduced formula.

GNoME (Merchant et al., Nature 2023, Methods) puts a structure in the training set
when the MD5 hash of its reduced formula, as an integer, is < 85 modulo 100. All
polymorphs of a composition therefore fall on the same side, so validation measures
generalisation to new compositions rather than recall of a known one.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from pymatgen.core import Composition


def is_train(reduced_formula: str, train_percent: int = 85) -> bool:
    """True when `reduced_formula` belongs to the training split (same answer in every
    process and on every machine)."""
    digest = hashlib.md5(reduced_formula.encode(), usedforsecurity=False).hexdigest()
    return int(digest, 16) % 100 < train_percent


def split_indices(reduced_formulas: Sequence[str], train_percent: int = 85) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation items of a list of reduced formulas.

    Elements are always in training: they are the hull's end points, known in every
    campaign, and a model never has to predict them for a candidate.
    """
    mask = np.array([len(Composition(formula)) == 1 or is_train(formula, train_percent)
                     for formula in reduced_formulas], dtype=bool)
    indices = np.arange(len(mask))
    return indices[mask], indices[~mask]
