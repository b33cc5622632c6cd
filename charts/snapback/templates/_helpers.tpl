{{- define "snapback.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "snapback.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "snapback.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "snapback.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "snapback.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "snapback.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "snapback.selector" -}}
app.kubernetes.io/name: {{ include "snapback.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "snapback.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "snapback.controllerServiceAccount" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "snapback.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "snapback.agentServiceAccount" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (printf "%s-agent" (include "snapback.fullname" .)) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "snapback.kubevirtWorkerServiceAccount" -}}
{{- if .Values.kubevirt.worker.serviceAccount.create }}
{{- default (printf "%s-kubevirt-worker" (include "snapback.fullname" .)) .Values.kubevirt.worker.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.kubevirt.worker.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Environment both processes share. */}}
{{- define "snapback.commonEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: SNAPBACK_LOG
  value: {{ .Values.logging.level | quote }}
{{- with .Values.watchNamespace }}
- name: SNAPBACK_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The namespaces whose Secrets the agent gets a Role for, as JSON:
{"render": [namespaces to render a Role in], "missing": [listed, but not there]}.
A Role in a namespace that does not exist fails the whole install, and Helm has no way to
create a resource only if its namespace exists. So against a real apiserver the listed
namespaces are looked up: one that does not exist (or is being deleted) gets no Role now, is
named in the install notes, and gets its Role at the first `helm upgrade` after it exists.
Creating the namespaces instead would make the release own them: an uninstall would delete
them with everything in them, and a namespace that already exists could not be installed over.
Offline (helm template, --dry-run=client) lookup answers nothing, which cannot be told apart
from a namespace that is missing, so a probe of kube-system (which every cluster has) tells
the two apart: offline every listed namespace is rendered, so that rendered manifests (and
the RBAC read from them) show the whole intent. The release namespace is never looked up:
with --create-namespace it does not exist yet while the chart is rendered, and Helm creates it
before any resource. Only lists naming another namespace look anything up, so the default
install needs no right to read namespaces.
*/}}
{{- define "snapback.secretNamespaces" -}}
{{- $nss := .Values.rbac.secretNamespaces | default (list .Release.Namespace) | uniq }}
{{- $online := false }}
{{- if without $nss .Release.Namespace }}
{{- $online = not (empty (lookup "v1" "Namespace" "" "kube-system")) }}
{{- end }}
{{- $render := list }}
{{- $missing := list }}
{{- range $ns := $nss }}
{{- if or (not $online) (eq $ns $.Release.Namespace) }}
{{- $render = append $render $ns }}
{{- else if eq (dig "status" "phase" "" (lookup "v1" "Namespace" "" $ns)) "Active" }}
{{- $render = append $render $ns }}
{{- else }}
{{- $missing = append $missing $ns }}
{{- end }}
{{- end }}
{{- toJson (dict "render" $render "missing" $missing) }}
{{- end }}
