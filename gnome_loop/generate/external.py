"""External generators: any installed generative model's command line (MatterGen,
CrystaLLM's scripts, ...) run once per round, and what it wrote imported as candidates
(issue 19, item 4).

The command is an argument list run without a shell (`subprocess`, never `shell=True`):
a config value with `;`, `|` or `$(...)` reaches the program as that text. Placeholders
in braces are replaced in each argument (`PLACEHOLDERS`); other braces stay as written.
The program runs in `{out}`, a fresh folder of the round (`generated/rNNN/<name>/`),
with its output in `<name>.log` beside it; what it leaves in `{out}` goes through the
importer (`imported.import_structures`), which counts bad entries by reason.

A command that is not found, exits non-zero, runs past its time limit or writes no
structure is a failure of that generator in that round, returned with its reason,
never raised. Its outcome is written to `<name>.json` beside the folder when the
command ends, so a generate stage killed and re-run reads the same folder again (the
same candidates: ids are content hashes) instead of running the command twice; a
command cut off by the kill left no outcome and runs again in an emptied folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Sequence

from gnome_loop.generate.imported import import_structures
from gnome_loop.structures import Candidate, ChemicalSpace

#: What a command's arguments may name in braces, and what each becomes.
PLACEHOLDERS = {
    "elements": "the chemical space's elements, comma-separated (e.g. Co,Li,O)",
    "max_elements": "most elements per compound",
    "max_atoms": "most atoms per cell",
    "budget": "the generator's max_candidates",
    "out": "the fresh folder the command writes its structures into (absolute)",
    "seed": "a seed of the round (the same on a re-run)",
    "round": "the round number",
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Characters of the log's last line kept in a failure's reason.
REASON_CHARS = 300


def unknown_placeholders(argument: str) -> list[str]:
    """The `{names}` in an argument that are not placeholders."""
    return [name for name in _PLACEHOLDER.findall(argument) if name not in PLACEHOLDERS]


def substitute(command: Sequence[str], values: dict[str, str]) -> list[str]:
    """The command with each `{placeholder}` replaced by its value (nothing else changes)."""
    return [_PLACEHOLDER.sub(lambda match: values.get(match[1], match[0]), argument) for argument in command]


class ExternalResult(NamedTuple):
    """One command's round: its accepted candidates, the importer's rejects, the
    structures it wrote, and why it failed (None when it did not)."""

    candidates: list[Candidate]
    rejected: Counter
    written: int
    failure: str | None


def run_external(name: str, command: Sequence[str], timeout_s: float, folder: Path, values: dict[str, str],
                 space: ChemicalSpace) -> ExternalResult:
    """Run `command` (placeholders from `values`, `out` set here) into `folder / name` once
    per round and import what it wrote there; candidates carry `name` as their generator."""
    out, outcome_file = folder / name, folder / f"{name}.json"
    if outcome_file.is_file():
        outcome = json.loads(outcome_file.read_text())
    else:
        if out.exists():  # a run cut off by a kill: start again from nothing
            shutil.rmtree(out)
        out.mkdir(parents=True)
        argv = substitute(command, {**values, "out": str(out.resolve())})
        outcome = _run(argv, out, folder / f"{name}.log", timeout_s)
        temporary = outcome_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(outcome, indent=1) + "\n")
        os.replace(temporary, outcome_file)
    if outcome["failure"]:
        return ExternalResult([], Counter(), 0, outcome["failure"])
    report = import_structures(out, space, source=name)
    if report.read == 0:
        skipped = f" ({len(report.skipped_files)} files without structures)" if report.skipped_files else ""
        return ExternalResult([], Counter(), 0, f"wrote no structures into {out}{skipped}")
    candidates = [replace(candidate, generator=name) for candidate in report.accepted]
    return ExternalResult(candidates, report.rejected, report.read, None)


def _run(argv: list[str], cwd: Path, log: Path, timeout_s: float) -> dict:
    """Run `argv` in `cwd`, output into `log`, in its own process group (a time-out kills
    the whole group); {"argv", "seconds", "failure"}."""
    started = time.monotonic()
    failure = None
    with log.open("wb") as output:
        try:
            process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            failure = f"command not found: {argv[0]}"
        except PermissionError:
            failure = f"command not executable: {argv[0]}"
        else:
            try:
                code = process.wait(timeout=timeout_s)
                if code != 0:
                    failure = f"exit status {code}{_last_line(log)}"
            except subprocess.TimeoutExpired:
                failure = f"timed out after {timeout_s:g} s"
            finally:
                if process.poll() is None:  # timed out, or this process was interrupted
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    return {"argv": argv, "seconds": round(time.monotonic() - started, 3), "failure": failure}


def _last_line(log: Path) -> str:
    """': ' and the last non-empty line the command printed, or nothing."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1][:REASON_CHARS]}" if lines else ""
