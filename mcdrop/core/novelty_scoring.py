"""Scoring served texts under the novelty model: the part of :mod:`mcdrop.core.novelty` that runs per request.

Everything that does not depend on the texts is built when the model loads, in two forms:

* :class:`BigramTable`, for many texts at once: the seen bigrams' negative log-probabilities in an
  open-addressing hash table (linear probing, keys placed in order of their home slot, so a key lies within
  ``window`` slots of its home and one gather of that window finds it), and the back-off and unigram terms as
  arrays indexed by token id. A batch's bigrams, all texts' concatenated, are a fixed dozen array operations
  whatever their number, and each text's sum is one ``bincount``;
* :class:`EncoderScorer`, for the engine: texts given as the encoder's token ids (looked up once already, when
  they were encoded) are mapped to the model's ids and scored by the table, or for a few tokens by a plain loop
  over the model's per-context dicts, where a handful of look-ups cost less than the array operations' fixed
  overhead.

Both add a text's terms in order starting from 0.0, as ``NgramLanguageModel.mean_nll`` does (``bincount`` adds its
weights in order), so every path gives the same floats for the same text, whatever it is batched with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_BOS, _EOS, _UNK = 0, 1, 2  # the novelty model's ids of <s>, </s>, <unk> (mcdrop.core.novelty)
# Multiplicative hashing: bigram (v, w) of a model with ``size`` ids hashes to ``(v * size + w) * _HASH mod 2^64``,
# one-to-one (the constant is odd), so the hash itself tells bigrams apart. It is ``v * size * _HASH + w * _HASH``:
# each id's two terms are kept, and a bigram's hash is one addition.
_HASH = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio
_MAX_LOAD = 0.5  # at most half the slots used
_SLOTS_PER_BUCKET_BITS = 4  # 16 slots per bucket: a small displacement array (64 kB on the shipped models)
_MAX_ROUNDS = 200  # random displacements a bucket size gets before the table grows
# Up to this many tokens in a batch the plain loop is cheaper than the arrays (measured on the shipped MLP right after
# its Monte Carlo passes: about 0.2 µs a token against 30 µs plus 0.08 µs a token).
LOOP_MAX_TOKENS = 192
_CONTEXT, _WORD, _BACKOFF, _UNIGRAM = range(4)  # the columns of an id's record
_INDEX = np.arange(1024)  # text numbers, made once


class BigramTable:
    """Negative log-probabilities of bigrams, looked up many at a time; see the module docstring.

    ``context``, ``word`` and ``nll_seen`` describe the seen bigrams (the model's ids and their scores),
    ``nll_backoff[v] + nll_unigram[w]`` is the score of an unseen bigram ``(v, w)``; ids are below
    ``len(nll_unigram)``.

    Each id has a record (``records``, one row of four 64-bit words): its two hash terms, as a context and as a word,
    and the bits of its back-off and unigram scores, so that a sequence's ids are one gather. The seen bigrams are a
    perfect hash table (hash and displace: Belazzougui, Botelho & Dietzfelbinger 2009): the bigram hashed to ``h`` is
    in slot ``low(h) XOR displacement[high(h)]``, where each bucket's displacement was chosen at load time so that no
    two bigrams share a slot (``high``: the top bits, ``low``: the bits below them). A slot holds the hash, to tell a
    seen bigram from an unseen one, and the bits of its score: a look-up is one gather of the displacement and one of
    the slot.
    """

    def __init__(
        self, context: IntArray, word: IntArray, nll_seen: FloatArray, nll_backoff: FloatArray, nll_unigram: FloatArray
    ) -> None:
        self.size = size = len(nll_unigram)
        ids = np.arange(size, dtype=np.uint64)
        self.records = np.empty((size, 4), dtype=np.uint64)
        self.records[:, _CONTEXT] = ids * np.uint64(size) * _HASH  # mod 2^64
        self.records[:, _WORD] = ids * _HASH
        self.records[:, _BACKOFF] = np.asarray(nll_backoff, dtype=np.float64).view(np.uint64)
        # <s> is never predicted: its unigram term only scores the seam (</s>, <s>) between two concatenated texts,
        # and 0 there (</s> is never a context, so its back-off term is 0 too) leaves each text's sum as it is.
        unigram = np.asarray(nll_unigram, dtype=np.float64).copy()
        unigram[_BOS] = 0.0
        self.records[:, _UNIGRAM] = unigram.view(np.uint64)
        hashed = self.records[context, _CONTEXT] + self.records[word, _WORD]
        bits = max(4, math.ceil(math.log2(max(len(hashed), 1) / _MAX_LOAD)))
        while True:  # a bigger table if some bucket's bigrams cannot be separated (in practice never)
            placed = _displace(hashed, bits)
            if placed is not None:
                break
            bits += 1
        # the bucket is the top bucket_bits bits of a hash, the slot before displacement the bits bits below them
        bucket_bits = bits - _SLOTS_PER_BUCKET_BITS
        self._high, self._left, self._right = np.uint64(64 - bucket_bits), np.uint64(bucket_bits), np.uint64(64 - bits)
        self._displacement, slot = placed
        self._slots = np.zeros((1 << bits, 2), dtype=np.uint64)
        # an empty slot holds the hash of v * size + w = size², which no bigram has
        self._slots[:, 0] = np.uint64(size * size * int(_HASH) % 2**64)
        self._slots[slot, 0] = hashed
        self._slots[slot, 1] = np.asarray(nll_seen, dtype=np.float64).view(np.uint64)

    def pair_nll(self, records: NDArray[np.uint64]) -> FloatArray:
        """The score of each bigram of a sequence of ids, given as their ``records`` (one row per id, in order)."""
        hashed = records[:-1, _CONTEXT] + records[1:, _WORD]
        slot = self._displacement[hashed >> self._high]
        slot ^= (hashed << self._left) >> self._right
        found = self._slots.take(slot, axis=0)  # take: several times cheaper than indexing for rows
        unseen = records[:-1, _BACKOFF].view(np.float64) + records[1:, _UNIGRAM].view(np.float64)
        out: FloatArray = np.where(found[:, 0] == hashed, found[:, 1].view(np.float64), unseen)
        return out

    def mean_nll(
        self, sequence: IntArray, lengths: Sequence[int], records: NDArray[np.uint64] | None = None
    ) -> FloatArray:
        """Mean score per token of texts given as ``sequence``: each text's ``lengths[i]`` ids between ``<s>`` and
        ``</s>``, concatenated (``[<s>, a, b, </s>, <s>, c, </s>]`` for texts ``ab`` and ``c``). ``records`` are those
        of the ids ``sequence`` uses (default: the model's own ids, ``records``)."""
        if not len(lengths):
            return np.zeros(0, dtype=np.float64)
        nll = self.pair_nll((self.records if records is None else records).take(sequence, axis=0))
        spans = np.asarray(lengths, dtype=np.int64) + 2  # a text's bigrams and the seam after it
        index = _INDEX[: spans.size] if spans.size <= _INDEX.size else np.arange(spans.size)
        text = np.repeat(index, spans)[:-1]
        out: FloatArray = np.bincount(text, weights=nll, minlength=spans.size) / (spans - 1)
        return out


class EncoderScorer:
    """Mean NLL per token of texts given as an encoder's token ids, for a model of ``size`` ids.

    ``to_model`` maps an encoder id to the model's; ``token_id`` looks up a word the encoder does not know (then
    ``unknown_id``) when the model knows words the encoder does not (``covered`` false; otherwise the encoder's
    unknown words are the model's too). ``table`` scores many tokens; ``loop_score`` scores one text of the model's
    ids, in order (``NgramLanguageModel.mean_nll_of_ids``).
    """

    def __init__(
        self,
        table: BigramTable,
        loop_score: Callable[[Sequence[int]], float],
        to_model: Sequence[int],
        unknown_id: int,
        token_id: Callable[[str], int],
        covered: bool,
    ) -> None:
        self.table, self._loop_score = table, loop_score
        self._to_model = list(to_model)
        # the records of the encoder's ids and, past them, of <s> and </s>: a batch's ids are read in one gather
        self._bos, self._eos = len(self._to_model), len(self._to_model) + 1
        self._records = table.records.take(np.array([*self._to_model, _BOS, _EOS], dtype=np.int64), axis=0)
        self._unknown_id, self._token_id, self.covered = unknown_id, token_id, covered

    def mean_nll(
        self, ids: Sequence[Sequence[int]], lengths: Sequence[int], tokens: Sequence[Sequence[str]]
    ) -> list[float] | FloatArray:
        """Text ``i`` is its first ``lengths[i]`` encoder ids ``ids[i]`` (its words ``tokens[i]``, read only for the
        encoder's unknown words when the model is not covered). A list for a few tokens, else an array: whichever
        the scores were computed as."""
        if sum(lengths) <= LOOP_MAX_TOKENS:
            to_model, score = self._to_model, self._loop_score
            if self.covered:
                return [score([to_model[e] for e in row[:n]]) for row, n in zip(ids, lengths, strict=True)]
            return [score(self._model_ids(row[:n], words)) for row, n, words in zip(ids, lengths, tokens, strict=True)]
        sequence: list[int] = []
        if self.covered:  # the encoder's ids, with the records of the model's ids they stand for
            for row, n in zip(ids, lengths, strict=True):
                sequence.append(self._bos)
                sequence += row[:n]
                sequence.append(self._eos)
            return self.table.mean_nll(np.array(sequence, dtype=np.int64), lengths, self._records)
        for row, n, words in zip(ids, lengths, tokens, strict=True):
            sequence.append(_BOS)
            sequence += self._model_ids(row[:n], words)
            sequence.append(_EOS)
        return self.table.mean_nll(np.array(sequence, dtype=np.int64), lengths)

    def _model_ids(self, row: Sequence[int], words: Sequence[str]) -> list[int]:
        to_model, unknown, token_id = self._to_model, self._unknown_id, self._token_id
        return [token_id(words[k]) if e == unknown else to_model[e] for k, e in enumerate(row)]


def _displace(hashed: NDArray[np.uint64], bits: int) -> tuple[NDArray[np.uint32], NDArray[np.uint32]] | None:
    """Each bucket's displacement and each hash's slot in a table of ``2^bits`` slots (a bucket per
    ``2^_SLOTS_PER_BUCKET_BITS`` slots: the top bits of a hash; its slot is the ``bits`` bits below them XOR its
    bucket's displacement), or None when that
    fails (two hashes of one bucket with the same low bits, or a bucket still not placed after ``_MAX_ROUNDS``
    tries). Buckets are placed largest first, each size in rounds: every pending bucket tries a random displacement,
    and those whose hashes all land on free slots no other bucket of the round wants keep it; a bucket of one hash
    takes a free slot directly. Seeded: the same hashes give the same table."""
    bucket_bits = bits - _SLOTS_PER_BUCKET_BITS
    n_slots, n_buckets = 1 << bits, 1 << bucket_bits
    bucket = (hashed >> np.uint64(64 - bucket_bits)).astype(np.int64)
    low = ((hashed << np.uint64(bucket_bits)) >> np.uint64(64 - bits)).astype(np.uint32)
    order = np.argsort(bucket, kind="stable")
    sizes = np.bincount(bucket, minlength=n_buckets)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    displacement = np.zeros(n_buckets, dtype=np.uint32)
    free = np.ones(n_slots, dtype=bool)
    slot = np.zeros(len(hashed), dtype=np.uint32)
    rng = np.random.default_rng(0)
    for size in range(int(sizes.max(initial=0)), 1, -1):
        pending = np.flatnonzero(sizes == size)
        members = order[first[pending][:, None] + np.arange(size)]  # (buckets, size): their hashes
        if np.any(np.diff(np.sort(low[members], axis=1), axis=1) == 0):
            return None
        for _ in range(_MAX_ROUNDS):
            if not pending.size:
                break
            tried = rng.integers(0, n_slots, pending.size, dtype=np.uint32)
            slots = (low[members] ^ tried[:, None]).astype(np.int64)
            ok = free[slots].all(axis=1)
            wanted = np.bincount(slots[ok].ravel(), minlength=n_slots)
            ok[ok] = (wanted[slots[ok]] == 1).all(axis=1)
            free[slots[ok]] = False
            displacement[pending[ok]] = tried[ok]
            slot[members[ok]] = slots[ok]
            pending, members = pending[~ok], members[~ok]
        if pending.size:
            return None
    singles = order[first[sizes == 1]]
    slot[singles] = np.flatnonzero(free)[: singles.size]
    displacement[bucket[singles]] = slot[singles] ^ low[singles]
    return displacement, slot
