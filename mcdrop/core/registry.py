"""The architectures a checkpoint may name, and how a model is rebuilt from its ``config.json`` description.

Adding an architecture: write a class that satisfies :class:`~mcdrop.core.contract.MCModel` and add one line to
``MODEL_CLASSES``; the engine, the checkpoint format and training then handle it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcdrop.core.contract import MCModel
from mcdrop.core.errors import ConfigError
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.mlp import DropoutMLP

ModelFactory = Callable[..., MCModel]  # (vocab_size, n_classes, **model_params) -> model

MODEL_CLASSES: dict[str, ModelFactory] = {
    DropoutMLP.architecture: DropoutMLP,
    DropoutGRU.architecture: DropoutGRU,
}


def build_model(architecture: str, vocab_size: int, n_classes: int, params: dict[str, Any]) -> MCModel:
    """Instantiate a model from its checkpoint description."""
    if architecture not in MODEL_CLASSES:
        raise ConfigError(f"unknown architecture {architecture!r}: choose one of {sorted(MODEL_CLASSES)}")
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least two labels (got {n_classes})")
    try:
        return MODEL_CLASSES[architecture](vocab_size, n_classes, **params)
    except (TypeError, ValueError, RuntimeError) as error:  # unknown names, negative or zero sizes
        raise ConfigError(f"invalid {architecture} parameters: {error}") from error
