"""Constrained decoding of CIFs: the Wyckoff tables are spglib's orbits, the grammar
allows every token of every real crystal's CIF (whichever representative sites and row
order it is written with), and it masks what cannot be the prompt's formula."""

import warnings
from collections import Counter

import jax
import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

from gnome_loop.generate.generative import PRETRAINED
from gnome_loop.generative import cif_lm
from gnome_loop.generative import cif_tokens as ct
from gnome_loop.generative.checks import check_sample
from gnome_loop.generative.cif_grammar import CifConstraint, wyckoff_positions
from tests.helpers import layered_licoo2, spinel_mgal2o4

NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
WURTZITE = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.2), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
RUTILE = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                   [[0, 0, 0], [0.305, 0.305, 0]])
IDS = ct.token_ids()


def _allowed_texts(constraint: CifConstraint) -> set[str] | None:
    allowed = constraint.allowed()
    return None if allowed is None else {ct.vocabulary()[i].removeprefix("sg:") for i in allowed}


def _feed(text: str) -> CifConstraint:
    constraint = CifConstraint()
    for token in ct.encode(text):
        constraint.push(token)
    return constraint


def _orbit_size(number: int, site: np.ndarray) -> int:
    """Distinct images of `site` under spglib's operations of the group's default setting."""
    rotations, translations = ct.symmetry_operations(number)
    images = (np.einsum("nij,j->ni", rotations, site) + translations) % 1.0
    return len({tuple(np.round(image, 6) % 1.0) for image in images})


@pytest.mark.parametrize("number", [2, 14, 62, 139, 141, 166, 194, 221, 225, 227, 48, 228])
def test_wyckoff_positions_are_spglib_orbits(number):
    """Every position's points expand (spglib's operations of the default setting) to an
    orbit of its multiplicity; 48, 141, 227 and 228 have two origin choices, and the
    tables' second is moved to spglib's first."""
    generic = np.array([0.0713, 0.2939, 0.4168])  # free parameters with no special relation
    for wp in wyckoff_positions(number):
        for index in {0, wp.multiplicity // 2, wp.multiplicity - 1}:
            assert _orbit_size(number, (wp.rotations[index] @ generic + wp.translations[index]) % 1.0) \
                == wp.multiplicity


def _real_crystals(shared_data_dir) -> list[Structure]:
    crystals = [NACL, WURTZITE, RUTILE, spinel_mgal2o4(), layered_licoo2()]
    csv = shared_data_dir / "mp37k" / "mp37k_eform.csv.gz"
    if csv.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystals += [s for s in (Structure.from_str(cif, fmt="cif")
                                     for cif in pd.read_csv(csv, nrows=80)["cif"]) if len(s) <= 20]
    return crystals


def test_the_grammar_allows_every_token_of_real_cifs():
    """No valid CIF is masked: each token of the canonical and of augmented CIFs (random
    representative sites, random row order) of real crystals is among those allowed."""
    from tests.helpers import SHARED_DATA

    rng = np.random.default_rng(0)
    crystals = _real_crystals(SHARED_DATA)
    checked = 0
    for structure in crystals:
        crystal = ct.symmetrise(structure)
        for text in [ct.write_cif(crystal)] + [ct.write_cif(crystal, rng) for _ in range(3)]:
            constraint = CifConstraint()
            for position, token in enumerate(ct.encode(text) + [IDS[ct.EOS]]):
                allowed = constraint.allowed() if position else None
                assert allowed is None or token in allowed, (text, position, ct.vocabulary()[token])
                constraint.push(token)
            checked += 1
    assert checked == 4 * len(crystals) >= 20


def test_the_grammar_masks_what_cannot_be_the_formula():
    constraint = _feed(f"data_Na4Cl4\n{ct.SG_KEY} ")
    groups = _allowed_texts(constraint)
    assert {"Fm-3m", "Pm-3m", "P1", "Pnma"} <= groups and "Fd-3m" not in groups  # Fd-3m's orbits: 8 and more
    constraint = _feed(ct.prompt("Na4Cl4", 225) + "_cell_length_a 5.6400\n")
    head = "\n".join(f"{key} 5.6400" if "length" in key else f"{key} 90.00" for key in ct.CELL_KEYS[1:])
    for text in [head, "\nloop_\n", *(f"{key}\n" for key in ct.SITE_KEYS)]:
        for token in ct.encode(text):
            constraint.push(token)
    assert _allowed_texts(constraint) == {"Na", "Cl"}  # a site row starts; no end of text yet
    for token in ct.encode("Na "):
        constraint.push(token)
    assert _allowed_texts(constraint) == {"Na"}  # the label is the row's element
    for token in ct.encode("Na0 "):
        constraint.push(token)
    assert _allowed_texts(constraint) == {"4"}  # 4a or 4b: 8c and up would not fit four Na
    for token in ct.encode("4 "):
        constraint.push(token)
    assert _allowed_texts(constraint) == {"0", " "} - {" "}  # 4a and 4b: x is 0 or 1/2
    for token in ct.encode("0.0000 0.0000 0.0000\nCl Cl0 4 0.0000 "):
        constraint.push(token)
    assert _allowed_texts(constraint) == {"0"}  # 4a is taken: (0, 1/2, 0) or (0, 0, 1/2)
    for token in ct.encode("0.5"):
        constraint.push(token)
    assert _allowed_texts(constraint) == {"0"}
    for token in ct.encode("000 "):
        constraint.push(token)
    for character in "0.0000":
        assert _allowed_texts(constraint) == {character}
        constraint.push(IDS[character])
    assert _allowed_texts(constraint) == {"\n"}
    constraint.push(IDS["\n"])
    assert _allowed_texts(constraint) == {ct.EOS}  # all eight atoms placed


def test_the_number_follows_the_written_symbol():
    constraint = _feed(f"data_Zn2O2\n{ct.SG_KEY} ")
    constraint.push(IDS["sg:P6_3mc"])
    for expected in ["\n", ct.NUMBER_KEY, " ", "1", "8", "6", "\n"]:
        assert _allowed_texts(constraint) == {expected}
        constraint.push(IDS[expected])
    assert _allowed_texts(constraint) is None  # the cell is the model's


@pytest.mark.skipif(not PRETRAINED["llm"].is_dir(), reason="no shipped language model")
def test_the_shipped_model_writes_the_prompts_formula_when_constrained():
    """Constrained, every sample's sites add up to its prompt and its symbol is its
    number's; more samples pass every check than unconstrained, on the same draws' keys."""
    config, params, _ = cif_lm.load_lm(PRETRAINED["llm"])
    formulas = ["Li2Mn2O4", "Mg1Al2O4", "Ba1Ti1O3", "Na4Cl4", "Zn2O2", "Cu3Au1", "Fe2P1", "Sr2Ti1O4",
                "Ca1F2", "Ga1As1", "Li3P1", "K2Ni1F4", "Mo1S2", "Ti2O4", "Bi2Te3", "Cs1Pb1I3"]
    prompts = [ct.prompt(Composition(f)) for f in formulas]
    valid = {}
    for constrained in (True, False):
        texts = cif_lm.sample(config, params, prompts, jax.random.PRNGKey(0), top_k=10, constrained=constrained)
        outcomes = [check_sample(text, finished, Composition(f)) for (text, finished), f in zip(texts, formulas)]
        valid[constrained] = sum(isinstance(o, Structure) for o in outcomes)
        if constrained:
            for (text, finished), formula in zip(texts, formulas):
                parsed = ct.parse_cif(text)
                written = Counter()
                for symbol, multiplicity, _ in parsed.sites:
                    written[symbol] += multiplicity
                assert finished and Composition(written) == Composition(formula), text
                assert parsed.symbol == ct.space_group_symbols()[parsed.number - 1]
    assert valid[True] >= valid[False] and valid[True] >= 8, valid


def _cell_text(prompt_text: str, a: float) -> str:
    cell = "\n".join(f"{key} {a:.4f}" if "length" in key else f"{key} 90.00" for key in ct.CELL_KEYS)
    return prompt_text + cell + "\nloop_\n" + "".join(f"{key}\n" for key in ct.SITE_KEYS)


def test_a_free_z_leaves_room_for_the_atom_and_keeps_the_written_multiplicity():
    # P1, a 4 Å cube, Na at the origin: Cl must stay 1.34 Å (half their covalent bond) away
    constraint = _feed(_cell_text(ct.prompt("Na1Cl1", 1), 4.0) + "Na Na0 1 0.0000 0.0000 0.0000\nCl Cl0 1 0.0000 0.0000 0.")
    assert _allowed_texts(constraint) == {"3", "4", "5", "6"}  # z·4 Å between 1.34 and 2.66 Å
    # P-1, a 10 Å cube, two Na on (0, 0, ±z): z = 0 or 1/2 would be one atom (multiplicity 1),
    # z below 0.083 puts the two closer than a Na-Na covalent bond's half
    constraint = _feed(_cell_text(ct.prompt("Na2", 2), 10.0) + "Na Na0 2 0.0000 0.0000 0.0")
    assert _allowed_texts(constraint) == {"8", "9"}


def test_a_coordinate_tied_to_two_written_ones_takes_only_its_values():
    # Pm-3m 8g is (x, x, x) and its images: after x = y = 0.1, z is 0.1 or 0.9 (not 0.4 or 0.6)
    constraint = _feed(_cell_text(ct.prompt("Na8", 221), 10.0) + "Na Na0 8 0.1000 0.1000 0.")
    assert _allowed_texts(constraint) == {"1", "9"}


def test_rows_the_grammar_cannot_read_are_left_to_the_model():
    """No formula to hold the sample to (`data_Na`), a row that does not start with an
    element, a malformed coordinate: nothing is masked there, and nothing fails."""
    text = _cell_text(f"data_Na\n{ct.SG_KEY} Pm-3m\n{ct.NUMBER_KEY} 221\n", 10.0) + \
        "5 5 1 0.1000 0.2000 0.3000\nNa Na0 1 0..5 0.0000 0.0000\nNa Na1 1 0.5000 0.5000 0."
    constraint = CifConstraint()
    for token in ct.encode(text):
        constraint.allowed()
        constraint.push(token)
    assert constraint.allowed() is None
