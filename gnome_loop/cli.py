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
    from gnome_loop.execute import SchedulerError
    from gnome_loop.store import CampaignLocked, StoreError

    try:
        yield
    except CampaignLocked as error:
        console.print(f"[red]locked:[/] {error}")
        raise typer.Exit(EXIT_LOCKED) from None
    except SchedulerError as error:
        console.print(f"[red]scheduler error:[/] {error}; nothing was lost: fix it and run `gnome-loop resume`")
        raise typer.Exit(EXIT_INTERNAL) from None
    except ConnectionError as error:  # e.g. the Materials Project API
        console.print(f"[red]connection error:[/] {error}")
        raise typer.Exit(EXIT_INTERNAL) from None
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
        table.add_row(str(row["round"]), row["stage"], _fmt(row["generated"]), _fmt(row["unique"]),
                      _fmt(row["selected"]), _fmt(row["threshold_picks"]), _fmt(row["fill_picks"]),
                      _fmt(row["evaluated"]), _fmt(row["failed"]), _fmt(row["stable"]),
                      _fmt(row["new_stable"]), _fmt(row["unjudged"]), _fmt(row["hit_rate"], 100, 1),
                      _fmt(row["filter_mae"], 1000), _fmt(row["model_val_mae"], 1000),
                      _fmt(row["spread_error_spearman"], 1, 2))
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
    """The screening funnel per round (`screening.enabled`): where candidates drop out."""
    rows = [row for row in rounds if row["funnel"]]
    if not rows:
        return
    table = Table(title="screening funnel (substitution + SAPS shards)")
    stages = ("generated", "valid", "scored", "examined", "duplicates", "kept")
    for header in ("round", *stages):
        table.add_column(header, justify="right")
    for row in rows:
        # a round screened by an older gnome_loop (deduplicated before scoring) lacks some stages
        table.add_row(str(row["round"]), *(_fmt(row["funnel"].get(key)) for key in stages))
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
        table.add_row(str(row["round"]), _fmt(values.get("nequip_frames")), _fmt(values.get("nequip_energy_mae"), 1, 1),
                      _fmt(values.get("nequip_force_mae"), 1, 1), _fmt(values.get("prerelaxed")),
                      _fmt(values.get("prerelax_flagged")))
    out.print(table)


def _print_generators(rounds: list[dict]) -> None:
    """Totals per generator over the rounds: which generator finds stable crystals."""
    totals: dict[str, Counter] = {}
    for row in rounds:
        for name, n in row["generated_by"].items():
            totals.setdefault(name, Counter())["generated"] += n
        for name, rejects in row["rejected_by_generator"].items():
            totals.setdefault(name, Counter())["rejected"] += sum(rejects.values())
        for name, counts in row["by_generator"].items():
            totals.setdefault(name, Counter()).update({k: counts[k] for k in ("evaluated", "stable")})
    if not totals:
        return
    table = Table(title="by generator")
    for header in ("generator", "generated", "rejected", "evaluated", "stable", "hit%"):
        table.add_column(header, justify="right")
    for name, counts in sorted(totals.items()):
        rate = counts["stable"] / counts["evaluated"] if counts["evaluated"] else None
        table.add_row(name, str(counts["generated"]), str(counts["rejected"]), str(counts["evaluated"]),
                      str(counts["stable"]), _fmt(rate, 100, 1))
    out.print(table)


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
    formats: str = typer.Option("csv,json,cif-zip,extxyz", "--format",
                                help="comma-separated: csv (hull + summary), json, cif-zip, extxyz"),
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
    from gnome_loop.oracle.jobfolder import run_job as execute

    with _reported_errors():
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
    with _reported_errors():
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

    with _reported_errors():
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

    with _reported_errors():
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

    with _reported_errors():
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

    with _reported_errors():
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a folder")
        outcome = parse_vasp_dir(directory, formula)
    print(json.dumps(outcome.summary()))  # exit 0 either way: "ok" says whether the run is usable


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
    cutoff: float = typer.Option(4.0, help="neighbour cutoff, Å (GNoME: 4)"),
    batch_size: int = typer.Option(32, help="structures per batch"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Train an energy model on DATA and save it to OUTPUT, without a campaign."""
    from gnome_loop.models.registry import make_model
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
    from gnome_loop.models.registry import load_model
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


generate_app = typer.Typer(help="Make candidates with one generator, outside any campaign: extxyz + JSON summary.",
                           no_args_is_help=True)
app.add_typer(generate_app, name="generate")

SpaceOption = typer.Option(None, "--elements", help="chemical space, comma-separated (default: the inputs' elements)")
OutputOption = typer.Option(..., "-o", "--output", help="extxyz file to write; the summary goes beside it as .json")


def _elements(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from gnome_loop.structures import is_known_element

    elements = sorted({e.strip() for e in text.split(",") if e.strip()})
    unknown = [e for e in elements if not is_known_element(e)]
    if unknown or not elements:
        raise ValueError(f"--elements: {', '.join(unknown) or 'nothing'} is not a list of element symbols")
    return elements


def _parents(path: Path, elements: str | None = None) -> tuple[list, dict, list[str], set[str]]:
    """Parent structures from any file `generate import` reads, the import summary, the
    chemical space (`elements`, else the parents' elements) and the known formulas."""
    from gnome_loop.generate.imported import import_structures

    report = import_structures(path)
    if not report.accepted:
        raise ValueError(f"{path} holds no usable structures ({dict(report.rejected) or 'no entries'})")
    items = [(c.info["source_id"], c.structure) for c in report.accepted]
    space = _elements(elements) or sorted({el.symbol for _, s in items for el in s.composition})
    return items, report.to_json(), space, {s.composition.reduced_formula for _, s in items}


def _finish_generate(output: Path, name: str, candidates: list, started: float, elements, max_atoms: int,
                     max_elements: int, refused: Counter | None = None, **summary) -> None:
    """Write the valid candidates and the summary; `refused` counts what the generator itself turned down."""
    from gnome_loop.generate.output import checked, write_candidates

    kept, rejected = checked(candidates, elements, max_atoms, max_elements)
    rejected.update(refused or Counter())
    summary_path = write_candidates(output, kept, {
        "generator": name, "generated": len(candidates) + sum((refused or Counter()).values()),
        "rejected": dict(rejected),
        "seconds": round(time.time() - started, 2), **summary})
    out.print(f"{name}: {len(kept)} candidates written to {output}"
              + (f"; rejected {sum(rejected.values())}: {_counts(rejected)}" if rejected else "")
              + f" (summary: {summary_path}, {time.time() - started:.1f} s)")


@generate_app.command("substitution")
def generate_substitution(
    parents: Path = typer.Argument(..., help="parent structures: CIF, zip, folder, CSV(.gz) with 'cif', extxyz"),
    output: Path = OutputOption,
    elements: Optional[str] = SpaceOption,
    threshold: float = typer.Option(1e-3, help="substitution probability cut-off (GNoME: 0.001)"),
    max_elements: int = typer.Option(3), max_atoms: int = typer.Option(20),
    max_candidates: Optional[int] = typer.Option(None),
    charge_balanced: bool = typer.Option(True, help="candidates holding an anion must be charge balanced"),
) -> None:
    """Whole-species ionic substitution (Hautier et al. with GNoME's λ ≥ 0): new compositions only."""
    from gnome_loop.generate.substitution import substitute

    started = time.time()
    with _reported_errors():
        items, read, space, known = _parents(parents, elements)
        refused: Counter = Counter()
        candidates = substitute(items, space, known, threshold=threshold, max_elements=max_elements,
                                max_atoms=max_atoms, charge_balanced=charge_balanced, max_candidates=max_candidates,
                                rejected=refused)
        _finish_generate(output, "substitution", candidates, started, space, max_atoms, max_elements, refused,
                         parents=read)


@generate_app.command("saps")
def generate_saps(
    parents: Path = typer.Argument(..., help="parent structures: CIF, zip, folder, CSV(.gz) with 'cif', extxyz"),
    output: Path = OutputOption,
    elements: Optional[str] = SpaceOption,
    threshold: float = typer.Option(1e-3, help="probability cut-off of the ion swap"),
    max_elements: int = typer.Option(4), max_atoms: int = typer.Option(20),
    max_per_parent: int = typer.Option(50), max_candidates: Optional[int] = typer.Option(None),
    supercell: Optional[str] = typer.Option(None, help="repeat parents first, e.g. 2,1,1"),
    charge_balanced: bool = typer.Option(True, help="candidates holding an anion must be charge balanced"),
) -> None:
    """Symmetry-aware partial substitution: one structure per symmetry-distinct choice of swapped sites."""
    from gnome_loop.generate.saps import saps

    started = time.time()
    with _reported_errors():
        repeat = [int(v) for v in supercell.split(",")] if supercell else None
        if repeat is not None and (len(repeat) != 3 or min(repeat) < 1):
            raise ValueError("--supercell takes three positive integers, e.g. 2,1,1")
        items, read, space, known = _parents(parents, elements)
        refused: Counter = Counter()
        candidates = saps(items, space, known, threshold=threshold, max_elements=max_elements, max_atoms=max_atoms,
                          max_per_parent=max_per_parent, max_candidates=max_candidates, supercell=repeat,
                          charge_balanced=charge_balanced, rejected=refused)
        _finish_generate(output, "saps", candidates, started, space, max_atoms, max_elements, refused, parents=read)


@generate_app.command("random")
def generate_random(
    compositions: list[str] = typer.Argument(..., help="formulas, e.g. Li2O MgAl2O4"),
    output: Path = OutputOption,
    per_composition: int = typer.Option(10, help="random cells per formula"),
    space_group: Optional[list[int]] = typer.Option(None, "--space-group", help="restrict to these groups"),
    max_atoms: int = typer.Option(20), seed: int = typer.Option(0),
    time_limit: float = typer.Option(120.0, help="seconds in all"),
    relax: bool = typer.Option(False, help="push apart close atoms with a soft-sphere pre-relaxation"),
) -> None:
    """AIRSS-style random symmetric cells (pyxtal) for given compositions."""
    from gnome_loop.generate.random_search import random_search

    started = time.time()
    with _reported_errors():
        stats: dict = {}
        candidates = random_search(compositions, per_composition, max_atoms=max_atoms, seed=seed,
                                   time_limit=time_limit, stats=stats, space_groups=space_group or None,
                                   relax="soft-sphere" if relax else None)
        failed = {formula: record["error"] for formula, record in stats.items() if "error" in record}
        if failed and not candidates:
            raise ValueError("random search made nothing: " + "; ".join(failed.values()))
        for formula, error in failed.items():
            console.print(f"[yellow]skipped {formula}:[/] {error}")
        _finish_generate(output, "random", candidates, started, None, max_atoms, None, search=stats)


@generate_app.command("composition")
def generate_composition(
    elements: str = typer.Argument(..., help="chemical space, comma-separated, e.g. Li,Mn,O"),
    output: Path = OutputOption,
    n_compositions: int = typer.Option(10, help="best formulas handed to random search"),
    per_composition: int = typer.Option(4), max_elements: int = typer.Option(3), max_atoms: int = typer.Option(20),
    known: Optional[Path] = typer.Option(None, help="structures whose formulas count as known (skipped)"),
    model: Optional[Path] = typer.Option(None, help="a saved composition model to rank formulas by"),
    seed: int = typer.Option(0), time_limit: float = typer.Option(120.0, help="seconds of random search"),
) -> None:
    """Charge-balanced formulas (SMACT, GNoME's relaxed rules), best first, then random structures for them."""
    from gnome_loop.generate.composition import enumerate_candidates
    from gnome_loop.models.registry import load_model

    started = time.time()
    with _reported_errors():
        space = _elements(elements)
        known_formulas = _parents(known)[3] if known else set()
        stats: dict = {}
        candidates = enumerate_candidates(space, known_formulas, n_compositions, per_composition,
                                          max_elements=max_elements, max_atoms=max_atoms,
                                          model_predict=load_model(model) if model else None, seed=seed,
                                          time_limit=time_limit, stats=stats)
        _finish_generate(output, "composition", candidates, started, space, max_atoms, max_elements, search=stats)


@generate_app.command("import")
def generate_import(
    path: Path = typer.Argument(..., help="zip of CIFs, folder, CSV(.gz) with a 'cif' column, extxyz, POSCARs"),
    output: Path = OutputOption,
    elements: Optional[str] = SpaceOption,
    max_elements: Optional[int] = typer.Option(None), max_atoms: Optional[int] = typer.Option(None),
) -> None:
    """Structures from generative models (MatterGen, CrystaLLM, ...): validated, bad ones counted by reason."""
    from gnome_loop.generate.imported import import_structures

    started = time.time()
    with _reported_errors():
        report = import_structures(path, _elements(elements), max_atoms, max_elements)
        summary = report.to_json()
        _finish_generate(output, "import", report.accepted, started, None, None, None,
                         **{k: v for k, v in summary.items() if k != "accepted"})
    if report.rejected:
        out.print(f"import rejected {sum(report.rejected.values())} of {report.read}: {_counts(report.rejected)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; the campaign keeps what it committed — `gnome-loop resume` goes on")
        sys.exit(130)


if __name__ == "__main__":
    main()
