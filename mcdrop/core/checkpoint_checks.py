"""What a checkpoint must satisfy before a model is built from it: every ``config.json`` field of the right type and
range, and weights of the right names, shapes and dtypes, all finite.

Each problem is one line naming the file and the key (``config.json: name must be ...``, ``model.safetensors:
tensor 'gru.weight_hh_l0' has shape [192, 64] but ...``), so a log line says which file to fix and how.
:func:`mcdrop.core.checkpoint.load_checkpoint` calls both checks; nothing else needs them.

    validate_config(config, path / "config.json")          # raises CheckpointError
    check_weights(model.state_dict(), state, weights_path)  # raises CheckpointError
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mcdrop.core.ensemble import MAX_MEMBERS
from mcdrop.core.errors import CheckpointError
from mcdrop.core.registry import MODEL_CLASSES, check_params, is_int, is_number, short

FORMAT_VERSION = 1
REQUIRED_KEYS = ("name", "version", "architecture", "labels", "model_params")
OPTIONAL_OBJECTS = ("tokenizer", "training", "metrics")
DEFAULT_N_SAMPLES = 50
DEFAULT_TEMPERATURE = 1.0
DEFAULT_MC_TOLERANCE = 0.0  # fixed n_samples; see mcdrop.core.adaptive
MAX_NAME_CHARS = 128


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"name must be a non-empty string (got {short(name)})"
    if len(name) > MAX_NAME_CHARS or not name.isprintable() or "/" in name or name != name.strip():
        return (
            f"name must be at most {MAX_NAME_CHARS} printable characters without '/' or surrounding spaces "
            f"(got {short(name)}): it is a URL path segment and a metric label"
        )
    return None


def _labels_problem(labels: Any) -> str | None:
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        return "labels must be a list of at least two distinct non-empty strings"
    return None


def _scalar_problems(config: Mapping[str, Any]) -> list[str | None]:
    version = config["version"]
    n_samples = config.get("default_n_samples", DEFAULT_N_SAMPLES)
    temperature = config.get("temperature", DEFAULT_TEMPERATURE)
    tolerance = config.get("mc_tolerance", DEFAULT_MC_TOLERANCE)
    placement = config.get("dropout_placement", "")
    members = config.get("ensemble_size", 1)
    return [
        _name_problem(config["name"]),
        None
        if (isinstance(version, str) and version) or is_int(version)
        else f"version must be a non-empty string (got {short(version)})",
        None
        if isinstance(config["architecture"], str) and config["architecture"] in MODEL_CLASSES
        else f"unknown architecture {short(config['architecture'])}: choose one of {sorted(MODEL_CLASSES)}",
        _labels_problem(config["labels"]),
        None
        if is_int(n_samples) and n_samples >= 1
        else f"default_n_samples must be a positive integer (got {short(n_samples)})",
        None
        if is_number(temperature) and temperature > 0
        else f"temperature must be a positive number (got {short(temperature)})",
        None
        if is_number(tolerance) and tolerance >= 0
        else f"mc_tolerance must be a number >= 0 (got {short(tolerance)})",
        None if isinstance(placement, str) else f"dropout_placement must be a string (got {short(placement)})",
        None
        if is_int(members) and 1 <= members <= MAX_MEMBERS
        else f"ensemble_size must be an integer in [1, {MAX_MEMBERS}] (got {short(members)})",
    ]


def _object_problems(config: Mapping[str, Any]) -> list[str | None]:
    problems: list[str | None] = [
        None if isinstance(config.get(key, {}), dict) else f"{key} must be an object (got {short(config[key])})"
        for key in OPTIONAL_OBJECTS
    ]
    baseline = config.get("uncertainty_baseline", {})
    if not isinstance(baseline, dict):
        problems.append(f"uncertainty_baseline must be an object (got {short(baseline)})")
    else:
        problems += [
            f"uncertainty_baseline.{key} must be a finite number or null (got {short(value)})"
            for key, value in baseline.items()
            if value is not None and not is_number(value)
        ]
    return problems


def validate_config(config: Mapping[str, Any], source: Path) -> None:
    """Check every field ``config.json`` may hold; raises :class:`CheckpointError` naming the file and the key."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {', '.join(missing)}")
    version = config.get("format_version", FORMAT_VERSION)
    if not is_int(version) or version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: format_version {short(version)} is not {FORMAT_VERSION}")
    for problem in [*_scalar_problems(config), *_object_problems(config)]:
        if problem is not None:
            raise CheckpointError(f"{source}: {problem}")
    params = config["model_params"]
    if not isinstance(params, dict):
        raise CheckpointError(f"{source}: model_params must be an object (got {short(params)})")
    problem = check_params(config["architecture"], params)
    if problem is not None:
        raise CheckpointError(f"{source}: {problem}")


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in tensor.shape) + "]"


def check_weights(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: Path) -> None:
    """The tensors in ``found`` (the weights file) against the model's ``expected`` state: the same names, shapes
    and kinds of dtype, and no NaN or infinity; raises :class:`CheckpointError` naming the first bad tensor."""
    need = "config.json's model_params and vocab.json"
    missing = [key for key in expected if key not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: tensor {missing[0]!r}{more} is missing; {need} need it")
    extra = [key for key in found if key not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{source}: tensor {extra[0]!r}{more} is not part of the model {need} describe")
    for key, want in expected.items():
        tensor = found[key]
        if tensor.shape != want.shape:
            raise CheckpointError(f"{source}: tensor {key!r} has shape {_shape(tensor)} but {need} need {_shape(want)}")
        if want.is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key!r} has dtype {tensor.dtype}; expected a floating-point one")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{source}: tensor {key!r} holds non-finite values (NaN or infinity): the file is corrupt or the "
                "training diverged; retrain or restore the checkpoint"
            )
