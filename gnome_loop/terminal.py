"""What the command lines share: the consoles, the exit codes, one clear line per
known failure, progress bars and number formats.

Exit codes: 0 done, 1 internal error, 2 bad input, 3 waiting for oracle jobs,
4 the campaign is locked by another process.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_WAITING, EXIT_LOCKED = 0, 1, 2, 3, 4

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 120)


@contextmanager
def reported_errors() -> Iterator[None]:
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
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


def fmt(value, scale: float = 1.0, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}"
    return str(value)


def counts_text(counts: dict[str, int]) -> str:
    """'2 × reason, 1 × other reason', most common first."""
    return ", ".join(f"{count} × {reason}" for reason, count in Counter(counts).most_common())
