"""A baseline energy model: energy per atom as a composition-weighted sum of
per-element energies.

It ignores structure, so polymorphs get the same prediction. It is the floor any
real model (the GNoME GNN) must beat, a fast stand-in for tests and demos, and the
kind of per-element linear reference GNNs are trained on top of.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from gnome_loop.models.base import data_hash, read_model_card, write_model_card
from gnome_loop.models.split import split_indices

PARAMETERS_FILE = "linear_model.json"


class LinearElementModel:
    """Baseline: energy per atom ≈ Σ_el x_el μ_el, with x_el the atomic fractions.

    The μ are fitted by ridge-regularised least squares (ridge `ridge` × number of
    samples, small: it only keeps rarely seen elements well-posed). The uncertainty is
    one number for every prediction: the RMS residual of the final fit on all data.
    Predicting for an element never seen in training raises ValueError naming it.
    """

    name = "linear-element-baseline"

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge
        self.elements: list[str] = []
        self.mu = np.zeros(0)
        self.residual_std = 0.0
        self.data_hash = ""
        self.metrics: dict = {}

    def input_error(self, structure: Structure) -> str | None:
        """Why the fitted model cannot predict `structure` (an element it never saw), or None."""
        if not self.elements:  # unfitted: predict() says so
            return None
        return self._unknown_elements(structure, set(self.elements))

    def _unknown_elements(self, structure: Structure, known: set[str] | dict[str, int]) -> str | None:
        unknown = sorted(el.symbol for el in structure.composition.elements if el.symbol not in known)
        if unknown:
            return (f"{self.name} cannot predict {structure.composition.reduced_formula}: "
                    f"element(s) {', '.join(unknown)} were not in its training data")
        return None

    def _fractions(self, structures: list[Structure], elements: list[str]) -> np.ndarray:
        column = {el: i for i, el in enumerate(elements)}
        x = np.zeros((len(structures), len(elements)))
        for row, structure in enumerate(structures):
            error = self._unknown_elements(structure, column)
            if error:
                raise ValueError(error)
            for el, amount in structure.composition.fractional_composition.items():
                x[row, column[el.symbol]] = amount
        return x

    def _solve(self, x: np.ndarray, y: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
        """Least squares, shrunk towards `prior` with `prior_weight` plus the small ridge."""
        weight = self.ridge * len(y) + prior_weight
        gram = x.T @ x + weight * np.eye(x.shape[1])
        return np.linalg.solve(gram, x.T @ y + weight * prior)

    def fit(
        self, structures: list[Structure], energies_per_atom: np.ndarray, formulas: list[str] | None = None,
        prior: dict[str, float] | None = None, prior_weight: float = 0.0,
    ) -> dict:
        """Fit on the formula-hash training split to measure `val_mae`, then refit on all
        data. Returns `val_mae` (None without validation data), `n_train`, `n_val` and
        `residual_std` (eV/atom).

        With `prior` (per-element energies; missing elements count as 0), each μ is
        shrunk towards it with `prior_weight`, in units of one pure-element sample's
        evidence: an element seen only in a few compounds then stays near its prior
        instead of absorbing those compounds' noise (fine-tuning on little data)."""
        if not structures:
            raise ValueError("cannot fit a model on no structures")
        y = np.asarray(energies_per_atom, dtype=float)
        if formulas is None:
            formulas = [structure.composition.reduced_formula for structure in structures]
        self.elements = sorted({el.symbol for structure in structures for el in structure.composition.elements})
        x = self._fractions(structures, self.elements)
        train, val = split_indices(formulas)
        mu0 = np.array([(prior or {}).get(el, 0.0) for el in self.elements])
        val_mae = None
        if len(train) and len(val):
            mu = self._solve(x[train], y[train], mu0, prior_weight)
            val_mae = float(np.mean(np.abs(x[val] @ mu - y[val])))
        self.mu = self._solve(x, y, mu0, prior_weight)
        self.residual_std = float(np.sqrt(np.mean((x @ self.mu - y) ** 2)))
        self.data_hash = data_hash(structures, y)
        self.metrics = {"val_mae": val_mae, "n_train": len(train), "n_val": len(val), "residual_std": self.residual_std}
        return self.metrics

    def predict(self, structures: list[Structure]) -> tuple[np.ndarray, np.ndarray]:
        """Energy per atom and its (constant) uncertainty for each structure."""
        if not self.elements:
            raise ValueError(f"{self.name} is not fitted: call fit() or load() first")
        mean = self._fractions(structures, self.elements) @ self.mu
        return mean, np.full(len(mean), self.residual_std)

    def save(self, directory: Path) -> None:
        """Write the per-element energies as JSON plus the model card."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        parameters = {
            "ridge": self.ridge,
            "mu": dict(zip(self.elements, self.mu.tolist())),
            "residual_std": self.residual_std,
        }
        (directory / PARAMETERS_FILE).write_text(json.dumps(parameters, indent=2) + "\n")
        write_model_card(directory, self.name, self.data_hash, self.metrics)

    @classmethod
    def load(cls, directory: Path) -> "LinearElementModel":
        """Read a model written by `save`; ValueError if the directory holds another model."""
        card = read_model_card(directory, architecture=cls.name)
        parameters = json.loads((Path(directory) / PARAMETERS_FILE).read_text())
        model = cls(ridge=parameters["ridge"])
        model.elements = list(parameters["mu"])
        model.mu = np.array(list(parameters["mu"].values()), dtype=float)
        model.residual_std = parameters["residual_std"]
        model.data_hash = card["data_hash"]
        model.metrics = card["metrics"]
        return model
