"""`gnome-loop generate METHOD ...`: one generator at a time, outside any campaign;
each verb writes an extxyz frame per candidate and a JSON summary beside it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from gnome_loop.terminal import console, counts_text, out, reported_errors

if TYPE_CHECKING:
    from gnome_loop.structures import ChemicalSpace

generate_app = typer.Typer(help="Make candidates with one generator, outside any campaign: extxyz + JSON summary.",
                           no_args_is_help=True)

SpaceOption = typer.Option(None, "--elements", help="chemical space, comma-separated (default: the inputs' elements)")
ParentsArgument = typer.Argument(..., help="parent structures: CIF, zip, folder, CSV(.gz) with 'cif', extxyz")
ChargeBalancedOption = typer.Option(True, help="candidates holding an anion must be charge balanced")
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


def _space(elements: list[str] | None = None, max_elements: int | None = None,
           max_atoms: int | None = None) -> ChemicalSpace:
    """The chemical space of a verb's options (None: no bound)."""
    from gnome_loop.structures import ChemicalSpace

    return ChemicalSpace(elements, max_elements, max_atoms)


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


def _finish_generate(output: Path, name: str, candidates: list, started: float, space: ChemicalSpace,
                     refused: Counter | None = None, **summary) -> None:
    """Write the candidates valid in `space` and the summary; `refused` counts what the generator
    itself turned down."""
    from gnome_loop.generate.output import checked, write_candidates

    kept, rejected = checked(candidates, space)
    rejected.update(refused or Counter())
    summary_path = write_candidates(output, kept, {
        "generator": name, "generated": len(candidates) + sum((refused or Counter()).values()),
        "rejected": dict(rejected),
        "seconds": round(time.time() - started, 2), **summary})
    out.print(f"{name}: {len(kept)} candidates written to {output}"
              + (f"; rejected {sum(rejected.values())}: {counts_text(rejected)}" if rejected else "")
              + f" (summary: {summary_path}, {time.time() - started:.1f} s)")


@generate_app.command("substitution")
def generate_substitution(
    parents: Path = ParentsArgument,
    output: Path = OutputOption,
    elements: Optional[str] = SpaceOption,
    threshold: float = typer.Option(1e-3, help="substitution probability cut-off (GNoME: 0.001)"),
    max_elements: int = typer.Option(3), max_atoms: int = typer.Option(20),
    max_candidates: Optional[int] = typer.Option(None),
    charge_balanced: bool = ChargeBalancedOption,
) -> None:
    """Whole-species ionic substitution (Hautier et al. with GNoME's λ ≥ 0): new compositions only."""
    from gnome_loop.generate.substitution import substitute

    started = time.time()
    with reported_errors():
        items, read, space, known = _parents(parents, elements)
        refused: Counter = Counter()
        candidates = substitute(items, space, known, threshold=threshold, max_elements=max_elements,
                                max_atoms=max_atoms, charge_balanced=charge_balanced, max_candidates=max_candidates,
                                rejected=refused)
        _finish_generate(output, "substitution", candidates, started, _space(space, max_elements, max_atoms),
                         refused, parents=read)


@generate_app.command("saps")
def generate_saps(
    parents: Path = ParentsArgument,
    output: Path = OutputOption,
    elements: Optional[str] = SpaceOption,
    threshold: float = typer.Option(1e-3, help="probability cut-off of the ion swap"),
    max_elements: int = typer.Option(4), max_atoms: int = typer.Option(20),
    max_per_parent: int = typer.Option(50), max_candidates: Optional[int] = typer.Option(None),
    supercell: Optional[str] = typer.Option(None, help="repeat parents first, e.g. 2,1,1"),
    charge_balanced: bool = ChargeBalancedOption,
) -> None:
    """Symmetry-aware partial substitution: one structure per symmetry-distinct choice of swapped sites."""
    from gnome_loop.generate.saps import saps

    started = time.time()
    with reported_errors():
        repeat = [int(v) for v in supercell.split(",")] if supercell else None
        if repeat is not None and (len(repeat) != 3 or min(repeat) < 1):
            raise ValueError("--supercell takes three positive integers, e.g. 2,1,1")
        items, read, space, known = _parents(parents, elements)
        refused: Counter = Counter()
        candidates = saps(items, space, known, threshold=threshold, max_elements=max_elements, max_atoms=max_atoms,
                          max_per_parent=max_per_parent, max_candidates=max_candidates, supercell=repeat,
                          charge_balanced=charge_balanced, rejected=refused)
        _finish_generate(output, "saps", candidates, started, _space(space, max_elements, max_atoms), refused,
                         parents=read)


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
    with reported_errors():
        stats: dict = {}
        candidates = random_search(compositions, per_composition, max_atoms=max_atoms, seed=seed,
                                   time_limit=time_limit, stats=stats, space_groups=space_group or None,
                                   relax="soft-sphere" if relax else None)
        failed = {formula: record["error"] for formula, record in stats.items() if "error" in record}
        if failed and not candidates:
            raise ValueError("random search made nothing: " + "; ".join(failed.values()))
        for formula, error in failed.items():
            console.print(f"[yellow]skipped {formula}:[/] {error}")
        _finish_generate(output, "random", candidates, started, _space(max_atoms=max_atoms), search=stats)


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
    with reported_errors():
        space = _elements(elements)
        known_formulas = _parents(known)[3] if known else set()
        stats: dict = {}
        candidates = enumerate_candidates(space, known_formulas, n_compositions, per_composition,
                                          max_elements=max_elements, max_atoms=max_atoms,
                                          model_predict=load_model(model) if model else None, seed=seed,
                                          time_limit=time_limit, stats=stats)
        _finish_generate(output, "composition", candidates, started, _space(space, max_elements, max_atoms),
                         search=stats)


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
    with reported_errors():
        report = import_structures(path, _space(_elements(elements), max_elements, max_atoms))
        summary = report.to_json()
        _finish_generate(output, "import", report.accepted, started, _space(),
                         **{k: v for k, v in summary.items() if k != "accepted"})
    if report.rejected:
        out.print(f"import rejected {sum(report.rejected.values())} of {report.read}: {counts_text(report.rejected)}")
