"""One model's queue: admission by texts, rows and cost, and which queued requests form the next batch.

:class:`~mcdrop.serving.batcher.Batcher` owns one and runs its worker on it; nothing else touches it. Three limits
(:class:`~mcdrop.serving.tickets.BatchPolicy`) refuse a request before anything is queued:

* ``queue_limit``: texts waiting;
* ``queue_limit_rows``: rows (texts x samples) waiting;
* ``queue_limit_cost``: cost units (:mod:`mcdrop.core.cost`) waiting *or running*: what the engine has yet to pay
  before it reaches a new request, so it bounds that request's wait whatever the texts' lengths.

    queue = TicketQueue("rt-gru", policy)
    queue.admit(n_texts=8, rows=800, cost=25_600)   # raises Overloaded
    queue.push(ticket)
    batch = queue.take(queue.live_head(now), now)   # FIFO among requests with the first one's n_samples
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from mcdrop.core.errors import Overloaded
from mcdrop.serving.tickets import BatchPolicy, Ticket


class TicketQueue:
    """The tickets waiting for one model's engine, and what they (and the batch running) add up to."""

    def __init__(self, name: str, policy: BatchPolicy, on_depth: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.policy = policy
        self.pending: deque[Ticket] = deque()
        self.texts = 0
        self.rows = 0
        self.cost = 0
        self.running_cost = 0  # the batch in the engine, set by the batcher around each call
        self._on_depth = on_depth

    def __len__(self) -> int:
        return len(self.pending)

    def admit(self, n_texts: int, rows: int, cost: int) -> None:
        """Raise :class:`Overloaded` when a request of this size would break a limit; nothing is queued."""
        policy = self.policy
        if self.texts + n_texts > policy.queue_limit:
            raise Overloaded(
                f"model {self.name} is overloaded: {self.texts} texts queued (limit {policy.queue_limit}); retry later"
            )
        if self.rows + rows > policy.queue_limit_rows:
            raise Overloaded(
                f"model {self.name} is overloaded: {self.rows} rows (texts x samples) queued "
                f"(limit {policy.queue_limit_rows}); retry later or with fewer samples"
            )
        ahead = self.cost + self.running_cost
        if policy.queue_limit_cost and ahead + cost > policy.queue_limit_cost:
            raise Overloaded(
                f"model {self.name} is overloaded: {ahead} cost units queued or running (limit "
                f"{policy.queue_limit_cost}, this request {cost}); retry later or with fewer texts or samples"
            )

    def push(self, ticket: Ticket) -> None:
        self.pending.append(ticket)
        self.texts += len(ticket.texts)
        self.rows += ticket.rows
        self.cost += ticket.cost
        self._depth()

    def release(self, ticket: Ticket) -> None:
        """Stop counting ``ticket`` against the limits (taken for a batch, given up, expired or failed)."""
        if not ticket.released:
            ticket.released = True
            self.texts -= len(ticket.texts)
            self.rows -= ticket.rows
            self.cost -= ticket.cost
            self._depth()

    def _depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.texts)

    def live_head(self, now: float) -> Ticket | None:
        """Drop abandoned or expired requests from the front; return the oldest live one."""
        pending = self.pending
        while pending:
            head = pending[0]
            if head.future.done() or now >= head.deadline:
                pending.popleft()
                self.release(head)
                continue
            return head
        return None

    def rows_waiting(self, n_samples: int) -> int:
        return sum(t.rows for t in self.pending if t.n_samples == n_samples and not t.future.done())

    def take(self, first: Ticket, now: float) -> list[Ticket]:
        """Remove and return ``first`` plus the queued live requests with its ``n_samples`` that fit in a batch."""
        if not self.policy.batching:
            self.pending.popleft()
            self.release(first)
            return [first]
        batch: list[Ticket] = []
        keep: deque[Ticket] = deque()
        rows = 0
        full = False
        for ticket in self.pending:
            if ticket.future.done() or now >= ticket.deadline:
                self.release(ticket)
            elif full or ticket.n_samples != first.n_samples:
                keep.append(ticket)
            elif not batch or rows + ticket.rows <= self.policy.max_batch_rows:
                batch.append(ticket)
                rows += ticket.rows
                self.release(ticket)
            else:
                full = True  # keep FIFO order among equal n_samples: later ones wait for the next batch
                keep.append(ticket)
        self.pending = keep
        return batch

    def remove(self, tickets: Iterable[Ticket]) -> None:
        """Take ``tickets`` out of the queue (they are answered elsewhere)."""
        gone = {id(t) for t in tickets}
        for ticket in self.pending:
            if id(ticket) in gone:
                self.release(ticket)
        self.pending = deque(t for t in self.pending if id(t) not in gone)
