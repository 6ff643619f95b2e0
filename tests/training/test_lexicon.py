"""The valence lexicon read from the installed package, the prior table, and the extended vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcdrop.core.text import TextEncoder, Vocabulary
from mcdrop.training.lexicon import (
    PRIOR_FEATURES,
    extend_vocabulary,
    is_negator,
    lexicon_path,
    load_valence,
    prior_table,
)


def test_the_shipped_lexicon_rates_everyday_sentiment_words() -> None:
    valence = load_valence()
    assert len(valence) > 5000
    assert valence["delicious"] > 1.5 and valence["rude"] < -1.5 and valence["good"] > 0 > valence["bad"]
    assert all(" " not in word for word in valence)  # one token each: emoticons and phrases are left out
    assert lexicon_path().name == "vader_lexicon.txt"


def test_only_entries_that_are_one_token_are_read(tmp_path: Path) -> None:
    path = tmp_path / "lexicon.txt"
    path.write_text(":)\t2.0\t0.5\t[]\nGreat\t3.1\t0.5\t[]\nno good\t-1\t0\t[]\nodd\tx\t0\t[]\nshort\n", "utf-8")
    assert load_valence(path) == {"great": 3.1}


def test_prior_table_rows() -> None:
    vocab = Vocabulary(["<pad>", "<unk>", "great", "awful", "not", "didn't", "very", "film", "not great"])
    table = prior_table(vocab, {"great": 3.2, "awful": -2.0})
    assert table.shape == (len(vocab), len(PRIOR_FEATURES))
    torch.testing.assert_close(table[2], torch.tensor([0.8, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(table[3], torch.tensor([0.0, 0.5, 0.0, 0.0]))
    assert table[4, 2] == table[5, 2] == 1.0 and table[6, 3] == 1.0
    assert not table[[0, 1, 7, 8]].any()  # padding, unknown, neutral words and n-grams carry nothing
    assert is_negator("wouldn't") and not is_negator("nothingness")


def test_extending_keeps_every_id_and_appends_the_new_words() -> None:
    encoder = TextEncoder.fit(["a great film", "a dull film"], max_size=50)
    extended, before = extend_vocabulary(encoder, ["great", "delicious", "rude"])
    assert before == len(encoder.vocab)
    assert extended.vocab.tokens[:before] == encoder.vocab.tokens
    assert extended.vocab.tokens[before:] == ["delicious", "rude"]
    assert extended.encode(["delicious film"]).n_known_tokens == [2]


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from mcdrop.core.errors import DatasetError

    def absent(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(DatasetError, match=r"pip install 'vaderSentiment==3.3.2'"):
        lexicon_path()
