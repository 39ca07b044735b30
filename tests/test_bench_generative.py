"""The CSP protocol of experiments/bench_generative.py: CDVAE's validity (structural and
SMACT) and a match only between a valid sample and a valid target."""

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from experiments.bench_generative import composition_valid, match

NACL = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                 [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0],
                  [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])


def test_smact_validity_of_compositions():
    assert composition_valid(Composition("Na4Cl4"))  # Na+ Cl-
    assert composition_valid(Composition("C24"))  # one element
    assert composition_valid(Composition("Cu3Au"))  # metals only: an alloy
    assert composition_valid(Composition("BaTiO3"))
    assert not composition_valid(Composition("NaCl2"))  # no charges balance 1:2
    assert not composition_valid(Composition("Na2O2Cl"))  # no SMACT charges balance 2:2:1


def test_a_match_needs_a_valid_sample_and_a_valid_target():
    shifted = NACL.copy()
    shifted.translate_sites(range(len(shifted)), [0.1, 0.2, 0.3])
    result = match([shifted], [NACL])
    assert result["match_rate"] == result["match_rate_fit"] == 1.0 and result["rmse"] < 1e-6
    overlapping = NACL.copy()
    overlapping.replace(1, "Na", [0.02, 0.0, 0.0])  # 0.11 Å from the first Na
    assert match([overlapping], [NACL])["match_rate"] == 0.0 and match([overlapping], [NACL])["valid"] == 0.0
    wrong = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])
    assert match([wrong], [wrong])["match_rate"] == 0.0  # an invalid target never matches
    assert np.isnan(match([wrong], [wrong])["rmse"])
