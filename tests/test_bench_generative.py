"""experiments/bench_generative.py: the CSP protocol, CDVAE's validity (structural and
SMACT) and a match only between a valid sample and a valid target; the S.U.N. relaxation cache."""

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
    assert not composition_valid(Composition("Ar1F2"))  # SMACT lists no oxidation states for Ar


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
    none = match([None, shifted], [NACL, NACL])  # a rejected language-model sample is an invalid one
    assert none["match_rate"] == 0.5 and none["valid"] == 0.5


def test_relaxations_are_cached_by_structure_and_survive_a_cut_line(tmp_path, monkeypatch):
    """A second run relaxes only what the first did not; a line cut by a kill is redone."""
    from experiments import bench_generative
    from gnome_loop.oracle.base import OracleResult

    calls = []

    class FakeOracle:
        def __init__(self, *args, **kwargs):
            pass

        def relax(self, structure):
            calls.append(structure.composition.reduced_formula)
            if structure.composition.reduced_formula == "NaCl3":
                raise RuntimeError("blew up")
            shrunk = structure.copy()
            shrunk.scale_lattice(structure.volume * 0.9)
            return OracleResult(ok=True, energy=-3.0 * len(structure), structure=shrunk)

    monkeypatch.setattr(bench_generative, "AseRelaxOracle", FakeOracle)
    cache = tmp_path / "cache.jsonl"
    kcl = NACL.copy()
    kcl.replace_species({"Na": "K"})
    bad = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5],
                                                                  [0, 0.5, 0.5]])
    first = bench_generative.relaxed([NACL, bad], cache)
    assert calls == ["NaCl", "NaCl3"] and first[1] is None
    assert first[0][1] == -24.0 and np.isclose(first[0][0].volume, NACL.volume * 0.9)
    cache.write_text(cache.read_text() + '{"key": "cut by a ki')
    second = bench_generative.relaxed([NACL, bad, kcl], cache)
    assert calls == ["NaCl", "NaCl3", "KCl"]  # only the new one
    assert second[:2] == first and second[2][1] == -24.0
