"""Decisions: calibration.json round trip and refusal, the order of the checks, and the engine's decision fields."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import MakeCheckpoint, tiny_calibration
from mcdrop.core.batch_decisions import actions, decide_many
from mcdrop.core.checkpoint import CALIBRATION_FILE, NOVELTY_FILE, load_checkpoint
from mcdrop.core.decisions import Calibration, DecisionPolicy
from mcdrop.core.engine import load_engine
from mcdrop.core.errors import CheckpointError, ConfigError

TEXTS = ["a wonderful moving film", "the worst film of the year", "das war ein langweiliger Film", ""]


def test_json_round_trip_keeps_thresholds_sets_and_novelty() -> None:
    calibration, _ = tiny_calibration()
    again = Calibration.from_json(json.loads(json.dumps(calibration.to_json())))
    for alpha in (0.05, 0.1, 0.2, 0.3):
        before, after = calibration.threshold(alpha).threshold, again.threshold(alpha).threshold
        assert (before is None and after is None) or after == pytest.approx(before, rel=1e-6)
    assert calibration.threshold(0.3).threshold is not None
    assert again.quantile(0.9) == pytest.approx(calibration.quantile(0.9), rel=1e-6)
    assert again.novelty is not None and calibration.novelty is not None
    assert again.novelty.novelty(2.0) == calibration.novelty.novelty(2.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not an mcdrop calibration"),
        ({"score": "variance"}, "'score' must be one of entropy, one_minus_max_prob, mutual_information"),
        ({"scores": []}, "'scores' must be a non-empty list of numbers"),
        ({"errors": [2]}, "'errors' must be 400 values of 0 or 1"),
        ({"delta": 1.5}, "'delta' must be a number in \\(0, 1\\)"),
        ({"nonconformity": ["x"]}, "'nonconformity' must be a non-empty list of numbers"),
    ],
)
def test_malformed_calibration_is_refused_naming_the_key(change: dict[str, object], message: str) -> None:
    data = {**tiny_calibration()[0].to_json(), **change}
    with pytest.raises(CheckpointError, match=message):
        Calibration.from_json(data, "c.json")


def test_novel_is_checked_first_and_unreachable_risk_abstains_with_a_reason() -> None:
    calibration, _ = tiny_calibration()
    lenient = calibration.threshold(0.3).threshold
    assert lenient is not None
    policy = DecisionPolicy(max_risk=0.3, max_novelty=0.9)
    assert calibration.decide(0.0, 0.5, policy).action == "accept"
    assert calibration.decide(lenient + 1e-6, 0.5, policy).reason == "uncertain"
    novel = calibration.decide(0.0, 0.95, policy)  # certain, but unlike the calibration data
    assert (novel.action, novel.reason) == ("abstain", "novel")
    unreachable = calibration.decide(0.0, 0.1, DecisionPolicy(max_risk=0.01))
    assert (unreachable.action, unreachable.reason, unreachable.threshold) == ("abstain", "uncertain", None)
    assert unreachable.detail is not None and "raise max_risk" in unreachable.detail


def test_higher_max_risk_never_lowers_coverage() -> None:
    calibration, _ = tiny_calibration()
    coverages = [calibration.threshold(a / 100).coverage for a in range(1, 51)]
    assert coverages == sorted(coverages) and coverages[-1] > 0.5


def test_calibrated_checkpoint_round_trips_and_corrupt_files_name_themselves(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("mlp", calibrated=True)
    checkpoint = load_checkpoint(path)
    assert checkpoint.calibration is not None and checkpoint.novelty_model is not None
    (path / NOVELTY_FILE).write_text('{"format": "nope"}')
    with pytest.raises(CheckpointError, match=rf"{NOVELTY_FILE}: invalid novelty model"):
        load_checkpoint(path)
    (path / CALIBRATION_FILE).write_text('{"format": "x"}')
    with pytest.raises(CheckpointError, match=rf"{CALIBRATION_FILE}: not an mcdrop calibration"):
        load_checkpoint(path)


@pytest.mark.parametrize("architecture", ["mlp", "gru"])
def test_decisions_are_seeded_and_independent_of_batch_partners(
    make_checkpoint: MakeCheckpoint, architecture: str
) -> None:
    engine = load_engine(str(make_checkpoint(architecture, calibrated=True)), device="cpu")
    policy = DecisionPolicy(max_risk=0.2, coverage=0.8)
    alone = engine.predict(TEXTS, n_samples=16, seed=5, policy=policy)
    again = engine.predict(TEXTS, n_samples=16, seed=5, policy=policy)
    merged = engine.predict_many([(["other text"], 9), (TEXTS, 5)], 16, [DecisionPolicy(), policy])[1]
    assert alone == again
    assert [p.decision for p in merged] == [p.decision for p in alone]
    assert [p.prediction_set for p in merged] == [p.prediction_set for p in alone]
    for p in alone:
        assert p.decision is not None and p.novelty is not None and 0.0 <= p.novelty <= 1.0
        assert p.decision.max_risk == 0.2
        assert p.prediction_set is not None and set(p.prediction_set) <= set(engine.labels)
    foreign = alone[2]
    assert foreign.novelty is not None and foreign.novelty > 0.9  # German under a bigram model of English reviews


def test_default_policy_gives_sets_and_novelty_but_no_decision(make_checkpoint: MakeCheckpoint) -> None:
    engine = load_engine(str(make_checkpoint("mlp", calibrated=True)), device="cpu")
    [prediction] = engine.predict(["a wonderful film"], n_samples=8, seed=1)
    assert prediction.decision is None and prediction.prediction_set and prediction.novelty is not None
    wider = engine.predict(["a wonderful film"], n_samples=8, seed=1, policy=DecisionPolicy(coverage=0.99))[0]
    assert wider.prediction_set is not None and len(wider.prediction_set) >= len(prediction.prediction_set)
    assert replace(prediction, prediction_set=None, novelty=None) == replace(wider, prediction_set=None, novelty=None)


def test_uncalibrated_engine_refuses_a_decision(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    engine = load_engine(str(make_checkpoint("mlp")), device="cpu")
    [plain] = engine.predict(["a film"], n_samples=4, seed=0)
    assert (plain.novelty, plain.prediction_set, plain.decision) == (None, None, None)
    with pytest.raises(ConfigError, match="has no calibration"):
        engine.predict(["a film"], n_samples=4, seed=0, policy=DecisionPolicy(max_risk=0.1))
    assert math.isfinite(plain.entropy)


@pytest.mark.parametrize("n_labels", [3, 12])
@pytest.mark.parametrize("score", ["entropy", "one_minus_max_prob", "mutual_information"])
def test_a_batch_decides_like_one_prediction_at_a_time(score: str, n_labels: int) -> None:
    base, _ = tiny_calibration()
    assert base.novelty is not None
    calibration = Calibration(score, base.scores, base.errors, base.nonconformity, None, base.novelty.scores)
    rng = np.random.default_rng(0)
    mean = rng.dirichlet([0.5] * n_labels, size=40)
    entropy, mi = rng.uniform(0, 1.1, 40), rng.uniform(0, 0.3, 40)
    novelties = [None if i % 7 == 0 else float(v) for i, v in enumerate(rng.uniform(0, 1, 40))]
    shared = DecisionPolicy(max_risk=0.3, coverage=0.8)
    kinds = [shared, DecisionPolicy(), DecisionPolicy(max_risk=0.01), DecisionPolicy(max_risk=0.2, max_novelty=0.5)]
    mixes = {
        "one policy": [shared] * 40,
        "several": [kinds[i % 4] for i in range(40)],
        "no decisions": [DecisionPolicy(coverage=0.95)] * 40,
    }
    labels = [f"label{c}" for c in range(n_labels)]
    for policies in mixes.values():
        sets, decisions = [], []
        for start, size in ((0, 1), (1, 2), (3, 37)):  # one at a time, and as arrays
            chunk = slice(start, start + size)
            part = decide_many(
                calibration, mean[chunk], entropy[chunk], mi[chunk], novelties[chunk], policies[chunk], labels
            )
            sets += part[0]
            decisions += part[1]
        found = actions(calibration, mean, entropy, mi, novelties, policies)
        for i, policy in enumerate(policies):
            row = mean[i].tolist()
            assert sets[i] == [labels[c] for c in calibration.prediction_set(row, policy.coverage)]
            expected = None
            if policy.max_risk is not None:
                value = calibration.score_of(row, float(entropy[i]), float(mi[i]))
                expected = calibration.decide(value, novelties[i], policy)
            assert decisions[i] == expected
            assert found[i] == (None if expected is None else expected.action)
    assert decide_many(calibration, mean[:0], entropy[:0], mi[:0], [], [], labels) == ([], [])
