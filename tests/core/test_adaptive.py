"""Adaptive Monte Carlo: rounds, the stopping rule, the same masks as fixed N, batch independence, tau = 0."""

from __future__ import annotations

import pytest
import torch

from conftest import MakeCheckpoint, assert_predictions_close
from mcdrop.core.adaptive import round_ends, run_rounds
from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.core.errors import ConfigError
from mcdrop.core.uncertainty import summarize

TEXTS = ["a wonderful moving film", "terrible boring mess", "", "qwerty zxcvb", "the best film of the year", "a film"]


@pytest.fixture(params=["mlp", "gru", "gru-weight"])
def engine(request: pytest.FixtureRequest, make_checkpoint: MakeCheckpoint) -> MCEngine:
    if request.param == "gru-weight":
        path = make_checkpoint("gru", name="wd", input_dropout_p=0.0, weight_dropout_p=0.3)
    else:
        path = make_checkpoint(request.param)
    return load_engine(str(path), device="cpu", max_batch_rows=64)  # small passes: rounds split into several


def test_rounds_double_from_ten_and_end_at_n() -> None:
    assert round_ends(100) == [10, 20, 40, 80, 100]
    assert round_ends(80) == [10, 20, 40, 80]
    assert round_ends(30) == [10, 20, 30]
    assert round_ends(10) == [10] and round_ends(7) == [7]


def test_computing_every_sample_first_stops_where_the_rounds_stop() -> None:
    torch.manual_seed(0)
    confident = torch.softmax(torch.randn(100, 20, 3) * 0.3 + torch.tensor([3.0, 0.0, 0.0]), dim=-1)
    torch.manual_seed(1)
    unsure = torch.softmax(torch.randn(100, 20, 3) * 2.0, dim=-1)
    samples = torch.cat([confident, unsure], dim=1)  # (S, 40, 3)

    def tail(rows: torch.Tensor | None, part: slice) -> torch.Tensor:
        return samples[part] if rows is None else samples[part][:, rows]

    tolerances = [0.0, 0.01, 0.03, 0.1] * 10
    eager = run_rounds(tail, 40, 100, 3, 100, tolerances, None, eager=True)
    rounds = run_rounds(tail, 40, 100, 3, 30, tolerances, None)
    assert eager[1] == rounds[1]
    assert set(eager[1]) - {100} and all(u == 100 for u in eager[1][::4])  # some stop; tolerance 0 never does
    for i, used in enumerate(eager[1]):
        assert torch.equal(eager[0][:used, i], samples[:used, i])
        assert torch.equal(rounds[0][:used, i], samples[:used, i])


def test_zero_tolerance_is_exactly_the_fixed_n_answer(engine: MCEngine) -> None:
    fixed = engine.predict(TEXTS, n_samples=40, seed=3)
    assert engine.predict(TEXTS, n_samples=40, seed=3, mc_tolerance=0.0) == fixed
    assert all(p.n_samples_used == 40 for p in fixed)


def test_stopped_inputs_use_the_first_samples_of_the_fixed_n_run(engine: MCEngine) -> None:
    samples = engine.predict_samples(TEXTS, n_samples=80, seed=4)
    adaptive = engine.predict(TEXTS, n_samples=80, seed=4, mc_tolerance=0.05)
    assert any(p.n_samples_used < 80 for p in adaptive)
    for i, prediction in enumerate(adaptive):
        used = prediction.n_samples_used
        assert used in round_ends(80)
        expected = summarize(samples[:used, i : i + 1])
        assert list(prediction.probs.values()) == pytest.approx(expected.mean[0].tolist(), rel=1e-5, abs=1e-7)
        assert prediction.mutual_information == pytest.approx(expected.mutual_information.item(), rel=1e-4, abs=1e-7)
        if used < 80:  # it stopped: the rule held
            assert max(prediction.std_error.values()) <= 0.05


def test_adaptive_answers_are_reproducible_and_independent_of_batch_partners(engine: MCEngine) -> None:
    alone = [engine.predict([t], n_samples=60, seed=8, mc_tolerance=0.03) for t in TEXTS]
    assert engine.predict(TEXTS[:1], n_samples=60, seed=8, mc_tolerance=0.03) == alone[0]
    requests = [(TEXTS[:3], 8), (["another text", "more"], 2), (TEXTS[3:], 8)]
    merged = engine.predict_many(requests, 60, mc_tolerances=[0.03, 0.0, 0.03])
    assert_predictions_close(merged[0] + merged[2], [p for one in alone for p in one])
    assert all(p.n_samples_used == 60 for p in merged[1])  # tolerance 0 next to adaptive partners: fixed N


def test_tolerance_sets_how_early_inputs_stop(make_checkpoint: MakeCheckpoint) -> None:
    engine = load_engine(str(make_checkpoint("mlp")), device="cpu")
    loose = engine.predict(TEXTS, n_samples=100, seed=1, mc_tolerance=0.5)
    tight = engine.predict(TEXTS, n_samples=100, seed=1, mc_tolerance=1e-9)
    assert all(p.n_samples_used == 20 for p in loose)  # the earliest stop: the second round, label unchanged
    assert all(p.n_samples_used == 100 for p in tight)


def test_a_changed_decision_keeps_sampling(make_checkpoint: MakeCheckpoint) -> None:
    engine = load_engine(str(make_checkpoint("mlp", calibrated=True)), device="cpu")
    policy = DecisionPolicy(max_risk=0.2)
    adaptive = engine.predict(TEXTS, n_samples=80, seed=5, policy=policy, mc_tolerance=0.05)
    again = engine.predict_many([(TEXTS, 5)], 80, [policy], [0.05])[0]
    assert adaptive == again
    assert all(p.decision is not None for p in adaptive)


def test_checkpoint_default_tolerance_and_invalid_ones(make_checkpoint: MakeCheckpoint) -> None:
    engine = load_engine(str(make_checkpoint("mlp")), device="cpu")
    assert engine.default_mc_tolerance == 0.0
    engine.checkpoint.config["mc_tolerance"] = 0.5
    assert all(p.n_samples_used == 20 for p in engine.predict(TEXTS, n_samples=100, seed=1))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="mc_tolerance must be a number >= 0"):
            engine.predict(TEXTS, n_samples=10, seed=1, mc_tolerance=bad)


def test_single_thread_and_parallel_chunks_agree(make_checkpoint: MakeCheckpoint) -> None:
    engine = load_engine(str(make_checkpoint("gru")), device="cpu", max_batch_rows=40)
    texts = TEXTS * 8
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = engine.predict(texts, n_samples=50, seed=2, mc_tolerance=0.02)
        torch.set_num_threads(2)
        parallel = engine.predict(texts, n_samples=50, seed=2, mc_tolerance=0.02)
        assert torch.get_num_threads() == 2  # restored after the call
    finally:
        torch.set_num_threads(before)
    assert_predictions_close(parallel, serial)
