"""Every generated CIF is parsed and checked before it may become a candidate.

A sample is accepted as a Structure or rejected with a typed reason (CrystaLLM
reports the same kinds of failure: Antunes et al. 2024, "validity"):

* ``truncated``: the model hit the length limit before the end-of-text token;
* ``unparseable``: not a CIF of our dialect (a missing key, a malformed number or row,
  an unknown element or space-group number);
* ``formula``: the sites do not add up to the cell formula of the `data_` line, or that
  formula is not the prompt's;
* ``space-group``: the H-M symbol is not the number's, a site's written multiplicity is
  not the size of its orbit, or spglib finds another space group in the structure;
* the reasons of :func:`gnome_loop.structures.validate_structure`: ``volume`` (volume
  per atom outside 2 to 200 Å^3), ``overlapping-atoms`` (closer than 0.5 Å or half a
  covalent bond), ``degenerate-cell``, ``non-finite``, ``empty``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, NamedTuple

from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gnome_loop.generative.cif_tokens import SYMPREC, CifError, read_cif, space_group_symbols
from gnome_loop.structures import validate_structure

TRUNCATED, UNPARSEABLE, FORMULA, SPACE_GROUP = "truncated", "unparseable", "formula", "space-group"


class Reject(NamedTuple):
    """Why a sample is not a candidate: `reason` is the counted category."""

    reason: str
    detail: str


def check_sample(text: str, finished: bool = True, composition: Composition | None = None,
                 symprec: float = SYMPREC) -> Structure | Reject:
    """The structure a generated CIF describes, or why it has none.

    `finished` says whether the model ended the text itself; `composition` is the
    prompt's cell formula (None: whatever the `data_` line says).
    """
    if not finished:
        return Reject(TRUNCATED, f"no end of text after {len(text)} characters")
    try:
        structure, parsed = read_cif(text)
    except CifError as error:
        return Reject(UNPARSEABLE, str(error))
    if parsed.symbol != space_group_symbols()[parsed.number - 1]:
        return Reject(SPACE_GROUP, f"symbol {parsed.symbol} is not that of number {parsed.number}")
    if len(structure) != sum(multiplicity for _, multiplicity, _ in parsed.sites):
        return Reject(SPACE_GROUP, "written multiplicities are not the orbits' sizes")
    if composition is not None and parsed.formula != composition:
        return Reject(FORMULA, f"data_ line {parsed.formula.formula}, prompt {composition.formula}")
    if structure.composition != parsed.formula:
        return Reject(FORMULA, f"sites give {structure.composition.formula}, data_ line {parsed.formula.formula}")
    reason = validate_structure(structure)
    if reason is not None:
        return Reject(reason.split(":", 1)[0], reason)
    try:
        found = SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
    except Exception as error:  # spglib fails on pathological cells
        return Reject(SPACE_GROUP, f"spglib: {error}")
    if found != parsed.number:
        return Reject(SPACE_GROUP, f"written {parsed.number}, spglib finds {found}")
    return structure


class CheckedSamples(NamedTuple):
    """The accepted structures and the rejects counted by reason (with one example each)."""

    structures: list[Structure]
    rejected: Counter
    examples: dict[str, str]

    @property
    def total(self) -> int:
        return len(self.structures) + sum(self.rejected.values())


def check_samples(samples: Iterable[tuple[str, bool]], composition: Composition | None = None) -> CheckedSamples:
    """Check every `(text, finished)` sample; nothing is dropped uncounted."""
    structures, rejected, examples = [], Counter(), {}
    for text, finished in samples:
        outcome = check_sample(text, finished, composition)
        if isinstance(outcome, Reject):
            rejected[outcome.reason] += 1
            examples.setdefault(outcome.reason, outcome.detail)
        else:
            structures.append(outcome)
    return CheckedSamples(structures, rejected, examples)
