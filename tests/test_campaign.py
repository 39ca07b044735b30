"""The campaign end to end on the EMT space: rounds, status, export, manual jobs,
locking, failing jobs and bad configs."""

import csv
import json
import random
import sqlite3
import zipfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from monty.serialization import loadfn
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from typer.testing import CliRunner

from gnome_loop.campaign import Campaign, stages_of
from gnome_loop.cli import EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_WAITING, app
from gnome_loop.config import load_config, parse_config
from gnome_loop.export import STABLE_CSV_COLUMNS
from gnome_loop.oracle.jobfolder import run_job
from gnome_loop.store import SCHEMA_VERSION, SCREENING_SCHEMA_V6, Store, campaign_lock
from tests.helpers import CI_CONFIG, TABLES_V6, ci_config, run_with_kills, write_config

runner = CliRunner()


def hull_of(directory: Path) -> dict[str, float]:
    campaign = Campaign(directory)
    return {e["id"]: e["e_hull"] for e in campaign.store.entries(with_structure=False)}


def test_emt_campaign_completes_all_rounds(emt_campaign):
    campaign = Campaign(emt_campaign)
    table = campaign.round_table()
    assert [row["round"] for row in table] == [0, 1, 2, 3]
    assert all(row["stage"] == "done" for row in table)
    for row in table[1:]:
        assert row["generated"] > 0 and row["unique"] > 0
        assert row["evaluated"] + row["failed"] == row["selected"] > 0
        assert 0.0 <= row["hit_rate"] <= 1.0
        assert row["filter_mae"] is not None
    # every element of the space has a relaxed reference on the hull
    refs = [e for e in campaign.store.entries(with_structure=False) if e["is_reference"]]
    assert {e["reduced_formula"] for e in refs} >= set(campaign.config.chemical_space.elements)
    assert all(row["unjudged"] == 0 for row in table)
    # the discoveries of the rounds are on the hull too
    assert sum(row["stable"] for row in table[1:]) > 0
    # exactly one job per selected candidate, every job finished, every success stored once
    selected = {c["id"] for c in campaign.store.candidates(selected=True)}
    jobs = campaign.store.jobs()
    assert sorted(j.candidate_id for j in jobs) == sorted(selected)
    assert {j.state for j in jobs} <= {"done", "failed"}
    entries = campaign.store.entries(with_structure=False)
    assert sorted(e["candidate_id"] for e in entries) == sorted(j.candidate_id for j in jobs if j.state == "done")
    # relaxation trajectories are kept
    row = campaign.store.query("SELECT trajectory FROM entries WHERE round = 1 LIMIT 1")[0]
    trajectory = json.loads(row["trajectory"])
    assert len(trajectory["energies"]) == len(trajectory["forces"]) >= 1


def test_status_and_export(emt_campaign):
    result = runner.invoke(app, ["status", str(emt_campaign)])
    assert result.exit_code == 0, result.output
    assert "hit%" in result.output and "unj" in result.output and "jobs: done" in result.output
    assert "entries without an E_hull:" not in result.output  # every element has its terminal
    result = runner.invoke(app, ["status", str(emt_campaign), "--json"])
    assert json.loads(result.output)["rounds"][3]["stage"] == "done"

    result = runner.invoke(app, ["export", str(emt_campaign)])
    assert result.exit_code == 0, result.output
    exports = emt_campaign / "exports"
    with open(exports / "stable_materials_hull.csv") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == STABLE_CSV_COLUMNS
        rows = list(reader)
    hull = hull_of(emt_campaign)
    stable = {key for key, e in hull.items() if e is not None and e <= 5e-5}
    assert {row["MaterialId"] for row in rows} == stable
    assert any(row["Generator"] == "substitution" for row in rows)
    # the entries file loads back into a PhaseDiagram with the same hull, every entry with its E_hull
    entries = loadfn(exports / "entries.json.gz")
    assert {entry.entry_id for entry in entries} == set(hull)
    diagram = PhaseDiagram(entries)
    for entry in entries:
        assert diagram.get_e_above_hull(entry) == pytest.approx(hull[entry.entry_id], abs=1e-9)
        assert diagram.get_e_above_hull(entry) == pytest.approx(entry.data["e_above_hull"], abs=1e-6)
    # every CIF of the zip parses to the stored structure of its entry
    by_id = {entry.entry_id: entry for entry in entries}
    exact = StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3, primitive_cell=False, scale=False)
    with zipfile.ZipFile(exports / "by_id.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"{key}.cif" for key in stable)
        for name in archive.namelist():
            parsed = Structure.from_str(archive.read(name).decode(), fmt="cif")
            stored = by_id[name[:-len(".cif")]].structure
            assert parsed.composition == stored.composition
            assert np.allclose(parsed.lattice.parameters, stored.lattice.parameters, atol=1e-5)  # CIF re-orients
            assert exact.fit(parsed, stored)  # the same sites, maybe in another order
    # the summary adds symmetry, volume and parents; the extxyz holds the energies; all carry provenance
    with open(exports / "stable_materials_summary.csv") as handle:
        summary = {row["MaterialId"]: row for row in csv.DictReader(handle)}
    assert set(summary) == stable
    assert all(row["Space Group Number"].isdigit() and float(row["Volume"]) > 0 for row in summary.values())
    assert any(row["Parents"] for row in summary.values() if row["Generator"] == "substitution")
    frames = ase.io.read(exports / "stable_materials.extxyz", ":")
    assert {frame.info["entry_id"] for frame in frames} == stable
    for frame in frames:
        assert frame.get_potential_energy() == pytest.approx(by_id[frame.info["entry_id"]].energy)
    provenance = json.loads((exports / "provenance.json").read_text())
    config_hash = Campaign(emt_campaign).store.meta("config_hash")
    assert provenance["config_hash"] == config_hash and provenance["oracle"] == "emt"
    assert provenance["snapshot_version"] and provenance["energy_scale"] == "emt"
    assert all(entry.data["config_hash"] == config_hash for entry in entries)


def test_bad_export_format(emt_campaign):
    result = runner.invoke(app, ["export", str(emt_campaign), "--format", "pdf"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "unknown export format" in result.output


def test_invalid_configs_fail_at_init(tmp_path):
    cases = [
        (ci_config(chemical_space={"elements": ["Cu", "Qq"]}), "chemical_space.elements"),
        (ci_config(selection={"budget": -1}), "selection.budget"),
        (ci_config(oracle={"kind": "orca"}), "oracle.kind"),
    ]
    missing = ci_config()
    del missing["chemical_space"]
    cases.append((missing, "chemical_space"))
    for index, (data, field) in enumerate(cases):
        target = tmp_path / f"c{index}"
        result = runner.invoke(app, ["init", str(write_config(tmp_path / f"{index}.yaml", data)), "-d", str(target)])
        assert result.exit_code == EXIT_BAD_INPUT
        assert field in result.output
        assert not target.exists()


def test_init_refuses_an_existing_campaign(emt_campaign):
    result = runner.invoke(app, ["init", str(CI_CONFIG), "-d", str(emt_campaign)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "already holds a campaign" in result.output


def test_locked_campaign_is_refused_and_unchanged(tmp_path):
    directory = tmp_path / "campaign"
    Campaign.create(parse_config(ci_config(rounds=1)), directory)
    with campaign_lock(directory):
        result = runner.invoke(app, ["run", str(directory)])
    assert result.exit_code == EXIT_LOCKED
    assert "in use by pid" in result.output
    campaign = Campaign(directory)
    assert campaign.store.current_round() == (0, "snapshot")
    assert campaign.store.candidates() == [] and campaign.store.jobs() == []
    assert list((directory / "jobs").iterdir()) == []


def test_manual_scheduler_waits_and_ingests_what_finished(tmp_path):
    directory = tmp_path / "campaign"
    config = ci_config(rounds=1, scheduler={"kind": "manual"}, selection={"budget": 4})
    init = runner.invoke(app, ["init", str(write_config(tmp_path / "c.yaml", config)), "-d", str(directory)])
    assert init.exit_code == 0, init.output

    result = runner.invoke(app, ["run", str(directory)])
    assert result.exit_code == EXIT_WAITING
    assert "waiting for" in result.output
    manifest = json.loads((directory / "jobs" / "manifest.json").read_text())
    folders = sorted(Path(item["jobdir"]) for item in manifest)
    campaign = Campaign(directory)
    assert len(folders) == len(campaign.store.jobs()) > 2

    half = folders[: len(folders) // 2]
    for folder in half:
        assert runner.invoke(app, ["run-job", str(folder)]).exit_code == 0
    result = runner.invoke(app, ["resume", str(directory)])
    assert result.exit_code == EXIT_WAITING
    assert f"waiting for {len(folders) - len(half)} jobs" in result.output
    done = {Path(directory / j.workdir).resolve() for j in campaign.store.jobs(states=["done"])}
    assert done == {f.resolve() for f in half}
    remaining = json.loads((directory / "jobs" / "manifest.json").read_text())
    assert sorted(Path(item["jobdir"]) for item in remaining) == folders[len(half):]

    for folder in folders[len(half):]:
        run_job(folder)
    result = runner.invoke(app, ["resume", str(directory)])
    assert result.exit_code == EXIT_WAITING  # round 0 is done; round 1's jobs are out now
    assert campaign.store.current_round() == (1, "wait")
    for job in campaign.store.jobs(round_=1):
        run_job(directory / job.workdir)
    result = runner.invoke(app, ["resume", str(directory)])
    assert result.exit_code == 0, result.output
    assert campaign.store.current_round() == (1, "done")
    assert campaign.store.job_counts() == {"done": len(campaign.store.jobs())}


def test_failing_jobs_are_retried_then_recorded(tmp_path):
    directory = tmp_path / "campaign"
    config = ci_config(rounds=1, oracle={"calculator": "tests.fake_calculators:FlakyEMT", "max_attempts": 2})
    outcome = Campaign.create(parse_config(config), directory).run()
    assert outcome.status == "done"
    campaign = Campaign(directory)
    failed = campaign.store.jobs(states=["failed"])
    assert failed and all(job.attempts == 2 for job in failed)
    reasons = {job.error.split(":")[0] for job in failed}
    assert {"RuntimeError", "non-finite energy", "exploded cell"} <= reasons
    for job in failed:  # the first attempt's result is kept beside the job
        assert (directory / job.workdir / "attempt1" / "result.json").exists()
    done = campaign.store.jobs(states=["done"])
    assert done and all(job.attempts == 1 for job in done)
    table = campaign.round_table()
    assert table[-1]["stage"] == "done"
    assert sum(row["failed"] for row in table) == len(failed)
    events = [row["msg"] for row in campaign.store.events(limit=500)]
    assert any("will retry" in msg for msg in events)


def stage_position(round_stage: tuple[int, str] | None) -> int:
    """Where (round, stage) lies in the campaign's run order; stage `done` ends its round."""
    if round_stage is None:
        return -1
    round_, stage = round_stage
    order = list(stages_of(round_)) + ["done"]
    return 100 * round_ + order.index(stage)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_matches_uninterrupted(tmp_path, emt_campaign):
    directory = tmp_path / "campaign"
    Campaign.create(load_config(CI_CONFIG), directory)
    rng = random.Random(7)
    # each run is killed soon after the campaign reaches its target stage, so kills land in every
    # slow stage of every round, whatever the speed of the machine
    targets = [(0, "submit"), (0, "train"), (1, "generate"), (1, "select"), (1, "submit"), (1, "train"),
               (2, "generate"), (2, "submit"), (2, "hull"), (3, "generate"), (3, "submit"), (3, "metrics")]

    def kill_at(run: int, current: tuple[int, str] | None) -> bool:
        return run < len(targets) and stage_position(current) >= stage_position(targets[run])

    interrupted_stages = run_with_kills(directory, kill_at, lambda: rng.uniform(0.0, 0.5))  # inside the stage
    assert len(interrupted_stages) >= 8, interrupted_stages
    assert {"generate", "submit"} <= {stage for _, stage in interrupted_stages}, interrupted_stages

    resumed, reference = Campaign(directory), Campaign(emt_campaign)
    selected = {c["id"] for c in resumed.store.candidates(selected=True)}
    assert selected == {c["id"] for c in reference.store.candidates(selected=True)}
    jobs = resumed.store.jobs()
    assert sorted(j.candidate_id for j in jobs) == sorted(selected)  # one job per selected candidate
    assert {j.state for j in jobs} == {"done"}
    assert [j.attempts for j in jobs] == [1] * len(jobs)  # a killed run is re-run, never counted twice
    assert hull_of(directory) == pytest.approx(hull_of(emt_campaign), abs=1e-9)


def test_more_rounds_after_the_end_and_frozen_settings(tmp_path):
    directory = tmp_path / "campaign"
    config = ci_config(rounds=1, selection={"budget": 3})
    assert Campaign.create(parse_config(config), directory).run().status == "done"
    # extending the campaign: only `rounds` (and `scheduler`) may change after init
    config["rounds"] = 2
    write_config(directory / "config.yaml", config)
    campaign = Campaign(directory)
    assert campaign.run().status == "done"
    assert [row["stage"] for row in campaign.round_table()] == ["done"] * 3
    assert campaign.round_table()[2]["evaluated"] > 0
    config["selection"]["ehull_threshold"] = 0.2
    write_config(directory / "config.yaml", config)
    result = runner.invoke(app, ["run", str(directory)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "changed after init" in result.output


def test_every_generator_feeds_the_campaign_and_status_counts_them(tmp_path):
    """SAPS, substitution, random search and an import (with a broken file) in one round."""
    from pymatgen.core import Lattice, Structure

    archive = tmp_path / "generated.zip"
    good = Structure(Lattice.cubic(3.7), ["Cu", "Au", "Au", "Au"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    import zipfile
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("good.cif", good.to(fmt="cif"))
        handle.writestr("truncated.cif", good.to(fmt="cif")[:200])
        handle.writestr("foreign.cif", Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])
                        .to(fmt="cif"))
    data = ci_config(rounds=1, generators={
        "substitution": {"max_candidates": 20},
        "saps": {"max_candidates": 20},
        "random": {"enabled": True, "compositions": ["CuAu", "AgPd3"], "per_composition": 2, "time_limit": 20},
        "import": {"paths": [str(archive)]}})
    directory = tmp_path / "c"
    campaign = Campaign.create(parse_config(data), directory)
    campaign.run()
    first = campaign.round_table()[1]
    assert set(first["generated_by"]) == {"substitution", "saps", "random", "import"}
    assert first["generated_by"]["random"] == 4
    assert first["generated_by"]["import"] == 1  # the good CIF; the broken ones were counted, not generated
    assert first["rejected_by_generator"]["import"] == {"unparseable": 1, "outside-space": 1}
    evaluated = sum(v["evaluated"] for v in first["by_generator"].values())
    assert evaluated == first["evaluated"] > 0
    generators = {row["generator"] for row in campaign.store.candidates(round_=1)}
    assert generators == {"substitution", "saps", "random", "import"}
    result = CliRunner().invoke(app, ["status", str(directory)])
    assert result.exit_code == 0 and "by generator" in result.output and "saps" in result.output


def test_imports_share_one_budget_and_count_each_files_rejects_once(tmp_path):
    import zipfile

    from pymatgen.core import Lattice, Structure

    paths = []
    for index, a in enumerate((3.6, 3.8)):
        path = tmp_path / f"gen{index}.zip"
        with zipfile.ZipFile(path, "w") as handle:
            for k, b in enumerate((a, a + 0.05, a + 0.1)):
                handle.writestr(f"ok{k}.cif", Structure(Lattice.cubic(b), ["Cu", "Au", "Au", "Au"],
                                [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]).to(fmt="cif"))
            handle.writestr("broken.cif", "data_x\n_cell_length_a 3")
        paths.append(str(path))
    data = ci_config(rounds=2, generators={"substitution": {"enabled": False}, "saps": {"enabled": False},
                                           "import": {"paths": paths, "max_candidates": 4}})
    campaign = Campaign.create(parse_config(data), tmp_path / "c")
    campaign.run()
    rounds = campaign.round_table()
    assert [r["generated_by"].get("import", 0) for r in rounds[1:]] == [4, 2]  # 6 in all, 4 per round
    assert rounds[1]["rejected_by_generator"]["import"] == {"unparseable": 2}  # one per file, first round only
    assert rounds[2]["rejected_by_generator"] == {}


def old_database(path: Path, version: int, statements: list[str]) -> sqlite3.Connection:
    """A database of schema `version` made of `statements` (frozen schemas), open for the test to fill."""
    old = sqlite3.connect(path)
    for statement in statements:
        old.execute(statement)
    old.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    return old


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "campaign.db"
    # the schema as version 1 had it: no entries.data, no candidates.prerelax, no screening tables
    old = old_database(path, 1, [statement.replace(", data TEXT NOT NULL DEFAULT '{}')", ")")
                                 .replace(", prerelax TEXT, pick TEXT)", ")") for statement in TABLES_V6])
    old.execute("INSERT INTO entries (id, source, round, composition, reduced_formula, nsites, energy_corrected,"
                " energy_per_atom, scale) VALUES ('e-1', 'snapshot', 0, 'Cu1', 'Cu', 1, -3.5, -3.5, 'emt')")
    old.commit()
    old.close()
    store = Store(path)
    assert store.meta("schema_version") == str(SCHEMA_VERSION) == "8"
    (entry,) = store.entries(with_structure=False)
    assert entry["energy_corrected"] == -3.5 and json.loads(entry["data"]) == {}
    assert "prerelax" in [row[1] for row in store.query("PRAGMA table_info(candidates)")]
    assert store.shards_done(1) == {}


def test_a_version_4_database_keeps_its_screened_rows_and_takes_rows_without_a_label(tmp_path):
    path = tmp_path / "campaign.db"
    # version 4: every screened row had a symmetry label, no candidates.pick
    old = old_database(path, 4, [statement.replace(", pick TEXT)", ")") for statement in TABLES_V6]
                       + [statement.replace("fingerprint TEXT,", "fingerprint TEXT NOT NULL,")
                          for statement in SCREENING_SCHEMA_V6])
    old.execute("INSERT INTO screened VALUES ('c-1', 1, 0, 'Cu3Au', 'Cu3Au:221', -0.01)")
    old.commit()
    old.close()
    store = Store(path)
    assert store.meta("schema_version") == "8"
    with store.transaction():
        store.add_shard(1, 1, {"kept": 0}, [("c-2", "CuAu", None, 0.2, False)])
    rows = store.query("SELECT id, symmetry_label, pred_ehull, whole FROM screened ORDER BY id")
    # rows of before version 8 do not say which stage of the cascade predicted them
    assert [tuple(r) for r in rows] == [("c-1", "Cu3Au:221", -0.01, None), ("c-2", None, 0.2, 0)]
    assert [r[1] for r in store.query("PRAGMA index_list(screened)")].count("screened_bucket") == 1


def test_a_version_5_database_tags_its_picks(tmp_path):
    """Before version 6 every model pick passed the threshold: old picks are tagged so."""
    path = tmp_path / "campaign.db"
    old = old_database(path, 5, [statement.replace(", pick TEXT)", ")") for statement in TABLES_V6]
                       + SCREENING_SCHEMA_V6)
    # id, round, selected, explore
    rows = [("ref", 0, 1, 0), ("model", 1, 1, 0), ("random", 1, 1, 1), ("left", 1, 0, 0)]
    for key, round_, selected, explore in rows:
        old.execute("INSERT INTO candidates (id, round, generator, structure, reduced_formula, nsites, fingerprint,"
                    " selected, explore) VALUES (?, ?, 'saps', '{}', 'Cu', 1, 'Cu:225', ?, ?)",
                    (key, round_, selected, explore))
    old.commit()
    old.close()
    store = Store(path)
    assert store.meta("schema_version") == "8"
    assert {r["id"]: r["pick"] for r in store.candidates()} == {
        "ref": "reference", "model": "threshold", "random": "explore", "left": None}
    assert store.picks_by_round() == {0: {"reference": 1}, 1: {"threshold": 1, "explore": 1}}


def as_version_6(path: Path) -> None:
    """Rewrite the campaign database at `path` as version 6 held it: the frozen tables of
    version 6, filled with every column they share, the symmetry label under `fingerprint`."""
    current = path.with_name("current.db")
    path.rename(current)
    old = old_database(path, 6, TABLES_V6 + SCREENING_SCHEMA_V6)
    old.execute("ATTACH ? AS current", (str(current),))
    tables = [row[0] for row in old.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'"
                                            " AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        columns = [row[1] for row in old.execute(f"PRAGMA main.table_info({table})")]
        source = ["symmetry_label" if column == "fingerprint" else column for column in columns]
        old.execute(f"INSERT OR IGNORE INTO main.{table} ({', '.join(columns)}) SELECT {', '.join(source)}"
                    f" FROM current.{table}")  # the schema version stays 6
    old.commit()
    old.close()
    current.unlink()


def test_a_version_6_campaign_keeps_its_rows_under_symmetry_label_and_resumes(tmp_path):
    directory = tmp_path / "campaign"
    config = ci_config(rounds=1, selection={"budget": 3})
    campaign = Campaign.create(parse_config(config), directory)
    assert campaign.run().status == "done"
    tables = ("candidates", "entries", "jobs", "rounds", "models", "meta")
    before = {table: [tuple(row) for row in campaign.store.query(f"SELECT * FROM {table} ORDER BY 1, 2")]
              for table in tables}
    assert all(candidate["symmetry_label"] for candidate in campaign.store.candidates())
    campaign.store.close()
    as_version_6(directory / "campaign.db")

    config["rounds"] = 2
    write_config(directory / "config.yaml", config)
    campaign = Campaign(directory)
    assert campaign.store.meta("schema_version") == "8"
    after = {table: [tuple(row) for row in campaign.store.query(f"SELECT * FROM {table} ORDER BY 1, 2")]
             for table in tables}
    assert after == before
    for table in ("candidates", "entries", "screened"):
        columns = [row[1] for row in campaign.store.query(f"PRAGMA table_info({table})")]
        assert "symmetry_label" in columns and "fingerprint" not in columns
    assert campaign.run().status == "done"
    assert [row["stage"] for row in campaign.round_table()] == ["done"] * 3
    assert campaign.round_table()[2]["evaluated"] > 0
