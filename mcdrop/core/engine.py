"""The Monte Carlo engine: N stochastic forward passes over a batch of texts, as few large passes as possible.

How the cost stays low (see ``docs/engine.md``):

* the model's deterministic prefix runs once per input; only the stochastic tail sees ``S × B`` rows,
* the samples of many inputs go through one batched tail pass, chunked to ``max_batch_rows`` rows,
* masks are drawn per sample (shared by the inputs of a request), not per row, which also makes each
  request's answer depend only on its own texts, seed and ``n_samples``,
* inputs are sorted by length so sequence batches carry little padding,
* with ``mc_tolerance`` > 0, samples come in rounds and each input stops once its estimate has settled
  (:mod:`mcdrop.core.adaptive`),
* on the CPU each chunk runs on one intra-op thread, chunks side by side (:mod:`mcdrop.core.threads`).

What a request will cost is known before it runs (``engine.cost``, in the units of :mod:`mcdrop.core.cost`), and
a call given a ``deadline`` checks it before every tail pass and stops with ``DeadlineExceeded`` once it has passed,
so work nobody waits for any more does not hold the engine.

Usage::

    engine = load_engine("models/rt-mlp")
    [prediction] = engine.predict(["a quietly devastating film"], n_samples=50, seed=1)
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor

from mcdrop.core.adaptive import Tail, run_rounds, select_rows
from mcdrop.core.checkpoint import Checkpoint, load_checkpoint
from mcdrop.core.cost import CostTerms, Deadline, check_deadline, cost_terms, request_cost
from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.dropout import MaskSampler
from mcdrop.core.errors import ConfigError, McdropError, OutOfMemory
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.novelty_scoring import EncoderScorer
from mcdrop.core.prediction import Prediction as Prediction  # where callers have always found it
from mcdrop.core.prediction import build_predictions, decide, verdicts
from mcdrop.core.text import EncodedTexts, Vocabulary
from mcdrop.core.threads import ChunkRunner
from mcdrop.core.uncertainty import ArraySummary, summary_arrays

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
# Largest tail pass through a recurrence on the CPU, in rows. Measured on the shipped GRU (N=100, 32 texts, one
# thread): passes of 800-1600 rows cost as much per row as single texts, 3200-row passes twice as much (the
# recurrence's working set leaves the cache). GPUs keep passes as large as max_batch_rows allows.
CPU_RECURRENT_PASS_ROWS = 256
# Below this many rows (inputs x samples) a batch runs as one chunk on one thread: handing chunks to other threads
# costs more than it saves. Only recurrent tails run chunks side by side: a head's chunks are a few small ops and
# their statistics, which hold the GIL (measured: two chunks of 16 texts on two threads took 1.2x one chunk).
PARALLEL_MIN_ROWS = 2048
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_POLICY = DecisionPolicy()
T = TypeVar("T")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without it is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available: use device 'cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N] (got {device!r})")
    return torch.device(device)


def random_seed() -> int:
    return secrets.randbelow(2**31)


class MCEngine:
    """Runs Monte Carlo dropout inference for one checkpoint.

    Args:
        checkpoint: a loaded checkpoint (see :func:`mcdrop.core.checkpoint.load_checkpoint`).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        max_batch_rows: memory budget of one tail pass, in rows (inputs × samples).
        dtype: ``float32``; on CUDA also ``bfloat16`` or ``float16`` (autocast; statistics stay in float64).
    """

    def __init__(
        self, checkpoint: Checkpoint, device: str = "auto", max_batch_rows: int = 4096, dtype: str = "float32"
    ) -> None:
        if not checkpoint.model.mc_active:
            raise McdropError(
                f"model {checkpoint.name!r} has no active dropout (every p is 0): MC sampling would report zero "
                "uncertainty; train it with dropout_p > 0"
            )
        if max_batch_rows < 1:
            raise ConfigError(f"max_batch_rows must be at least 1 (got {max_batch_rows})")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        self.device = resolve_device(device)
        if dtype != "float32" and self.device.type != "cuda":
            raise ConfigError(f"dtype {dtype} needs a CUDA device; use float32 on the CPU")
        self.checkpoint = checkpoint
        self.model = checkpoint.model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.encoder = checkpoint.encoder
        self.max_batch_rows = max_batch_rows
        # Rows per tail pass: the memory budget, and on the CPU a cache-friendly size for a recurrent tail.
        self.pass_rows = max_batch_rows
        if self.device.type == "cpu" and self.model.stochastic_recurrence:
            self.pass_rows = min(max_batch_rows, CPU_RECURRENT_PASS_ROWS)
        self.dtype = DTYPES[dtype]
        self.temperature = checkpoint.temperature
        self.calibration = checkpoint.calibration
        self.novelty_model = checkpoint.novelty_model
        # the novelty model's scorer of encoder ids, and the novelty model it was built for (now, not on a request)
        self._novelty_table: tuple[NgramLanguageModel | None, EncoderScorer | None] = (None, None)
        if self.novelty_model is not None:
            self._novelty_scorer()
        self._runner = ChunkRunner()  # chunks on one intra-op thread each, side by side (mcdrop.core.threads)
        self._parallel = self.model.stochastic_recurrence and self.model.thread_safe_tail

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def labels(self) -> list[str]:
        return self.checkpoint.labels

    @property
    def default_n_samples(self) -> int:
        return self.checkpoint.default_n_samples

    @property
    def default_mc_tolerance(self) -> float:
        return self.checkpoint.mc_tolerance

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint.config

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _probs(self, logits: Tensor) -> Tensor:
        if logits.dtype != torch.float32:
            logits = logits.float()
        return torch.softmax(logits / self.temperature, dim=-1)

    def _chunks(self, encoded: EncodedTexts, rows_per_input: int, parts: int = 1) -> list[list[int]]:
        """Input indices in token-count order (a sequence pads to its longest text; subword ids do not lengthen
        it), in chunks of at most ``pass_rows // rows_per_input`` inputs (and at least ``parts`` chunks when there
        are enough inputs, one per thread)."""
        order = sorted(range(len(encoded)), key=encoded.n_tokens.__getitem__)
        size = max(1, min(self.pass_rows // max(1, rows_per_input), math.ceil(len(order) / parts)))
        return [order[start : start + size] for start in range(0, len(order), size)]

    def _sampler(self, n_samples: int, seeds: list[int]) -> MaskSampler:
        """One seed group per distinct seed (under autocast, fp32 masks would promote activations to fp32)."""
        if all(seed == seeds[0] for seed in seeds):  # the usual case: no unique() and no group index
            return MaskSampler(n_samples, seeds[:1], device=self.device, dtype=self.dtype)
        unique, groups = torch.unique(torch.tensor(seeds), return_inverse=True)
        return MaskSampler(n_samples, unique.tolist(), groups, device=self.device, dtype=self.dtype)

    def _tail(self, state: Any, sampler: MaskSampler, job: _Job) -> Tail:
        """The stochastic tail for a sample range over some rows of ``state``, as CPU probabilities; the job's
        deadline is checked before every pass."""
        selected: list[Any] = [None, None]  # (rows, their state): one selection per round, however many passes
        on_cpu = self.device.type == "cpu"
        checked = [True]  # the first pass follows the check made before the prefix

        def tail(rows: Tensor | None, samples: slice) -> Tensor:
            if checked[0]:
                checked[0] = False
            else:
                self._check_deadline(job)
            part = state
            if rows is not None:
                if selected[0] is not rows:
                    selected[:] = [rows, select_rows(state, rows)]
                part = selected[1]
            sampler.restrict(rows)
            sampler.start_pass(samples)
            probs = self._probs(self.model.stochastic_tail(part, sampler))
            return probs if on_cpu else probs.cpu()

        return tail

    def _sample(self, job: _Job, index: list[int]) -> tuple[Tensor, list[int]]:
        """Probabilities ``(S, b, C)`` of the inputs ``index`` and the samples each used (see ``run_rounds``)."""
        batch = self.model.make_input([job.encoded.ids[i] for i in index], self.device)
        sampler = self._sampler(job.n_samples, [job.seeds[i] for i in index])
        with torch.inference_mode(), self._autocast():
            self._check_deadline(job)
            state = self.model.prefix(batch)
            probs, used = run_rounds(
                self._tail(state, sampler, job),
                len(index),
                job.n_samples,
                len(self.labels),
                min(job.n_samples, self.pass_rows),
                [job.tolerances[i] for i in index],
                partial(self._verdicts, job, index) if self._decides(job, index) else None,
                eager=not self.model.stochastic_recurrence,  # a head's extra samples cost less than extra passes
            )
        job.finished(len(index))
        return probs, used

    def _check_deadline(self, job: _Job) -> None:
        """:class:`~mcdrop.core.errors.DeadlineExceeded` once the job's deadline has passed."""
        check_deadline(job.deadline, self.name, job.done[0], len(job.seeds))

    def cost(self, texts: Sequence[str], n_samples: int) -> int:
        """What ``n_samples`` samples of ``texts`` cost this model, in the units of :mod:`mcdrop.core.cost`."""
        return request_cost(self.model, self.encoder, texts, n_samples)

    def costed(self, texts: Sequence[str], n_samples: int, limit: int | None = None) -> CostTerms:
        """The cost of ``n_samples`` samples of ``texts`` and how it adds up, counted only until over ``limit``."""
        return cost_terms(self.model, self.encoder, texts, n_samples, limit)

    def _decides(self, job: _Job, index: list[int]) -> bool:
        """Whether some input of the chunk asks for a decision: then its action must settle too."""
        return self.calibration is not None and any(job.policies[i].max_risk is not None for i in index)

    def _verdicts(self, job: _Job, index: list[int], active: list[int], stats: ArraySummary) -> list[Hashable]:
        assert self.calibration is not None  # only asked for when _decides
        return verdicts(self.calibration, stats, [index[a] for a in active], job.policies, job.novelty)

    def _map(self, fn: Callable[[list[int]], T], chunks: list[list[int]]) -> list[T]:
        """``fn`` over ``chunks``: on the CPU one intra-op thread per chunk, chunks side by side (``threads``)."""
        if self.device.type != "cpu":
            return [fn(chunk) for chunk in chunks]
        return self._runner.map(fn, chunks, parallel=self._parallel)

    def _check(self, n_samples: int, seeds: Sequence[int], tolerances: Sequence[float] = ()) -> None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer (got {n_samples!r})")
        for seed in seeds:
            if not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"seed must be in [0, {MAX_SEED}] (got {seed})")
        for tolerance in tolerances:
            if not (isinstance(tolerance, int | float) and 0 <= tolerance < math.inf):
                raise ConfigError(f"mc_tolerance must be a number >= 0 (got {tolerance!r})")

    def predict_many(
        self,
        requests: Sequence[tuple[Sequence[str], int]],
        n_samples: int,
        policies: Sequence[DecisionPolicy] | None = None,
        mc_tolerances: Sequence[float] | None = None,
        deadline: Deadline = None,
    ) -> list[list[Prediction]]:
        """Predict several requests ``(texts, seed)`` in one engine pass; each result equals a separate call.

        ``policies[r]`` says what request ``r`` wants decided (default: conformal sets at 90 % coverage, no
        accept/abstain decision); ``mc_tolerances[r]`` when its inputs may stop sampling early (default: the
        checkpoint's ``mc_tolerance``). Each input's samples and stopping point depend on its own request only, so
        requests with any policies and tolerances share a pass. ``deadline`` (a ``time.perf_counter()`` value, or a
        function giving it) is checked before every tail pass; past it the call raises
        :class:`~mcdrop.core.errors.DeadlineExceeded` instead of finishing work nobody waits for.
        """
        if mc_tolerances is None:
            mc_tolerances = [self.default_mc_tolerance] * len(requests)
        self._check(n_samples, [seed for _, seed in requests], mc_tolerances)
        if policies is None:
            policies = [DEFAULT_POLICY] * len(requests)
        if len(policies) != len(requests) or len(mc_tolerances) != len(requests):
            raise ValueError(f"{len(policies)} policies, {len(mc_tolerances)} tolerances for {len(requests)} requests")
        if self.calibration is None and any(p.max_risk is not None for p in policies):
            raise ConfigError(f"model {self.name} has no calibration: it cannot decide at a max_risk")
        per_text = [
            (text, seed, p, t)
            for (ts, seed), p, t in zip(requests, policies, mc_tolerances, strict=True)
            for text in ts
        ]
        encoded = self.encoder.encode([text for text, _, _, _ in per_text])
        job = _Job(
            encoded,
            [seed for _, seed, _, _ in per_text],
            n_samples,
            [p for _, _, p, _ in per_text],
            [float(t) for _, _, _, t in per_text],
            self._novelty(encoded),
            deadline,
        )
        parts = torch.get_num_threads() if self._parallel and len(per_text) * n_samples >= PARALLEL_MIN_ROWS else 1
        chunks = self._chunks(encoded, n_samples, parts)
        flat: list[Prediction | None] = [None] * len(per_text)
        try:
            for index, predictions in zip(chunks, self._map(partial(self._predict_chunk, job), chunks), strict=True):
                for i, prediction in zip(index, predictions, strict=True):
                    flat[i] = prediction
        except (torch.OutOfMemoryError, MemoryError) as error:
            raise OutOfMemory(
                f"model {self.name} ran out of memory for this batch; retry later or with fewer texts or samples"
            ) from error
        out: list[list[Prediction]] = []
        start = 0
        for request_texts, _ in requests:
            out.append([p for p in flat[start : start + len(request_texts)] if p is not None])
            start += len(request_texts)
        return out

    def predict(
        self,
        texts: Sequence[str],
        n_samples: int | None = None,
        seed: int | None = None,
        policy: DecisionPolicy | None = None,
        mc_tolerance: float | None = None,
    ) -> list[Prediction]:
        """MC predictions for ``texts``; a ``None`` seed draws a random one, a ``None`` tolerance is the model's."""
        n = self.default_n_samples if n_samples is None else n_samples
        request = (texts, random_seed() if seed is None else seed)
        tolerances = None if mc_tolerance is None else [mc_tolerance]
        return self.predict_many([request], n, None if policy is None else [policy], tolerances)[0]

    def _novelty(self, encoded: EncodedTexts) -> list[float | None]:
        calibration = self.calibration
        if calibration is None or calibration.novelty is None or self.novelty_model is None:
            return [None] * len(encoded)
        nll = self._novelty_scorer().mean_nll(encoded.word_rows(), encoded.n_tokens, encoded.tokens)
        return list(calibration.novelty.novelty_list(nll))

    def _novelty_scorer(self) -> EncoderScorer:
        """The novelty model's scorer of texts as the encoder's ids, built for the model it was made with: the words
        were looked up once already."""
        model = self.novelty_model
        assert model is not None
        if self._novelty_table[0] is not model:
            self._novelty_table = (model, model.encoder_scorer(self.encoder.vocab.tokens, Vocabulary.UNK_ID))
        scorer = self._novelty_table[1]
        assert scorer is not None
        return scorer

    def _predict_chunk(self, job: _Job, index: list[int]) -> list[Prediction]:
        """The predictions of the inputs ``index``, each from the samples it used."""
        probs, used = self._sample(job, index)
        stats = summary_arrays(probs, None if min(used) == probs.shape[0] else used)
        decided = decide(self.calibration, self.labels, stats, index, job.policies, job.novelty)
        return build_predictions(stats, self.labels, job.encoded, index, used, decided)

    def predict_samples(self, texts: Sequence[str], n_samples: int, seed: int) -> Tensor:
        """Raw MC probabilities ``(S, B, C)`` in input order, all ``n_samples`` of them (for evaluation)."""
        self._check(n_samples, [seed])
        encoded = self.encoder.encode(texts)
        n = len(texts)
        job = _Job(encoded, [seed] * n, n_samples, [DEFAULT_POLICY] * n, [0.0] * n, [None] * n)
        out = torch.empty(n_samples, len(texts), len(self.labels))
        chunks = self._chunks(encoded, n_samples, torch.get_num_threads() if self._parallel else 1)
        for index, (probs, _) in zip(chunks, self._map(partial(self._sample, job), chunks), strict=True):
            out[:, index] = probs
        return out

    def predict_deterministic(self, texts: Sequence[str]) -> Tensor:
        """Probabilities ``(B, C)`` with dropout off (the weight-scaling approximation)."""
        encoded = self.encoder.encode(texts)
        out = torch.empty(len(texts), len(self.labels))
        for index in self._chunks(encoded, 1):
            batch = self.model.make_input([encoded.ids[i] for i in index], self.device)
            with torch.inference_mode(), self._autocast():
                out[index] = self._probs(self.model(batch)).cpu()
        return out


@dataclass(frozen=True)
class _Job:
    """One engine call's inputs, per text: what every chunk of it needs."""

    encoded: EncodedTexts
    seeds: list[int]
    n_samples: int
    policies: list[DecisionPolicy]
    tolerances: list[float]
    novelty: list[float | None]
    deadline: Deadline = None
    done: list[int] = field(default_factory=lambda: [0])  # inputs finished, for a deadline's message
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finished(self, n_inputs: int) -> None:
        """``n_inputs`` more inputs are done (chunks may finish on several threads)."""
        with self.lock:
            self.done[0] += n_inputs


def load_engine(path: str, device: str = "auto", max_batch_rows: int = 4096, dtype: str = "float32") -> MCEngine:
    """Load a checkpoint directory and wrap it in an :class:`MCEngine`."""
    target = resolve_device(device)
    return MCEngine(load_checkpoint(path, device=str(target)), str(target), max_batch_rows, dtype)
