"""MP2020 energy corrections, with a reason for every entry they reject.

pymatgen's `MaterialsProject2020Compatibility` silently drops an entry whose
settings differ from the Materials Project's. A DFT job that ran with the wrong U
or POTCAR would then vanish from the campaign without a word, so each entry is
first checked against what MP2020 expects (run type, Hubbard U, POTCARs) and
every mismatch found is named.
"""

from __future__ import annotations

import functools
import warnings

from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
from pymatgen.entries.computed_entries import ComputedEntry
from pymatgen.io.vasp.sets import MPRelaxSet

MP_RUN_TYPES = ("GGA", "GGA+U")


@functools.cache
def _compatibility() -> MaterialsProject2020Compatibility:
    return MaterialsProject2020Compatibility()


def mp_potcar_symbol(element: str) -> str:
    """The POTCAR MP's relaxations use for `element` (MPRelaxSet's choice)."""
    setting = MPRelaxSet.CONFIG["POTCAR"].get(element, element)
    return setting["symbol"] if isinstance(setting, dict) else setting


def _u_problems(entry: ComputedEntry, u_settings: dict) -> list[str]:
    """Hubbard U values that differ from MP's.

    MP applies U only when the most electronegative element is O or F
    (`u_settings` is keyed by that anion); any other compound is plain GGA.
    """
    composition = entry.composition
    anion = sorted(composition.elements, key=lambda el: el.X)[-1].symbol  # as MP2020 picks it
    expected = u_settings.get(anion, {})
    used = entry.parameters.get("hubbards") or {}
    problems = []
    for element in sorted(el.symbol for el in composition.elements):
        want, have = float(expected.get(element, 0)), float(used.get(element, 0))
        if want == have:
            continue
        if want == 0:
            problems.append(f"U({element})={have} where MP2020 expects no U (plain GGA)")
        elif have == 0:
            problems.append(f"no U on {element} where MP2020 expects U({element})={want}")
        else:
            problems.append(f"U({element})={have} where MP2020 expects {want}")
    return problems


def _potcar_problems(entry: ComputedEntry) -> list[str]:
    """POTCARs that differ from MP's choice, judged by their symbols (e.g. 'Fe_pv')."""
    spec = entry.parameters.get("potcar_spec")
    titles = [item["titel"] for item in spec if item] if spec else entry.parameters.get("potcar_symbols") or []
    used = [title.split()[1] for title in titles if title and len(title.split()) > 1]
    if not used:
        return ["no POTCAR symbols recorded"]
    problems = []
    for element in sorted(el.symbol for el in entry.composition.elements):
        mine = sorted({symbol for symbol in used if symbol.split("_")[0] == element})
        expected = mp_potcar_symbol(element)
        if not mine:
            problems.append(f"no POTCAR for {element} where MP uses {expected}")
        elif mine != [expected]:
            problems.append(f"POTCAR {', '.join(mine)} where MP uses {expected}")
    return problems


def mp2020_correct(entry: ComputedEntry) -> tuple[ComputedEntry | None, str | None]:
    """The entry with MP2020 corrections (on a copy, earlier adjustments cleared), or None and why not.

    The reason starts with "not MP-compatible: " and lists every problem found.
    """
    compat = _compatibility()
    run_type = entry.parameters.get("run_type")
    if run_type not in MP_RUN_TYPES:  # U and POTCAR expectations mean nothing for other functionals
        return None, f"not MP-compatible: run type {run_type!r} (MP2020 corrects GGA and GGA+U only)"
    problems = _u_problems(entry, compat.u_settings) + _potcar_problems(entry)
    if problems:
        return None, "not MP-compatible: " + "; ".join(problems)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oxidation-state guessing warns for intermetallics
        try:
            return compat.process_entry(entry, inplace=False, on_error="raise"), None
        except CompatibilityError as error:
            # pymatgen appends the whole entry as a dict to some messages: keep the sentence
            return None, f"not MP-compatible: {str(error).split(' for {')[0]}"


def mp2020_correct_all(entries: list[ComputedEntry]) -> tuple[list[ComputedEntry], list[tuple[str, str]]]:
    """Corrected copies of the compatible entries, and (entry_id, reason) for the rest."""
    kept, rejected = [], []
    for entry in entries:
        corrected, reason = mp2020_correct(entry)
        if corrected is None:
            rejected.append((entry.entry_id, reason))
        else:
            kept.append(corrected)
    return kept, rejected
