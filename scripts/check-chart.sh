#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint, helm template with default and with every option
# turned on, validation of the rendered manifests (the uninstall hook included) against the
# Kubernetes schemas (kubernetes-validate, which carries them), refusal of bad values by
# values.schema.json, that deploy/kubernetes/snapback.yaml and the chart's CRDs are up to date,
# and the lifecycle promises: every CRD kept on uninstall and carrying exactly the generated
# schema, the finalizer-releasing hook present with its own least-privilege RBAC, and the
# admission policy that keeps each agent to its own node's objects.
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
  # Without the uninstall hook: kubectl apply would run its Job at once (releasing the
  # finalizers of a running installation), and no kubectl delete ever runs it.
  "$HELM" template snapback "$CHART" --namespace snapback-system --no-hooks
}

# How many YAML documents of kind $1 in file $2 hold a line containing $3 (any, without $3).
count_docs() {
  awk -v kind="kind: $1" -v text="${3:-}" '
    function flush() { if (is_kind && (text == "" || has_text)) n++; is_kind = 0; has_text = 0 }
    /^---/ { flush(); next }
    $0 == kind { is_kind = 1 }
    text != "" && index($0, text) { has_text = 1 }
    END { flush(); print n + 0 }' "$2"
}

# A rendered templates/crds.yaml without the lines the template adds below each top-level
# metadata: (the keep annotation and the chart's labels) and Helm's "# Source:" comments:
# what is left must be files/crds.yaml byte for byte.
strip_added_crd_lines() {
  awk '
    /^# Source: / { next }
    below_metadata && (/^  (annotations|labels):$/ || /^    /) { next }
    { below_metadata = 0 }
    /^metadata:$/ { below_metadata = 1 }
    { print }'
}

fail() { log "$*"; exit 1; }

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
# The default render with its hooks, as `helm install` would create them.
"$HELM" template snapback "$CHART" --namespace snapback-system > "$work/default.yaml"
"$HELM" template all "$CHART" --namespace backup-ops \
  --set crds.install=false --set watchNamespace=vms --set 'rbac.secretNamespaces={vms,infra}' \
  --set metrics.serviceMonitor.enabled=true --set controller.podDisruptionBudget.enabled=false \
  --set controller.serviceAccount.create=false --set controller.serviceAccount.name=existing \
  --set 'agent.tolerations[0].operator=Exists' --set 'agent.hostPaths.images={/srv/vm,/data/vm}' \
  --set kubevirt.enabled=true --set kubevirt.worker.backupStorageClass=fast \
  --set agent.maxConcurrentRuns=4 --set agent.stagingBudget=20Gi \
  --set agent.hostPaths.browse=/srv/points --set agent.securityContext.privileged=true \
  > "$work/options.yaml"
for f in "$work/default.yaml" "$work/options.yaml"; do
  "$VALIDATE" --strict --quiet "$f"
done
# The option render must really carry the options.
grep -q 'kind: ServiceMonitor' "$work/options.yaml"
grep -q 'namespace: infra' "$work/options.yaml"
grep -q -- '--backup-storage-class=fast' "$work/options.yaml"
grep -q -- '--max-concurrent-runs=4' "$work/options.yaml"
grep -q -- '--staging-budget=20Gi' "$work/options.yaml"
grep -q 'mountPropagation: Bidirectional' "$work/options.yaml"
if grep -q 'kind: CustomResourceDefinition' "$work/options.yaml"; then
  log "crds.install=false still rendered CRDs"
  exit 1
fi
[ "$(grep -c 'kind: CustomResourceDefinition' "$work/default.yaml")" = 5 ]

# CRDs: every one survives helm uninstall, and the chart installs exactly what `snapback crd`
# generates (crds/snapback.yaml, compared with files/crds.yaml above).
[ "$(count_docs CustomResourceDefinition "$work/default.yaml" 'helm.sh/resource-policy: keep')" = 5 ] ||
  fail "a CRD in the default render lacks helm.sh/resource-policy: keep"
"$HELM" template snapback "$CHART" --namespace snapback-system --show-only templates/crds.yaml |
  strip_added_crd_lines | cmp - "$CHART/files/crds.yaml" ||
  fail "the rendered CRDs differ from files/crds.yaml by more than the added annotation and labels"

# The uninstall hook: a Job running release-finalizers before and after the release's
# resources go, and its own ServiceAccount, ClusterRole and binding, created before it.
hook='helm.sh/hook: pre-delete,post-delete'
policy='helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded'
[ "$(count_docs Job "$work/default.yaml" "$hook")" = 1 ] || fail "no pre-delete/post-delete hook Job"
[ "$(count_docs Job "$work/default.yaml" "$policy")" = 1 ] || fail "the hook Job's delete policy is wrong"
[ "$(count_docs Job "$work/default.yaml" '- release-finalizers')" = 1 ] ||
  fail "the hook Job does not run release-finalizers"
for kind in ServiceAccount ClusterRole ClusterRoleBinding; do
  [ "$(count_docs "$kind" "$work/default.yaml" 'helm.sh/hook-weight: "-10"')" = 1 ] ||
    fail "the hook's $kind is missing or not weighted before the Job"
  [ "$(count_docs "$kind" "$work/default.yaml" "$policy")" = 1 ] ||
    fail "the hook's $kind has the wrong delete policy"
done
# Least privilege: one rule, read and update of the three kinds that carry finalizers.
"$HELM" template snapback "$CHART" --namespace snapback-system \
  --show-only templates/release-finalizers.yaml > "$work/hook.yaml"
rules=$(awk '/^---/ { c = 0; r = 0 } /^kind: ClusterRole$/ { c = 1 } r; c && /^rules:$/ { r = 1 }' \
  "$work/hook.yaml")
[ "$rules" = "  - apiGroups: [snapback.dev]
    resources: [backuppolicies, backupruns, restorerequests]
    verbs: [get, list, update]" ] || fail "the hook's ClusterRole grants more than it needs: $rules"
if grep -q 'helm.sh/hook' "$RENDERED"; then
  fail "$RENDERED (for kubectl apply) carries a Helm hook"
fi
for off in rbac.create=false uninstall.releaseFinalizers=false; do
  if "$HELM" template snapback "$CHART" --set "$off" | grep -q 'helm.sh/hook'; then
    fail "$off still renders the uninstall hook"
  fi
done

# agent.restrictToOwnNode: the admission policy that narrows each agent to its node's objects
# is rendered by default (offline Helm assumes a recent Kubernetes), bound with Deny, and names
# the release's agent ServiceAccount; it is left out when turned off, without RBAC, and before
# Kubernetes 1.30.
for f in "$work/default.yaml" "$work/options.yaml"; do
  [ "$(count_docs ValidatingAdmissionPolicy "$f")" = 1 ] || fail "no agent admission policy in $f"
  [ "$(count_docs ValidatingAdmissionPolicyBinding "$f" 'validationActions: [Deny]')" = 1 ] ||
    fail "the agent admission policy is not bound with Deny in $f"
done
[ "$(count_docs ValidatingAdmissionPolicy "$work/default.yaml" \
  "'system:serviceaccount:snapback-system:snapback-agent'")" = 1 ] ||
  fail "the agent admission policy does not match the agent's ServiceAccount"
[ "$(count_docs ValidatingAdmissionPolicy "$work/options.yaml" \
  "'system:serviceaccount:backup-ops:all-snapback-agent'")" = 1 ] ||
  fail "the agent admission policy does not follow the release's names"
for off in "--set agent.restrictToOwnNode=false" "--set rbac.create=false" "--kube-version 1.29.0"; do
  # shellcheck disable=SC2086
  if "$HELM" template snapback "$CHART" $off | grep -q 'kind: ValidatingAdmissionPolicy'; then
    fail "$off still renders the agent admission policy"
  fi
done

# rbac.secretNamespaces: offline (no cluster for lookup) every listed namespace gets its Role.
for ns in vms infra; do
  [ "$(count_docs Role "$work/options.yaml" "namespace: $ns")" = 1 ] ||
    fail "no Secrets Role rendered in the listed namespace $ns"
done

# values.schema.json refuses bad values.
# agent.hostPaths.browse without a privileged container: the chart fails with the reason.
for bad in controller.replicas=two agent.hostPaths.state=relative image.pullPolicy=Sometimes \
  agent.restrictToOwnNode=maybe agent.maxConcurrentRuns=0 agent.stagingBudget=lots \
  agent.hostPaths.browse=/srv/points agent.hostPaths.browse=relative; do
  if "$HELM" template bad "$CHART" --set "$bad" >/dev/null 2>&1; then
    log "values.schema.json accepted $bad"
    exit 1
  fi
done
log "chart OK"
