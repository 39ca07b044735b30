"""The energy models by name: the registry above the architectures it names.
Add a model class here (and its `model.kind` in `gnome_loop.config`).
"""

from __future__ import annotations

from pathlib import Path

from gnome_loop.config import Model as ModelConfig
from gnome_loop.models.base import EnergyModel, read_model_card
from gnome_loop.models.ensemble import CompositionEnsemble, StructureEnsemble
from gnome_loop.models.linear import LinearElementModel

#: Model classes by the `model.kind` of the config.
MODEL_CLASSES: dict[str, type] = {"gnome": StructureEnsemble, "composition": CompositionEnsemble,
                                  "linear": LinearElementModel}


def make_model(config: ModelConfig, seed: int = 0) -> EnergyModel:
    """A fresh, untrained model of the kind named in the config's `model` section."""
    cls = MODEL_CLASSES[config.kind]
    if config.kind == "linear":
        return cls()
    settings = config.model_dump(exclude={"kind", "init"})
    return cls(**settings, seed=seed)


def load_model(directory: str | Path) -> EnergyModel:
    """Load a saved model of any known architecture, as named by its model card."""
    card = read_model_card(directory)
    classes = {cls.name: cls for cls in MODEL_CLASSES.values()}
    if card["architecture"] not in classes:
        raise ValueError(
            f"{directory} holds a model of unknown architecture {card['architecture']!r}; "
            f"known: {', '.join(sorted(classes))}"
        )
    return classes[card["architecture"]].load(Path(directory))
