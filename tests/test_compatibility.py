"""MP2020 corrections of compositions without structures (the embedded reference hull):
MP's run type and U by its mixing rule, the oxygen anion by charge balance, sulfide
only where S is an anion. Numbers are MP2020's (pymatgen's MP2020Compatibility.yaml)."""

import pytest
from pymatgen.core import Composition

from gnome_loop.compatibility import mp2020_energy, mp_parameters, oxide_type_of

OXIDE, PEROXIDE, SUPEROXIDE = -0.687, -0.465, -0.161
U_NI_OXIDE, U_FE_FLUORIDE, SULFIDE, FLUORIDE = -2.541, -2.256, -0.503, -0.462


@pytest.mark.parametrize("formula, kind", [
    ("Li2O", "oxide"), ("NiO", "oxide"), ("Fe3O4", "oxide"),  # mixed valence balances too
    ("Li2O2", "peroxide"), ("BaO2", "peroxide"), ("KO2", "superoxide"), ("KO3", "ozonide"),
    ("LiO8", "superoxide"),  # Li+ in solid O2: more O than superoxide ions could hold
    ("BaRe2O9", "oxide"),  # no balanced guess, but Re forms no peroxides: an oxide all the same
])
def test_oxide_type_of_a_composition(formula, kind):
    assert oxide_type_of(Composition(formula)) == kind


def test_mp_parameters_follow_mps_mixing_rule():
    assert mp_parameters(Composition("NiO"))["run_type"] == "GGA+U"
    assert mp_parameters(Composition("NiO"))["hubbards"] == {"Ni": 6.2, "O": 0.0}
    assert mp_parameters(Composition("NiS"))["run_type"] == "GGA"  # U only where O or F is the anion
    assert mp_parameters(Composition("Li2O"))["run_type"] == "GGA"  # no U element


@pytest.mark.parametrize("formula, correction", [
    ("Ni1O1", U_NI_OXIDE + OXIDE),  # MP's NiO: -4.9681 -> -6.5821 eV/atom (mp-19009)
    ("Li4O4", 4 * PEROXIDE),
    ("Li1O8", 8 * SUPEROXIDE),
    ("Fe1F3", U_FE_FLUORIDE + 3 * FLUORIDE),
    ("Fe1S2", 2 * SULFIDE),
    ("Ba1S1O4", 4 * OXIDE),  # a sulfate: S6+ gets no sulfide correction
    ("Ni3", 0.0),
])
def test_mp2020_energy_adds_mps_corrections(formula, correction):
    assert mp2020_energy(Composition(formula), -10.0) == pytest.approx(-10.0 + correction, abs=1e-9)

