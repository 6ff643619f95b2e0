"""The engine's side of costly requests: what a request costs (one unit for every architecture) and a deadline
checked between tail passes, so a request nobody waits for stops instead of holding its worker for a minute."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import MakeCheckpoint
from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.core.errors import DeadlineExceeded
from mcdrop.core.text import tokenize

SLOW_GRU = {"hidden_dim": 64, "embed_dim": 64}  # a few µs per cost unit on one CPU thread
LONG_TEXT = "a wonderful moving film with great acting and a boring script the worst film of the year " * 2


def engine_at(path: Path, max_batch_rows: int = 4096) -> MCEngine:
    return load_engine(str(path), device="cpu", max_batch_rows=max_batch_rows)


def test_count_tokens_is_the_truncated_token_count(make_checkpoint: MakeCheckpoint) -> None:
    encoder = engine_at(make_checkpoint("gru")).encoder  # max_tokens 32
    texts = ["", "one two three", LONG_TEXT, "word " * 10_000]
    assert encoder.count_tokens(texts) == [len(tokenize(t)[:32]) for t in texts] == [0, 3, 32, 32]
    assert encoder.count_tokens(texts) == encoder.encode(texts).n_tokens


def test_counting_against_a_limit_stops_once_over_it(make_checkpoint: MakeCheckpoint) -> None:
    gru, mlp = engine_at(make_checkpoint("gru")), engine_at(make_checkpoint("mlp", name="tiny-mlp"))
    texts = ["word " * 10_000] * 64  # 32 tokens each after truncation
    assert gru.costed(texts, 1000) == (64 * 32 * 1000, "1000 samples x 2048 tokens read", True)
    # over 1,000,000 units after 32 texts (1,024 tokens at 1,000 samples): the other 32 are never scanned
    assert gru.costed(texts, 1000, limit=1_000_000) == (
        1_024_000,
        "1000 samples x 1024 tokens read in the first 32 of 64 texts",
        False,
    )
    assert gru.costed(texts, 1000, limit=2_048_000) == gru.costed(texts, 1000)  # at the limit: all counted
    mixed = ["", "one two three", LONG_TEXT] * 5
    for limit in (0, 1, 100, 500, 10**6):  # under or at the limit, the count is complete and exact
        units, _, complete = gru.costed(mixed, 7, limit=limit)
        assert (units <= limit) == complete and (not complete or units == gru.cost(mixed, 7))
    assert mlp.costed(texts, 1000, limit=10) == (64_000, "1000 samples x 64 texts", True)  # no tokens to count


def test_cost_is_rows_times_tokens_with_a_stochastic_recurrence(make_checkpoint: MakeCheckpoint) -> None:
    engine = engine_at(make_checkpoint("gru"))
    assert engine.model.stochastic_recurrence
    assert engine.cost(["one two three"], 10) == 10 * 3
    assert engine.cost(["", "one two three", LONG_TEXT], 7) == 7 * (1 + 3 + 32)  # an empty text takes one step
    assert engine.cost(["word " * 10_000] * 64, 1000) == 64 * 1000 * 32  # truncation caps what a text costs


@pytest.mark.parametrize("architecture", ["mlp", "gru-after"])
def test_cost_is_rows_without_a_stochastic_recurrence(make_checkpoint: MakeCheckpoint, architecture: str) -> None:
    if architecture == "mlp":
        path = make_checkpoint("mlp")
    else:  # dropout only after the recurrence: the GRU runs once per text, in the prefix
        path = make_checkpoint("gru", name="after", input_dropout_p=0.0)
    engine = engine_at(path)
    assert not engine.model.stochastic_recurrence
    assert engine.cost(["", "one two three", LONG_TEXT], 7) == 7 * 3
    assert engine.cost(["word " * 10_000] * 64, 1000) == 64 * 1000


def test_a_deadline_in_the_future_changes_nothing(make_checkpoint: MakeCheckpoint) -> None:
    engine = engine_at(make_checkpoint("gru"), max_batch_rows=64)
    texts = [LONG_TEXT, "a film", ""]
    far = time.perf_counter() + 600
    assert engine.predict_many([(texts, 3)], 50, deadline=far) == engine.predict_many([(texts, 3)], 50)
    assert engine.predict_many([(texts, 3)], 50, deadline=lambda: far) == engine.predict_many([(texts, 3)], 50)


def test_a_passed_deadline_stops_before_any_work(make_checkpoint: MakeCheckpoint) -> None:
    engine = engine_at(make_checkpoint("mlp"))
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded: model tiny-mlp stopped after 0 of 2 texts"):
        engine.predict_many([(["a", "b"], 1)], 10, deadline=time.perf_counter() - 1)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """As on a served model's inference thread: two threads on a loaded 2-core machine make pass times erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_costly_call_stops_at_its_deadline(make_checkpoint: MakeCheckpoint) -> None:
    """64 long texts x 1000 samples: about 2M cost units, several seconds on a CPU; stopped 0.3 s in."""
    engine = engine_at(make_checkpoint("gru", name="slow-gru", **SLOW_GRU))
    texts = [LONG_TEXT] * 64
    started = time.perf_counter()
    engine.predict_many([(texts[:2], 0)], 100)  # the speed of this machine, now: 6400 units
    per_unit = (time.perf_counter() - started) / engine.cost(texts[:2], 100)
    full_s = per_unit * engine.cost(texts, 1000)
    assert full_s > 3.0, f"the request would take only {full_s:.1f}s here; the test needs a slower one"
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match=r"stopped after \d+ of 64 texts"):
        engine.predict_many([(texts, 0)], 1000, deadline=started + 0.3)
    stopped_after = time.perf_counter() - started
    # one pass (256 rows) may still finish after the deadline; the whole call would take full_s
    assert stopped_after < 0.3 + max(1.0, full_s / 5), f"stopped {stopped_after:.2f}s in, of about {full_s:.1f}s"


@pytest.mark.usefixtures("one_torch_thread")
def test_a_deadline_that_moves_is_read_before_every_pass(make_checkpoint: MakeCheckpoint) -> None:
    """The batcher's deadline is the latest of the clients still waiting: when the last one leaves, it drops.
    (On one torch thread the chunks run one after another, so the reads are counted in order.)"""
    engine = engine_at(make_checkpoint("gru", name="slow-gru", **SLOW_GRU), max_batch_rows=256)
    reads = 0

    def deadline() -> float:
        nonlocal reads
        reads += 1
        return math.inf if reads < 3 else -math.inf  # the client leaves after two passes

    with pytest.raises(DeadlineExceeded, match=r"stopped after [01] of 8 texts"):
        engine.predict_many([([LONG_TEXT] * 8, 0)], 1000, deadline=deadline)
    assert reads == 3


def test_the_service_answers_a_stopped_call_with_504() -> None:
    from mcdrop.core.errors import ModelUnavailable
    from mcdrop.serving.errors import status_of

    assert status_of(DeadlineExceeded("deadline exceeded")) == 504
    assert status_of(ModelUnavailable("model x failed to load")) == 503
