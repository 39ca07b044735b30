"""The campaign store: one SQLite database (WAL mode), the single source of truth.

All SQL of the project lives here, so a server database can replace SQLite behind
this module. Ids are content hashes and inserts are `INSERT OR IGNORE`, so a stage
re-run after a crash inserts nothing twice. A file lock keeps a second process
away from a campaign. Longer than 450 lines on purpose: it is the one module that
holds SQL (docs/architecture.md), with the schema, its migrations and row layouts.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from pymatgen.core import Composition, Structure

from gnome_loop.structures import structure_to_json, symmetry_label

if TYPE_CHECKING:
    from gnome_loop.screen import Prediction

SCHEMA_VERSION = 8

SCREENING_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    round INTEGER NOT NULL, shard INTEGER NOT NULL, funnel TEXT NOT NULL, PRIMARY KEY (round, shard));
CREATE TABLE IF NOT EXISTS screened (
    id TEXT PRIMARY KEY, round INTEGER NOT NULL, shard INTEGER NOT NULL, reduced_formula TEXT NOT NULL,
    symmetry_label TEXT, pred_ehull REAL, whole INTEGER);
CREATE INDEX IF NOT EXISTS screened_bucket ON screened(symmetry_label);
"""

#: The screening tables of versions 5 and 6, frozen: what migrations 3 and 4 create.
SCREENING_SCHEMA_V6 = [
    "CREATE TABLE IF NOT EXISTS shards (round INTEGER NOT NULL, shard INTEGER NOT NULL, funnel TEXT NOT NULL,"
    " PRIMARY KEY (round, shard))",
    "CREATE TABLE IF NOT EXISTS screened (id TEXT PRIMARY KEY, round INTEGER NOT NULL, shard INTEGER NOT NULL,"
    " reduced_formula TEXT NOT NULL, fingerprint TEXT, pred_ehull REAL)",
    "CREATE INDEX IF NOT EXISTS screened_bucket ON screened(fingerprint)"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, stage TEXT NOT NULL, started REAL, finished REAL,
    metrics TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS candidates (
    id TEXT PRIMARY KEY, round INTEGER NOT NULL, generator TEXT NOT NULL,
    parent_ids TEXT NOT NULL DEFAULT '[]', structure TEXT NOT NULL,
    reduced_formula TEXT NOT NULL, nsites INTEGER NOT NULL, symmetry_label TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new', duplicate_of TEXT,
    pred_energy REAL, pred_std REAL, pred_ehull REAL, score_error TEXT,
    selected INTEGER NOT NULL DEFAULT 0, explore INTEGER NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}', prerelax TEXT, pick TEXT);
CREATE INDEX IF NOT EXISTS candidates_round ON candidates(round);
CREATE INDEX IF NOT EXISTS candidates_symmetry_label ON candidates(symmetry_label);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, candidate_id TEXT NOT NULL UNIQUE, round INTEGER NOT NULL,
    oracle TEXT NOT NULL, state TEXT NOT NULL, workdir TEXT NOT NULL, scheduler_ref TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, submitted REAL, finished REAL);
CREATE INDEX IF NOT EXISTS jobs_round ON jobs(round, state);
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, round INTEGER NOT NULL, candidate_id TEXT,
    composition TEXT NOT NULL, reduced_formula TEXT NOT NULL, nsites INTEGER NOT NULL,
    energy_corrected REAL NOT NULL, energy_per_atom REAL NOT NULL, scale TEXT NOT NULL,
    structure TEXT, symmetry_label TEXT, trajectory TEXT, e_hull REAL,
    is_stable INTEGER NOT NULL DEFAULT 0, is_reference INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS models (
    round INTEGER NOT NULL, member INTEGER NOT NULL, path TEXT NOT NULL, val_mae REAL,
    PRIMARY KEY (round, member));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL, msg TEXT NOT NULL);
""" + SCREENING_SCHEMA


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


#: Statements that bring a database of version N up to version N + 1; they name the
#: tables of old versions as they were, never the current schema.
MIGRATIONS = {1: ["ALTER TABLE entries ADD COLUMN data TEXT NOT NULL DEFAULT '{}'"],
              2: ["ALTER TABLE candidates ADD COLUMN prerelax TEXT"],
              3: SCREENING_SCHEMA_V6,
              # screened rows of candidates never examined for duplicates have no symmetry label
              4: ["DROP INDEX IF EXISTS screened_bucket", "ALTER TABLE screened RENAME TO screened_v4",
                  *SCREENING_SCHEMA_V6,
                  "INSERT INTO screened SELECT * FROM screened_v4", "DROP TABLE screened_v4"],
              # why a candidate was selected; before version 6 every model pick passed the threshold
              5: ["ALTER TABLE candidates ADD COLUMN pick TEXT",
                  "UPDATE candidates SET pick = CASE WHEN round = 0 THEN 'reference' WHEN explore = 1 THEN 'explore'"
                  " ELSE 'threshold' END WHERE selected = 1"],
              # the column named `fingerprint` always held a symmetry label (reduced formula:space group)
              6: ["ALTER TABLE candidates RENAME COLUMN fingerprint TO symmetry_label",
                  "ALTER TABLE entries RENAME COLUMN fingerprint TO symmetry_label",
                  "ALTER TABLE screened RENAME COLUMN fingerprint TO symmetry_label",
                  "DROP INDEX IF EXISTS candidates_fingerprint",
                  "CREATE INDEX IF NOT EXISTS candidates_symmetry_label ON candidates(symmetry_label)"],
              # whether a screened row's E_hull is the whole ensemble's (1) or its first member's (0: the
              # cascade); unknown (NULL) for rows screened before version 8
              7: ["ALTER TABLE screened ADD COLUMN whole INTEGER"]}

#: Job states: pending (to be (re)run), submitted (handed to a scheduler), done, failed (final).
JOB_STATES = ("pending", "submitted", "done", "failed")
#: Source of a round-0 entry kept only as a substitution parent, dedup reference and training
#: structure: judged against the hull (MP's stable phases) but not part of it.
PARENT = "parent"


def candidate_row(candidate_id: str, round_: int, generator: str, structure: Structure, parent_ids=(),
                  info: dict | None = None, label: str | None = None) -> dict:
    """A candidates-table row; `label` is the structure's symmetry label where known."""
    return {
        "id": candidate_id, "round": round_, "generator": generator, "parent_ids": json.dumps(list(parent_ids)),
        "structure": structure_to_json(structure), "reduced_formula": structure.composition.reduced_formula,
        "nsites": len(structure), "symmetry_label": label or symmetry_label(structure),
        "info": json.dumps(info or {}),
    }


def entry_row(entry_id: str, source: str, round_: int, candidate_id: str | None, structure: Structure | None,
              composition, energy: float, scale: str, is_reference: bool, trajectory: dict | None = None,
              data: dict | None = None) -> dict:
    """An entries-table row: a total corrected `energy` (eV) on the energy `scale`."""
    composition = Composition(composition)
    return {
        "id": entry_id, "source": source, "round": round_, "candidate_id": candidate_id,
        "composition": composition.formula, "reduced_formula": composition.reduced_formula,
        "nsites": int(composition.num_atoms), "energy_corrected": float(energy),
        "energy_per_atom": float(energy) / composition.num_atoms, "scale": scale,
        "structure": structure_to_json(structure) if structure is not None else None,
        "symmetry_label": symmetry_label(structure) if structure is not None else None,
        "trajectory": json.dumps(trajectory) if trajectory else None, "is_reference": int(is_reference),
        "data": json.dumps(data or {}),
    }


class StoreError(RuntimeError):
    """The campaign database is missing, of another schema version, or corrupt."""


class CampaignLocked(RuntimeError):
    """Another process holds the campaign."""


@contextmanager
def campaign_lock(directory: Path) -> Iterator[None]:
    """Hold the campaign's file lock; a second holder fails at once with a clear message.

    `flock` locks die with their process, so a kill -9 never leaves a stale lock.
    """
    path = Path(directory) / "campaign.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CampaignLocked(
            f"campaign {directory} is in use by {holder}; wait for it to finish "
            "(or stop it) before running another command that changes the campaign"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    try:
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@dataclass
class Job:
    id: str
    candidate_id: str
    round: int
    state: str
    workdir: str
    attempts: int
    error: str | None
    scheduler_ref: str | None = None


class Store:
    """Typed access to one campaign database."""

    def __init__(self, path: Path | str, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"no campaign database at {self.path}; run `gnome-loop init` first")
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        if create:
            with self.transaction():
                for statement in _statements(SCHEMA):
                    self.conn.execute(statement)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
        version = self.meta("schema_version")
        if version is not None and version.isdigit() and int(version) in MIGRATIONS:
            self._migrate(int(version))
            version = self.meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path} has schema version {version}, this gnome_loop reads version {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self.conn.close()

    def _migrate(self, version: int) -> None:
        """Upgrade an older database in place, one version per transaction."""
        while version in MIGRATIONS:
            with self.transaction():
                for statement in MIGRATIONS[version]:
                    self.conn.execute(statement)
                version += 1
                self.set_meta("schema_version", str(version))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- meta and events -------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path} is not a readable campaign database: {error}") from None
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def log(self, kind: str, msg: str) -> None:
        self.conn.execute("INSERT INTO events (time, kind, msg) VALUES (?, ?, ?)", (time.time(), kind, msg))

    def events(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]

    # --- rounds ------------------------------------------------------------------------
    def current_round(self) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT round, stage FROM rounds ORDER BY round DESC LIMIT 1").fetchone()
        return (row["round"], row["stage"]) if row else None

    def start_round(self, round_: int, stage: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO rounds (round, stage, started) VALUES (?, ?, ?)", (round_, stage, time.time())
        )

    def set_stage(self, round_: int, stage: str, finished: bool = False) -> None:
        self.conn.execute(
            "UPDATE rounds SET stage = ?, finished = ? WHERE round = ?",
            (stage, time.time() if finished else None, round_),
        )

    def round_metrics(self, round_: int) -> dict:
        row = self.conn.execute("SELECT metrics FROM rounds WHERE round = ?", (round_,)).fetchone()
        return json.loads(row["metrics"]) if row else {}

    def update_round_metrics(self, round_: int, values: dict) -> None:
        metrics = self.round_metrics(round_)
        metrics.update(values)
        self.conn.execute("UPDATE rounds SET metrics = ? WHERE round = ?", (json.dumps(metrics), round_))

    def rounds(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM rounds ORDER BY round").fetchall()

    # --- candidates ------------------------------------------------------------------
    def add_candidates(self, rows: Iterable[dict]) -> int:
        """Insert candidates (ignoring ids already present); return how many were new."""
        before = self.conn.total_changes
        self.conn.executemany(
            "INSERT OR IGNORE INTO candidates (id, round, generator, parent_ids, structure, reduced_formula,"
            " nsites, symmetry_label, selected, info) VALUES (:id, :round, :generator, :parent_ids, :structure,"
            " :reduced_formula, :nsites, :symmetry_label, :selected, :info)",
            [{"selected": 0, "info": "{}", "parent_ids": "[]", **row} for row in rows],
        )
        return self.conn.total_changes - before

    def candidate_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM candidates")}

    def candidates(self, round_: int | None = None, status: str | None = None, selected: bool | None = None,
                   labels: Iterable[str] | None = None) -> list[sqlite3.Row]:
        query, args = "SELECT * FROM candidates WHERE 1=1", []
        if round_ is not None:
            query, args = query + " AND round = ?", args + [round_]
        if status is not None:
            query, args = query + " AND status = ?", args + [status]
        if selected is not None:
            query, args = query + " AND selected = ?", args + [int(selected)]
        if labels is not None:
            keys = sorted(set(labels))
            query += f" AND symmetry_label IN ({','.join('?' * len(keys))})"
            args += keys
        return self.conn.execute(query + " ORDER BY id", args).fetchall()

    def generator_counts(self, round_: int) -> dict[str, dict[str, int]]:
        """Per generator, the round's candidates as the dedup stage left them: `valid` (all),
        `unique` (no repeat of another candidate) and `novel` (no known phase either)."""
        rows = self.conn.execute(
            "SELECT generator, COUNT(*) AS valid, SUM(status != 'duplicate' OR duplicate_of NOT IN"
            " (SELECT id FROM candidates)) AS uniq, SUM(status != 'duplicate') AS novel FROM candidates"
            " WHERE round = ? GROUP BY generator", (round_,))
        return {row["generator"]: {"valid": row["valid"], "unique": row["uniq"], "novel": row["novel"]}
                for row in rows}

    def best_predicted(self, generator: str, before_round: int, limit: int) -> list[sqlite3.Row]:
        """(id, structure, pred_ehull) of the `limit` candidates of `generator` from rounds
        before `before_round` that the energy model put nearest the hull: duplicates left
        out, and those selected for the oracle (their entries judge them). The structure is
        the one scored: the pre-relaxed one where a pre-relaxer made it."""
        return self.conn.execute(
            "SELECT id, COALESCE(json_extract(prerelax, '$.structure'), structure) AS structure, pred_ehull"
            " FROM candidates WHERE generator = ? AND round < ? AND pred_ehull IS NOT NULL AND status = 'new'"
            " AND selected = 0 ORDER BY pred_ehull, id LIMIT ?", (generator, before_round, limit)).fetchall()

    def candidate(self, candidate_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM candidates WHERE id = ?", (candidate_id,)).fetchone()

    def mark_duplicates(self, duplicates: dict[str, str]) -> None:
        self.conn.executemany(
            "UPDATE candidates SET status = 'duplicate', duplicate_of = ? WHERE id = ?",
            [(of, key) for key, of in duplicates.items()],
        )

    def set_predictions(self, predictions: Iterable[tuple[str, Prediction]]) -> None:
        """predictions: (candidate id, the energy model's prediction)."""
        self.conn.executemany(
            "UPDATE candidates SET pred_energy = ?, pred_std = ?, pred_ehull = ?, score_error = ? WHERE id = ?",
            [(p.energy, p.std, p.ehull, p.error, key) for key, p in predictions],
        )

    def origins(self) -> dict[str, sqlite3.Row]:
        """(id, generator, parent_ids) of every candidate, by id: where an exported material came from."""
        return {r["id"]: r for r in self.conn.execute("SELECT id, generator, parent_ids FROM candidates")}

    # --- screening shards -------------------------------------------------------------
    def shards_done(self, round_: int) -> dict[int, dict]:
        """The funnel counts of every screened shard of the round, by shard index."""
        return {row["shard"]: json.loads(row["funnel"]) for row in self.conn.execute(
            "SELECT shard, funnel FROM shards WHERE round = ?", (round_,))}

    def screened_count(self) -> int:
        """How many screened candidates are kept as summary rows (all rounds)."""
        return self.conn.execute("SELECT COUNT(*) FROM screened").fetchone()[0]

    def add_shard(self, round_: int, shard: int, funnel: dict, summary: Iterable[tuple]) -> None:
        """Record a screened shard: its funnel and the summary rows (id, formula, symmetry
        label or None, predicted E_hull, whether the whole ensemble predicted it) of the
        candidates it did not keep in full."""
        self.conn.executemany("INSERT OR IGNORE INTO screened (id, round, shard, reduced_formula, symmetry_label,"
                              " pred_ehull, whole) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              [(key, round_, shard, formula, label, ehull, int(whole))
                               for key, formula, label, ehull, whole in summary])
        self.conn.execute("INSERT INTO shards VALUES (?, ?, ?)", (round_, shard, json.dumps(funnel)))

    def set_prerelaxed(self, rows: Iterable[tuple[str, dict]]) -> None:
        """rows: (id, pre-relaxation record: status, steps, energy, force_std, flag, structure or None)."""
        self.conn.executemany("UPDATE candidates SET prerelax = ? WHERE id = ?",
                              [(json.dumps(record), key) for key, record in rows])

    def mark_selected(self, picks: Iterable[tuple[str, str]]) -> None:
        """picks: (id, why it was picked: 'threshold', 'fill', 'explore' or 'reference'); the
        `explore` flag is kept in step for tools that read it."""
        self.conn.executemany("UPDATE candidates SET selected = 1, pick = ?, explore = ? WHERE id = ?",
                              [(tag, int(tag == "explore"), key) for key, tag in picks])

    def picks_by_round(self) -> dict[int, dict[str, int]]:
        """How many candidates each round selected (the round of their job: a candidate can
        be picked rounds after it was made), by why they were picked."""
        counts: dict[int, dict[str, int]] = {}
        for row in self.conn.execute(
                "SELECT COALESCE(j.round, c.round) AS round, c.pick AS pick, COUNT(*) AS n FROM candidates c"
                " LEFT JOIN jobs j ON j.candidate_id = c.id WHERE c.selected = 1 GROUP BY 1, 2"):
            counts.setdefault(row["round"], {})[row["pick"]] = row["n"]
        return counts

    # --- jobs ----------------------------------------------------------------------------
    def add_jobs(self, rows: Iterable[dict]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO jobs (id, candidate_id, round, oracle, state, workdir)"
            " VALUES (:id, :candidate_id, :round, :oracle, 'pending', :workdir)",
            list(rows),
        )

    def jobs(self, round_: int | None = None, states: Iterable[str] | None = None) -> list[Job]:
        query, args = "SELECT * FROM jobs WHERE 1=1", []
        if round_ is not None:
            query, args = query + " AND round = ?", args + [round_]
        if states is not None:
            states = list(states)
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        rows = self.conn.execute(query + " ORDER BY id", args).fetchall()
        return [_job(row) for row in rows]

    def job(self, job_id: str) -> Job | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def mark_submitted(self, job_ids: Iterable[str]) -> None:
        """Hand jobs over (the scheduler id of an earlier attempt is cleared)."""
        now = time.time()
        self.conn.executemany(
            "UPDATE jobs SET state = 'submitted', submitted = ?, scheduler_ref = NULL WHERE id = ?",
            [(now, key) for key in job_ids],
        )

    def set_refs(self, refs: dict[str, str]) -> None:
        """Record scheduler ids (job id → e.g. a SLURM job id)."""
        self.conn.executemany("UPDATE jobs SET scheduler_ref = ? WHERE id = ?", [(r, key) for key, r in refs.items()])

    def finish_job(self, job_id: str, state: str, attempts: int, error: str | None) -> None:
        assert state in JOB_STATES
        self.conn.execute(
            "UPDATE jobs SET state = ?, attempts = ?, error = ?, finished = ? WHERE id = ?",
            (state, attempts, error, time.time() if state in ("done", "failed") else None, job_id),
        )

    def job_counts(self, round_: int | None = None) -> dict[str, int]:
        query, args = "SELECT state, COUNT(*) AS n FROM jobs", []
        if round_ is not None:
            query, args = query + " WHERE round = ?", [round_]
        return {row["state"]: row["n"] for row in self.conn.execute(query + " GROUP BY state", args)}

    # --- entries -------------------------------------------------------------------------
    def add_entry(self, row: dict) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO entries (id, source, round, candidate_id, composition, reduced_formula, nsites,"
            " energy_corrected, energy_per_atom, scale, structure, symmetry_label, trajectory, is_reference, data)"
            " VALUES (:id, :source, :round, :candidate_id, :composition, :reduced_formula, :nsites,"
            " :energy_corrected, :energy_per_atom, :scale, :structure, :symmetry_label, :trajectory, :is_reference,"
            " :data)",
            {"candidate_id": None, "structure": None, "symmetry_label": None, "trajectory": None, "data": "{}",
             **row},
        )

    def entries(self, with_structure: bool = True, labels: Iterable[str] | None = None) -> list[sqlite3.Row]:
        columns = "*" if with_structure else (
            "id, source, round, candidate_id, composition, reduced_formula, nsites, energy_corrected,"
            " energy_per_atom, scale, symmetry_label, e_hull, is_stable, is_reference, data")
        query, args = f"SELECT {columns} FROM entries", []
        if labels is not None:
            keys = sorted(set(labels))
            query += f" WHERE symmetry_label IN ({','.join('?' * len(keys))})"
            args = keys
        return self.conn.execute(query + " ORDER BY id", args).fetchall()

    def evaluated(self, round_: int) -> list[sqlite3.Row]:
        """The candidates of a round that the oracle evaluated, with their predictions, pick
        and oracle entry: what the metrics stage judges the filter on."""
        return self.conn.execute(
            "SELECT c.id, c.generator, c.explore, c.pick, c.pred_energy, c.pred_std, c.pred_ehull, e.energy_per_atom,"
            " e.e_hull, e.reduced_formula FROM candidates c JOIN jobs j ON j.candidate_id = c.id"
            " JOIN entries e ON e.candidate_id = c.id WHERE j.round = ? AND j.state = 'done'", (round_,)).fetchall()

    def reference_formulas(self) -> set[str]:
        """The reduced formulas of the hull's reference entries (parents are not references)."""
        return {r["reduced_formula"] for r in self.conn.execute(
            "SELECT reduced_formula FROM entries WHERE is_reference = 1")}

    def hull_members(self) -> list[sqlite3.Row]:
        """(id, composition, energy_corrected, source, is_stable) of every entry of the hull: all but parents."""
        return self.conn.execute("SELECT id, composition, energy_corrected, source, is_stable FROM entries"
                                 " WHERE source != ?", (PARENT,)).fetchall()

    def evaluated_ehulls(self) -> list[sqlite3.Row]:
        """(generator, e_hull) of the candidates evaluated in the rounds that have an E_hull."""
        return self.conn.execute(
            "SELECT c.generator, e.e_hull FROM entries e JOIN candidates c ON c.id = e.candidate_id"
            " WHERE e.round > 0 AND e.e_hull IS NOT NULL").fetchall()

    def unjudged_entries(self, round_: int) -> list[sqlite3.Row]:
        """(id, composition) of the entries of a round that have no E_hull."""
        return self.conn.execute("SELECT id, composition FROM entries WHERE round = ? AND e_hull IS NULL ORDER BY id",
                                 (round_,)).fetchall()

    def set_hull(self, values: Iterable[tuple[str, float | None, bool]]) -> None:
        """values: (entry id, e_hull or None, is_stable)."""
        self.conn.executemany(
            "UPDATE entries SET e_hull = ?, is_stable = ? WHERE id = ?",
            [(e, int(stable), key) for key, e, stable in values],
        )

    # --- models ------------------------------------------------------------------------
    def add_model(self, round_: int, member: int, path: str, val_mae: float | None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?)", (round_, member, path, val_mae))

    def latest_model(self) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM models ORDER BY round DESC, member LIMIT 1").fetchone()

    def model_paths(self) -> list[str]:
        """The folders of the trained models, newest round first."""
        return [row["path"] for row in self.conn.execute("SELECT path FROM models ORDER BY round DESC")]

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read-only escape hatch for tests and one-off inspection; the package uses named methods."""
        return self.conn.execute(sql, args).fetchall()


def _job(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["candidate_id"], row["round"], row["state"], row["workdir"], row["attempts"],
               row["error"], row["scheduler_ref"])

