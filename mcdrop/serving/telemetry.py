"""Prometheus metrics of the service, registered on an injected ``CollectorRegistry``.

Label values are bounded: ``endpoint`` is a route template (or ``unmatched``), ``status`` a class (``2xx``..``5xx``),
``method`` one of the HTTP methods (else ``other``), and ``model`` one of the loaded models: ``Metrics`` only
creates model label values in ``add_model``, so a request naming an unknown model never creates one. Rejections
that happen before any model is known (``not_ready``) carry ``model=""``. ``model_dir_entry`` is the name of a
checkpoint directory that failed to load (cut to 64 characters): the model directory is read once, at start-up.

    registry = CollectorRegistry()
    metrics = Metrics(registry)            # also registers the process/platform/gc collectors
    metrics.add_model("rt-mlp", version="1", architecture="mlp", dropout_placement="after_embedding", baseline={})
    body = generate_latest(registry)       # what GET /metrics serves
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from mcdrop.core.engine import Prediction

__all__ = ["BASELINE_STATISTICS", "REJECT_REASONS", "Metrics", "ModelMetrics"]

BASELINE_STATISTICS = (
    "mean_entropy",
    "mean_mutual_information",
    "mutual_information_threshold",
    "high_mi_share",
    "mean_oov_fraction",
    "abstain_share",
)
DECISION_OUTCOMES = (("accept", "none"), ("abstain", "uncertain"), ("abstain", "novel"))
REJECT_REASONS = ("overloaded", "timeout", "not_ready")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SAMPLES_BUCKETS = (1, 5, 10, 20, 30, 40, 50, 80, 100, 160, 200, 320, 500, 1000)  # adaptive rounds end at 10·2^k
_ENTROPY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 1.0, 1.5, 2.0, 3.0)
_MI_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
_NOVELTY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_OOV_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


def status_class(status: int) -> str:
    index = status // 100 - 1
    return _STATUS_CLASSES[index] if 0 <= index < len(_STATUS_CLASSES) else "5xx"


@dataclass
class ModelMetrics:
    """The children of the per-model metrics for one model, resolved once (label lookups are not free)."""

    name: str
    inference_seconds: Histogram
    batch_size: Histogram
    mc_samples: Counter
    samples_used: Histogram
    queue_depth: Gauge
    entropy: Histogram
    mutual_information: Histogram
    oov_fraction: Histogram
    predictions: Counter
    high_uncertainty: Counter
    rejected: dict[str, Counter]
    mi_threshold: float | None
    novelty: Histogram
    decisions: dict[tuple[str, str], Counter]

    def observe_batch(self, n_texts: int, samples_used: Iterable[int], seconds: float) -> None:
        """One engine batch: its time, its texts and the samples each text used."""
        self.inference_seconds.observe(seconds)
        self.batch_size.observe(n_texts)
        total = 0
        for used in samples_used:
            self.samples_used.observe(used)
            total += used
        self.mc_samples.inc(total)

    def observe_predictions(
        self, entropies: Iterable[float], mutual_informations: Iterable[float], oov_fractions: Iterable[float] = ()
    ) -> None:
        for value in oov_fractions:
            self.oov_fraction.observe(value)
        n = 0
        for value in entropies:
            self.entropy.observe(value)
            n += 1
        threshold = self.mi_threshold
        high = 0
        for value in mutual_informations:
            self.mutual_information.observe(value)
            if threshold is not None and value > threshold:
                high += 1
        self.predictions.inc(n)
        if high:
            self.high_uncertainty.inc(high)

    def observe_decisions(self, predictions: Iterable[Prediction]) -> None:
        """Novelty of every prediction that has one, and the outcome of every decision."""
        for p in predictions:
            if p.novelty is not None:
                self.novelty.observe(p.novelty)
            if p.decision is not None:
                self.decisions[(p.decision.action, p.decision.reason or "none")].inc()


class Metrics:
    """Every metric the service exports, on one registry."""

    def __init__(self, registry: CollectorRegistry, *, process_collectors: bool = True) -> None:
        self.registry = registry
        if process_collectors:
            # fresh instances: the module-level ones belong to prometheus_client's global registry
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.requests = Counter(
            "mcdrop_requests_total",
            "HTTP requests answered, by route template, method and status class.",
            ("endpoint", "method", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "mcdrop_request_duration_seconds",
            "Time from receiving a request to sending its response headers.",
            ("endpoint", "method"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "mcdrop_inference_duration_seconds",
            "Engine time per batch (encode, MC passes, summary).",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "mcdrop_batch_size", "Texts per engine batch.", ("model",), buckets=_BATCH_BUCKETS, registry=registry
        )
        self.mc_samples = Counter(
            "mcdrop_mc_samples_total", "Monte Carlo samples computed (texts x samples).", ("model",), registry=registry
        )
        self.samples_used = Histogram(
            "mcdrop_samples_used",
            "Monte Carlo samples each served prediction used (n_samples, or fewer when mc_tolerance stopped it).",
            ("model",),
            buckets=_SAMPLES_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("mcdrop_queue_depth", "Texts waiting for the engine.", ("model",), registry=registry)
        self.entropy = Histogram(
            "mcdrop_predictive_entropy",
            "Predictive entropy of served predictions (nats).",
            ("model",),
            buckets=_ENTROPY_BUCKETS,
            registry=registry,
        )
        self.mutual_information = Histogram(
            "mcdrop_mutual_information",
            "Mutual information of served predictions (nats).",
            ("model",),
            buckets=_MI_BUCKETS,
            registry=registry,
        )
        self.oov_fraction = Histogram(
            "mcdrop_oov_fraction",
            "Share of each served text's tokens outside the vocabulary: the input-novelty signal "
            "(mutual information does not rise on unfamiliar text; this does).",
            ("model",),
            buckets=_OOV_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter("mcdrop_predictions_total", "Texts predicted.", ("model",), registry=registry)
        self.high_uncertainty = Counter(
            "mcdrop_high_uncertainty_total",
            "Predictions whose mutual information exceeds the checkpoint's baseline threshold.",
            ("model",),
            registry=registry,
        )
        self.novelty = Histogram(
            "mcdrop_novelty",
            "Novelty of served predictions: the share of calibration texts less surprising (0 typical, 1 unlike "
            "anything the model was calibrated on).",
            ("model",),
            buckets=_NOVELTY_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "mcdrop_decisions_total",
            "Decisions on served predictions: accept, or abstain because uncertain (score above the risk-controlling "
            "threshold) or novel (novelty above max_novelty).",
            ("model", "action", "reason"),
            registry=registry,
        )
        self.baseline = Gauge(
            "mcdrop_uncertainty_baseline",
            "Uncertainty statistics measured when the checkpoint was trained.",
            ("model", "statistic"),
            registry=registry,
        )
        self.rejected = Counter(
            "mcdrop_rejected_requests_total",
            "Prediction requests refused: overloaded (queue full), timeout (deadline passed), not_ready, busy "
            "(in-flight limit, refused before the body was read).",
            ("model", "reason"),
            registry=registry,
        )
        self.model_info = Gauge(
            "mcdrop_model_info",
            "Loaded models (value 1).",
            ("model", "version", "architecture", "dropout_placement"),
            registry=registry,
        )
        self.ready = Gauge(
            "mcdrop_ready",
            "1 once the models are loaded and warmed up (and until shutdown), else 0.",
            registry=registry,
        )
        self.load_failures = Counter(
            "mcdrop_model_load_failures_total",
            "Checkpoints of the model directory that failed to load at start-up and are not served (1 per entry).",
            ("model_dir_entry",),
            registry=registry,
        )
        self._models: dict[str, ModelMetrics] = {}
        self._request_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def add_model(
        self,
        name: str,
        *,
        version: str,
        architecture: str,
        dropout_placement: str,
        baseline: Mapping[str, object],
    ) -> ModelMetrics:
        """Create the label values for a loaded model; the only place a ``model`` label value is created."""
        self.model_info.labels(name, version, architecture, dropout_placement).set(1)
        for statistic in BASELINE_STATISTICS:
            value = baseline.get(statistic)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.baseline.labels(name, statistic).set(float(value))
        threshold = baseline.get("mutual_information_threshold")
        model = ModelMetrics(
            name=name,
            inference_seconds=self.inference_seconds.labels(name),
            batch_size=self.batch_size.labels(name),
            mc_samples=self.mc_samples.labels(name),
            samples_used=self.samples_used.labels(name),
            queue_depth=self.queue_depth.labels(name),
            entropy=self.entropy.labels(name),
            mutual_information=self.mutual_information.labels(name),
            oov_fraction=self.oov_fraction.labels(name),
            predictions=self.predictions.labels(name),
            high_uncertainty=self.high_uncertainty.labels(name),
            rejected={reason: self.rejected.labels(name, reason) for reason in REJECT_REASONS},
            mi_threshold=float(threshold) if isinstance(threshold, int | float) else None,
            novelty=self.novelty.labels(name),
            decisions={outcome: self.decisions.labels(name, *outcome) for outcome in DECISION_OUTCOMES},
        )
        self._models[name] = model
        return model

    def model(self, name: str) -> ModelMetrics | None:
        return self._models.get(name)

    def reject(self, model: str | None, reason: str) -> None:
        """Count a refused request; ``model`` must be a loaded model's name (anything else is counted as "")."""
        found = self._models.get(model) if model is not None else None
        if found is not None:
            found.rejected[reason].inc()
        else:
            self.rejected.labels("", reason).inc()

    def load_failed(self, entry: str) -> None:
        """Count a checkpoint directory that failed to load (``entry``: its name, at most 64 characters)."""
        self.load_failures.labels(entry[:64]).inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (endpoint, method_label(method), status_class(status))
        children = self._request_children.get(key)
        if children is None:  # endpoint is a route template: the keys form a small bounded set
            children = (self.requests.labels(*key), self.request_seconds.labels(key[0], key[1]))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
