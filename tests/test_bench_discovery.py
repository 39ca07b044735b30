"""experiments/bench_discovery.py and bench_generator_transfer.py: every generative arm
names its fine-tuning in full (a changed default cannot pool two protocols under one
name), the comparison against frozen pools rounds and seeds, and the transfer split
never puts one formula on both sides."""

import sys
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

from gnome_loop.config import parse_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # as `python experiments/x.py` runs

from bench_discovery import (GENERATIVE_ARMS, all_ehulls, campaign_config, generative_summary,  # noqa: E402
                             same_protocol)
from bench_generator_transfer import split_targets  # noqa: E402


@pytest.mark.parametrize("arm", sorted(GENERATIVE_ARMS))
def test_each_generative_arm_states_its_finetuning(arm, tmp_path):
    snapshot, parents = tmp_path / "snapshot.json.gz", tmp_path / "parents.csv"
    snapshot.write_text("[]")
    parents.write_text("material_id,cif\n")
    kind, _, settings = GENERATIVE_ARMS[arm]
    config = parse_config(campaign_config(arm, snapshot, parents, quick=True, seed=0))
    section = getattr(config.generators, kind)
    assert section.enabled and section.finetune_steps == settings["finetune_steps"]
    assert (section.finetune_steps == 0) == arm.endswith("frozen")
    for key, value in settings.items():
        assert getattr(section, key) == value
    assert config.model.kind == ("gnome" if settings.get("finetune_own_samples") else "linear")  # the reward's filter


def test_the_comparison_with_frozen_pools_rounds_and_seeds():
    def run(seed, rounds):
        return {"seed": seed, "rounds": [{"by_generator": {}} for _ in rounds], "generated_ehull_mp": rounds}

    lower = {0: run(0, [[0.0, 0.01], [0.02]]), 1: run(1, [[0.03], [0.01, 0.0]])}
    higher = {0: run(0, [[0.3, 0.4], [0.5]]), 1: run(1, [[0.6], [0.35, 0.45]])}
    assert all_ehulls(lower.values()) == [0.0, 0.01, 0.02, 0.03, 0.01, 0.0]
    out = generative_summary({"flow-finetuned": lower, "flow-frozen": higher})
    assert out["ehull_mp_p_vs_frozen_finetuned"] < 0.01  # six below six (ties: the asymptotic p, 0.005)
    assert out["near_hull_p_vs_frozen_finetuned"] < 0.01  # 6 of 6 within 0.1 eV/atom against 0 of 6: p = 2/924
    assert out["ehull_mp_generated_finetuned"] == [0.01, 0.01]
    assert "ehull_mp_p_vs_frozen_frozen" not in out  # a frozen arm is not compared with itself
    assert out["ehull_mp_p_vs_frozen_llm_finetuned"] is None  # the language model's arms have not run


def test_stored_runs_of_another_protocol_are_not_pooled():
    def run(steps, learning_rate=None):
        rate = {} if learning_rate is None else {"learning_rate": learning_rate}
        return {"seed": 0, "generated_ehull_mp": [[0.1]],
                "rounds": [{"generator_training": {"flow": {"steps": s, **rate}}} for s in steps]}

    assert same_protocol("flow-finetuned", run([20, 20, 0]))  # a round with nothing to learn trains 0 steps
    assert not same_protocol("flow-finetuned", run([300, 300, 300]))  # the long arm's protocol
    assert same_protocol("flow-frozen", run([0, 0, 0])) and not same_protocol("flow-frozen", run([20, 20, 20]))
    assert same_protocol("flow-finetuned", run([20, 20], 1e-4))  # records before the rate was written: steps only
    assert not same_protocol("flow-finetuned", run([20, 20], 1e-3))
    own = run([300, 300])
    own["rounds"][1]["generator_training"]["flow"]["own_samples"] = 32
    assert same_protocol("flow-finetuned-own", own) and not same_protocol("flow-finetuned-long", own)
    filtered_picks = run([20, 20, 20])
    del filtered_picks["generated_ehull_mp"]  # before the arms picked at random
    assert not same_protocol("flow-finetuned", filtered_picks)


def test_the_transfer_split_keeps_every_polymorph_of_a_formula_on_one_side():
    def entry(species, a):
        coords = [[0.11 * i, 0.17 * i ** 2 % 1, 0.29 * i ** 3 % 1] for i in range(len(species))]
        return ComputedStructureEntry(Structure(Lattice.cubic(a), species, coords), -1.0)

    formulas = (["Li", "Ni", "O", "O"], ["Li", "Li", "Ni", "O", "O", "O"], ["Li", "Co", "O", "O"],
                ["Co", "Ni", "O", "O"])  # four formulas; each twice, two polymorphs
    entries = [entry(species, a) for species in formulas for a in (4.0, 4.4)]
    found, unseen = split_targets(entries, max_atoms=20, seed=0)
    assert len(found) == len(unseen) == 4
    assert not {s.composition.reduced_formula for s in found} & {s.composition.reduced_formula for s in unseen}
    small = split_targets(entries, max_atoms=5, seed=0)
    assert sorted(len(s) for side in small for s in side) == [4] * 6  # the 6-atom cells are beyond the flow
