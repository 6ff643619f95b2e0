"""Tests for novelty.py: a normalised Kneser-Ney bigram model, JSON round trips, and out-of-distribution ranking."""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mcdrop.core.novelty import EOS, UNK, NgramLanguageModel, NoveltyCalibration

ENGLISH = {
    "det": ["the", "a", "this", "that", "every"],
    "adj": ["good", "bad", "great", "boring", "funny", "long", "clever", "dull", "sweet", "silly"],
    "noun": ["movie", "film", "plot", "actor", "story", "scene", "ending", "script", "cast", "score"],
    "verb": ["was", "is", "seems", "felt", "looks"],
    "adv": ["very", "really", "quite", "so", "too"],
    "conj": ["and", "but", "although", "because"],
}
FOREIGN = {
    "det": ["der", "ein", "dieser", "jener", "jeder"],
    "adj": ["gut", "schlecht", "toll", "langweilig", "lustig", "lang", "klug", "fade", "suess", "albern"],
    "noun": ["streifen", "werk", "handlung", "darsteller", "geschichte", "szene", "schluss", "buch", "truppe"],
    "verb": ["war", "ist", "scheint", "wirkte", "aussieht"],
    "adv": ["sehr", "wirklich", "ziemlich", "so", "zu"],
    "conj": ["und", "aber", "obwohl", "weil"],
}


def clause(words: dict[str, list[str]], rng: random.Random) -> list[str]:
    out = [rng.choice(words["det"])]
    if rng.random() < 0.5:
        out.append(rng.choice(words["adj"]))
    out += [rng.choice(words["noun"]), rng.choice(words["verb"])]
    if rng.random() < 0.6:
        out.append(rng.choice(words["adv"]))
    return [*out, rng.choice(words["adj"])]


def sentence(words: dict[str, list[str]], rng: random.Random) -> list[str]:
    """A tiny English-like grammar: DET [ADJ] NOUN VERB [ADV] ADJ, optionally CONJ + clause, optionally '!'."""
    out = clause(words, rng)
    if rng.random() < 0.5:
        out += [rng.choice(words["conj"]), *clause(words, rng)]
    return [*out, "!"] if rng.random() < 0.3 else out


def corpus(words: dict[str, list[str]], n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [sentence(words, rng) for _ in range(n)]


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside text scores higher than an inside one), ties counted half."""
    return float((outside[:, None] > inside[None, :]).mean() + 0.5 * (outside[:, None] == inside[None, :]).mean())


@pytest.fixture(scope="module")
def train() -> list[list[str]]:
    texts = corpus(ENGLISH, 3000, seed=0)
    # A sprinkling of rare words, so that <unk> is a real class seen in training.
    rng = random.Random(1)
    for i in range(0, len(texts), 10):
        texts[i].insert(rng.randrange(len(texts[i]) + 1), f"rare{i}")
    return texts


@pytest.fixture(scope="module")
def model(train: list[list[str]]) -> NgramLanguageModel:
    return NgramLanguageModel.fit(train)


def test_next_word_distribution_sums_to_one(model: NgramLanguageModel) -> None:
    for previous in (None, "the", "movie", "!", "rare0", "never-seen", UNK):
        probs = model.next_token_probs(previous)
        assert set(probs) == {*model.vocab, EOS, UNK}
        assert math.fsum(probs.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(probs.values()) > 0.0


def test_scores_match_the_explicit_distribution(model: NgramLanguageModel) -> None:
    for tokens in (["movie"], ["the", "zzz"], []):
        expected, previous = [], None
        for token in [*tokens, EOS]:
            probs = model.next_token_probs(previous)
            known = token in probs and token != UNK
            # One unknown word gets the <unk> class mass shared among the n_unk_types rare training words.
            expected.append(math.log(probs[token]) if known else math.log(probs[UNK] / model.n_unk_types))
            previous = token
        assert model.mean_nll(tokens) == pytest.approx(-sum(expected) / len(expected), rel=1e-12)


def test_vocabulary_cut(train: list[list[str]]) -> None:
    small = NgramLanguageModel.fit(train, min_count=2, max_vocab=5)
    assert len(small.vocab) == 5 and "rare0" not in small.vocab
    words = {w for t in train for w in t}
    assert small.n_unk_types == len(words) - 5
    assert not any(w.startswith("rare") for w in NgramLanguageModel.fit(train).vocab)
    assert "rare0" in NgramLanguageModel.fit(train, min_count=1).vocab
    with pytest.raises(ValueError, match="at least one text"):
        NgramLanguageModel.fit([])
    with pytest.raises(ValueError, match="min_count"):
        NgramLanguageModel.fit(train, min_count=0)


def test_fit_is_deterministic_and_order_free(train: list[list[str]], model: NgramLanguageModel) -> None:
    shuffled = train[:]
    random.Random(2).shuffle(shuffled)
    assert NgramLanguageModel.fit(train).to_json() == model.to_json()
    assert NgramLanguageModel.fit(shuffled).to_json() == model.to_json()


def test_json_round_trip_gives_identical_scores(model: NgramLanguageModel) -> None:
    document = json.loads(json.dumps(model.to_json()))
    loaded = NgramLanguageModel.from_json(document)
    texts = corpus(ENGLISH, 200, seed=3) + corpus(FOREIGN, 50, seed=4) + [[], ["zzz"]]
    assert np.array_equal(loaded.mean_nll_many(texts), model.mean_nll_many(texts))
    assert loaded.to_json() == model.to_json()
    assert all(isinstance(x, int) for x in document["bigrams"])


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d[key] = value

    return mutate


MALFORMED: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (_set("format", "pickle"), "format must be"),
    (_set("version", 2), "unsupported version"),
    (lambda d: d.pop("vocab"), "missing field"),
    (_set("min_count", 0), "'min_count' must be an integer"),
    (_set("n_unk_types", True), "'n_unk_types' must be an integer"),
    (_set("vocab", "the movie"), "'vocab' must be a list of strings"),
    (lambda d: d["vocab"].append(d["vocab"][0]), "distinct"),
    (lambda d: d["vocab"].append(UNK), "other than"),
    (lambda d: d["bigrams"].append(7), "triples"),
    (_set("bigrams", []), "triples"),
    (lambda d: d["bigrams"].__setitem__(2, 1.5), "flat list of integers"),
    (lambda d: d["bigrams"].__setitem__(1, 10**6), "token ids must be in"),
    (lambda d: d["bigrams"].__setitem__(2, 0), "counts must be >= 1"),
    (lambda d: d["bigrams"].__setitem__(0, 1), "cannot be a bigram context"),
    (lambda d: d["bigrams"].extend(d["bigrams"][:3]), "must not repeat"),
]


@pytest.mark.parametrize(("mutate", "message"), MALFORMED)
def test_malformed_json_raises(
    model: NgramLanguageModel, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    document = copy.deepcopy(model.to_json())
    mutate(document)
    with pytest.raises(ValueError, match=message):
        NgramLanguageModel.from_json(document)


def test_not_an_object_raises() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        NgramLanguageModel.from_json([1, 2, 3])  # type: ignore[arg-type]


def test_out_of_distribution_texts_score_higher(model: NgramLanguageModel) -> None:
    held_out = corpus(ENGLISH, 400, seed=5)
    rng = random.Random(6)
    salad = [rng.sample(t, len(t)) for t in held_out]
    foreign = corpus(FOREIGN, 400, seed=7)
    inside = model.mean_nll_many(held_out)
    assert auroc(inside, model.mean_nll_many(salad)) >= 0.9
    assert auroc(inside, model.mean_nll_many(foreign)) >= 0.9
    # Unknown words must not be cheap: every foreign text is beyond every in-distribution one here.
    assert model.mean_nll_many(foreign).min() > inside.max()
    assert math.isfinite(model.mean_nll([])) and model.mean_nll([]) > 0


def test_novelty_is_a_monotone_share(model: NgramLanguageModel) -> None:
    calibration = NoveltyCalibration(model.mean_nll_many(corpus(ENGLISH, 300, seed=8)))
    grid = np.linspace(calibration.scores[0] - 1, calibration.scores[-1] + 1, 500)
    values = calibration.novelty_many(grid)
    assert np.all((values >= 0) & (values <= 1)) and np.all(np.diff(values) >= 0)
    assert values[0] == 0.0 and values[-1] == 1.0
    assert [calibration.novelty(float(s)) for s in grid] == values.tolist()


def test_novelty_counts_strictly_lower_scores() -> None:
    calibration = NoveltyCalibration([3.0, 1.0, 2.0, 2.0])
    assert [calibration.novelty(s) for s in (0.5, 1.0, 2.0, 2.5, 3.0, 9.0)] == [0, 0, 0.25, 0.75, 0.75, 1.0]
    assert calibration.novelty(math.nan) == 1.0
    loaded = NoveltyCalibration.from_json(json.loads(json.dumps(calibration.to_json())))
    assert loaded.scores.tolist() == [1.0, 2.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="non-empty"):
        NoveltyCalibration([])
    with pytest.raises(ValueError, match="finite"):
        NoveltyCalibration([1.0, math.inf])
    with pytest.raises(ValueError, match="list of numbers"):
        NoveltyCalibration.from_json({"format": "mcdrop.novelty-calibration", "version": 1, "scores": ["1"]})
