"""Composition enumeration: charge-balanced formulas, ranked by a composition model,
seeded with random structures.

GNoME's composition pipeline (Merchant et al., Nature 624, 80 (2023), Methods)
enumerated formulas that are oxidation-state balanced according to SMACT (Davies et
al., J. Open Source Softw. 4, 1361 (2019)), with SMACT's rules relaxed: the Pauling
electronegativity test was dropped, and formulas were kept up to about 20 atoms per
cell. The composition model filtered them, and AIRSS built structures for the
survivors (`gnome_loop.generate.random_search`).

Charge balance here follows SMACT's `neutral_ratios`: every element takes one
oxidation state per formula, so mixed-valence formulas such as Co3O4 (Co2+ and Co3+)
are not produced (the substitution generator can still reach them from a parent).
The oxidation states are SMACT's ICSD-2024 set, restricted by default to the common
states of an element: those seen in at least 5 % of the element's non-zero ICSD
reports (SMACT's `oxidation_states_icsd24_counts.json`). That keeps Co2+ and Co3+ and
drops O- (peroxides, LiO) and Co4+; `min_fraction=0` gives the full ICSD-2024 set,
and any other SMACT set or an explicit mapping can be used. The zero oxidation
state is never used, so intermetallics are not enumerated.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from gnome_loop.generate.random_search import random_search
from gnome_loop.structures import Candidate

#: SMACT's named oxidation-state sets and the smact.Element attribute of each.
SMACT_SETS = {
    "icsd24": "oxidation_states_icsd24",
    "icsd16": "oxidation_states_icsd16",
    "smact14": "oxidation_states_smact14",
    "pymatgen_sp": "oxidation_states_sp",
    "wiki": "oxidation_states_wiki",
}
#: Smallest share of an element's non-zero ICSD-2024 reports for a common state.
MIN_STATE_FRACTION = 0.05


@functools.lru_cache(maxsize=1)
def _icsd24_counts() -> dict[str, dict[int, int]]:
    """ICSD-2024 report counts per element and oxidation state, as SMACT ships them."""
    import smact

    rows = json.loads((Path(smact.data_directory) / "oxidation_states_icsd24_counts.json").read_text())
    counts: dict[str, dict[int, int]] = {}
    for row in rows:
        counts.setdefault(row["element"], {})[int(row["oxidation_state"])] = int(row["results_count"])
    return counts


@functools.lru_cache(maxsize=1024)
def _smact_element(symbol: str):
    import smact

    try:
        return smact.Element(symbol)
    except (NameError, KeyError, ValueError):  # SMACT has no data for the element
        return None


@functools.lru_cache(maxsize=4096)
def oxidation_states(symbol: str, source: str = "icsd24", min_fraction: float = MIN_STATE_FRACTION) -> tuple[int, ...]:
    """Non-zero oxidation states of an element, sorted; () when SMACT has none.

    `source` names a SMACT set (see `SMACT_SETS`). For "icsd24" a state must also
    make up at least `min_fraction` of the element's non-zero ICSD-2024 reports.
    """
    if source not in SMACT_SETS:
        raise ValueError(f"unknown oxidation-state set {source!r}; known: {', '.join(SMACT_SETS)}")
    element = _smact_element(symbol)
    states = getattr(element, SMACT_SETS[source], None) if element is not None else None
    states = sorted({int(state) for state in states or () if state != 0})
    if source == "icsd24" and min_fraction > 0:
        counts = {state: count for state, count in _icsd24_counts().get(symbol, {}).items() if state != 0}
        total = sum(counts.values())
        states = [state for state in states if total and counts.get(state, 0) >= min_fraction * total]
    return tuple(states)


@functools.lru_cache(maxsize=64)
def _stoichiometries(k: int, max_stoichiometry: int, max_atoms: int) -> np.ndarray:
    """All k-tuples of counts 1..max_stoichiometry with no common divisor (reduced
    formulas) and at most max_atoms atoms, as rows of an int array."""
    rows = np.array(list(itertools.product(range(1, max_stoichiometry + 1), repeat=k)), dtype=np.int64).reshape(-1, k)
    rows = rows[rows.sum(axis=1) <= max_atoms]
    reduced = np.gcd.reduce(rows, axis=1) == 1 if len(rows) else np.zeros(0, bool)
    return rows[reduced]


def balanced_formulas(
    elements: Sequence[str],
    max_elements: int = 3,
    min_elements: int = 2,
    max_atoms: int = 20,
    max_stoichiometry: int = 8,
    pauling: bool = False,
    oxidation_states_set: str | Mapping[str, Sequence[int]] = "icsd24",
    min_fraction: float = MIN_STATE_FRACTION,
) -> list[str]:
    """Reduced formulas (pymatgen `reduced_formula`) of the charge-balanced
    compositions of `min_elements`..`max_elements` distinct elements of `elements`.

    A composition is balanced when each element can take one of its oxidation states
    (`oxidation_states`, or the mapping given as `oxidation_states_set`) so that the
    charges sum to zero, as in SMACT's `neutral_ratios`. Counts of the reduced
    formula are at most `max_stoichiometry` each (SMACT's threshold) and sum to at
    most `max_atoms`. With `pauling`, SMACT's Pauling test must also pass (cations
    less electronegative than anions); GNoME dropped it, so it is off by default.
    Elements without oxidation states (noble gases) take part in no formula.
    Sorted alphabetically.
    """
    from smact.screening import pauling_test

    symbols = sorted(set(elements))
    if isinstance(oxidation_states_set, Mapping):
        states = {s: tuple(sorted({int(q) for q in oxidation_states_set.get(s, ()) if q})) for s in symbols}
    else:
        states = {s: oxidation_states(s, oxidation_states_set, min_fraction) for s in symbols}
    usable = [s for s in symbols if states[s]]
    found: set[str] = set()
    for k in range(max(min_elements, 1), max_elements + 1):
        table = _stoichiometries(k, max_stoichiometry, max_atoms)
        if not len(table):
            continue
        for combo in itertools.combinations(usable, k):
            hits: set[tuple[int, ...]] = set()
            for charges in itertools.product(*(states[s] for s in combo)):
                if min(charges) > 0 or max(charges) < 0:
                    continue
                if pauling:
                    electronegativities = [_smact_element(s).pauling_eneg for s in combo]
                    if None in electronegativities or not pauling_test(charges, electronegativities):
                        continue
                balanced = table[table @ np.asarray(charges) == 0]
                hits.update(map(tuple, balanced.tolist()))
            found.update(Composition(dict(zip(combo, counts))).reduced_formula for counts in hits)
    return sorted(found)


def placeholder_structure(formula: str) -> Structure:
    """A structure with the atoms of a reduced formula on a 3 Å cubic grid: how a
    formula is handed to an energy model that reads only compositions (its positions
    mean nothing)."""
    composition = Composition(formula).get_reduced_composition_and_factor()[0]
    species = [el.symbol for el, amount in sorted(composition.items()) for _ in range(int(round(amount)))]
    side = max(1, math.ceil(len(species) ** (1 / 3) - 1e-9))
    grid = [(i, j, k) for i in range(side) for j in range(side) for k in range(side)][: len(species)]
    return Structure(Lattice.cubic(3.0 * side), species, np.array(grid, float) / side)


def _energies(formulas: list[str], model) -> list[float | None]:
    """Predicted energies per atom, None where the model cannot predict."""
    if not formulas:
        return []
    if hasattr(model, "predict"):
        if "structure" in str(getattr(model, "name", "")):
            raise ValueError(f"{model.name} needs structures: score formulas with a composition model")

        def energy_of(batch: list[str]):
            prediction = model.predict([placeholder_structure(f) for f in batch])
            return prediction[0] if isinstance(prediction, tuple) else prediction
    elif callable(model):
        energy_of = model
    else:
        raise TypeError(f"model must be a callable or have predict(), not {type(model).__name__}")
    try:
        values = np.asarray(energy_of(formulas), dtype=float).reshape(-1)
    except ValueError:  # e.g. an element the model never saw: find which, one by one
        values = np.full(len(formulas), np.nan)
        for index, formula in enumerate(formulas):
            try:
                values[index] = float(np.asarray(energy_of([formula]), dtype=float).reshape(-1)[0])
            except ValueError:
                pass
    if len(values) != len(formulas):
        raise ValueError(f"the model returned {len(values)} energies for {len(formulas)} formulas")
    return [float(v) if np.isfinite(v) else None for v in values]


def score_compositions(
    formulas: Sequence[str], model: Callable[[list[str]], Sequence[float]] | object | None = None
) -> list[tuple[str, float | None]]:
    """Formulas with a predicted energy per atom (eV/atom), lowest first.

    `model` is either a callable `energy_of(formulas) -> energies` or an energy model
    with `predict(structures)` that reads only compositions (`CompositionEnsemble`,
    `LinearElementModel`): it gets placeholder structures of the formulas and its
    mean prediction is used. Which energy to rank by is the caller's choice: a
    callable can return formation energies or distances to the convex hull, which
    compare across chemistries better than raw energies. Formulas the model cannot
    predict (an unseen element raises ValueError) score None and come last. Without
    a model every score is None and the order is by atoms in the reduced formula,
    then formula.
    """
    unique = list(dict.fromkeys(formulas))
    size = {f: Composition(f).get_reduced_composition_and_factor()[0].num_atoms for f in unique}
    scores = [None] * len(unique) if model is None else _energies(unique, model)
    scored = list(zip(unique, scores))
    return sorted(scored, key=lambda item: (item[1] is None, item[1] if item[1] is not None else 0.0, size[item[0]],
                                            item[0]))


def enumerate_candidates(
    elements: Sequence[str],
    known_formulas: set[str] | Sequence[str],
    n_compositions: int,
    per_composition: int,
    max_elements: int = 3,
    max_atoms: int = 20,
    model_predict: Callable[[list[str]], Sequence[float]] | object | None = None,
    seed: int = 0,
    time_limit: float = 600.0,
    min_elements: int = 2,
    max_stoichiometry: int = 8,
    pauling: bool = False,
    oxidation_states_set: str | Mapping[str, Sequence[int]] = "icsd24",
    min_fraction: float = MIN_STATE_FRACTION,
    stats: dict | None = None,
    **search_options,
) -> list[Candidate]:
    """Random structures for the best new charge-balanced compositions of a space.

    The `balanced_formulas` of `elements` (with the limits and oxidation-state
    options given here) whose reduced formula is not among
    `known_formulas` are scored with `model_predict` (see `score_compositions`); the
    best `n_compositions` each get `per_composition` random structures
    (`random_search`, with `search_options` passed on) within `time_limit` seconds in
    all. Candidates have generator "composition"; their info adds "formula" and
    "predicted_energy" (None without a model) to that of the random search. A dict
    passed as `stats` receives the number of balanced and new formulas, the chosen
    ones and the random-search statistics per formula.
    """
    start = time.monotonic()
    known = {Composition(f).reduced_formula for f in known_formulas}
    formulas = balanced_formulas(elements, max_elements=max_elements, min_elements=min_elements,
                                 max_atoms=max_atoms, max_stoichiometry=max_stoichiometry, pauling=pauling,
                                 oxidation_states_set=oxidation_states_set, min_fraction=min_fraction)
    new = [f for f in formulas if f not in known]
    chosen = score_compositions(new, model_predict)[:n_compositions]
    search_stats: dict = {}
    found = random_search([f for f, _ in chosen], per_composition, elements=elements, max_atoms=max_atoms,
                          seed=seed, time_limit=max(0.0, time_limit - (time.monotonic() - start)),
                          stats=search_stats, **search_options)
    energy = dict(chosen)
    out = []
    for candidate in found:
        formula = candidate.structure.composition.reduced_formula
        out.append(replace(candidate, generator="composition",
                           info={**candidate.info, "formula": formula, "predicted_energy": energy.get(formula)}))
    if stats is not None:
        stats.update({"balanced": len(formulas), "new": len(new), "chosen": chosen, "search": search_stats})
    return out
