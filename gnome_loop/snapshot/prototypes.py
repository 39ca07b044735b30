"""The embedded default snapshot, built only from what the installed packages ship.

Known structures come from the AFLOW prototype library that pymatgen ships
(Mehl et al., Comput. Mater. Sci. 136, S1 (2017)): a prototype is kept when its own
elements lie in the chemical space ("substitution-free matching"). Every element
also gets a handful of elemental structures, so the hull always has its corners:
ASE's reference state, and a few AFLOW unary prototypes substituted with the element
(`ELEMENT_TEMPLATES`, chosen by the kind of element). None of these phases has an
energy: the campaign's oracle evaluates them all in round 0, and the hull takes the
lowest energy per atom as the element's terminal. A structure whose relaxation fails
is not retried from another one: the others cover it, and a campaign left without any
terminal for an element stops at the end of round 0 and names it.
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

from gnome_loop.snapshot.phases import KnownPhase
from gnome_loop.structures import ChemicalSpace, minimum_distance

#: Edge of the cubic box around a diatomic reference molecule, Å. 7 Å keeps molecules
#: more than 5 Å from their images while 343 Å^3 / 2 atoms stays inside the sane
#: volume range of `gnome_loop.structures.validate_structure` (at most 200 Å^3/atom).
MOLECULE_BOX = 7.0
#: Most elements of a substitution template (the library has one 5-element prototype).
TEMPLATE_MAX_ELEMENTS = 4
#: AFLOW unary prototypes an element is also tried in, by kind of element (`element_kind`),
#: in order of preference: (name, prototype id). Metals (and noble gases) try the close
#: packings; the other non-metals and metalloids covalent networks, layers and chains
#: (diamond; alpha-As, the layers of As, Sb, black P; alpha-Se, the helices of Se, Te and
#: fibrous S; simple cubic, alpha-Po); diatomic elements and halogens a molecular crystal
#: (A14, solid I2, Br2 and Cl2). See `elemental_phases` for which are used.
ELEMENT_TEMPLATES = {
    "close-packed": (("fcc", "proto-A_cF4_225_a-Cu"), ("hcp", "proto-A_hP2_194_c-Mg"),
                     ("bcc", "proto-A_cI2_229_a-W")),
    "covalent": (("diamond", "proto-A_cF8_227_a-C"), ("alpha-As", "proto-A_hR2_166_c-As"),
                 ("alpha-Se", "proto-A_hP3_152_a-Se"), ("sc", "proto-A_cP1_221_a-Po")),
    "molecular": (("alpha-I2", "proto-A_oC8_64_f-I"),),
}


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
def _matching_prototypes(space: ChemicalSpace) -> tuple[tuple[str, Structure, dict], ...]:
    """Prototypes of `space`, reduced to the primitive cell when too big."""
    kept = []
    for key, structure, tags in _library():
        if not space.holds(el.symbol for el in structure.composition.elements):
            continue
        if len(structure) > space.max_atoms:
            structure = structure.get_primitive_structure()
        if len(structure) <= space.max_atoms:
            kept.append((key, structure, tags))
    return tuple(kept)


def _molecule(symbol: str, bond: float) -> Structure:
    """A homonuclear dimer of bond length `bond` Å centred in a cubic box."""
    centre = MOLECULE_BOX / 2
    coords = [[centre, centre, centre - bond / 2], [centre, centre, centre + bond / 2]]
    return Structure(Lattice.cubic(MOLECULE_BOX), [symbol, symbol], coords, coords_are_cartesian=True)


def element_kind(symbol: str) -> str:
    """'molecular' (ASE's diatomic gases H, N, O, F and the halogens), 'close-packed'
    (metals and noble gases) or 'covalent' (the other non-metals and the metalloids)."""
    element = Element(symbol)
    if (reference_states[atomic_numbers[symbol]] or {}).get("symmetry") == "diatom" or element.is_halogen:
        return "molecular"
    return "close-packed" if element.is_metal or element.is_noble_gas else "covalent"


def _ase_crystal(symbol: str) -> Structure | None:
    """The crystal `ase.build.bulk` builds for an element, None when it builds none."""
    try:
        atoms = bulk(symbol)
    except (ValueError, RuntimeError):  # ASE has no data or no atomic basis for it
        return None
    return Structure(atoms.cell[:], atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True)


def _radius(symbol: str) -> float:
    """The atomic radius of an element, Å (its van der Waals radius where pymatgen has none)."""
    element = Element(symbol)
    return float(element.atomic_radius or element.van_der_waals_radius)


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
    if element_kind(symbol) == "molecular":
        bond = state.get("d", 2 * covalent_radii[number])
        return _molecule(symbol, bond), "diatomic molecule"
    crystal = _ase_crystal(symbol)
    if crystal is None:
        half = math.sqrt(2) * _radius(symbol)  # a / 2
        fcc = Lattice([[0, half, half], [half, 0, half], [half, half, 0]])  # primitive cell
        return Structure(fcc, [symbol], [[0, 0, 0]]), "fcc from atomic radius"
    return crystal, state["symmetry"]


def element_template(symbol: str, prototype_id: str) -> Structure:
    """The unary prototype `prototype_id` made of `symbol` and scaled to it.

    A crystal is scaled so that its shortest distance is the element's bond: the
    nearest-neighbour distance of ASE's crystal of it, or twice its atomic radius.
    A molecular crystal is scaled by the ratio of the van der Waals radii, which sets
    the distances between molecules; the relaxation then finds the bond length.
    """
    template = next(structure for key, structure, _ in _library() if key == prototype_id).copy()
    own = template.composition.elements[0]
    template.replace_species({own: Element(symbol)})
    if element_kind(symbol) == "molecular":
        factor = float(Element(symbol).van_der_waals_radius) / float(own.van_der_waals_radius)
    else:
        crystal = _ase_crystal(symbol)
        bond = minimum_distance(crystal) if crystal is not None else 2 * _radius(symbol)
        factor = bond / minimum_distance(template)
    template.scale_lattice(template.volume * factor**3)
    return template


def elemental_phases(symbol: str, present: set[str] = frozenset()) -> list[KnownPhase]:
    """The elemental structures of `symbol` the oracle evaluates in round 0: ASE's
    reference state (`ref-<El>`) and templates of `ELEMENT_TEMPLATES` (`ref-<El>-<name>`).

    Where ASE builds the element's crystal (its known ground state), the first template
    that differs from it stands in should its relaxation fail; where ASE has only a
    guess (an fcc cell of touching spheres) or a molecule, every template of the kind is
    tried, so that the terminal, the lowest energy per atom, is not the guess's. A
    template named like the reference state (the fcc guess counts as fcc) is left out,
    and so is the element's own prototype when it is among the phase ids `present`.
    """
    structure, state = elemental_reference(symbol)
    phases = [KnownPhase(f"ref-{symbol}", structure, energy=None, source="ase-reference", scale=None,
                         info={"reference_state": state, "molecule": state == "diatomic molecule"})]
    templates = [(name, prototype_id) for name, prototype_id in ELEMENT_TEMPLATES[element_kind(symbol)]
                 if name != state.split()[0] and not (prototype_id in present and prototype_id.endswith(f"-{symbol}"))]
    for name, prototype_id in templates[:1] if _ase_crystal(symbol) is not None else templates:
        phases.append(KnownPhase(f"ref-{symbol}-{name}", element_template(symbol, prototype_id), energy=None,
                                 source="element-template", scale=None,
                                 info={"reference_state": name, "template": prototype_id, "molecule": False}))
    return phases


def load_prototypes(space: ChemicalSpace) -> list[KnownPhase]:
    """Prototypes within the chemical space plus each element's elemental structures
    (`elemental_phases`), sorted by id.

    Prototypes need all their own elements among `space.elements`, at most
    `space.max_elements` elements and `space.max_atoms` sites. Elemental structures (ids `ref-<El>...`) are
    always included, whatever the limits. No phase has an energy.
    """
    phases = [
        KnownPhase(key, structure.copy(), energy=None, source="prototypes", scale=None, info=dict(tags))
        for key, structure, tags in _matching_prototypes(space)
    ]
    present = {phase.id for phase in phases}
    for symbol in space.elements:
        phases += elemental_phases(symbol, present)
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
