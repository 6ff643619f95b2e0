"""HTTP response shapes: what every endpoint answers, documented in the OpenAPI schema.

The routes build their answers as plain dicts on the hot path (see :mod:`mcdrop.serving.presentation`); these
models document them (``response_model=`` in :mod:`mcdrop.serving.routes`) and the tests check that what is served
validates against them::

    PredictResponse.model_validate(response.json())
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_EXAMPLE_PREDICTION: dict[str, Any] = {
    "label": "positive",
    "probs": {"negative": 0.0912, "positive": 0.9088},
    "variance": {"negative": 0.0051, "positive": 0.0051},
    "entropy": 0.3052,
    "expected_entropy": 0.2783,
    "mutual_information": 0.0269,
    "variation_ratio": 0.03,
    "std_error": {"negative": 0.0071, "positive": 0.0071},
    "oov_fraction": 0.0,
    "n_tokens": 5,
    "n_known_tokens": 5,
    "n_samples_used": 100,
    "novelty": 0.31,
    "prediction_set": ["positive"],
    "decision": {
        "action": "accept",
        "reason": None,
        "max_risk": 0.1,
        "score": 0.3052,
        "threshold": 0.4411,
        "max_novelty": 0.99,
        "detail": None,
    },
}

PREDICT_EXAMPLE_RESPONSE: dict[str, Any] = {
    "request_id": "3f2c9a6e5b7d4e0f8a1b2c3d4e5f6a7b",
    "model": "rt-mlp",
    "model_version": "2024.1",
    "n_samples": 100,
    "seed": 1234,
    "predictions": [_EXAMPLE_PREDICTION],
}


class DecisionOut(BaseModel):
    """What to do with a prediction, and the numbers the choice rests on."""

    action: Literal["accept", "abstain"]
    reason: Literal["uncertain", "novel"] | None = Field(
        description="why it abstains: novelty above max_novelty (checked first), or a score above the threshold"
    )
    max_risk: float
    score: float = Field(description="the uncertainty score compared with the threshold (lower is more certain)")
    threshold: float | None = Field(description="the risk-controlling threshold; null when no threshold meets max_risk")
    max_novelty: float
    detail: str | None = Field(description="why every prediction abstains, when no threshold meets max_risk")


class PredictionOut(BaseModel):
    """Uncertainty summary of one text (natural log throughout)."""

    label: str = Field(description="argmax of the mean probabilities")
    probs: dict[str, float] = Field(description="mean class probabilities over the samples (sum to 1)")
    variance: dict[str, float] = Field(description="per-class variance of the sampled probabilities")
    entropy: float = Field(description="predictive entropy H[mean p]: total uncertainty")
    expected_entropy: float = Field(description="mean entropy of the samples: the aleatoric part")
    mutual_information: float = Field(
        description="entropy - expected_entropy: disagreement between sampled networks (epistemic part). "
        "It does not rise on out-of-domain text; see oov_fraction."
    )
    variation_ratio: float = Field(description="1 - (samples voting for the modal label) / n_samples")
    std_error: dict[str, float] = Field(description="Monte Carlo standard error of each mean probability")
    oov_fraction: float = Field(description="share of tokens outside the vocabulary: the input-novelty signal")
    n_tokens: int = Field(description="tokens in the text")
    n_known_tokens: int = Field(description="tokens the vocabulary knows")
    n_samples_used: int = Field(
        description="samples this text got: n_samples, or fewer when mc_tolerance let it stop early"
    )
    novelty: float | None = Field(
        description="share of calibration texts less surprising than this one under the model's word bigram model "
        "(0 typical .. 1 unlike anything seen); null for a model without calibration"
    )
    prediction_set: list[str] | None = Field(
        description="split-conformal (LAC) set at the requested coverage: holds the true label with that probability "
        "for inputs like the calibration split; may be empty; null without calibration"
    )
    decision: DecisionOut | None = Field(description="accept or abstain, when max_risk is given (request or server)")


class PredictResponse(BaseModel):
    """Answer of ``POST /v1/predict``: one prediction per text, in order."""

    model_config = ConfigDict(json_schema_extra={"examples": [PREDICT_EXAMPLE_RESPONSE]})

    request_id: str
    model: str
    model_version: str
    n_samples: int
    seed: int = Field(description="the seed used (drawn by the server when the request gave none)")
    predictions: list[PredictionOut]


class ModelSummary(BaseModel):
    """One served model, as listed by ``GET /v1/models``."""

    name: str
    version: str
    architecture: str
    labels: list[str]
    default_n_samples: int
    dropout_placement: str | None = Field(description="where dropout sits; decides how costly N samples are")
    ensemble_size: int = Field(
        default=1, description="independently trained members; the N samples are spread evenly over them"
    )
    device: str
    vocabulary_size: int
    default: bool = Field(description="whether requests that name no model use this one")
    metrics: dict[str, Any] = Field(description="evaluation metrics recorded at training time")
    uncertainty_baseline: dict[str, Any] = Field(
        description="entropy and mutual information measured at training time (the drift reference)"
    )
    calibration: dict[str, Any] | None = Field(
        description="delta, the uncertainty score, thresholds and calibration coverage at max_risk 0.05/0.1/0.2, "
        "the conformal method and the novelty limit; null for a model without calibration"
    )


class ModelList(BaseModel):
    models: list[ModelSummary]
    default_model: str | None


class ModelDetail(ModelSummary):
    """``GET /v1/models/{name}``: the summary plus the checkpoint's full configuration."""

    config: dict[str, Any] = Field(description="the checkpoint's config.json")


class ErrorBody(BaseModel):
    detail: str = Field(examples=["texts: at most 64 texts per request (got 65)"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "stopping"]
    models: list[str]
    detail: str | None = None
    failed: dict[str, str] = Field(
        default_factory=dict, description="checkpoint directories that failed to load (not served), and why"
    )
