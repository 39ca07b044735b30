"""Permutation: ordering variants of a known phase by swapping the species of two sites.

USPEX's permutation operator (Lyakhov, Oganov, Stokes and Zhu, Comput. Phys. Commun.
184, 1172 (2013)) exchanges the chemical identities of atoms of different kinds in
a structure, leaving the lattice and the positions alone: it explores the orderings
of a composition (antisite defects in a small cell, cation orderings in a larger
one) that crossover and lattice mutation rarely reach. Here one pair of sites of a
known phase is swapped, the two of different elements but of the same role (cation
↔ cation or anion ↔ anion: a parent needs two cation or two anion elements); roles
follow the signs of the parent's most likely oxidation-state guess
(:func:`gnome_loop.generate.plausible.element_roles`), so the nitrogen of a nitrate counts as
a cation. The composition never changes, so no charge check is needed.

Pairs related by a symmetry operation of the parent give the same crystal: only one
pair per orbit is swapped, the orbits found with the parent's space-group
permutations of the sites (:func:`gnome_loop.generate.saps.site_permutations`).
A swap can still give the parent back (swapping the two atoms of a B2 cell is a
translation) or a variant that another orbit gave (a swap composed with a symmetry
that exchanges the two elements); such duplicates are dropped with the campaign's
own matcher (:class:`gnome_loop.structures.DuplicateIndex`). Each parent's pairs are
taken in a seeded random order and the parents in turn, one variant each, so that
a cap shares out among them.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Iterator, Sequence

import numpy as np
from pymatgen.core import Structure

from gnome_loop.generate.plausible import element_roles
from gnome_loop.generate.saps import _supercell, distinct_subsets, site_permutations
from gnome_loop.structures import Candidate, ChemicalSpace, DuplicateIndex, symmetry_label


def swap_pairs(structure: Structure, roles: dict[str, str], permutations: np.ndarray) -> list[tuple[int, int]]:
    """One pair of site indices per symmetry-distinct pair of sites of different elements
    of one role, sorted; `permutations` as from :func:`site_permutations`."""
    symbols = [site.specie.symbol for site in structure]
    elements_per_role = Counter(roles[symbol] for symbol in set(symbols))
    sites = [i for i, symbol in enumerate(symbols) if elements_per_role[roles[symbol]] > 1]
    return [(i, j) for i, j in distinct_subsets(sites, 2, permutations)
            if symbols[i] != symbols[j] and roles[symbols[i]] == roles[symbols[j]]]


def swapped(structure: Structure, i: int, j: int) -> Structure:
    """`structure` with the species of sites `i` and `j` exchanged; all species become
    plain elements (oxidation states and site properties are dropped)."""
    species = [site.specie.symbol for site in structure]
    species[i], species[j] = species[j], species[i]
    return Structure(structure.lattice, species, structure.frac_coords)


def _variants(key: str, parent: Structure, space: ChemicalSpace, supercell: Sequence[int] | None,
              symprec: float, rng: np.random.Generator, index: DuplicateIndex) -> Iterator[Candidate]:
    """One parent's new orderings, made when asked for, in a random order of its pairs;
    none for a disordered parent, one outside `space` or one without two elements of a role."""
    if not parent.is_ordered or not space.holds(parent.composition.chemical_system_set):
        return
    cell = _supercell(parent, supercell, space.max_atoms)
    if space.max_atoms is not None and len(cell) > space.max_atoms:
        return
    roles = element_roles(cell.composition.reduced_formula)
    if max(Counter(roles.values()).values()) < 2:
        return
    index.add(key, symmetry_label(cell, symprec), cell)
    pairs = swap_pairs(cell, roles, site_permutations(cell, symprec))
    for number in rng.permutation(len(pairs)):
        i, j = pairs[number]
        structure = swapped(cell, i, j)
        candidate = Candidate(structure, generator="permutation", parent_ids=(key,),
                              info={"swap": [cell[i].specie.symbol, cell[j].specie.symbol], "sites": [i, j]})
        if index.add(candidate.id, symmetry_label(structure, symprec), structure) is None:
            yield candidate


def permute(
    parents: Sequence[tuple[str, Structure]],
    space: ChemicalSpace = ChemicalSpace(),
    max_candidates: int | None = None,
    seed: int = 0,
    supercell: Sequence[int] | None = None,
    symprec: float = 0.01,
) -> Iterator[Candidate]:
    """Ordering variants of the `parents` ((id, structure), best first), each with one
    symmetry-distinct pair of sites of one role swapped.

    A parent is ordered, made of elements of `space` and repeated by `supercell` where
    that stays within `space.max_atoms` (a cell still beyond it gives nothing). Its
    distinct pairs are drawn in a random order (`seed`), the parents taken in turn,
    one new variant each, until `max_candidates` (None: all). A variant that matches
    a parent or an earlier variant is skipped. Lazy: the stage stops when its cap is
    met. Info holds the swapped elements and the site indices of the (repeated) parent.
    """
    rng = np.random.default_rng(seed)
    index = DuplicateIndex()
    turns = deque(_variants(key, parent, space, supercell, symprec, rng, index) for key, parent in parents)
    made = 0
    while turns and (max_candidates is None or made < max_candidates):
        variants = turns.popleft()
        candidate = next(variants, None)
        if candidate is not None:
            made += 1
            yield candidate
            turns.append(variants)
