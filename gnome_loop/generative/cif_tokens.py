"""Crystals as text for a language model: a canonical, symmetrised CIF and its tokens.

The recipe follows CrystaLLM (Antunes et al., Nat. Commun. 15, 10570 (2024);
lantunes/CrystaLLM `crystallm/_tokenizer.py`): whole CIF keywords, element symbols
and space-group symbols are single tokens, numbers are spelled digit by digit, and a
space-group symbol is a token only where a space group is named (there "P1" is a
group, elsewhere P then 1). Our CIF is shorter than CrystaLLM's: the structure is
written in spglib's standard conventional setting with one representative site per
Wyckoff orbit, and no symmetry-operation loop, because the space group's number fixes
the operations (spglib's database, in the setting spglib standardises to). So

    data_Na4Cl4
    _symmetry_space_group_name_H-M Fm-3m
    _symmetry_Int_Tables_number 225
    _cell_length_a 5.6400
    ... (b, c, alpha, beta, gamma; then loop_ and the six column names of SITE_KEYS)
    Na Na0 4 0.0000 0.0000 0.0000
    Cl Cl0 4 0.0000 0.0000 0.5000

is 137 tokens. `read_cif` expands the orbits back into a Structure; writing,
tokenising, detokenising and reading gives the same structure (StructureMatcher).
The formula on the `data_` line is the written cell's, so a prompt fixes both the
composition and the number of formula units (CrystaLLM prompts the same way).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numpy as np
import spglib
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gnome_loop.models.graph import MAX_Z

#: Decimals written for lattice lengths (Å), angles (degrees) and fractional coordinates.
LENGTH_DECIMALS, ANGLE_DECIMALS, COORD_DECIMALS = 4, 2, 4
#: Symmetry tolerance (Å) of the symmetrisation, as CrystaLLM's preprocessing uses (0.1).
SYMPREC = 0.1
#: Images of a site closer than this (Å) are one atom when an orbit is expanded.
MERGE_DISTANCE = 0.05

PAD, EOS = "<pad>", "<eos>"
SG_KEY = "_symmetry_space_group_name_H-M"
NUMBER_KEY = "_symmetry_Int_Tables_number"
CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
             "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
SITE_KEYS = ("_atom_site_type_symbol", "_atom_site_label", "_atom_site_symmetry_multiplicity",
             "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
KEYWORDS = ("data_", "loop_", SG_KEY, NUMBER_KEY, *CELL_KEYS, *SITE_KEYS)
ELEMENTS = tuple(Element.from_Z(z).symbol for z in range(1, MAX_Z + 1))
PUNCTUATION = tuple("0123456789") + (".", " ", "\n")


@functools.cache
def default_hall_numbers() -> dict[int, int]:
    """Space-group number → spglib's default Hall number (its first setting), the
    setting of the cells spglib standardises to."""
    table: dict[int, int] = {}
    for hall in range(1, 531):
        table.setdefault(spglib.get_spacegroup_type(hall).number, hall)
    return table


@functools.cache
def space_group_symbols() -> tuple[str, ...]:
    """Short Hermann-Mauguin symbol of each space group, index = number - 1."""
    halls = default_hall_numbers()
    return tuple(spglib.get_spacegroup_type(halls[n]).international_short for n in range(1, 231))


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """All tokens; index 0 is padding. Space groups are `sg:` + symbol (their text is the symbol)."""
    return (PAD, EOS, *KEYWORDS, *ELEMENTS, *PUNCTUATION, *(f"sg:{s}" for s in space_group_symbols()))


@functools.cache
def token_ids() -> dict[str, int]:
    """Token → its id (its index in `vocabulary()`)."""
    return {token: index for index, token in enumerate(vocabulary())}


@functools.cache
def _pattern() -> re.Pattern:
    """Longest alternatives first; a space group only after the H-M key and before a newline."""
    plain = sorted((*KEYWORDS, *ELEMENTS, *PUNCTUATION), key=len, reverse=True)
    groups = sorted(space_group_symbols(), key=len, reverse=True)
    return re.compile(f"(?<={re.escape(SG_KEY)} )(?P<sg>{'|'.join(map(re.escape, groups))})(?=\n)"
                      f"|(?P<plain>{'|'.join(map(re.escape, plain))})")


def encode(text: str) -> list[int]:
    """Token ids of `text`; ValueError at the first character no token covers."""
    ids, at, pattern, table = [], 0, _pattern(), token_ids()
    while at < len(text):
        match = pattern.match(text, at)
        if match is None:
            raise ValueError(f"no token for {text[at:at + 20]!r} at character {at}")
        ids.append(table[f"sg:{match['sg']}" if match["sg"] else match["plain"]])
        at = match.end()
    return ids


def decode(ids) -> str:
    """The text of token ids, up to the first end-of-text; padding is skipped."""
    vocab, out = vocabulary(), []
    for index in ids:
        token = vocab[int(index)]
        if token == EOS:
            break
        if token != PAD:
            out.append(token[3:] if token.startswith("sg:") else token)
    return "".join(out)


def _electronegativity_order(composition: Composition) -> list[Element]:
    """Elements by Pauling electronegativity (noble gases without one last), then symbol."""
    return sorted(composition.elements, key=lambda e: (10.0 if np.isnan(e.X) else e.X, e.symbol))


def formula_text(composition: Composition) -> str:
    """A cell's formula as the `data_` line writes it: electronegativity order, every
    count written ("Na4Cl4", "Ba1Ti1O3"); ValueError for fractional counts."""
    parts = []
    for element in _electronegativity_order(composition):
        amount = composition[element]
        if abs(amount - round(amount)) > 1e-6:
            raise ValueError(f"fractional amount {amount} of {element} in {composition}")
        parts.append(f"{element.symbol}{int(round(amount))}")
    return "".join(parts)


def prompt(composition: Composition | str, space_group: int | None = None) -> str:
    """The start of a CIF for the model to complete: the cell formula (the number of
    formula units included) and, optionally, the space group."""
    text = f"data_{formula_text(Composition(composition))}\n"
    if space_group is not None:
        if not 1 <= space_group <= 230:
            raise ValueError(f"space group {space_group} is not 1 to 230")
        text += f"{SG_KEY} {space_group_symbols()[space_group - 1]}\n{NUMBER_KEY} {space_group}\n"
    return text


class Orbit(NamedTuple):
    """One Wyckoff orbit: its element and the fractional coordinates of all its sites."""

    symbol: str
    sites: np.ndarray  # (multiplicity, 3)


class SymmetrisedCrystal(NamedTuple):
    """A structure in spglib's standard conventional cell, split into Wyckoff orbits."""

    number: int
    lattice: Lattice
    orbits: list[Orbit]

    @property
    def composition(self) -> Composition:
        """The conventional cell's composition (what the `data_` line writes)."""
        return Composition(" ".join(f"{orbit.symbol}{len(orbit.sites)}" for orbit in self.orbits))


def symmetrise(structure: Structure, symprec: float = SYMPREC) -> SymmetrisedCrystal:
    """The standard conventional cell of `structure` and its orbits (spglib, `symprec` Å).
    ValueError when spglib finds no symmetry or a non-default setting."""
    refined = SpacegroupAnalyzer(structure, symprec=symprec).get_refined_structure()
    cell = (refined.lattice.matrix, refined.frac_coords, [site.specie.Z for site in refined])
    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None:
        raise ValueError(f"spglib finds no symmetry in {structure.composition.reduced_formula}")
    if dataset.hall_number != default_hall_numbers()[dataset.number]:
        raise ValueError(f"refined cell in Hall setting {dataset.hall_number}, not the default")
    frac = refined.frac_coords % 1.0
    orbits = [Orbit(refined[int(i)].specie.symbol, frac[dataset.equivalent_atoms == i])
              for i in np.unique(dataset.equivalent_atoms)]
    return SymmetrisedCrystal(int(dataset.number), refined.lattice, orbits)


def write_cif(crystal: SymmetrisedCrystal, rng: np.random.Generator | None = None) -> str:
    """The canonical CIF text of `crystal`. Without `rng` each orbit is written by its
    smallest site (x, then y, then z) and the orbits sorted by element and position; with it (augmentation)
    the representative sites and the orbit order are random. Every choice reads back
    as the same structure."""
    composition = crystal.composition
    rank = {element.symbol: index for index, element in enumerate(_electronegativity_order(composition))}
    rows = []
    for orbit in crystal.orbits:
        sites = np.round(orbit.sites % 1.0, COORD_DECIMALS) % 1.0
        site = sites[rng.integers(len(sites))] if rng is not None else sites[np.lexsort(sites.T[::-1])[0]]
        rows.append((rank[orbit.symbol], orbit.symbol, len(sites), site))
    if rng is None:
        rows.sort(key=lambda row: (row[0], tuple(row[3])))
    else:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    labels: dict[str, int] = {}
    lines = []
    for _, symbol, multiplicity, site in rows:
        labels[symbol] = labels.get(symbol, -1) + 1
        lines.append(f"{symbol} {symbol}{labels[symbol]} {multiplicity} "
                     + " ".join(f"{x:.{COORD_DECIMALS}f}" for x in site))
    a, b, c, alpha, beta, gamma = crystal.lattice.parameters
    cell = [f"{key} {value:.{LENGTH_DECIMALS}f}" for key, value in zip(CELL_KEYS[:3], (a, b, c))]
    cell += [f"{key} {value:.{ANGLE_DECIMALS}f}" for key, value in zip(CELL_KEYS[3:], (alpha, beta, gamma))]
    return prompt(composition, crystal.number) + "\n".join(cell + ["loop_", *SITE_KEYS, *lines]) + "\n"


def canonical_cif(structure: Structure, symprec: float = SYMPREC) -> str:
    """`write_cif(symmetrise(structure))`: the one text of a structure."""
    return write_cif(symmetrise(structure, symprec))


class CifError(ValueError):
    """Text that is not a CIF of this dialect, with the reason."""


class ParsedCif(NamedTuple):
    """What a CIF of this dialect says, before the orbits are expanded."""

    formula: Composition
    number: int
    symbol: str
    lattice: Lattice
    sites: list[tuple[str, int, np.ndarray]]  # (element, multiplicity, representative)


_NUMBER = r"(\d+(?:\.\d+)?)"


def parse_cif(text: str) -> ParsedCif:
    """Read the fields of a CIF this module wrote (or a model imitated); CifError says
    which part is missing or malformed."""
    header = re.match(rf"data_((?:[A-Z][a-z]?\d+)+)\n{re.escape(SG_KEY)} (\S+)\n{NUMBER_KEY} (\d+)\n", text)
    if header is None:
        raise CifError("no data_ line, space group and number at the top")
    formula, symbol, number = header.group(1), header.group(2), int(header.group(3))
    try:
        composition = Composition(formula)
    except ValueError as error:
        raise CifError(f"formula {formula!r}: {error}") from error
    if not 1 <= number <= 230:
        raise CifError(f"space group number {number} is not 1 to 230")
    values = []
    at = header.end()
    for key in CELL_KEYS:
        match = re.compile(rf"{key} {_NUMBER}\n").match(text, at)
        if match is None:
            raise CifError(f"{key} missing or not a number")
        values.append(float(match.group(1)))
        at = match.end()
    loop = re.compile("loop_\n" + "".join(f"{key}\n" for key in SITE_KEYS)).match(text, at)
    if loop is None:
        raise CifError("no atom-site loop with the expected columns")
    row = re.compile(rf"([A-Z][a-z]?) [A-Z][a-z]?\d+ (\d+) {_NUMBER} {_NUMBER} {_NUMBER}\n")
    sites, at = [], loop.end()
    while at < len(text):
        match = row.match(text, at)
        if match is None:
            raise CifError(f"malformed atom-site row {text[at:].splitlines()[0]!r}")
        if not Element.is_valid_symbol(match.group(1)):
            raise CifError(f"{match.group(1)!r} is not an element")
        sites.append((match.group(1), int(match.group(2)), np.array([float(match.group(i)) for i in (3, 4, 5)])))
        at = match.end()
    if not sites:
        raise CifError("no atom sites")
    try:
        lattice = Lattice.from_parameters(*values)
    except ValueError as error:
        raise CifError(f"impossible cell {values}: {error}") from error
    return ParsedCif(composition, number, symbol, lattice, sites)


@functools.cache
def symmetry_operations(number: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (n, 3, 3) and translations (n, 3) of space group `number` in spglib's
    default setting."""
    operations = spglib.get_symmetry_from_database(default_hall_numbers()[number])
    return operations["rotations"], operations["translations"]


def expand_orbit(lattice: Lattice, number: int, site: np.ndarray) -> np.ndarray:
    """The distinct images of `site` under space group `number` (fractional, in [0, 1)),
    images closer than MERGE_DISTANCE Å counted once."""
    rotations, translations = symmetry_operations(number)
    images = (np.einsum("nij,j->ni", rotations, site) + translations) % 1.0
    kept: list[np.ndarray] = []
    for image in images:
        if not kept:
            kept.append(image)
            continue
        delta = np.asarray(kept) - image
        delta -= np.round(delta)
        if np.min(np.linalg.norm(delta @ lattice.matrix, axis=1)) >= MERGE_DISTANCE:
            kept.append(image)
    return np.asarray(kept)


def read_cif(text: str) -> tuple[Structure, ParsedCif]:
    """The structure a CIF of this dialect describes, and its parsed fields (to check
    the written multiplicities and formula against it). CifError when unreadable."""
    parsed = parse_cif(text)
    species, coords = [], []
    for symbol, _, site in parsed.sites:
        images = expand_orbit(parsed.lattice, parsed.number, site)
        species += [symbol] * len(images)
        coords.append(images)
    return Structure(parsed.lattice, species, np.concatenate(coords)), parsed
