"""A campaign report: PNG plots of the discovery metrics and a Markdown page showing them.

The figures use matplotlib's object-oriented `Figure` (rendered by Agg when saved),
never pyplot, so a report needs no display and changes no global backend. Each
figure function takes plain data and returns a `Figure`, usable without a campaign;
`write_report` gathers the data from the campaign's store.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pymatgen.analysis.phase_diagram import PDPlotter, PhaseDiagram
from pymatgen.core import Element
from pymatgen.entries.computed_entries import ComputedEntry
from pymatgen.util.string import latexify

from gnome_loop.campaign import Campaign
from gnome_loop.hull import STABLE_TOL, chemsys_of
from gnome_loop.metrics import hit_rate

MEV = 1000.0  # meV per eV
DPI = 120
MAX_DIAGRAMS = 3  # phase diagrams drawn when no system is asked for

CAPTIONS = {
    "hit_rate.png": "Hit rate and filter error per round",
    "ehull_histogram.png": "Distance to the hull of the evaluated candidates",
    "stable_count.png": "Stable phases found over the rounds",
}


def cumulative_hit_rates(evaluated: Sequence[int], stable: Sequence[int]) -> list[float | None]:
    """Stable / evaluated over all rounds up to and including each one."""
    rates, n_evaluated, n_stable = [], 0, 0
    for n_e, n_s in zip(evaluated, stable):
        n_evaluated, n_stable = n_evaluated + n_e, n_stable + n_s
        rates.append(hit_rate(n_stable, n_evaluated))
    return rates


def hit_rate_figure(rounds: Sequence[int], evaluated: Sequence[int], stable: Sequence[int],
                    filter_mae: Sequence[float | None]) -> Figure:
    """Hit rate per round and cumulative (%), beside the filter's MAE (eV/atom in, meV/atom shown)."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    rate_ax, mae_ax = fig.subplots(1, 2)
    per_round = [hit_rate(s, e) for e, s in zip(evaluated, stable)]
    rate_ax.plot(rounds, _scaled(per_round, 100), "o-", label="per round")
    rate_ax.plot(rounds, _scaled(cumulative_hit_rates(evaluated, stable), 100), "s--", label="cumulative")
    rate_ax.set_ylim(0, 100)
    rate_ax.legend()
    _decorate(rate_ax, "Hit rate (stable / evaluated)", "hit rate (%)", rounds)
    mae_ax.plot(rounds, _scaled(filter_mae, MEV), "o-", color="tab:red")
    mae_ax.set_ylim(bottom=0)
    _decorate(mae_ax, "Filter MAE on the evaluated candidates", "MAE (meV/atom)", rounds)
    return fig


def stable_count_figure(rounds: Sequence[int], stable: Sequence[int], new_stable: Sequence[int | None]) -> Figure:
    """New-stable candidates per round (bars) and the cumulative count of stable candidates (line)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(rounds, [n or 0 for n in new_stable], color="tab:green", alpha=0.7,
           label="new stable (compositions new to the references)")
    ax.plot(rounds, np.cumsum(stable), "o-", color="black", label="stable, cumulative")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside lower center", ncols=2)
    _decorate(ax, "Stable candidates found (judged when evaluated)", "candidates", rounds)
    return fig


def ehull_histogram_figure(e_hulls: dict[str, Sequence[float]], max_mev: float = 300.0,
                           bin_mev: float = 10.0) -> Figure:
    """One histogram per generator of E_hull (eV/atom in, meV/atom shown), overlaid.

    Values above `max_mev` are left out of the bars and counted in the legend."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    bins = np.arange(0.0, max_mev + bin_mev, bin_mev)
    for name, values in sorted(e_hulls.items()):
        mev = np.asarray(values, dtype=float) * MEV
        shown = np.clip(mev[mev <= max_mev], 0.0, None)  # rounding can give -1e-12
        n_stable = int(np.sum(mev <= STABLE_TOL * MEV))
        ax.hist(shown, bins=bins, histtype="stepfilled", alpha=0.5, edgecolor="black", linewidth=0.8,
                label=f"{name}: {len(mev)} evaluated, {n_stable} stable, {len(mev) - len(shown)} > {max_mev:g}")
    if e_hulls:
        ax.legend(title="generator")
    else:
        _note(ax, "no evaluated candidates yet")
    ax.set_xlim(0, max_mev)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Distance to the hull of the evaluated candidates", fontsize=13)
    ax.set_xlabel(r"$E_\mathrm{hull}$ (meV/atom)", fontsize=12)
    ax.set_ylabel("candidates", fontsize=12)
    ax.grid(alpha=0.3)
    return fig


def system_entries(entries: Sequence[ComputedEntry], chemsys: str) -> tuple[list[Element], list[ComputedEntry]]:
    """The elements of a binary or ternary system ('Cu-Au', in that order) and the entries
    within it; ValueError, naming the system, when it cannot have a phase diagram."""
    symbols = chemsys.split("-")
    unknown = [s for s in symbols if not Element.is_valid_symbol(s)]
    if unknown:
        raise ValueError(f"chemical system {chemsys!r}: unknown element(s) {', '.join(unknown)}")
    if len(set(symbols)) not in (2, 3) or len(set(symbols)) != len(symbols):
        raise ValueError(f"chemical system {chemsys!r}: phase diagrams are drawn for 2 or 3 distinct elements")
    system = frozenset(symbols)
    inside = [e for e in entries if chemsys_of(e.composition) <= system]
    references = {chemsys_of(e.composition) for e in inside if len(e.composition.elements) == 1}
    missing = [s for s in symbols if frozenset([s]) not in references]
    if missing:
        raise ValueError(f"chemical system {chemsys!r}: the campaign has no elemental reference "
                         f"for {', '.join(missing)}, so no hull")
    return [Element(s) for s in symbols], inside


def phase_diagram_figure(entries: Sequence[ComputedEntry], elements: Sequence[Element],
                         discoveries: set[str], max_unstable_mev: float = 100.0,
                         known_label: str = "stable phase") -> Figure:
    """The hull of `entries` (a binary or ternary system, all elemental references
    present), with the entries whose `entry_id` is in `discoveries` drawn as red stars
    and the other hull phases as blue dots labelled `known_label`.

    Coordinates come from pymatgen's `PDPlotter.pd_plot_data`; its `get_plot` draws on
    pyplot's global figure and marks new phases only by marker shape, so the plot is
    drawn here. Unstable entries up to `max_unstable_mev` above the hull are shown grey."""
    diagram = PhaseDiagram(list(entries), elements=list(elements))
    lines, vertices, unstable = PDPlotter(diagram, backend="matplotlib").pd_plot_data
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax = fig.add_subplot()
    for x, y in lines:
        ax.plot(x, y, "-", color="0.3", linewidth=1.5, zorder=1)
    points = [(entry, coords) for coords, entry in vertices.items()] + list(unstable.items())
    near = [c for e, c in unstable.items()
            if e.entry_id not in discoveries and diagram.get_e_above_hull(e) * MEV <= max_unstable_mev]
    known = [c for c, e in vertices.items() if e.entry_id not in discoveries]
    found = [c for e, c in points if e.entry_id in discoveries]
    _scatter(ax, near, "s", 30, "0.65", f"unstable, < {max_unstable_mev:g} meV/atom above the hull")
    _scatter(ax, known, "o", 70, "tab:blue", known_label)
    _scatter(ax, found, "*", 320, "tab:red", "stable, discovered by the campaign")
    ternary = len(elements) == 3
    for coords, entry in vertices.items():
        compound = len(entry.composition.elements) > 1
        # away from the triangle's centre; in a binary, compounds below the hull, elements above
        if ternary:
            direction = np.asarray(coords) - np.array([0.5, math.sqrt(3) / 6])
        else:
            direction = np.array([0.0, -1.0 if compound else 1.0])
        _label(ax, coords, latexify(entry.name), direction / (np.linalg.norm(direction) or 1.0), rotate=compound,
               color="tab:red" if entry.entry_id in discoveries else "black")
    name = "-".join(el.symbol for el in elements)
    ax.set_title(f"{name} phase diagram", fontsize=13)
    if ternary:
        ax.set_aspect("equal")
        ax.margins(0.12)
        ax.axis("off")
    else:
        first, second = (el.symbol for el in elements)
        ax.margins(x=0.08, y=0.3)
        ax.set_xlabel(f"x in {first}$_{{1-x}}${second}$_x$", fontsize=12)
        ax.set_ylabel("formation energy (eV/atom)", fontsize=12)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=10)
    return fig


def top_systems(entries: Sequence[ComputedEntry], discoveries: set[str], limit: int = MAX_DIAGRAMS) -> list[str]:
    """The binary and ternary systems with the most discoveries, most first (ties by name)."""
    counts = Counter("-".join(sorted(chemsys_of(e.composition))) for e in entries
                     if e.entry_id in discoveries and len(e.composition.elements) in (2, 3))
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def write_report(campaign: Campaign, folder: Path, chemsys: list[str] | None = None) -> list[Path]:
    """Write the plots and `report.md` into `folder` and return their paths (report.md last).

    Phase diagrams are drawn for each of `chemsys` ('Cu-Au', 'Li-Co-O'), or for the up to
    3 binary or ternary systems with the most discoveries (oracle entries now stable).
    A system that cannot be drawn raises ValueError before anything is written."""
    table = campaign.round_table()
    rows = [r for r in table if r["round"] > 0 and r["stable"] is not None]
    rounds = [r["round"] for r in rows]
    evaluated, stable = [r["evaluated"] for r in rows], [r["stable"] for r in rows]
    entries, discoveries = _entries(campaign)
    provenance = campaign.provenance()
    known = "known stable phase (Materials Project, DFT)" if provenance["reference_hull"] == "mp" \
        else "stable reference phase"
    systems = chemsys if chemsys is not None else top_systems(entries, discoveries)
    diagrams = {}
    for name in systems:
        elements, inside = system_entries(entries, name)
        diagrams[f"phase_diagram_{name}.png"] = phase_diagram_figure(inside, elements, discoveries, known_label=known)
    figures = {
        "hit_rate.png": hit_rate_figure(rounds, evaluated, stable, [r["filter_mae"] for r in rows]),
        "ehull_histogram.png": ehull_histogram_figure(_ehulls_by_generator(campaign)),
        "stable_count.png": stable_count_figure(rounds, stable, [r["new_stable"] for r in rows]),
        **diagrams,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, figure in figures.items():
        figure.savefig(folder / filename, dpi=DPI)
        written.append(folder / filename)
    page = folder / "report.md"
    page.write_text(_markdown(campaign.config.name, rows, list(figures), provenance["hull"],
                              [r for r in table if r["unjudged"]]))
    return written + [page]


def _entries(campaign: Campaign) -> tuple[list[ComputedEntry], set[str]]:
    """Every entry of the campaign's hull (MP's phases and the candidates, when judged
    against MP's hull), and the ids of its discoveries."""
    rows = campaign.store.hull_members()
    entries = [ComputedEntry(r["composition"], r["energy_corrected"], entry_id=r["id"]) for r in rows]
    return entries, {r["id"] for r in rows if r["source"] == "oracle" and r["is_stable"]}


def _ehulls_by_generator(campaign: Campaign) -> dict[str, list[float]]:
    """E_hull (eV/atom) of the candidates evaluated in the rounds, by generator."""
    by_generator: dict[str, list[float]] = {}
    for row in campaign.store.evaluated_ehulls():
        by_generator.setdefault(row["generator"], []).append(row["e_hull"])
    return by_generator


def _markdown(name: str, rows: list[dict], figures: list[str], hull_note: str | None,
              unjudged: list[dict] = ()) -> str:
    """The report page: which hull, the per-round table, the entries without an E_hull
    and why (the round table rows in `unjudged`, round 0 included), then every figure
    by relative link."""
    cumulative = cumulative_hit_rates([r["evaluated"] for r in rows], [r["stable"] for r in rows])
    lines = [f"# Campaign report: {name}", "",
             f"Hull: {hull_note or 'not recorded (a campaign made before gnome_loop recorded it)'}.", "",
             f"Stable: within {STABLE_TOL * MEV:g} meV/atom of the hull when evaluated. "
             "Filter MAE: the model's error on the evaluated candidates.", "",
             "| Round | Evaluated | Stable | New stable | Hit rate | Cumulative hit rate | Filter MAE (meV/atom) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row, total in zip(rows, cumulative):
        lines.append(f"| {row['round']} | {row['evaluated']} | {row['stable']} | {_cell(row['new_stable'])} | "
                     f"{_cell(hit_rate(row['stable'], row['evaluated']), '.1%')} | {_cell(total, '.1%')} | "
                     f"{_cell(row['filter_mae'], '.1f', MEV)} |")
    if not rows:
        lines.append("| – | no evaluated rounds yet | | | | | |")
    if unjudged:
        lines += ["", "Entries without an E_hull (not counted as stable):", ""]
        lines += [f"- round {row['round']}: {row['unjudged']} ("
                  + ", ".join(f"{reason}: {n}" for reason, n in sorted(row["unjudged_reasons"].items())) + ")"
                  for row in unjudged]
    for filename in figures:
        caption = CAPTIONS.get(filename) or f"{filename[len('phase_diagram_'):-len('.png')]} phase diagram"
        lines += ["", f"## {caption}", "", f"![{caption}]({filename})"]
    return "\n".join(lines) + "\n"


def _cell(value: float | int | None, spec: str = "", factor: float = 1) -> str:
    return "–" if value is None else format(value * factor, spec)


def _scaled(values: Sequence[float | None], factor: float) -> list[float]:
    """Values times `factor`, None as NaN (a gap in the line)."""
    return [math.nan if v is None else v * factor for v in values]


def _scatter(ax: Axes, coords: list, marker: str, size: float, color: str, label: str) -> None:
    if coords:
        xs, ys = zip(*coords)
        ax.scatter(xs, ys, s=size, marker=marker, color=color, edgecolors="black", linewidths=0.8,
                   zorder=3, label=label)


def _label(ax: Axes, coords: tuple[float, float], text: str, direction: np.ndarray, rotate: bool,
           color: str) -> None:
    """Write `text` just off `coords` towards `direction` (a unit vector); a rotated label
    runs along that direction, so crowded compounds do not overlap."""
    angle = math.degrees(math.atan2(direction[1], direction[0]))
    leftward = direction[0] < -1e-9
    ha = "right" if leftward else "left" if rotate or direction[0] > 1e-9 else "center"
    va = "center" if rotate or abs(direction[1]) < 1e-9 else "bottom" if direction[1] > 0 else "top"
    ax.annotate(text, coords, xytext=9 * direction, textcoords="offset points", fontsize=12, color=color,
                ha=ha, va=va, rotation=(angle + 180 if leftward else angle) if rotate else 0,
                rotation_mode="anchor")


def _decorate(ax: Axes, title: str, ylabel: str, rounds: Sequence[int]) -> None:
    """Title, labels, integer round ticks and a grid; a note when there is nothing to show."""
    ax.set_title(title, fontsize=13)
    ax.set_xlabel("round", fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.set_xticks(list(rounds))
    ax.grid(alpha=0.3)
    if not rounds:
        _note(ax, "no evaluated rounds yet")


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4")
