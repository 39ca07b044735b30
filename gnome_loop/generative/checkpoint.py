"""A trained generator on disk: `params.msgpack` (flax's msgpack of the parameters,
never pickle) and `model_card.json` (architecture, settings, data, licence, metrics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

PARAMS, CARD = "params.msgpack", "model_card.json"


def save_generator(directory: str | Path, params: Any, card: dict) -> None:
    """Write the parameters and the card (which must name its `architecture`)."""
    if "architecture" not in card:
        raise ValueError("a model card names its architecture")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PARAMS).write_bytes(serialization.to_bytes(params))
    (directory / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def read_card(directory: str | Path, architecture: str) -> dict:
    """The model card in `directory`; ValueError when missing or for another architecture."""
    path = Path(directory) / CARD
    if not path.is_file():
        raise ValueError(f"no generator in {directory}: {CARD} is missing")
    card = json.loads(path.read_text())
    if card.get("architecture") != architecture:
        raise ValueError(f"{directory} holds a {card.get('architecture')!r} model, not a {architecture!r}")
    return card


def load_params(directory: str | Path, template: Any) -> Any:
    """The saved parameters, shaped like `template`; ValueError when they do not fit."""
    try:
        params = serialization.from_bytes(template, (Path(directory) / PARAMS).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{directory}: unreadable {PARAMS} ({error})") from error
    if jax.tree.map(np.shape, params) != jax.tree.map(np.shape, template):
        raise ValueError(f"{directory}: parameters do not fit the network its card describes")
    return params
