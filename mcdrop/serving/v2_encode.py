"""Open Inference Protocol (KServe "V2" REST) answers: the output tensors, predictions encoded as them, metadata.

Each field of a ``/v1`` prediction is one output (``OUTPUTS``): per-text values have shape ``[B]``, per-class
values ``[B, C]`` in the model's label order, and the conformal set is a ``BOOL [B, C]`` membership mask, so every
output is a fixed-shape tensor. The batcher hands back one prediction dict per text
(:func:`mcdrop.serving.presentation.prediction_dict`: floats already rounded to 7 significant digits, the same
numbers ``/v1/predict`` answers); this module turns them into columns::

    body, headers = encode_infer_response(request, predictions, labels, header)   # header: model_name, id, ...

An output goes as JSON ``data``, or as raw little-endian bytes after the JSON header when the request asks for
binary data (``binary_data_output``, or an output's ``binary_data``): then ``Inference-Header-Content-Length``
gives the header's length. A missing ``decision_threshold`` (no threshold meets ``max_risk``: every prediction
abstains) is NaN in binary data and ``null`` in JSON; both clients read either as NaN.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Final, Literal

from pydantic_core import to_json

from mcdrop.core.errors import InputError
from mcdrop.serving.presentation import PredictionDict
from mcdrop.serving.v2_codec import HEADER_LENGTH, INPUT_NAME, InferRequest

Needs = Literal["", "calibration", "novelty", "decision"]


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: its datatype, whether it has a column per class, and what the model or request needs
    for it to exist (a calibration; a novelty model; a decision, i.e. ``max_risk``)."""

    datatype: Literal["BYTES", "FP32", "INT32", "BOOL"]
    per_class: bool = False
    needs: Needs = ""


# In the default output order. Decision outputs exist only when the request (or the server) sets max_risk.
OUTPUTS: Final[dict[str, OutputSpec]] = {
    "label": OutputSpec("BYTES"),
    "probs": OutputSpec("FP32", per_class=True),
    "variance": OutputSpec("FP32", per_class=True),
    "std_error": OutputSpec("FP32", per_class=True),
    "entropy": OutputSpec("FP32"),
    "expected_entropy": OutputSpec("FP32"),
    "mutual_information": OutputSpec("FP32"),
    "variation_ratio": OutputSpec("FP32"),
    "oov_fraction": OutputSpec("FP32"),
    "n_tokens": OutputSpec("INT32"),
    "n_known_tokens": OutputSpec("INT32"),
    "n_samples_used": OutputSpec("INT32"),
    "novelty": OutputSpec("FP32", needs="novelty"),
    "prediction_set": OutputSpec("BOOL", per_class=True, needs="calibration"),
    "decision": OutputSpec("BYTES", needs="decision"),
    "decision_reason": OutputSpec("BYTES", needs="decision"),
    "decision_score": OutputSpec("FP32", needs="decision"),
    "decision_threshold": OutputSpec("FP32", needs="decision"),
}
PLATFORM: Final = "mcdrop"
EXTENSIONS: Final = ("binary_tensor_data",)
# decision outputs -> the field of the prediction's decision dict they carry
_DECISION_FIELDS: Final = {
    "decision": "action",
    "decision_reason": "reason",
    "decision_score": "score",
    "decision_threshold": "threshold",
}
_STRUCT: Final = {"FP32": "f", "INT32": "i"}


def available_outputs(calibrated: bool, novelty: bool) -> list[str]:
    """The outputs a model can produce: decisions and sets need a calibration, novelty its novelty model too."""
    have = {"", "decision", "calibration"} if calibrated else {""}
    if calibrated and novelty:
        have.add("novelty")
    return [name for name, spec in OUTPUTS.items() if spec.needs in have]


def check_outputs(outputs: Sequence[str] | None, decides: bool) -> None:
    """Refuse decision outputs a request will not produce (before any work starts): they need ``max_risk``."""
    if decides or outputs is None:
        return
    for name in outputs:
        if OUTPUTS[name].needs == "decision":
            raise InputError(
                f"output '{name}': only produced with a decision: send parameters.max_risk (or start the server "
                "with MCDROP_MAX_RISK)"
            )


# The per-text fields with one value per text, read from a prediction at once (one C-level item getter)
_PLAIN: Final = tuple(n for n, spec in OUTPUTS.items() if not spec.per_class and n not in _DECISION_FIELDS)
_read_plain: Final = itemgetter(*_PLAIN)
_PER_CLASS: Final = frozenset(n for n, spec in OUTPUTS.items() if spec.per_class and spec.datatype == "FP32")


@functools.lru_cache(maxsize=8)
def _produced(novelty: bool, prediction_set: bool, decision: bool) -> tuple[str, ...]:
    """The outputs a request that names none gets, in ``OUTPUTS`` order: every one whose needs the predictions
    show were met (they carry a novelty, a conformal set, a decision)."""
    met = {"": True, "novelty": novelty, "calibration": prediction_set, "decision": decision}
    return tuple(name for name, spec in OUTPUTS.items() if met[spec.needs])


def _column(name: str, labels: Sequence[str], predictions: Sequence[PredictionDict]) -> list[Any]:
    """The output's elements, row-major: ``[B]``, or ``[B, C]`` in label order for per-class outputs."""
    if name in _DECISION_FIELDS:
        values = [p["decision"][_DECISION_FIELDS[name]] for p in predictions]
        return [v or "" for v in values] if name == "decision_reason" else values
    if name == "prediction_set":
        return [label in members for members in (set(p["prediction_set"]) for p in predictions) for label in labels]
    if OUTPUTS[name].per_class:
        return [p[name][label] for p in predictions for label in labels]
    return [p[name] for p in predictions]


def _columns(names: Sequence[str], labels: Sequence[str], predictions: Sequence[PredictionDict]) -> list[Sequence[Any]]:
    """The elements of each named output, in order."""
    rows = map(_read_plain, predictions)
    plain: dict[str, Sequence[Any]] = dict(zip(_PLAIN, zip(*rows, strict=True), strict=True))  # field: B values
    columns: list[Sequence[Any]] = []
    for name in names:
        if name in plain:
            columns.append(plain[name])
        elif name in _PER_CLASS:
            columns.append([p[name][label] for p in predictions for label in labels])
        else:
            columns.append(_column(name, labels, predictions))
    return columns


def _to_bytes(datatype: str, values: Sequence[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode("utf-8") for v in values))
    if datatype == "BOOL":
        return bytes(1 if v else 0 for v in values)
    if datatype == "FP32":
        values = [math.nan if v is None else v for v in values]
    return struct.pack(f"<{len(values)}{_STRUCT[datatype]}", *values)


@functools.lru_cache(maxsize=4096)
def _opening(name: str, batch: int, n_classes: int, binary: bool) -> bytes:
    """An output tensor's JSON up to its elements: ``{"name":...,"shape":[...],"data":[``, or for binary data up
    to its size: ``{"name":...,"parameters":{"binary_data_size":``."""
    spec = OUTPUTS[name]
    shape = [batch, n_classes] if spec.per_class else [batch]
    fixed = to_json({"name": name, "datatype": spec.datatype, "shape": shape})[:-1]
    return fixed + (b',"parameters":{"binary_data_size":' if binary else b',"data":[')


@functools.lru_cache(maxsize=1024)
def _json_openings(names: tuple[str, ...], batch: int, n_classes: int) -> tuple[bytes, ...]:
    """What goes before each output's elements when every output is JSON data: ``,"outputs":[`` and the first
    tensor's opening, then the previous tensor's ``]}``, a comma and the next opening."""
    openings = [_opening(name, batch, n_classes, False) for name in names]
    return (b',"outputs":[' + openings[0], *(b"]}," + opening for opening in openings[1:]))


def _elements(columns: list[Sequence[Any]]) -> list[bytes]:
    """Each column's JSON elements without the brackets, from one serializer call: the columns are flat lists of
    numbers, booleans, null and strings, so outside a string ``],[`` only parts two columns. Should a string hold
    it (a label, say), there are more parts than columns, and each column is serialized on its own."""
    if not columns:
        return []
    parts = to_json(columns)[2:-2].split(b"],[")
    return parts if len(parts) == len(columns) else [to_json(column)[1:-1] for column in columns]


def encode_infer_response(
    request: InferRequest,
    predictions: Sequence[PredictionDict],
    labels: Sequence[str],
    header: Mapping[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers it needs. ``header`` holds ``model_name``, ``model_version``, ``id`` and
    ``parameters``; the outputs are the requested ones in their order, or every one the predictions carry.

    The body is the one ``to_json({**header, "outputs": [tensor, ...]})`` would give, built from pre-encoded
    tensor openings (name, datatype, shape) and one serializer call for the elements of every JSON output."""
    first = predictions[0]  # one request: every prediction carries the same fields
    names: Sequence[str] | None = request.outputs
    if names is None:
        names = _produced(
            first["novelty"] is not None, first["prediction_set"] is not None, first["decision"] is not None
        )
    batch, n_classes = len(predictions), len(labels)
    columns = _columns(names, labels, predictions)
    if not request.binary and not request.binary_default:  # every output as JSON data, the usual request
        openings = _json_openings(tuple(names), batch, n_classes)
        fragments = chain.from_iterable(zip(openings, _elements(columns), strict=True))
        return to_json(header)[:-1] + b"".join(fragments) + b"]}]}", {"content-type": "application/json"}
    binary = [request.binary.get(name, request.binary_default) for name in names]
    elements = iter(_elements([column for column, as_bytes in zip(columns, binary, strict=True) if not as_bytes]))
    tensors: list[bytes] = []
    blobs: list[bytes] = []
    for name, column, as_bytes in zip(names, columns, binary, strict=True):
        if as_bytes:
            blob = _to_bytes(OUTPUTS[name].datatype, column)
            tensors.append(_opening(name, batch, n_classes, True) + str(len(blob)).encode() + b"}}")
            blobs.append(blob)
        else:  # None (a missing threshold) is null
            tensors.append(_opening(name, batch, n_classes, False) + next(elements) + b"]}")
    head = to_json(header)[:-1] + b',"outputs":[' + b",".join(tensors) + b"]}"
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the server's name, version and the protocol extensions it supports."""
    return {"name": PLATFORM, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, version: str, labels: Sequence[str], available: Sequence[str]) -> dict[str, Any]:
    """``GET /v2/models/{name}``. ``labels`` (an extra field) is the class order of the ``[B, C]`` outputs."""
    outputs = [
        {"name": n, "datatype": OUTPUTS[n].datatype, "shape": [-1, len(labels)] if OUTPUTS[n].per_class else [-1]}
        for n in available
    ]
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
        "labels": list(labels),
    }
