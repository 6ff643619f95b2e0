"""The deployment files agree with the service they deploy.

Static checks (no tools needed): every MCDROP_* variable named in the Dockerfile, Compose file, Kubernetes
manifests and docs/deploy.md is a real setting and the ConfigMap's values pass ``Settings`` validation; the
container command is the same in the image and in Kubernetes; the KServe InferenceServices run that command with
the ConfigMap's settings and probe endpoints the app serves; every file the Dockerfile copies is in the build
context; every baseline statistic the dashboard and the alert rules name is one the service exports. Live check:
every ``mcdrop_*`` metric (and label) that the Grafana dashboard and the alert rules query is exported by a running
``mcdrop serve``.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MakeCheckpoint
from mcdrop.serving.launch import ServerProcess, ServerStartError, start_server
from mcdrop.serving.settings import Settings, env_name
from mcdrop.serving.telemetry import BASELINE_STATISTICS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
CONFIGMAP = DEPLOY / "k8s" / "base" / "configmap.yaml"
DEPLOYMENT = DEPLOY / "k8s" / "base" / "deployment.yaml"
INFERENCE_SERVICES = sorted((DEPLOY / "kserve").glob("*.yaml"))
KSERVE_PORT = "8080"  # KServe's default port for the kserve-container

# Environment variables the deployment sets that are not mcdrop settings, and why.
NON_SETTING_ENV = {"OMP_NUM_THREADS"}  # torch's CPU thread pool, sized to the container's CPU limit
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
STATUS_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx"}

STATISTIC_RE = re.compile(r'\bstatistic\s*=\s*"([^"]*)"')
METRIC_RE = re.compile(r"\bmcdrop_[a-z0-9_]*[a-z0-9]")
SELECTOR_RE = re.compile(r"\b(mcdrop_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SETTING_RE = re.compile(r"\bMCDROP_[A-Z0-9_]*[A-Z0-9]")


# --- helpers ------------------------------------------------------------------------------------------------


def base_name(metric: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS]


def dashboard_queries() -> list[str]:
    """The PromQL of every panel query."""
    queries: list[str] = []
    for dashboard in _dashboards():
        panels = list(dashboard.get("panels", []))
        panels += [inner for panel in panels for inner in panel.get("panels", [])]
        queries += [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    return queries


def variable_queries() -> list[str]:
    """The queries of the dashboards' query variables, e.g. ``label_values(mcdrop_model_info, model)``."""
    queries: list[str] = []
    for dashboard in _dashboards():
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            if variable.get("type") == "query":
                queries.append(query.get("query", "") if isinstance(query, dict) else str(query))
    return queries


def referenced_queries() -> list[str]:
    """Dashboard PromQL plus the whole alert rule file (its expressions, and any metric its text names)."""
    return [*dashboard_queries(), *variable_queries(), ALERTS.read_text(encoding="utf-8")]


def configmap_data() -> dict[str, str]:
    """The ConfigMap's `data:` entries (flat string map; read without a YAML library)."""
    data: dict[str, str] = {}
    in_data = False
    for line in CONFIGMAP.read_text(encoding="utf-8").splitlines():
        if line.startswith("data:"):
            in_data = True
        elif in_data and (match := re.match(r"^  ([A-Za-z0-9_]+):\s*(.*?)\s*$", line)):
            data[match.group(1)] = match.group(2).strip("'\"")
        elif in_data and line and not line.startswith(" "):
            in_data = False
    return data


def dockerfile_exec_form(instruction: str) -> list[str]:
    match = re.search(rf"^{instruction}\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"Dockerfile has no exec-form {instruction}"
    parsed: list[str] = json.loads(match.group(1))
    return parsed


# --- static checks --------------------------------------------------------------------------------------------


def test_queries_were_found() -> None:
    names = {base_name(m) for q in referenced_queries() for m in METRIC_RE.findall(q)}
    # The guard against a parser that silently finds nothing: the drift signal must be among them.
    assert {"mcdrop_mutual_information", "mcdrop_uncertainty_baseline", "mcdrop_requests_total"} <= names


def test_baseline_statistics_are_exported_ones() -> None:
    named = {name for query in referenced_queries() for name in STATISTIC_RE.findall(query)}
    assert "mean_oov_fraction" in named, "the input novelty panels and alert compare with this baseline"
    assert "abstain_share" in named, "the abstention panels and alert compare with this baseline"
    assert named <= set(BASELINE_STATISTICS), f"not baseline statistics: {sorted(named - set(BASELINE_STATISTICS))}"


def test_every_mcdrop_variable_is_a_setting() -> None:
    settings = {env_name(field) for field in Settings.model_fields}
    files = [DOCKERFILE, DEPLOY / "compose.yaml", ROOT / "docs" / "deploy.md", *sorted(DEPLOY.rglob("*.yaml"))]
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        if path.exists()
        for name in SETTING_RE.findall(path.read_text(encoding="utf-8"))
        if name not in settings
    }
    assert not unknown, f"not mcdrop settings (see mcdrop/settings.py): {sorted(unknown)}"


def test_configmap_keys_and_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = configmap_data()
    assert data, "no data found in the ConfigMap"
    settings = {env_name(field) for field in Settings.model_fields}
    assert set(data) - settings <= NON_SETTING_ENV
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    parsed = Settings()  # raises with the variable's name if a value is invalid
    assert parsed.device == data.get("MCDROP_DEVICE", parsed.device)


def test_kubernetes_runs_the_image_command() -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["mcdrop"]
    command = dockerfile_exec_form("CMD")
    assert command[:1] == ["serve"]
    assert command[command.index("--model-dir") + 1] == "/app/models"
    match = re.search(r"^\s+args:\s*(\[.*\])\s*$", DEPLOYMENT.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Deployment's container has no flow-style args list"
    assert json.loads(match.group(1)) == command


def _env_list(text: str) -> dict[str, str]:
    """A container's ``env:`` entries written as ``- name: X`` / ``value: Y`` pairs."""
    pairs = re.finditer(r"^\s+- name: ([A-Z][A-Z0-9_]*)\n\s+value: (.*?)\s*$", text, re.MULTILINE)
    return {match.group(1): match.group(2).strip("'\"") for match in pairs}


@pytest.mark.parametrize("path", INFERENCE_SERVICES, ids=lambda path: path.name)
def test_kserve_runs_the_image_command_with_the_configmap_settings(path: Path) -> None:
    from mcdrop.serving.app import create_app

    text = path.read_text(encoding="utf-8")
    env = _env_list(text)
    assert env.pop("PROTOCOL") == "v2"  # how a custom predictor tells KServe it speaks the V2 protocol
    assert env.pop("MCDROP_DEVICE") == ("cuda" if path.stem.endswith("-gpu") else "cpu")
    assert env == {key: value for key, value in configmap_data().items() if key != "MCDROP_DEVICE"}
    match = re.search(r"^\s+args:\s*(\[.*\])\s*$", text, re.MULTILINE)
    assert match, "the InferenceService's container has no flow-style args list"
    command = dockerfile_exec_form("CMD")
    assert json.loads(match.group(1)) == [*command[: command.index("--port") + 1], KSERVE_PORT]
    assert f"containerPort: {KSERVE_PORT}" in text and f'prometheus.io/port: "{KSERVE_PORT}"' in text
    served = set(create_app().openapi()["paths"])
    probed = set(re.findall(r"^\s+path: (/\S*)\s*$", text, re.MULTILINE))
    assert probed == {"/v2/health/live", "/v2/health/ready"} and probed <= served
    assert "prometheus.io/path: /metrics" in text and "/metrics" in served


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources: list[str] = []
    for match in re.finditer(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE):
        sources += match.group(1).split()[:-1]
    assert {"pyproject.toml", "mcdrop", "models"} <= {s.rstrip("/").removeprefix("./") for s in sources}
    for source in sources:
        name = source.rstrip("/").removeprefix("./")
        assert (ROOT / name).exists(), f"Dockerfile copies {name}, which is not in the repository"
        assert name not in ignored, f"Dockerfile copies {name}, which .dockerignore leaves out"


# --- live server ----------------------------------------------------------------------------------------------


def http(method: str, url: str, body: object | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def running_server(model_dir: Path, log_path: Path, ready_timeout_s: float = 90.0) -> Iterator[ServerProcess]:
    """`mcdrop serve` on a free loopback port, waited on until /readyz answers 200; always stopped."""
    try:
        server = start_server(model_dir, log_path, {"MCDROP_DEVICE": "cpu"}, timeout_s=ready_timeout_s)
    except ServerStartError as error:  # the same on a host with a GPU
        pytest.fail(str(error))
    try:
        yield server
    finally:
        server.stop()


def predict(
    server: ServerProcess, texts: list[str], seed: int = 0, max_risk: float | None = None, model: str | None = None
) -> dict[str, Any]:
    """POST /v1/predict; with ``max_risk`` every prediction also gets a decision (the model must be calibrated)."""
    request: dict[str, object] = {"texts": texts, "n_samples": 8, "seed": seed}
    if max_risk is not None:
        request["max_risk"] = max_risk
    if model is not None:
        request["model"] = model
    status, body = http("POST", server.url + "/v1/predict", request)
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


@pytest.mark.slow
def test_dashboard_and_alerts_query_only_exported_metrics(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    # Its baseline has every training statistic, mean_oov_fraction included; calibrated, it also exports
    # abstain_share and serves decisions and novelty. A corrupt checkpoint beside it exports the load failure.
    model_dir = make_checkpoint("mlp", calibrated=True).parent
    (make_checkpoint("mlp", name="broken") / "model.safetensors").write_bytes(b"not safetensors")
    with running_server(model_dir, tmp_path / "serve.log") as server:
        assert http("GET", server.url + "/healthz")[0] == 200
        texts = ["a wonderful film", "a boring mess of a film", "zzz qqq"]
        result = predict(server, texts, max_risk=0.1, model="tiny-mlp")
        assert all(p["decision"] is not None and p["novelty"] is not None for p in result["predictions"])
        status, body = http("GET", server.url + "/metrics")
    assert status == 200

    # sample name -> the label sets it is exported with
    exported: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            exported.setdefault(base_name(sample.name), []).append(dict(sample.labels))

    queries = referenced_queries()
    missing = sorted({base_name(m) for q in queries for m in METRIC_RE.findall(q)} - set(exported))
    assert not missing, f"queried but not exported by mcdrop serve: {missing}"

    problems: list[str] = []
    for query in queries:
        for metric, matchers in SELECTOR_RE.findall(query):
            series = exported[base_name(metric)]
            for label, op, value in MATCHER_RE.findall(matchers):
                if label in {"job", "instance", "namespace"}:
                    continue  # attached by Prometheus at scrape time
                if not any(label in labels for labels in series):
                    problems.append(f"{metric}: no label {label!r}")
                elif op == "=" and not value.startswith("$"):
                    values = {labels[label] for labels in series if label in labels}
                    # status classes only appear once a response of that class was sent
                    if value not in values and not (label == "status" and value in STATUS_CLASSES):
                        problems.append(f"{metric}{{{label}={value!r}}}: exported values are {sorted(values)}")
    assert not problems, "\n".join(problems)
