"""Ionic substitution: new compositions from known structures by swapping species.

The probability model is the data-mined substitution model of Hautier et al.
(Inorg. Chem. 50, 656 (2011)) as pymatgen ships it: P(t | s) = exp(λ(t, s)) / p(s)
for a target species t replacing a parent species s, and the probability of a whole
substitution is the product over the parent's species. GNoME (Merchant et al.,
Nature 624, 80 (2023), Methods) clamped every pair weight at λ ≥ 0, so that rarely
seen but chemically plausible swaps are not suppressed, and kept proposals with a
probability above 0.001; both are the defaults here.

Each species of a parent is replaced on all its sites (the partial version is SAPS).
Parent species come from the most likely oxidation-state guess of the composition;
parents without one are weighted at element level, taking the most likely pair of
ions of the two elements. Every swap keeps the site's role (anion ↔ anion, cation ↔
cation) and every candidate holding an anion must be charge balanced
(:mod:`gnome_loop.generate.plausible`).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from monty.serialization import loadfn
from pymatgen.core import Composition, Element, Species, Structure

from gnome_loop.generate.plausible import NOT_BALANCED, charge_problem, holds_anion, role
from gnome_loop.structures import Candidate, SiteGeometry

try:  # recent pymatgen keeps it in core, older releases in analysis
    from pymatgen.core.structure_prediction.substitution_probability import SubstitutionProbability
except ImportError:
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

#: The λ table shipped beside the class.
LAMBDA_TABLE = Path(inspect.getfile(SubstitutionProbability)).parent / "data" / "lambda.json"
#: Charges summing to less than this count as balanced.
CHARGE_TOLERANCE = 1e-6


def substitution_model(alpha: float = -5.0, clamped: bool = True) -> SubstitutionProbability:
    """pymatgen's substitution model, with pair weights clamped at λ ≥ 0 as in GNoME.

    `alpha` is the λ of pairs never seen in the data. Each (alpha, clamped) is built
    once per process.
    """
    return _cached_model(float(alpha), bool(clamped))


@functools.lru_cache(maxsize=4)
def _cached_model(alpha: float, clamped: bool) -> SubstitutionProbability:
    """pymatgen's model of the shipped λ table, set up as its __init__ does (pairs of
    species, deuterium rows left out) but with the marginals summed once and exactly.

    pymatgen's __init__ sums the marginals P(s) over every ordered pair of species, in
    an order (and so to last bits) that Python's string hashing changes from process to
    process; near-ties of P then ranked candidates differently on two workers. Here
    P(s) sums exp(λ(s, t)) over every t (λ is symmetric) with math.fsum, exactly rounded
    whatever the order; and since λ is α for every pair the table leaves out, only the
    table's pairs are visited (the n² pairs of pymatgen's loop, hashing species by
    their strings, took 2 s a process: a cost every screening worker paid)."""
    table = loadfn(LAMBDA_TABLE)
    if clamped:
        table = [[first, second, max(weight, 0.0)] for first, second, weight in table]
    rows = [row for row in table if "D1+" not in row]
    species = {name: Species.from_str(name) for row in rows for name in row[:2]}
    model = object.__new__(SubstitutionProbability)  # its __init__ is the n² loop
    model._lambda_table, model.alpha = table, alpha
    model._l = {frozenset((species[first], species[second])): float(weight) for first, second, weight in rows}
    model.species = set(species.values())
    partners: dict[Species, dict[Species, float]] = defaultdict(dict)
    for pair, weight in model._l.items():
        first, *other = pair  # a species paired with itself is a one-member set
        second = other[0] if other else first
        partners[first][second] = partners[second][first] = weight
    unseen = math.exp(alpha)
    weights = {s: [math.exp(w) for w in partners[s].values()] + [unseen] * (len(model.species) - len(partners[s]))
               for s in model.species}
    model._px = defaultdict(float, {s: math.fsum(row) for s, row in weights.items()})
    model.Z = math.fsum(value for row in weights.values() for value in row)
    return model


class Option(NamedTuple):
    """One way to replace a parent element: the target, its charge (None at element level), P."""

    element: str
    oxidation: float | None
    probability: float


@functools.lru_cache(maxsize=4)
def _table_species(alpha: float) -> dict[str, tuple[Species, ...]]:
    """The species of the λ table, by element."""
    by_element: dict[str, list[Species]] = {}
    for species in sorted(substitution_model(alpha).species):
        by_element.setdefault(species.symbol, []).append(species)
    return {symbol: tuple(group) for symbol, group in by_element.items()}


@functools.lru_cache(maxsize=None)
def _options(
    alpha: float, parents: tuple[Species, ...], space: tuple[str, ...], charged: bool, site_role: str
) -> tuple[Option, ...]:
    """The targets in `space` for the sites of one parent element, most likely first.

    With `charged` the sites are the single species `parents[0]` and every target
    species is an option of its own. Otherwise targets are whole elements, weighted
    by the largest P(b | a) over the parent species a and the table species b of the
    target element. Only targets of the sites' role (`site_role`: anion or cation,
    see :func:`gnome_loop.generate.plausible.role`) are options.
    """
    model = substitution_model(alpha)
    best: dict[tuple[str, float | None], float] = {}
    for parent in parents:
        for symbol in space:
            for target in _table_species(alpha)[symbol]:
                key = (symbol, target.oxi_state if charged else None)
                if role(*key) != site_role:
                    continue
                best[key] = max(best.get(key, 0.0), model.cond_prob(target, parent))
    options = [Option(symbol, oxidation, probability) for (symbol, oxidation), probability in best.items()]
    return tuple(sorted(options, key=lambda option: (-option.probability, option.element, option.oxidation or 0.0)))


class ParentSpecies(NamedTuple):
    """How a parent composition is read: the table species each element stands for,
    the role of each element's sites (anion or cation) and the kind of parent."""

    species: dict[str, tuple[Species, ...]]
    roles: dict[str, str]
    kind: str


@functools.lru_cache(maxsize=4096)
def _parent_species(alpha: float, formula: str) -> ParentSpecies:
    """The table species and site roles of a parent composition, and its kind:
    "ionic", "mixed-valence", "intermetallic" or "unbalanced".

    From pymatgen's most likely oxidation-state guess: an integer state gives one
    species (ionic); a mixed-valence element gets both neighbouring states (Fe 8/3 in
    Fe3O4: Fe2+ and Fe3+); roles follow the signs of the states. Without a guess, or
    when the table lacks such a species, an element stands for all its table species
    (element level) and its role is the element's: "intermetallic" when no element
    is an anion, else "unbalanced" (say Na2O2 or Fe4N, or an oxide far above the hull):
    a phase holding an anion is never treated as an intermetallic.
    """
    table = _table_species(alpha)
    guesses = Composition(formula).oxi_state_guesses()
    if guesses:
        states = guesses[0]
        species = {
            symbol: tuple(sp for sp in table[symbol] if sp.oxi_state in (math.floor(state), math.ceil(state)))
            for symbol, state in states.items()
        }
        if all(species.values()):
            exact = all(state == round(state) for state in states.values())
            roles = {symbol: role(symbol, state) for symbol, state in states.items()}
            return ParentSpecies(species, roles, "ionic" if exact else "mixed-valence")
    symbols = Composition(formula).chemical_system_set
    return ParentSpecies({symbol: table[symbol] for symbol in symbols}, {symbol: role(symbol) for symbol in symbols},
                         "unbalanced" if holds_anion(symbols) else "intermetallic")


def _assignments(options: Sequence[Sequence[Option]], threshold: float) -> Iterator[tuple[tuple[Option, ...], float]]:
    """Each choice of one option per parent element with distinct target elements and
    a product probability above `threshold`.

    Branch and bound: a branch stops as soon as its probability times the best
    possible completion cannot exceed the threshold (options are sorted, so the
    remaining ones at that depth cannot either).
    """
    best_completion = [1.0] * (len(options) + 1)
    for depth in reversed(range(len(options))):
        best_completion[depth] = best_completion[depth + 1] * (options[depth][0].probability if options[depth] else 0.0)

    def visit(depth: int, chosen: tuple[Option, ...], probability: float) -> Iterator[tuple[tuple[Option, ...], float]]:
        if depth == len(options):
            yield chosen, probability
            return
        used = {option.element for option in chosen}
        for option in options[depth]:
            extended = probability * option.probability
            if extended * best_completion[depth + 1] <= threshold:
                break
            if option.element not in used:
                yield from visit(depth + 1, (*chosen, option), extended)

    yield from visit(0, (), 1.0)


#: Avogadro's number, per mol (molar volumes in cm^3/mol to Å^3 per atom).
AVOGADRO = 6.02214076e23


@functools.lru_cache(maxsize=None)
def _atomic_volume(symbol: str) -> float | None:
    """Volume per atom of the element's solid, Å^3 (pymatgen's molar volume), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns where it has no molar volume
        molar = Element(symbol).molar_volume
    return float(molar) * 1e24 / AVOGADRO if molar else None


def _radii(element: str, oxidation: float | None, target: Option) -> tuple[float, float]:
    """Radii of a site before and after the swap, in Å: both ionic when both ions have a
    Shannon radius; else, between two metals, the cube roots of their elemental
    volumes per atom (Zen's law: an intermetallic's volume is close to the sum of its
    elements'; atomic radii put a Fe7W6 template turned Al6Si7 at half the volume it
    relaxes to, and a model then reads the squeezed cell as strongly bound); else both
    atomic (van der Waals for noble gases)."""
    if oxidation is not None and target.oxidation is not None:
        with warnings.catch_warnings():  # pymatgen warns for ions without a radius
            warnings.simplefilter("ignore")
            pair = Species(element, oxidation).ionic_radius, Species(target.element, target.oxidation).ionic_radius
        if None not in pair:
            return float(pair[0]), float(pair[1])
    before, after = Element(element), Element(target.element)
    if not holds_anion((element, target.element)):
        volumes = _atomic_volume(element), _atomic_volume(target.element)
        if None not in volumes:
            return volumes[0] ** (1 / 3), volumes[1] ** (1 / 3)
    return (
        float(before.atomic_radius or before.van_der_waals_radius),
        float(after.atomic_radius or after.van_der_waals_radius),
    )


def _substituted(
    parent: Structure, geometry: SiteGeometry, counts: dict[str, float], states: dict[str, float | None],
    mapping: dict[str, Option],
) -> Structure:
    """The parent with every element replaced, its volume scaled by the ratio of the
    summed atomic (or ionic) volumes so that it starts near a sensible density, and
    expanded where that estimate squeezes atoms together (a small, highly charged
    ion such as Cl7+ in a K+ site would otherwise collapse the cell)."""
    before = after = 0.0
    for element, count in counts.items():
        radius_before, radius_after = _radii(element, states[element], mapping[element])
        before += count * radius_before**3
        after += count * radius_after**3
    species = [mapping[site.specie.symbol].element for site in parent]
    return geometry.decorated(species, parent.volume * after / before)


def substitute(
    parents: Sequence[tuple[str, Structure]],
    elements: Sequence[str],
    known_formulas: set[str],
    threshold: float = 1e-3,
    alpha: float = -5.0,
    max_elements: int = 3,
    max_atoms: int = 20,
    charge_balanced: bool = True,
    max_candidates: int | None = None,
    rejected: Counter | None = None,
) -> list[Candidate]:
    """Candidates made by swapping whole species of `parents` for elements of the space.

    Each parent element goes to a distinct element of `elements` of the same role
    (anion or cation; an element may stay), with the product of substitution
    probabilities above `threshold`; the identity is skipped. A proposal is kept only
    when its composition is new: its reduced formula (pymatgen's `reduced_formula`)
    is not in `known_formulas`. With `charge_balanced`, the target ions of an ionic
    parent must sum to zero charge, and any candidate holding an anion must pass
    :func:`gnome_loop.generate.plausible.charge_problem`; the proposals refused are
    counted in `rejected` by reason (NOT_BALANCED). Intermetallic candidates are not
    checked. Parents beyond `max_atoms` sites or `max_elements` elements are skipped.

    Candidates are sorted by probability (highest first), then id; a structure
    reached twice keeps its most likely origin. At most `max_candidates` are returned.
    """
    table = _table_species(alpha)
    space = tuple(sorted(set(elements) & set(table)))
    proposals: dict[str, tuple[float, Candidate]] = {}
    for parent_id, parent in parents:
        counts = {el.symbol: amount for el, amount in parent.composition.element_composition.items()}
        if not parent.is_ordered or len(parent) > max_atoms or len(counts) > max_elements:
            continue
        if not set(counts) <= set(table):  # an element the λ table never saw
            continue
        order = sorted(counts)
        read = _parent_species(alpha, Composition(counts).reduced_formula)
        ionic = read.kind == "ionic"
        options = [_options(alpha, read.species[el], space, ionic, read.roles[el]) for el in order]
        states = {el: read.species[el][0].oxi_state if ionic else None for el in order}

        best_per_mapping: dict[tuple[str, ...], tuple[float, tuple[Option, ...]]] = {}
        unbalanced: set[tuple[str, ...]] = set()
        for chosen, probability in _assignments(options, threshold):
            targets = tuple(option.element for option in chosen)
            if list(targets) == order:
                continue
            formula = Composition(dict(zip(targets, (counts[el] for el in order)))).reduced_formula
            if formula in known_formulas:
                continue
            if charge_balanced and ionic:
                if abs(sum(counts[el] * option.oxidation for el, option in zip(order, chosen))) > CHARGE_TOLERANCE:
                    unbalanced.add(targets)
                    continue
            if targets not in best_per_mapping or probability > best_per_mapping[targets][0]:
                best_per_mapping[targets] = (probability, chosen)
        if rejected is not None:
            rejected[NOT_BALANCED] += len(unbalanced - set(best_per_mapping))

        geometry = SiteGeometry.of(parent) if best_per_mapping else None
        for probability, chosen in best_per_mapping.values():
            mapping = dict(zip(order, chosen))
            structure = _substituted(parent, geometry, counts, states, mapping)
            if charge_balanced and charge_problem(structure):
                if rejected is not None:
                    rejected[NOT_BALANCED] += 1
                continue
            candidate = Candidate(
                structure,
                generator="substitution",
                parent_ids=(parent_id,),
                info={
                    "probability": probability,
                    "substitution": {el: option.element for el, option in mapping.items() if option.element != el},
                },
            )
            key = candidate.id
            if key not in proposals or probability > proposals[key][0]:
                proposals[key] = (probability, candidate)

    ranked = sorted(proposals.items(), key=lambda item: (-item[1][0], item[0]))
    return [candidate for _, (_, candidate) in ranked[:max_candidates]]
