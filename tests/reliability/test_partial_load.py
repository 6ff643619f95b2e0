"""One bad checkpoint among good ones: the good ones are served, the bad one is reported (``/readyz``, a metric, 503
for requests naming it), unless ``MCDROP_REQUIRE_ALL_MODELS`` asks to refuse to start.

Before, one corrupt checkpoint next to a good one meant nothing was served; a checkpoint with NaN weights loaded,
reported ready and answered 500 to every request.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from safetensors.torch import load_file, save_file

from conftest import MakeCheckpoint, write_tiny_checkpoint
from harness import serve
from mcdrop.serving.app import create_app
from mcdrop.serving.settings import Settings


def _client(model_dir: Path, **overrides: Any) -> TestClient:
    settings = Settings(**{"model_dir": model_dir, "warmup_passes": 0, "access_log": False, **overrides})
    return TestClient(create_app(settings, CollectorRegistry()), raise_server_exceptions=False)


def _settled(client: TestClient) -> httpx.Response:
    deadline = time.monotonic() + 30
    while (ready := client.get("/readyz")).json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return ready


def _corrupt(path: Path) -> None:
    (path / "model.safetensors").write_bytes(b"not safetensors")


def _nan_weights(path: Path) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    tensors["classifier.weight"] = tensors["classifier.weight"] * math.nan
    save_file(tensors, str(path / "model.safetensors"))


def _overflowing(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "temperature": 1e-320}))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_corrupt, "model.safetensors: corrupt or unreadable safetensors file"),
        (_nan_weights, "model.safetensors: tensor 'classifier.weight' holds non-finite values (NaN or infinity)"),
        (_overflowing, "the model's predictions are not finite (NaN or infinity) although its weights are"),
    ],
)
def test_the_good_models_are_served_and_the_bad_one_reported(
    make_checkpoint: MakeCheckpoint, spoil: Any, reason: str
) -> None:
    make_checkpoint("mlp", name="good")
    bad = make_checkpoint("gru" if spoil is _nan_weights else "mlp", name="bad")
    spoil(bad)
    with _client(bad.parent) as client:
        ready = _settled(client)
        body = ready.json()
        assert (ready.status_code, body["status"], body["models"]) == (200, "ready", ["good"])
        assert list(body["failed"]) == ["bad"] and reason in body["failed"]["bad"]
        assert "\n" not in body["failed"]["bad"]
        assert body["detail"].startswith("1 checkpoint(s) failed to load: ")
        assert client.post("/v1/predict", json={"texts": ["a film"], "model": "good"}).status_code == 200
        refused = client.post("/v1/predict", json={"texts": ["a film"], "model": "bad"})
        assert (refused.status_code, refused.json()["detail"]) == (
            503,
            "model 'bad' is not available: its checkpoint bad failed to load (see /readyz); available: good",
        )
        assert refused.headers["retry-after"] == "1"
        metrics = client.get("/metrics").text
        assert 'mcdrop_model_load_failures_total{model_dir_entry="bad"} 1.0' in metrics
        assert "mcdrop_ready 1.0" in metrics


def test_two_checkpoints_of_one_name_are_both_refused(make_checkpoint: MakeCheckpoint) -> None:
    root = make_checkpoint("mlp", name="good").parent
    for entry in (make_checkpoint("mlp", name="twin-a"), make_checkpoint("gru", name="twin-b")):
        config = json.loads((entry / "config.json").read_text())
        (entry / "config.json").write_text(json.dumps({**config, "name": "twin"}))
    with _client(root) as client:
        body = _settled(client).json()
        assert (body["status"], body["models"], sorted(body["failed"])) == ("ready", ["good"], ["twin-a", "twin-b"])
        assert "2 checkpoints are named 'twin' (twin-a, twin-b)" in body["failed"]["twin-a"]
        assert client.post("/v1/predict", json={"texts": ["a"], "model": "twin"}).status_code == 503


def test_a_failed_default_model_stays_the_default(make_checkpoint: MakeCheckpoint) -> None:
    root = make_checkpoint("mlp", name="good").parent
    _corrupt(make_checkpoint("mlp", name="main"))
    with _client(root, default_model="main") as client:
        assert _settled(client).status_code == 200
        refused = client.post("/v1/predict", json={"texts": ["a"]})  # names no model: the default, which failed
        assert refused.status_code == 503 and refused.json()["detail"].startswith("model 'main' is not available")


@pytest.mark.parametrize("require_all", [True, False])
def test_require_all_models_refuses_to_serve_and_nothing_loaded_always_does(
    make_checkpoint: MakeCheckpoint, require_all: bool
) -> None:
    bad = make_checkpoint("mlp", name="bad")
    _corrupt(bad)
    if require_all:
        make_checkpoint("mlp", name="good")
    with _client(bad.parent, require_all_models=require_all) as client:
        ready = _settled(client)
        body = ready.json()
        assert (ready.status_code, body["status"], body["models"]) == (503, "failed", [])
        assert "failed to load" in body["detail"] and "bad" in body["failed"]
        refused = client.post("/v1/predict", json={"texts": ["a"], "model": "good"})
        assert refused.status_code == 503 and refused.json()["detail"].startswith("not ready: 1 checkpoint(s) failed")


def test_real_server_serves_the_good_model_or_exits_when_all_are_required(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "models", "mlp", "good")
    _corrupt(write_tiny_checkpoint(tmp_path / "models", "mlp", "bad"))
    with serve(tmp_path / "models", tmp_path, warmup_passes=0) as server:
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert (ready.status_code, ready.json()["models"], list(ready.json()["failed"])) == (200, ["good"], ["bad"])
        answer = httpx.post(server.url + "/v1/predict", json={"texts": ["a"], "model": "good"}, timeout=30)
        assert answer.status_code == 200
        assert "cannot serve bad: " in server.log()
    with serve(tmp_path / "models", tmp_path, wait_ready=False, warmup_passes=0, require_all_models="true") as server:
        assert server.process.wait(timeout=60) == 2
        [line] = [line for line in server.log().splitlines() if "mcdrop serve: error: cannot serve:" in line]
        assert "bad/model.safetensors: corrupt or unreadable safetensors file" in line
