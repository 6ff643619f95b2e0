"""Bad checkpoints are refused at load with one line naming the file and the key, never served or half-loaded.

Non-finite weights (a checkpoint whose training diverged) used to load, report ready and answer 500 to every
request, and ``mcdrop predict`` printed ``NaN`` (not JSON) with exit status 0. Config values of the wrong type gave
a traceback or a model called ``"{'a': 1}"``; weights of the wrong shape printed torch's multi-line message.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import MakeCheckpoint
from mcdrop.core.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, load_checkpoint
from mcdrop.core.errors import CheckpointError


def mcdrop_predict(checkpoint: Path, stdin: str = "a wonderful film\n") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcdrop", "--log-level", "WARNING", "predict", str(checkpoint), "--seed", "1"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def refusal(path: Path) -> str:
    """The one-line message that refuses the checkpoint at ``path``."""
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def poison(path: Path, key: str, value: float) -> None:
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, str(path / WEIGHTS_FILE))


def edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    config.update(changes)
    (path / CONFIG_FILE).write_text(json.dumps(config))


@pytest.mark.parametrize(("architecture", "key"), [("mlp", "classifier.weight"), ("gru", "gru.weight_hh_l0")])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_naming_file_and_tensor(
    make_checkpoint: MakeCheckpoint, architecture: str, key: str, value: float
) -> None:
    path = make_checkpoint(architecture)
    poison(path, key, value)
    message = refusal(path)
    assert message.startswith(f"{path / WEIGHTS_FILE}: tensor {key!r} holds non-finite values (NaN or infinity)")


def test_mcdrop_predict_on_nan_weights_exits_2_with_one_line_and_prints_nothing(
    make_checkpoint: MakeCheckpoint,
) -> None:
    path = make_checkpoint()
    poison(path, "classifier.weight", math.nan)
    result = mcdrop_predict(path)
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.strip().splitlines()
    assert f"{path / WEIGHTS_FILE}: tensor 'classifier.weight' holds non-finite values" in line


def test_mcdrop_predict_never_prints_nan_from_finite_weights(make_checkpoint: MakeCheckpoint) -> None:
    """A temperature so small that logits / temperature overflow: every weight is finite, the outputs are not."""
    path = make_checkpoint()
    edit_config(path, temperature=1e-320)
    result = mcdrop_predict(path)
    assert result.returncode == 2
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.endswith("produced a non-finite prediction (NaN or infinity); check its checkpoint")


BAD_CONFIG_VALUES: list[tuple[str, Any, str]] = [
    ("architecture", ["mlp"], "unknown architecture ['mlp']"),
    ("architecture", None, "unknown architecture None"),
    ("name", {"a": 1}, "name must be a non-empty string (got {'a': 1})"),
    ("name", "", "name must be a non-empty string"),
    ("name", "a/b", "name must be at most 128 printable characters without '/'"),
    ("name", "x" * 500, "name must be at most 128 printable characters"),
    ("version", None, "version must be a non-empty string (got None)"),
    ("version", ["1"], "version must be a non-empty string"),
    ("labels", "negative,positive", "labels must be a list of at least two distinct non-empty strings"),
    ("default_n_samples", True, "default_n_samples must be a positive integer (got True)"),
    ("default_n_samples", "20", "default_n_samples must be a positive integer (got '20')"),
    ("default_n_samples", 2.5, "default_n_samples must be a positive integer"),
    ("temperature", "1.0", "temperature must be a positive number (got '1.0')"),
    ("temperature", math.nan, "temperature must be a positive number (got nan)"),
    ("temperature", math.inf, "temperature must be a positive number (got inf)"),
    ("temperature", False, "temperature must be a positive number (got False)"),
    ("format_version", "1", "format_version '1' is not 1"),
    ("format_version", True, "format_version True is not 1"),
    ("dropout_placement", 3, "dropout_placement must be a string (got 3)"),
    ("tokenizer", [], "tokenizer must be an object (got [])"),
    ("training", "yes", "training must be an object"),
    ("metrics", [1, 2], "metrics must be an object"),
    ("uncertainty_baseline", [], "uncertainty_baseline must be an object"),
    ("uncertainty_baseline", {"mean_entropy": "0.5"}, "uncertainty_baseline.mean_entropy must be a finite number"),
    ("model_params", [16], "model_params must be an object (got [16])"),
    ("model_params", {"embed_dim": "16"}, "model_params.embed_dim: must be an integer (got '16')"),
    ("model_params", {"embed_dim": 16.0}, "model_params.embed_dim: must be an integer (got 16.0)"),
    ("model_params", {"hidden_dims": 16}, "model_params.hidden_dims: must be a list of integers (got 16)"),
    ("model_params", {"dropout_p": ["0.3", 0.3]}, "model_params.dropout_p: must be a list of finite numbers"),
    ("model_params", {"dropout_p": [0.3, True]}, "model_params.dropout_p: must be a list of finite numbers"),
    ("model_params", {"depth": 2}, "model_params.depth: unknown mlp parameter (expected embed_dim, hidden_dims"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_CONFIG_VALUES)
def test_config_values_of_the_wrong_type_name_file_and_key(
    make_checkpoint: MakeCheckpoint, key: str, value: Any, message: str
) -> None:
    path = make_checkpoint()
    edit_config(path, **{key: value})
    assert refusal(path).startswith(f"{path / CONFIG_FILE}: {message}")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bidirectional": "yes"}, "model_params.bidirectional: must be true or false (got 'yes')"),
        ({"hidden_dim": 8.5}, "model_params.hidden_dim: must be an integer (got 8.5)"),
        ({"input_dropout_p": "0.2"}, "model_params.input_dropout_p: must be a finite number (got '0.2')"),
        ({"num_layers": None}, "model_params.num_layers: must be an integer (got None)"),
    ],
)
def test_gru_parameters_of_the_wrong_type(
    make_checkpoint: MakeCheckpoint, params: dict[str, Any], message: str
) -> None:
    path = make_checkpoint("gru")
    config = json.loads((path / CONFIG_FILE).read_text())
    edit_config(path, model_params={**config["model_params"], **params})
    assert refusal(path) == f"{path / CONFIG_FILE}: {message}"


def test_constructor_errors_are_one_line(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    config = json.loads((path / CONFIG_FILE).read_text())
    edit_config(path, model_params={**config["model_params"], "embed_dim": -4})
    assert refusal(path).startswith(f"{path / CONFIG_FILE}: invalid mlp parameters")


@pytest.mark.parametrize(("key", "value"), [("max_tokens", "32"), ("ngram_max", 2.0), ("lowercase", "yes")])
def test_vocabulary_settings_of_the_wrong_type(make_checkpoint: MakeCheckpoint, key: str, value: Any) -> None:
    path = make_checkpoint()
    vocab = json.loads((path / VOCAB_FILE).read_text())
    (path / VOCAB_FILE).write_text(json.dumps({**vocab, key: value}))
    assert refusal(path).startswith(f"{path / VOCAB_FILE}: invalid vocabulary ({key} must be")


def test_shape_mismatch_names_tensor_expected_and_found(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("gru")
    config = json.loads((path / CONFIG_FILE).read_text())
    edit_config(path, model_params={**config["model_params"], "hidden_dim": 16})
    assert refusal(path) == (
        f"{path / WEIGHTS_FILE}: tensor 'gru.weight_ih_l0' has shape [24, 8] but config.json's model_params and "
        "vocab.json need [48, 8]"
    )


def test_missing_extra_and_integer_tensors(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    original = load_file(str(path / WEIGHTS_FILE))
    save_file({k: v for k, v in original.items() if k != "bag_bias"}, str(path / WEIGHTS_FILE))
    assert refusal(path).startswith(f"{path / WEIGHTS_FILE}: tensor 'bag_bias' is missing")
    save_file({**original, "extra.weight": torch.zeros(2)}, str(path / WEIGHTS_FILE))
    assert refusal(path).startswith(f"{path / WEIGHTS_FILE}: tensor 'extra.weight' is not part of the model")
    save_file({**original, "bag_bias": torch.zeros(16, dtype=torch.int64)}, str(path / WEIGHTS_FILE))
    assert (
        refusal(path)
        == f"{path / WEIGHTS_FILE}: tensor 'bag_bias' has dtype torch.int64; expected a floating-point one"
    )


def test_cli_refuses_a_wrongly_typed_name_in_one_line(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    edit_config(path, name={"a": 1})
    result = mcdrop_predict(path)
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"{path / CONFIG_FILE}: name must be a non-empty string (got {{'a': 1}})")
