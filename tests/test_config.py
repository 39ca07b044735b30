"""Config validation: bad configs fail at init naming the field."""

from pathlib import Path

import pytest
import yaml

from gnome_loop.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return yaml.safe_load((ROOT / "experiments/ci_emt/config.yaml").read_text())


@pytest.mark.parametrize("name", ["ci_emt", "quickstart", "vasp_slurm"])
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "experiments" / name / "config.yaml")
    assert config.rounds == 3
    assert len(config.chemical_space.elements) >= 3


@pytest.mark.parametrize(
    "change, field, hint",
    [
        (lambda c: c["chemical_space"].update(elements=["Cu", "Xx"]), "chemical_space.elements", "Xx"),
        (lambda c: c["selection"].update(budget=-3), "selection.budget", "greater than or equal to 1"),
        (lambda c: c.pop("chemical_space"), "chemical_space", "required"),
        (lambda c: c["oracle"].update(kind="gaussian"), "oracle.kind", "gaussian"),
        (lambda c: c["oracle"].update(calculator="lj"), "oracle.calculator", "emt"),
        (lambda c: c["scheduler"].update(kind="pbs"), "scheduler.kind", "pbs"),
        (lambda c: c["selection"].update(budgett=3), "selection.budgett", "not a known setting"),
        (lambda c: c["selection"].update(kappa=-1), "selection.kappa", "greater than or equal to 0"),
        (lambda c: c["snapshot"].update(source="file"), "snapshot", "path"),
        (lambda c: c["generators"].update(saps={"supercell": [2, 1]}), "generators.saps.supercell", "three"),
        (lambda c: c["model"].update(volume_augmentation=[3.0]), "model.volume_augmentation", "0.5 and 2.0"),
        (lambda c: c["oracle"].update(kind="vasp", vasp={"command": "vasp_std\nrm -rf ~"}), "oracle.vasp.command",
         "one line"),
        (lambda c: c["scheduler"].update(kind="slurm", slurm={"directives": ["qos=low"]}), "scheduler.slurm.directives",
         "long options"),
        (lambda c: c["scheduler"].update(kind="slurm", slurm={"directives": ["--qos=low\n#SBATCH --x"]}),
         "scheduler.slurm.directives", "one line"),
        (lambda c: c["scheduler"].update(kind="slurm", slurm={"partition": "a\nb"}), "scheduler.slurm.partition",
         "one line"),
        (lambda c: c.update(prerelax="mace"), "prerelax.kind", "mace"),
        (lambda c: c.update(prerelax={"kind": "nequip", "members": 1}), "prerelax.members", "greater than or equal to 2"),
        (lambda c: c.update(prerelax={"kind": "nequip", "irreps": "8x0e + 4x3o"}), "prerelax.irreps", "l ≤ 2"),
        (lambda c: c.update(prerelax="nequip"), "(top level)", "model.kind: gnome"),
        (lambda c: c["oracle"].update(calculator_args={"path": "x"}), "oracle", "imported calculator"),
    ],
)
def test_invalid_config_names_the_field(change, field, hint):
    config = _base()
    change(config)
    with pytest.raises(ConfigError) as error:
        parse_config(config)
    assert field in str(error.value)
    assert hint in str(error.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("chemical_space: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_digest_tracks_content():
    a = parse_config(_base())
    changed = _base()
    changed["seed"] = 7
    assert a.digest() == parse_config(_base()).digest()
    assert a.digest() != parse_config(changed).digest()


def test_fill_budget_is_on_by_default_and_new_defaults_keep_old_campaigns_resumable():
    config = parse_config(_base())
    assert config.selection.fill_budget is True and config.selection.kappa == 0.0
    spelled_out = _base()
    spelled_out["selection"].update(fill_budget=True, kappa=0.0)
    assert parse_config(spelled_out).digest() == config.digest()  # a campaign made before these keys resumes
    spelled_out["selection"]["fill_budget"] = False
    assert parse_config(spelled_out).digest() != config.digest()


def test_dropping_missing_terminals_may_be_decided_after_init():
    # a campaign that stopped for want of a terminal is answered by this setting: it is not frozen
    changed = _base()
    changed["chemical_space"]["drop_missing_terminals"] = True
    assert parse_config(changed).digest() == parse_config(_base()).digest()
    assert parse_config(changed).chemical_space.drop_missing_terminals is True
