"""Request parsing and limits: exact one-line messages naming the field and the limit."""

from __future__ import annotations

import json

import pytest

from mcdrop.core.engine import MAX_SEED, Prediction
from mcdrop.core.errors import InputError
from mcdrop.serving.responses import PREDICT_EXAMPLE_RESPONSE, PredictionOut, PredictResponse
from mcdrop.serving.schemas import PREDICT_EXAMPLE_REQUEST, Limits, PredictRequest, check_limits, parse_predict_request

LIMITS = Limits(max_texts_per_request=4, max_text_chars=10, max_n_samples=50)


def _error(body: bytes | dict[str, object]) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InputError) as caught:
        check_limits(parse_predict_request(raw), LIMITS)
    return str(caught.value)


def test_valid_request_parses() -> None:
    request = parse_predict_request(b'{"texts": ["a", ""], "model": "m", "n_samples": 3, "seed": 0}')
    check_limits(request, LIMITS)
    assert request == PredictRequest(texts=["a", ""], model="m", n_samples=3, seed=0)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"texts": []}, "texts: at least 1 text per request (got 0)"),
        ({"texts": ["a"] * 5}, "texts: at most 4 texts per request (got 5)"),
        ({"texts": ["ok", "x" * 11]}, "texts[1]: at most 10 characters per text (got 11)"),
        ({"texts": ["a"], "n_samples": 0}, "n_samples: must be between 1 and 50 (got 0)"),
        ({"texts": ["a"], "n_samples": 51}, "n_samples: must be between 1 and 50 (got 51)"),
        ({"texts": ["a"], "seed": -1}, f"seed: must be between 0 and {MAX_SEED} (got -1)"),
        ({"texts": ["a"], "seed": MAX_SEED + 1}, f"seed: must be between 0 and {MAX_SEED} (got {MAX_SEED + 1})"),
        ({}, "texts: Field required"),
        ({"texts": "a"}, "texts: Input should be a valid array"),
        (
            {"texts": ["a", 3, None]},
            "texts[1]: Input should be a valid string; texts[2]: Input should be a valid string",
        ),
        ({"texts": ["a"], "n_samples": "5"}, "n_samples: Input should be a valid integer"),
        ({"texts": ["a"], "n_samples": 2.5}, "n_samples: Input should be a valid integer"),
        ({"texts": ["a"], "model": 1}, "model: Input should be a valid string"),
        (
            {"texts": ["a"], "nsamples": 5},
            "nsamples: unknown field (expected texts, model, n_samples, seed, max_risk, coverage, max_novelty, "
            "mc_tolerance)",
        ),
        ({"texts": ["a"], "mc_tolerance": -0.01}, "mc_tolerance: must be between 0 and 0.5 (got -0.01)"),
        ({"texts": ["a"], "mc_tolerance": 0.6}, "mc_tolerance: must be between 0 and 0.5 (got 0.6)"),
        (b"[]", "body: expected a JSON object"),
        (b"", "body: invalid JSON (EOF while parsing a value at line 1 column 0)"),
        (b'{"texts": [', "body: invalid JSON (EOF while parsing a list at line 1 column 11)"),
        (b'{"texts": ["\xff"]}', "body: invalid JSON (invalid unicode code point at line 1 column 13)"),
    ],
)
def test_invalid_requests_have_exact_messages(body: bytes | dict[str, object], detail: str) -> None:
    assert _error(body) == detail


def test_whole_float_n_samples_is_refused_not_truncated() -> None:
    assert _error(b'{"texts": ["a"], "n_samples": 5.0}') == "n_samples: Input should be a valid integer"


def test_examples_match_the_schemas() -> None:
    check_limits(PredictRequest.model_validate(PREDICT_EXAMPLE_REQUEST), Limits(64, 10_000, 1000))
    PredictResponse.model_validate(PREDICT_EXAMPLE_RESPONSE)


def test_prediction_fields_match_the_engine() -> None:
    assert set(PredictionOut.model_fields) == set(Prediction.__dataclass_fields__)
