"""Text pipeline: tokenizer, vocabulary and the encoder that turns texts into token ids.

The encoder is saved with every checkpoint (``vocab.json``) so serving tokenizes exactly like training.
It also reports the input-novelty signal: how many of a text's tokens the vocabulary knows.
"""

from __future__ import annotations

import functools
import itertools
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcdrop.core.errors import CheckpointError, ConfigError

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[!?]")
SUBWORD_SIZES = (3, 4, 5)  # character n-gram lengths of a token's subwords, boundary marks included
SUBWORD_CACHE = 1 << 16  # tokens whose subword ids are kept (least recently used go first): bounded memory


@functools.lru_cache(maxsize=SUBWORD_CACHE)
def subword_ids(token: str, buckets: int, offset: int) -> tuple[int, ...]:
    """The ids of ``token``'s hashed character n-grams: each 3-5-character piece of ``<token>`` hashed (CRC-32,
    the same in every process) into one of ``buckets`` ids from ``offset`` on. Words the vocabulary never saw
    share pieces with words it did ("unwatchable" with "watchable"); a misspelt word keeps most of its pieces."""
    word = f"<{token}>"
    return tuple(
        offset + zlib.crc32(word[i : i + n].encode("utf-8")) % buckets
        for n in SUBWORD_SIZES
        for i in range(len(word) - n + 1)
    )


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split ``text`` into word tokens (letters/digits with inner apostrophes) and ``!``/``?`` marks."""
    return _TOKEN.findall(text.lower() if lowercase else text)


def ngrams(tokens: Sequence[str], n_max: int) -> list[str]:
    """Word n-grams of order 2..n_max joined by a space (unigrams are the tokens themselves)."""
    return [" ".join(tokens[i : i + n]) for n in range(2, n_max + 1) for i in range(len(tokens) - n + 1)]


class Vocabulary:
    """Token ↔ id mapping; id 0 is padding, id 1 stands for every unknown token."""

    PAD = "<pad>"
    UNK = "<unk>"
    PAD_ID = 0
    UNK_ID = 1

    def __init__(self, tokens: Sequence[str]) -> None:
        if list(tokens[:2]) != [self.PAD, self.UNK]:
            raise ConfigError(f"a vocabulary must start with {self.PAD!r} and {self.UNK!r}")
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ConfigError("a vocabulary must not repeat a token")

    def __len__(self) -> int:
        return len(self.tokens)

    def lookup(self, token: str) -> int:
        return self.index.get(token, self.UNK_ID)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], max_size: int, min_count: int = 1) -> Vocabulary:
        """The ``max_size - 2`` most frequent tokens seen at least ``min_count`` times (ties by token)."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([cls.PAD, cls.UNK, *kept[: max(0, max_size - 2)]])


@dataclass(frozen=True)
class EncodedTexts:
    """Token ids of a batch of texts with the novelty statistics of each.

    ``ids[i]`` are the ids the model sees: unigrams in order, each followed by its hashed subword ids when the
    encoder has subword buckets, then the known n-grams (bag-of-words models);
    ``n_tokens[i]``/``n_known_tokens[i]`` count unigram tokens (after truncation) and those in the vocabulary;
    ``tokens[i]`` are those tokens (what the novelty model scores);
    ``words[i]`` are their ids alone when subwords sit between them in ``ids[i]`` (``None`` otherwise: then they
    are the first ``n_tokens[i]`` of ``ids[i]``).
    """

    ids: list[list[int]]
    n_tokens: list[int]
    n_known_tokens: list[int]
    tokens: list[list[str]] = field(default_factory=list)
    words: list[list[int]] | None = None

    def word_rows(self) -> Sequence[Sequence[int]]:
        """Rows that start with each text's word ids in order (its first ``n_tokens[i]`` entries)."""
        return self.ids if self.words is None else self.words

    def __len__(self) -> int:
        return len(self.ids)

    def oov_fraction(self, i: int) -> float:
        """Share of text ``i``'s tokens outside the vocabulary; 1.0 for a text with no tokens (no evidence)."""
        return 1.0 if self.n_tokens[i] == 0 else 1.0 - self.n_known_tokens[i] / self.n_tokens[i]


class TextEncoder:
    """Tokenizes, truncates to ``max_tokens`` and maps tokens (and n-grams up to ``ngram_max``) to ids; with
    ``subword_buckets`` > 0 each token also brings the ids of its hashed character n-grams, numbered after the
    vocabulary (``n_ids`` in all)."""

    def __init__(
        self,
        vocab: Vocabulary,
        ngram_max: int = 1,
        max_tokens: int = 256,
        lowercase: bool = True,
        subword_buckets: int = 0,
    ) -> None:
        if subword_buckets < 0:
            raise ConfigError(f"subword_buckets must be at least 0 (got {subword_buckets})")
        self.subword_buckets = subword_buckets
        if ngram_max < 1:
            raise ConfigError(f"ngram_max must be at least 1 (got {ngram_max})")
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1 (got {max_tokens})")
        self.vocab = vocab
        self.ngram_max = ngram_max
        self.max_tokens = max_tokens
        self.lowercase = lowercase

    @property
    def n_ids(self) -> int:
        """Size of the id space a model's embedding table needs: the vocabulary, then the subword buckets."""
        return len(self.vocab) + self.subword_buckets

    def tokens(self, text: str) -> list[str]:
        """The first ``max_tokens`` tokens of ``text``; the scan stops there, so a long text costs no more."""
        found = _TOKEN.finditer(text.lower() if self.lowercase else text)
        return [match.group() for match in itertools.islice(found, self.max_tokens)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text after truncation (what the model will read), without looking any up."""
        return [self.count_text_tokens(text) for text in texts]

    def count_text_tokens(self, text: str) -> int:
        """``len(self.tokens(text))`` without making the tokens' strings (a third less time on long texts)."""
        found = _TOKEN.finditer(text.lower() if self.lowercase else text)
        return sum(1 for _ in itertools.islice(found, self.max_tokens))

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        ids: list[list[int]] = []
        n_tokens: list[int] = []
        n_known_tokens: list[int] = []
        token_lists: list[list[str]] = []
        words: list[list[int]] | None = [] if self.subword_buckets else None
        index, unk = self.vocab.index, Vocabulary.UNK_ID
        get = index.get
        for text in texts:
            tokens = self.tokens(text)
            token_lists.append(tokens)
            unigram_ids = [get(t, unk) for t in tokens]
            row = unigram_ids
            if words is not None:
                words.append(unigram_ids)
                row = self._with_subwords(tokens, unigram_ids)
            if self.ngram_max > 1:
                # n-grams outside the vocabulary carry no signal; keep only known ones (bigrams without the
                # general n-gram loop: they are most of a bag-of-words encoder's time)
                grams = (a + " " + b for a, b in itertools.pairwise(tokens)) if self.ngram_max == 2 else None
                found = (get(g) for g in (grams if grams is not None else ngrams(tokens, self.ngram_max)))
                ids.append(row + [i for i in found if i is not None])
            else:
                ids.append(row)
            n_tokens.append(len(tokens))
            n_known_tokens.append(len(unigram_ids) - unigram_ids.count(unk))
        return EncodedTexts(ids, n_tokens, n_known_tokens, token_lists, words)

    def _with_subwords(self, tokens: Sequence[str], unigram_ids: Sequence[int]) -> list[int]:
        """Each token's id followed by its subword ids, which are all at least ``len(vocab)``: a bag reads them
        all alike, and a sequence model regroups them by token (an id below ``len(vocab)`` starts a token)."""
        row: list[int] = []
        buckets, offset = self.subword_buckets, len(self.vocab)
        for token, token_id in zip(tokens, unigram_ids, strict=True):
            row.append(token_id)
            row.extend(subword_ids(token, buckets, offset))
        return row

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        max_size: int,
        min_count: int = 1,
        ngram_max: int = 1,
        max_tokens: int = 256,
        lowercase: bool = True,
    ) -> TextEncoder:
        """Build the vocabulary from training texts (n-grams compete with unigrams for the ``max_size`` slots)."""

        def grams(text: str) -> list[str]:
            tokens = tokenize(text, lowercase)[:max_tokens]
            return tokens + ngrams(tokens, ngram_max) if ngram_max > 1 else tokens

        vocab = Vocabulary.build((grams(t) for t in texts), max_size=max_size, min_count=min_count)
        return cls(vocab, ngram_max=ngram_max, max_tokens=max_tokens, lowercase=lowercase)

    def to_json(self) -> dict[str, Any]:
        subwords = {"subword_buckets": self.subword_buckets} if self.subword_buckets else {}
        return {
            "lowercase": self.lowercase,
            "ngram_max": self.ngram_max,
            "max_tokens": self.max_tokens,
            **subwords,
            "tokens": self.vocab.tokens,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "vocab.json") -> TextEncoder:
        try:
            tokens = data["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise TypeError("tokens must be a list of strings")
            data = {"subword_buckets": 0} | data
            for key in ("ngram_max", "max_tokens", "subword_buckets"):
                if not isinstance(data[key], int) or isinstance(data[key], bool):
                    raise TypeError(f"{key} must be an integer (got {type(data[key]).__name__})")
            if not isinstance(data["lowercase"], bool):
                raise TypeError(f"lowercase must be true or false (got {type(data['lowercase']).__name__})")
            settings = {key: data[key] for key in ("ngram_max", "max_tokens", "lowercase", "subword_buckets")}
            return cls(Vocabulary(tokens), **settings)
        except (KeyError, TypeError, ValueError, ConfigError) as error:
            raise CheckpointError(f"{source}: invalid vocabulary ({error})") from error
