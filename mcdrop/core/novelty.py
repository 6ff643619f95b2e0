"""How unlike the training texts an input is: a word-bigram language model and a calibrated novelty score.

A text from another language, another domain or random word salad has a high mean negative log-likelihood
per token under a language model of the training texts. ``NgramLanguageModel`` is an interpolated
Kneser-Ney bigram model over token lists; ``NoveltyCalibration`` turns its score into the share of held-out
in-distribution texts that scored strictly lower (0 = typical, 1 = unlike every calibration text).

    model = NgramLanguageModel.fit(train_token_lists)
    calibration = NoveltyCalibration(model.mean_nll_many(held_out_token_lists))
    novelty = calibration.novelty(model.mean_nll(tokens))
    text = json.dumps(model.to_json())                      # counts only, no pickle
    model = NgramLanguageModel.from_json(json.loads(text))  # validated; ValueError when malformed

Model (Kneser & Ney 1995; Chen & Goodman 1999), with c(v, w) bigram counts including ``<s>`` and ``</s>``:
    P(w | v) = max(c(v, w) - D, 0) / c(v) + D · N1+(v •) / c(v) · P1(w)
    P1(w)    = max(N1+(• w) - D, 0) / N1+(• •) + D · |{w : N1+(• w) > 0}| / N1+(• •) · 1 / |V|
P1 is the continuation unigram (in how many distinct contexts w appears), interpolated with a uniform floor
over the |V| predictable tokens (vocabulary, ``</s>``, ``<unk>``), so no probability is 0. The discount is
D = n1 / (n1 + 2 n2) from the bigram count-of-counts (Ney, Essen & Kneser 1994), 0.75 when undefined.

Unknown words. Words seen fewer than ``min_count`` times, or beyond the ``max_vocab`` most frequent, are
replaced by ``<unk>`` when fitting, so ``<unk>`` receives the mass of the rare-word class, in context like any
word. That class stands for many word types, so one particular unknown word is given the class probability
divided by the number of training word types mapped to it. Otherwise a text made only of unknown words
(another language) would look cheap: ``<unk>`` is one of the most frequent tokens. Word salad of known words
scores high through the bigram part: random orders have poor continuation probabilities.

Tokens spelled like the markers ``<s>``, ``</s>`` or ``<unk>`` are treated as unknown words.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, pairwise
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mcdrop.core.novelty_scoring import BigramTable, EncoderScorer

FloatArray = NDArray[np.float64]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_BOS, _EOS, _UNK = 0, 1, 2  # ids of the markers; vocabulary words follow from id 3
_MARKERS = (BOS, EOS, UNK)
MODEL_FORMAT = "mcdrop.bigram-kneser-ney"
CALIBRATION_FORMAT = "mcdrop.novelty-calibration"
_VERSION = 1


class NgramLanguageModel:
    """Interpolated Kneser-Ney word-bigram model; see the module docstring for the formulas."""

    def __init__(
        self,
        vocab: Sequence[str],
        bigrams: Sequence[int],
        n_unk_types: int,
        min_count: int = 2,
        max_vocab: int = 50_000,
    ) -> None:
        """Build from counts: ``vocab`` are the words with ids 3, 4, ...; ``bigrams`` is a flat list of
        (context id, word id, count) triples; ``n_unk_types`` the number of word types mapped to ``<unk>``;
        ``min_count`` and ``max_vocab`` record how the vocabulary was cut. Prefer ``fit`` or ``from_json``."""
        self.vocab: tuple[str, ...] = tuple(vocab)
        self.n_unk_types, self.min_count, self.max_vocab = n_unk_types, min_count, max_vocab
        rows = _checked_bigrams(self.vocab, bigrams)
        self._rows = rows
        self._build(rows)

    @classmethod
    def fit(
        cls, token_lists: Iterable[Sequence[str]], min_count: int = 2, max_vocab: int = 50_000
    ) -> NgramLanguageModel:
        """Count words and bigrams of tokenised texts. Deterministic: the same texts give the same model."""
        if min_count < 1 or max_vocab < 0:
            raise ValueError(f"min_count must be >= 1 and max_vocab >= 0, got {min_count} and {max_vocab}")
        texts = [list(tokens) for tokens in token_lists]
        if not texts:
            raise ValueError("token_lists must contain at least one text")
        frequency = Counter(chain.from_iterable(texts))
        kept = [w for w, c in frequency.items() if c >= min_count and w not in _MARKERS]
        kept.sort(key=lambda w: (-frequency[w], w))  # ties broken by spelling, for determinism
        kept = kept[:max_vocab]
        ids = {word: index for index, word in enumerate(kept, start=3)}
        stream: list[int] = []
        for tokens in texts:
            stream.append(_BOS)
            stream.extend([ids.get(token, _UNK) for token in tokens])
            stream.append(_EOS)
        pairs = Counter(pairwise(stream))
        pairs.pop((_EOS, _BOS), None)  # the seam between consecutive texts is not a bigram
        flat = [value for (v, w), count in sorted(pairs.items()) for value in (v, w, count)]
        return cls(kept, flat, len(frequency) - len(kept), min_count, max_vocab)

    def _build(self, rows: NDArray[np.int64]) -> None:
        # Everything the scorer needs is turned into negative log-probabilities here, so scoring a token is
        # one or two dict/list look-ups and an addition.
        context, word, count = rows[:, 0], rows[:, 1], rows[:, 2]
        size = len(self.vocab) + 3
        n1, n2 = int(np.sum(count == 1)), int(np.sum(count == 2))
        self.discount = n1 / (n1 + 2 * n2) if n1 and n2 else 0.75
        d, types = self.discount, float(len(rows))
        context_total = np.bincount(context, weights=count, minlength=size)
        continuation = np.bincount(word, minlength=size).astype(np.float64)
        seen_words = float(np.count_nonzero(continuation))
        p1 = np.maximum(continuation - d, 0.0) / types + d * seen_words / types / (size - 1)
        p1[_BOS] = 0.0  # <s> is never predicted
        followers = np.bincount(context, minlength=size)
        # A context never seen (e.g. <unk> when no word was rare) backs off entirely to P1.
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = np.where(context_total > 0, d * followers / context_total, 1.0)
            seen_p = (count - d) / context_total[context] + gamma[context] * p1[word]
            nll_p1 = -np.log(p1)
        self._p1, self._gamma, self._context_total = p1, gamma, context_total
        # One particular unknown word: the <unk> class mass spread over the word types the class absorbed.
        self.unknown_penalty = math.log(max(self.n_unk_types, 1))
        nll_p1[_UNK] += self.unknown_penalty
        nll_seen = -np.log(seen_p) + np.where(word == _UNK, self.unknown_penalty, 0.0)
        self._nll_backoff: list[float] = (-np.log(gamma)).tolist()
        self._nll_unigram: list[float] = nll_p1.tolist()
        self._nll_seen: list[dict[int, float]] = [{} for _ in range(size)]
        for v, w, nll in zip(context.tolist(), word.tolist(), nll_seen.tolist(), strict=True):
            self._nll_seen[v][w] = nll
        self._ids = {token: index for index, token in enumerate(self.vocab, start=3)}
        # The same numbers as arrays, for scoring a whole batch at once (mcdrop.core.novelty_scoring).
        self._table = BigramTable(context, word, nll_seen, -np.log(gamma), nll_p1)

    def mean_nll(self, tokens: Sequence[str]) -> float:
        """Mean negative log-likelihood (nats) over the tokens and the closing ``</s>``."""
        ids = self._ids
        return self.mean_nll_of_ids([ids.get(token, _UNK) for token in tokens])

    def mean_nll_of_ids(self, ids: Sequence[int]) -> float:
        """``mean_nll`` of one text given as the model's token ids (``token_id``): terms added in order from 0."""
        seen, backoff, unigram = self._nll_seen, self._nll_backoff, self._nll_unigram
        previous, total = _BOS, 0.0
        for current in ids:
            nll = seen[previous].get(current)
            total += backoff[previous] + unigram[current] if nll is None else nll
            previous = current
        nll = seen[previous].get(_EOS)
        total += backoff[previous] + unigram[_EOS] if nll is None else nll
        return total / (len(ids) + 1)

    def token_id(self, token: str) -> int:
        """The model's id of ``token`` (that of ``<unk>`` for a word it does not know)."""
        return self._ids.get(token, _UNK)

    def mean_nll_many(self, token_lists: Iterable[Sequence[str]]) -> FloatArray:
        """``mean_nll`` of every text, as a float array (the same floats)."""
        ids = self._ids
        flat: list[int] = []
        lengths: list[int] = []
        for tokens in token_lists:
            flat.append(_BOS)
            flat.extend([ids.get(token, _UNK) for token in tokens])
            flat.append(_EOS)
            lengths.append(len(tokens))
        return self._table.mean_nll(np.array(flat, dtype=np.int64), lengths)

    def mean_nll_ids(self, ids: NDArray[np.int64], lengths: Sequence[int]) -> FloatArray:
        """``mean_nll`` of texts given as the model's token ids, concatenated (``lengths[i]`` ids each)."""
        if not len(lengths):
            return np.zeros(0, dtype=np.float64)
        counts = np.asarray(lengths, dtype=np.int64) + 2  # each text's tokens between <s> and </s>
        ends = np.cumsum(counts) - 1
        sequence = np.full(int(counts.sum()), _EOS, dtype=np.int64)
        sequence[ends - counts + 1] = _BOS
        inside = np.ones(sequence.size, dtype=bool)
        inside[ends] = False
        inside[ends - counts + 1] = False
        sequence[inside] = ids
        return self._table.mean_nll(sequence, lengths)

    def encoder_scorer(self, tokens: Sequence[str], unknown_id: int) -> EncoderScorer:
        """A scorer of texts given as the ids of an encoder whose id ``i`` is ``tokens[i]`` (``unknown_id`` its id
        for every word it does not know); see :class:`~mcdrop.core.novelty_scoring.EncoderScorer`."""
        known = set(tokens)
        covered = all(word in known for word in self.vocab)
        to_model = [self._ids.get(token, _UNK) for token in tokens]
        return EncoderScorer(self._table, self.mean_nll_of_ids, to_model, unknown_id, self.token_id, covered)

    def next_token_probs(self, previous: str | None) -> dict[str, float]:
        """P(next | previous) over the vocabulary, ``</s>`` and the ``<unk>`` class; ``None`` = text start.

        The class probability of ``<unk>`` is reported, not that of one particular unknown word; the values
        sum to 1.
        """
        v = _BOS if previous is None else self._ids.get(previous, _UNK)
        probs = self._gamma[v] * self._p1
        mine = self._rows[self._rows[:, 0] == v]
        probs[mine[:, 1]] += (mine[:, 2] - self.discount) / self._context_total[v]
        names = (BOS, EOS, UNK, *self.vocab)
        return {names[i]: float(probs[i]) for i in range(1, len(names))}

    def to_json(self) -> dict[str, Any]:
        """Counts as JSON-ready strings and ints; probabilities are rebuilt on load."""
        return {
            "format": MODEL_FORMAT,
            "version": _VERSION,
            "min_count": self.min_count,
            "max_vocab": self.max_vocab,
            "n_unk_types": self.n_unk_types,
            "vocab": list(self.vocab),
            "bigrams": self._rows.reshape(-1).tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NgramLanguageModel:
        """Inverse of ``to_json``; raises ValueError naming the first problem in a malformed document."""
        _check_header(data, MODEL_FORMAT, ("min_count", "max_vocab", "n_unk_types", "vocab", "bigrams"))
        for key, low in (("min_count", 1), ("max_vocab", 0), ("n_unk_types", 0)):
            if not _is_int(data[key]) or data[key] < low:
                raise ValueError(f"model field {key!r} must be an integer >= {low}")
        vocab, bigrams = data["vocab"], data["bigrams"]
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise ValueError("model field 'vocab' must be a list of strings")
        if not isinstance(bigrams, list) or not all(_is_int(x) for x in bigrams):
            raise ValueError("model field 'bigrams' must be a flat list of integers")
        return cls(vocab, bigrams, data["n_unk_types"], data["min_count"], data["max_vocab"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_header(data: object, expected_format: str, fields: tuple[str, ...]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != expected_format:
        raise ValueError(f"format must be {expected_format!r}, got {data.get('format')!r}")
    if data.get("version") != _VERSION:
        raise ValueError(f"unsupported version {data.get('version')!r} (this code reads version {_VERSION})")
    missing = [key for key in fields if key not in data]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")


def _checked_bigrams(vocab: tuple[str, ...], flat: Sequence[int]) -> NDArray[np.int64]:
    """The (context, word, count) rows, after checking they describe a possible model."""
    if len(set(vocab)) != len(vocab) or any(not w or w in _MARKERS for w in vocab):
        raise ValueError("vocab must hold distinct non-empty words other than <s>, </s>, <unk>")
    if len(flat) == 0 or len(flat) % 3:
        raise ValueError(f"bigrams must be a non-empty list of (context, word, count) triples, got {len(flat)} ints")
    rows = np.asarray(flat, dtype=np.int64).reshape(-1, 3)
    size = len(vocab) + 3
    context, word, count = rows[:, 0], rows[:, 1], rows[:, 2]
    if rows[:, :2].min() < 0 or rows[:, :2].max() >= size:
        raise ValueError(f"bigram token ids must be in [0, {size - 1}]")
    if np.any(context == _EOS) or np.any(word == _BOS):
        raise ValueError("</s> cannot be a bigram context and <s> cannot be predicted")
    if count.min() < 1:
        raise ValueError("bigram counts must be >= 1")
    if np.unique(context * size + word).size != len(rows):
        raise ValueError("bigrams must not repeat a (context, word) pair")
    return rows


class NoveltyCalibration:
    """Where a score falls among the scores of held-out in-distribution (calibration) texts."""

    def __init__(self, scores: ArrayLike) -> None:
        values = np.asarray(scores, dtype=np.float64)
        if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError("calibration scores must be a non-empty 1-D array of finite numbers")
        self.scores: FloatArray = np.sort(values)
        self._ordered: list[float] = self.scores.tolist()

    def novelty(self, score: float) -> float:
        """Share of calibration texts with a strictly lower score: 0 = typical ... 1 = unlike all of them."""
        return int(np.searchsorted(self.scores, score, side="left")) / self.scores.size

    def novelty_many(self, scores: ArrayLike) -> FloatArray:
        """``novelty`` of every score (NaN counts as beyond all calibration scores)."""
        ranks = np.searchsorted(self.scores, np.asarray(scores, dtype=np.float64), side="left")
        return np.asarray(ranks / self.scores.size, dtype=np.float64)

    def novelty_list(self, scores: Sequence[float] | FloatArray) -> list[float]:
        """``novelty_many`` as a list; a few scores in a list by bisection of the sorted list, cheaper than arrays."""
        if isinstance(scores, np.ndarray) or len(scores) > 8:
            values: list[float] = self.novelty_many(scores).tolist()
            return values
        ordered, size = self._ordered, len(self._ordered)
        return [bisect_left(ordered, s) / size if s == s else 1.0 for s in scores]  # s != s: NaN, beyond all

    def to_json(self) -> dict[str, Any]:
        """The sorted calibration scores (floats round-trip exactly through JSON)."""
        return {"format": CALIBRATION_FORMAT, "version": _VERSION, "scores": self.scores.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NoveltyCalibration:
        """Inverse of ``to_json``; raises ValueError when malformed."""
        _check_header(data, CALIBRATION_FORMAT, ("scores",))
        scores = data["scores"]
        if not isinstance(scores, list) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
        ):
            raise ValueError("calibration field 'scores' must be a list of numbers")
        return cls(scores)
