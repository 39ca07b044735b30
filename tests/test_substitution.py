"""Ionic substitution (Hautier et al. 2011, as GNoME modified it)."""

import math

import pytest
from monty.serialization import loadfn
from pymatgen.core import Element, Lattice, Structure

from gnome_loop.generate.substitution import LAMBDA_TABLE, SubstitutionProbability, substitute, substitution_model
from gnome_loop.snapshot.prototypes import load_prototypes, prototype_templates
from gnome_loop.structures import ChemicalSpace, validate_structure

EMT_SPACE = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"]
HALIDE_SPACE = ["Li", "Na", "K", "Cl", "F", "Br", "O", "Mg"]
IONIC_SPACE = ["Li", "Na", "K", "Mg", "Ca", "Al", "Si", "Ti", "Fe", "O", "S", "Cl"]


def _formula(candidate) -> str:
    return candidate.structure.composition.reduced_formula


@pytest.fixture(scope="module")
def nacl() -> Structure:
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    return rocksalt.get_primitive_structure()


@pytest.fixture(scope="module")
def cu3au() -> Structure:
    coords = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    return Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"], coords)


def test_clamping_raises_negative_pair_weights():
    clamped, shipped = substitution_model(), substitution_model(clamped=False)
    first, second, weight = next(row for row in loadfn(LAMBDA_TABLE) if row[2] < -0.5 and "D1+" not in row)
    assert shipped.get_lambda(first, second) == pytest.approx(weight)
    assert clamped.get_lambda(first, second) == 0.0
    assert clamped.cond_prob(first, second) != pytest.approx(shipped.cond_prob(first, second))
    assert clamped.alpha == shipped.alpha == -5.0


def test_model_is_pymatgens_with_exact_marginals():
    """The model set up from the table is the one pymatgen's own __init__ builds, its
    marginals summed exactly (math.fsum) over every species."""
    for clamped in (True, False):
        model = substitution_model(clamped=clamped)
        table = loadfn(LAMBDA_TABLE)
        if clamped:
            table = [[first, second, max(weight, 0.0)] for first, second, weight in table]
        own = SubstitutionProbability(lambda_table=table, alpha=-5.0)
        # every attribute pymatgen's __init__ sets (but monty's instance-cache marker)
        assert set(vars(model)) == set(vars(own)) - {"_initialized"}
        assert (model._l, model.species, model.alpha, model._lambda_table) == (own._l, own.species, -5.0, table)
        species = sorted(own.species)
        rows = {s: [math.exp(own.get_lambda(s, t)) for t in species] for s in species}
        assert dict(model._px) == {s: math.fsum(row) for s, row in rows.items()}
        assert model.Z == math.fsum(value for row in rows.values() for value in row)


def test_nacl_gives_charge_balanced_rocksalts(nacl):
    candidates = substitute([("nacl", nacl)], HALIDE_SPACE, known_formulas={"NaCl", "LiF"})
    by_formula = {_formula(c): c for c in candidates}
    assert {"KCl", "LiCl", "NaF", "KF", "NaBr", "MgO"} <= set(by_formula)
    assert "LiF" not in by_formula and "NaCl" not in by_formula
    assert not {"Na2O2", "MgCl", "ClF"} & set(by_formula)  # not charge balanced

    kcl = by_formula["KCl"]
    model = substitution_model()
    assert kcl.info["probability"] == pytest.approx(model.cond_prob("K+", "Na+") * model.cond_prob("Cl-", "Cl-"))
    assert kcl.info["substitution"] == {"Na": "K"}
    assert kcl.generator == "substitution" and kcl.parent_ids == ("nacl",)
    assert kcl.structure.volume > nacl.volume > by_formula["LiCl"].structure.volume
    assert all(isinstance(site.specie, Element) for site in kcl.structure)


def test_without_charge_balance_more_is_proposed(nacl):
    balanced = {_formula(c) for c in substitute([("nacl", nacl)], HALIDE_SPACE, {"NaCl"})}
    unbalanced = {_formula(c) for c in substitute([("nacl", nacl)], HALIDE_SPACE, {"NaCl"}, charge_balanced=False)}
    assert balanced < unbalanced and "Na2O2" in unbalanced


def test_intermetallic_parent_uses_element_level_weights(cu3au):
    candidates = substitute([("cu3au", cu3au)], EMT_SPACE, known_formulas={"Cu3Au"})
    by_formula = {_formula(c): c for c in candidates}
    assert {"Ag3Au", "Cu3Pt", "Cu3Pd", "Ni3Au"} <= set(by_formula)
    assert by_formula["Ag3Au"].info["substitution"] == {"Cu": "Ag"}
    model = substitution_model()

    def ions(symbol):
        return [species for species in model.species if species.symbol == symbol]

    cu_to_ag = max(model.cond_prob(ag, cu) for ag in ions("Ag") for cu in ions("Cu"))
    au_stays = max(model.cond_prob(a, b) for a in ions("Au") for b in ions("Au"))
    assert by_formula["Ag3Au"].info["probability"] == pytest.approx(cu_to_ag * au_stays)


def test_an_intermetallic_swap_scales_the_cell_by_the_elements_volumes(cu3au):
    """Zen's law: Cu3Au (13.2 Å^3/atom) made Ni3Au takes the parent's volume times the ratio
    of the summed elemental volumes (Ni 10.9, Cu 11.9, Au 17.1 Å^3/atom), not of atomic radii."""
    volume = {"Cu": 7.11, "Ni": 6.59, "Au": 10.21}  # molar volumes, cm^3/mol (pymatgen's)
    candidates = substitute([("cu3au", cu3au)], EMT_SPACE, known_formulas={"Cu3Au"})
    ni3au = next(c.structure for c in candidates if _formula(c) == "Ni3Au")
    expected = cu3au.volume * (3 * volume["Ni"] + volume["Au"]) / (3 * volume["Cu"] + volume["Au"])
    assert ni3au.volume == pytest.approx(expected, rel=0.01)
    assert Element("Ni").molar_volume == pytest.approx(volume["Ni"], abs=0.01)


def test_candidates_stay_in_the_space_and_are_new():
    known = {phase.composition.reduced_formula for phase in load_prototypes(ChemicalSpace(IONIC_SPACE, 3, 20))}
    threshold = 0.002
    candidates = substitute(
        prototype_templates(), IONIC_SPACE, known, threshold=threshold, max_elements=3, max_atoms=12
    )
    assert len(candidates) > 200
    assert len({c.id for c in candidates}) == len(candidates)
    probabilities = [c.info["probability"] for c in candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    for candidate in candidates:
        elements = {el.symbol for el in candidate.structure.composition.elements}
        assert elements <= set(IONIC_SPACE) and len(elements) <= 3
        assert len(candidate.structure) <= 12
        assert _formula(candidate) not in known
        assert candidate.info["probability"] > threshold
        assert candidate.info["substitution"]
    valid = sum(validate_structure(c.structure) is None for c in candidates)
    assert valid >= 0.99 * len(candidates)


def test_deterministic_and_truncated(cu3au, nacl):
    parents = [("cu3au", cu3au), ("nacl", nacl)]
    space = EMT_SPACE + HALIDE_SPACE
    first = substitute(parents, space, {"Cu3Au", "NaCl"})
    second = substitute(list(reversed(parents)), space, {"Cu3Au", "NaCl"})
    assert [c.id for c in first] == [c.id for c in second]
    top = substitute(parents, space, {"Cu3Au", "NaCl"}, max_candidates=5)
    assert [c.id for c in top] == [c.id for c in first[:5]]
    assert substitute(parents, space, set(), max_candidates=0) == []


def test_a_higher_threshold_keeps_a_subset(nacl):
    loose = {c.id for c in substitute([("nacl", nacl)], HALIDE_SPACE, {"NaCl"}, threshold=1e-3)}
    strict = {c.id for c in substitute([("nacl", nacl)], HALIDE_SPACE, {"NaCl"}, threshold=1e-2)}
    assert strict < loose


def test_parents_beyond_the_limits_are_skipped(cu3au):
    assert substitute([("cu3au", cu3au)], EMT_SPACE, set(), max_atoms=3) == []
    assert substitute([("cu3au", cu3au)], EMT_SPACE, set(), max_elements=1) == []
