"""The job-folder protocol shared by every oracle and scheduler.

A job is a folder holding `job.json` (what to relax and with which oracle), the
oracle's own input files, `run.sh` (the job script a cluster or a user runs) and,
once it has run, `result.json` (an :class:`OracleResult`). Any process that can
read the folder can run the job: the campaign in-process, a dask worker, a SLURM
array task, or a user running `bash run.sh` (or `gnome-loop run-job JOBDIR`).

`run.sh` writes two markers around the oracle's commands: `gnome_loop.started`
(host, SLURM job id, time) and `gnome_loop.exit` (the exit status), so the state
of a job can be read from its folder even when the scheduler's records are lost.
An oracle whose program writes its own outputs (VASP) turns them into
`result.json` when `read_result` finds them finished. JSON files are written
atomically, so a reader never sees half a file from a writer that was killed.
Writing, running and reading a job folder needs the oracle registry, so those three
live above it, in `gnome_loop.oracle.jobfolder`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from pymatgen.core import Structure

from gnome_loop.structures import MAX_VOLUME_FACTOR, validate_structure

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
SCRIPT_FILE = "run.sh"
STARTED_MARKER = "gnome_loop.started"
EXIT_MARKER = "gnome_loop.exit"
#: Elements whose solids are molecules, rings, chains or layers held together by van der
#: Waals forces: H, N, O, F, P, S, Se, the halogens and the noble gases. A potential
#: without dispersion (PBE-like DFT, CHGNet) barely binds these units to each other.
VAN_DER_WAALS_ELEMENTS = frozenset(
    {"H", "He", "N", "O", "F", "Ne", "P", "S", "Cl", "Ar", "Se", "Br", "Kr", "I", "Xe", "At", "Rn"})


@dataclass
class OracleResult:
    """What an oracle made of one structure.

    `energy` is the total energy of the relaxed cell in eV on the oracle's energy
    scale. `trajectory` holds per-step `energies`, `forces`, `stresses` (Voigt,
    eV/Å^3, ASE's sign convention, empty when the calculator has none), `cells` and
    cartesian `positions`: training data for interatomic potentials. `info` holds
    what else the oracle knows (run type, uncorrected energy, corrections).
    """

    ok: bool
    error: str | None = None
    energy: float | None = None
    structure: Structure | None = None
    trajectory: dict = field(default_factory=dict)
    attempt: int = 0
    wall_s: float = 0.0
    steps: int = 0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the structure as `Structure.as_dict()`)."""
        data = asdict(self)
        data["structure"] = self.structure.as_dict() if self.structure is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "OracleResult":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("structure") is not None:
            data["structure"] = Structure.from_dict(data["structure"])
        return cls(**data)


class Oracle(Protocol):
    """Turns a structure into a relaxed structure and its total energy, in a job folder.

    `write_inputs` writes the files the job needs and returns the shell lines that
    do the work (they run inside the folder, from `run.sh`); `run` does the job
    now, in this process; `collect` reads the result of a run that happened
    elsewhere (None while it has not finished, or when the oracle writes
    `result.json` itself). `structure` is always the job's initial structure.
    """

    name: str
    scale: str

    def write_inputs(self, jobdir: Path, structure: Structure) -> str: ...

    def run(self, jobdir: Path, structure: Structure) -> OracleResult: ...

    def collect(self, jobdir: Path, structure: Structure) -> OracleResult | None: ...


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file in the same folder and `os.replace`.

    A reader sees the old file or the new one, never a partial write.
    """
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def write_json_atomic(path: Path, data: dict | list) -> None:
    """Write `data` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(data))


def job_script(job_id: str, attempt: int, body: str) -> str:
    """`run.sh`: enter the folder, mark the start, run `body`, record its exit status."""
    return (
        "#!/usr/bin/env bash\n"
        f"# gnome_loop job {job_id}, attempt {attempt}: run it from anywhere with `bash run.sh`\n"
        'cd "$(dirname "$0")" || exit 1\n'
        f'echo "attempt {attempt} $(hostname) ${{SLURM_JOB_ID:-}} $(date +%s)" > {STARTED_MARKER}\n'
        f"{body.rstrip()}\n"
        "status=$?\n"
        f'echo "$status attempt {attempt}" > {EXIT_MARKER}\n'
        'exit "$status"\n'
    )


def _current_attempt(jobdir: Path) -> int | None:
    try:
        return json.loads((jobdir / JOB_FILE).read_text())["attempt"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _marker_attempt(path: Path) -> int | None:
    """The attempt a marker was written by (None: unreadable, absent, or written by no attempt)."""
    try:
        words = path.read_text().split()
        return int(words[words.index("attempt") + 1])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def has_started(jobdir: Path | str) -> bool:
    """Whether `run.sh` of the folder's current attempt has started."""
    jobdir = Path(jobdir)
    marker = jobdir / STARTED_MARKER
    return marker.exists() and _marker_attempt(marker) == _current_attempt(jobdir)


def exit_status(jobdir: Path | str) -> int | None:
    """The exit status `run.sh` of the current attempt recorded, None while it has not ended
    (or never ran). A marker left by an earlier attempt's script does not count."""
    jobdir = Path(jobdir)
    if _marker_attempt(jobdir / EXIT_MARKER) != _current_attempt(jobdir):
        return None
    try:
        return int((jobdir / EXIT_MARKER).read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def explosion(initial: Structure, relaxed: Structure) -> str | None:
    """Why a relaxation of `initial` into `relaxed` blew up, or None when it did not.

    Every relaxed cell must be finite, keep its atoms apart (0.5 Å and half a covalent
    bond) and keep a sane volume per atom (2 to 200 Å^3): `validate_structure`. These
    absolute tests catch a collapse and a runaway expansion whatever the cell.

    The relative test, volume per atom changed more than `MAX_VOLUME_FACTOR` times,
    applies only to dense cells: more than one atom, and at least one element outside
    `VAN_DER_WAALS_ELEMENTS`. A one-atom cell has no geometry to break, only a volume,
    often a guess (an fcc cell of touching spheres); and a cell made only of molecule-
    forming elements (S, P, I, Cl2, O2, ClO2, ...) legitimately swells far from a
    guessed start when its molecules drift apart, unbound without dispersion: in the
    quickstart, CHGNet grew a one-atom S cell 3.3 times and lost S's only reference.
    A molecule in a box keeps its cell (`relax_cell` is off for it), so only the
    absolute tests can fail it.
    """
    ratio = (relaxed.volume / len(relaxed)) / (initial.volume / len(initial))
    dense = len(initial) > 1 and not {el.symbol for el in initial.composition.elements} <= VAN_DER_WAALS_ELEMENTS
    if dense and not 1 / MAX_VOLUME_FACTOR <= ratio <= MAX_VOLUME_FACTOR:
        return f"volume per atom changed by a factor {ratio:.3g}"
    return validate_structure(relaxed)
