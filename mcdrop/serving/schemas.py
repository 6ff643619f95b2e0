"""HTTP request and response shapes (DESIGN §4), the limit checks, and how validation errors read.

The request is parsed in one pass by pydantic (``PredictRequest.model_validate_json``) for shape and types, then
``check_limits`` applies the configured limits; both produce the same kind of message, one line naming the field::

    texts: at most 64 texts per request (got 65)
    texts[3]: at most 10000 characters per text (got 12000)
    n_samples: Input should be a valid integer

Responses are built as plain dicts on the hot path (see :mod:`mcdrop.serving.presentation`); the response models
here document them in the OpenAPI schema and are used by the tests to check that what is served matches what is
documented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic_core import ErrorDetails

from mcdrop.core.adaptive import MC_TOLERANCE_RANGE
from mcdrop.core.decisions import COVERAGE_RANGE, MAX_RISK_RANGE
from mcdrop.core.engine import MAX_SEED as MAX_SEED  # the request's seed range is the engine's
from mcdrop.core.errors import InputError

PREDICT_EXAMPLE_REQUEST: dict[str, Any] = {
    "texts": ["a gripping, beautifully acted drama", "the plot never makes sense"],
    "model": "rt-mlp",
    "n_samples": 100,
    "seed": 1234,
    "max_risk": 0.1,
}

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


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PREDICT_EXAMPLE_REQUEST]})

    texts: list[StrictStr] = Field(
        description="Texts to classify (at least 1; at most MCDROP_MAX_TEXTS_PER_REQUEST, each at most "
        "MCDROP_MAX_TEXT_CHARS characters). An empty string is allowed: it has no known tokens, so its "
        "prediction rests on no evidence and reports oov_fraction 1.0."
    )
    model: StrictStr | None = Field(
        None, description="Model name (see GET /v1/models); the default model when omitted."
    )
    n_samples: StrictInt | None = Field(
        None,
        description="Monte Carlo samples, 1..MCDROP_MAX_N_SAMPLES; the model's default when omitted. "
        "With 1 sample mutual information and variance are 0 by definition.",
    )
    seed: StrictInt | None = Field(
        None,
        description=f"Seed in 0..{MAX_SEED}; the same seed, texts, model and n_samples give the same answer. "
        "Omitted: the server draws one and reports it.",
    )
    max_risk: StrictFloat | StrictInt | None = Field(
        None,
        description=f"Decide accept/abstain so that the error rate among accepted predictions stays at most this "
        f"({MAX_RISK_RANGE[0]}..{MAX_RISK_RANGE[1]}) with probability 1 - delta, for inputs like the calibration "
        "split; MCDROP_MAX_RISK when omitted (no decision when that is unset too). Needs a calibrated model.",
    )
    coverage: StrictFloat | StrictInt | None = Field(
        None,
        description=f"Target coverage of the conformal prediction sets ({COVERAGE_RANGE[0]}..{COVERAGE_RANGE[1]}); "
        "MCDROP_COVERAGE when omitted.",
    )
    max_novelty: StrictFloat | StrictInt | None = Field(
        None,
        description="Abstain as 'novel' above this novelty (0..1); the model's limit when omitted (0.99).",
    )
    mc_tolerance: StrictFloat | StrictInt | None = Field(
        None,
        description=f"Adaptive sampling ({MC_TOLERANCE_RANGE[0]:g}..{MC_TOLERANCE_RANGE[1]:g}): n_samples becomes the "
        "most a text gets; samples come in rounds (10, 20, 40, ...) and a text stops once the standard error of "
        "every class probability is at most this and its label (and decision) did not change over the last round. "
        "0: always n_samples. MCDROP_MC_TOLERANCE, else the checkpoint's mc_tolerance, when omitted.",
    )


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
    status: Literal["ready", "loading", "failed"]
    models: list[str]
    detail: str | None = None


@dataclass(frozen=True)
class Limits:
    """The request limits from the settings."""

    max_texts_per_request: int
    max_text_chars: int
    max_n_samples: int


def _loc(parts: Sequence[int | str]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    loc = _loc(error["loc"])
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        return f"body: invalid JSON ({reason})" if reason else "body: invalid JSON"
    if kind == "model_type" or (kind == "model_attributes_type" and loc == "body"):
        return "body: expected a JSON object"
    if kind == "extra_forbidden":
        return f"{loc}: unknown field (expected {', '.join(PredictRequest.model_fields)})"
    return f"{loc}: {error['msg']}"


def describe_validation_error(error: ValidationError) -> str:
    """All problems of a request body, one ``field: message`` each, joined by ``; ``."""
    return "; ".join(_describe(item) for item in error.errors(include_url=False, include_input=False))


def parse_predict_request(body: bytes) -> PredictRequest:
    """Parse and type-check a request body; raises :class:`InputError`."""
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as error:
        raise InputError(describe_validation_error(error)) from None


def check_limits(request: PredictRequest, limits: Limits) -> None:
    """Apply the configured limits; raises :class:`InputError` naming the field, the limit and the value."""
    n_texts = len(request.texts)
    if n_texts == 0:
        raise InputError("texts: at least 1 text per request (got 0)")
    if n_texts > limits.max_texts_per_request:
        raise InputError(f"texts: at most {limits.max_texts_per_request} texts per request (got {n_texts})")
    max_chars = limits.max_text_chars
    for i, text in enumerate(request.texts):
        if len(text) > max_chars:
            raise InputError(f"texts[{i}]: at most {max_chars} characters per text (got {len(text)})")
    n = request.n_samples
    if n is not None and not 1 <= n <= limits.max_n_samples:
        raise InputError(f"n_samples: must be between 1 and {limits.max_n_samples} (got {n})")
    seed = request.seed
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed: must be between 0 and {MAX_SEED} (got {seed})")
    check_decision_fields(request.max_risk, request.coverage, request.max_novelty)
    low, high = MC_TOLERANCE_RANGE
    tolerance = request.mc_tolerance
    if tolerance is not None and not low <= tolerance <= high:
        raise InputError(f"mc_tolerance: must be between {low:g} and {high:g} (got {tolerance:g})")


def check_decision_fields(max_risk: float | None, coverage: float | None, max_novelty: float | None) -> None:
    """The ranges of the decision fields (DESIGN §8); raises :class:`InputError` naming the field and the range."""
    for name, value, (low, high) in (
        ("max_risk", max_risk, MAX_RISK_RANGE),
        ("coverage", coverage, COVERAGE_RANGE),
        ("max_novelty", max_novelty, (0.0, 1.0)),
    ):
        if value is not None and not low <= value <= high:
            raise InputError(f"{name}: must be between {low:g} and {high:g} (got {value:g})")
