"""Checkpoint directories: ``config.json`` + ``model.safetensors`` + ``vocab.json``, loaded without pickle.

Two optional files carry what a decision needs (:mod:`mcdrop.core.decisions`): ``calibration.json`` (the held-out
calibration split's scores, errors and conformal scores) and ``novelty.json`` (a word bigram model of the training
texts). A checkpoint without them predicts as before; asking it for a decision is refused.

``config.json`` describes everything needed to rebuild the model alone: architecture and its parameters,
labels, tokenizer settings, default number of MC samples, temperature, how it was trained and how it scored,
and the uncertainty baseline measured at training time (for drift alerts). Training writes checkpoints;
serving reads them; the two share nothing else.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mcdrop.core.checkpoint_checks import (
    DEFAULT_MC_TOLERANCE,
    DEFAULT_N_SAMPLES,
    DEFAULT_TEMPERATURE,
    FORMAT_VERSION,
    REQUIRED_KEYS,
    check_weights,
    validate_config,
)
from mcdrop.core.contract import MCModel
from mcdrop.core.decisions import Calibration
from mcdrop.core.ensemble import DropoutEnsemble
from mcdrop.core.errors import CheckpointError, ConfigError
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.registry import MODEL_CLASSES, build_model
from mcdrop.core.text import TextEncoder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
CALIBRATION_FILE = "calibration.json"
NOVELTY_FILE = "novelty.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, configuration, model (in eval mode) and text encoder."""

    path: Path
    config: dict[str, Any]
    model: MCModel
    encoder: TextEncoder
    calibration: Calibration | None = None
    novelty_model: NgramLanguageModel | None = None

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def version(self) -> str:
        return str(self.config["version"])

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def default_n_samples(self) -> int:
        return int(self.config.get("default_n_samples", DEFAULT_N_SAMPLES))

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", DEFAULT_TEMPERATURE))

    @property
    def mc_tolerance(self) -> float:
        """Default Monte Carlo tolerance of predictions (0: always ``n_samples``; see :mod:`mcdrop.core.adaptive`)."""
        return float(self.config.get("mc_tolerance", DEFAULT_MC_TOLERANCE))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: MCModel,
    encoder: TextEncoder,
    config: dict[str, Any],
    calibration: Calibration | None = None,
    novelty_model: NgramLanguageModel | None = None,
) -> Path:
    """Write ``model``, ``encoder`` and ``config`` (which must hold name, version, labels, model_params), and the
    calibration and novelty model when given."""
    if model.architecture not in MODEL_CLASSES:
        raise ConfigError(
            f"cannot save a {type(model).__name__}: its architecture {model.architecture!r} is not registered "
            f"({', '.join(sorted(MODEL_CLASSES))})"
        )
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    full = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "dropout_placement": model.dropout_placement,
        "ensemble_size": model.size if isinstance(model, DropoutEnsemble) else 1,
        "default_n_samples": DEFAULT_N_SAMPLES,
        "temperature": DEFAULT_TEMPERATURE,
        **config,
    }
    missing = [k for k in REQUIRED_KEYS if k not in full]
    if missing:
        raise ConfigError(f"checkpoint config is missing {', '.join(missing)}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "architecture": model.architecture})
    os.replace(tmp, path / WEIGHTS_FILE)
    # safetensors creates its file owner-only (0600); a checkpoint is data other users (a container's non-root
    # user) must read, like the JSON files beside it.
    (path / WEIGHTS_FILE).chmod(0o644)
    _write_atomic(path / VOCAB_FILE, json.dumps(encoder.to_json(), ensure_ascii=False))
    for name, part in ((CALIBRATION_FILE, calibration), (NOVELTY_FILE, novelty_model)):
        if part is not None:
            _write_atomic(path / name, json.dumps(part.to_json(), ensure_ascii=False, separators=(",", ":")))
        elif (path / name).exists():
            (path / name).unlink()  # a stale file from an earlier checkpoint in this directory would not match
    _write_atomic(path / CONFIG_FILE, json.dumps(full, indent=2, ensure_ascii=False) + "\n")
    logger.info("saved checkpoint %s to %s", full["name"], path)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing from the checkpoint directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_checkpoint(directory: str | os.PathLike[str], device: str = "cpu") -> Checkpoint:
    """Load a checkpoint directory; any missing or corrupt file, a config value of the wrong type, or weights that
    do not match the config or are not finite raise :class:`CheckpointError`: one line naming the file and key."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory (expected {CONFIG_FILE}, {WEIGHTS_FILE})")
    config = _read_json(path / CONFIG_FILE)
    validate_config(config, path / CONFIG_FILE)
    encoder = TextEncoder.from_json(_read_json(path / VOCAB_FILE), source=str(path / VOCAB_FILE))
    try:
        model = build_model(
            config["architecture"],
            encoder.n_ids,
            len(config["labels"]),
            config["model_params"],
            config.get("ensemble_size", 1),
        )
    except ConfigError as error:
        raise CheckpointError(f"{path / CONFIG_FILE}: {error}") from error
    problem = model.check_encoder(encoder.ngram_max, encoder.max_tokens, encoder.subword_buckets)
    if problem is not None:
        raise CheckpointError(f"{path / VOCAB_FILE}: {problem}")
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: file is missing from the checkpoint directory")
    try:
        state = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path}: corrupt or unreadable safetensors file ({error})") from error
    check_weights(model.state_dict(), state, weights_path)  # names, shapes, dtypes, finiteness: one line each
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    calibration = novelty_model = None
    if (path / CALIBRATION_FILE).exists():
        calibration = Calibration.from_json(_read_json(path / CALIBRATION_FILE), str(path / CALIBRATION_FILE))
    if (path / NOVELTY_FILE).exists():
        try:
            novelty_model = NgramLanguageModel.from_json(_read_json(path / NOVELTY_FILE))
        except ValueError as error:
            raise CheckpointError(f"{path / NOVELTY_FILE}: invalid novelty model ({error})") from error
    return Checkpoint(path, config, model, encoder, calibration, novelty_model)


def discover_checkpoints(model_dir: str | os.PathLike[str]) -> list[Path]:
    """Every checkpoint directory in ``model_dir`` (itself, or its immediate subdirectories), sorted."""
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: model directory does not exist")
    if (root / CONFIG_FILE).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())
