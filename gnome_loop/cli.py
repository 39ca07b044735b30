"""The `gnome-loop` command line: it presents, the package computes.

Exit codes (`gnome_loop.terminal`): 0 done, 1 internal error, 2 bad input, 3 waiting
for oracle jobs, 4 the campaign is locked by another process.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from gnome_loop.cli_generate import generate_app
from gnome_loop.terminal import (EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_LOCKED, EXIT_OK, EXIT_WAITING, console,
                                 counts_text, fmt, out, progress, reported_errors, say)

__all__ = ["app", "main", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_WAITING", "EXIT_LOCKED"]

app = typer.Typer(
    help="Active-learning discovery of stable crystals: generate → filter → oracle → hull → retrain.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

def _open(directory: Path):
    from gnome_loop.campaign import Campaign

    return Campaign(directory, progress=progress, say=say)


@app.command()
def init(
    config: Path = typer.Argument(..., help="campaign config (YAML)"),
    directory: Optional[Path] = typer.Option(None, "-d", "--dir", help="campaign directory (default: ./<name>)"),
) -> None:
    """Validate CONFIG and create the campaign directory."""
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import load_config

    with reported_errors():
        settings = load_config(config)
        target = directory or Path(settings.name)
        Campaign.create(settings, target)
    out.print(f"created campaign {settings.name!r} in {target}; next: gnome-loop run {target}")


def _advance(directory: Path) -> None:
    with reported_errors():
        campaign = _open(directory)
        started = time.time()
        outcome = campaign.run()
        _print_status(campaign)
        out.print(f"{outcome.message} ({time.time() - started:.0f} s)")
    if outcome.status == "waiting":
        raise typer.Exit(EXIT_WAITING)


@app.command()
def run(directory: Path = typer.Argument(..., help="campaign directory")) -> None:
    """Advance the campaign until it must wait for oracle jobs (exit 3) or all rounds are done (exit 0)."""
    _advance(directory)


@app.command()
def resume(directory: Path = typer.Argument(..., help="campaign directory")) -> None:
    """Ingest the oracle jobs that finished, then continue like `run`."""
    _advance(directory)


STATUS_COLUMNS = {
    "rnd": "round", "stage": "current stage", "gen": "candidates generated", "uniq": "unique after dedup",
    "pool": "candidates selection chose among (with selection.carry_over, earlier rounds' unselected too)",
    "sel": "selected for the oracle", "thr": "selected below selection.ehull_threshold",
    "fill": "selected above it to fill the budget (selection.fill_budget)", "eval": "evaluated by the oracle",
    "fail": "failed jobs",
    "stable": "evaluated and on the hull (E_hull <= 5e-5 eV/atom)", "new": "stable with a new composition",
    "unj": "entries without an E_hull (why: below the table)",
    "hit%": "stable / evaluated", "MAE": "filter MAE on evaluated, meV/atom",
    "valMAE": "model validation MAE, meV/atom",
    "ρ": "Spearman rank correlation of the ensemble spread with the filter error",
}


def _print_status(campaign) -> None:
    table = Table(title=f"campaign {campaign.config.name} ({campaign.dir})")
    for header in STATUS_COLUMNS:
        table.add_column(header, justify="right")
    rounds = campaign.round_table()
    for row in rounds:
        table.add_row(str(row["round"]), row["stage"], fmt(row["generated"]), fmt(row["unique"]),
                      fmt(row["pool"]), fmt(row["selected"]), fmt(row["threshold_picks"]), fmt(row["fill_picks"]),
                      fmt(row["evaluated"]), fmt(row["failed"]), fmt(row["stable"]),
                      fmt(row["new_stable"]), fmt(row["unjudged"]), fmt(row["hit_rate"], 100, 1),
                      fmt(row["filter_mae"], 1000), fmt(row["model_val_mae"], 1000),
                      fmt(row["spread_error_spearman"], 1, 2))
    out.print(table)
    out.print("[dim]" + "; ".join(f"{k}: {v}" for k, v in STATUS_COLUMNS.items()) + "[/]")
    hull_note = campaign.store.meta("hull")
    if hull_note:
        out.print(f"hull: {hull_note}", markup=False)
    for row in rounds:
        if row["empty_reason"]:
            out.print(f"[yellow]warning:[/] round {row['round']} selected nothing: {row['empty_reason']}")
    _print_unjudged(rounds)
    _print_generators(rounds)
    _print_funnel(rounds)
    _print_prerelax(rounds)


def _print_unjudged(rounds: list[dict]) -> None:
    """One line per round with entries the hull could not judge, and why."""
    for row in rounds:
        if row["unjudged"]:
            reasons = ", ".join(f"{reason} ({n})" for reason, n in sorted(row["unjudged_reasons"].items()))
            out.print(f"[yellow]round {row['round']}: {row['unjudged']} entries without an E_hull: {reasons}[/]")


def _print_funnel(rounds: list[dict]) -> None:
    """The screening funnel per round (`screening.enabled`): where candidates drop out;
    `rescored`: scored by the whole ensemble after its first member (the cascade)."""
    rows = [row for row in rounds if row["funnel"]]
    if not rows:
        return
    table = Table(title="screening funnel (substitution + SAPS shards)")
    stages = ("generated", "valid", "scored", "rescored", "examined", "duplicates", "kept")
    for header in ("round", *stages):
        table.add_column(header, justify="right")
    for row in rows:
        # a round screened by an older gnome_loop (deduplicated before scoring) lacks some stages
        table.add_row(str(row["round"]), *(fmt(row["funnel"].get(key)) for key in stages))
    out.print(table)


def _print_prerelax(rounds: list[dict]) -> None:
    """The NequIP pre-relaxer per round: its training and how many candidates it relaxed."""
    rows = [row for row in rounds if row["prerelax"]]
    if not rows:
        return
    table = Table(title="NequIP pre-relaxer (frames and MAEs: trained after the round; pre-relaxed and "
                        "flagged: with the potential of the round before)")
    for header in ("round", "frames", "E MAE meV/at", "F MAE meV/Å", "pre-relaxed", "flagged"):
        table.add_column(header, justify="right")
    for row in rows:
        values = row["prerelax"]
        table.add_row(str(row["round"]), fmt(values.get("nequip_frames")), fmt(values.get("nequip_energy_mae"), 1, 1),
                      fmt(values.get("nequip_force_mae"), 1, 1), fmt(values.get("prerelaxed")),
                      fmt(values.get("prerelax_flagged")))
    out.print(table)


def _print_generators(rounds: list[dict]) -> None:
    """Per generator, round by round and in all: which generator finds stable crystals;
    then each generator's failures and the generative models' fine-tuning."""
    from gnome_loop.metrics import GENERATOR_COUNTS, generator_totals

    totals = generator_totals(rounds)
    if not totals:
        return
    table = Table(title="by generator")
    for header in ("round", "generator", *GENERATOR_COUNTS, "hit%"):
        table.add_column(header, justify="right")
    sections = [(str(row["round"]), generator_totals([row])) for row in rounds] + [("all", totals)]
    for label, by_name in sections:
        for name, counts in by_name.items():
            table.add_row(label, name, *(fmt(counts[key]) for key in GENERATOR_COUNTS), fmt(counts["hit_rate"], 100, 1))
        if by_name:
            table.add_section()
    out.print(table)
    out.print("[dim]samples: drawn by a generative model or written by a command; valid: kept as candidates; unique: "
              "repeating no other candidate; novel: no known phase either (these three of the candidates made in the "
              "round; evaluated and stable: of the round's jobs); failed: rounds the generator failed in[/]")
    for row in rounds:
        for name, failure in row["generator_failures"].items():
            out.print(f"[yellow]round {row['round']}: generator {name} failed:[/] {escape(failure)}")
        for name, tuned in row["generator_training"].items():
            if tuned["steps"]:
                rate = f" at learning rate {tuned['learning_rate']:g}" if "learning_rate" in tuned else ""
                own = (f": the entries near the hull and {tuned['own_samples']} of its own samples that the energy "
                       "model put nearest it") if tuned.get("own_samples") else " near the hull"
                out.print(f"round {row['round']}: {name} fine-tuned {tuned['steps']} steps{rate} on "
                          f"{tuned['structures']} structures{own} (loss {tuned['loss_first']:.3g} → "
                          f"{tuned['loss_last']:.3g})")


@app.command()
def status(
    directory: Path = typer.Argument(..., help="campaign directory"),
    as_json: bool = typer.Option(False, "--json", help="print the per-round metrics as JSON"),
) -> None:
    """Rounds, stage, jobs by state, hit rate and stable counts per round."""
    with reported_errors():
        campaign = _open(directory)
        if as_json:
            out.print_json(json.dumps({"rounds": campaign.round_table(), "jobs": campaign.store.job_counts()}))
            return
        _print_status(campaign)
        counts = campaign.store.job_counts()
        out.print("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


@app.command()
def export(
    directory: Path = typer.Argument(..., help="campaign directory"),
    formats: str = typer.Option("csv,json,cif-zip,extxyz", "--format",
                                help="comma-separated: csv (hull + summary), json, cif-zip, extxyz"),
) -> None:
    """Write the updated hull and the discovered materials to DIRECTORY/exports."""
    with reported_errors():
        campaign = _open(directory)
        written = campaign.export([f.strip() for f in formats.split(",") if f.strip()])
    for path in written:
        out.print(f"wrote {path}")


@app.command("run-job")
def run_job(jobdir: Path = typer.Argument(..., help="a job folder written by the campaign")) -> None:
    """Run one oracle job folder here (for the manual scheduler); writes JOBDIR/result.json."""
    from gnome_loop.oracle.jobfolder import run_job as execute

    with reported_errors():
        if not (jobdir / "job.json").exists():
            raise FileNotFoundError(f"{jobdir} has no job.json: not a gnome_loop job folder")
        result = execute(jobdir)
    if result.ok:
        out.print(f"{jobdir}: ok, energy {result.energy:.6f} eV after {result.steps} steps")
    else:
        out.print(f"{jobdir}: failed: {result.error}")
        raise typer.Exit(EXIT_INTERNAL)


@app.command()
def cancel(
    directory: Path = typer.Argument(..., help="campaign directory"),
    job: Optional[list[str]] = typer.Option(None, "--job", help="cancel only this job id (repeatable)"),
) -> None:
    """Stop the campaign's unfinished oracle jobs (scancel on SLURM) and record them as failed."""
    with reported_errors():
        cancelled = _open(directory).cancel(job or None)
    out.print(f"cancelled {len(cancelled)} jobs" + (f": {', '.join(cancelled)}" if len(cancelled) <= 20 else ""))


@app.command()
def snapshot(
    chemsys: str = typer.Option(..., help="elements of the space, e.g. Li-Co-Ni-O (every subsystem is fetched)"),
    output: Path = typer.Option(..., "-o", "--output", help="snapshot file to write (.json.gz)"),
    max_elements: Optional[int] = typer.Option(None, help="largest subsystem (default: all of CHEMSYS)"),
    endpoint: Optional[str] = typer.Option(None, help="mp-api endpoint (default: the Materials Project's)"),
) -> None:
    """Fetch MP's GGA/GGA+U entries of a chemical space (key from MP_API_KEY) into a snapshot file."""
    from gnome_loop.snapshot.mp import fetch_mp_entries, write_mp_snapshot

    with reported_errors():
        fetched = fetch_mp_entries(chemsys.split("-"), max_elements, endpoint=endpoint)
        write_mp_snapshot(fetched, output)
    out.print(f"wrote {len(fetched.entries)} entries of {len(fetched.chemsys)} systems from MP database "
              f"{fetched.database_version} to {output}")


@app.command()
def hull(
    entries: Path = typer.Argument(..., help="entries JSON (or MP snapshot), energy CSV(.gz) or extxyz with energies"),
    reference: Optional[str] = typer.Option(None, help="judge each entry alone against this hull (same formats), "
                                            "or 'mp': the Materials Project's 31,840 stable phases shipped with "
                                            "gnome_loop (MP2020-corrected); without it the entries are their own hull"),
    output: Path = typer.Option(..., "-o", "--output", help="CSV: entry_id, formula, e_above_hull (eV/atom), "
                                "decomposition, reason"),
) -> None:
    """Distance of every entry to the convex hull, with its decomposition products."""
    from gnome_loop.hull import hull_table, write_hull_csv
    from gnome_loop.snapshot.files import read_entries
    from gnome_loop.snapshot.reference import MP_TABLE

    with reported_errors():
        items, skipped = read_entries(entries)
        against = None if reference is None else read_entries(MP_TABLE if reference == "mp" else Path(reference))[0]
        results = hull_table(items, against)
        write_hull_csv(results, output)
    unknown = sum(r.e_above_hull is None for r in results)
    out.print(f"wrote {len(results)} rows to {output}" + (f"; {unknown} without a hull (see 'reason')" if unknown else "")
              + (f"; skipped rows: {dict(skipped)}" if skipped else ""))


@app.command()
def report(
    directory: Path = typer.Argument(..., help="campaign directory"),
    chemsys: Optional[list[str]] = typer.Option(None, "--chemsys", help="phase diagram of this system, e.g. Cu-Au "
                                                "(repeatable; default: the systems with most discoveries)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder (default: DIRECTORY/report)"),
) -> None:
    """Plot hit rate, filter MAE, E_hull histograms, stable counts and phase diagrams, with a report.md."""
    from gnome_loop.report import write_report

    with reported_errors():
        campaign = _open(directory)
        written = write_report(campaign, output or directory / "report", chemsys or None)
    for path in written:
        out.print(f"wrote {path}")


@app.command("parse-vasp")
def parse_vasp(
    directory: Path = typer.Argument(..., help="a finished VASP run folder (vasprun.xml[.gz], or relax1/relax2)"),
    formula: Optional[str] = typer.Option(None, help="the composition the run must have (a reduced formula)"),
) -> None:
    """Print, as one JSON object, what the campaign would make of a VASP folder: ok or the reason why not."""
    from gnome_loop.oracle.vasp import parse_vasp_dir

    with reported_errors():
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a folder")
        outcome = parse_vasp_dir(directory, formula)
    print(json.dumps(outcome.summary()))  # exit 0 either way: "ok" says whether the run is usable


@app.command()
def train(
    data: Path = typer.Argument(..., help="labelled structures: a CSV(.gz) with a 'cif' column and the target, "
                                "a JSON file of computed entries or an extxyz file"),
    output: Path = typer.Option(..., "-o", "--output", help="directory to save the model in"),
    kind: str = typer.Option("gnome", help="gnome (structure GNN ensemble), composition (ensemble) or linear"),
    target: str = typer.Option("formation_energy_per_atom", help="column or key to learn, eV/atom; "
                               "'energy_per_atom' is the entry or calculator energy"),
    members: int = typer.Option(4, help="ensemble members"),
    width: int = typer.Option(64, help="hidden width"),
    epochs: int = typer.Option(300, help="most training epochs"),
    cutoff: float = typer.Option(4.0, help="neighbour cutoff, Å (GNoME: 4)"),
    batch_size: int = typer.Option(32, help="structures per batch"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Train an energy model on DATA and save it to OUTPUT, without a campaign."""
    from gnome_loop.config import parse_model
    from gnome_loop.models.registry import make_model
    from gnome_loop.models.data import read_labelled

    with reported_errors():
        settings = parse_model(kind=kind, members=members, width=width, epochs=epochs, cutoff=cutoff,
                                   batch_size=batch_size)
        _, structures, energies = read_labelled(data, target)
        say(f"training a {kind} model on {len(structures)} structures from {data}")
        model = make_model(settings, seed=seed)
        metrics = model.fit(structures, energies)
        model.save(output)
    out.print(f"saved a {model.name} to {output}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("val MAE, meV/atom", fmt(metrics["val_mae"], 1000))
    table.add_row("n_train", fmt(metrics["n_train"]))
    table.add_row("n_val", fmt(metrics["n_val"]))
    if metrics.get("spread_error_spearman") is not None:
        table.add_row("spread/error Spearman", fmt(metrics["spread_error_spearman"], digits=2))
    out.print(table)


PREDICTION_COLUMNS = ["id", "formula", "energy_per_atom", "uncertainty", "error"]


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="a saved model (from `gnome-loop train` or a campaign)"),
    structures: Path = typer.Argument(..., help="any structure file an import reads: CIF, extxyz, POSCAR, JSON "
                                      "(structures or entries), a CSV with a 'cif' column, a zip or a folder of them"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="CSV to write (default: stdout)"),
) -> None:
    """Predict the energy per atom (eV/atom) and its uncertainty for STRUCTURES.

    Structures the model refuses get empty values and the reason in the `error` column.
    """
    from gnome_loop.models.registry import load_model
    from gnome_loop.models.data import predict_rows, read_structures

    with reported_errors():
        model = load_model(model_dir)
        items, skipped = read_structures(structures)
        if not items:
            detail = f": {counts_text(skipped)}" if skipped else ""
            raise ValueError(f"{structures} holds no readable structures{detail}")
        rows = predict_rows(model, items)
        with open(output, "w", newline="") if output else nullcontext(sys.stdout) as handle:
            writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value
                                 for key, value in row.items()})
    refused = Counter(row["error"].split(": ", 1)[-1] for row in rows if row["error"])
    console.print(f"read {len(items)} structures from {structures}"
                  + (f"; skipped {sum(skipped.values())}: {counts_text(skipped)}" if skipped else ""))
    console.print(f"predicted {len(rows) - sum(refused.values())}, refused {sum(refused.values())}"
                  + (f": {counts_text(refused)}" if refused else "") + (f"; wrote {output}" if output else ""))


app.add_typer(generate_app, name="generate")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; the campaign keeps what it committed — `gnome-loop resume` goes on")
        sys.exit(130)


if __name__ == "__main__":
    main()
