"""What every stage is given: the campaign's config, store and directory, its
schedulers, and the reads that several stages share (the hull, the model, the
chemical space). See docs/architecture.md, "One round, stage by stage".
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.config import CampaignConfig
from gnome_loop.execute import Scheduler, make_scheduler
from gnome_loop.hull import Hull
from gnome_loop.models.base import EnergyModel
from gnome_loop.models.registry import load_model
from gnome_loop.store import PARENT, Job, Store, StoreError
from gnome_loop.structures import ChemicalSpace, structure_from_json

#: progress(label, total) -> context manager yielding advance(n=1)
Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


@dataclass
class Decision:
    """What a stage decided: the jobs it waits for (the round stays at this stage), or
    its final writes, which the campaign commits with the move to the next stage."""

    record: Callable[[Store], None] = lambda store: None
    waiting: int = 0


@dataclass
class StageContext:
    """One campaign as its stages see it. The hull is kept for the life of the process
    and given only new entries, so a stage rebuilds only the systems that changed."""

    directory: Path
    config: CampaignConfig
    store: Store
    progress: Progress = no_progress
    say: Callable[[str], None] = lambda msg: None
    _scheduler: Scheduler | None = field(default=None, init=False)
    _screening: Scheduler | None = field(default=None, init=False)  # a dask cluster for screening alone
    _hull: Hull | None = field(default=None, init=False)

    # --- schedulers ------------------------------------------------------------------------
    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = make_scheduler(self.config.scheduler, self.directory)
        return self._scheduler

    def screening_client(self):
        """The dask client screening shards run on: the `local` scheduler's cluster; with
        another scheduler, the dask scheduler at `scheduler.address` (e.g. a dask-jobqueue
        cluster while DFT goes through sbatch); None, in this process, without one."""
        settings = self.config.scheduler
        if settings.kind == "local":
            return self.scheduler.client()
        if not settings.address:
            return None
        if self._screening is None:
            self._screening = make_scheduler(settings.model_copy(update={"kind": "local"}), self.directory)
        return self._screening.client()

    def close_schedulers(self) -> None:
        for scheduler in (self._scheduler, self._screening):
            if scheduler is not None:
                scheduler.close()
        self._scheduler = self._screening = None

    def jobdir(self, job: Job) -> Path:
        return self.directory / job.workdir

    # --- shared reads ----------------------------------------------------------------------
    def oracle_label(self) -> str:
        oracle = self.config.oracle
        return oracle.calculator if oracle.kind == "ase" else oracle.kind

    def scale(self) -> str:
        """The energy scale of the campaign's hull, fixed when the snapshot was taken."""
        return self.store.meta("scale") or self.config.oracle.scale()

    def dropped_elements(self) -> list[str]:
        """The elements the campaign went on without, for want of a terminal after round 0."""
        return json.loads(self.store.meta("dropped_elements") or "[]")

    def space(self) -> ChemicalSpace:
        """The chemical space the generators work in: the config's, less the elements
        dropped at the end of round 0 for want of a terminal."""
        return self.config.chemical_space.space().without(self.dropped_elements())

    def hull(self) -> Hull:
        """The campaign's hull, brought up to date with the store's entries."""
        if self._hull is None:
            self._hull = Hull(scale=self.scale())
        self._hull.add(e for e in self.hull_entries() if e.entry_id not in self._hull)
        return self._hull

    def hull_entries(self, parents: bool = False) -> list[ComputedEntry]:
        """The entries of the campaign's hull as the hull sees it (composition and corrected
        energy); with `parents`, instead the round-0 structures kept only as parents, which
        are judged against the hull but are not part of it."""
        return [ComputedEntry(Composition(e["composition"]), e["energy_corrected"], entry_id=e["id"],
                              data={"scale": e["scale"]})
                for e in self.store.entries(with_structure=False) if (e["source"] == PARENT) == parents]

    def known_structures(self) -> tuple[set[str], list[tuple[str, Structure, float | None]]]:
        """The reduced formulas of every entry, and (id, structure, E_hull) of those with a
        structure: what the substitution generators start from."""
        entries = self.store.entries()
        return ({e["reduced_formula"] for e in entries},
                [(e["id"], structure_from_json(e["structure"]), e["e_hull"]) for e in entries if e["structure"]])

    def known_phases(self, labels: set[str]) -> list[tuple[str, str, Structure]]:
        """(id, symmetry label, structure) of the entries in the dedup buckets `labels`."""
        return [(e["id"], e["symmetry_label"], structure_from_json(e["structure"]))
                for e in self.store.entries(labels=labels) if e["structure"]]

    def model(self) -> EnergyModel:
        """The latest trained energy model."""
        row = self.store.latest_model()
        if row is None:
            raise StoreError("no trained model in the campaign; round 0 must finish first")
        return load_model(self.directory / row["path"])
