"""The Open Inference Protocol codec without a server: every request rule with its exact message, the response
layout, and round trips through the real clients' own request builders and response parsers (tritonclient.http
and kserve's infer_type)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from kserve.protocol import infer_type as ks
from kserve.protocol.rest import v2_datamodels as ks_models
from pydantic_core import to_json

from mcdrop.core.engine import MAX_SEED
from mcdrop.core.errors import InputError
from mcdrop.serving.schemas import Limits
from mcdrop.serving.v2_codec import HEADER_LENGTH, InferRequest, parse_infer_request
from mcdrop.serving.v2_encode import (
    available_outputs,
    check_outputs,
    encode_infer_response,
    model_metadata,
    server_metadata,
)

LABELS = ["negative", "positive"]
PLAIN = available_outputs(calibrated=False, novelty=False)
CALIBRATED = available_outputs(calibrated=True, novelty=True)
LIMITS = Limits(max_texts_per_request=4, max_text_chars=20, max_n_samples=100)


def prediction(label: str = "positive", p: float = 0.75, **extra: Any) -> dict[str, Any]:
    """A prediction dict as the batcher hands it over (``presentation.prediction_dict``)."""
    return {
        "label": label,
        "probs": {"negative": 1 - p, "positive": p},
        "variance": {"negative": 0.01, "positive": 0.01},
        "entropy": 0.5623,
        "expected_entropy": 0.5,
        "mutual_information": 0.0623,
        "variation_ratio": 0.1,
        "std_error": {"negative": 0.001, "positive": 0.001},
        "oov_fraction": 0.25,
        "n_tokens": 4,
        "n_known_tokens": 3,
        "n_samples_used": 10,
        "novelty": None,
        "prediction_set": None,
        "decision": None,
        **extra,
    }


def calibrated(action: str, reason: str | None, members: list[str], threshold: float | None = 0.7) -> dict[str, Any]:
    decision = {
        "action": action,
        "reason": reason,
        "max_risk": 0.1,
        "score": 0.8,
        "threshold": threshold,
        "max_novelty": 0.99,
        "detail": None,
    }
    return prediction(novelty=0.4, prediction_set=members, decision=decision)


def text_input(data: Any, shape: Any = None, **fields: Any) -> dict[str, Any]:
    return {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(data)] if shape is None else shape,
        "data": data,
        **fields,
    }


def body(inputs: list[dict[str, Any]] | None = None, **top: Any) -> bytes:
    return json.dumps({"inputs": [text_input(["a", "b"])] if inputs is None else inputs, **top}).encode()


def parse(raw: bytes, header_length: str | None = None, available: list[str] = PLAIN) -> InferRequest:
    return parse_infer_request(raw, header_length, LIMITS, available)


def error_of(raw: bytes, header_length: str | None = None) -> str:
    with pytest.raises(InputError) as caught:
        parse(raw, header_length)
    return str(caught.value)


# --- requests -----------------------------------------------------------------------------------------------------


def test_flat_and_nested_data_give_the_same_texts() -> None:
    assert parse(body()).texts == ["a", "b"]
    assert parse(body([text_input([["a"], ["b"]], shape=[2])])).texts == ["a", "b"]
    assert parse(body([text_input([[["a"]], [], ["b"]], shape=[2])])).texts == ["a", "b"]


def test_a_full_request_is_parsed() -> None:
    params = {"n_samples": 100, "seed": MAX_SEED, "max_risk": 0.01, "coverage": 0.99, "max_novelty": 1}
    request = parse(
        body(
            id="r-1", parameters={**params, "binary_data_output": True}, outputs=[{"name": "probs"}, {"name": "label"}]
        )
    )
    assert request == InferRequest(
        "r-1", ["a", "b"], **params, outputs=["probs", "label"], binary_default=True, binary={}
    )
    assert parse(body([text_input(["x"])])) == InferRequest(None, ["x"])


def test_empty_strings_and_unicode_are_texts() -> None:
    assert parse(body([text_input(["", "héllo ✓"])])).texts == ["", "héllo ✓"]


def test_model_name_and_version_in_the_body_are_accepted() -> None:  # kserve's client always sends model_name
    assert parse(body(model_name="m", model_version="1")).texts == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "body: invalid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (b"[1]", "body: expected a JSON object"),
        (b'{"inputs": [], "x": NaN}', "body: invalid JSON (NaN is not allowed)"),
        (b"\xff", "body: invalid JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
        (b"[" * 100_000, "body: invalid JSON (nested too deeply)"),
        (body(foo=1), 'unknown field "foo" (expected id, parameters, inputs, outputs)'),
        (body(id=7), "id: must be a string (got 7)"),
        (b"{}", "inputs: required (one input named 'text')"),
        (body([]), "inputs: expected exactly 1 input named 'text' (got 0 inputs)"),
        (body([text_input(["a"]), text_input(["b"])]), "inputs: expected exactly 1 input named 'text' (got 2 inputs)"),
        (body([{**text_input(["a"]), "name": "txt"}]), "unknown input \"txt\" (expected 'text')"),
        (body([{**text_input([1.0]), "datatype": "FP32"}]), "input 'text': datatype must be BYTES (got \"FP32\")"),
        (body([text_input(["a", "b"], shape=[3])]), "input 'text': shape [3] does not match 2 data elements"),
        (body([text_input([[[["a"]]]] * 2, shape=[3])]), "input 'text': shape [3] does not match 2 data elements"),
        (body([text_input([["a"], ["b"]], shape=[2, 1])]), "input 'text': shape must be [B] with B >= 1 (got [2, 1])"),
        (body([text_input([], shape=[0])]), "input 'text': shape must be [B] with B >= 1 (got [0])"),
        (body([text_input(["a"], shape=[True])]), "input 'text': shape must be [B] with B >= 1 (got [true])"),
        (body([text_input(["a"], shape="1")]), "input 'text': shape must be [B] with B >= 1 (got \"1\")"),
        (body([text_input(["a"] * 5)]), "input 'text': at most 4 texts per request (got 5)"),
        (body([text_input(["ok", "x" * 21])]), "input 'text' element 1: at most 20 characters per text (got 21)"),
        (body([text_input(["a", 3])]), "input 'text': element 1 must be a string (got 3)"),
        (
            body([text_input("ab", shape=[1])]),
            "input 'text': 'data' must be a list of strings (or send binary data with binary_data_size)",
        ),
        (
            body([text_input(["a"], parameters={"shared_memory_region": "r"})]),
            "input 'text': parameter 'shared_memory_region' is not supported (known: binary_data_size, content_type)",
        ),
        (
            body([text_input(["a"], parameters={"binary_data_size": 5})]),
            "input 'text': send either 'data' or binary_data_size, not both",
        ),
    ],
)
def test_request_rules(raw: bytes, message: str) -> None:
    assert error_of(raw) == message


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("n_samples", 0, "parameters.n_samples: must be between 1 and 100 (got 0)"),
        ("n_samples", 101, "parameters.n_samples: must be between 1 and 100 (got 101)"),
        ("n_samples", 5.0, "parameters.n_samples: must be an integer (got 5.0)"),
        ("n_samples", "5", 'parameters.n_samples: must be an integer (got "5")'),
        ("n_samples", True, "parameters.n_samples: must be an integer (got true)"),
        ("n_samples", None, "parameters.n_samples: must be an integer (got null)"),
        ("seed", -1, f"parameters.seed: must be between 0 and {MAX_SEED} (got -1)"),
        ("seed", MAX_SEED + 1, f"parameters.seed: must be between 0 and {MAX_SEED} (got {MAX_SEED + 1})"),
        ("max_risk", 0.005, "parameters.max_risk: must be between 0.01 and 0.5 (got 0.005)"),
        ("max_risk", False, "parameters.max_risk: must be a number (got false)"),
        ("coverage", 0.995, "parameters.coverage: must be between 0.5 and 0.99 (got 0.995)"),
        ("max_novelty", 1.5, "parameters.max_novelty: must be between 0 and 1 (got 1.5)"),
        ("max_novelty", [1], "parameters.max_novelty: must be a number (got list)"),
        ("binary_data_output", 1, "parameters.binary_data_output: must be true or false (got 1)"),
        ("mc_tolerance", 0.6, "parameters.mc_tolerance: must be between 0 and 0.5 (got 0.6)"),
        ("mc_tolerance", "0.01", 'parameters.mc_tolerance: must be a number (got "0.01")'),
        (
            "priority",
            1,
            "parameters.priority: unknown parameter (known: n_samples, seed, max_risk, coverage, max_novelty, "
            "mc_tolerance, binary_data_output)",
        ),
    ],
)
def test_parameter_rules(name: str, value: Any, message: str) -> None:
    assert error_of(body(parameters={name: value})) == message


def test_non_finite_numbers_are_refused() -> None:
    assert error_of(body(parameters={"max_risk": 0}).replace(b"0}", b"1e999}")) == (
        "parameters.max_risk: must be a number (got Infinity)"
    )


def test_parameters_must_be_an_object() -> None:
    assert error_of(body(parameters=[1])) == "parameters: expected an object"


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"name": "foo"}], 'unknown output "foo" (available: ' + ", ".join(PLAIN) + ")"),
        ([{"name": "decision"}], 'unknown output "decision" (available: ' + ", ".join(PLAIN) + ")"),
        ([{"name": "label"}, {"name": "label"}], "output 'label': requested twice"),
        (["label"], "outputs: expected a list of objects with a 'name'"),
        ({"name": "label"}, "outputs: expected a list of objects with a 'name'"),
        (
            [{"name": "label", "parameters": {"classification": 2}}],
            "output 'label': parameter 'classification' is not supported (known: binary_data)",
        ),
        (
            [{"name": "label", "parameters": {"binary_data": "yes"}}],
            "output 'label': parameter 'binary_data' must be true or false (got \"yes\")",
        ),
    ],
)
def test_output_rules(outputs: Any, message: str) -> None:
    assert error_of(body(outputs=outputs)) == message


def test_an_empty_output_list_means_every_output() -> None:
    assert parse(body(outputs=[])).outputs is None


def test_decision_outputs_need_a_decision() -> None:
    request = parse(body(outputs=[{"name": "novelty"}, {"name": "decision_score"}]), available=CALIBRATED)
    check_outputs(request.outputs, decides=True)
    check_outputs(["novelty", "prediction_set"], decides=False)
    with pytest.raises(InputError) as caught:
        check_outputs(request.outputs, decides=False)
    assert str(caught.value) == (
        "output 'decision_score': only produced with a decision: send parameters.max_risk (or start the server with "
        "MCDROP_MAX_RISK)"
    )


def bytes_tensor(texts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def binary_body(raw: bytes, size: int | None = None) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ]
        }
    )
    return header.encode() + raw, str(len(header))


@pytest.mark.parametrize(
    ("raw", "size", "message"),
    [
        (bytes_tensor([b"a", b"\xff"]), None, "input 'text': element 1 is not valid UTF-8"),
        (bytes_tensor([b"a"]) + b"\x01\x00", None, "input 'text': binary data ends inside the length of element 1"),
        (bytes_tensor([b"a"]) + b"\x09\x00\x00\x00ab", None, "input 'text': binary element 1 needs 9 bytes, 2 left"),
        (
            bytes_tensor([b"a", b"b"]),
            3,
            "input 'text': binary_data_size 3 does not match the 10 bytes after the JSON header",
        ),
        (bytes_tensor([b"a", b"b", b"c"]), None, "input 'text': shape [2] does not match 3 data elements"),
    ],
)
def test_binary_input_rules(raw: bytes, size: int | None, message: str) -> None:
    assert error_of(*binary_body(raw, size)) == message


def test_binary_header_length_rules() -> None:
    raw, n = binary_body(bytes_tensor([b"a", b"b"]))
    assert parse(raw, n).texts == ["a", "b"]
    for bad in ("x", "0", str(len(raw) + 1), "-3"):
        assert error_of(raw, bad) == (
            f"header Inference-Header-Content-Length: must be an integer between 1 and {len(raw)} (got {bad})"
        )
    assert error_of(raw, str(int(n) - 1)).startswith("body: invalid JSON")
    assert error_of(raw) == (
        f"body: invalid JSON (Extra data: line 1 column {int(n) + 1} (char {n})); binary tensor data needs the "
        "Inference-Header-Content-Length header"
    )
    plain = body()
    assert error_of(plain + b"xyz", str(len(plain))) == (
        "body: 3 bytes after the JSON header but no input has binary_data_size"
    )


# --- what the real clients send ----------------------------------------------------------------------------------


def triton_input(texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_request_bodies(binary: bool) -> None:
    texts = ["a gripping drama", "ünïcode ✓", ""]
    raw, json_size = triton.InferenceServerClient.generate_request_body(
        [triton_input(texts, binary)], request_id="42", parameters={"n_samples": 10, "seed": 3}
    )
    assert (json_size is not None) == binary
    request = parse(raw, None if json_size is None else str(json_size))
    assert (request.id, request.texts, request.n_samples, request.seed) == ("42", texts, 10, 3)
    assert (request.outputs, request.binary_default) == (None, True)  # no outputs named: it asks for binary ones


def test_tritonclient_requested_outputs() -> None:
    outputs = [triton.InferRequestedOutput("probs", binary_data=False), triton.InferRequestedOutput("label")]
    raw, json_size = triton.InferenceServerClient.generate_request_body([triton_input(["x"], True)], outputs=outputs)
    request = parse(raw, str(json_size))
    assert (request.outputs, request.binary_default, request.binary) == (
        ["probs", "label"],
        False,
        {"probs": False, "label": True},
    )


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_request_bodies(binary: bool) -> None:
    tensor = ks.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(["a", "b"], dtype=object), binary_data=binary)
    outputs = [ks.RequestedOutput("label")]
    ks_request = ks.InferRequest("rt-mlp", [tensor], request_id="7", parameters={"seed": 1}, request_outputs=outputs)
    raw, json_length = ks_request.to_rest()  # kserve adds "model_name" and always an "id"
    encoded = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    request = parse(encoded, None if json_length is None else str(json_length))
    assert (request.id, request.texts, request.seed, request.outputs) == ("7", ["a", "b"], 1, ["label"])


# --- responses -----------------------------------------------------------------------------------------------------

HEADER = {"model_name": "rt-mlp", "model_version": "2024.1", "id": "rid", "parameters": {"n_samples": 20, "seed": 5}}


def encode(predictions: list[dict[str, Any]], **request: Any) -> tuple[bytes, dict[str, str]]:
    return encode_infer_response(InferRequest("rid", ["x"] * len(predictions), **request), predictions, LABELS, HEADER)


def test_json_response_layout() -> None:
    payload, headers = encode([prediction(), prediction("negative", 0.25)])
    assert headers == {"content-type": "application/json"}
    doc = json.loads(payload)
    assert {k: doc[k] for k in HEADER} == HEADER
    assert [o["name"] for o in doc["outputs"]] == PLAIN
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert by_name["label"] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]}
    assert by_name["probs"] == {"name": "probs", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.75, 0.25]}
    assert by_name["n_tokens"] == {"name": "n_tokens", "datatype": "INT32", "shape": [2], "data": [4, 4]}
    ks_models.InferenceResponse.model_validate(doc)


def test_requested_outputs_come_in_their_order() -> None:
    doc = json.loads(encode([prediction()], outputs=["entropy", "label"])[0])
    assert [o["name"] for o in doc["outputs"]] == ["entropy", "label"]


def test_decision_outputs() -> None:
    preds = [calibrated("accept", None, ["positive"]), calibrated("abstain", "novel", ["negative", "positive"])]
    doc = json.loads(encode(preds)[0])
    assert [o["name"] for o in doc["outputs"]] == CALIBRATED
    data = {o["name"]: o["data"] for o in doc["outputs"]}
    assert data["prediction_set"] == [False, True, True, True]
    assert (data["decision"], data["decision_reason"]) == (["accept", "abstain"], ["", "novel"])
    assert (data["decision_score"], data["decision_threshold"], data["novelty"]) == ([0.8] * 2, [0.7] * 2, [0.4] * 2)
    ks_models.InferenceResponse.model_validate(doc)


def test_without_a_decision_the_set_and_novelty_stay() -> None:
    doc = json.loads(encode([prediction(novelty=0.5, prediction_set=[])])[0])
    names = [o["name"] for o in doc["outputs"]]
    assert names == [*PLAIN, "novelty", "prediction_set"]
    assert doc["outputs"][-1]["data"] == [False, False]  # an empty set is a row of False


def check_numpy(get: Callable[[str], np.ndarray]) -> None:
    np.testing.assert_array_equal(get("label"), np.array([b"positive", b"negative"], dtype=object))
    probs = get("probs")
    assert probs.shape == (2, 2)
    np.testing.assert_array_equal(probs.astype(np.float32), np.array([[0.25, 0.75], [0.75, 0.25]], dtype=np.float32))
    np.testing.assert_array_equal(get("prediction_set"), np.array([[False, True], [True, True]]))
    np.testing.assert_array_equal(get("n_tokens"), np.array([4, 4], dtype=np.int32))
    np.testing.assert_array_equal(get("entropy").astype(np.float32), np.array([0.5623] * 2, dtype=np.float32))
    np.testing.assert_array_equal(get("decision_reason"), np.array([b"", b"novel"], dtype=object))
    threshold = get("decision_threshold")
    assert threshold[0] == np.float32(0.7) and math.isnan(threshold[1])  # no threshold meets max_risk: NaN


def _as_bytes_objects(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "OUS":  # JSON BYTES come back as str, binary ones as bytes
        return np.array([v.encode() if isinstance(v, str) else v for v in array.ravel()], dtype=object)
    return array


def _two_calibrated() -> list[dict[str, Any]]:
    second = calibrated("abstain", "novel", LABELS, threshold=None)
    return [
        calibrated("accept", None, ["positive"]),
        {**second, "label": "negative", "probs": {"negative": 0.75, "positive": 0.25}},
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_reads_our_responses(binary: bool) -> None:
    payload, headers = encode(_two_calibrated(), binary_default=binary)
    assert (HEADER_LENGTH in headers) == binary
    length = headers.get(HEADER_LENGTH)
    result = triton.InferResult.from_response_body(payload, header_length=None if length is None else int(length))
    if binary:
        assert result.as_numpy("probs").dtype == np.float32
        assert result.as_numpy("n_tokens").dtype == np.int32
        assert result.get_output("probs")["parameters"] == {"binary_data_size": 16}
    check_numpy(lambda name: _as_bytes_objects(result.as_numpy(name)))
    assert result.get_response()["parameters"]["seed"] == 5


def test_per_output_binary_choice() -> None:
    payload, headers = encode(
        [prediction()], outputs=["label", "probs", "entropy"], binary_default=True, binary={"probs": False}
    )
    result = triton.InferResult.from_response_body(payload, header_length=int(headers[HEADER_LENGTH]))
    assert ["data" in o for o in result.get_response()["outputs"]] == [False, True, False]
    assert result.as_numpy("label").tolist() == [b"positive"]
    assert result.as_numpy("entropy").tolist() == [pytest.approx(0.5623)]
    assert int(headers[HEADER_LENGTH]) + (4 + len("positive")) + 4 == len(payload)


def _reference_body(predictions: list[dict[str, Any]], labels: list[str], outputs: list[str]) -> bytes:
    """The JSON answer built the plain way: one dict per tensor, one serializer call."""
    tensors = []
    for name in outputs:
        if name in ("probs", "variance", "std_error"):
            shape, data = [len(predictions), len(labels)], [p[name][label] for p in predictions for label in labels]
        elif name == "prediction_set":
            shape = [len(predictions), len(labels)]
            data = [label in p["prediction_set"] for p in predictions for label in labels]
        elif name.startswith("decision"):
            field = {"decision": "action", "decision_reason": "reason"}.get(name, name.removeprefix("decision_"))
            shape, data = [len(predictions)], [p["decision"][field] for p in predictions]
            data = [v or "" for v in data] if name == "decision_reason" else data
        else:
            shape, data = [len(predictions)], [p[name] for p in predictions]
        datatype = {"label": "BYTES", "decision": "BYTES", "decision_reason": "BYTES", "prediction_set": "BOOL"}
        dtype = datatype.get(name, "INT32" if name.startswith("n_") else "FP32")
        tensors.append({"name": name, "datatype": dtype, "shape": shape, "data": data})
    return to_json({**HEADER, "outputs": tensors})


@pytest.mark.parametrize(
    "labels",
    [LABELS, ['say "no"', "a],[b", "c"]],  # a label holding ``],[``: the columns are serialized one by one
)
@pytest.mark.parametrize("outputs", [None, ["decision_threshold", "label", "probs", "prediction_set"]])
def test_json_body_is_the_plain_serialization(labels: list[str], outputs: list[str] | None) -> None:
    def spread(p: dict[str, Any], k: int) -> dict[str, Any]:
        per_class = {name: {label: round(0.1 * (i + k), 3) for i, label in enumerate(labels)} for name in LABELS}
        threshold = None if k == 1 else 0.7  # a missing threshold is null
        decision = {**p["decision"], "threshold": threshold}
        fields = {"probs": per_class[LABELS[0]], "variance": per_class[LABELS[1]], "std_error": per_class[LABELS[0]]}
        return {**p, **fields, "label": labels[k % len(labels)], "prediction_set": labels[:k], "decision": decision}

    preds = [spread(calibrated("abstain", "uncertain", []), k) for k in range(3)]
    request = InferRequest("rid", ["x"] * 3, outputs=outputs)
    payload, headers = encode_infer_response(request, preds, labels, HEADER)
    assert headers == {"content-type": "application/json"}
    assert payload == _reference_body(preds, labels, outputs or CALIBRATED)


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_reads_our_responses(binary: bool) -> None:
    payload, headers = encode(_two_calibrated(), binary_default=binary)
    response = ks.InferResponse.from_bytes(payload, int(headers.get(HEADER_LENGTH, len(payload))))
    assert (response.model_name, response.id) == ("rt-mlp", "rid")

    def get(name: str) -> np.ndarray:
        output = response.get_output_by_name(name)
        assert output is not None
        return _as_bytes_objects(output.as_numpy())

    check_numpy(get)


# --- metadata ------------------------------------------------------------------------------------------------------


def test_server_metadata() -> None:
    meta = server_metadata("0.1.0")
    assert meta == {"name": "mcdrop", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    ks_models.ServerMetadataResponse.model_validate(meta)


def test_model_metadata() -> None:
    meta = model_metadata("rt-mlp", "2024.1", LABELS, CALIBRATED)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert list(outputs) == CALIBRATED
    assert outputs["probs"] == ("FP32", [-1, 2])
    assert outputs["prediction_set"] == ("BOOL", [-1, 2])
    assert outputs["label"] == ("BYTES", [-1])
    assert outputs["n_tokens"] == ("INT32", [-1])
    assert (meta["platform"], meta["versions"], meta["labels"]) == ("mcdrop", ["2024.1"], LABELS)
    ks_models.ModelMetadataResponse.model_validate(meta)


def test_available_outputs() -> None:
    assert "decision" not in PLAIN and "novelty" not in PLAIN and "prediction_set" not in PLAIN
    assert CALIBRATED[: len(PLAIN)] == PLAIN
    assert CALIBRATED[len(PLAIN) :] == [
        "novelty",
        "prediction_set",
        "decision",
        "decision_reason",
        "decision_score",
        "decision_threshold",
    ]
    assert "novelty" not in available_outputs(calibrated=True, novelty=False)
