"""The HTTP app in-process (TestClient, lifespan included): routes, status codes and exact error bodies."""

from __future__ import annotations

import gc
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from conftest import MakeCheckpoint, assert_predictions_close
from mcdrop.core.engine import MCEngine
from mcdrop.serving.app import create_app
from mcdrop.serving.registry import FULL_GC_EVERY, Service
from mcdrop.serving.responses import PredictResponse
from mcdrop.serving.settings import Settings

KEY = "test-key-0123456789"
JSON = {"content-type": "application/json"}


def _client(model_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(**{"model_dir": model_dir, "warmup_passes": 0, "access_log": False, **overrides})
    return TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False)


def _wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture
def model_dir(make_checkpoint: MakeCheckpoint) -> Path:
    return make_checkpoint("mlp", name="tiny-mlp").parent


@pytest.fixture
def client(model_dir: Path) -> Iterator[TestClient]:
    with _client(model_dir) as test_client:
        _wait_ready(test_client)
        yield test_client


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def test_prediction_has_every_field_and_matches_the_schema(client: TestClient) -> None:
    response = client.post("/v1/predict", json={"texts": ["a wonderful film", "zzz qqq"], "n_samples": 8, "seed": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    PredictResponse.model_validate(body)
    assert body["model"] == "tiny-mlp" and body["model_version"] == "test-1"
    assert (body["n_samples"], body["seed"]) == (8, 5)
    assert body["request_id"] == response.headers["x-request-id"]
    first, unknown = body["predictions"]
    assert first["n_tokens"] == 3 and first["oov_fraction"] == 0.0
    assert unknown["oov_fraction"] == 1.0 and unknown["n_known_tokens"] == 0
    assert sum(first["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= first["mutual_information"] <= first["entropy"] + 1e-6
    timing = response.headers["server-timing"]
    for part in ("total;dur=", "parse;dur=", "queue;dur=", "engine;dur="):
        assert part in timing


def test_answer_equals_the_engine_called_directly(client: TestClient) -> None:
    engine: MCEngine = _service(client).models["tiny-mlp"].engine
    body = client.post("/v1/predict", json={"texts": ["great fun", "boring"], "n_samples": 12, "seed": 9}).json()
    assert_predictions_close(body["predictions"], engine.predict(["great fun", "boring"], n_samples=12, seed=9))


def test_seed_is_drawn_reported_and_reproduces(client: TestClient) -> None:
    first = client.post("/v1/predict", json={"texts": ["the best film"]}).json()
    assert isinstance(first["seed"], int)
    assert first["n_samples"] == 20  # the checkpoint's default
    again = client.post("/v1/predict", json={"texts": ["the best film"], "seed": first["seed"]}).json()
    assert_predictions_close(again["predictions"], first["predictions"])


def test_empty_text_is_predicted_on_no_evidence(client: TestClient) -> None:
    [prediction] = client.post("/v1/predict", json={"texts": [""], "seed": 1}).json()["predictions"]
    assert (prediction["n_tokens"], prediction["n_known_tokens"], prediction["oov_fraction"]) == (0, 0, 1.0)


def test_mc_tolerance_from_the_request_the_server_or_the_checkpoint(model_dir: Path) -> None:
    body: dict[str, Any] = {"texts": ["a wonderful film", "zzz"], "n_samples": 100, "seed": 2}

    def used(client: TestClient, **extra: Any) -> list[int]:
        response = client.post("/v1/predict", json={**body, **extra})
        assert response.status_code == 200, response.text
        return [p["n_samples_used"] for p in response.json()["predictions"]]

    with _client(model_dir) as client:
        _wait_ready(client)
        assert used(client) == [100, 100]  # the checkpoint's default: 0, fixed N
        assert used(client, mc_tolerance=0.5) == [20, 20]  # the earliest stop: after the second round
        fixed = client.post("/v1/predict", json=body).json()["predictions"]
        assert client.post("/v1/predict", json={**body, "mc_tolerance": 0}).json()["predictions"] == fixed
        metrics = client.get("/metrics").text
        assert 'mcdrop_samples_used_count{model="tiny-mlp"} 8.0' in metrics
    with _client(model_dir, mc_tolerance=0.5) as client:
        _wait_ready(client)
        assert used(client) == [20, 20]
        assert used(client, mc_tolerance=0.0) == [100, 100]


def test_the_start_up_heap_is_frozen_out_of_the_cyclic_gc(client: TestClient) -> None:
    assert gc.get_freeze_count() > 10_000  # torch, the models and the app: a full collection skips them
    assert gc.get_threshold()[2] == FULL_GC_EVERY  # and full collections are rarer


def test_one_sample_has_zero_mutual_information(client: TestClient) -> None:
    [prediction] = client.post("/v1/predict", json={"texts": ["great"], "n_samples": 1}).json()["predictions"]
    assert prediction["mutual_information"] == pytest.approx(0.0, abs=1e-6)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in prediction["variance"].values())


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"texts": []}, 422, "texts: at least 1 text per request (got 0)"),
        ({"texts": ["a"] * 65}, 422, "texts: at most 64 texts per request (got 65)"),
        ({"texts": ["a" * 10_001]}, 422, "texts[0]: at most 10000 characters per text (got 10001)"),
        ({"texts": ["a"], "n_samples": 1001}, 422, "n_samples: must be between 1 and 1000 (got 1001)"),
        ({"texts": ["a"], "model": "nope"}, 404, "model 'nope' not found; available: tiny-mlp"),
        (
            {"texts": ["a"], "extra": 1},
            422,
            "extra: unknown field (expected texts, model, n_samples, seed, max_risk, coverage, max_novelty, "
            "mc_tolerance)",
        ),
    ],
)
def test_invalid_requests(client: TestClient, body: dict[str, Any], status: int, detail: str) -> None:
    response = client.post("/v1/predict", json=body)
    assert (response.status_code, response.json()) == (status, {"detail": detail})


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "body: invalid JSON (key must be a string at line 1 column 2)"),
        (b'{"texts": ["\xff\xfe"]}', "body: invalid JSON (invalid unicode code point at line 1 column 13)"),
        (b"", "body: invalid JSON (EOF while parsing a value at line 1 column 0)"),
    ],
)
def test_malformed_bodies_are_422(client: TestClient, content: bytes, detail: str) -> None:
    response = client.post("/v1/predict", content=content, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (422, {"detail": detail})


def test_body_limit_checks_declared_and_streamed_sizes(model_dir: Path) -> None:
    with _client(model_dir, max_body_bytes=1000) as client:
        _wait_ready(client)
        big = b'{"texts": ["' + b"a" * 2000 + b'"]}'
        response = client.post("/v1/predict", content=big, headers=JSON)
        assert (response.status_code, response.json()) == (
            413,
            {"detail": f"body: at most 1000 bytes (Content-Length is {len(big)})"},
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they arrive
            yield b'{"texts": ["'
            for _ in range(20):
                yield b"a" * 100
            yield b'"]}'

        response = client.post("/v1/predict", content=chunks(), headers=JSON)
        assert (response.status_code, response.json()) == (413, {"detail": "body: at most 1000 bytes"})


def test_request_id_is_taken_when_sane_else_generated(client: TestClient) -> None:
    ok = client.get("/healthz", headers={"x-request-id": "abc-123.X:y_z"})
    assert ok.headers["x-request-id"] == "abc-123.X:y_z"
    for bad in ("has space", "x" * 65, "<script>"):
        generated = client.get("/healthz", headers={"x-request-id": bad}).headers["x-request-id"]
        assert generated != bad and len(generated) == 32


def test_models_endpoints(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["default_model"] == "tiny-mlp"
    [model] = listing["models"]
    assert model["name"] == "tiny-mlp" and model["default"] is True
    assert model["labels"] == ["negative", "positive"] and model["default_n_samples"] == 20
    detail = client.get("/v1/models/tiny-mlp").json()
    assert detail["config"]["uncertainty_baseline"]["mutual_information_threshold"] == 0.05
    missing = client.get("/v1/models/nope")
    assert (missing.status_code, missing.json()) == (404, {"detail": "model 'nope' not found; available: tiny-mlp"})


def test_unknown_routes_and_methods_answer_detail(client: TestClient) -> None:
    assert client.get("/nope").json() == {"detail": "Not Found"}
    assert client.get("/v1/predict").status_code == 405
    text = client.get("/metrics").text
    assert 'endpoint="unmatched"' in text and "/nope" not in text


def test_unknown_model_creates_no_metric_labels(client: TestClient) -> None:
    client.post("/v1/predict", json={"texts": ["a"], "model": "attacker-chosen"})
    assert "attacker-chosen" not in client.get("/metrics").text


def test_auth(model_dir: Path) -> None:
    with _client(model_dir, api_keys=f"other-key-abcdefghij,{KEY}") as client:
        _wait_ready(client)
        missing = client.post("/v1/predict", json={"texts": ["a"]})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json() == {"detail": "missing API key: send 'Authorization: Bearer <key>'"}
        wrong = client.post("/v1/predict", json={"texts": ["a"]}, headers={"authorization": "Bearer wrong"})
        assert (wrong.status_code, wrong.json()) == (403, {"detail": "invalid API key"})
        basic = client.get("/v1/models", headers={"authorization": f"Basic {KEY}"})
        assert basic.status_code == 401
        ok = client.post("/v1/predict", json={"texts": ["a"]}, headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path


def test_api_keys_are_compared_as_digests_of_one_length(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[int, int]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare_digest(a, b)

    monkeypatch.setattr("mcdrop.serving.dependencies.hmac.compare_digest", spy)
    with _client(model_dir, api_keys=f"other-key-abcdefghij,{KEY}") as client:
        _wait_ready(client)
        for sent in ("wrong", KEY, KEY + "-and-more"):  # the time taken must not depend on the sent key's length
            client.get("/v1/models", headers={"authorization": f"Bearer {sent}"})
    assert compared == [(32, 32)] * 6  # every configured key, every time


def test_several_models_without_default_need_a_name(make_checkpoint: MakeCheckpoint) -> None:
    make_checkpoint("mlp", name="tiny-mlp")
    model_dir = make_checkpoint("gru", name="tiny-gru").parent
    with _client(model_dir) as client:
        _wait_ready(client)
        response = client.post("/v1/predict", json={"texts": ["a"]})
        assert response.json() == {
            "detail": "model: required when several models are served (tiny-gru, tiny-mlp); "
            "name one, or start the server with MCDROP_DEFAULT_MODEL"
        }
        assert client.post("/v1/predict", json={"texts": ["a"], "model": "tiny-gru"}).status_code == 200


def test_not_ready_while_loading(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = Service._load_one

    def slow_load(self: Service, path: Path) -> MCEngine:
        assert release.wait(10)
        return original(self, path)

    monkeypatch.setattr(Service, "_load_one", slow_load)
    with _client(model_dir) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert (ready.status_code, ready.headers["retry-after"]) == (503, "5")
        assert ready.json()["status"] == "loading"
        refused = client.post("/v1/predict", json={"texts": ["a"]})
        assert (refused.status_code, refused.json()) == (503, {"detail": "not ready: models are loading"})
        assert refused.headers["retry-after"] == "5"
        release.set()
        _wait_ready(client)
        assert 'mcdrop_rejected_requests_total{model="",reason="not_ready"} 1.0' in client.get("/metrics").text


def test_failed_load_is_reported(model_dir: Path) -> None:
    (model_dir / "tiny-mlp" / "model.safetensors").write_bytes(b"not safetensors")
    with _client(model_dir) as client:
        for _ in range(500):
            if client.get("/readyz").json()["status"] != "loading":
                break
            time.sleep(0.01)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert "model.safetensors: corrupt or unreadable safetensors file" in ready.json()["detail"]


def test_no_checkpoints_fails_startup(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no checkpoints found"), _client(tmp_path):
        pass


def test_deadline_gives_504(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _service(client).models["tiny-mlp"].engine
    original = engine.predict_many

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "predict_many", slow)
    monkeypatch.setattr(_service(client).settings, "request_timeout_s", 0.1)
    response = client.post("/v1/predict", json={"texts": ["a"]})
    assert (response.status_code, response.json()) == (504, {"detail": "deadline exceeded: no answer within 0.1s"})
    assert 'mcdrop_rejected_requests_total{model="tiny-mlp",reason="timeout"} 1.0' in client.get("/metrics").text


def test_unexpected_error_is_a_plain_500_logged_with_the_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _service(client).models["tiny-mlp"].engine

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(engine, "predict_many", broken)
    from mcdrop.serving.context import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR):
        response = client.post("/v1/predict", json={"texts": ["a"]}, headers={"x-request-id": "req-42"})
    assert (response.status_code, response.json()) == (500, {"detail": "internal server error"})
    assert response.headers["x-request-id"] == "req-42"
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.request_id == "req-42"  # type: ignore[attr-defined]
    assert "kaboom" in caplog.text


def test_client_that_disconnects_mid_upload_is_a_499_not_an_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    incoming = [{"type": "http.request", "body": b'{"texts": ["half a', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert client.portal is not None
    with caplog.at_level(logging.INFO):
        client.portal.call(client.app, scope, receive, send)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
    text = client.get("/metrics").text
    assert 'mcdrop_requests_total{endpoint="/v1/predict",method="POST",status="4xx"} 1.0' in text
    assert 'endpoint="/v1/predict",method="POST",status="5xx"' not in text


def test_paths_cannot_forge_log_lines(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    forged = "%0A2024-01-01 00:00:00,000 INFO mcdrop.access [-] forged"
    with _client(model_dir, access_log=True) as client:
        _wait_ready(client)
        with caplog.at_level(logging.INFO, logger="mcdrop.access"):
            assert client.post("/v1/predict" + forged, json={"texts": ["a"]}).status_code == 404
            assert client.get("/v1/models/tiny-mlp" + forged).status_code == 404
    unmatched, matched = [r.getMessage() for r in caplog.records if r.name == "mcdrop.access"]
    assert "\n" not in unmatched and "\n" not in matched
    assert unmatched.startswith('"POST /v1/predict\\n2024-01-01 00:00:00,000 INFO mcdrop.access [-] forged" 404 ')
    assert matched.startswith('"GET /v1/models/{name}" 404 ')  # the route template, not what the client sent


def test_openapi_documents_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["example"]["texts"]
    assert {"200", "401", "403", "404", "413", "422", "503", "504"} <= set(predict["responses"])
    assert spec["components"]["schemas"]["PredictResponse"]["examples"]


def test_out_of_memory_is_a_503_to_retry(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _service(client).models["tiny-mlp"].engine

    def exhausted(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(engine.model, "stochastic_tail", exhausted)  # the device runs out in the middle of a pass
    response = client.post("/v1/predict", json={"texts": ["a"]})
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert response.json() == {
        "detail": "model tiny-mlp ran out of memory for this batch; retry later or with fewer texts or samples"
    }


HOSTILE_BODIES = [
    b"[" * 5000 + b"]" * 5000,
    b'{"texts": ["\\ud800"]}',
    b'{"texts": ["a\\u0000b"], "seed": 0}',
    b'{"texts": ["a"], "n_samples": true}',
    b'{"texts": ["a"], "n_samples": 1e400}',
    b'{"texts": ["a"], "seed": 100000000000000000000000000000}',
    b'{"texts": [["a"]]}',
    b'{"texts": {"0": "a"}}',
    b'{"texts": ["a"], "model": null, "n_samples": null, "seed": null}',
    b'{"texts": ["a"]}{"texts": ["b"]}',
    b"\x00\x01\x02",
    b"\xef\xbb\xbf{}",
    '{"texts": ["\U0001f600 \u202e \ufeff"]}'.encode(),
]


@pytest.mark.parametrize("content", HOSTILE_BODIES)
def test_nothing_a_client_sends_is_a_5xx(client: TestClient, content: bytes) -> None:
    response = client.post("/v1/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    assert isinstance(response.json()["detail" if response.status_code >= 400 else "predictions"], str | list)
