"""The energy-model plug-in point: what the campaign asks of a model, and how a saved
model is found again.

A saved model is a directory holding its own files (safe formats, no pickle) and a
`model_card.json` that names the architecture, the hash of the training data, the
fit metrics and the creation time. `load_model` reads the card and hands the
directory to the class of that architecture.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from pymatgen.core import Structure

from gnome_loop.structures import structure_id

MODEL_CARD = "model_card.json"


class EnergyModel(Protocol):
    """Predicts energy per atom (eV/atom) with an uncertainty from a structure."""

    name: str

    def fit(
        self, structures: list[Structure], energies_per_atom: np.ndarray, formulas: list[str] | None = None
    ) -> dict:
        """Train on labelled structures; return metrics with at least `val_mae` (on the
        formula-hash validation split, None when it is empty), `n_train` and `n_val`.
        `formulas` are the reduced formulas, computed from the structures when omitted."""
        ...

    def predict(self, structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
        """Mean energy per atom and its uncertainty, one value per structure."""
        ...

    def save(self, directory: Path) -> None:
        """Write the model and its card into `directory`."""
        ...

    # Optional: `input_error(structure) -> str | None`, why `predict` would refuse the
    # structure (None: it would not). `predict_each` checks it first when a model has it.

    @classmethod
    def load(cls, directory: Path) -> "EnergyModel":
        """Read a model that `save` wrote; fail clearly on another architecture."""
        ...


#: What `predict_each` gives for a NaN or infinite prediction.
NON_FINITE_PREDICTION = "non-finite prediction"


def predict_each(model: EnergyModel, structures: Sequence[Structure]) -> list[tuple[float, float] | str]:
    """(energy per atom, uncertainty) per structure, or why there is none: the model's
    reason for a structure it refuses, or "non-finite prediction" for a NaN or inf.

    A model refuses a whole batch for one bad structure (ValueError). Refusals the
    model foresees (its `input_error`, where it has one) are set aside first, so the
    rest goes through in one call; should that call still fail, the batch is split in
    halves until the bad ones stand alone (each costs about 2·log2(n) calls).
    """
    structures = list(structures)
    errors = [_foreseen_error(model, structure) for structure in structures]
    results = iter(_predict_bisecting(model, [s for s, error in zip(structures, errors) if error is None]))
    return [error if error is not None else next(results) for error in errors]


def _foreseen_error(model: EnergyModel, structure: Structure) -> str | None:
    """The model's `input_error` for `structure` (None where it has none); a check that
    itself fails on the structure (a singular cell, say) is a refusal too."""
    check = getattr(model, "input_error", None)
    try:
        return check(structure) if check else None
    except ValueError as error:
        return str(error)


def _predict_bisecting(model: EnergyModel, structures: list[Structure]) -> list[tuple[float, float] | str]:
    """`predict_each` without the model's foreseen refusals: split on ValueError."""
    if not structures:
        return []
    try:
        mean, spread = model.predict(structures)
    except ValueError as error:
        if len(structures) == 1:
            return [str(error)]
        half = len(structures) // 2
        return _predict_bisecting(model, structures[:half]) + _predict_bisecting(model, structures[half:])
    return [(float(m), float(s)) if math.isfinite(m) and math.isfinite(s) else NON_FINITE_PREDICTION
            for m, s in zip(mean.tolist(), spread.tolist())]


def data_hash(structures: Sequence[Structure], energies_per_atom: np.ndarray) -> str:
    """Content hash of a training set (structure ids and energies), for the model card."""
    digest = hashlib.sha1()
    for structure, energy in zip(structures, np.asarray(energies_per_atom, dtype=float)):
        digest.update(f"{structure_id(structure)} {energy!r}\n".encode())
    return digest.hexdigest()[:16]


def write_model_card(directory: str | Path, architecture: str, data_hash: str, metrics: dict) -> None:
    """Write `model_card.json` into `directory`."""
    card = {
        "architecture": architecture,
        "data_hash": data_hash,
        "metrics": metrics,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (Path(directory) / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")


def read_model_card(directory: str | Path, architecture: str | None = None) -> dict:
    """Read the model card of `directory`; with `architecture`, check that it matches."""
    path = Path(directory) / MODEL_CARD
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {directory} is not a saved model")
    card = json.loads(path.read_text())
    if architecture is not None and card.get("architecture") != architecture:
        raise ValueError(
            f"{directory} holds a {card.get('architecture')!r} model, not {architecture!r}; "
            "load it with gnome_loop.models.base.load_model"
        )
    return card
