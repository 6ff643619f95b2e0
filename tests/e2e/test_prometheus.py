"""A real Prometheus scrapes a real `mcdrop serve` and evaluates the shipped alert rules and dashboard queries.

Both processes listen on 127.0.0.1 only and are always stopped. Skipped only when the `prometheus` binary is
absent (CI installs Debian's prometheus package through .ci/deploy-checks.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_deploy import ALERTS, dashboard_queries, http, predict, running_server, variable_queries

from conftest import MakeCheckpoint
from mcdrop.serving.launch import free_port, stop_process

PROMETHEUS = shutil.which("prometheus")
POLL_TIMEOUT_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus binary not found (apt-get install prometheus; .ci/deploy-checks.sh installs it)",
    ),
]


@contextmanager
def running_prometheus(target: str, workdir: Path) -> Iterator[str]:
    """Prometheus scraping `target` every second with the shipped alert rules loaded; yields its base URL."""
    port = free_port()
    shutil.copy(ALERTS, workdir / "alerts.yml")
    config = {  # JSON is valid YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "mcdrop", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    log_path = workdir / "prometheus.log"
    assert PROMETHEUS is not None
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url), f"Prometheus ready at {url}", process, log_path)
        yield url
    finally:
        stop_process(process)


def ready(url: str) -> bool:
    try:
        return http("GET", url + "/-/ready", timeout=2.0)[0] == 200
    except OSError:
        return False


def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while not condition():
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        if process is not None and process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {POLL_TIMEOUT_S:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.5)


def api(url: str, path: str, **params: str) -> Any:
    """GET /api/v1/<path>; a `match` parameter is sent as Prometheus' `match[]`."""
    query = urllib.parse.urlencode({"match[]" if key == "match" else key: value for key, value in params.items()})
    status, body = http("GET", f"{url}/api/v1/{path}?{query}")
    payload = json.loads(body)
    assert status == 200 and payload["status"] == "success", payload
    return payload["data"]


def scalar(url: str, query: str) -> float:
    """Value of a query returning at most one series (0 when it returns none)."""
    result = api(url, "query", query=query)["result"]
    return float(result[0]["value"][1]) if result else 0.0


def as_plain_promql(expr: str) -> str:
    """Dashboard PromQL with Grafana's macros and template variables replaced by plain values."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def test_prometheus_scrapes_predictions(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    # calibrated, so that the decision and novelty series the abstention alert and panels read are real too
    model_dir = make_checkpoint("mlp", calibrated=True).parent
    texts = ["a wonderful film", "a dull and boring mess", "great acting", "zzz qqq"]
    n_requests = 3
    with running_server(model_dir, tmp_path / "serve.log") as server:
        target = server.url.removeprefix("http://")
        with running_prometheus(target, tmp_path) as prom:
            for seed in range(n_requests):
                predict(server, texts, seed=seed, max_risk=0.1)

            def scraped() -> bool:
                requests = scalar(prom, 'sum(mcdrop_requests_total{endpoint="/v1/predict", status="2xx"})')
                entropies = scalar(prom, "sum(mcdrop_predictive_entropy_count)")
                decisions = scalar(prom, "sum(mcdrop_decisions_total)")
                return requests >= n_requests and min(entropies, decisions) >= n_requests * len(texts)

            wait_for(scraped, "the predictions in Prometheus")
            assert scalar(prom, "sum(mcdrop_predictions_total)") == n_requests * len(texts)
            assert scalar(prom, "sum(mcdrop_mutual_information_count)") == n_requests * len(texts)
            assert scalar(prom, "sum(mcdrop_decisions_total)") == n_requests * len(texts)
            assert scalar(prom, "sum(mcdrop_novelty_count)") == n_requests * len(texts)
            assert scalar(prom, 'count(mcdrop_model_info{model="tiny-mlp"})') == 1
            assert scalar(prom, 'up{job="mcdrop"}') == 1

            # Every alert rule is loaded and evaluates against the real series without error
            # (a label-matching mistake shows up here as health "err").
            def rules_evaluated() -> bool:
                rules = [r for g in api(prom, "rules")["groups"] for r in g["rules"]]
                return bool(rules) and all(r["health"] != "unknown" for r in rules)

            wait_for(rules_evaluated, "the alert rules to be evaluated")
            rules = [r for g in api(prom, "rules")["groups"] for r in g["rules"]]
            assert {r["name"] for r in rules} >= {
                "McdropHighErrorRate",
                "McdropUncertaintyDrift",
                "McdropAbstentionDrift",
            }
            assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
            firing = [a["labels"]["alertname"] for a in api(prom, "alerts")["alerts"] if a["state"] == "firing"]
            assert firing == [], "a healthy service should fire no alert"

            # Every dashboard query runs (the API answers 400 with the parse error otherwise), and every
            # template variable finds values, as Grafana would ask for them.
            for query in dashboard_queries():
                api(prom, "query", query=as_plain_promql(query))
            for query in variable_queries():
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
                assert match, f"unexpected variable query {query!r}"
                values = api(prom, f"label/{match.group(2)}/values", match=as_plain_promql(match.group(1)))
                assert values, f"{query} found no values"
