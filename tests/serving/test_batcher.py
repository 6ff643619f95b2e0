"""Batcher: merging by n_samples up to max_batch_rows, queue limit, deadlines, cancellation, drain on close."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from conftest import MakeCheckpoint, assert_predictions_close
from fake_engine import FakeEngine
from mcdrop.core.engine import Prediction, load_engine
from mcdrop.core.errors import Overloaded, ShuttingDown
from mcdrop.serving.batcher import Batcher
from mcdrop.serving.telemetry import Metrics
from mcdrop.serving.tickets import BatchPolicy, Result


async def submit_and_wait(
    batcher: Batcher, texts: Sequence[str], n_samples: int, seed: int | None, timeout_s: float
) -> Result:
    """What the predict route does: submit, then wait for the answer."""
    result = await batcher.wait(batcher.submit(texts, n_samples, seed, timeout_s), timeout_s)
    assert result is not None
    return result


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def _wait_until_engine_busy(engine: FakeEngine) -> None:
    for _ in range(500):
        if engine.entered.is_set():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the engine was never called")


async def _wait_until_queued(batcher: Batcher, n_texts: int) -> None:
    for _ in range(500):
        if batcher.queued_texts == n_texts:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"{batcher.queued_texts} texts queued, expected {n_texts}")


def test_concurrent_requests_with_equal_n_samples_share_one_engine_call(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_batch_rows=1000, max_wait_ms=0))
        batcher.start()
        blocker = asyncio.ensure_future(submit_and_wait(batcher, ["first"], 10, 0, 10))
        await _wait_until_engine_busy(engine)
        # queued while the engine is busy: three with n=10 merge, the n=20 one runs on its own
        tasks = [
            asyncio.ensure_future(submit_and_wait(batcher, ["a", "bb"], 10, 1, 10)),
            asyncio.ensure_future(submit_and_wait(batcher, ["ccc"], 20, 2, 10)),
            asyncio.ensure_future(submit_and_wait(batcher, ["dddd"], 10, 3, 10)),
            asyncio.ensure_future(submit_and_wait(batcher, ["e"], 10, 4, 10)),
        ]
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        results = await asyncio.gather(*tasks)
        assert [p["label"] for p in results[0].predictions] == ["a", "bb"]
        assert [p["entropy"] for p in results[0].predictions] == [2.0, 3.0]  # own texts and own seed
        assert [p["label"] for p in results[2].predictions] == ["dddd"]
        assert results[0].batch_requests == 3 and results[0].batch_texts == 4
        assert results[1].batch_requests == 1
        await batcher.close()

    asyncio.run(main())
    assert [(len(reqs), n) for reqs, n in engine.calls] == [(1, 10), (3, 10), (1, 20)]
    assert engine.calls[1][0] == [(["a", "bb"], 1), (["dddd"], 3), (["e"], 4)]


def test_merged_batch_stops_at_max_batch_rows(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_batch_rows=40, max_wait_ms=0))
        batcher.start()
        blocker = asyncio.ensure_future(submit_and_wait(batcher, ["x"], 10, 9, 10))
        await _wait_until_engine_busy(engine)
        tasks = [asyncio.ensure_future(submit_and_wait(batcher, ["t"] * 2, 10, i, 10)) for i in range(3)]
        await _wait_until_queued(batcher, 6)
        gate.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.close()

    asyncio.run(main())
    # two requests of 20 rows fill 40; the third waits for the following batch
    assert [[seed for _, seed in reqs] for reqs, _ in engine.calls] == [[9], [0, 1], [2]]


def test_without_batching_each_request_is_one_engine_call(executor: ThreadPoolExecutor) -> None:
    engine = FakeEngine()

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(batching=False))
        batcher.start()
        await asyncio.gather(*(submit_and_wait(batcher, ["t"], 5, i, 10) for i in range(5)))
        await batcher.close()

    asyncio.run(main())
    assert len(engine.calls) == 5 and all(len(reqs) == 1 for reqs, _ in engine.calls)


def test_max_wait_collects_requests_arriving_within_the_window(executor: ThreadPoolExecutor) -> None:
    engine = FakeEngine()

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=200))
        batcher.start()
        first = asyncio.ensure_future(submit_and_wait(batcher, ["a"], 5, 0, 10))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(submit_and_wait(batcher, ["b"], 5, 1, 10))
        await asyncio.gather(first, second)
        await batcher.close()

    asyncio.run(main())
    assert len(engine.calls) == 1 and len(engine.calls[0][0]) == 2


def test_full_queue_refuses_without_starting_anything(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    model_metrics = metrics.add_model("fake", version="1", architecture="mlp", dropout_placement="x", baseline={})

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(queue_limit=4, max_wait_ms=0), model_metrics)
        batcher.start()
        blocker = asyncio.ensure_future(submit_and_wait(batcher, ["x"], 5, 0, 10))
        await _wait_until_engine_busy(engine)
        queued = asyncio.ensure_future(submit_and_wait(batcher, ["a", "b", "c"], 5, 1, 10))
        await asyncio.sleep(0)
        assert batcher.queued_texts == 3
        assert metrics.registry.get_sample_value("mcdrop_queue_depth", {"model": "fake"}) == 3
        with pytest.raises(Overloaded, match=r"3 texts queued \(limit 4\)"):
            batcher.submit(["d", "e"], 5, 2, 10)
        batcher.submit(["d"], 5, 3, 10)  # exactly at the limit is fine
        gate.set()
        await asyncio.gather(blocker, queued)
        await batcher.close()

    asyncio.run(main())
    assert all(texts != ["d", "e"] for reqs, _ in engine.calls for texts, _ in reqs)


def test_queued_rows_are_limited_too(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(queue_limit=100, queue_limit_rows=50, max_wait_ms=0))
        batcher.start()
        blocker = asyncio.ensure_future(submit_and_wait(batcher, ["x"], 50, 0, 10))
        await _wait_until_engine_busy(engine)
        queued = asyncio.ensure_future(submit_and_wait(batcher, ["a", "b"], 20, 1, 10))
        await _wait_until_queued(batcher, 2)
        assert batcher.queued_rows == 40
        with pytest.raises(Overloaded, match=r"40 rows \(texts x samples\) queued \(limit 50\)"):
            batcher.submit(["c"], 20, 2, 10)  # one text, but 20 more rows
        batcher.submit(["d"], 10, 3, 10)  # exactly at the limit is fine
        gate.set()
        await asyncio.gather(blocker, queued)
        await batcher.close()
        assert batcher.queued_rows == 0

    asyncio.run(main())
    assert all(texts != ["c"] for reqs, _ in engine.calls for texts, _ in reqs)


def test_abandoned_and_expired_requests_are_skipped(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=0))
        batcher.start()
        blocker = asyncio.ensure_future(submit_and_wait(batcher, ["x"], 5, 0, 10))
        await _wait_until_engine_busy(engine)
        gone = batcher.submit(["client went away"], 5, 1, 10)
        with pytest.raises(TimeoutError):
            await submit_and_wait(batcher, ["too late"], 5, 2, 0.01)
        assert batcher.queued_texts == 1  # the expired request no longer counts against the queue limit
        kept = asyncio.ensure_future(submit_and_wait(batcher, ["kept"], 5, 3, 10))
        await asyncio.sleep(0)
        batcher.abandon(gone)
        assert batcher.queued_texts == 1
        gate.set()
        await asyncio.gather(blocker, kept)
        await batcher.close()

    asyncio.run(main())
    seen = [text for reqs, _ in engine.calls for texts, _ in reqs for text in texts]
    assert seen == ["x", "kept"]


def test_request_expiring_in_its_batch_window_does_not_stop_the_worker(executor: ThreadPoolExecutor) -> None:
    engine = FakeEngine()

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=50))
        batcher.start()
        batcher.submit(["x"], 10, 1, timeout_s=0.01)  # its deadline passes while its batch waits for partners
        await asyncio.sleep(0.1)
        assert batcher.running
        result = await submit_and_wait(batcher, ["y"], 10, 2, 5)
        assert [p["label"] for p in result.predictions] == ["y"]
        assert batcher.running
        await batcher.close()

    asyncio.run(main())
    assert engine.calls == [([(["y"], 2)], 10)]


def test_unexpected_error_fails_only_its_batch(executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture) -> None:
    class Forgetful(FakeEngine):
        """The first call answers one request too few: a bug the worker must survive."""

        def answer(self, requests: Sequence[tuple[Sequence[str], int]], n_samples: int) -> list[list[Prediction]]:
            results = super().answer(requests, n_samples)
            return results[:-1] if len(self.calls) == 1 else results

    async def main() -> None:
        batcher = Batcher(Forgetful(), executor, BatchPolicy())
        batcher.start()
        with pytest.raises(RuntimeError, match="answered 0 of 1 requests"):
            await submit_and_wait(batcher, ["a"], 5, 0, 5)
        assert batcher.running
        result = await submit_and_wait(batcher, ["b"], 5, 0, 5)
        assert [p["label"] for p in result.predictions] == ["b"]
        assert batcher.queued_texts == 0
        await batcher.close()

    with caplog.at_level(logging.ERROR, logger="mcdrop.serving.batcher"):
        asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == "mcdrop.serving.batcher"]
    assert record.getMessage() == "batch of model fake failed" and record.exc_info is not None


def test_close_finishes_queued_work_and_refuses_new(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=0, max_batch_rows=5))
        batcher.start()
        tasks = [asyncio.ensure_future(submit_and_wait(batcher, [str(i)], 5, i, 10)) for i in range(4)]
        await _wait_until_engine_busy(engine)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(ShuttingDown):
            batcher.submit(["late"], 5, 9, 10)
        gate.set()
        await closing
        results = await asyncio.gather(*tasks)
        assert [r.predictions[0]["label"] for r in results] == ["0", "1", "2", "3"]

    asyncio.run(main())


def test_engine_error_reaches_every_request_of_the_batch(executor: ThreadPoolExecutor) -> None:
    class Broken(FakeEngine):
        def answer(self, requests: Sequence[tuple[Sequence[str], int]], n_samples: int) -> list[list[Prediction]]:
            raise MemoryError("out of memory")

    async def main() -> None:
        batcher = Batcher(Broken(), executor, BatchPolicy())
        batcher.start()
        with pytest.raises(MemoryError):
            await submit_and_wait(batcher, ["a"], 5, 0, 10)
        # the worker survives
        with pytest.raises(MemoryError):
            await submit_and_wait(batcher, ["b"], 5, 0, 10)
        await batcher.close()

    asyncio.run(main())


def test_batch_metrics_are_recorded(executor: ThreadPoolExecutor) -> None:
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    baseline = {"mutual_information_threshold": 0.05}
    model_metrics = metrics.add_model("fake", version="1", architecture="mlp", dropout_placement="x", baseline=baseline)

    async def main() -> None:
        batcher = Batcher(FakeEngine(), executor, BatchPolicy(), model_metrics)
        batcher.start()
        await submit_and_wait(batcher, ["a", "b", "c"], 7, 0, 10)
        await batcher.close()

    asyncio.run(main())
    value = metrics.registry.get_sample_value
    assert value("mcdrop_batch_size_count", {"model": "fake"}) == 1
    assert value("mcdrop_batch_size_sum", {"model": "fake"}) == 3
    assert value("mcdrop_mc_samples_total", {"model": "fake"}) == 21
    assert value("mcdrop_samples_used_count", {"model": "fake"}) == 3
    assert value("mcdrop_samples_used_sum", {"model": "fake"}) == 21
    assert value("mcdrop_predictions_total", {"model": "fake"}) == 3
    assert value("mcdrop_high_uncertainty_total", {"model": "fake"}) == 3  # MI 0.1 > 0.05
    assert value("mcdrop_inference_duration_seconds_count", {"model": "fake"}) == 1


@pytest.mark.parametrize("architecture", ["mlp", "gru"])
def test_real_engine_answers_do_not_depend_on_batch_partners(
    make_checkpoint: MakeCheckpoint, executor: ThreadPoolExecutor, architecture: str
) -> None:
    path: Path = make_checkpoint(architecture)
    engine = load_engine(str(path), device="cpu")
    requests = [(["a wonderful film", "boring"], 11), (["the worst plot"], 12), ([""], 13), (["great fun"], 11)]
    alone = [engine.predict(texts, n_samples=16, seed=seed) for texts, seed in requests]

    async def main() -> list[list[dict[str, object]]]:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=50))
        batcher.start()
        results = await asyncio.gather(*(submit_and_wait(batcher, t, 16, s, 10) for t, s in requests))
        await batcher.close()
        assert results[0].batch_requests == len(requests)
        return [r.predictions for r in results]

    merged = asyncio.run(main())
    for got, expected in zip(merged, alone, strict=True):
        assert_predictions_close(got, expected)


def test_non_finite_predictions_are_refused(executor: ThreadPoolExecutor) -> None:
    class Broken(FakeEngine):
        def answer(self, requests: Sequence[tuple[Sequence[str], int]], n_samples: int) -> list[list[Prediction]]:
            [[prediction]] = super().answer(requests, n_samples)
            return [[dataclasses.replace(prediction, entropy=math.nan)]]

    async def main() -> None:
        batcher = Batcher(Broken(), executor, BatchPolicy())
        batcher.start()
        with pytest.raises(FloatingPointError, match="non-finite"):
            await submit_and_wait(batcher, ["a"], 5, 0, 10)
        await batcher.close()

    asyncio.run(main())


def test_unseeded_requests_share_the_batch_seed_and_reproduce_alone(
    make_checkpoint: MakeCheckpoint, executor: ThreadPoolExecutor
) -> None:
    engine = load_engine(str(make_checkpoint("mlp")), device="cpu")
    requests: list[tuple[list[str], int | None]] = [(["a wonderful film"], None), (["boring"], None), (["fun"], 5)]

    async def main() -> list[Any]:
        batcher = Batcher(engine, executor, BatchPolicy(max_wait_ms=50))
        batcher.start()
        results = await asyncio.gather(*(submit_and_wait(batcher, t, 12, s, 10) for t, s in requests))
        await batcher.close()
        return list(results)

    first, second, seeded = asyncio.run(main())
    assert first.batch_requests == 3
    assert first.seed == second.seed  # one set of masks for every unseeded request of the batch
    assert seeded.seed == 5
    for result, (texts, _) in zip((first, second, seeded), requests, strict=True):
        assert_predictions_close(result.predictions, engine.predict(texts, n_samples=12, seed=result.seed))


def test_requests_with_different_tolerances_share_one_engine_call(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    engine = FakeEngine(gate)

    async def main() -> None:
        batcher = Batcher(engine, executor, BatchPolicy())
        batcher.start()
        first = batcher.submit(["x"], 10, 0, 10)  # occupies the engine while the others queue
        await asyncio.to_thread(engine.entered.wait, 10)
        tickets = [batcher.submit([t], 10, 1, 10, mc_tolerance=tol) for t, tol in (("a", 0.0), ("b", 0.02))]
        gate.set()
        for ticket in (first, *tickets):
            assert await batcher.wait(ticket, 10) is not None
        await batcher.close()

    asyncio.run(main())
    assert [len(requests) for requests, _ in engine.calls] == [1, 2]
    assert engine.tolerances == [[0.0], [0.0, 0.02]]
