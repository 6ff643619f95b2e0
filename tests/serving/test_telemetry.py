"""Metrics: the contract's names and labels on an injected registry; label values stay bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mcdrop.serving.telemetry import Metrics, method_label, status_class

CONTRACT = {
    "mcdrop_requests_total": {"endpoint", "method", "status"},
    "mcdrop_request_duration_seconds": {"endpoint", "method"},
    "mcdrop_inference_duration_seconds": {"model"},
    "mcdrop_batch_size": {"model"},
    "mcdrop_mc_samples_total": {"model"},
    "mcdrop_samples_used": {"model"},
    "mcdrop_queue_depth": {"model"},
    "mcdrop_predictive_entropy": {"model"},
    "mcdrop_mutual_information": {"model"},
    "mcdrop_oov_fraction": {"model"},
    "mcdrop_novelty": {"model"},
    "mcdrop_decisions_total": {"model", "action", "reason"},
    "mcdrop_predictions_total": {"model"},
    "mcdrop_high_uncertainty_total": {"model"},
    "mcdrop_uncertainty_baseline": {"model", "statistic"},
    "mcdrop_rejected_requests_total": {"model", "reason"},
    "mcdrop_model_info": {"model", "version", "architecture", "dropout_placement"},
    "mcdrop_ready": set(),
    "mcdrop_model_load_failures_total": {"model_dir_entry"},
}
BASELINE = {
    "mean_entropy": 0.4,
    "mean_mutual_information": 0.02,
    "mutual_information_threshold": 0.05,
    "high_mi_share": 0.05,
    "mean_oov_fraction": 0.08,
}


def _metrics() -> Metrics:
    metrics = Metrics(CollectorRegistry())
    model = metrics.add_model(
        "m", version="3", architecture="gru", dropout_placement="before_recurrence", baseline=BASELINE
    )
    model.observe_batch(4, [10, 10, 20, 0], 0.01)
    model.observe_predictions([0.1, 0.6], [0.01, 0.2], [0.0, 0.75])
    metrics.observe_request("/v1/predict", "POST", 200, 0.02)
    metrics.reject("m", "overloaded")
    metrics.reject(None, "not_ready")
    metrics.load_failed("broken-checkpoint")
    return metrics


def test_names_and_labels_are_those_of_the_contract() -> None:
    metrics = _metrics()
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        if family.name.startswith("mcdrop_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            found[name] = {label for sample in family.samples for label in sample.labels if label != "le"}
    assert found == CONTRACT


def test_process_and_platform_collectors_are_registered_on_the_injected_registry() -> None:
    text = generate_latest(_metrics().registry).decode()
    assert "process_cpu_seconds_total" in text
    assert "python_info" in text
    assert "python_gc_objects_collected_total" in text


def test_values() -> None:
    value = _metrics().registry.get_sample_value
    assert value("mcdrop_mc_samples_total", {"model": "m"}) == 40
    assert value("mcdrop_samples_used_count", {"model": "m"}) == 4
    assert value("mcdrop_samples_used_bucket", {"model": "m", "le": "10.0"}) == 3
    assert value("mcdrop_predictions_total", {"model": "m"}) == 2
    assert value("mcdrop_high_uncertainty_total", {"model": "m"}) == 1
    assert value("mcdrop_uncertainty_baseline", {"model": "m", "statistic": "high_mi_share"}) == 0.05
    assert value("mcdrop_uncertainty_baseline", {"model": "m", "statistic": "mean_oov_fraction"}) == 0.08
    assert value("mcdrop_oov_fraction_count", {"model": "m"}) == 2
    assert value("mcdrop_oov_fraction_sum", {"model": "m"}) == 0.75
    assert value("mcdrop_oov_fraction_bucket", {"model": "m", "le": "0.0"}) == 1
    labels = {"model": "m", "version": "3", "architecture": "gru", "dropout_placement": "before_recurrence"}
    assert value("mcdrop_model_info", labels) == 1
    assert value("mcdrop_requests_total", {"endpoint": "/v1/predict", "method": "POST", "status": "2xx"}) == 1
    assert value("mcdrop_rejected_requests_total", {"model": "m", "reason": "overloaded"}) == 1
    assert value("mcdrop_rejected_requests_total", {"model": "", "reason": "not_ready"}) == 1
    assert value("mcdrop_ready") == 0


def test_unknown_model_names_create_no_label_values() -> None:
    metrics = _metrics()
    metrics.reject("no-such-model", "overloaded")
    text = generate_latest(metrics.registry).decode()
    assert "no-such-model" not in text
    assert metrics.model("no-such-model") is None


def test_label_helpers_are_bounded() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 999, 0)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "5xx",
        "5xx",
    ]
    assert method_label("GET") == "GET"
    assert method_label("BREW") == "other"
