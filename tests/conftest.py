"""Shared fixtures: tiny, randomly initialised but complete checkpoints, made in a temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from mcdrop.core.checkpoint import save_checkpoint
from mcdrop.core.decisions import Calibration
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.registry import build_model
from mcdrop.core.text import TextEncoder

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
    **model_params: Any,
) -> Path:
    """Write a small checkpoint to ``directory / name`` and return its path.

    With ``calibrated=True`` it also gets a synthetic calibration (``tiny_calibration``) and a novelty model of
    ``TINY_CORPUS``, so that it can serve decisions (``max_risk``) and novelty.
    """
    torch.manual_seed(seed)
    params = {**DEFAULT_PARAMS[architecture], **model_params}
    encoder = TextEncoder.fit(
        TINY_CORPUS, max_size=200, ngram_max=2 if architecture == "mlp" else 1, max_tokens=params.get("max_tokens", 32)
    )
    model = build_model(architecture, len(encoder.vocab), len(labels), params)
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
    if not calibrated:
        return save_checkpoint(directory / name, model, encoder, config)
    token_lists = [encoder.tokens(text) for text in TINY_CORPUS]
    novelty_model = NgramLanguageModel.fit(token_lists, min_count=1)
    calibration = tiny_calibration(novelty_model.mean_nll_many(token_lists).tolist())
    return save_checkpoint(directory / name, model, encoder, config, calibration, novelty_model)


def tiny_calibration(novelty_scores: Sequence[float], n: int = 500) -> Calibration:
    """A synthetic calibration split of ``n`` texts: entropy scores spread over [0, 0.7], errors that become more
    frequent as the score rises (every 50th text below 0.35, every 3rd above), and the given novelty scores.
    At max_risk 0.1 it accepts a bit over the more certain half."""
    scores = [0.7 * i / n for i in range(n)]
    errors = [i % 50 == 49 if i < n // 2 else i % 3 == 0 for i in range(n)]
    nonconformity = [0.05 + 0.9 * i / n for i in range(n)]
    return Calibration(
        score="entropy",
        scores=scores,
        errors=errors,
        nonconformity=nonconformity,
        grid=None,
        novelty_scores=novelty_scores,
    )


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> MakeCheckpoint:
    """Factory: ``make_checkpoint(architecture="mlp"|"gru", name=..., labels=..., **model_params) -> Path``."""

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
