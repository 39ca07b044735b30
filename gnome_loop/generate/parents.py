"""The parents of substitution and SAPS: known phases on or near the hull, AFLOW
prototype templates, and crystals of any elements read from structure files.

GNoME (Merchant et al., Nature 624, 80 (2023), Methods) substituted from the stable
materials it knew, every known crystal included, not from its own chemical space
alone. Here the sources are named in the generator's ``parents`` setting:

* ``known``: the campaign's phases with an E_hull of at most ``parents_max_ehull``
  (a phase far above the hull, such as an oxide without a charge-balanced guess,
  leads to implausible candidates); phases the hull has not judged are left out;
* ``prototypes``: pymatgen's AFLOW prototypes, as templates without energies;
* a path: every structure the importer reads there (CIF folder or zip, CSV(.gz) with
  a ``cif`` column such as MP's, extxyz, ...), whatever its elements. A file can hold
  tens of thousands of crystals, so only compounds with an element outside the space
  whose every element has a swap of its role into the space above the substitution
  threshold are kept, ranked by the product of these best swap probabilities (the
  Hautier probability of the most likely whole substitution at element level), at
  most ``max_outside_parents`` of them. Give a file of stable crystals: file
  entries carry no E_hull here.

SAPS keeps parents made of the space's elements only; a parent from a file is first
mapped into the space by its most likely whole-species substitution (its "image").
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from pymatgen.core import Composition, Structure

from gnome_loop.generate.imported import SUPPORTED, RejectedEntry, iter_sources, parse_entry
from gnome_loop.generate.plausible import role
from gnome_loop.generate.substitution import _assignments, _options, _table_species, substitute
from gnome_loop.snapshot.prototypes import prototype_templates
from gnome_loop.structures import ChemicalSpace

if TYPE_CHECKING:
    from gnome_loop.config import SubstitutingGenerator

KNOWN, PROTOTYPES = "known", "prototypes"
#: The older spellings of `parents`, still accepted.
ALIASES = {"known": (KNOWN,), "known+prototypes": (KNOWN, PROTOTYPES)}
#: A CIF's `_chemical_formula_sum`: its formula without parsing the structure.
FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+['\"]?([^'\"\n]+)", re.MULTILINE)


def sources(parents: str | Sequence[str]) -> list[str]:
    """The parent sources of a `parents` setting: an alias or a list of KNOWN, PROTOTYPES and paths."""
    return list(ALIASES[parents]) if isinstance(parents, str) else list(parents)


def check_path(path: str | Path) -> str | None:
    """Why `path` cannot give parent structures, or None: it must exist and its first
    entry must parse."""
    try:
        for entry in iter_sources(path):
            parse_entry(entry.text, entry.fmt)
            return None
    except (FileNotFoundError, RejectedEntry) as error:
        return str(error)
    return f"holds no structure file ({SUPPORTED})"


def near_hull(known: Iterable[tuple[str, Structure, float | None]], max_ehull: float) -> list[tuple[str, Structure]]:
    """(id, structure) of the known phases with an E_hull (eV/atom) of at most `max_ehull`."""
    return [(key, structure) for key, structure, ehull in known if ehull is not None and ehull <= max_ehull]


@functools.lru_cache(maxsize=65536)
def _score(symbols: frozenset[str], space: tuple[str, ...], max_elements: int, threshold: float,
           alpha: float) -> float:
    """The probability of the most likely whole substitution of a chemical system into
    the space at element level (each element to a distinct one of its role), 0 below
    `threshold`, and 0 for an element (its images are elements, always known) or a
    system already in the space (the known phases' business, judged by the hull)."""
    table = _table_species(alpha)
    if not 2 <= len(symbols) <= max_elements or symbols <= set(space) or not symbols <= set(table):
        return 0.0
    options = [_options(alpha, table[symbol], space, False, role(symbol)) for symbol in sorted(symbols)]
    return max((probability for _, probability in _assignments(options, threshold)), default=0.0)


@functools.lru_cache(maxsize=8)
def read_parents(path: str, space: ChemicalSpace, threshold: float, alpha: float,
                 limit: int) -> tuple[tuple[str, Structure], ...]:
    """The `limit` structures of `path` most likely to substitute into `space`, best first.

    The formula of a CIF entry is read from its ``_chemical_formula_sum`` before the
    entry is parsed, so a file of 36,000 CIFs costs seconds; unreadable entries and
    disordered ones or cells beyond `space.max_atoms` are passed over. Cached per process.
    """
    targets = tuple(sorted(set(space.elements) & set(_table_species(alpha))))
    ranked = []
    for entry in iter_sources(path):
        match = FORMULA_SUM.search(entry.text) if entry.fmt == "cif" else None
        try:
            formula = match.group(1) if match else parse_entry(entry.text, entry.fmt).composition.formula
            score = _score(frozenset(Composition(formula).chemical_system_set), targets, space.max_elements,
                           threshold, alpha)
        except ValueError:  # an unreadable entry (RejectedEntry) or formula is no parent
            continue
        if score > 0:
            ranked.append((-score, entry.id, entry))
    chosen = []
    for _, source_id, entry in sorted(ranked, key=lambda item: item[:2]):
        if len(chosen) == limit:
            break
        try:
            structure = parse_entry(entry.text, entry.fmt)
        except RejectedEntry:
            continue
        if structure.is_ordered and len(structure) <= space.max_atoms:
            chosen.append((source_id, structure))
    return tuple(chosen)


def into_space(parents: Sequence[tuple[str, Structure]], space: ChemicalSpace, threshold: float,
               alpha: float) -> list[tuple[str, Structure]]:
    """Each parent's most likely charge-balanced whole-species image in the space, as
    (``"<id>><formula>"``, structure): SAPS parents from outside the space."""
    images = []
    for key, structure in parents:
        if structure.composition.chemical_system_set <= set(space.elements):
            continue  # already in the space: a parent of its own
        best = substitute([(key, structure)], space.elements, set(), threshold=threshold, alpha=alpha,
                          max_elements=space.max_elements, max_atoms=space.max_atoms, max_candidates=1)
        images += [(f"{key}>{c.structure.composition.reduced_formula}", c.structure) for c in best]
    return images


def gather(parents: str | Sequence[str], known: Sequence[tuple[str, Structure, float | None]], max_ehull: float,
           space: ChemicalSpace, threshold: float, alpha: float, max_outside: int,
           images: bool) -> list[tuple[str, Structure]]:
    """The parent structures of a `parents` setting, as (id, structure): known phases
    near the hull, prototype templates, then the best `max_outside` of each file, plus
    their in-space images when `images` (for SAPS)."""
    chosen: list[tuple[str, Structure]] = []
    for source in sources(parents):
        if source == KNOWN:
            chosen += near_hull(known, max_ehull)
        elif source == PROTOTYPES:
            chosen += prototype_templates()
        else:
            outside = list(read_parents(source, space, threshold, alpha, max_outside))
            chosen += [(key, structure.copy()) for key, structure in outside]
            if images:
                chosen += into_space(outside, space, threshold, alpha)
    return chosen


def pooled_parents(known: Sequence[tuple[str, Structure, float | None]], space: ChemicalSpace,
                   generators: Sequence[SubstitutingGenerator], images: bool) -> list[tuple[str, Structure]]:
    """The parents of the substitution generators `generators` (config sections), their
    sources pooled (a screening shard runs both on one list), with in-space images of
    file parents for SAPS."""
    if not generators:
        return []
    pooled = list(dict.fromkeys(source for g in generators for source in sources(g.parents)))
    return gather(pooled, known, max(g.parents_max_ehull for g in generators), space,
                  min(g.threshold for g in generators), generators[0].alpha,
                  max(g.max_outside_parents for g in generators), images)
