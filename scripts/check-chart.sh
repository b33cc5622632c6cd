#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint, helm template with default and with every option
# turned on, validation of the rendered manifests against the Kubernetes schemas
# (kubernetes-validate, which carries them), refusal of bad values by values.schema.json, and
# that deploy/kubernetes/snapback.yaml and the chart's CRDs are up to date.
# Usage: scripts/check-chart.sh [--write]   (--write regenerates the rendered files)
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${SNAPBACK_TOOLS:-/var/tmp/snapback-tools}
log() { echo "[check-chart] $*" >&2; }

# helm v4 and kubernetes-validate are installed by scripts/setup-host.sh, pinned in scripts/pins/.
HELM="$TOOLS/bin/helm"
VALIDATE="$TOOLS/bin/kubernetes-validate"
for t in "$HELM" "$VALIDATE"; do
  [ -x "$t" ] || { log "$t is missing: run scripts/setup-host.sh first"; exit 1; }
done

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
  "$VALIDATE" --strict --quiet "$f"
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
