"""The ``POST /v1/predict`` request: its shape, its limits, its OpenAPI schema, and how its errors read.

``parse_predict_request`` first walks the JSON once (jiter, a few microseconds for a usual body) to refuse what
would make validation costly (more texts than the limit, a flood of unknown fields) and to read JSON errors
well, then validates it in one pydantic pass (``PredictRequest.model_validate_json``) for shape and types;
``check_limits`` applies the configured limits. Every message is one line naming the field::

    texts: at most 64 texts per request (got 65)
    texts[3]: at most 10000 characters per text (got 12000)
    n_samples: Input should be a valid integer

Whatever the body, a detail lists at most ``MAX_PROBLEMS`` problems and a count of the rest, and echoes at most
``MAX_ECHO_CHARS`` characters of any value the client sent (:func:`shorten`). ``request_schema(limits)`` is the
request's JSON schema with the limits stated (``maxItems``, ``maxLength``, ``minimum``/``maximum``), as served in
``/openapi.json``. The response shapes are in :mod:`mcdrop.serving.responses`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic_core import ErrorDetails, from_json

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
    max_risk: StrictFloat | None = Field(
        None,
        description=f"Decide accept/abstain so that the error rate among accepted predictions stays at most this "
        f"({MAX_RISK_RANGE[0]}..{MAX_RISK_RANGE[1]}) with probability 1 - delta, for inputs like the calibration "
        "split; MCDROP_MAX_RISK when omitted (no decision when that is unset too). Needs a calibrated model.",
    )
    coverage: StrictFloat | None = Field(
        None,
        description=f"Target coverage of the conformal prediction sets ({COVERAGE_RANGE[0]}..{COVERAGE_RANGE[1]}); "
        "MCDROP_COVERAGE when omitted.",
    )
    max_novelty: StrictFloat | None = Field(
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


@dataclass(frozen=True)
class Limits:
    """The request limits from the settings."""

    max_texts_per_request: int
    max_text_chars: int
    max_n_samples: int


MAX_PROBLEMS = 5  # problems listed in one detail; the rest are counted
MAX_ECHO_CHARS = 100  # characters of a client's value quoted back in a message
_FIELDS = tuple(PredictRequest.model_fields)
_UNKNOWN = f"unknown field (expected {', '.join(_FIELDS)})"
_DECISION_RANGES = {"max_risk": MAX_RISK_RANGE, "coverage": COVERAGE_RANGE, "max_novelty": (0.0, 1.0)}
_LONE_SURROGATE = "lone surrogate in a \\u escape"
_HUGE = object()  # stands for an integer too long for Python's int() while locating it


def shorten(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``value`` cut to ``limit`` characters, with ``…`` when it was longer: for echoing what a client sent."""
    return value if len(value) <= limit else value[:limit] + "…"


def join_problems(problems: Sequence[str], total: int | None = None) -> str:
    """The first ``MAX_PROBLEMS`` problems joined by ``; ``, then how many more there are (of ``total``)."""
    total = len(problems) if total is None else total
    shown = "; ".join(problems[:MAX_PROBLEMS])
    return shown if total <= MAX_PROBLEMS else f"{shown}; and {total - MAX_PROBLEMS} more"


def _number(value: float) -> str:
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        return f"a {len(str(abs(value)))}-digit number"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(name: str, limits: Limits | None) -> str | None:
    """``must be between LOW and HIGH`` for a numeric field, or ``None``."""
    if name == "seed":
        return f"must be between 0 and {MAX_SEED}"
    if name == "n_samples" and limits is not None:
        return f"must be between 1 and {limits.max_n_samples}"
    if name in _DECISION_RANGES:
        low, high = _DECISION_RANGES[name]
        return f"must be between {low:g} and {high:g}"
    if name == "mc_tolerance":
        low, high = MC_TOLERANCE_RANGE
        return f"must be between {low:g} and {high:g}"
    return None


def _loc(parts: Sequence[int | str]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{shorten(part)}" if out else shorten(part))
    return out or "body"


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    loc = _loc(error["loc"])
    if kind == "model_type" or (kind == "model_attributes_type" and loc == "body"):
        return "body: expected a JSON object"
    if kind == "extra_forbidden":
        return f"{loc}: {_UNKNOWN}"
    return f"{loc}: {error['msg']}"


def describe_validation_error(error: ValidationError) -> str:
    """The problems of a request body, one ``field: message`` each, joined by ``; `` (at most ``MAX_PROBLEMS``)."""
    problems = [_describe(item) for item in error.errors(include_url=False, include_input=False)]
    return join_problems(problems)


def _huge_number(body: bytes, limits: Limits | None) -> str | None:
    """Which field holds an integer too long for Python's ``int()`` (jiter says only "number out of range")."""
    digits: list[int] = []

    def parse_int(text: str) -> object:
        if len(text) <= 4000:
            return int(text)
        digits.append(len(text.lstrip("-")))
        return _HUGE

    try:
        data = json.loads(body, parse_int=parse_int)
    except (ValueError, RecursionError):
        return None
    if not digits:
        return None
    for name, value in data.items() if isinstance(data, dict) else ():
        if value is _HUGE:
            rule = _range(name, limits) or "number out of range"
            return f"{shorten(name)}: {rule} (got a {digits[0]}-digit number)"
    return f"body: a {digits[0]}-digit number is out of range"


def _invalid_json(body: bytes, reason: str, limits: Limits | None) -> str:
    if reason.startswith("number out of range"):
        return _huge_number(body, limits) or f"body: invalid JSON ({reason})"
    # jiter calls any unpaired surrogate "leading", \\udfff (a trailing one) included
    reason = reason.replace("lone leading surrogate in hex escape", _LONE_SURROGATE)
    return f"body: invalid JSON ({reason})"


def _precheck(body: bytes, limits: Limits | None) -> None:
    """Refuse at once what pydantic would spend long on: more texts than the limit, many unknown fields."""
    try:
        data = from_json(body, cache_strings=False)
    except ValueError as error:
        raise InputError(_invalid_json(body, str(error), limits)) from None
    if not isinstance(data, dict):
        return  # pydantic says so, in its words
    unknown = [name for name in data if name not in _FIELDS]
    if len(unknown) > MAX_PROBLEMS:
        problems = [f"{shorten(name)}: {_UNKNOWN}" for name in unknown[:MAX_PROBLEMS]]
        raise InputError(join_problems(problems, len(unknown)))
    texts = data.get("texts")
    if limits is not None and isinstance(texts, list) and len(texts) > limits.max_texts_per_request:
        raise InputError(f"texts: at most {limits.max_texts_per_request} texts per request (got {len(texts)})")


def parse_predict_request(body: bytes, limits: Limits | None = None) -> PredictRequest:
    """Parse and type-check a request body; raises :class:`InputError`. With ``limits``, a body with more texts
    than allowed is refused before validation (which would cost time in proportion to its texts)."""
    _precheck(body, limits)
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
        raise InputError(f"n_samples: {_range('n_samples', limits)} (got {_number(n)})")
    seed = request.seed
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed: {_range('seed', limits)} (got {_number(seed)})")
    check_decision_fields(request.max_risk, request.coverage, request.max_novelty)
    low, high = MC_TOLERANCE_RANGE
    tolerance = request.mc_tolerance
    if tolerance is not None and not low <= tolerance <= high:
        raise InputError(f"mc_tolerance: must be between {low:g} and {high:g} (got {tolerance:g})")


def check_decision_fields(max_risk: float | None, coverage: float | None, max_novelty: float | None) -> None:
    """The ranges of the decision fields (DESIGN §8); raises :class:`InputError` naming the field and the range."""
    for name, value in (("max_risk", max_risk), ("coverage", coverage), ("max_novelty", max_novelty)):
        low, high = _DECISION_RANGES[name]
        if value is not None and not low <= value <= high:
            raise InputError(f"{name}: {_range(name, None)} (got {_number(value)})")


def request_schema(limits: Limits) -> dict[str, Any]:
    """``PredictRequest``'s JSON schema with the limits that :func:`check_limits` enforces."""
    schema = copy.deepcopy(_BASE_SCHEMA)
    fields = schema["properties"]
    fields["texts"].update(minItems=1, maxItems=limits.max_texts_per_request)
    fields["texts"]["items"]["maxLength"] = limits.max_text_chars
    bounds = {"n_samples": (1, limits.max_n_samples), "seed": (0, MAX_SEED), **_DECISION_RANGES}
    bounds["mc_tolerance"] = MC_TOLERANCE_RANGE
    for name, (low, high) in bounds.items():
        for part in fields[name]["anyOf"]:
            if part.get("type") != "null":
                part.update(minimum=low, maximum=high)
    return schema


_BASE_SCHEMA = PredictRequest.model_json_schema()
