"""The architectures a checkpoint may name, and how a model is rebuilt from its ``config.json`` description.

Adding an architecture: write a class that satisfies :class:`~mcdrop.core.contract.MCModel` and add one line to
``MODEL_CLASSES``; the engine, the checkpoint format and training then handle it. ``check_params`` reads the
types of a ``model_params`` object from the class's annotated constructor, so a new class is checked for free.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import typing
from collections.abc import Callable
from typing import Any

from mcdrop.core.contract import MCModel
from mcdrop.core.ensemble import MAX_MEMBERS, DropoutEnsemble
from mcdrop.core.errors import ConfigError
from mcdrop.core.gru import DropoutGRU
from mcdrop.core.mlp import DropoutMLP

ModelFactory = Callable[..., MCModel]  # (vocab_size, n_classes, **model_params) -> model

MODEL_CLASSES: dict[str, ModelFactory] = {
    DropoutMLP.architecture: DropoutMLP,
    DropoutGRU.architecture: DropoutGRU,
}
_POSITIONAL = ("self", "vocab_size", "n_classes")


def is_int(value: Any) -> bool:
    """A JSON integer (``True`` is an ``int`` to Python, not to a config file)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number (Python's ``json`` also reads ``NaN`` and ``Infinity``)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (a config value may be anything, of any size)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    int: (is_int, "an integer"),
    float: (is_number, "a finite number"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _type_problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` (from JSON) does not fit the annotation ``hint``; ``None`` when it does or is not checked."""
    if hint in _SCALARS:
        accepts, what = _SCALARS[hint]
        return None if accepts(value) else f"must be {what}"
    if typing.get_origin(hint) in (collections.abc.Sequence, list, tuple):
        args = typing.get_args(hint)
        item = args[0] if args else None
        accepts, what = _SCALARS.get(item, (lambda v: True, "values"))
        if isinstance(value, list) and all(accepts(v) for v in value):
            return None
        return f"must be a list of {what.removeprefix('an ').removeprefix('a ')}s"
    return None


def check_params(architecture: str, params: dict[str, Any]) -> str | None:
    """Why ``params`` cannot build an ``architecture`` model (an unknown name, a value of the wrong type), naming
    the key as ``model_params.<key>``; ``None`` when every value has its constructor's type."""
    parameters = inspect.signature(MODEL_CLASSES[architecture], eval_str=True).parameters
    names = [name for name in parameters if name not in _POSITIONAL]
    for key, value in params.items():
        if key not in names:
            return f"model_params.{key}: unknown {architecture} parameter (expected {', '.join(names)})"
        problem = _type_problem(parameters[key].annotation, value)
        if problem is not None:
            return f"model_params.{key}: {problem} (got {short(value)})"
    return None


def build_model(
    architecture: str, vocab_size: int, n_classes: int, params: dict[str, Any], ensemble_size: int = 1
) -> MCModel:
    """Instantiate a model from its checkpoint description: one network, or ``ensemble_size`` members of the same
    configuration behind :class:`~mcdrop.core.ensemble.DropoutEnsemble`."""
    if not isinstance(architecture, str) or architecture not in MODEL_CLASSES:
        raise ConfigError(f"unknown architecture {architecture!r}: choose one of {sorted(MODEL_CLASSES)}")
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least two labels (got {n_classes})")
    if not is_int(ensemble_size) or not 1 <= ensemble_size <= MAX_MEMBERS:
        raise ConfigError(f"ensemble_size must be an integer in [1, {MAX_MEMBERS}] (got {short(ensemble_size)})")
    try:
        members = [MODEL_CLASSES[architecture](vocab_size, n_classes, **params) for _ in range(ensemble_size)]
        return members[0] if ensemble_size == 1 else DropoutEnsemble(members)
    except (TypeError, ValueError, RuntimeError) as error:  # unknown names, negative or zero sizes
        # torch's messages may span lines; a log line and a CLI error are one line
        raise ConfigError(f"invalid {architecture} parameters: {' '.join(str(error).split())}") from error
