"""The `gnome-loop` command line.

Exit codes: 0 done, 1 internal error, 2 bad input, 3 waiting for oracle jobs,
4 the campaign is locked by another process.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
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
}


def _print_status(campaign) -> None:
    table = Table(title=f"campaign {campaign.config.name} ({campaign.dir})")
    for header in STATUS_COLUMNS:
        table.add_column(header, justify="right")
    for row in campaign.round_table():
        table.add_row(str(row["round"]), row["stage"], _fmt(row["generated"]), _fmt(row["unique"]),
                      _fmt(row["selected"]), _fmt(row["evaluated"]), _fmt(row["failed"]), _fmt(row["stable"]),
                      _fmt(row["new_stable"]), _fmt(row["hit_rate"], 100, 1), _fmt(row["filter_mae"], 1000),
                      _fmt(row["model_val_mae"], 1000))
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; the campaign keeps what it committed — `gnome-loop resume` goes on")
        sys.exit(130)


if __name__ == "__main__":
    main()
