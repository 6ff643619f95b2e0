"""The Monte Carlo engine: N stochastic forward passes over a batch of texts, as few large passes as possible.

How the cost stays low (see ``docs/engine.md``):

* the model's deterministic prefix runs once per input; only the stochastic tail sees ``S × B`` rows,
* the samples of many inputs go through one batched tail pass, chunked to ``max_batch_rows`` rows,
* masks are drawn per sample (shared by the inputs of a request), not per row, which also makes each
  request's answer depend only on its own texts, seed and ``n_samples``,
* inputs are sorted by length so sequence batches carry little padding.

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
import secrets
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcdrop.core.checkpoint import Checkpoint, load_checkpoint
from mcdrop.core.cost import Deadline, check_deadline, explain_cost, request_cost, text_steps
from mcdrop.core.decisions import Decision, DecisionPolicy
from mcdrop.core.dropout import MaskSampler
from mcdrop.core.errors import ConfigError, McdropError, OutOfMemory
from mcdrop.core.novelty import NgramLanguageModel
from mcdrop.core.prediction import Prediction as Prediction  # re-exported: the engine's answer type
from mcdrop.core.text import EncodedTexts, Vocabulary
from mcdrop.core.uncertainty import summarize

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
# Largest tail pass through a recurrence on the CPU, in rows. Measured on the shipped GRU (N=100, 32 texts, one
# thread): passes of 800-1600 rows cost as much per row as single texts, 3200-row passes twice as much (the
# recurrence's working set leaves the cache). GPUs keep passes as large as max_batch_rows allows.
CPU_RECURRENT_PASS_ROWS = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_POLICY = DecisionPolicy()


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
        # encoder id -> novelty-model id, built for the novelty model it was made with
        self._novelty_table: tuple[NgramLanguageModel | None, np.ndarray[Any, Any], bool] = (None, np.zeros(0), False)

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
    def config(self) -> dict[str, Any]:
        return self.checkpoint.config

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _probs(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def _chunks(self, encoded: EncodedTexts, rows_per_input: int) -> Iterator[list[int]]:
        """Input indices in length order, in chunks of at most ``pass_rows // rows_per_input`` inputs."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded.ids[i]))
        size = max(1, self.pass_rows // max(1, rows_per_input))
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def _sample(
        self, encoded: EncodedTexts, seeds: Sequence[int], n_samples: int, deadline: Deadline = None
    ) -> Iterator[tuple[list[int], Tensor]]:
        """Yield (input indices, probabilities ``(S, b, C)``) chunk by chunk; ``seeds[i]`` is input i's seed.

        ``deadline`` is checked before every tail pass: past it :class:`DeadlineExceeded` stops the work."""
        samples_per_pass = min(n_samples, self.pass_rows)
        done = 0
        for index in self._chunks(encoded, n_samples):
            batch = self.model.make_input([encoded.ids[i] for i in index], self.device)
            chunk_seeds, groups = torch.unique(torch.tensor([seeds[i] for i in index]), return_inverse=True)
            sampler = MaskSampler(
                n_samples,
                chunk_seeds.tolist(),
                groups if len(chunk_seeds) > 1 else None,
                device=self.device,
                dtype=self.dtype,  # under autocast, fp32 masks would promote activations back to fp32
            )
            with torch.inference_mode(), self._autocast():
                check_deadline(deadline, self.name, done, len(encoded))
                state = self.model.prefix(batch)
                parts = []
                for start in range(0, n_samples, samples_per_pass):
                    if start:
                        check_deadline(deadline, self.name, done, len(encoded))
                    sampler.start_pass(slice(start, min(n_samples, start + samples_per_pass)))
                    parts.append(self._probs(self.model.stochastic_tail(state, sampler)))
            done += len(index)
            yield index, torch.cat(parts).cpu()

    def cost(self, texts: Sequence[str], n_samples: int) -> int:
        """What ``n_samples`` samples of ``texts`` cost this model, in the units of :mod:`mcdrop.core.cost`."""
        return request_cost(self.model, self.encoder, texts, n_samples)

    def costed(self, texts: Sequence[str], n_samples: int) -> tuple[int, str]:
        """The cost of ``n_samples`` samples of ``texts`` and how it adds up (for a refusal)."""
        steps = text_steps(self.model, self.encoder, texts)
        return n_samples * steps, explain_cost(self.model, len(texts), steps, n_samples)

    def _check(self, n_samples: int, seeds: Sequence[int]) -> None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer (got {n_samples!r})")
        for seed in seeds:
            if not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"seed must be in [0, {MAX_SEED}] (got {seed})")

    def predict_many(
        self,
        requests: Sequence[tuple[Sequence[str], int]],
        n_samples: int,
        policies: Sequence[DecisionPolicy] | None = None,
        deadline: Deadline = None,
    ) -> list[list[Prediction]]:
        """Predict several requests ``(texts, seed)`` in one engine pass; each result equals a separate call.

        ``policies[r]`` says what request ``r`` wants decided (default: conformal sets at 90 % coverage, no
        accept/abstain decision); it changes nothing about sampling, so requests with any policies share a pass.
        ``deadline`` (a ``time.perf_counter()`` value, or a function giving it) is checked before every tail pass;
        past it the call raises :class:`~mcdrop.core.errors.DeadlineExceeded` instead of finishing work nobody
        waits for.
        """
        self._check(n_samples, [seed for _, seed in requests])
        if policies is None:
            policies = [DEFAULT_POLICY] * len(requests)
        elif len(policies) != len(requests):
            raise ValueError(f"{len(policies)} policies for {len(requests)} requests")
        if self.calibration is None and any(p.max_risk is not None for p in policies):
            raise ConfigError(f"model {self.name} has no calibration: it cannot decide at a max_risk")
        texts = [text for request_texts, _ in requests for text in request_texts]
        seeds = [seed for request_texts, seed in requests for _ in request_texts]
        text_policies = [p for (request_texts, _), p in zip(requests, policies, strict=True) for _ in request_texts]
        encoded = self.encoder.encode(texts)
        flat: list[Prediction | None] = [None] * len(texts)
        try:
            for index, probs in self._sample(encoded, seeds, n_samples, deadline):
                for i, prediction in zip(index, self._summaries(probs, encoded, index, text_policies), strict=True):
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
    ) -> list[Prediction]:
        """MC predictions for ``texts``; a ``None`` seed draws a random one."""
        n = self.default_n_samples if n_samples is None else n_samples
        request = (texts, random_seed() if seed is None else seed)
        return self.predict_many([request], n, None if policy is None else [policy])[0]

    def _decisions(
        self,
        mean: list[list[float]],
        entropy: list[float],
        mi: list[float],
        encoded: EncodedTexts,
        index: list[int],
        policies: Sequence[DecisionPolicy],
    ) -> list[tuple[float | None, list[str] | None, Decision | None]]:
        """Novelty, conformal set and decision of each input (all ``None`` without a calibration)."""
        calibration = self.calibration
        if calibration is None:
            return [(None, None, None)] * len(index)
        novelty: list[float | None] = [None] * len(index)
        if calibration.novelty is not None and self.novelty_model is not None:
            novelty = calibration.novelty.novelty_many(self._novelty_nll(encoded, index)).tolist()
        labels = self.labels
        decided = calibration.decide_many(mean, entropy, mi, novelty, [policies[i] for i in index])
        return [
            (v, [labels[c] for c in members], decision) for v, (members, decision) in zip(novelty, decided, strict=True)
        ]

    def _novelty_nll(self, encoded: EncodedTexts, index: list[int]) -> np.ndarray[Any, Any]:
        """The novelty model's mean NLL per token of each input, from the encoder's ids: the words were looked up
        once already. Words the encoder does not know are looked up again only when the novelty model knows words
        the encoder does not (for the shipped checkpoints it never does: both vocabularies keep words seen twice)."""
        model = self.novelty_model
        assert model is not None
        if self._novelty_table[0] is not model:
            table = np.array([model.token_id(t) for t in self.encoder.vocab.tokens], dtype=np.int64)
            covered = all(word in self.encoder.vocab.index for word in model.vocab)
            self._novelty_table = (model, table, covered)
        _, table, covered = self._novelty_table
        ids, n_tokens = encoded.ids, encoded.n_tokens
        lengths = [n_tokens[i] for i in index]
        flat = np.fromiter(chain.from_iterable(ids[i][: n_tokens[i]] for i in index), dtype=np.int64)
        lm_ids = table[flat]
        if not covered:
            unknown = np.flatnonzero(flat == Vocabulary.UNK_ID)
            if unknown.size:
                words = [w for i in index for w in encoded.tokens[i]]
                lm_ids[unknown] = [model.token_id(words[k]) for k in unknown.tolist()]
        return model.mean_nll_ids(lm_ids, lengths)

    def _summaries(
        self, probs: Tensor, encoded: EncodedTexts, index: list[int], policies: Sequence[DecisionPolicy]
    ) -> list[Prediction]:
        stats = summarize(probs)
        labels = self.labels
        # One bulk conversion to Python floats: per-element tensor access costs more than the maths.
        mean, var, err = (t.tolist() for t in (stats.mean, stats.variance, stats.std_error))
        top = stats.mean.argmax(dim=-1).tolist()
        ent, exp_ent, mi, vr = (
            t.tolist() for t in (stats.entropy, stats.expected_entropy, stats.mutual_information, stats.variation_ratio)
        )
        decided = self._decisions(mean, ent, mi, encoded, index, policies)
        return [
            Prediction(
                label=labels[top[j]],
                probs=dict(zip(labels, mean[j], strict=True)),
                variance=dict(zip(labels, var[j], strict=True)),
                entropy=ent[j],
                expected_entropy=exp_ent[j],
                mutual_information=mi[j],
                variation_ratio=vr[j],
                std_error=dict(zip(labels, err[j], strict=True)),
                oov_fraction=encoded.oov_fraction(i),
                n_tokens=encoded.n_tokens[i],
                n_known_tokens=encoded.n_known_tokens[i],
                novelty=decided[j][0],
                prediction_set=decided[j][1],
                decision=decided[j][2],
            )
            for j, i in enumerate(index)
        ]

    def predict_samples(self, texts: Sequence[str], n_samples: int, seed: int) -> Tensor:
        """Raw MC probabilities ``(S, B, C)`` in input order (for evaluation)."""
        self._check(n_samples, [seed])
        encoded = self.encoder.encode(texts)
        out = torch.empty(n_samples, len(texts), len(self.labels))
        for index, probs in self._sample(encoded, [seed] * len(texts), n_samples):
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


def load_engine(path: str, device: str = "auto", max_batch_rows: int = 4096, dtype: str = "float32") -> MCEngine:
    """Load a checkpoint directory and wrap it in an :class:`MCEngine`."""
    target = resolve_device(device)
    return MCEngine(load_checkpoint(path, device=str(target)), str(target), max_batch_rows, dtype)
