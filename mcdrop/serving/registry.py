"""The served-model registry: loaded models, their batchers, readiness, and the inference thread.

``Service.load`` runs in the background while the server already answers ``/healthz`` and ``/readyz`` (503): each
checkpoint under the model directory is loaded and warmed up on the inference thread, then every model gets a
:class:`~mcdrop.serving.batcher.Batcher` and the service reports ready. ``Service.resolve`` finds the model a
request names (or the default one). A checkpoint that fails to load marks the service
failed (``/readyz`` says why) and calls ``on_fatal`` so ``mcdrop serve`` exits non-zero instead of idling unready.
All inference, warm-up included, runs on one shared thread: the machine's cores belong to torch's own threads.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mcdrop.core.checkpoint import discover_checkpoints
from mcdrop.core.decisions import DecisionPolicy
from mcdrop.core.engine import MCEngine, load_engine
from mcdrop.core.errors import CheckpointError, InputError, McdropError, ModelNotFound
from mcdrop.serving.batcher import Batcher
from mcdrop.serving.schemas import Limits
from mcdrop.serving.settings import Settings
from mcdrop.serving.telemetry import Metrics
from mcdrop.serving.tickets import BatchPolicy

logger = logging.getLogger(__name__)

_WARMUP_TEXT = "a warm up sentence for the engine that is neither good nor bad"


@dataclass(frozen=True)
class ServedModel:
    engine: MCEngine
    batcher: Batcher
    default_n_samples: int  # the checkpoint's default, capped at max_n_samples


def _freeze_heap() -> None:
    """Exempt what start-up made (torch, the models, the app: ~200,000 objects that live as long as the process)
    from the cyclic garbage collector. A full collection of that heap took ~110 ms, stopped every request in
    flight and was the 32-client p99; afterwards a full collection scans only what requests leave behind."""
    gc.collect()
    gc.freeze()


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
        )
        self.status: Literal["loading", "ready", "failed"] = "loading"
        self.detail: str | None = None
        self.models: dict[str, ServedModel] = {}
        self.default_model: str | None = None
        self.on_fatal: Callable[[], None] | None = None
        self.executor: ThreadPoolExecutor | None = None

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

    def start(self) -> None:
        """Create the inference thread; torch gets ``inference_threads`` threads so the event loop keeps a core."""
        threads = self.settings.inference_threads
        torch.set_num_threads(threads)
        # OpenMP thread counts are per calling thread: set it on the inference thread too
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mcdrop-infer", initializer=torch.set_num_threads, initargs=(threads,)
        )
        logger.info("inference on one thread with %d torch thread(s)", threads)

    async def load(self, paths: list[Path]) -> None:
        """Load and warm up every checkpoint on the inference thread, then report ready (or failed)."""
        assert self.executor is not None, "call start() first"
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            engines: dict[str, tuple[MCEngine, Path]] = {}
            for path in paths:
                engine = await loop.run_in_executor(self.executor, self._load_one, path)
                if engine.name in engines:
                    raise CheckpointError(
                        f"two checkpoints are named {engine.name!r}: {engines[engine.name][1]} and {path}; "
                        "give each a distinct name in its config.json"
                    )
                engines[engine.name] = (engine, path)
            self.default_model = self._pick_default(sorted(engines))
            for name in sorted(engines):
                self._add(engines[name][0])
        except McdropError as error:
            self._fail(str(error))
            return
        except Exception as error:  # anything else while loading is a bug or a broken environment: say so
            logger.exception("loading models failed")
            self._fail(f"loading models failed: {type(error).__name__}: {error}")
            return
        _freeze_heap()
        self.status = "ready"
        self.metrics.ready.set(1)
        logger.info(
            "ready: %d model(s) (%s), default %s, in %.1fs",
            len(self.models),
            ", ".join(self.models),
            self.default_model or "none (requests must name a model)",
            time.perf_counter() - started,
        )

    def _load_one(self, path: Path) -> MCEngine:
        settings = self.settings
        began = time.perf_counter()
        engine = load_engine(
            str(path), device=settings.device, max_batch_rows=settings.max_batch_rows, dtype=settings.dtype
        )
        # the largest batch the batcher will form, so first requests pay no allocation or lazy set-up
        n_samples = min(engine.default_n_samples, settings.max_n_samples)
        texts = [_WARMUP_TEXT] * max(1, settings.max_batch_rows // n_samples)
        for _ in range(settings.warmup_passes):
            engine.predict_many([(texts, 0)], n_samples)
        logger.info(
            "loaded %s (version %s, %s) from %s on %s in %.2fs",
            engine.name,
            engine.version,
            engine.config.get("architecture"),
            path,
            engine.device,
            time.perf_counter() - began,
        )
        return engine

    def _pick_default(self, names: list[str]) -> str | None:
        wanted = self.settings.default_model
        if wanted is not None:
            if wanted not in names:
                raise CheckpointError(
                    f"MCDROP_DEFAULT_MODEL={wanted!r} is not among the loaded models ({', '.join(names)}); "
                    "set it to one of them or leave it unset"
                )
            return wanted
        return names[0] if len(names) == 1 else None

    def _add(self, engine: MCEngine) -> None:
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
        assert self.executor is not None
        batcher = Batcher(engine, self.executor, self.policy, model_metrics)
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

    def decision_policy(
        self, served: ServedModel, max_risk: float | None, coverage: float | None, max_novelty: float | None
    ) -> DecisionPolicy:
        """What a request wants decided, with the server's defaults filled in; :class:`InputError` when it asks an
        uncalibrated model for a decision, a conformal set or a novelty limit."""
        calibration = served.engine.calibration
        if calibration is None:
            fields = (("max_risk", max_risk), ("coverage", coverage), ("max_novelty", max_novelty))
            asked = [name for name, value in fields if value is not None]
            if asked:
                raise InputError(
                    f"{asked[0]}: model {served.engine.name} has no calibration, so it cannot decide; calibrate it "
                    "with `mcdrop calibrate CHECKPOINT --data FILE --out DIR` (a labelled sample of your traffic, "
                    "at least 200 texts)"
                )
            return DecisionPolicy()
        return DecisionPolicy(
            max_risk=self.settings.max_risk if max_risk is None else max_risk,
            coverage=self.settings.coverage if coverage is None else coverage,
            max_novelty=calibration.max_novelty if max_novelty is None else max_novelty,
        )

    def mc_tolerance(self, served: ServedModel, requested: float | None) -> float:
        """A request's tolerance: its own, else the server's MCDROP_MC_TOLERANCE, else the checkpoint's."""
        if requested is not None:
            return float(requested)
        if self.settings.mc_tolerance is not None:
            return self.settings.mc_tolerance
        return served.engine.default_mc_tolerance

    def resolve(self, name: str | None) -> ServedModel:
        """The model a request names (or the default); raises :class:`ModelNotFound` or :class:`InputError`."""
        if name is None:
            name = self.default_model
            if name is None:
                raise InputError(
                    f"model: required when several models are served ({', '.join(self.models)}); "
                    "name one, or start the server with MCDROP_DEFAULT_MODEL"
                )
        served = self.models.get(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} not found; available: {', '.join(self.models)}")
        return served

    async def close(self) -> None:
        """Finish queued work, then stop the inference thread."""
        for served in self.models.values():
            await served.batcher.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None
        self.metrics.ready.set(0)
