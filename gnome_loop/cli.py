"""The `gnome-loop` command line.

Exit codes: 0 done, 1 internal error, 2 bad input, 3 waiting for oracle jobs,
4 the campaign is locked by another process.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_WAITING, EXIT_LOCKED = 0, 1, 2, 3, 4

app = typer.Typer(
    help="Active-learning discovery of stable crystals: generate → filter → oracle → hull → retrain.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 120)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn known failures into one clear line and the documented exit code."""
    from gnome_loop.config import ConfigError
    from gnome_loop.store import CampaignLocked, StoreError

    try:
        yield
    except CampaignLocked as error:
        console.print(f"[red]locked:[/] {error}")
        raise typer.Exit(EXIT_LOCKED) from None
    except (ConfigError, StoreError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def _say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


def _open(directory: Path):
    from gnome_loop.campaign import Campaign

    return Campaign(directory, progress=_progress, say=_say)


@app.command()
def init(
    config: Path = typer.Argument(..., help="campaign config (YAML)"),
    directory: Optional[Path] = typer.Option(None, "-d", "--dir", help="campaign directory (default: ./<name>)"),
) -> None:
    """Validate CONFIG and create the campaign directory."""
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import load_config

    with _reported_errors():
        settings = load_config(config)
        target = directory or Path(settings.name)
        Campaign.create(settings, target)
    out.print(f"created campaign {settings.name!r} in {target}; next: gnome-loop run {target}")


def _advance(directory: Path) -> None:
    with _reported_errors():
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


def _fmt(value, scale: float = 1.0, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}"
    return str(value)


STATUS_COLUMNS = {
    "rnd": "round", "stage": "current stage", "gen": "candidates generated", "uniq": "unique after dedup",
    "sel": "selected for the oracle", "eval": "evaluated by the oracle", "fail": "failed jobs",
    "stable": "evaluated and on the hull (E_hull <= 5e-5 eV/atom)", "new": "stable with a new composition",
    "hit%": "stable / evaluated", "MAE": "filter MAE on evaluated, meV/atom",
    "valMAE": "model validation MAE, meV/atom",
    "ρ": "Spearman rank correlation of the ensemble spread with the filter error",
}


def _print_status(campaign) -> None:
    table = Table(title=f"campaign {campaign.config.name} ({campaign.dir})")
    for header in STATUS_COLUMNS:
        table.add_column(header, justify="right")
    for row in campaign.round_table():
        table.add_row(str(row["round"]), row["stage"], _fmt(row["generated"]), _fmt(row["unique"]),
                      _fmt(row["selected"]), _fmt(row["evaluated"]), _fmt(row["failed"]), _fmt(row["stable"]),
                      _fmt(row["new_stable"]), _fmt(row["hit_rate"], 100, 1), _fmt(row["filter_mae"], 1000),
                      _fmt(row["model_val_mae"], 1000), _fmt(row["spread_error_spearman"], 1, 2))
    out.print(table)
    out.print("[dim]" + "; ".join(f"{k}: {v}" for k, v in STATUS_COLUMNS.items()) + "[/]")


@app.command()
def status(
    directory: Path = typer.Argument(..., help="campaign directory"),
    as_json: bool = typer.Option(False, "--json", help="print the per-round metrics as JSON"),
) -> None:
    """Rounds, stage, jobs by state, hit rate and stable counts per round."""
    with _reported_errors():
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
    formats: str = typer.Option("csv,json,cif-zip", "--format", help="comma-separated: csv, json, cif-zip"),
) -> None:
    """Write the updated hull and the discovered materials to DIRECTORY/exports."""
    with _reported_errors():
        campaign = _open(directory)
        written = campaign.export([f.strip() for f in formats.split(",") if f.strip()])
    for path in written:
        out.print(f"wrote {path}")


@app.command("run-job")
def run_job(jobdir: Path = typer.Argument(..., help="a job folder written by the campaign")) -> None:
    """Run one oracle job folder here (for the manual scheduler); writes JOBDIR/result.json."""
    from gnome_loop.oracle.base import run_job as execute

    with _reported_errors():
        if not (jobdir / "job.json").exists():
            raise FileNotFoundError(f"{jobdir} has no job.json: not a gnome_loop job folder")
        result = execute(jobdir)
    if result.ok:
        out.print(f"{jobdir}: ok, energy {result.energy:.6f} eV after {result.steps} steps")
    else:
        out.print(f"{jobdir}: failed: {result.error}")
        raise typer.Exit(EXIT_INTERNAL)


def _model_settings(**options):
    """The `model` config section from command-line options, validated like a config."""
    from pydantic import ValidationError

    from gnome_loop.config import ConfigError, Model, _describe

    try:
        return Model(**options)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


@app.command()
def train(
    data: Path = typer.Argument(..., help="labelled structures: a CSV(.gz) with a 'cif' column and the target, "
                                "a monty-JSON entries file or an extxyz file"),
    output: Path = typer.Option(..., "-o", "--output", help="directory to save the model in"),
    kind: str = typer.Option("gnome", help="gnome (structure GNN ensemble), composition (ensemble) or linear"),
    target: str = typer.Option("formation_energy_per_atom", help="column or key to learn, eV/atom; "
                               "'energy_per_atom' is the entry or calculator energy"),
    members: int = typer.Option(4, help="ensemble members"),
    width: int = typer.Option(64, help="hidden width"),
    epochs: int = typer.Option(300, help="most training epochs"),
    cutoff: float = typer.Option(5.0, help="neighbour cutoff, Å"),
    batch_size: int = typer.Option(32, help="structures per batch"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Train an energy model on DATA and save it to OUTPUT, without a campaign."""
    from gnome_loop.models.base import make_model
    from gnome_loop.models.data import read_labelled

    with _reported_errors():
        settings = _model_settings(kind=kind, members=members, width=width, epochs=epochs, cutoff=cutoff,
                                   batch_size=batch_size)
        _, structures, energies = read_labelled(data, target)
        _say(f"training a {kind} model on {len(structures)} structures from {data}")
        model = make_model(settings, seed=seed)
        metrics = model.fit(structures, energies)
        model.save(output)
    out.print(f"saved a {model.name} to {output}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("val MAE, meV/atom", _fmt(metrics["val_mae"], 1000))
    table.add_row("n_train", _fmt(metrics["n_train"]))
    table.add_row("n_val", _fmt(metrics["n_val"]))
    if metrics.get("spread_error_spearman") is not None:
        table.add_row("spread/error Spearman", _fmt(metrics["spread_error_spearman"], digits=2))
    out.print(table)


PREDICTION_COLUMNS = ["id", "formula", "energy_per_atom", "uncertainty", "error"]


def _counts(counts: dict[str, int]) -> str:
    """'2 × reason, 1 × other reason', most common first."""
    return ", ".join(f"{count} × {reason}" for reason, count in Counter(counts).most_common())


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="a saved model (from `gnome-loop train` or a campaign)"),
    structures: Path = typer.Argument(..., help="a .cif file, a folder or .zip of CIFs, a .csv(.gz) with a "
                                      "'cif' column, an .extxyz file or a monty-JSON entries file"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="CSV to write (default: stdout)"),
) -> None:
    """Predict the energy per atom (eV/atom) and its uncertainty for STRUCTURES.

    Structures the model refuses get empty values and the reason in the `error` column.
    """
    from gnome_loop.models.base import load_model
    from gnome_loop.models.data import predict_rows, read_structures

    with _reported_errors():
        model = load_model(model_dir)
        items, skipped = read_structures(structures)
        if not items:
            detail = f": {_counts(skipped)}" if skipped else ""
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
                  + (f"; skipped {sum(skipped.values())}: {_counts(skipped)}" if skipped else ""))
    console.print(f"predicted {len(rows) - sum(refused.values())}, refused {sum(refused.values())}"
                  + (f": {_counts(refused)}" if refused else "") + (f"; wrote {output}" if output else ""))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; the campaign keeps what it committed — `gnome-loop resume` goes on")
        sys.exit(130)


if __name__ == "__main__":
    main()
