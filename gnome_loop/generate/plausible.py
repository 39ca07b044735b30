"""Chemical plausibility of substitution candidates: site roles and charge balance.

Two rules keep the substitution generators from proposing what no chemist would:

* **Roles.** Every site of a parent is an anion site or a cation site, and a swap
  keeps the role: anion ↔ anion, cation (metal) ↔ cation. A site's role is the sign
  of its oxidation state in the parent's most likely charge-balanced guess
  (pymatgen's ``oxi_state_guesses``, from ICSD statistics); where there is no guess,
  or the state is 0, the element decides: the elements of :data:`ANIONS` are anions,
  all others cations. So P5+ in a phosphate or S6+ in a sulfate are cation sites,
  and no metal site of an intermetallic template (Fe7W6, ThMn12 types) ever gets O.
* **Charge balance.** A candidate holding an element of :data:`ANIONS` needs a
  charge-balanced oxidation-state guess of its composition (Hautier et al.,
  Inorg. Chem. 50, 656 (2011), and GNoME's composition pipeline both keep to
  charge-balanced compositions). Peroxides and superoxides (O2 2-, O2 -) have
  none, so oxygen atoms that sit closer than :data:`DIOXYGEN_BOND` to another
  oxygen count as -1 (peroxide) or -1/2 (superoxide) and the rest of the
  composition is balanced against them. Only the cations that form ionic
  peroxides and superoxides (:data:`DIOXYGEN_CATIONS`: the alkali and alkaline-earth
  metals, Zn, Cd, Hg; Greenwood & Earnshaw, *Chemistry of the Elements*, 2nd ed.,
  §14.2.2) may balance them: a transition-metal "superoxide" such as NiO6 is an
  artefact of substituting onto an O2-rich parent. Candidates without anions
  (intermetallics) are not checked.

The anions are the elements that take a negative oxidation state in the compounds
they form with metals: H (hydride), N, O, F, P (phosphide), S, Cl, Se, Br, Te, I.
C, B, Si, Ge, As and Sb are left out: their metal-rich compounds (carbides, borides,
silicides, antimonides) are mostly metallic and would be rejected wrongly. The
cost of the rule: metal-rich compounds of the listed anions without a
charge-balanced guess (interstitial nitrides such as Fe4N, suboxides such as Ti6O,
complex hydrides with zero-valent metals such as Mg2NiH4) are never proposed.
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
from pymatgen.core import Composition, Element, Structure

#: Elements that act as anions (see the module docstring for the choice).
ANIONS = frozenset({"H", "N", "O", "F", "P", "S", "Cl", "Se", "Br", "Te", "I"})
ANION, CATION = "anion", "cation"
#: O–O distance below which two oxygens form a peroxide or superoxide ion, Å
#: (O2 2-: 1.49 Å, O2 -: 1.33 Å; the shortest O–O contact in an oxide is about 2.2 Å).
DIOXYGEN_BOND = 1.6
#: Cations of the ionic peroxides and superoxides (module docstring).
DIOXYGEN_CATIONS = frozenset({"Li", "Na", "K", "Rb", "Cs", "Be", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd", "Hg"})
#: Charge of an oxygen atom in a peroxide and in a superoxide ion.
DIOXYGEN_CHARGES = (-1.0, -0.5)
#: The reject reason of a composition that cannot be charge balanced.
NOT_BALANCED = "not-charge-balanced"


def holds_anion(symbols: Iterable[str]) -> bool:
    """Whether any of the element symbols is an anion (the phase is then never an intermetallic)."""
    return not ANIONS.isdisjoint(symbols)


def role(symbol: str, oxidation: float | None = None) -> str:
    """ANION or CATION: the sign of `oxidation` where it is given and not zero, else the element's."""
    if oxidation:
        return ANION if oxidation < 0 else CATION
    return ANION if symbol in ANIONS else CATION


@functools.lru_cache(maxsize=4096)
def element_roles(formula: str) -> dict[str, str]:
    """The role (ANION or CATION) of each element of a composition: the sign of its
    state in pymatgen's most likely oxidation-state guess, else the element's own."""
    composition = Composition(formula)
    guesses = composition.oxi_state_guesses()
    states = guesses[0] if guesses else {}
    return {symbol: role(symbol, states.get(symbol)) for symbol in composition.chemical_system_set}


@functools.lru_cache(maxsize=65536)
def has_balanced_guess(formula: str) -> bool:
    """Whether pymatgen would find charge-balanced oxidation states for a composition."""
    return can_balance(Composition(formula))


def can_balance(composition: Composition, charge: float = 0.0) -> bool:
    """Whether the elements' oxidation states (ICSD's list, else the common one: pymatgen's
    choice) can sum to `charge`, an atom of an element free to take any of its states.

    The answer of `bool(composition.oxi_state_guesses(target_charge=charge))` without
    scoring every combination, which took 26 ms a four-element formula, a third of SAPS's
    time in screening. Amounts must be whole numbers (ValueError otherwise, as pymatgen's)."""
    totals = {0}
    for symbol, amount in composition.get_el_amt_dict().items():
        if amount != int(amount):
            raise ValueError(f"charge balance needs whole amounts: {composition.formula}")
        element = Element(symbol)
        totals = {total + part for total in totals
                  for part in _state_sums(element.icsd_oxidation_states or element.common_oxidation_states,
                                          int(amount))}
    return charge in totals


@functools.lru_cache(maxsize=4096)
def _state_sums(states: tuple[int, ...], amount: int) -> frozenset[int]:
    """Every total of `amount` oxidation states drawn from `states`, repeats allowed."""
    totals = {0}
    for _ in range(amount):
        totals = {total + state for total in totals for state in states}
    return frozenset(totals)


def charge_problem(structure: Structure) -> str | None:
    """Why a candidate's composition is implausible, or None.

    The reason starts with NOT_BALANCED (the reject category counted per generator).
    """
    composition = structure.composition
    symbols = {element.symbol for element in composition}
    if not holds_anion(symbols) or has_balanced_guess(composition.reduced_formula):
        return None
    if "O" in symbols and _balanced_with_dioxygen(structure):
        return None
    return f"{NOT_BALANCED}: {composition.reduced_formula} has no charge-balanced oxidation states"


def _balanced_with_dioxygen(structure: Structure) -> bool:
    """Whether the composition balances with its O–O paired oxygens as peroxide or superoxide
    (its other elements all among DIOXYGEN_CATIONS)."""
    if not {el.symbol for el in structure.composition} - {"O"} <= DIOXYGEN_CATIONS:
        return False
    oxygen = [i for i, site in enumerate(structure) if site.specie.symbol == "O"]
    distances = structure.lattice.get_all_distances(structure.frac_coords[oxygen], structure.frac_coords[oxygen])
    np.fill_diagonal(distances, np.inf)
    paired = int(np.sum(distances.min(axis=1) < DIOXYGEN_BOND))
    if not paired:
        return False
    rest = Composition({el.symbol: amount for el, amount in structure.composition.items() if el.symbol != "O"})
    return any(cations_balance(rest, 2.0 * (len(oxygen) - paired) - charge * paired)
               for charge in DIOXYGEN_CHARGES)


def cations_balance(cations: Composition, charge: float) -> bool:
    """Whether the cations' likely oxidation states sum to `charge` (what balances an
    anion; `compatibility.oxide_type_of` asks it too). pymatgen answers a single element
    with its zero state whatever the target (LiO6 would pass as Li2(O2)6 superoxide), so
    one element is checked here: charge / amount must be one of its states."""
    if not cations:
        return False
    if len(cations) == 1:
        element, amount = next(iter(cations.items()))
        states = element.icsd_oxidation_states or element.common_oxidation_states
        return any(abs(state * amount - charge) < 1e-6 for state in states)
    return can_balance(cations, charge)
