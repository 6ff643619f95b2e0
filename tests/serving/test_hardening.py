"""Refusals that stay cheap and short whatever a client sends: bounded 422s, 415s, cut echoes, the in-flight limit,
and an OpenAPI schema that states the limits and asks for a key only when keys are on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from conftest import MakeCheckpoint
from mcdrop.core.engine import MAX_SEED
from mcdrop.serving.app import create_app
from mcdrop.serving.settings import Settings

JSON = {"content-type": "application/json"}
UNKNOWN = "unknown field (expected texts, model, n_samples, seed, max_risk, coverage, max_novelty, mc_tolerance)"


def _client(model_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(**{"model_dir": model_dir, "warmup_passes": 0, "access_log": False, **overrides})
    return TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_tiny_checkpoint

    directory = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(directory, "mlp", "tiny-mlp", calibrated=True)
    return directory


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with _client(model_dir, busy_delay_s=0) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield test_client


def _post(client: TestClient, content: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, int]:
    response = client.post("/v1/predict", content=content, headers=JSON if headers is None else headers)
    return response.status_code, response.json()["detail"], len(response.content)


def test_a_megabyte_of_wrong_items_gets_a_short_422_quickly(client: TestClient) -> None:
    body = b'{"texts": [' + b",".join([b"1"] * 500_000) + b"]}"  # 1 MB: once a 24 MB error body and seconds of CPU
    start = time.perf_counter()
    status, detail, size = _post(client, body)
    assert time.perf_counter() - start < 0.5
    assert (status, detail) == (422, "texts: at most 64 texts per request (got 500000)")
    assert size < 4096


def test_many_bad_items_or_unknown_fields_list_the_first_five_and_a_count(client: TestClient) -> None:
    status, detail, _ = _post(client, json.dumps({"texts": [1] * 64}).encode())
    assert status == 422
    assert detail == "; ".join(f"texts[{i}]: Input should be a valid string" for i in range(5)) + "; and 59 more"
    keys = {f"k{i}": 0 for i in range(60_000)}  # 0.8 MB
    start = time.perf_counter()
    status, detail, size = _post(client, json.dumps({"texts": ["a"], **keys}).encode())
    assert time.perf_counter() - start < 1.0
    assert status == 422 and size < 4096
    assert detail == "; ".join(f"k{i}: {UNKNOWN}" for i in range(5)) + "; and 59995 more"


def test_echoed_values_are_cut(client: TestClient) -> None:
    name = "m" * 500_000
    status, detail, size = _post(client, json.dumps({"texts": ["a"], "model": name}).encode())
    assert (status, detail) == (404, f"model '{'m' * 100}…' not found; available: tiny-mlp")
    status, detail, size = _post(client, json.dumps({"texts": ["a"], "x" * 5000: 1}).encode())
    assert (status, detail) == (422, f"{'x' * 100}…: {UNKNOWN}")
    assert size < 4096


@pytest.mark.parametrize("digits", [4300, 5000, 100_000])
def test_a_huge_seed_is_out_of_range_not_invalid_json(client: TestClient, digits: int) -> None:
    status, detail, _ = _post(client, b'{"texts": ["a"], "seed": ' + b"9" * digits + b"}")
    assert (status, detail) == (422, f"seed: must be between 0 and {MAX_SEED} (got a {digits}-digit number)")
    status, detail, _ = _post(client, b'{"texts": ["a"], "n_samples": -' + b"9" * digits + b"}")
    assert (status, detail) == (422, f"n_samples: must be between 1 and 1000 (got a {digits}-digit number)")


def test_an_unpaired_surrogate_is_called_lone(client: TestClient) -> None:
    status, detail, _ = _post(client, b'{"texts": ["\\udfff"]}')
    assert (status, detail) == (422, "body: invalid JSON (lone surrogate in a \\u escape at line 1 column 18)")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "body: expected Content-Type: application/json (got none)"),
        ({"content-type": "text/plain"}, "body: expected Content-Type: application/json (got text/plain)"),
        ({"content-type": "application/x-www-form-urlencoded"}, None),
        ({"content-type": "application/json; charset=latin-1"}, "body: JSON must be UTF-8 (got charset=latin-1)"),
        (
            {"content-type": "application/json", "content-encoding": "gzip"},
            "body: Content-Encoding 'gzip' is not supported; send the JSON uncompressed",
        ),
    ],
)
def test_a_body_not_declared_as_plain_json_is_415(
    client: TestClient, headers: dict[str, str], detail: str | None
) -> None:
    status, got, _ = _post(client, b'{"texts": ["a"]}', headers)
    assert status == 415
    assert got == detail or (detail is None and got.startswith("body: expected Content-Type: application/json"))


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/problem+json", "APPLICATION/JSON"],
)
def test_json_media_types_are_accepted(client: TestClient, content_type: str) -> None:
    response = client.post(
        "/v1/predict", content=b'{"texts": ["a"], "n_samples": 2}', headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


def test_past_the_in_flight_limit_predictions_get_503_before_the_body_is_read(client: TestClient) -> None:
    in_flight = client.app.state.in_flight  # type: ignore[attr-defined]
    in_flight.count = in_flight.limit
    try:
        response = client.post("/v1/predict", content=b"not even JSON", headers={"content-type": "text/plain"})
        assert client.get("/healthz").status_code == 200  # other endpoints are not limited
    finally:
        in_flight.count = 0
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"detail": "server busy: 64 predictions in progress (limit 64); retry later"}
    assert len(response.headers["x-request-id"]) == 32
    assert 'mcdrop_rejected_requests_total{model="",reason="busy"} 1.0' in client.get("/metrics").text
    assert client.post("/v1/predict", json={"texts": ["a"], "n_samples": 2}).status_code == 200


def test_the_in_flight_limit_covers_v2_infer_in_its_own_dialect(client: TestClient) -> None:
    in_flight = client.app.state.in_flight  # type: ignore[attr-defined]
    in_flight.count = in_flight.limit
    try:
        response = client.post("/v2/models/tiny-mlp/infer", content=b"{}")
    finally:
        in_flight.count = 0
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {"error": "server busy: 64 predictions in progress (limit 64); retry later"}
    assert 'endpoint="/v2/models/{name}/infer"' in client.get("/metrics").text


def test_openapi_states_the_limits_and_no_auth_without_keys(model_dir: Path) -> None:
    settings = {"max_texts_per_request": 8, "max_text_chars": 300, "max_n_samples": 50}
    with _client(model_dir, **settings) as client:
        spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = body["properties"]
    assert (fields["texts"]["minItems"], fields["texts"]["maxItems"]) == (1, 8)
    assert fields["texts"]["items"] == {"type": "string", "maxLength": 300}
    ranges = {
        name: [(p["minimum"], p["maximum"]) for p in fields[name]["anyOf"] if "minimum" in p]
        for name in fields
        if name != "texts"
    }
    assert ranges["n_samples"] == [(1, 50)] and ranges["seed"] == [(0, MAX_SEED)]
    assert ranges["max_risk"][0] == (0.01, 0.5) and ranges["coverage"][0] == (0.5, 0.99)
    assert ranges["max_novelty"][0] == (0.0, 1.0)
    assert "securitySchemes" not in spec.get("components", {})
    assert all("security" not in op for ops in spec["paths"].values() for op in ops.values())


def test_openapi_declares_bearer_auth_with_keys(model_dir: Path, make_checkpoint: MakeCheckpoint) -> None:
    with _client(model_dir, api_keys="key-0123456789abcdef") as client:
        spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/predict"]["post"]["security"] == [{"HTTPBearer": []}]
