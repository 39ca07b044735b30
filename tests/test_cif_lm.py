"""The CIF language model: it overfits a handful of CIFs and samples them back, its
checkpoints round-trip, and every malformed sample is rejected with its reason."""

import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from gnome_loop.generative import cif_lm
from gnome_loop.generative import cif_tokens as ct
from gnome_loop.generative.checks import Reject, check_sample, check_samples
from gnome_loop.generative.training import make_optimizer

NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
CSCL = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
BATIO3 = Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
                   [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
TINY = cif_lm.LMConfig(max_len=192, width=64, depth=2, heads=4)


@pytest.fixture(scope="module")
def overfit():
    """A tiny model trained 150 steps on three CIFs (loss ≈ 0.02 nats per token)."""
    structures = (NACL, CSCL, BATIO3)
    texts = [ct.canonical_cif(s) for s in structures]
    tokens = cif_lm.token_batch(texts, TINY.max_len)
    params = cif_lm.init_params(TINY)
    optimizer = make_optimizer(3e-3, 150, warmup_steps=15)
    step, opt_state = cif_lm.make_train_step(TINY, optimizer), optimizer.init(params)
    for _ in range(150):
        params, opt_state, loss = step(params, opt_state, tokens, jax.random.PRNGKey(0))
    return params, float(loss), structures, texts


def test_padding_a_batch_to_its_longest_cif_keeps_the_loss(overfit):
    params, _, _, texts = overfit
    texts = texts[:2]  # NaCl and CsCl: shorter than max_len
    full = cif_lm.token_batch(texts, TINY.max_len)
    short = cif_lm.token_batch(texts, TINY.max_len, multiple=32)
    longest = max(len(ct.encode(text)) + 1 for text in texts)
    assert short.shape == (2, -(-longest // 32) * 32) and short.shape[1] < TINY.max_len
    np.testing.assert_array_equal(short, full[:, :short.shape[1]])
    loss = cif_lm.make_eval_loss(TINY)
    np.testing.assert_allclose(loss(params, short), loss(params, full), rtol=1e-5)


def test_tiny_model_overfits_and_samples_the_cifs_back(overfit):
    params, loss, structures, texts = overfit
    assert loss < 0.1
    prompts = [ct.prompt(ct.read_cif(text)[1].formula) for text in texts]
    greedy = cif_lm.sample(TINY, params, prompts, jax.random.PRNGKey(1), top_k=1)
    assert [text for text, _ in greedy] == texts
    checked = check_samples(greedy)
    assert checked.rejected == {} and len(checked.structures) == 3
    for got, want in zip(checked.structures, structures):
        assert StructureMatcher().fit(got, want)
    # drawn at temperature 0.5 from the 3 likeliest tokens, a batch of mixed prompts
    drawn = cif_lm.sample(TINY, params, prompts * 4, jax.random.PRNGKey(1), temperature=0.5, top_k=3)
    checked = check_samples(drawn)
    assert checked.total == 12 and len(checked.structures) >= 9, checked.rejected
    assert sum(text == want for (text, _), want in zip(drawn, texts * 4)) >= 9


def test_prompt_with_a_space_group_steers_the_sample(overfit):
    params, *_ = overfit
    [(text, finished)] = cif_lm.sample(TINY, params, [ct.prompt("Cs1Cl1", space_group=221)], jax.random.PRNGKey(2),
                                       top_k=1)
    structure = check_sample(text, finished, Composition("CsCl"))
    assert isinstance(structure, Structure) and StructureMatcher().fit(structure, CSCL)


def test_saved_model_gives_the_same_logits(overfit, tmp_path):
    params, *_ = overfit
    cif_lm.save_lm(tmp_path / "lm", TINY, params, {"data": "three CIFs"})
    config, loaded, card = cif_lm.load_lm(tmp_path / "lm")
    tokens = cif_lm.token_batch([ct.prompt("Na4Cl4")], TINY.max_len)
    model = cif_lm.CifTransformer(config)
    np.testing.assert_array_equal(model.apply(loaded, tokens), model.apply(params, tokens))
    assert card["data"] == "three CIFs" and not list(tmp_path.glob("**/*.pkl"))
    (tmp_path / "lm" / "model_card.json").write_text('{"architecture": "flow"}')
    with pytest.raises(ValueError, match="not a 'cif-transformer'"):
        cif_lm.load_lm(tmp_path / "lm")
    with pytest.raises(ValueError, match="no generator"):
        cif_lm.load_lm(tmp_path / "missing")


def test_cached_decoding_gives_the_full_forward_pass_logits():
    config = cif_lm.LMConfig(max_len=32, width=16, depth=2, heads=2)
    params = cif_lm.init_params(config, seed=1)
    tokens = cif_lm.token_batch(["data_Na4Cl4\n_cell_length_a 5.6400\n"], config.max_len)
    full = np.asarray(cif_lm.CifTransformer(config).apply(params, tokens))[0]
    model = cif_lm.CifTransformer(config, decode=True)
    cache = model.init(jax.random.PRNGKey(0), np.zeros((1, config.max_len), np.int32))["cache"]
    for position in range(12):
        logits, variables = model.apply({**params, "cache": cache}, tokens[:, position:position + 1], position,
                                        mutable=["cache"])
        cache = variables["cache"]
        np.testing.assert_allclose(logits[0, 0], full[position], atol=1e-5)


def test_a_sample_that_runs_out_of_length_is_truncated(overfit):
    params, *_ = overfit
    [(text, finished)] = cif_lm.sample(TINY, params, [ct.prompt("Na4Cl4")], jax.random.PRNGKey(0), top_k=1,
                                       max_len=64)
    assert not finished and len(ct.encode(text)) == 64
    assert check_sample(text, finished).reason == "truncated"


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_malformed_samples_are_rejected_with_their_reason_and_counted():
    good = ct.canonical_cif(NACL)
    samples = {
        "unparseable": [_replace(good, "_cell_length_b", "_cell_length_q"), "data_Na4Cl4\ngarbage", good[:200]],
        "formula": [_replace(good, "data_Na4Cl4", "data_Na4Cl8")],
        "space-group": [_replace(good, "H-M Fm-3m", "H-M Pm-3m"),  # symbol of another number
                        _replace(good, "Cl Cl0 4", "Cl Cl0 8"),  # multiplicity of no orbit
                        # CsCl written as P1: spglib finds Pm-3m
                        _replace(ct.canonical_cif(CSCL), "H-M Pm-3m\n_symmetry_Int_Tables_number 221",
                                 "H-M P1\n_symmetry_Int_Tables_number 1")],
        "overlapping-atoms": [_replace(good, "Cl Cl0 4 0.0000 0.0000 0.5000", "Cl Cl0 4 0.0000 0.0000 0.0000")],
        "volume": [good.replace("5.6400", "1.2000")],
    }
    for reason, texts in samples.items():
        for text in texts:
            outcome = check_sample(text)
            assert isinstance(outcome, Reject) and outcome.reason == reason, (reason, outcome, text)
    assert check_sample(good, composition=Composition("Na8Cl8")).reason == "formula"
    assert isinstance(check_sample(good, composition=Composition("Na4Cl4")), Structure)
    flat = [(text, True) for texts in samples.values() for text in texts] + [(good, False), (good, True)]
    checked = check_samples(flat)
    assert checked.total == len(flat) and len(checked.structures) == 1
    assert checked.rejected == {"unparseable": 3, "formula": 1, "space-group": 3, "overlapping-atoms": 1,
                                "volume": 1, "truncated": 1}
    assert set(checked.examples) == set(checked.rejected)


def test_the_checks_accept_real_crystals(shared_data):
    """No false rejects: the canonical CIFs of real mp37k crystals all pass (533 of the
    first 600 rows' ≤ 20-atom cells did when this was written)."""
    frame = pd.read_csv(shared_data / "mp37k" / "mp37k_eform.csv.gz", nrows=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [s for s in (Structure.from_str(cif, fmt="cif") for cif in frame["cif"]) if len(s) <= 20]
    checked = check_samples((ct.canonical_cif(s), True) for s in structures)
    assert checked.rejected == {} and len(checked.structures) == len(structures) > 30
