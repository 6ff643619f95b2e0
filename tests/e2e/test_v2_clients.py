"""The Open Inference Protocol on the real server: ``mcdrop serve`` on 127.0.0.1 driven by the protocol's own
clients, tritonclient.http (binary and JSON tensors) and KServe's InferenceRESTClient.

A seeded answer on ``/v2`` carries exactly the numbers ``/v1/predict`` gives for the same texts, model and seed;
every refusal arrives as the status and one-line message the clients report. Every server is stopped, every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve.inference_client import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from tritonclient.utils import InferenceServerException

from conftest import write_tiny_checkpoint
from mcdrop.serving.launch import ServerProcess, ServerStartError, start_server

KEY = "v2-test-key-0123456789"


def auth() -> dict[str, str]:
    """The key header, a fresh dict per call: both clients add their own headers to the dict they are given."""
    return {"Authorization": f"Bearer {KEY}"}


START_TIMEOUT_S = 60.0
LABELS = ["negative", "positive"]
TEXTS = ["a wonderful film", "boring script", "zzz qqq", "the worst film of the year"]
FLOAT_FIELDS = ("entropy", "expected_entropy", "mutual_information", "variation_ratio", "oov_fraction")
CLASS_FIELDS = ("probs", "variance", "std_error")
PLAIN_OUTPUTS = (
    "label, probs, variance, std_error, entropy, expected_entropy, mutual_information, variation_ratio, "
    "oov_fraction, n_tokens, n_known_tokens, n_samples_used"
)
# Dropout before the recurrence: every sample is a GRU pass, so 8 long texts x 100 samples keep a 2-core CPU busy.
SLOW_GRU: dict[str, Any] = {"hidden_dim": 64, "embed_dim": 64}
LONG_TEXT = "a wonderful moving film with great acting and a boring script the worst film of the year " * 2
T = TypeVar("T")


def _start(model_dir: Path, workdir: Path, *, wait_ready: bool = True, **settings: Any) -> ServerProcess:
    env = {"MCDROP_DEVICE": "cpu", **{f"MCDROP_{k.upper()}": str(v) for k, v in settings.items()}}
    try:
        return start_server(model_dir, workdir / "server.log", env, wait_ready=wait_ready, timeout_s=START_TIMEOUT_S)
    except ServerStartError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """tiny-mlp (no calibration) and tiny-cal (calibrated), API keys on, a 4 KiB body limit."""
    workdir = tmp_path_factory.mktemp("v2")
    write_tiny_checkpoint(workdir / "models", "mlp", "tiny-mlp")
    write_tiny_checkpoint(workdir / "models", "mlp", "tiny-cal", calibrated=True)
    started = _start(workdir / "models", workdir, api_keys=KEY, max_body_bytes=4096, warmup_passes=0)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30) as c:
        yield c


def text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


def kserve_input(texts: list[str], binary: bool) -> InferInput:
    tensor = InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


def kserve(call: Callable[[InferenceRESTClient], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30)) as c:
            return await call(c)

    return asyncio.run(run())


def v1_predictions(server: ServerProcess, model: str, texts: list[str], **fields: Any) -> list[dict[str, Any]]:
    body = {"texts": texts, "model": model, **fields}
    response = httpx.post(server.url + "/v1/predict", json=body, headers=auth(), timeout=30)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def v1_columns(predictions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The /v1 answer laid out as the V2 outputs: one list per output, [B, C] rows flattened in label order."""
    columns: dict[str, list[Any]] = {
        "label": [p["label"] for p in predictions],
        "n_tokens": [p["n_tokens"] for p in predictions],
        "n_known_tokens": [p["n_known_tokens"] for p in predictions],
    }
    columns.update({name: [p[name] for p in predictions] for name in FLOAT_FIELDS})
    columns.update({name: [p[name][label] for p in predictions for label in LABELS] for name in CLASS_FIELDS})
    return columns


# --- health, metadata, readiness -----------------------------------------------------------------------------------


def test_health_and_metadata_with_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # open, like /healthz and /readyz
    assert client.get_server_metadata(headers=auth()) == {
        "name": "mcdrop",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    meta = client.get_model_metadata("tiny-mlp", headers=auth())
    assert (meta["name"], meta["versions"], meta["platform"], meta["labels"]) == (
        "tiny-mlp",
        ["test-1"],
        "mcdrop",
        LABELS,
    )
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {"name": "probs", "datatype": "FP32", "shape": [-1, 2]} in meta["outputs"]
    assert "decision" not in [o["name"] for o in meta["outputs"]]
    assert client.get_model_metadata("tiny-mlp", model_version="test-1", headers=auth()) == meta
    calibrated = client.get_model_metadata("tiny-cal", headers=auth())["outputs"]
    assert {"name": "prediction_set", "datatype": "BOOL", "shape": [-1, 2]} in calibrated
    assert {"name": "decision_threshold", "datatype": "FP32", "shape": [-1]} in calibrated
    assert client.is_model_ready("tiny-mlp", headers=auth())
    assert client.is_model_ready("tiny-cal", model_version="test-1", headers=auth())
    assert not client.is_model_ready("nope", headers=auth())
    assert not client.is_model_ready("tiny-mlp", model_version="9", headers=auth())
    assert not client.is_model_ready("tiny-mlp")  # keys are on: 401 is "not ready" to this client


def test_health_with_kserve(server: ServerProcess) -> None:
    async def calls(c: InferenceRESTClient) -> list[bool]:
        return [
            await c.is_server_live(server.url),
            await c.is_server_ready(server.url),
            await c.is_model_ready(server.url, "tiny-mlp", headers=auth()),
            await c.is_model_ready(server.url, "nope", headers=auth()),
            await c.is_model_ready(server.url, "tiny-mlp"),
        ]

    assert kserve(calls) == [True, True, True, False, False]


def test_model_metadata_over_plain_http(server: ServerProcess) -> None:
    """KServe's REST client has no metadata call; any HTTP client gets it."""
    reply = httpx.get(server.url + "/v2/models/tiny-cal/versions/test-1", headers=auth(), timeout=10)
    assert reply.status_code == 200 and reply.json()["labels"] == LABELS
    ready = httpx.get(server.url + "/v2/models/tiny-cal/versions/test-1/ready", headers=auth(), timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"name": "tiny-cal", "ready": True})


# --- inference -----------------------------------------------------------------------------------------------------


def assert_equals_v1(get: Callable[[str], np.ndarray], expected: dict[str, list[Any]], binary: bool) -> None:
    """Each output equals the /v1 numbers: exactly in JSON, as float32 of the same number in binary data."""
    batch = len(expected["label"])
    for name, values in expected.items():
        array = get(name)
        assert array.shape == ((batch, len(LABELS)) if name in CLASS_FIELDS else (batch,)), name
        if name == "label":
            assert [v.decode() if isinstance(v, bytes) else v for v in array.tolist()] == values
        elif name.startswith("n_"):
            assert array.tolist() == values, name
        elif binary:
            assert array.dtype == np.float32, name
            np.testing.assert_array_equal(array.ravel(), np.array(values, dtype=np.float32), err_msg=name)
        else:
            assert array.ravel().tolist() == values, name


@pytest.mark.parametrize("binary", [True, False])
def test_seeded_infer_equals_v1_with_tritonclient(
    server: ServerProcess, client: triton.InferenceServerClient, binary: bool
) -> None:
    expected = v1_columns(v1_predictions(server, "tiny-mlp", TEXTS, n_samples=15, seed=7))
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in PLAIN_OUTPUTS.split(", ")]
    result = client.infer(
        "tiny-mlp",
        [text_input(TEXTS, binary)],
        outputs=outputs,
        request_id="req-1",
        parameters={"n_samples": 15, "seed": 7},
        headers=auth(),
    )
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("tiny-mlp", "test-1", "req-1")
    assert {k: v for k, v in response["parameters"].items() if k != "request_id"} == {"n_samples": 15, "seed": 7}
    assert re.fullmatch(r"[0-9a-f]{32}", response["parameters"]["request_id"])
    assert all(("data" in o) != binary for o in response["outputs"])

    def get(name: str) -> np.ndarray:
        output = result.get_output(name)
        assert output is not None
        return result.as_numpy(name) if binary else np.array(output["data"]).reshape(output["shape"])

    assert_equals_v1(get, expected, binary)


def test_tritonclient_default_asks_for_binary_outputs(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    result = client.infer("tiny-mlp", [text_input(TEXTS[:2])], parameters={"seed": 3}, headers=auth())
    header = result.get_response()["outputs"]
    assert [o["name"] for o in header] == PLAIN_OUTPUTS.split(", ")  # every output, in the documented order
    assert all("binary_data_size" in o["parameters"] for o in header)
    expected = v1_columns(v1_predictions(server, "tiny-mlp", TEXTS[:2], seed=3))  # the model's default n_samples
    assert result.get_response()["parameters"]["n_samples"] == 20
    assert_equals_v1(result.as_numpy, expected, binary=True)


def test_output_selection_with_tritonclient(client: triton.InferenceServerClient) -> None:
    outputs = [
        triton.InferRequestedOutput("mutual_information", binary_data=False),
        triton.InferRequestedOutput("label"),
        triton.InferRequestedOutput("probs", binary_data=False),
    ]
    result = client.infer(
        "tiny-mlp", [text_input(TEXTS[:2], binary=False)], model_version="test-1", outputs=outputs, headers=auth()
    )
    header = result.get_response()["outputs"]
    assert [(o["name"], "data" in o) for o in header] == [
        ("mutual_information", True),
        ("label", False),
        ("probs", True),
    ]
    assert result.as_numpy("probs").shape == (2, 2)
    assert len(result.as_numpy("label")) == 2


@pytest.mark.parametrize("binary", [True, False])
def test_seeded_infer_equals_v1_with_kserve(server: ServerProcess, binary: bool) -> None:
    expected = v1_columns(v1_predictions(server, "tiny-mlp", TEXTS, n_samples=9, seed=11))
    parameters: dict[str, Any] = {"n_samples": 9, "seed": 11, "binary_data_output": binary}
    request = InferRequest("tiny-mlp", [kserve_input(TEXTS, binary)], request_id="k-1", parameters=parameters)
    response = kserve(lambda c: c.infer(server.url, request, model_name="tiny-mlp", headers=auth()))
    assert isinstance(response, InferResponse)
    assert (response.model_name, response.id) == ("tiny-mlp", "k-1")  # the client does not keep model_version
    assert (response.parameters["n_samples"], response.parameters["seed"]) == (9, 11)

    def get(name: str) -> np.ndarray:
        output = response.get_output_by_name(name)
        assert output is not None
        # as_numpy casts JSON data to float32: compare what was sent instead
        return output.as_numpy() if binary else np.array(output.data).reshape(output.shape)

    assert_equals_v1(get, expected, binary)


def test_output_selection_and_plain_dict_bodies_with_kserve(server: ServerProcess) -> None:
    outputs = [RequestedOutput("entropy"), RequestedOutput("label", parameters={"binary_data": True})]
    request = InferRequest("tiny-mlp", [kserve_input(["great fun"], True)], request_outputs=outputs)
    response = kserve(lambda c: c.infer(server.url, request, model_name="tiny-mlp", headers=auth()))
    assert [o.name for o in response.outputs] == ["entropy", "label"]
    plain = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["great fun"]}],
        "parameters": {"seed": 1},
        "outputs": [{"name": "label"}],
    }
    answer = kserve(lambda c: c.infer(server.url, plain, model_name="tiny-mlp", headers=auth()))
    expected = v1_predictions(server, "tiny-mlp", ["great fun"], seed=1)[0]["label"]
    label = answer.get_output_by_name("label")
    assert label is not None and label.data == [expected]


def _decision_columns(predictions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {
        "novelty": [p["novelty"] for p in predictions],
        "prediction_set": [label in p["prediction_set"] for p in predictions for label in LABELS],
        "decision": [p["decision"]["action"] for p in predictions],
        "decision_reason": [p["decision"]["reason"] or "" for p in predictions],
        "decision_score": [p["decision"]["score"] for p in predictions],
        "decision_threshold": [p["decision"]["threshold"] for p in predictions],
    }


def test_decisions_equal_v1(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    # levels at which the tiny calibrated model accepts some of TEXTS and abstains on others as novel
    fields = {"n_samples": 10, "seed": 1, "max_risk": 0.4, "coverage": 0.5, "max_novelty": 0.5}
    v1 = v1_predictions(server, "tiny-cal", TEXTS, **fields)
    expected = _decision_columns(v1)
    assert {"accept", "abstain"} <= set(expected["decision"]) and "novel" in expected["decision_reason"]
    assert len({tuple(p["prediction_set"]) for p in v1}) > 1  # sets of different sizes: the mask is not constant
    result = client.infer("tiny-cal", [text_input(TEXTS)], parameters=fields, headers=auth())
    response = result.get_response()
    assert (response["parameters"]["max_risk"], response["parameters"]["coverage"]) == (0.4, 0.5)
    assert [o["name"] for o in response["outputs"]][-6:] == [*expected]
    assert result.as_numpy("prediction_set").tolist() == np.array(expected["prediction_set"]).reshape(-1, 2).tolist()
    assert [v.decode() for v in result.as_numpy("decision").tolist()] == expected["decision"]
    assert [v.decode() for v in result.as_numpy("decision_reason").tolist()] == expected["decision_reason"]
    for name in ("novelty", "decision_score", "decision_threshold"):
        np.testing.assert_array_equal(result.as_numpy(name), np.array(expected[name], dtype=np.float32), err_msg=name)
    assert_equals_v1(result.as_numpy, v1_columns(v1), binary=True)


def test_no_threshold_reads_as_nan(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    v1 = v1_predictions(server, "tiny-cal", TEXTS[:1], seed=1, max_risk=0.01)
    assert v1[0]["decision"]["threshold"] is None and v1[0]["decision"]["action"] == "abstain"

    def threshold(binary: bool) -> triton.InferResult:
        outputs = [triton.InferRequestedOutput("decision_threshold", binary_data=binary)]
        tensors = [text_input(TEXTS[:1])]
        return client.infer("tiny-cal", tensors, outputs=outputs, parameters={"max_risk": 0.01}, headers=auth())

    assert math.isnan(threshold(binary=True).as_numpy("decision_threshold")[0])
    plain = threshold(binary=False)
    assert plain.get_output("decision_threshold")["data"] == [None]
    assert math.isnan(plain.as_numpy("decision_threshold")[0])


def test_without_max_risk_the_set_and_novelty_stay(client: triton.InferenceServerClient) -> None:
    result = client.infer("tiny-cal", [text_input(TEXTS[:2])], headers=auth())
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names[-2:] == ["novelty", "prediction_set"] and "decision" not in names
    assert "max_risk" not in result.get_response()["parameters"]


# --- refusals ------------------------------------------------------------------------------------------------------


def _fp32_input() -> triton.InferInput:
    tensor = triton.InferInput("text", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    return tensor


def _matrix_input() -> triton.InferInput:
    tensor = triton.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([["a"]], dtype=object))
    return tensor


def _named(name: str) -> triton.InferInput:
    tensor = triton.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["a"], dtype=object))
    return tensor


TritonCall = Callable[[triton.InferenceServerClient], object]
NO_KEY = "missing API key: send 'Authorization: Bearer <key>'"


def infer(model: str = "tiny-mlp", inputs: list[triton.InferInput] | None = None, **kwargs: Any) -> TritonCall:
    """A tritonclient infer call (with the key unless ``headers`` says otherwise), for the refusal table."""
    tensors = [text_input(["a"])] if inputs is None else inputs
    return lambda c: c.infer(model, tensors, **{"headers": auth(), **kwargs})


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (infer(inputs=[_fp32_input()]), "400", "input 'text': datatype must be BYTES (got \"FP32\")"),
        (infer(inputs=[_matrix_input()]), "400", "input 'text': shape must be [B] with B >= 1 (got [1, 1])"),
        (infer(inputs=[_named("txt")]), "400", "unknown input \"txt\" (expected 'text')"),
        (infer(inputs=[]), "400", "inputs: expected exactly 1 input named 'text' (got 0 inputs)"),
        (infer(inputs=[text_input(["a"] * 65)]), "400", "input 'text': at most 64 texts per request (got 65)"),
        (
            infer(outputs=[triton.InferRequestedOutput("nope")]),
            "400",
            f'unknown output "nope" (available: {PLAIN_OUTPUTS})',
        ),
        (infer(parameters={"n_samples": 0}), "400", "parameters.n_samples: must be between 1 and 1000 (got 0)"),
        (infer(parameters={"max_risk": 0.9}), "400", "parameters.max_risk: must be between 0.01 and 0.5 (got 0.9)"),
        (
            infer(parameters={"mc_tolerance": 0.6}),
            "400",
            "parameters.mc_tolerance: must be between 0 and 0.5 (got 0.6)",
        ),
        (
            infer(parameters={"max_risk": 0.1}),
            "400",
            "max_risk: model tiny-mlp has no calibration, so it cannot decide; calibrate it with `mcdrop calibrate "
            "CHECKPOINT --data FILE --out DIR` (a labelled sample of your traffic, at least 200 texts)",
        ),
        (
            infer("tiny-cal", outputs=[triton.InferRequestedOutput("decision")]),
            "400",
            "output 'decision': only produced with a decision: send parameters.max_risk (or start the server with "
            "MCDROP_MAX_RISK)",
        ),
        (infer("nope"), "404", "model 'nope' not found; available: tiny-cal, tiny-mlp"),
        (infer(model_version="9"), "404", "model 'tiny-mlp' has no version '9' (served: test-1)"),
        (
            lambda c: c.get_model_metadata("nope", headers=auth()),
            "404",
            "model 'nope' not found; available: tiny-cal, tiny-mlp",
        ),
        (
            lambda c: c.get_model_metadata("tiny-mlp", model_version="9", headers=auth()),
            "404",
            "model 'tiny-mlp' has no version '9' (served: test-1)",
        ),
        (infer(headers=None), "401", NO_KEY),
        (lambda c: c.get_model_metadata("tiny-mlp"), "401", NO_KEY),
        (lambda c: c.get_server_metadata(headers={"Authorization": "Bearer wrong"}), "403", "invalid API key"),
        (
            infer(request_compression_algorithm="gzip"),
            "415",
            "header Content-Encoding: 'gzip' is not supported (send the body as it is)",
        ),
    ],
)
def test_refusals_with_tritonclient(
    client: triton.InferenceServerClient, call: TritonCall, status: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call(client)
    assert (caught.value.status(), caught.value.message()) == (status, message)


def test_body_too_large_with_tritonclient(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tiny-mlp", [text_input(["a" * 5000])], headers=auth())
    assert caught.value.status() == "413"
    assert re.fullmatch(r"body: at most 4096 bytes \(Content-Length is \d+\)", caught.value.message() or "")


def test_refusals_with_kserve(server: ServerProcess) -> None:
    bad = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    with pytest.raises(httpx.HTTPStatusError) as caught:
        kserve(lambda c: c.infer(server.url, bad, model_name="tiny-mlp", headers=auth()))
    assert caught.value.response.status_code == 400
    assert str(caught.value).startswith("input 'text': datatype must be BYTES (got \"FP32\"), '400 Bad Request'")
    request = InferRequest("tiny-mlp", [kserve_input(["a"], False)])
    with pytest.raises(httpx.HTTPStatusError) as caught:
        kserve(lambda c: c.infer(server.url, request, model_name="tiny-mlp"))
    assert str(caught.value).startswith("missing API key: send 'Authorization: Bearer <key>', '401 Unauthorized'")
    with pytest.raises(httpx.HTTPStatusError) as caught:
        kserve(lambda c: c.infer(server.url, request, model_name="nope", headers=auth()))
    assert caught.value.response.status_code == 404


def test_v2_paths_answer_error_and_v1_keeps_detail(server: ServerProcess) -> None:
    unknown = httpx.get(server.url + "/v2/nothing", timeout=10)
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Not Found"})
    wrong_method = httpx.post(server.url + "/v2/health/live", timeout=10)
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"error": "Method Not Allowed"})
    v1 = httpx.post(server.url + "/v1/predict", json={"texts": ["a"], "model": "nope"}, headers=auth(), timeout=10)
    assert (v1.status_code, v1.json()) == (404, {"detail": "model 'nope' not found; available: tiny-cal, tiny-mlp"})
    v1_bad = httpx.post(server.url + "/v1/predict", json={"texts": ["a"], "n_samples": 0}, headers=auth(), timeout=10)
    assert (v1_bad.status_code, v1_bad.json()) == (422, {"detail": "n_samples: must be between 1 and 1000 (got 0)"})


def test_v2_requests_are_counted_by_route_template(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    client.infer("tiny-mlp", [text_input(["a"])], headers=auth())
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'mcdrop_requests_total{endpoint="/v2/models/{name}/infer",method="POST",status="2xx"}' in text
    assert 'endpoint="/v2/models/{name}/infer",method="POST",status="4xx"' in text  # the refusals above


# --- loading, deadline, overload -----------------------------------------------------------------------------------


def test_not_ready_then_deadline_and_overload(tmp_path: Path) -> None:
    """Warm-up passes make loading take seconds; a 50 ms deadline cannot be met by the slow GRU; one request of
    8 texts fills the queue. No API keys."""
    write_tiny_checkpoint(tmp_path / "models", "gru", "slow-gru", **SLOW_GRU)
    server = _start(
        tmp_path / "models",
        tmp_path,
        wait_ready=False,
        warmup_passes=10,
        max_batch_rows=2048,
        request_timeout_s=0.05,
        queue_limit=8,
        max_texts_per_request=8,
        max_wait_ms=0,
    )
    try:
        with triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=10) as c:
            _check_not_ready(server, c)
            server.wait_until("/v2/health/ready", 200, START_TIMEOUT_S)
            assert c.is_server_ready() and c.is_model_ready("slow-gru")
            with pytest.raises(InferenceServerException) as caught:
                c.infer("slow-gru", [text_input([LONG_TEXT] * 8)], parameters={"n_samples": 300})
            assert (caught.value.status(), caught.value.message()) == (
                "504",
                "deadline exceeded: no answer within 0.05s",
            )
            _check_overload(c)
    finally:
        server.stop()


def _check_not_ready(server: ServerProcess, c: triton.InferenceServerClient) -> None:
    assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready("slow-gru")
    with pytest.raises(InferenceServerException) as caught:
        c.infer("slow-gru", [text_input(["a"])])
    assert (caught.value.status(), caught.value.message()) == ("503", "not ready: models are loading")
    probe = httpx.get(server.url + "/v2/health/ready", timeout=10)
    assert (probe.status_code, probe.headers["retry-after"], probe.json()) == (
        503,
        "5",
        {"error": "not ready: models are loading"},
    )
    with pytest.raises(httpx.HTTPStatusError) as refused:
        kserve(lambda k: k.is_server_ready(server.url))
    assert str(refused.value).startswith("not ready: models are loading, '503 Service Unavailable'")
    assert kserve(lambda k: k.is_model_ready(server.url, "slow-gru")) is False


def _check_overload(c: triton.InferenceServerClient) -> None:
    pending = [
        c.async_infer("slow-gru", [text_input([LONG_TEXT] * 8)], parameters={"n_samples": 100, "seed": 1})
        for _ in range(10)
    ]
    outcomes: list[tuple[str, str]] = []
    for request in pending:
        try:
            request.get_result(timeout=60)
            outcomes.append(("200", ""))
        except InferenceServerException as error:
            outcomes.append((str(error.status()), error.message() or ""))
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {"200", "503", "504"} and "503" in statuses, outcomes
    message = next(m for s, m in outcomes if s == "503")
    assert re.fullmatch(r"model slow-gru is overloaded: \d+ texts queued \(limit 8\); retry later", message)
