"""The train stage: the energy model retrained (or fine-tuned) on every entry with a
structure, and the NequIP pre-relaxer on the stored relaxation trajectories
(docs/architecture.md, step 7).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from gnome_loop.generate.generative import KINDS as GENERATIVE_KINDS
from gnome_loop.models.registry import make_model
from gnome_loop.models.nequip import NequIPConfig
from gnome_loop.models.nequip_train import average_neighbors, save_nequip, train_nequip, training_frames
from gnome_loop.models.pretrained import starting_model
from gnome_loop.stages.context import Decision, StageContext
from gnome_loop.store import Store, StoreError
from gnome_loop.structures import structure_from_json


def train(ctx: StageContext, round_: int) -> Decision:
    """Train the round's model into models/rNNN (and its pre-relaxer into models/rNNN/nequip), beside the
    generative models' weights of the round (models/rNNN/llm, flow: `generate.generative`)."""
    config = ctx.config
    entries = [e for e in ctx.store.entries() if e["structure"]]
    if not entries:
        raise StoreError(f"round {round_}: no entries with structures to train on (every oracle job failed? "
                         "see `gnome-loop status`); a campaign needs at least one evaluated phase")
    model = make_model(config.model, seed=config.seed + round_)
    start, how = starting_model(config.model, config.chemical_space.elements)
    fit = model.fit([structure_from_json(e["structure"]) for e in entries],
                    np.array([e["energy_per_atom"] for e in entries]),
                    [e["reduced_formula"] for e in entries], **({"init": start} if start is not None else {}))
    relative = Path("models") / f"r{round_:03d}"
    target = ctx.directory / relative
    for leftover in target.glob("*"):  # a killed run's; the generators' weights of the round stay
        if leftover.is_dir() and leftover.name not in GENERATIVE_KINDS:
            shutil.rmtree(leftover)
        elif leftover.is_file():
            leftover.unlink()
    model.save(target)
    metrics = {"model_val_mae": fit.get("val_mae"), "train_size": len(entries), "model_init": how}
    if config.prerelax.kind == "nequip":
        metrics.update(_train_potential(ctx, round_, entries, target / "nequip"))

    def record(store: Store) -> None:
        store.add_model(round_, 0, str(relative), fit.get("val_mae"))
        store.log("train", f"round {round_}: {model.name} trained {how} on {len(entries)} entries")
        store.update_round_metrics(round_, metrics)

    return Decision(record)


def _train_potential(ctx: StageContext, round_: int, entries: list[sqlite3.Row], target: Path) -> dict:
    """Train the NequIP pre-relaxer on every stored relaxation trajectory; its metrics."""
    settings = ctx.config.prerelax
    frames = training_frames([(structure_from_json(e["structure"]), json.loads(e["trajectory"]))
                              for e in entries if e["trajectory"]], settings.frame_stride, settings.max_frames)
    if not frames:
        return {"nequip_frames": 0}  # no trajectories yet (energies without relaxations): nothing to learn
    config = NequIPConfig(cutoff=settings.cutoff, irreps=settings.irreps, blocks=settings.blocks,
                          radial_hidden=settings.radial_hidden,
                          avg_neighbors=average_neighbors(frames, settings.cutoff))
    with ctx.progress(f"training NequIP ({len(frames)} frames)", 1) as advance:
        params, fit = train_nequip(frames, config, members=settings.members, epochs=settings.epochs,
                                   batch_size=settings.train_batch_size, patience=settings.patience,
                                   seed=ctx.config.seed + round_)
        advance(1)
    save_nequip(target, params, config, fit)
    return {"nequip_frames": len(frames), "nequip_energy_mae": fit.get("energy_mae_meV_per_atom"),
            "nequip_force_mae": fit.get("force_mae_meV_per_A")}
