"""The ``/v2`` endpoints in-process (TestClient, lifespan included): what only an engine that misbehaves on purpose
shows (out of memory, an unexpected error), streamed bodies over the limit, and that the same refusals keep their
``/v1`` shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from conftest import MakeCheckpoint
from mcdrop.core.errors import OutOfMemory
from mcdrop.serving.app import create_app
from mcdrop.serving.registry import Service
from mcdrop.serving.settings import Settings

INFER = "/v2/models/tiny-mlp/infer"
BODY: dict[str, Any] = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["great fun"]}]}


@pytest.fixture
def client(make_checkpoint: MakeCheckpoint) -> Iterator[TestClient]:
    model_dir = make_checkpoint("mlp", name="tiny-mlp").parent
    settings = Settings(model_dir=model_dir, warmup_passes=0, access_log=False, max_body_bytes=1000)
    with TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.01)
        yield test_client


def _break_engine(client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    service: Service = client.app.state.service  # type: ignore[attr-defined]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(service.models["tiny-mlp"].engine, "predict_many", broken)


def test_out_of_memory_is_503_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    _break_engine(client, monkeypatch, OutOfMemory("out of memory on cpu for a batch of 1 texts; retry later"))
    v2 = client.post(INFER, json=BODY)
    assert (v2.status_code, v2.headers["retry-after"]) == (503, "1")
    assert v2.json() == {"error": "out of memory on cpu for a batch of 1 texts; retry later"}
    v1 = client.post("/v1/predict", json={"texts": ["great fun"]})
    assert (v1.status_code, v1.json()) == (503, {"detail": "out of memory on cpu for a batch of 1 texts; retry later"})


def test_unexpected_error_is_a_plain_500_in_the_protocol_shape(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _break_engine(client, monkeypatch, RuntimeError("kaboom"))
    response = client.post(INFER, json=BODY, headers={"x-request-id": "req-7"})
    assert (response.status_code, response.json()) == (500, {"error": "internal server error"})
    assert response.headers["x-request-id"] == "req-7"
    v1 = client.post("/v1/predict", json={"texts": ["a"]})
    assert (v1.status_code, v1.json()) == (500, {"detail": "internal server error"})


def test_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        yield b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["'
        yield b"a" * 2000
        yield b'"]}]}'

    response = client.post(INFER, content=chunks())
    assert (response.status_code, response.json()) == (413, {"error": "body: at most 1000 bytes"})


def test_server_timing_and_request_id_are_set(client: TestClient) -> None:
    response = client.post(INFER, json={**BODY, "id": "mine"}, headers={"x-request-id": "req-9"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["id"], answer["parameters"]["request_id"]) == ("mine", "req-9")
    assert "engine;dur=" in response.headers["server-timing"]
    without_id = client.post(INFER, json=BODY, headers={"x-request-id": "req-10"}).json()
    assert without_id["id"] == "req-10"  # no id in the request: the request id stands in


def test_openapi_documents_the_v2_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths, path
    assert "example" in paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]


def test_the_cost_limit_refuses_v2_infer_as_it_refuses_v1(client: TestClient) -> None:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    service.settings.max_request_cost = 10  # tiny-mlp: one unit per text and sample
    body = {**BODY, "parameters": {"n_samples": 20}}
    v2 = client.post(INFER, json=body)
    assert v2.status_code == 400
    assert v2.json()["error"].startswith("request: costs 20 units (20 samples x 1 texts by tiny-mlp), more than")
    v1 = client.post("/v1/predict", json={"texts": ["great fun"], "n_samples": 20})
    assert v1.status_code == 422 and v1.json()["detail"] == v2.json()["error"]
    assert client.post(INFER, json={**BODY, "parameters": {"n_samples": 10}}).status_code == 200


def test_mc_tolerance_over_v2_stops_as_over_v1(client: TestClient) -> None:
    texts = ["a wonderful film", "zzz"]
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]

    def used(**parameters: Any) -> list[int]:
        body = {"inputs": inputs, "parameters": {"n_samples": 100, "seed": 2, **parameters}}
        response = client.post(INFER, json=body)
        assert response.status_code == 200, response.text
        [output] = [o for o in response.json()["outputs"] if o["name"] == "n_samples_used"]
        assert output["datatype"] == "INT32" and output["shape"] == [2]
        return list(output["data"])

    assert used() == [100, 100]  # the checkpoint's default: 0, fixed N
    assert used(mc_tolerance=0.5) == [20, 20]  # the earliest stop, as /v1 answers it
    v1 = client.post("/v1/predict", json={"texts": texts, "n_samples": 100, "seed": 2, "mc_tolerance": 0.5})
    assert [p["n_samples_used"] for p in v1.json()["predictions"]] == [20, 20]
