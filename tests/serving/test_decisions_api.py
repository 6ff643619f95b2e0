"""Decisions over HTTP: max_risk, coverage and max_novelty on /v1/predict, their 422s, and /v1/models' summary."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from test_app import _wait_ready

from conftest import MakeCheckpoint
from mcdrop.serving.app import create_app
from mcdrop.serving.responses import PredictResponse
from mcdrop.serving.settings import Settings


def _client(model_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(**{"model_dir": model_dir, "warmup_passes": 0, "access_log": False, **overrides})
    return TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False)


@pytest.fixture
def model_dir(make_checkpoint: MakeCheckpoint) -> Path:
    make_checkpoint("mlp", name="calibrated", calibrated=True)
    return make_checkpoint("mlp", name="plain").parent


@pytest.fixture
def client(model_dir: Path) -> Iterator[TestClient]:
    with _client(model_dir) as test_client:
        _wait_ready(test_client)
        yield test_client


def _predict(client: TestClient, **fields: Any) -> Any:
    body = {"texts": ["a wonderful moving film with great acting", "das war ein langweiliger Film"], "n_samples": 8}
    body |= {"seed": 3, **fields}
    return client.post("/v1/predict", json={"model": "calibrated", **body})


def test_decision_fields_follow_the_request(client: TestClient) -> None:
    plain = _predict(client)
    assert plain.status_code == 200, plain.text
    for prediction in plain.json()["predictions"]:
        assert prediction["decision"] is None and prediction["prediction_set"] and 0 <= prediction["novelty"] <= 1
    decided = _predict(client, max_risk=0.3, coverage=0.8, max_novelty=0.95)
    assert decided.status_code == 200, decided.text
    PredictResponse.model_validate(decided.json())
    first, foreign = decided.json()["predictions"]
    assert first["decision"]["max_risk"] == 0.3 and first["decision"]["max_novelty"] == 0.95
    assert first["decision"]["action"] in ("accept", "abstain")
    assert (foreign["decision"]["action"], foreign["decision"]["reason"]) == ("abstain", "novel")
    # the same seed gives the same decisions; sampling does not depend on the policy
    again = _predict(client, max_risk=0.3, coverage=0.8, max_novelty=0.95).json()["predictions"]
    assert again == decided.json()["predictions"]
    assert [p["probs"] for p in again] == [p["probs"] for p in plain.json()["predictions"]]


def test_unreachable_risk_abstains_and_says_why(client: TestClient) -> None:
    [first, _] = _predict(client, max_risk=0.01).json()["predictions"]
    decision = first["decision"]
    assert (decision["action"], decision["reason"], decision["threshold"]) == ("abstain", "uncertain", None)
    assert "raise max_risk" in decision["detail"]


def test_server_default_max_risk(model_dir: Path) -> None:
    with _client(model_dir, max_risk=0.2, coverage=0.95) as client:
        _wait_ready(client)
        [first, _] = _predict(client).json()["predictions"]
        assert first["decision"]["max_risk"] == 0.2
        plain = client.post("/v1/predict", json={"model": "plain", "texts": ["a film"]}).json()
        assert plain["predictions"][0]["decision"] is None  # the default applies to calibrated models only
        metrics = client.get("/metrics").text
        series = r'mcdrop_decisions_total\{action="abstain",model="calibrated",reason="novel"\} (\S+)'
        novel = re.search(series, metrics)
        assert novel is not None and float(novel.group(1)) >= 1.0
        assert 'mcdrop_uncertainty_baseline{model="calibrated",statistic="abstain_share"}' in metrics


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"max_risk": 0.005}, "max_risk: must be between 0.01 and 0.5 (got 0.005)"),
        ({"max_risk": 0.6}, "max_risk: must be between 0.01 and 0.5 (got 0.6)"),
        ({"max_risk": "0.1"}, "max_risk: Input should be a valid number"),
        ({"max_risk": True}, "max_risk: Input should be a valid number"),
        ({"coverage": 0.3}, "coverage: must be between 0.5 and 0.99 (got 0.3)"),
        ({"coverage": 1}, "coverage: must be between 0.5 and 0.99 (got 1)"),
        ({"max_novelty": -0.1}, "max_novelty: must be between 0 and 1 (got -0.1)"),
        ({"max_novelty": 1.5}, "max_novelty: must be between 0 and 1 (got 1.5)"),
    ],
)
def test_bad_decision_fields_are_422_naming_the_field_and_range(
    client: TestClient, fields: dict[str, Any], detail: str
) -> None:
    response = _predict(client, **fields)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail), response.json()


def test_an_uncalibrated_model_says_how_to_calibrate(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"model": "plain", "texts": ["a film"], "max_risk": 0.1})
    assert (response.status_code, response.json()) == (
        422,
        {
            "detail": "max_risk: model plain has no calibration, so it cannot decide; calibrate it with `mcdrop "
            "calibrate CHECKPOINT --data FILE --out DIR` (a labelled sample of your traffic, at least 200 texts)"
        },
    )
    assert client.post("/v1/predict", json={"model": "plain", "texts": ["a"], "coverage": 0.9}).status_code == 422
    plain = client.post("/v1/predict", json={"model": "plain", "texts": ["a film"]}).json()["predictions"][0]
    assert (plain["novelty"], plain["prediction_set"], plain["decision"]) == (None, None, None)


def test_models_list_the_calibration(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["plain"]["calibration"] is None
    summary = models["calibrated"]["calibration"]
    assert (summary["delta"], summary["score"], summary["conformal_method"]) == (0.1, "entropy", "LAC")
    assert set(summary["max_risk"]) == {"0.05", "0.1", "0.2"} and summary["max_novelty"] == 0.99
    coverages = [summary["max_risk"][a]["coverage"] for a in ("0.05", "0.1", "0.2")]
    assert coverages == sorted(coverages)
