"""Tokenizer, vocabulary and encoder: lower-casing, OOV, n-grams, truncation, JSON round trip."""

from __future__ import annotations

import pytest

from mcdrop.core.errors import CheckpointError, ConfigError
from mcdrop.core.text import TextEncoder, Vocabulary, ngrams, tokenize


def test_tokenize_lowercases_and_keeps_apostrophes_and_marks() -> None:
    assert tokenize("It's GREAT!  Isn't it?") == ["it's", "great", "!", "isn't", "it", "?"]
    assert tokenize("Ünïcode café", lowercase=False) == ["Ünïcode", "café"]


def test_ngrams() -> None:
    assert ngrams(["a", "b", "c"], 2) == ["a b", "b c"]
    assert ngrams(["a", "b", "c"], 3) == ["a b", "b c", "a b c"]


def test_vocabulary_orders_by_frequency_and_reserves_pad_and_unk() -> None:
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b", "a"]], max_size=4)
    assert vocab.tokens == ["<pad>", "<unk>", "b", "a"]
    assert vocab.lookup("c") == Vocabulary.UNK_ID


def test_encoder_reports_oov_and_truncates() -> None:
    encoder = TextEncoder.fit(["good film", "bad film"], max_size=10, max_tokens=3)
    encoded = encoder.encode(["good unknown film", "", "a b c d e f"])
    assert encoded.n_tokens == [3, 0, 3]
    assert encoded.n_known_tokens == [2, 0, 0]
    assert encoded.oov_fraction(0) == pytest.approx(1 / 3)
    assert encoded.oov_fraction(1) == 1.0  # no tokens: no evidence
    assert encoded.ids[0] == [encoder.vocab.lookup("good"), Vocabulary.UNK_ID, encoder.vocab.lookup("film")]


def test_bigram_ids_follow_unigrams_and_unknown_bigrams_are_dropped() -> None:
    encoder = TextEncoder.fit(["good film"], max_size=10, ngram_max=2)
    ids = encoder.encode(["good film", "film good"]).ids
    assert ids[0] == [encoder.vocab.lookup("good"), encoder.vocab.lookup("film"), encoder.vocab.lookup("good film")]
    assert len(ids[1]) == 2


def test_json_round_trip_and_corrupt_vocab() -> None:
    encoder = TextEncoder.fit(["one two three"], max_size=10, ngram_max=2, max_tokens=7)
    again = TextEncoder.from_json(encoder.to_json())
    assert again.vocab.tokens == encoder.vocab.tokens
    assert (again.ngram_max, again.max_tokens, again.lowercase) == (2, 7, True)
    with pytest.raises(CheckpointError, match=r"vocab.json: invalid vocabulary"):
        TextEncoder.from_json({"tokens": ["x"], "ngram_max": 1, "max_tokens": 5, "lowercase": True})


def test_subword_ids_are_stable_hashed_pieces_numbered_after_the_vocabulary() -> None:
    from mcdrop.core.text import subword_ids

    pieces = subword_ids("film", 100, 50)
    assert len(pieces) == 4 + 3 + 2  # "<film>": six characters, pieces of 3, 4 and 5
    assert all(50 <= i < 150 for i in pieces)
    assert subword_ids("film", 100, 50) == pieces  # CRC-32: the same in every process, unlike hash()
    assert len(set(subword_ids("unwatchable", 1 << 16, 0)) & set(subword_ids("watchable", 1 << 16, 0))) >= 8


def test_an_encoder_with_subwords_puts_them_after_their_word_and_round_trips() -> None:
    from mcdrop.core.text import subword_ids

    encoder = TextEncoder.fit(["a fine film", "a dull film"], max_size=50, ngram_max=2)
    plain = encoder.encode(["a fine flim"])
    with_subwords = TextEncoder(encoder.vocab, 2, encoder.max_tokens, subword_buckets=64)
    encoded = with_subwords.encode(["a fine flim"])
    words = [i for i in encoded.ids[0] if i < len(encoder.vocab)]
    assert words == plain.ids[0]  # the words in order, then the known bigrams, as without subwords
    offset = len(encoder.vocab)
    pieces = [list(subword_ids(t, 64, offset)) for t in ("a", "fine", "flim")]
    unigrams = plain.ids[0][:3]
    expected = [unigrams[0], *pieces[0], unigrams[1], *pieces[1], unigrams[2], *pieces[2], *plain.ids[0][3:]]
    assert encoded.ids[0] == expected  # each word's subwords right after it, so a sequence can regroup them
    assert max(encoded.ids[0]) < with_subwords.n_ids
    assert encoded.n_known_tokens == plain.n_known_tokens  # subwords never make a word known
    again = TextEncoder.from_json(with_subwords.to_json())
    assert again.subword_buckets == 64 and again.encode(["a fine flim"]).ids == encoded.ids
    assert "subword_buckets" not in encoder.to_json()  # vocabularies without subwords are written as before


def test_a_bad_subword_setting_is_named() -> None:
    encoder = TextEncoder.fit(["a film"], max_size=10)
    with pytest.raises(ConfigError, match="subword_buckets must be at least 0"):
        TextEncoder(encoder.vocab, subword_buckets=-1)
    with pytest.raises(CheckpointError, match="subword_buckets must be an integer"):
        TextEncoder.from_json(encoder.to_json() | {"subword_buckets": "many"})
