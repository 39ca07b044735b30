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

from gnome_loop.config import Model as ModelConfig
from gnome_loop.models.base import EnergyModel, read_model_card
from gnome_loop.models.ensemble import ARCHITECTURE
from gnome_loop.models.registry import load_model

#: Where the shipped checkpoints live (beside this module), one folder per kind of model.
PRETRAINED_DIR = Path(__file__).parent
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


def architecture_mismatch(config: ModelConfig, path: str | Path) -> str | None:
    """How the saved model in `path` differs in shape from the config's `model` section
    (None when it fits): fine-tuning keeps the network, so its shape must be the same."""
    card = read_model_card(path)
    settings = card.get("metrics", {}).get("settings", {})
    expected = {"gnome": "gnome-structure-ensemble", "composition": "gnome-composition-ensemble"}[config.kind]
    if card.get("architecture") != expected:
        return f"{path} holds a {card.get('architecture')!r} model, not the {expected!r} of model.kind {config.kind}"
    differ = [f"{key} {settings.get(key)} (config: {getattr(config, key)})" for key in ARCHITECTURE
              if config.kind == "gnome" or key in ("members", "width")
              if settings.get(key) != getattr(config, key)]
    return f"{path} was trained with " + ", ".join(differ) if differ else None


def starting_model(config: ModelConfig, elements: list[str]) -> tuple[EnergyModel | None, str]:
    """The trained model a campaign's training starts from, or None for random members,
    with the reason in words (logged by the campaign).

    `model.init` names it: `pretrained` (the shipped checkpoint of the kind), a saved
    model's folder, or `scratch`. A model that never saw one of the campaign's
    `elements`, or that is missing, gives None and says why: training then starts from
    scratch rather than not at all.
    """
    if config.kind == "linear" or config.init == "scratch":
        return None, "from scratch (model.init: scratch)" if config.kind != "linear" else "from scratch (linear)"
    path = pretrained_path(config.kind) if config.init == "pretrained" else Path(config.init)
    if not (path / "model_card.json").is_file():
        return None, f"from scratch: no pretrained {config.kind} model at {path}"
    mismatch = architecture_mismatch(config, path)
    if mismatch:
        return None, f"from scratch: {mismatch}"
    model = load_pretrained(path)
    unseen = sorted(set(elements) - set(model.reference.elements))
    if unseen:
        return None, f"from scratch: the model in {path} never saw {', '.join(unseen)}"
    return model, f"fine-tuned from {path} (data {model.data_hash})"
