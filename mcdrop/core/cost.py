"""What a request costs the engine, in one unit for every architecture, and the deadline checked between passes.

A cost unit is one Monte Carlo sample of one text through one step of the model's stochastic tail. What a step is
depends on where the dropout sits (``MCModel.stochastic_recurrence``):

* with a stochastic recurrence (a GRU with dropout before or inside it), every sample re-runs the recurrence over
  the whole text, so a text costs one unit per sample and per token the model reads (after the encoder's
  truncation to ``max_tokens``; an empty text still takes one step);
* without one (the bag-of-words MLP, a GRU with dropout only after it), the sampled head sees one row per sample
  whatever the text's length, so a text costs one unit per sample.

    cost = n_samples × Σ_texts steps(text),  steps = max(1, tokens) with a stochastic recurrence, else 1

The deterministic prefix (run once per text) is left out: it costs at most ``max_tokens`` steps per text, next
to ``n_samples`` times that for the tail. On the shipped models one unit takes a few microseconds on one CPU
thread either way (about 4-9 µs for a GRU token step, 1-2 µs for an MLP row, see docs/engine.md), so one limit in
this unit bounds the time of a request to either.

    units = request_cost(model, encoder, ["a long review ..."], n_samples=100)
    check_deadline(time.perf_counter() + 30, "rt-gru", done=0, total=1)   # raises DeadlineExceeded once past it
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from mcdrop.core.contract import MCModel
from mcdrop.core.errors import DeadlineExceeded
from mcdrop.core.text import TextEncoder

# A time.perf_counter() value, or a function giving the current one (it may move: every waiting client gone,
# a shutdown); None: no deadline.
Deadline = float | Callable[[], float] | None


class CostTerms(NamedTuple):
    """A request's cost, how it adds up (``1000 samples x 16384 tokens read``), and whether every text was counted
    (counting may stop once over a limit: ``units`` is then a lower bound)."""

    units: int
    terms: str
    complete: bool = True


def text_steps(model: MCModel, encoder: TextEncoder, texts: Sequence[str]) -> int:
    """Stochastic-tail steps of one sample of ``texts`` (see the module docstring)."""
    return bounded_steps(model, encoder, texts)[0]


def bounded_steps(
    model: MCModel, encoder: TextEncoder, texts: Sequence[str], cap: int | None = None
) -> tuple[int, int]:
    """``text_steps``, counted text by text only until the sum exceeds ``cap`` (if any): (steps so far, texts
    counted).

    A request over the cost limit is known to be over it after its first few long texts; counting the rest would
    spend the event loop's time on a request that is refused anyway (64 texts of 10,000 characters: 3.6 ms).
    """
    if not model.stochastic_recurrence:
        return len(texts), len(texts)
    steps = 0
    for counted, text in enumerate(texts, 1):
        steps += max(1, encoder.count_text_tokens(text))
        if cap is not None and steps > cap:
            return steps, counted
    return steps, len(texts)


def request_cost(model: MCModel, encoder: TextEncoder, texts: Sequence[str], n_samples: int) -> int:
    """What ``n_samples`` samples of ``texts`` cost, in cost units."""
    return n_samples * text_steps(model, encoder, texts)


def explain_cost(model: MCModel, n_texts: int, steps: int, n_samples: int, counted: int | None = None) -> str:
    """How a cost adds up, for a refusal: ``1000 samples x 16384 tokens read`` or ``1000 samples x 64 texts``;
    with ``counted`` texts of ``n_texts`` counted, ``1000 samples x 1024 tokens read in the first 4 of 64 texts``."""
    if model.stochastic_recurrence:
        where = f" in the first {counted} of {n_texts} texts" if counted is not None and counted < n_texts else ""
        return f"{n_samples} samples x {steps} tokens read{where}"
    return f"{n_samples} samples x {n_texts} texts"


def cost_terms(
    model: MCModel, encoder: TextEncoder, texts: Sequence[str], n_samples: int, limit: int | None = None
) -> CostTerms:
    """The cost of ``n_samples`` samples of ``texts`` and how it adds up (for a refusal). With ``limit``, counting
    stops once the cost is over it: the units are then more than ``limit``, and not all counted."""
    steps, counted = bounded_steps(model, encoder, texts, None if limit is None else limit // max(1, n_samples))
    terms = explain_cost(model, len(texts), steps, n_samples, counted)
    return CostTerms(n_samples * steps, terms, complete=counted == len(texts))


def check_deadline(deadline: Deadline, model_name: str, done: int, total: int) -> None:
    """Raise :class:`DeadlineExceeded` when ``deadline`` has passed; ``done`` of ``total`` texts are finished."""
    if deadline is None:
        return
    limit = deadline() if callable(deadline) else deadline
    if time.perf_counter() >= limit:
        raise DeadlineExceeded(
            f"deadline exceeded: model {model_name} stopped after {done} of {total} texts; nobody waits for the rest"
        )
