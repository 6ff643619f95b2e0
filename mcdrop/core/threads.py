"""How the engine uses the CPU's threads: one intra-op thread per chunk of inputs, chunks spread over threads.

torch splits an op over its intra-op threads, which then wait for each other at its end. The engine's ops are
many and small (a few thousand numbers each), so those waits dominate, and on a machine whose other cores are
busy each wait can last a scheduler slice: a softmax over a (30, 1, 2) tensor took 7-11 ms on two threads while
another process held the second core, 0.02 ms on one. So on the CPU every chunk of an engine call runs on one
intra-op thread, and when the caller allows several torch threads the chunks run side by side, one per thread,
with no wait between ops (torch releases the GIL inside each op).

    runner = ChunkRunner()
    results = runner.map(predict_chunk, chunks, parallel=model.thread_safe_tail)  # in chunk order

A call that is a single chunk (one text, say) leaves the caller's other threads idle; ``spare_threads()`` tells
code running inside it how many it may use, and ``side_by_side`` runs independent passes on them (an ensemble's
members, each over its own samples), or ``intra_op_threads`` gives them to one op big enough that splitting it pays
for the wait at its end (a matmul of a millisecond or more, never a pass's many small ops).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

S = TypeVar("S")
T = TypeVar("T")

_local = threading.local()  # .spare: threads a single chunk on this thread may use (1 unless set by map)


class WorkerPool:
    """Worker threads of one intra-op thread each, as many as the last caller asked for. Jobs are handed over
    under the pool's lock: a caller asking for another size replaces the pool, and the old one still finishes
    what it was given, so no caller ever finds its pool shut down under it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None  # made on the first call
        self._size = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable[[S], T], items: Sequence[S], threads: int) -> list[T]:
        """``fn`` over ``items`` on ``threads`` workers, results in order."""
        with self._lock:
            if self._pool is None or self._size != threads:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)  # running and queued jobs finish
                self._pool = ThreadPoolExecutor(
                    threads, thread_name_prefix=self._name, initializer=torch.set_num_threads, initargs=(1,)
                )
                self._size = threads
            futures = [self._pool.submit(fn, item) for item in items]
        return [future.result() for future in futures]


_side = WorkerPool("mcdrop-side")


def spare_threads() -> int:
    """How many threads the code running now may use side by side (1: only its own)."""
    return int(getattr(_local, "spare", 1))


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """The ops inside run on ``threads`` intra-op threads (this thread's setting), then the old count is back."""
    before = torch.get_num_threads()
    if threads < 1 or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def side_by_side(fns: Sequence[Callable[[], T]], threads: int) -> list[T]:
    """Every ``fn()``, on ``threads`` worker threads of one intra-op thread each, in order."""
    return _side.run(_call, fns, threads)


def _call(fn: Callable[[], T]) -> T:
    return fn()


class ChunkRunner:
    """Maps a function over chunks with one intra-op thread each, on up to the caller's torch thread count."""

    def __init__(self) -> None:
        self._workers = WorkerPool("mcdrop-chunk")

    def map(self, fn: Callable[[list[int]], T], chunks: list[list[int]], parallel: bool = True) -> list[T]:
        """``fn`` over ``chunks``, in order; ``parallel=False`` runs them one after another on this thread."""
        threads = torch.get_num_threads()
        if threads == 1 or not parallel:
            return [fn(chunk) for chunk in chunks]
        with intra_op_threads(1):  # per calling thread, like the workers' own setting
            if len(chunks) == 1:
                _local.spare = threads
                try:
                    return [fn(chunks[0])]
                finally:
                    _local.spare = 1
            return self._workers.run(fn, chunks, threads)
