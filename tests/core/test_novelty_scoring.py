"""Tests for novelty_scoring.py: every way of scoring a text gives the floats of ``NgramLanguageModel.mean_nll``."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import TINY_CORPUS, MakeCheckpoint
from mcdrop.core import novelty_scoring
from mcdrop.core.engine import load_engine
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.text import Vocabulary

WORDS = [f"w{i}" for i in range(60)]


def corpus(n: int, seed: int) -> list[list[str]]:
    """Texts over a small vocabulary with a skewed word distribution, so that many bigrams repeat."""
    rng = random.Random(seed)
    return [[WORDS[min(int(rng.expovariate(0.08)), 59)] for _ in range(rng.randrange(0, 14))] for _ in range(n)]


@pytest.fixture(scope="module")
def model() -> NgramLanguageModel:
    return NgramLanguageModel.fit(corpus(2000, seed=0))


def texts() -> list[list[str]]:
    return [*corpus(300, seed=1), [], ["never-seen"], ["<s>", "</s>", "<unk>"], ["w0"] * 40]


@pytest.mark.parametrize("loop_max_tokens", [0, 10**9])  # the arrays for every batch, or the loop
@pytest.mark.parametrize("encoder_knows", ["everything", "some words only"])
def test_encoder_ids_score_exactly_like_the_words(
    model: NgramLanguageModel, monkeypatch: pytest.MonkeyPatch, loop_max_tokens: int, encoder_knows: str
) -> None:
    monkeypatch.setattr(novelty_scoring, "LOOP_MAX_TOKENS", loop_max_tokens)
    known = WORDS if encoder_knows == "everything" else WORDS[::2]  # the others are the encoder's unknown words
    vocab = Vocabulary([Vocabulary.PAD, Vocabulary.UNK, *reversed(known), "not-in-the-model"])
    scorer = model.encoder_scorer(vocab.tokens, Vocabulary.UNK_ID)
    assert scorer.covered == (encoder_knows == "everything")
    batch = texts()
    ids = [[vocab.lookup(t) for t in tokens] + [0, 5] for tokens in batch]  # ids past a text's tokens: n-grams
    expected = [model.mean_nll(tokens) for tokens in batch]
    assert list(scorer.mean_nll(ids, [len(t) for t in batch], batch)) == expected
    for size in (1, 2, 7):
        parts = [batch[i : i + size] for i in range(0, len(batch), size)]
        scores = [scorer.mean_nll([[vocab.lookup(t) for t in x] for x in p], [len(x) for x in p], p) for p in parts]
        assert [float(s) for part in scores for s in part] == expected


def test_batch_scores_equal_one_text_scores(model: NgramLanguageModel) -> None:
    batch = texts()
    expected = [model.mean_nll(tokens) for tokens in batch]
    assert model.mean_nll_many(batch).tolist() == expected
    ids = np.array([model.token_id(t) for tokens in batch for t in tokens], dtype=np.int64)
    assert model.mean_nll_ids(ids, [len(t) for t in batch]).tolist() == expected
    assert model.mean_nll_many([]).size == 0


def test_tables_of_tiny_models() -> None:
    for train in ([["a"]], [["a", "b"], ["b", "a"]], [[w] for w in WORDS[:3]]):
        tiny = NgramLanguageModel.fit(train, min_count=1)
        batch = [*train, [], ["a", "a", "zzz"]]
        assert tiny.mean_nll_many(batch).tolist() == [tiny.mean_nll(t) for t in batch]


def test_displacement_refuses_hashes_it_cannot_separate() -> None:
    same = np.array([12345, 12345], dtype=np.uint64)  # one bucket, one slot
    assert novelty_scoring._displace(same, 4) is None
    placed = novelty_scoring._displace(np.arange(1, 9, dtype=np.uint64) * np.uint64(2**60 + 1), 5)
    assert placed is not None and np.unique(placed[1]).size == 8


@pytest.mark.parametrize("architecture", ["mlp", "gru"])
def test_engine_novelty_is_the_rank_of_the_text_score(
    make_checkpoint: MakeCheckpoint, monkeypatch: pytest.MonkeyPatch, architecture: str
) -> None:
    engine = load_engine(str(make_checkpoint(architecture, calibrated=True)), device="cpu")
    assert engine.novelty_model is not None and engine.calibration is not None
    assert engine.calibration.novelty is not None
    batch = [*TINY_CORPUS, "", "ein ganz anderer text", "film film film"]
    expected = [
        engine.calibration.novelty.novelty(engine.novelty_model.mean_nll(engine.encoder.tokens(t))) for t in batch
    ]
    for loop_max_tokens in (0, 10**9):
        monkeypatch.setattr(novelty_scoring, "LOOP_MAX_TOKENS", loop_max_tokens)
        assert [p.novelty for p in engine.predict(batch, n_samples=4, seed=0)] == expected
