"""The served-model registry: loaded models, their batchers, readiness, and one inference thread per model.

``Service.load`` runs in the background while the server already answers ``/healthz`` and ``/readyz`` (503): each
checkpoint under the model directory is loaded and warmed up on a thread of its own, then every model gets a
:class:`~mcdrop.serving.batcher.Batcher` on that thread and the service reports ready. ``Service.resolve`` finds the
model a request names (or the default one).

A checkpoint that fails to load does not take the others down: the service serves the models that loaded, reports
ready (``/readyz`` 200) and names the failed directory entries in ``/readyz`` and in
``mcdrop_model_load_failures_total``; a request naming a failed model gets 503. Readiness is a routing decision, and
every replica loads the same checkpoints: a 503 for one bad checkpoint would take every model off every replica.
With ``MCDROP_REQUIRE_ALL_MODELS``, or when no checkpoint loads, the service is failed instead (``/readyz`` says
why) and calls ``on_fatal`` so ``mcdrop serve`` exits non-zero rather than idle unready.

Each model has its own inference thread, so one model's load never delays another's requests. Torch gets
``Settings.inference_threads`` threads on each: by default the cores less one for the event loop, shared out among
the models, because more torch threads than cores made engine calls 10-200x slower under load on 2 cores.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mcdrop.core.checkpoint import discover_checkpoints
from mcdrop.core.engine import MCEngine
from mcdrop.core.errors import CheckpointError, InputError, McdropError, ModelNotFound, ModelUnavailable
from mcdrop.serving.batcher import Batcher
from mcdrop.serving.loading import LoadFailure, load_and_warm
from mcdrop.serving.schemas import Limits, shorten
from mcdrop.serving.settings import Settings
from mcdrop.serving.telemetry import Metrics
from mcdrop.serving.tickets import BatchPolicy

logger = logging.getLogger(__name__)

# What a shutdown keeps of MCDROP_SHUTDOWN_GRACE_S after the work stops: answering the requests that were stopped,
# closing connections, stopping the threads and the interpreter (well under a second on a CPU).
SHUTDOWN_MARGIN_S = 2.0


@dataclass(frozen=True)
class ServedModel:
    engine: MCEngine
    batcher: Batcher
    default_n_samples: int  # the checkpoint's default, capped at max_n_samples


# Full collections while serving at most once every this many middle-generation ones (CPython's default: 10).
FULL_GC_EVERY = 100


def _freeze_heap() -> None:
    """Exempt what start-up made (torch, the models, the app: ~200,000 objects that live as long as the process)
    from the cyclic garbage collector, and make full collections rarer.

    A full collection of the start-up heap took ~110 ms, stopped every request in flight and was the 32-client
    p99; frozen, a full collection scans only what requests and connections leave behind. Under a storm of 1,500
    clients whose refusals are held a second, those held objects outlive the young collections, and the old
    generation's growth triggered a full collection (10-50 ms, every open connection's objects) about twice a
    second. Allowing one only every 100 middle-generation collections made it one every 10-15 s there (median
    26 ms), with the server's memory flat over seven storm rounds. (A young threshold of 10,000 instead left
    closed connections uncollected for minutes: memory grew ~5 MB a round.)
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_EVERY)


class Service:
    """Everything the routes need; built by ``create_app``, loaded by its lifespan."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = Limits(settings.max_texts_per_request, settings.max_text_chars, settings.max_n_samples)
        # SHA-256 digests, so comparing a sent key with them takes the same time whatever the keys' lengths
        self.api_key_digests = tuple(hashlib.sha256(key).digest() for key in settings.api_key_bytes)
        self.policy = BatchPolicy(
            max_batch_rows=settings.max_batch_rows,
            max_wait_ms=settings.max_wait_ms,
            queue_limit=settings.queue_limit,
            queue_limit_rows=settings.queue_rows,
            batching=settings.batching,
            queue_limit_cost=settings.queue_cost,
        )
        self.status: Literal["loading", "ready", "failed", "stopping"] = "loading"
        self.detail: str | None = None
        self.models: dict[str, ServedModel] = {}
        self.default_model: str | None = None
        self.on_fatal: Callable[[], None] | None = None
        self.threads = 1  # torch threads of each inference thread, set by start()
        self.executors: list[ThreadPoolExecutor] = []
        self.failures: list[LoadFailure] = []  # checkpoints not served, in the order they were found

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def discover(self) -> list[Path]:
        """Checkpoint directories to serve; raises :class:`CheckpointError` when there are none."""
        paths = discover_checkpoints(self.settings.model_dir)
        if not paths:
            raise CheckpointError(
                f"{self.settings.model_dir}: no checkpoints found (a checkpoint is a directory with config.json); "
                "train one with `mcdrop train` or point --model-dir / MCDROP_MODEL_DIR at a directory of them"
            )
        return paths

    def start(self, n_models: int) -> None:
        """Size the inference threads for ``n_models`` models (the event loop keeps a core)."""
        self.threads = self.settings.inference_threads(n_models)
        torch.set_num_threads(self.threads)
        logger.info("inference on one thread per model with %d torch thread(s) each", self.threads)

    def _new_executor(self, index: int) -> ThreadPoolExecutor:
        """A model's inference thread. OpenMP thread counts are per calling thread: set it on the thread itself."""
        executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"mcdrop-infer-{index}",
            initializer=torch.set_num_threads,
            initargs=(self.threads,),
        )
        self.executors.append(executor)
        return executor

    async def load(self, paths: list[Path]) -> None:
        """Load and warm up every checkpoint on its own inference thread, then apply the failure policy: serve the
        models that loaded and report the others, or (``MCDROP_REQUIRE_ALL_MODELS``, or none loaded) fail."""
        started = time.perf_counter()
        try:
            engines = await self._load_all(paths)
            if self.failures and (self.settings.require_all_models or not engines):
                raise CheckpointError(self._failure_summary())
            self.default_model = self._pick_default(sorted(engines), single=len(paths) == 1)
            for name in sorted(engines):
                self._add(*engines[name])
        except McdropError as error:
            self._fail(str(error))
            return
        except Exception as error:  # anything else while loading is a bug or a broken environment: say so
            logger.exception("loading models failed")
            self._fail(f"loading models failed: {type(error).__name__}: {error}")
            return
        _freeze_heap()
        self.status = "ready"
        self.detail = self._failure_summary() if self.failures else None
        self.metrics.ready.set(1)
        logger.info(
            "ready: %d model(s) (%s), default %s, in %.1fs%s",
            len(self.models),
            ", ".join(self.models),
            self.default_model or "none (requests must name a model)",
            time.perf_counter() - started,
            f"; NOT serving {self.detail}" if self.failures else "",
        )

    async def _load_all(self, paths: list[Path]) -> dict[str, tuple[MCEngine, ThreadPoolExecutor]]:
        """Every checkpoint that loads, by model name; the others, and every checkpoint of a name that several
        declare (which one is meant cannot be told), become ``self.failures``."""
        loop = asyncio.get_running_loop()
        loaded: list[tuple[MCEngine, ThreadPoolExecutor, Path]] = []
        for index, path in enumerate(paths):
            executor = self._new_executor(index)
            try:
                loaded.append((await loop.run_in_executor(executor, self._load_one, path), executor, path))
            except McdropError as error:
                self._record_failure(LoadFailure.of(path, str(error)), executor)
            except Exception as error:  # a bug or a broken environment, not the checkpoint: log the traceback
                logger.exception("loading %s failed", path)
                self._record_failure(LoadFailure.of(path, f"{path}: {type(error).__name__}: {error}"), executor)
        named = Counter(engine.name for engine, _, _ in loaded)
        served: dict[str, tuple[MCEngine, ThreadPoolExecutor]] = {}
        for engine, executor, path in loaded:
            if named[engine.name] == 1:
                served[engine.name] = (engine, executor)
                continue
            entries = ", ".join(p.name for e, _, p in loaded if e.name == engine.name)
            detail = (
                f"{path}: {named[engine.name]} checkpoints are named {engine.name!r} ({entries}); give each a "
                "distinct name in its config.json"
            )
            self._record_failure(LoadFailure.of(path, detail), executor)
        return served

    def _record_failure(self, failure: LoadFailure, executor: ThreadPoolExecutor) -> None:
        self.failures.append(failure)
        self.metrics.load_failed(failure.entry)
        executor.shutdown(wait=False)
        self.executors.remove(executor)
        logger.error("cannot serve %s: %s", failure.entry, failure.detail)

    def _failure_summary(self) -> str:
        what = "; ".join(f.detail for f in self.failures)
        return f"{len(self.failures)} checkpoint(s) failed to load: {what}"

    def _load_one(self, path: Path) -> MCEngine:
        return load_and_warm(path, self.settings)

    def _pick_default(self, names: list[str], single: bool) -> str | None:
        """``MCDROP_DEFAULT_MODEL`` (a failed model stays the default: its requests get 503), else the model when
        the directory held exactly one checkpoint."""
        wanted = self.settings.default_model
        if wanted is not None:
            if wanted not in names and wanted not in self.unavailable:
                raise CheckpointError(
                    f"MCDROP_DEFAULT_MODEL={wanted!r} is not among the loaded models ({', '.join(names)}); "
                    "set it to one of them or leave it unset"
                )
            return wanted
        return names[0] if single and names else None

    @property
    def unavailable(self) -> dict[str, LoadFailure]:
        """Failed checkpoints whose model name is known, by that name."""
        return {f.name: f for f in self.failures if f.name is not None}

    def _add(self, engine: MCEngine, executor: ThreadPoolExecutor) -> None:
        config = engine.config
        baseline = dict(config.get("uncertainty_baseline") or {})
        if engine.calibration is not None:
            # the abstention share to expect at the server's default risk (or 0.1) on data like the calibration split
            found = engine.calibration.threshold(self.settings.max_risk or 0.1)
            baseline["abstain_share"] = round(1.0 - found.coverage, 6)
        model_metrics = self.metrics.add_model(
            engine.name,
            version=engine.version,
            architecture=str(config.get("architecture", "")),
            dropout_placement=str(config.get("dropout_placement", "")),
            baseline=baseline,
        )
        batcher = Batcher(engine, executor, self.policy, model_metrics)
        batcher.start()
        default_n = min(engine.default_n_samples, self.settings.max_n_samples)
        if default_n < engine.default_n_samples:
            logger.warning(
                "%s: default n_samples %d exceeds MCDROP_MAX_N_SAMPLES; using %d",
                engine.name,
                engine.default_n_samples,
                default_n,
            )
        self.models[engine.name] = ServedModel(engine, batcher, default_n)

    def _fail(self, detail: str) -> None:
        self.status = "failed"
        self.detail = detail
        logger.error("cannot serve: %s", detail)
        if self.on_fatal is not None:
            self.on_fatal()

    def resolve(self, name: str | None) -> ServedModel:
        """The model a request names (or the default); raises :class:`ModelNotFound` or :class:`InputError`."""
        if name is None:
            name = self.default_model
            if name is None:
                configured = [*self.models, *sorted(self.unavailable)]  # a failed model still needs its name
                raise InputError(
                    f"model: required when several models are served ({', '.join(configured)}); "
                    "name one, or start the server with MCDROP_DEFAULT_MODEL"
                )
        served = self.models.get(name)
        if served is None:
            failed = self.unavailable.get(name)
            if failed is not None:
                raise ModelUnavailable(
                    f"model {shorten(name)!r} is not available: its checkpoint {failed.entry} failed to load (see "
                    f"/readyz); available: {', '.join(self.models)}"
                )
            raise ModelNotFound(f"model {shorten(name)!r} not found; available: {', '.join(self.models)}")
        return served

    def begin_shutdown(self) -> None:
        """SIGTERM: ``/readyz`` answers 503 from now on, new requests are refused, and no work, queued or running,
        goes on past ``MCDROP_SHUTDOWN_GRACE_S`` less the time to answer and exit (:data:`SHUTDOWN_MARGIN_S`)."""
        if self.status == "stopping":
            return
        if self.status != "failed":
            self.status = "stopping"
        grace = self.settings.shutdown_grace_s
        work_s = max(grace - SHUTDOWN_MARGIN_S, grace / 2)
        for served in self.models.values():
            served.batcher.stop_at(time.perf_counter() + work_s)
        self.metrics.ready.set(0)
        logger.info("shutting down: /readyz answers 503; work in progress stops within %.1fs", work_s)

    async def close(self) -> None:
        """Finish queued work (within the shutdown grace period), then stop the inference threads."""
        self.begin_shutdown()  # however shutdown was reached, nothing runs past the grace period
        for served in self.models.values():
            await served.batcher.close()
        for executor in self.executors:
            executor.shutdown(wait=True, cancel_futures=True)
        self.executors = []
        self.metrics.ready.set(0)
