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

from pymatgen.core import Composition, Element
from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
from pymatgen.entries.computed_entries import ComputedEntry
from pymatgen.io.vasp.sets import MPRelaxSet

from gnome_loop.generate.plausible import DIOXYGEN_CATIONS, cations_balance

MP_RUN_TYPES = ("GGA", "GGA+U")
#: Charge of one oxygen atom in each kind of oxygen anion MP2020 corrects differently.
OXYGEN_ANION_CHARGES = {"oxide": -2.0, "peroxide": -1.0, "superoxide": -0.5, "ozonide": -1.0 / 3.0}


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
    anion = most_electronegative(composition)
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


def most_electronegative(composition: Composition) -> str:
    """The element MP2020 treats as the anion: the highest Pauling electronegativity."""
    return sorted(composition.elements, key=lambda el: el.X)[-1].symbol


def mp_parameters(composition: Composition) -> dict:
    """The run parameters of MP's calculation of `composition`: GGA+U with MP's U values
    where the most electronegative element is O or F and a U element is present, plain
    GGA otherwise (MP's mixing rule), and MP's POTCARs."""
    anion = most_electronegative(composition)
    u_values = MPRelaxSet.CONFIG["INCAR"]["LDAUU"].get(anion, {})
    hubbards = {el.symbol: float(u_values.get(el.symbol, 0)) for el in composition.elements}
    plus_u = any(hubbards.values())
    symbols = [mp_potcar_symbol(el.symbol) for el in composition.elements]
    return {"run_type": "GGA+U" if plus_u else "GGA", "is_hubbard": plus_u, "hubbards": hubbards if plus_u else {},
            "potcar_symbols": [f"PBE {symbol}" for symbol in symbols],
            "potcar_spec": [{"titel": f"PAW_PBE {symbol}", "hash": None} for symbol in symbols]}


def _guesses(composition: Composition) -> tuple:
    """pymatgen's oxidation-state guesses as MP2020 makes them (max_sites -20), or none
    where the composition is too large for that."""
    try:
        return composition.oxi_state_guesses(max_sites=-20)
    except ValueError:
        return ()


def oxide_type_of(composition: Composition) -> str:
    """The oxygen anion of a composition without a structure: "oxide" where the rest
    balances O2-; where every other element forms ionic peroxides and superoxides
    (`plausible.DIOXYGEN_CATIONS`), the first of peroxide, superoxide and ozonide
    that it balances, or "superoxide" where O outnumbers what superoxide ions could
    balance (O2 molecules in the cell); else "oxide" (unusual oxidation states).

    MP2020 tells them apart by O–O bond lengths; this is the fallback where no
    structure is known (pymatgen's own knows a dozen formulas only)."""
    symbols = {el.symbol for el in composition.elements} - {"O"}
    if _guesses(composition) or not symbols <= DIOXYGEN_CATIONS:
        return "oxide"
    rest = Composition({el: amount for el, amount in composition.items() if el.symbol != "O"})
    for kind in ("peroxide", "superoxide", "ozonide"):
        if cations_balance(rest, -OXYGEN_ANION_CHARGES[kind] * composition["O"]):
            return kind
    most = sum(amount * max(el.icsd_oxidation_states or el.common_oxidation_states or (0,))
               for el, amount in rest.items())
    # more O than superoxide ions could hold: O2 molecules in the cell (LiO8), which MP's
    # bond-length rule counts as superoxide
    return "superoxide" if composition["O"] > 2 * most else "oxide"


def mp2020_energy(composition: Composition, uncorrected_energy: float, oxide_type: str | None = None,
                  entry_id: str | None = None) -> float:
    """The MP2020-corrected total energy (eV) of MP's uncorrected GGA/GGA+U energy of
    `composition`, with MP's parameters (`mp_parameters`) and the oxygen anion
    `oxide_type` (from `oxide_type_of` where not given). Sulfur counts as sulfide only
    where it is an anion in pymatgen's oxidation-state guess (a sulfate's S6+ is not)."""
    data: dict = {}
    if Element("O") in composition:
        data["oxide_type"] = oxide_type or oxide_type_of(composition)
    if Element("S") in composition and len(composition) > 1:
        guesses = _guesses(composition)
        sulfur = guesses[0].get("S", 0) if guesses else None
        anion = sulfur < 0 if sulfur is not None else most_electronegative(composition) == "S"
        data["sulfide_type"] = "sulfide" if anion else "sulfate"
    entry = ComputedEntry(composition, uncorrected_energy, parameters=mp_parameters(composition), data=data,
                          entry_id=entry_id)
    corrected, reason = mp2020_correct(entry)
    if corrected is None:
        raise ValueError(f"{entry_id or composition.reduced_formula}: {reason}")
    return corrected.energy
