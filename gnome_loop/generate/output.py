"""Candidates to files: extended XYZ (one frame per candidate) plus a JSON summary.

Each frame carries the candidate's id, generator, parents and generator info in its
`info` (ASE's extxyz comment line), so the file reads back into ASE, pymatgen or
`gnome-loop predict` / `generate import` without losing where a structure came from.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from ase.io import write as ase_write
from pymatgen.io.ase import AseAtomsAdaptor

from gnome_loop.structures import Candidate, ChemicalSpace, validate_structure


def checked(candidates: Sequence[Candidate], space: ChemicalSpace = ChemicalSpace()) -> tuple[list[Candidate], Counter]:
    """The candidates that pass `validate_structure` in `space`, and the others counted by reason category."""
    kept, rejected = [], Counter()
    for candidate in candidates:
        reason = validate_structure(candidate.structure, space)
        if reason:
            rejected[reason.category] += 1
        else:
            kept.append(candidate)
    return kept, rejected


def write_candidates(path: str | Path, candidates: Sequence[Candidate], summary: dict) -> Path:
    """Write `candidates` to `path` (extxyz) and `summary` (plus counts per generator)
    beside it as `<path stem>.json`; returns the summary's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for candidate in candidates:
        atoms = AseAtomsAdaptor.get_atoms(candidate.structure)
        atoms.info.update({"id": candidate.id, "generator": candidate.generator,
                           "parent_ids": ",".join(candidate.parent_ids),
                           "generator_info": json.dumps(candidate.info, sort_keys=True, default=str)})
        frames.append(atoms)
    ase_write(path, frames, format="extxyz")
    summary_path = path.with_suffix(".json")
    summary = {**summary, "written": len(candidates), "output": str(path),
               "by_generator": dict(Counter(c.generator for c in candidates))}
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary_path
