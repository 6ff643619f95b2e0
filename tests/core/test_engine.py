"""MC engine: invariants, reproducibility, batch independence, chunking, refusal of dropout-free models."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from conftest import MakeCheckpoint, assert_predictions_close
from mcdrop.core.checkpoint import load_checkpoint
from mcdrop.core.engine import MCEngine, load_engine, resolve_device
from mcdrop.core.errors import ConfigError, McdropError

TEXTS = ["a wonderful moving film", "terrible boring mess", "", "qwerty zxcvb", "the best film of the year"]


GATES = {"input_dropout_p": 0.0, "gate_dropout_p": 0.3}  # dropout on the gate inputs


@pytest.fixture(params=["mlp", "gru", "gru-weight", "gru-gates"])
def engine(request: pytest.FixtureRequest, make_checkpoint: MakeCheckpoint) -> MCEngine:
    if request.param == "gru-weight":
        path = make_checkpoint("gru", name="wd", input_dropout_p=0.0, weight_dropout_p=0.3)
    elif request.param == "gru-gates":
        path = make_checkpoint("gru", name="gates", **GATES)
    else:
        path = make_checkpoint(request.param)
    return load_engine(str(path), device="cpu", max_batch_rows=64)


def test_invariants(engine: MCEngine) -> None:
    for p in engine.predict(TEXTS, n_samples=25, seed=1):
        assert math.isclose(sum(p.probs.values()), 1.0, abs_tol=1e-6)
        assert p.label == max(p.probs, key=p.probs.__getitem__)
        assert 0 <= p.expected_entropy <= p.entropy + 1e-9 <= math.log(2) + 1e-9
        assert 0 <= p.mutual_information <= p.entropy + 1e-9
        assert all(v >= 0 for v in p.variance.values())
        assert 0 <= p.variation_ratio < 1
        assert 0 <= p.oov_fraction <= 1


def test_same_seed_reproduces_and_other_seed_differs(engine: MCEngine) -> None:
    first = engine.predict(TEXTS, n_samples=20, seed=5)
    assert first == engine.predict(TEXTS, n_samples=20, seed=5)
    assert first != engine.predict(TEXTS, n_samples=20, seed=6)


def test_answer_does_not_depend_on_batch_or_position(engine: MCEngine) -> None:
    together = engine.predict(TEXTS, n_samples=20, seed=9)
    for i, text in enumerate(TEXTS):
        assert_predictions_close(engine.predict([text], n_samples=20, seed=9), [together[i]])
    reversed_ = engine.predict(TEXTS[::-1], n_samples=20, seed=9)
    assert_predictions_close(reversed_[::-1], together)


def test_merged_requests_equal_separate_calls(engine: MCEngine) -> None:
    requests = [(TEXTS[:2], 1), (TEXTS[2:3], 2), (TEXTS[3:], 1)]
    merged = engine.predict_many(requests, n_samples=15)
    for result, (texts, seed) in zip(merged, requests, strict=True):
        assert_predictions_close(result, engine.predict(texts, n_samples=15, seed=seed))


@pytest.mark.parametrize("params", [{"word_dropout_p": 0.1}, GATES | {"bag_skip": True, "prior_dim": 3}])
def test_chunking_over_inputs_and_samples_does_not_change_results(
    make_checkpoint: MakeCheckpoint, params: dict[str, float]
) -> None:
    path = make_checkpoint("gru", **params)
    big = MCEngine(load_checkpoint(path), device="cpu", max_batch_rows=100_000)
    tiny = MCEngine(load_checkpoint(path), device="cpu", max_batch_rows=7)  # fewer rows than samples
    a = big.predict_samples(TEXTS, n_samples=30, seed=3)
    b = tiny.predict_samples(TEXTS, n_samples=30, seed=3)
    assert torch.allclose(a, b, atol=1e-6)


def test_samples_vary_and_single_sample_has_zero_mi(engine: MCEngine) -> None:
    samples = engine.predict_samples(TEXTS, n_samples=10, seed=0)
    assert samples.shape == (10, len(TEXTS), 2)
    assert samples.std(dim=0).max() > 0
    assert all(p.mutual_information == 0 for p in engine.predict(TEXTS, n_samples=1, seed=0))


def test_mc_mean_approaches_deterministic_prediction(make_checkpoint: MakeCheckpoint) -> None:
    engine = load_engine(str(make_checkpoint("mlp", dropout_p=[0.05, 0.05])), device="cpu")
    mc = engine.predict_samples(TEXTS, n_samples=400, seed=0).mean(dim=0)
    assert torch.allclose(mc, engine.predict_deterministic(TEXTS), atol=0.02)


def test_model_without_dropout_is_refused(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("mlp", dropout_p=[0.0, 0.0])
    with pytest.raises(McdropError, match="has no active dropout"):
        load_engine(str(path), device="cpu")


def test_invalid_arguments(engine: MCEngine) -> None:
    with pytest.raises(ConfigError, match="n_samples must be a positive integer"):
        engine.predict(["x"], n_samples=0)
    with pytest.raises(ConfigError, match="seed must be in"):
        engine.predict(["x"], seed=-1)
    with pytest.raises(ConfigError, match="device must be auto, cpu or cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("params", [{}, GATES])
def test_cuda_matches_cpu(make_checkpoint: MakeCheckpoint, params: dict[str, float]) -> None:
    path = str(make_checkpoint("gru", **params))
    cpu = load_engine(path, device="cpu").predict_samples(TEXTS, 20, 1)
    gpu = load_engine(path, device="cuda").predict_samples(TEXTS, 20, 1)
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_to_dict_has_every_field(engine: MCEngine) -> None:
    from dataclasses import asdict

    prediction = engine.predict(["a film"], n_samples=3, seed=0)[0]
    assert prediction.to_dict() == asdict(prediction)


@pytest.mark.parametrize("params", [{"input_dropout_p": 0.0, "weight_dropout_p": 0.3}, GATES])
def test_weight_and_gate_dropout_with_several_seeds_and_sample_chunks(
    make_checkpoint: MakeCheckpoint, params: dict[str, float]
) -> None:
    path = make_checkpoint("gru", name="wd", **params)
    engine = MCEngine(load_checkpoint(path), device="cpu", max_batch_rows=3)  # fewer rows than samples
    requests = [(TEXTS[:2], 1), (TEXTS[2:4], 2), (TEXTS[4:], 1)]
    merged = engine.predict_many(requests, n_samples=7)
    for result, (texts, seed) in zip(merged, requests, strict=True):
        assert_predictions_close(result, engine.predict(texts, n_samples=7, seed=seed))


def test_recurrent_tails_on_the_cpu_run_in_cache_sized_passes(make_checkpoint: MakeCheckpoint) -> None:
    from mcdrop.core.engine import CPU_RECURRENT_PASS_ROWS

    gru = MCEngine(load_checkpoint(make_checkpoint("gru")), device="cpu", max_batch_rows=8192)
    assert gru.pass_rows == CPU_RECURRENT_PASS_ROWS
    after = MCEngine(
        load_checkpoint(make_checkpoint("gru", name="after", input_dropout_p=0.0)), device="cpu", max_batch_rows=8192
    )
    assert after.pass_rows == 8192  # the recurrence runs once per text: no reason to cut the tail
    mlp = MCEngine(load_checkpoint(make_checkpoint("mlp")), device="cpu", max_batch_rows=8192)
    assert mlp.pass_rows == 8192
    gates = MCEngine(load_checkpoint(make_checkpoint("gru", name="gates", **GATES)), device="cpu", max_batch_rows=8192)
    assert gates.pass_rows == CPU_RECURRENT_PASS_ROWS  # each sample still runs the recurrent half


def test_the_engine_imports_no_serving_or_training_library() -> None:
    """The core stays torch-only: a library user who loads an engine pulls in no web or plotting stack."""
    code = (
        "import sys, mcdrop.core.engine, mcdrop\n"
        "mcdrop.load_engine\n"
        "print(','.join(m for m in ('fastapi', 'pydantic', 'starlette', 'matplotlib', 'mcdrop.serving', "
        "'mcdrop.training') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""
