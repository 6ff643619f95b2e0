"""Texts unlike the training data, built locally to test novelty detection: other languages and word salad.

* ``language_shifted``: sentences from the localized word lists that the ``Faker`` package ships (German, French,
  Spanish, Italian, Dutch, Polish); nothing is downloaded.
* ``word_salad``: random words of the in-domain texts' vocabulary (each distinct word equally likely), with the
  texts' own lengths: every word is English and in domain, but the text is not;
* ``shuffled_text``: each in-domain text with its words in random order: the same words, as often, only the order
  is wrong; the hardest of the three, and what a bag of words cannot see at all.

Both are seeded, so evaluation reports are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mcdrop.core.text import tokenize

LOCALES = ("de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL")


def language_shifted(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of 6-24 words, cycling through ``LOCALES``."""
    from faker import Faker  # the train extra; imported here so the rest of training works without it

    rng = random.Random(seed)
    fakers = []
    for index, locale in enumerate(LOCALES):
        faker = Faker(locale)
        faker.seed_instance(seed + index)
        fakers.append(faker)
    return [fakers[i % len(fakers)].sentence(nb_words=rng.randint(6, 24)) for i in range(n)]


def word_salad(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` texts of random words of ``texts``' vocabulary, each as long as a randomly chosen one of them."""
    rng = random.Random(seed)
    token_lists = [tokenize(t) for t in texts]
    words = sorted({w for tokens in token_lists for w in tokens})
    lengths = [len(tokens) for tokens in token_lists if tokens]
    if not words:
        return []
    return [" ".join(rng.choices(words, k=rng.choice(lengths))) for _ in range(n)]


def shuffled_text(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """The first ``n`` of ``texts`` with at least two distinct words, each with its words shuffled."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        tokens = tokenize(text)
        if len(set(tokens)) > 1:
            out.append(" ".join(rng.sample(tokens, len(tokens))))
        if len(out) == n:
            break
    return out
