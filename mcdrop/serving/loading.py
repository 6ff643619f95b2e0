"""Loading one checkpoint for serving: load, check that it predicts finite numbers, warm it up; and what a failure
is reported as.

:class:`~mcdrop.serving.registry.Service` calls :func:`load_and_warm` on the model's own inference thread for every
checkpoint directory it found, and decides what failures mean (its policy: serve the others, or refuse to start
with ``MCDROP_REQUIRE_ALL_MODELS``). A failure names the directory entry, a bounded label: the entries of the model
directory are read once, at start-up.

    engine = load_and_warm(Path("models/rt-mlp"), settings)          # raises McdropError
    failure = LoadFailure.of(Path("models/broken"), "config.json: ...")
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from mcdrop.core.checkpoint import CONFIG_FILE
from mcdrop.core.engine import MCEngine, Prediction, load_engine
from mcdrop.core.errors import CheckpointError
from mcdrop.serving.settings import Settings

logger = logging.getLogger(__name__)

WARMUP_TEXT = "a warm up sentence for the engine that is neither good nor bad"
MAX_ENTRY_CHARS = 64  # a metric label value and a key of /readyz


@dataclass(frozen=True)
class LoadFailure:
    """A checkpoint directory that could not be served, and why (one line)."""

    entry: str  # the directory's name in the model directory
    detail: str
    name: str | None = None  # the model's name, when its config.json says it

    @classmethod
    def of(cls, path: Path, detail: str) -> LoadFailure:
        return cls(path.name[:MAX_ENTRY_CHARS], " ".join(detail.split()), declared_name(path))


def declared_name(path: Path) -> str | None:
    """The ``name`` a checkpoint's config.json declares, when it can be read as a string; else ``None``."""
    try:
        name = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _finite(prediction: Prediction) -> bool:
    numbers = [prediction.entropy, prediction.expected_entropy, prediction.mutual_information]
    numbers += [*prediction.probs.values(), *prediction.variance.values()]
    return all(math.isfinite(value) for value in numbers)


def check_predictions(engine: MCEngine, path: Path) -> None:
    """A short prediction must be finite: a checkpoint whose weights are finite can still overflow (a tiny
    temperature, huge weights); refused at load, it cannot answer 500 to every request while reporting ready."""
    predictions = engine.predict_many([([WARMUP_TEXT, ""], 0)], min(2, engine.default_n_samples))[0]
    if not all(_finite(p) for p in predictions):
        raise CheckpointError(
            f"{path}: the model's predictions are not finite (NaN or infinity) although its weights are; check the "
            "temperature and the weights' magnitude in this checkpoint"
        )


def load_and_warm(path: Path, settings: Settings) -> MCEngine:
    """Load the checkpoint at ``path``, check its predictions, and warm it up at the largest batch the batcher will
    form (so first requests pay no allocation or lazy set-up)."""
    began = time.perf_counter()
    engine = load_engine(
        str(path), device=settings.device, max_batch_rows=settings.max_batch_rows, dtype=settings.dtype
    )
    check_predictions(engine, path)
    n_samples = min(engine.default_n_samples, settings.max_n_samples)
    texts = [WARMUP_TEXT] * max(1, settings.max_batch_rows // n_samples)
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
