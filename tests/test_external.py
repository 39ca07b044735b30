"""External generators: the command gets an argument list with its placeholders filled
in (shell text stays text), what it writes is imported with its rejects counted, each
way it can fail is a counted failure, a re-run stage re-uses a finished command's
output, and a campaign round carries on past a failing command."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign
from gnome_loop.cli import app
from gnome_loop.config import ConfigError, parse_config
from gnome_loop.generate.external import run_external, substitute
from gnome_loop.stages.generate import generate
from gnome_loop.structures import ChemicalSpace
from tests.helpers import ci_config, quick_config, write_config

SPACE = ChemicalSpace(("Au", "Cu"), 2, 8)
VALUES = {"elements": "Au,Cu", "max_elements": "2", "max_atoms": "8", "budget": "5", "seed": "7", "round": "1"}
#: A generator: records its arguments and how often it ran (beside its folder), then
#: writes two CIFs of the space and one outside it; or fails as its first argument says.
SCRIPT = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    mode, out = sys.argv[1], Path(sys.argv[2])
    runs = out.parent / "runs.txt"
    runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
    (out.parent / "argv.json").write_text(json.dumps(sys.argv[1:]))
    if mode == "fail":
        print("loading weights"); print("CUDA out of memory"); sys.exit(3)
    if mode == "sleep":
        time.sleep(60)
    if mode == "readme":
        (out / "README.txt").write_text("no structures today")
    if mode == "write":
        cell = "data_x\\n_cell_length_a {a}\\n_cell_length_b {a}\\n_cell_length_c {a}\\n_cell_angle_alpha 90\\n" \\
               "_cell_angle_beta 90\\n_cell_angle_gamma 90\\n_symmetry_space_group_name_H-M 'P 1'\\nloop_\\n" \\
               "_atom_site_type_symbol\\n_atom_site_label\\n" \\
               "_atom_site_fract_x\\n_atom_site_fract_y\\n_atom_site_fract_z\\n"
        for name, a, rows in (("cuau3", 3.9, "Cu Cu1 0 0 0\\nAu Au1 0.5 0.5 0\\nAu Au2 0.5 0 0.5\\nAu Au3 0 0.5 0.5"),
                              ("cuau", 3.0, "Cu Cu1 0 0 0\\nAu Au1 0.5 0.5 0.5"),
                              ("nacl", 4.2, "Na Na1 0 0 0\\nCl Cl1 0.5 0.5 0.5")):
            (out / f"{name}.cif").write_text(cell.format(a=a) + rows + "\\n")
''')


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "generator.py"
    path.write_text(SCRIPT)
    return path


def command(script: Path, mode: str, *more: str) -> list[str]:
    return [sys.executable, str(script), mode, "{out}", *more]


def runs(folder: Path) -> int:
    path = folder / "runs.txt"
    return len(path.read_text()) if path.exists() else 0


def test_placeholders_are_substituted_and_shell_text_is_passed_literally(script, tmp_path):
    folder = tmp_path / "generated" / "r001"
    tricky = ["; touch pwned", "$(touch pwned)", "`touch pwned`", "| cat", '{"json": {out}}', "{unknown}"]
    result = run_external("gen", command(script, "write", "{elements}", "{max_atoms}", "{budget}", "{seed}",
                                         "{round}", "{max_elements}", *tricky), 60, folder, VALUES, SPACE)
    assert result.failure is None
    out = str((folder / "gen").resolve())
    assert json.loads((folder / "argv.json").read_text()) == [
        "write", out, "Au,Cu", "8", "5", "7", "1", "2", "; touch pwned", "$(touch pwned)", "`touch pwned`", "| cat",
        '{"json": ' + out + "}", "{unknown}"]
    assert not list(tmp_path.rglob("pwned"))
    assert substitute(["{out}{out}", "{{out}}"], {"out": "x"}) == ["xx", "{x}"]


def test_what_the_command_writes_is_imported_with_its_rejects(script, tmp_path):
    folder = tmp_path / "r001"
    result = run_external("gen", command(script, "write"), 60, folder, VALUES, SPACE)
    assert result.failure is None and result.written == 3
    assert sorted(c.structure.composition.reduced_formula for c in result.candidates) == ["CuAu", "CuAu3"]
    assert {c.generator for c in result.candidates} == {"gen"}
    assert {c.info["source"] for c in result.candidates} == {"gen"}
    assert result.rejected == {"outside-space": 1}
    assert json.loads((folder / "gen.json").read_text())["failure"] is None


@pytest.mark.parametrize("mode, timeout, reason", [
    ("fail", 60, "exit status 3: CUDA out of memory"),
    ("sleep", 1, "timed out after 1 s"),
    ("nothing", 60, "wrote no structures"),
    ("readme", 60, "(1 files without structures)"),
])
def test_each_failure_is_returned_not_raised(script, tmp_path, mode, timeout, reason):
    result = run_external("gen", command(script, mode), timeout, tmp_path, VALUES, SPACE)
    assert reason in result.failure
    assert result.candidates == [] and not result.rejected


def test_a_missing_or_unexecutable_command_is_a_failure(tmp_path):
    missing = run_external("gen", ["no-such-generator-gnome-loop", "{out}"], 60, tmp_path, VALUES, SPACE)
    assert missing.failure == "command not found: no-such-generator-gnome-loop"
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    refused = run_external("gen2", [str(plain)], 60, tmp_path, VALUES, SPACE)
    assert refused.failure == f"command not executable: {plain}"


def test_a_rerun_reuses_a_finished_command_and_reruns_a_cut_off_one(script, tmp_path):
    folder = tmp_path / "r001"
    first = run_external("gen", command(script, "write"), 60, folder, VALUES, SPACE)
    again = run_external("gen", command(script, "write"), 60, folder, VALUES, SPACE)
    assert runs(folder) == 1
    assert [c.id for c in again.candidates] == [c.id for c in first.candidates]
    failed = run_external("bad", command(script, "fail"), 60, folder, VALUES, SPACE)
    assert run_external("bad", command(script, "fail"), 60, folder, VALUES, SPACE) == failed
    assert runs(folder) == 2  # a failed command's outcome is kept too
    # a command cut off by a kill left its folder but no outcome: it runs again in an emptied folder
    (folder / "gen.json").unlink()
    (folder / "gen" / "half-written.cif").write_text("data_x\n_cell_length_a 3")
    rerun = run_external("gen", command(script, "write"), 60, folder, VALUES, SPACE)
    assert runs(folder) == 3 and not (folder / "gen" / "half-written.cif").exists()
    assert [c.id for c in rerun.candidates] == [c.id for c in first.candidates] and rerun.rejected == first.rejected


@pytest.mark.parametrize("external, hint", [
    ({"name": "x", "command": []}, "at least 1 item"),
    ({"name": "x", "command": "mattergen-generate --out {out}"}, "never a shell string"),
    ({"name": "x", "command": {"program": "x"}}, "valid list"),
    ({"name": "x", "command": ["gen", "--out={outdir}"]}, "unknown placeholder(s) {outdir}"),
    ({"name": "x", "command": ["", "{out}"]}, "program is empty"),
    ({"name": "saps", "command": ["gen"]}, "built-in generator"),
    ([{"name": "x", "command": ["a"]}, {"name": "x", "command": ["b"]}], "same name"),
    ({"name": "a b", "command": ["gen"]}, "pattern"),
    ({"name": "x", "command": ["gen"], "timeout_s": 0}, "greater than 0"),
])
def test_bad_external_configs_fail_naming_the_field(external, hint):
    with pytest.raises(ConfigError) as error:
        parse_config(ci_config(generators={"external": external}))
    assert "generators.external" in str(error.value) and hint in str(error.value)


def test_one_mapping_or_a_list_and_numbers_are_arguments():
    one = parse_config(ci_config(generators={"external": {"name": "x", "command": ["gen", "-n", 5]}}))
    assert [(e.name, e.command) for e in one.generators.external] == [("x", ["gen", "-n", "5"])]
    two = parse_config(ci_config(generators={"external": [{"name": "x", "command": ["a"]},
                                                          {"name": "y", "command": ["b"], "max_candidates": 3}]}))
    assert [e.max_candidates for e in two.generators.external] == [100, 3]


def test_a_campaign_round_counts_a_failing_command_and_goes_on(script, tmp_path):
    """Round 1 with a working and a failing command; the generate stage run once more as
    if killed before it committed: nothing runs twice and nothing is inserted twice."""
    external = [{"name": "good", "command": command(script, "write"), "max_candidates": 1},
                {"name": "broken", "command": command(script, "fail")},
                {"name": "absent", "command": ["no-such-generator-gnome-loop"]}]
    other = tmp_path / "other.cif"
    other.write_text(Structure(Lattice.cubic(3.3), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif"))
    config = quick_config(generators={"import": {"paths": [str(other)]}, "external": external})
    directory = tmp_path / "c"
    Campaign.create(parse_config(config), directory).run()
    config["rounds"] = 1
    write_config(directory / "config.yaml", config)
    campaign = Campaign(directory)
    generate(campaign.context, 1)  # the stage's work, never committed: a kill before its transaction
    assert campaign.store.candidates(round_=1) == []
    assert campaign.run().status == "done"
    folder = directory / "generated" / "r001"
    assert runs(folder) == 2  # good and broken ran once each, though the stage ran twice
    round_1 = campaign.round_table()[1]
    assert round_1["generated_by"]["good"] == 1  # max_candidates 1 of its 2 good structures
    assert round_1["samples_by_generator"] == {"good": 3, "broken": 0, "absent": 0}
    assert round_1["rejected_by_generator"]["good"] == {"outside-space": 1}
    assert set(round_1["generator_failures"]) == {"broken", "absent"}
    assert "CUDA out of memory" in round_1["generator_failures"]["broken"]
    assert round_1["generated_by"]["import"] == 1  # the other generators went on
    rows = campaign.store.candidates(round_=1)
    assert len(rows) == len({row["id"] for row in rows}) == sum(round_1["generated_by"].values())
    assert [row["generator"] for row in rows].count("good") == 1
    assert round_1["by_generator"]["good"]["valid"] == 1
    events = [row["msg"] for row in campaign.store.events(limit=200)]
    assert any("broken: exit status 3" in msg for msg in events)
    result = CliRunner().invoke(app, ["status", str(directory)])
    assert result.exit_code == 0
    assert "generator broken failed" in result.output and "command not found" in result.output
