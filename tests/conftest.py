"""Shared fixtures: tiny, randomly initialised but complete checkpoints, made in a temporary directory."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from mcdrop.core.checkpoint import save_checkpoint
from mcdrop.core.decisions import Calibration
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.registry import build_model
from mcdrop.core.text import TextEncoder, tokenize

TINY_CORPUS = [
    "a wonderful moving film with great acting",
    "a dull boring mess with terrible acting",
    "great fun and a wonderful story",
    "terrible plot and a boring script",
    "the best film of the year",
    "the worst film of the year",
]

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "mlp": {"embed_dim": 16, "hidden_dims": [16], "dropout_p": [0.3, 0.3]},
    "gru": {"embed_dim": 8, "hidden_dim": 8, "input_dropout_p": 0.2, "output_dropout_p": 0.3, "max_tokens": 32},
}

MakeCheckpoint = Callable[..., Path]


def write_tiny_checkpoint(
    directory: Path,
    architecture: str = "mlp",
    name: str = "tiny-mlp",
    labels: Sequence[str] = ("negative", "positive"),
    seed: int = 0,
    calibrated: bool = False,
    ensemble_size: int = 1,
    **model_params: Any,
) -> Path:
    """Write a small checkpoint to ``directory / name`` and return its path; with ``calibrated``, also a
    calibration and a novelty model (made from synthetic calibration evidence)."""
    torch.manual_seed(seed)
    params = {**DEFAULT_PARAMS[architecture], **model_params}
    encoder = TextEncoder.fit(
        TINY_CORPUS, max_size=200, ngram_max=2 if architecture == "mlp" else 1, max_tokens=params.get("max_tokens", 32)
    )
    model = build_model(architecture, len(encoder.vocab), len(labels), params, ensemble_size)
    config = {
        "name": name,
        "version": "test-1",
        "labels": list(labels),
        "model_params": params,
        "default_n_samples": 20,
        "uncertainty_baseline": {
            "mean_entropy": 0.5,
            "mean_mutual_information": 0.01,
            "mutual_information_threshold": 0.05,
            "high_mi_share": 0.05,
            "mean_oov_fraction": 0.05,
        },
    }
    calibration, novelty = tiny_calibration(seed) if calibrated else (None, None)
    return save_checkpoint(directory / name, model, encoder, config, calibration, novelty)


def tiny_calibration(seed: int = 0, n: int = 400) -> tuple[Calibration, NgramLanguageModel]:
    """A calibration whose errors rise with the entropy score, and a bigram model of the tiny corpus."""
    rng = random.Random(seed)
    scores = [rng.uniform(0.0, math.log(2)) for _ in range(n)]
    errors = [rng.random() < 0.5 * s / math.log(2) for s in scores]
    nonconformity = [rng.uniform(0.0, 0.9) for _ in range(n)]
    novelty_model = NgramLanguageModel.fit([tokenize(t) for t in TINY_CORPUS], min_count=1)
    novelty_scores = [float(v) for v in novelty_model.mean_nll_many([tokenize(t) for t in TINY_CORPUS * 20])]
    jitter = [v + rng.uniform(-0.2, 0.2) for v in novelty_scores]
    return Calibration("entropy", scores, errors, nonconformity, None, jitter), novelty_model


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> MakeCheckpoint:
    """Factory: ``make_checkpoint(architecture="mlp"|"gru", name=..., labels=..., calibrated=..., **params)``."""

    def make(architecture: str = "mlp", name: str | None = None, **kwargs: Any) -> Path:
        return write_tiny_checkpoint(tmp_path / "models", architecture, name or f"tiny-{architecture}", **kwargs)

    return make


def assert_predictions_close(
    actual: Sequence[Any], expected: Sequence[Any], rel: float = 1e-4, abs_: float = 1e-6
) -> None:
    """Predictions (``Prediction`` objects or their JSON dicts) equal up to float32 rounding.

    The same masks are used whatever the batch, but BLAS may round differently for other batch shapes, so
    numbers agree to float32 precision rather than bit for bit.
    """
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        a_dict = a if isinstance(a, dict) else a.to_dict()
        e_dict = e if isinstance(e, dict) else e.to_dict()
        assert a_dict.keys() == e_dict.keys()
        for key, value in e_dict.items():
            if isinstance(value, float | dict):
                assert a_dict[key] == pytest.approx(value, rel=rel, abs=abs_), key
            else:
                assert a_dict[key] == value, key
