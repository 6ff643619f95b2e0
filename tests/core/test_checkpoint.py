"""Checkpoint directories: round trip, discovery, and a clear error for every missing or corrupt file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import MakeCheckpoint
from mcdrop.core.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, discover_checkpoints, load_checkpoint
from mcdrop.core.engine import MCEngine
from mcdrop.core.errors import CheckpointError


@pytest.mark.parametrize("architecture", ["mlp", "gru"])
def test_round_trip_gives_identical_predictions(make_checkpoint: MakeCheckpoint, architecture: str) -> None:
    path = make_checkpoint(architecture)
    first = MCEngine(load_checkpoint(path), device="cpu")
    second = MCEngine(load_checkpoint(path), device="cpu")
    texts = ["a wonderful film", "boring"]
    assert first.predict(texts, n_samples=10, seed=4) == second.predict(texts, n_samples=10, seed=4)
    assert torch.equal(first.predict_deterministic(texts), second.predict_deterministic(texts))
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["architecture"] == architecture
    assert config["dropout_placement"] in {"after_embedding", "before_recurrence"}


@pytest.mark.parametrize("architecture", ["mlp", "gru"])
def test_loading_runs_no_pickle(
    make_checkpoint: MakeCheckpoint, monkeypatch: pytest.MonkeyPatch, architecture: str
) -> None:
    path = make_checkpoint(architecture)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading a checkpoint")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load"):
        monkeypatch.setattr(target, refuse)
    MCEngine(load_checkpoint(path), device="cpu").predict(["a film"], n_samples=2, seed=0)


def test_discover(make_checkpoint: MakeCheckpoint) -> None:
    a = make_checkpoint("mlp", name="a")
    b = make_checkpoint("gru", name="b")
    assert discover_checkpoints(a.parent) == [a, b]
    assert discover_checkpoints(a) == [a]
    with pytest.raises(CheckpointError, match="model directory does not exist"):
        discover_checkpoints(a.parent / "nope")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no such checkpoint directory"):
        load_checkpoint(tmp_path / "absent")


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE])
def test_missing_file_is_named(make_checkpoint: MakeCheckpoint, name: str) -> None:
    path = make_checkpoint()
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name}: file is missing"):
        load_checkpoint(path)


def test_truncated_weights_are_named(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_FILE}: corrupt or unreadable safetensors file"):
        load_checkpoint(path)


def test_garbage_config_and_bad_values(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    config = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"{CONFIG_FILE}: cannot read JSON"):
        load_checkpoint(path)
    for key, value, message in [
        ("labels", ["only"], "labels must be a list of at least two distinct non-empty strings"),
        ("labels", [0, 1], "labels must be a list of at least two distinct non-empty strings"),
        ("default_n_samples", 0, "default_n_samples must be a positive integer"),
        ("temperature", -1, "temperature must be a positive number"),
        ("architecture", "cnn", "unknown architecture 'cnn'"),
    ]:
        (path / CONFIG_FILE).write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_weights_that_do_not_match_the_config(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model_params"]["embed_dim"] = 32
    (path / CONFIG_FILE).write_text(json.dumps(config))
    mismatch = rf"{WEIGHTS_FILE}: tensor 'bag_bias' has shape \[16\] but {CONFIG_FILE}'s model_params .* need \[32\]$"
    with pytest.raises(CheckpointError, match=mismatch):
        load_checkpoint(path)


def test_gru_checkpoint_whose_encoder_does_not_fit_is_refused(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("gru")
    vocab = json.loads((path / VOCAB_FILE).read_text())
    (path / VOCAB_FILE).write_text(json.dumps({**vocab, "ngram_max": 2}))
    with pytest.raises(CheckpointError, match=rf"{VOCAB_FILE}: a GRU reads word sequences: ngram_max must be 1"):
        load_checkpoint(path)
    (path / VOCAB_FILE).write_text(json.dumps({**vocab, "max_tokens": 1000}))
    refused = r"keeps up to 1000 tokens but the GRU accepts at most 32 \(model_params\.max_tokens\)"
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(path)


def test_impossible_sizes_are_named(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint()
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model_params"]["embed_dim"] = -4
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"{CONFIG_FILE}: invalid mlp parameters"):
        load_checkpoint(path)


def test_weights_are_as_readable_as_the_json_files(make_checkpoint: MakeCheckpoint) -> None:
    """safetensors creates owner-only files; the weights must be readable wherever config.json is."""
    path = make_checkpoint()
    json_readers = (path / CONFIG_FILE).stat().st_mode & 0o044
    assert (path / WEIGHTS_FILE).stat().st_mode & json_readers == json_readers
