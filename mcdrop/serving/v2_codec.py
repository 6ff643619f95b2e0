"""Open Inference Protocol (KServe "V2" REST) requests: what ``POST /v2/models/{m}/infer`` accepts, checked once.

A model has one input, ``text`` (``BYTES``, shape ``[B]``); its outputs, one per field of a ``/v1`` prediction,
are :mod:`mcdrop.serving.v2_encode`'s, and the caller says which a request may name. A body is JSON, or a JSON
header followed by raw tensor bytes (the binary tensor extension: the header's length comes in the
``Inference-Header-Content-Length`` header, and each ``BYTES`` element is a 4-byte little-endian length and its
UTF-8 bytes). Request parameters are the ``/v1`` request fields, with the same ranges::

    request = parse_infer_request(body, headers.get("inference-header-content-length"), limits, available)
    request.texts, request.n_samples, request.max_risk, request.outputs ...

Every problem raises :class:`~mcdrop.core.errors.InputError` with one line naming the input, parameter or output
and the rule it breaks (answered 400 on ``/v2``).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mcdrop.core.adaptive import MC_TOLERANCE_RANGE
from mcdrop.core.errors import InputError
from mcdrop.serving.schemas import MAX_SEED, Limits, check_decision_fields

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
INPUT_NAME: Final = "text"

_PARAMETERS: Final = ("n_samples", "seed", "max_risk", "coverage", "max_novelty", "mc_tolerance", "binary_data_output")
_TOP_LEVEL: Final = ("id", "parameters", "inputs", "outputs", "model_name", "model_version")


@dataclass(frozen=True)
class InferRequest:
    """A checked inference request. ``outputs`` is ``None`` for "every output this request produces"."""

    id: str | None
    texts: list[str]
    n_samples: int | None = None
    seed: int | None = None
    max_risk: float | None = None
    coverage: float | None = None
    max_novelty: float | None = None
    mc_tolerance: float | None = None
    outputs: list[str] | None = None
    binary_default: bool = False  # parameter binary_data_output: outputs as raw bytes unless an output says not
    binary: dict[str, bool] = field(default_factory=dict)  # per requested output: its binary_data, when given


def _show(value: object) -> str:
    if not isinstance(value, str | int | float | bool | type(None)):
        return type(value).__name__
    try:
        text = json.dumps(value)
    except ValueError:  # an integer too long to print
        return "a huge number"
    return text if len(text) <= 40 else text[:37] + "..."


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


# built once: ``json.loads(body, parse_constant=...)`` builds a decoder per call, most of a small body's parse time
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _load_json(body: bytes, hint: str = "") -> Any:
    try:  # what json.loads does with bytes, with the decoder above
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:
        raise InputError("body: invalid JSON (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, over-long integers
        extra = hint if str(error).startswith("Extra data") else ""
        raise InputError(f"body: invalid JSON ({error}){extra}") from None


def _split_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """The JSON header, parsed, and the binary tensor data after it (empty for a plain JSON body)."""
    if header_length is None:
        return _load_json(body, f"; binary tensor data needs the {HEADER_LENGTH} header"), b""
    n = int(header_length) if header_length.isdigit() else -1
    if not 0 < n <= len(body):
        raise InputError(f"header {HEADER_LENGTH}: must be an integer between 1 and {len(body)} (got {header_length})")
    return _load_json(body[:n]), body[n:]


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"parameters.{name}: must be an integer (got {_show(value)})")
    if not low <= value <= high:
        raise InputError(f"parameters.{name}: must be between {low} and {high} (got {value})")
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"parameters.{name}: must be a number (got {_show(value)})")
    return float(value)


def _parse_parameters(raw: object, limits: Limits) -> dict[str, Any]:
    """The request parameters as ``InferRequest`` fields; the ranges are ``/v1``'s (``check_limits``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError("parameters: expected an object")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "n_samples":
            out[name] = _integer(name, value, 1, limits.max_n_samples)
        elif name == "seed":
            out[name] = _integer(name, value, 0, MAX_SEED)
        elif name in ("max_risk", "coverage", "max_novelty"):
            out[name] = _number(name, value)
        elif name == "binary_data_output":
            if not isinstance(value, bool):
                raise InputError(f"parameters.binary_data_output: must be true or false (got {_show(value)})")
            out["binary_default"] = value
        elif name == "mc_tolerance":
            tolerance = _number(name, value)
            low, high = MC_TOLERANCE_RANGE
            if not low <= tolerance <= high:
                raise InputError(f"parameters.{name}: must be between {low:g} and {high:g} (got {tolerance:g})")
            out[name] = tolerance
        else:
            raise InputError(f"parameters.{name}: unknown parameter (known: {', '.join(_PARAMETERS)})")
    try:
        check_decision_fields(out.get("max_risk"), out.get("coverage"), out.get("max_novelty"))
    except InputError as error:
        raise InputError(f"parameters.{error}") from None
    return out


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major elements of nested lists (the protocol allows ``[["a"], ["b"]]`` for shape ``[2]``)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _decode_bytes_tensor(raw: bytes, where: str) -> list[str]:
    texts: list[str] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InputError(f"{where}: binary data ends inside the length of element {len(texts)}")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InputError(f"{where}: binary element {len(texts)} needs {size} bytes, {len(raw) - at} left")
        try:
            texts.append(raw[at : at + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{where}: element {len(texts)} is not valid UTF-8") from None
        at += size
    return texts


def _the_input(inputs: object) -> dict[str, Any]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else _show(inputs)
        raise InputError(f"inputs: expected exactly 1 input named '{INPUT_NAME}' (got {got})")
    tensor: dict[str, Any] = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise InputError(f"unknown input {_show(tensor.get('name'))} (expected '{INPUT_NAME}')")
    where = f"input '{INPUT_NAME}'"
    if tensor.get("datatype") != "BYTES":
        raise InputError(f"{where}: datatype must be BYTES (got {_show(tensor.get('datatype'))})")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 1):
        raise InputError(f"{where}: shape must be [B] with B >= 1 (got {json.dumps(shape)})")
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: parameters must be an object")
    for key in params:
        if key not in ("binary_data_size", "content_type"):
            raise InputError(f"{where}: parameter '{key}' is not supported (known: binary_data_size, content_type)")
    return tensor


def _texts(tensor: dict[str, Any], binary: bytes) -> list[str]:
    where = f"input '{INPUT_NAME}'"
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise InputError(f"body: {len(binary)} bytes after the JSON header but no input has binary_data_size")
        if not isinstance(tensor.get("data"), list):
            raise InputError(f"{where}: 'data' must be a list of strings (or send binary data with binary_data_size)")
        texts: list[Any] = tensor["data"]
        if all(type(text) is str for text in texts):  # the usual flat list of strings
            return texts
        texts = _flatten(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"{where}: element {i} must be a string (got {_show(text)})")
        return texts
    if "data" in tensor:
        raise InputError(f"{where}: send either 'data' or binary_data_size, not both")
    if type(size) is not int or size != len(binary):
        raise InputError(
            f"{where}: binary_data_size {_show(size)} does not match the {len(binary)} bytes after the JSON header"
        )
    return _decode_bytes_tensor(binary, where)


def _parse_input(inputs: object, binary: bytes, limits: Limits) -> list[str]:
    tensor = _the_input(inputs)
    where = f"input '{INPUT_NAME}'"
    batch = tensor["shape"][0]
    if batch > limits.max_texts_per_request:
        raise InputError(f"{where}: at most {limits.max_texts_per_request} texts per request (got {batch})")
    texts = _texts(tensor, binary)
    if len(texts) != batch:
        raise InputError(f"{where}: shape [{batch}] does not match {len(texts)} data elements")
    for i, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            raise InputError(
                f"{where} element {i}: at most {limits.max_text_chars} characters per text (got {len(text)})"
            )
    return texts


def _parse_outputs(raw: object, available: Sequence[str]) -> tuple[list[str] | None, dict[str, bool]]:
    if raw is None or raw == []:
        return None, {}
    if not isinstance(raw, list):
        raise InputError("outputs: expected a list of objects with a 'name'")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InputError("outputs: expected a list of objects with a 'name'")
        if name not in available:
            raise InputError(f"unknown output {_show(name)} (available: {', '.join(available)})")
        if name in names:
            raise InputError(f"output '{name}': requested twice")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InputError(f"output '{name}': parameters must be an object")
        for key, value in params.items():
            if key != "binary_data":
                raise InputError(f"output '{name}': parameter '{key}' is not supported (known: binary_data)")
            if not isinstance(value, bool):
                raise InputError(f"output '{name}': parameter 'binary_data' must be true or false (got {_show(value)})")
            binary[name] = value
        names.append(name)
    return names, binary


def parse_infer_request(
    body: bytes, header_length: str | None, limits: Limits, available: Sequence[str]
) -> InferRequest:
    """Check an inference request body: JSON, or a JSON header of ``header_length`` bytes and binary tensor data.
    ``available`` is what the model can output (:func:`available_outputs`)."""
    request, binary = _split_body(body, header_length)
    if not isinstance(request, dict):
        raise InputError("body: expected a JSON object")
    for key in request:
        if key not in _TOP_LEVEL:
            raise InputError(f"unknown field {_show(key)} (expected id, parameters, inputs, outputs)")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"id: must be a string (got {_show(request_id)})")
    if "inputs" not in request:
        raise InputError(f"inputs: required (one input named '{INPUT_NAME}')")
    params = _parse_parameters(request.get("parameters"), limits)
    texts = _parse_input(request["inputs"], binary, limits)
    outputs, binary_outputs = _parse_outputs(request.get("outputs"), available)
    return InferRequest(request_id, texts, outputs=outputs, binary=binary_outputs, **params)
