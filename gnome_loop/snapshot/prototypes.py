"""The embedded default snapshot, built only from what the installed packages ship.

Known structures come from the AFLOW prototype library that pymatgen ships
(Mehl et al., Comput. Mater. Sci. 136, S1 (2017)): a prototype is kept when its own
elements lie in the chemical space ("substitution-free matching"). Every element
also gets one reference structure from ASE's reference states, so the hull always
has its corners. None of these phases has an energy: the campaign's oracle
evaluates them.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import math
from pathlib import Path

from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii, reference_states
from pymatgen.core import Element, Lattice, Structure

from gnome_loop.snapshot import KnownPhase

#: Edge of the cubic box around a diatomic reference molecule, Å. 7 Å keeps molecules
#: more than 5 Å from their images while 343 Å^3 / 2 atoms stays inside the sane
#: volume range of `gnome_loop.structures.validate_structure` (at most 200 Å^3/atom).
MOLECULE_BOX = 7.0
#: Most elements of a substitution template (the library has one 5-element prototype).
TEMPLATE_MAX_ELEMENTS = 4


@functools.lru_cache(maxsize=1)
def _library() -> tuple[tuple[str, Structure, dict], ...]:
    """Every ordered prototype of the library as (id, structure, tags), sorted by id.

    An AFLOW label alone is not unique (A_oC8_64_f is alpha-Ga, black P and I), so
    the id also carries the reduced formula.
    """
    # Read pymatgen's shipped file directly: building its StructureNL objects (what
    # `pymatgen.analysis.prototypes._data` does on import) takes ~6 s, this ~0.3 s.
    package = Path(importlib.util.find_spec("pymatgen.analysis.prototypes").origin).parent
    with gzip.open(package / "aflow_prototypes.json.gz", "rt") as handle:
        library = json.load(handle)
    prototypes = []
    for item in library:
        structure = Structure.from_dict(item["snl"])
        if structure.is_ordered:
            key = f"proto-{item['tags']['aflow']}-{structure.composition.reduced_formula}"
            prototypes.append((key, structure, dict(item["tags"])))
    return tuple(sorted(prototypes, key=lambda prototype: prototype[0]))


@functools.lru_cache(maxsize=64)
def _matching_prototypes(
    elements: tuple[str, ...], max_elements: int, max_atoms: int
) -> tuple[tuple[str, Structure, dict], ...]:
    """Prototypes made only of `elements`, reduced to the primitive cell when too big."""
    space = set(elements)
    kept = []
    for key, structure, tags in _library():
        symbols = {el.symbol for el in structure.composition.elements}
        if not symbols <= space or len(symbols) > max_elements:
            continue
        if len(structure) > max_atoms:
            structure = structure.get_primitive_structure()
        if len(structure) <= max_atoms:
            kept.append((key, structure, tags))
    return tuple(kept)


def _molecule(symbol: str, bond: float) -> Structure:
    """A homonuclear dimer of bond length `bond` Å centred in a cubic box."""
    centre = MOLECULE_BOX / 2
    coords = [[centre, centre, centre - bond / 2], [centre, centre, centre + bond / 2]]
    return Structure(Lattice.cubic(MOLECULE_BOX), [symbol, symbol], coords, coords_are_cartesian=True)


def elemental_reference(symbol: str) -> tuple[Structure, str]:
    """A reference structure of one element and a word on what it is.

    Diatomic gases (ASE's "diatom" states: H, N, O, F) and the other halogens are a
    molecule in a box, with ASE's bond length or twice the covalent radius. Elements
    that `ase.build.bulk` builds get its crystal (fcc, bcc, hcp, diamond, ...). The
    rest (B, P, S, Mn, Ga, Se, Te, noble-gas atoms, some actinides) fall back to an
    fcc cell of touching spheres, a = 2*sqrt(2)*r with the atomic radius (van der
    Waals radius where pymatgen has no atomic radius): only a starting point that
    the oracle relaxes.
    """
    number = atomic_numbers[symbol]
    state = reference_states[number] or {}
    if state.get("symmetry") == "diatom" or Element(symbol).is_halogen:
        bond = state.get("d", 2 * covalent_radii[number])
        return _molecule(symbol, bond), "diatomic molecule"
    try:
        atoms = bulk(symbol)
    except (ValueError, RuntimeError):  # ASE has no data or no atomic basis for it
        element = Element(symbol)
        half = math.sqrt(2) * float(element.atomic_radius or element.van_der_waals_radius)  # a / 2
        fcc = Lattice([[0, half, half], [half, 0, half], [half, half, 0]])  # primitive cell
        return Structure(fcc, [symbol], [[0, 0, 0]]), "fcc from atomic radius"
    structure = Structure(atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True)
    return structure, state["symmetry"]


def load_prototypes(elements: list[str], max_elements: int, max_atoms: int) -> list[KnownPhase]:
    """Prototypes within the chemical space plus one reference per element, sorted by id.

    Prototypes need all their own elements in `elements`, at most `max_elements`
    elements and `max_atoms` sites. Elemental references (ids `ref-<El>`) are always
    included, whatever the limits. No phase has an energy.
    """
    phases = [
        KnownPhase(key, structure.copy(), energy=None, source="prototypes", scale=None, info=dict(tags))
        for key, structure, tags in _matching_prototypes(tuple(sorted(set(elements))), max_elements, max_atoms)
    ]
    for symbol in sorted(set(elements)):
        structure, state = elemental_reference(symbol)
        info = {"reference_state": state, "molecule": state == "diatomic molecule"}
        phases.append(
            KnownPhase(f"ref-{symbol}", structure, energy=None, source="ase-reference", scale=None, info=info)
        )
    return sorted(phases, key=lambda phase: phase.id)


def prototype_templates() -> list[tuple[str, Structure]]:
    """Every ordered prototype with at most four elements, as (id, structure).

    These are substitution templates: their elements need not be in the space.
    """
    return [
        (key, structure.copy())
        for key, structure, _ in _library()
        if len(structure.composition.elements) <= TEMPLATE_MAX_ELEMENTS
    ]
