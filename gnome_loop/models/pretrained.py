"""The pretrained energy models that ship inside the package, and the rules of the data
they were trained on.

`scripts/pretrain.py` trains them on Materials Project data (the structure ensemble
on `mp37k`, the composition ensemble on matbench's formation energies) and writes
them into `gnome_loop/models/pretrained/<kind>/` with a model card; `load_pretrained`
reads them back. A campaign fine-tunes them on its own entries (GNoME's filter knew
MP before its first round, Merchant et al. 2023).
"""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Composition

from gnome_loop.models.base import EnergyModel, load_model, read_model_card

#: Where the shipped checkpoints live, one folder per kind of model.
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
#: Config `model.kind` → the folder of its pretrained checkpoint.
KINDS = {"gnome": "structure", "composition": "composition"}
#: Chemical systems whose ternary and richer phases pretraining never sees, so that the
#: discovery benchmark (`experiments/bench_discovery.py`) rediscovers them honestly.
HELD_OUT_SYSTEMS = (frozenset({"Li", "Co", "Ni", "O"}),)


def held_out(composition: Composition | str) -> bool:
    """True for a phase with three or more elements inside a held-out system."""
    elements = {el.symbol for el in Composition(composition).elements}
    return len(elements) >= 3 and any(elements <= system for system in HELD_OUT_SYSTEMS)


def pretrained_path(kind: str) -> Path:
    """The folder of the shipped checkpoint for config `model.kind` `kind`."""
    if kind not in KINDS:
        raise ValueError(f"no pretrained model of kind {kind!r}; pretrained kinds: {', '.join(sorted(KINDS))}")
    return PRETRAINED_DIR / KINDS[kind]


def load_pretrained(path_or_kind: str | Path) -> EnergyModel:
    """A pretrained model: config `model.kind` of a shipped checkpoint, or a saved model's
    folder. ValueError naming the folder when it is missing, corrupt or foreign."""
    path = pretrained_path(path_or_kind) if str(path_or_kind) in KINDS else Path(path_or_kind)
    try:
        read_model_card(path)
        return load_model(path)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot load the pretrained model in {path}: {error}") from error
