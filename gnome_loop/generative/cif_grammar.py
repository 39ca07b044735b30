"""Constrained decoding: which tokens may come next in a CIF of our dialect for a prompt.

A language model prompted with a cell formula often writes a CIF that cannot be that
formula: a space group none of whose Wyckoff multiplicities add up to an element's
count, a symbol and a number of different groups, sites whose multiplicities do not
add up to the formula, a multiplicity whose coordinates lie on no Wyckoff position of
that multiplicity, a second atom on a position that holds one, or an atom on top of
another. Each is a fact of
the text before the token is drawn, so the sampler masks the tokens that would make
it (grammar-constrained decoding, as language models are held to a format elsewhere).
At these points only:

* the space-group token: groups whose multiplicities can make every element's count;
* the number after it: that group's, digit by digit;
* the start of a site row: an element with atoms left to place; the end of text only
  when none is left, and never before;
* a row's label: the row's own element;
* the multiplicity: one of a Wyckoff position of the group still free (a position
  without free parameters holds one orbit) that leaves the element's count reachable;
* a coordinate that the chosen multiplicity fixes (x = 1/4, y = x, ...): the values of
  the Wyckoff positions of that multiplicity the row's coordinates so far lie on;
* z, to its hundredths where it is free: values where the site's orbit has the written
  multiplicity and none of its atoms comes closer to another, or to the atoms placed
  so far, than `structures.validate_structure` allows (in the written cell).

The cell and the other free coordinates are the model's. Where the constraints leave
nothing (a prompt without a formula line, a dead end), nothing is masked; the checks of
:mod:`gnome_loop.generative.checks` still judge every sample.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import NamedTuple

import numpy as np
from pymatgen.core import Lattice

from gnome_loop.generative.cif_tokens import (CELL_KEYS, COORD_DECIMALS, ELEMENTS, EOS, MERGE_DISTANCE, NUMBER_KEY,
                                              SG_KEY, SITE_KEYS, expand_orbit, space_group_symbols,
                                              symmetry_operations, token_ids, vocabulary)
from gnome_loop.structures import MIN_BOND_RATIO, MIN_DISTANCE, covalent_radius

#: Counts above this are not checked for reachability (a cell that large is allowed anything).
MAX_COUNT = 512
#: Two written fractional coordinates closer than this are one value.
SAME_VALUE = 2e-4
#: Trial values of z per candidate digit when the grammar looks for room for an atom.
PROBES = 5
_CELL = re.compile("".join(rf"{key} (\d+(?:\.\d+)?)\n" for key in CELL_KEYS))
_NEIGHBOUR_CELLS = np.array(list(itertools.product((-1, 0, 1), repeat=3)))
_ELEMENTS = frozenset(ELEMENTS)


class WyckoffPosition(NamedTuple):
    """A Wyckoff position in spglib's default setting: its orbit's points are
    `rotations @ parameters + translations` (one row per point)."""

    multiplicity: int
    fixed: bool  # no free parameter: the position holds one orbit
    rotations: np.ndarray  # (multiplicity, 3, 3)
    translations: np.ndarray  # (multiplicity, 3)


def _origin_shift(number: int, rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """The shift s (in eighths) with x_spglib = x_table + s that maps the table's general
    position onto spglib's operations (pyxtal writes origin choice 2 of the 24 groups
    with two; spglib's default is choice 1)."""
    shifts = np.array(list(itertools.product(range(8), repeat=3))) / 8  # (S, 3); no shift first
    matches = np.ones(len(shifts), bool)
    spglib_rotations, spglib_translations = symmetry_operations(number)
    for rotation in np.unique(rotations, axis=0):
        mine = translations[np.all(rotations == rotation, axis=(1, 2))]  # (a, 3)
        theirs = spglib_translations[np.all(spglib_rotations == rotation, axis=(1, 2))]  # (b, 3)
        moved = mine[None] + (shifts @ (np.eye(3) - rotation).T)[:, None]  # (S, a, 3): t + (1 - R) s
        delta = moved[:, :, None] - theirs[None, None]  # (S, a, b, 3)
        close = np.all(np.abs((delta + 0.5) % 1.0 - 0.5) < 1e-6, axis=-1)
        matches &= close.any(axis=2).all(axis=1)
    if not matches.any():
        raise ValueError(f"space group {number}: pyxtal's Wyckoff table matches no origin of spglib's setting")
    return shifts[np.argmax(matches)]


@functools.cache
def wyckoff_positions(number: int) -> tuple[WyckoffPosition, ...]:
    """Space group `number`'s Wyckoff positions in the conventional cell of spglib's
    default setting (pyxtal's tables, moved to spglib's origin)."""
    from pyxtal.symmetry import Group

    table = Group(number).Wyckoff_positions
    general = np.array([op.affine_matrix for op in table[0].ops])
    shift = _origin_shift(number, general[:, :3, :3], general[:, :3, 3])
    positions = []
    for wp in table:
        affine = np.array([op.affine_matrix for op in wp.ops])
        positions.append(WyckoffPosition(int(wp.multiplicity), int(wp.get_dof()) == 0, affine[:, :3, :3],
                                         (affine[:, :3, 3] + shift) % 1.0))
    return tuple(positions)


@functools.cache
def wyckoff_multiplicities(number: int) -> tuple[int, ...]:
    """The distinct multiplicities of space group `number`'s Wyckoff positions."""
    return tuple(sorted({wp.multiplicity for wp in wyckoff_positions(number)}))


@functools.cache
def reachable_counts(number: int) -> np.ndarray:
    """Boolean array over 0..MAX_COUNT: which numbers of atoms of one element group
    `number`'s orbits can add up to (any position used any number of times: the exact
    rule, that a fixed position holds one orbit, is applied as the sites are written)."""
    reachable = np.zeros(MAX_COUNT + 1, bool)
    reachable[0] = True
    for count in range(1, MAX_COUNT + 1):
        reachable[count] = any(reachable[count - m] for m in wyckoff_multiplicities(number) if m <= count)
    return reachable


def _reachable(number: int, count: int) -> bool:
    return count > MAX_COUNT or bool(reachable_counts(number)[count])


def coordinate_text(value: float) -> str:
    """A fractional coordinate as `cif_tokens.write_cif` writes it."""
    return f"{np.round(value % 1.0, COORD_DECIMALS) % 1.0:.{COORD_DECIMALS}f}"


def _same(a: float, b: float) -> bool:
    return abs((a - b + 0.5) % 1.0 - 0.5) < SAME_VALUE


def fixed_values(rotation: np.ndarray, translation: np.ndarray, written: list[float]) -> list[float] | None:
    """The values coordinate `len(written)` can take on the subspace `rotation @ p +
    translation` (mod 1) whose earlier coordinates are `written`; None when it is free."""
    k = len(written)
    if not rotation[k].any():
        return [translation[k] % 1.0]
    if k == 0:
        return None
    basis = []  # earlier coordinates whose rows are independent: a repeated one (y = x) adds no freedom
    for i in range(k):
        if np.linalg.matrix_rank(rotation[basis + [i]]) > len(basis):
            basis.append(i)
    earlier = rotation[basis]
    weights, *_ = np.linalg.lstsq(earlier.T, rotation[k], rcond=None)
    if not np.allclose(earlier.T @ weights, rotation[k], atol=1e-8):
        return None
    offsets = np.asarray(written)[basis] - translation[basis]
    values = [float(weights @ (offsets + np.asarray(n)) + translation[k]) % 1.0
              for n in itertools.product(range(3), repeat=len(basis))]
    return [v for i, v in enumerate(values) if not any(_same(v, u) for u in values[:i])]


def _sg_id(number: int) -> int:
    return token_ids()[f"sg:{space_group_symbols()[number - 1]}"]


def _next_characters(prefix: str, options: list[str], end: str) -> list[int]:
    """Token ids that continue `prefix` towards one of `options`, and `end` once it is one."""
    ids = token_ids()
    following = {o[len(prefix)] for o in options if o.startswith(prefix) and len(o) > len(prefix)}
    return [ids[c] for c in sorted(following)] + ([ids[end]] if prefix in options else [])


_FORMULA = re.compile(r"([A-Z][a-z]?)(\d+)")


class CifConstraint:
    """The state of one row of a batch being decoded: feed it every token (the prompt's
    too) with `push`; `allowed` says which token ids may come next (None: any)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.formula_text: str | None = ""  # the data_ line's text while it is read, None after
        self.remaining: dict[str, int] | None = None  # atoms per element still to place
        self.number: int | None = None  # the written space group
        self.forced: list[int] = []  # tokens the format fixes from here
        self.in_sites = False
        self.row: list[int] = []  # tokens of the current site row
        self.occupied: set[int] = set()  # fixed Wyckoff positions holding an orbit
        self.subspaces: list[tuple[np.ndarray, np.ndarray]] | None = None  # where the row's site may lie
        self.coordinates: list[float] = []  # the row's coordinates written so far
        self.options: list[str] | None = None  # texts the coordinate being written may take
        self.text = ""  # all text so far (the cell is read from it)
        self.lattice: np.ndarray | None = None  # the written cell's matrix, once the site loop starts
        self.atoms = np.zeros((0, 3))  # fractional positions of every atom the rows placed so far
        self.radii = np.zeros(0)  # their covalent radii

    def push(self, token: int) -> None:
        ids, text = token_ids(), vocabulary()[token]
        if self.forced:
            self.forced = self.forced[1:] if token == self.forced[0] else []
        if self.formula_text is not None and self.tokens and self.tokens[0] == ids["data_"]:
            self._push_formula(text)
        elif text.startswith("sg:") and not self.in_sites:
            self.number = space_group_symbols().index(text[3:]) + 1
            self.forced = [ids["\n"], ids[NUMBER_KEY], ids[" "], *(ids[d] for d in str(self.number)), ids["\n"]]
        elif self.in_sites:
            self._push_site(token)
        elif text == "\n" and self.tokens and self.tokens[-1] == ids[SITE_KEYS[-1]]:
            self.in_sites = True
            self.lattice = _written_lattice(self.text)
        self.tokens.append(token)
        self.text += text.removeprefix("sg:")

    def _push_formula(self, text: str) -> None:
        if text != "\n":
            self.formula_text += text
            return
        counts = _FORMULA.findall(self.formula_text)
        if counts and "".join(s + c for s, c in counts) == self.formula_text:
            self.remaining = {symbol: int(count) for symbol, count in counts}
        self.formula_text = None

    def _push_site(self, token: int) -> None:
        ids = token_ids()
        ends_field = token in (ids[" "], ids["\n"])
        field = self.row.count(ids[" "])
        if ends_field and field >= 3:  # a malformed coordinate is NaN: nothing after it in the row is judged
            written = self._field(field)
            self._coordinate_written(float(written) if re.fullmatch(r"\d+(\.\d*)?", written) else np.nan)
        if token == ids["\n"]:
            self.row, self.subspaces, self.coordinates, self.options = [], None, [], None
            return
        self.row.append(token)
        if token == ids[" "] and field == 2:
            self._multiplicity_written(self._field(2))
        if token == ids[" "] and field + 1 >= 3:
            self._start_coordinate()

    def _field(self, index: int) -> str:
        """The text of the current row's field `index` (0 element, 1 label, 2 multiplicity, 3-5 x y z)."""
        fields = "".join(vocabulary()[t] for t in self.row).split(" ")
        return fields[index] if index < len(fields) else ""

    def _multiplicity_written(self, text: str) -> None:
        element = vocabulary()[self.row[0]]
        if self.remaining is None or element not in self.remaining or not text.isdigit():
            return
        multiplicity = int(text)
        self.remaining[element] -= multiplicity
        if self.number is not None and multiplicity < max(wyckoff_multiplicities(self.number)):
            self.subspaces = [(rotation, translation)
                              for index, wp in enumerate(wyckoff_positions(self.number))
                              if wp.multiplicity == multiplicity and index not in self.occupied
                              for rotation, translation in zip(wp.rotations, wp.translations)]

    def _start_coordinate(self) -> None:
        self.options = None
        if not self.subspaces or len(self.coordinates) >= 3:
            return
        values = [fixed_values(r, t, self.coordinates) for r, t in self.subspaces]
        if all(v is not None for v in values):
            self.options = sorted({coordinate_text(v) for vs in values for v in vs})

    def _coordinate_written(self, value: float) -> None:
        k = len(self.coordinates)
        if self.subspaces and k < 3:
            self.subspaces = [(r, t) for r, t in self.subspaces
                              if (vs := fixed_values(r, t, self.coordinates)) is None or any(_same(value, v) for v in vs)]
        self.coordinates.append(value)
        if len(self.coordinates) == 3 and self.number is not None:
            self._occupy(np.asarray(self.coordinates))
            if self.lattice is not None and self._element() and not np.isnan(self.coordinates).any():
                images = expand_orbit(Lattice(self.lattice), self.number, np.asarray(self.coordinates))
                self.atoms = np.concatenate([self.atoms, images])
                self.radii = np.concatenate([self.radii, np.full(len(images), self._radius())])

    def _occupy(self, site: np.ndarray) -> None:
        """Mark the fixed Wyckoff position `site` lies on (if any) as taken."""
        for index, wp in enumerate(wyckoff_positions(self.number)):
            if wp.fixed and any(all(_same(a, b) for a, b in zip(site, t)) for t in wp.translations):
                self.occupied.add(index)

    def allowed(self) -> list[int] | None:
        """Token ids that may come next, or None when the model is free here."""
        ids = token_ids()
        if self.forced:
            return [self.forced[0]]
        if self.tokens[-2:] == [ids[SG_KEY], ids[" "]] and self.remaining is not None:
            groups = [n for n in range(1, 231) if all(_reachable(n, c) for c in self.remaining.values())]
            return [_sg_id(n) for n in groups] or None
        if not self.in_sites or self.remaining is None:
            return None
        if not self.row:
            left = [ids[e] for e, count in self.remaining.items() if count > 0 and e in ids]
            if left:
                return left
            return [ids[EOS]] if all(c == 0 for c in self.remaining.values()) else None
        field = self.row.count(ids[" "])
        if len(self.row) == 1:
            return [ids[" "]]
        if len(self.row) == 2:
            return [self.row[0]]
        if len(self.row) == 3:
            return [ids[d] for d in "0123456789"]  # the label's number
        element = vocabulary()[self.row[0]]
        if field == 2 and self.number is not None and element in self.remaining:
            return _next_characters(self._field(2), self._multiplicities(self.remaining[element]), " ") or None
        if 3 <= field <= 5 and self.options:
            return _next_characters(self._field(field), self._roomy(self.options) if field == 5 else self.options,
                                    " " if field < 5 else "\n") or None
        if field == 5 and len(self.coordinates) == 2 and self.lattice is not None and self.number is not None \
                and self._element() and not np.isnan(self.coordinates).any():
            return self._clear_digits(self._field(5)) or None
        return None

    def _roomy(self, options: list[str]) -> list[str]:
        """The z values of `options` where the row's atom fits (`_fits`); all of them where none does."""
        if self.lattice is None or self.number is None or len(self.coordinates) != 2 or not self._field(2).isdigit() \
                or not self._element() or np.isnan(self.coordinates).any():
            return options
        sites = np.array([[*self.coordinates, float(z)] for z in options])
        fits = self._fits(sites, int(self._field(2)))
        return [z for z, ok in zip(options, fits) if ok] or options

    def _element(self) -> str | None:
        """The row's element (None where the row does not start with one)."""
        symbol = vocabulary()[self.row[0]] if self.row else None
        return symbol if symbol in _ELEMENTS else None

    def _radius(self) -> float:
        return covalent_radius(self._element())

    def _clear_digits(self, prefix: str) -> list[int]:
        """The z digits (tenths after "0.", hundredths after "0.d") under which some z
        puts the row's atom where its orbit has the written multiplicity and no atom
        comes closer to it than `validate_structure` allows, judged at PROBES values of z
        per digit (a window of room narrower than that can be missed); empty elsewhere."""
        if not re.fullmatch(r"0\.\d?", prefix) or not self._field(2).isdigit():
            return []
        base, width = float(prefix + "0"), 0.1 if prefix.endswith(".") else 0.01
        z = base + np.arange(10)[:, None] * width + (np.arange(PROBES) + 0.5)[None] * width / PROBES  # (10, probes)
        sites = np.column_stack([np.broadcast_to(self.coordinates, (z.size, 2)), z.ravel()])
        fits = self._fits(sites, int(self._field(2))).reshape(10, PROBES).any(axis=1)
        return [token_ids()[str(d)] for d in np.flatnonzero(fits)]

    def _fits(self, sites: np.ndarray, multiplicity: int) -> np.ndarray:
        """Which candidate sites (fractional, (k, 3)) have an orbit of `multiplicity` whose
        atoms keep their distance from each other and from the atoms placed so far (the
        placed atoms and each orbit are whole orbits, so the site's own distances say it)."""
        radius = self._radius()
        to_images = _distances(self.lattice, sites[:, None] - _images(self.number, sites))  # (k, ops)
        copies = np.sum(to_images < MERGE_DISTANCE, axis=1)
        nearest = np.where(to_images < MERGE_DISTANCE, np.inf, to_images).min(axis=1)
        fits = (len(symmetry_operations(self.number)[0]) == multiplicity * copies) \
            & (nearest >= max(MIN_DISTANCE, MIN_BOND_RATIO * 2 * radius))
        if len(self.atoms):
            to_atoms = _distances(self.lattice, sites[:, None] - self.atoms[None])  # (k, atoms)
            floor = np.maximum(MIN_DISTANCE, MIN_BOND_RATIO * (radius + self.radii))
            fits &= np.all(to_atoms >= floor[None], axis=1)
        return fits

    def _multiplicities(self, remaining: int) -> list[str]:
        """Multiplicities of the group's positions still free that leave `remaining - m` reachable."""
        free = {wp.multiplicity for index, wp in enumerate(wyckoff_positions(self.number))
                if not (wp.fixed and index in self.occupied)}
        return [str(m) for m in sorted(free) if m <= remaining and _reachable(self.number, remaining - m)]


def _written_lattice(text: str) -> np.ndarray | None:
    """The cell matrix of the text's six cell lines, or None where they are not all there or not a cell."""
    match = _CELL.search(text)
    if match is None:
        return None
    try:
        return Lattice.from_parameters(*map(float, match.groups())).matrix
    except ValueError:
        return None


def _images(number: int, sites: np.ndarray) -> np.ndarray:
    """(k, ops, 3): the images of `sites` (k, 3) under space group `number`'s operations, in [0, 1)."""
    rotations, translations = symmetry_operations(number)
    return (np.einsum("nij,kj->kni", rotations, sites) + translations[None]) % 1.0


def _distances(lattice: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Shortest lengths (Å) of fractional differences `delta` (..., 3) over the periodic images."""
    delta = delta - np.round(delta)
    return np.linalg.norm((delta[..., None, :] + _NEIGHBOUR_CELLS) @ lattice, axis=-1).min(axis=-1)


def allowed_mask(constraints: list[CifConstraint], active: np.ndarray) -> np.ndarray:
    """(rows, vocabulary) booleans: the tokens each row may draw next; rows not `active`
    (in their prompt, or finished) are left free."""
    mask = np.ones((len(constraints), len(vocabulary())), bool)
    for row, constraint in enumerate(constraints):
        if active[row]:
            allowed = constraint.allowed()
            if allowed is not None:
                mask[row] = False
                mask[row, allowed] = True
    return mask
