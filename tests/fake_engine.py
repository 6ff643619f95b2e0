"""A fake inference engine for the serving ``Batcher``: what it needs of :class:`mcdrop.core.engine.MCEngine`
(``name``, ``predict_many``), answering with made-up predictions and recording every call.

    engine = FakeEngine()                           # answers at once
    gate = threading.Event()
    engine = FakeEngine(gate, name="gated")         # each call waits for gate.set(), or stops at its deadline
    batcher = Batcher(engine, executor, policy)
    engine.calls, engine.tolerances, engine.deadlines  # one entry per call

A test changes the answers by overriding :meth:`FakeEngine.answer`. Importable as ``fake_engine`` from every test
folder: pytest puts ``tests/`` (where ``conftest.py`` is) on ``sys.path``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

from mcdrop.core.cost import Deadline, check_deadline
from mcdrop.core.engine import Prediction
from mcdrop.core.errors import DeadlineExceeded

# A held call fails after this long, so a test that never releases its engine ends instead of hanging.
HOLD_LIMIT_S = 10.0
# Like the engine between passes: a held call looks at its deadline this often.
POLL_S = 0.005


def fake_prediction(text: str, seed: int = 0, n_samples: int = 1) -> Prediction:
    """A prediction labelled ``text`` whose entropy is ``len(text) + seed`` and mutual information 0.1."""
    return Prediction(
        label=text,
        probs={"a": 0.5, "b": 0.5},
        variance={"a": 0.0, "b": 0.0},
        entropy=float(len(text) + seed),
        expected_entropy=0.0,
        mutual_information=0.1,
        variation_ratio=0.0,
        std_error={"a": 0.0, "b": 0.0},
        oov_fraction=0.0,
        n_tokens=1,
        n_known_tokens=1,
        n_samples_used=n_samples,
    )


class FakeEngine:
    """Records each call; with a ``gate``, holds every call until it is set.

    ``calls``: each call's requests (texts, seed) and ``n_samples``; ``tolerances``: its ``mc_tolerances``;
    ``deadlines``: what its deadline read when it began (nan: none). ``entered`` is set when a call begins. A held
    call whose deadline passes raises :class:`~mcdrop.core.errors.DeadlineExceeded` and sets ``stopped``; one held
    past :data:`HOLD_LIMIT_S` fails.
    """

    def __init__(self, gate: threading.Event | None = None, *, name: str = "fake") -> None:
        self.gate = gate
        self._name = name
        self.calls: list[tuple[list[tuple[list[str], int]], int]] = []
        self.tolerances: list[list[float]] = []
        self.deadlines: list[float] = []
        self.entered = threading.Event()
        self.stopped = threading.Event()

    @property
    def name(self) -> str:
        return self._name

    def predict_many(
        self,
        requests: Sequence[tuple[Sequence[str], int]],
        n_samples: int,
        policies: Sequence[object] | None = None,
        mc_tolerances: Sequence[float] | None = None,
        deadline: Deadline = None,
    ) -> list[list[Prediction]]:
        self.calls.append(([(list(texts), seed) for texts, seed in requests], n_samples))
        self.tolerances.append(list(mc_tolerances or []))
        self.deadlines.append(deadline() if callable(deadline) else math.nan if deadline is None else deadline)
        self.entered.set()
        if self.gate is not None:
            self._hold(deadline, sum(len(texts) for texts, _ in requests))
        return self.answer(requests, n_samples)

    def answer(self, requests: Sequence[tuple[Sequence[str], int]], n_samples: int) -> list[list[Prediction]]:
        """The predictions of one call: :func:`fake_prediction` of each text with its request's seed."""
        return [[fake_prediction(text, seed, n_samples) for text in texts] for texts, seed in requests]

    def _hold(self, deadline: Deadline, n_texts: int) -> None:
        assert self.gate is not None
        started = time.perf_counter()
        while not self.gate.wait(POLL_S):
            try:
                check_deadline(deadline, self.name, 0, n_texts)
            except DeadlineExceeded:
                self.stopped.set()
                raise
            assert time.perf_counter() - started < HOLD_LIMIT_S, f"the gate of {self.name} was never set"
