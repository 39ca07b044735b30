"""Every element gets a terminal or the campaign says so (issue 21): elemental
structures covering for each other, exit 2 naming the element, dropping it on
request, energy-only terminals, unjudged entries shown, and exports that load into
pymatgen's PhaseDiagram with the exported E_hull values."""

import json
from pathlib import Path

import pytest
import yaml
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.entries.computed_entries import ComputedStructureEntry
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign
from gnome_loop.cli import EXIT_BAD_INPUT, app
from gnome_loop.config import parse_config
from gnome_loop.report import write_report
from gnome_loop.store import entry_row

from tests.helpers import ci_config, write_config

runner = CliRunner()


def small_config(elements: list[str], calculator: str, calculator_args: dict, **sections) -> dict:
    """Round 0 of the CI EMT config on a small space, with cheap relaxations and one
    attempt per job; `sections` update it further."""
    config = ci_config(rounds=0, chemical_space={"elements": elements, "max_elements": 2, "max_atoms": 4},
                       oracle={"calculator": calculator, "calculator_args": calculator_args, "max_steps": 40,
                               "fmax": 0.1, "max_attempts": 1})
    for key, value in sections.items():
        config[key].update(value)
    return config


def assert_export_loads_into_phase_diagram(directory: Path) -> list:
    """`export` succeeds, entries.json.gz loads into PhaseDiagram, and pymatgen gives every
    exported entry the E_hull the campaign exported with it (1e-6 eV/atom)."""
    result = runner.invoke(app, ["export", str(directory), "--format", "json"])
    assert result.exit_code == 0, result.output
    entries = loadfn(directory / "exports" / "entries.json.gz")
    diagram = PhaseDiagram(entries)
    for entry in entries:
        assert entry.data["e_above_hull"] is not None, entry.entry_id
        assert diagram.get_e_above_hull(entry) == pytest.approx(entry.data["e_above_hull"], abs=1e-6)
    return entries


def test_a_failed_reference_structure_is_covered_by_another(tmp_path):
    # every one-atom Au cell fails: ASE's fcc reference; the hcp template (2 atoms) stands in
    config = small_config(["Au", "Cu"], "tests.fake_calculators:RefusingEMT", {"element": "Au", "max_atoms": 1})
    outcome = Campaign.create(parse_config(config), tmp_path / "c").run()
    assert outcome.status == "done"
    campaign = Campaign(tmp_path / "c")
    failed = {job.candidate_id: job.error for job in campaign.store.jobs(states=["failed"])}
    assert failed == {"ref-Au": "RuntimeError: 1-atom Au cell refused (on purpose)"}
    entries = {e["id"]: e for e in campaign.store.entries(with_structure=False)}
    assert entries["e-ref-Au-hcp"]["e_hull"] == pytest.approx(0.0, abs=1e-9)  # Au's terminal
    assert all(e["e_hull"] is not None for e in entries.values())
    assert campaign.round_table()[0]["unjudged"] == 0
    exported = assert_export_loads_into_phase_diagram(tmp_path / "c")
    assert {e.entry_id for e in exported} == set(entries)


def test_no_terminal_stops_round_0_with_exit_2_until_the_element_is_dropped(tmp_path):
    directory = tmp_path / "c"
    config = small_config(["Au", "Cu"], "tests.fake_calculators:RefusingEMT", {"element": "Au"})
    assert runner.invoke(app, ["init", str(write_config(tmp_path / "c.yaml", config)), "-d", str(directory)]).exit_code == 0
    for _ in range(2):  # stopping is not a state the campaign leaves by running again
        result = runner.invoke(app, ["run", str(directory)])
        assert result.exit_code == EXIT_BAD_INPUT, result.output
        message = " ".join(result.output.split())
        assert "without a terminal (an elemental entry) for Au" in message
        assert "all 2 of its structures failed" in message and "Au cell refused" in message
        assert "drop_missing_terminals: true" in message and "snapshot" in message
        assert Campaign(directory).store.current_round() == (0, "hull")
    result = runner.invoke(app, ["export", str(directory)])
    assert result.exit_code == EXIT_BAD_INPUT and "no terminal (elemental entry) for Au" in result.output

    # the user answers: the setting may change after init (it is not part of the frozen hash)
    settings = yaml.safe_load((directory / "config.yaml").read_text())
    settings["chemical_space"]["drop_missing_terminals"] = True
    (directory / "config.yaml").write_text(yaml.safe_dump(settings))
    result = runner.invoke(app, ["run", str(directory)])
    assert result.exit_code == 0, result.output
    campaign = Campaign(directory)
    assert list(campaign.context.space().elements) == ["Cu"]  # later rounds generate no Au compound
    unjudged = [e for e in campaign.store.entries(with_structure=False) if e["e_hull"] is None]
    assert unjudged and all("Au" in e["composition"] and "Cu" in e["composition"] for e in unjudged)
    row = campaign.round_table()[0]
    assert row["unjudged"] == len(unjudged)
    assert row["unjudged_reasons"] == {"no elemental reference for Au": len(unjudged)}

    status = runner.invoke(app, ["status", str(directory)])
    assert status.exit_code == 0, status.output
    assert "unj" in status.output
    assert f"round 0: {len(unjudged)} entries without an E_hull: no elemental reference for Au" in status.output

    report = write_report(campaign, tmp_path / "report")[-1].read_text()
    assert f"- round 0: {len(unjudged)} (no elemental reference for Au: {len(unjudged)})" in report

    entries = assert_export_loads_into_phase_diagram(directory)
    assert {el.symbol for e in entries for el in e.composition.elements} == {"Cu"}
    assert json.loads((directory / "exports" / "provenance.json").read_text())["dropped_elements"] == ["Au"]


def test_an_energy_only_reference_is_a_terminal_and_is_exported(tmp_path):
    config = small_config(["Au", "Cu"], "tests.fake_calculators:RefusingEMT", {"element": "Au"})
    campaign = Campaign.create(parse_config(config), tmp_path / "c")
    scale = campaign.config.oracle.scale()
    with campaign.store.transaction():  # as a snapshot's energy-only entry (MP's stable phases, issue 23)
        campaign.store.add_entry(entry_row("e-mp-Au", "snapshot", 0, None, None, "Au4", -0.2, scale, True))
    assert campaign.run().status == "done"
    entries = assert_export_loads_into_phase_diagram(tmp_path / "c")
    by_id = {e.entry_id: e for e in entries}
    assert type(by_id["e-mp-Au"]).__name__ == "ComputedEntry"  # no structure, still exported
    assert by_id["e-mp-Au"].data["e_above_hull"] == pytest.approx(0.0, abs=1e-9)
    assert sum(isinstance(e, ComputedStructureEntry) for e in entries) == len(entries) - 1


def test_quickstart_like_campaign_keeps_sulfur_and_exports_a_loadable_hull(tmp_path):
    # the quickstart's failure, cheaply: a CHGNet stand-in on Fe-S-Cl fails sulfur's one-atom cells
    config = small_config(["Cl", "Fe", "S"], "tests.fake_calculators:PairPotential",
                          {"element": "S", "max_atoms": 1}, chemical_space={"max_atoms": 6})
    assert Campaign.create(parse_config(config), tmp_path / "c").run().status == "done"
    campaign = Campaign(tmp_path / "c")
    failed = {job.candidate_id for job in campaign.store.jobs(states=["failed"])}
    assert {"ref-S", "ref-S-sc"} <= failed
    entries = {e["id"]: e for e in campaign.store.entries(with_structure=False)}
    terminals = [e for e in entries.values() if e["reduced_formula"] == "S"]
    assert terminals and min(e["e_hull"] for e in terminals) == pytest.approx(0.0, abs=1e-9)
    assert entries["e-proto-AB2_oP6_58_a_g-FeS2"]["e_hull"] is not None  # judged, unlike in the quickstart
    assert campaign.round_table()[0]["unjudged"] == 0
    exported = assert_export_loads_into_phase_diagram(tmp_path / "c")
    assert {e.entry_id for e in exported} == set(entries)


def test_a_space_without_any_terminal_cannot_be_dropped_to_nothing(tmp_path):
    config = small_config(["Au"], "tests.fake_calculators:RefusingEMT", {"element": "Au"},
                          chemical_space={"drop_missing_terminals": True})
    with pytest.raises(ValueError, match="without a terminal .* for Au") as error:
        Campaign.create(parse_config(config), tmp_path / "c").run()
    assert "drop_missing_terminals" not in str(error.value)  # nothing would be left to go on with
