{{/* The chart's name, overridable. */}}
{{- define "opamp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object it creates. */}}
{{- define "opamp-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "opamp-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "opamp-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "opamp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opamp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "opamp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "opamp-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The in-cluster DNS name of the OpAMP Service (also the webhook certificate's name). */}}
{{- define "opamp-operator.serviceHost" -}}
{{ include "opamp-operator.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{- define "opamp-operator.webhookServiceHost" -}}
{{ include "opamp-operator.fullname" . }}-webhook.{{ .Release.Namespace }}.svc
{{- end }}

{{- define "opamp-operator.webhookSecret" -}}
{{ include "opamp-operator.fullname" . }}-webhook-tls
{{- end }}

{{- define "opamp-operator.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The namespaces that get a Role: the watched ones, or none for a cluster-wide install. */}}
{{- define "opamp-operator.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The namespaced permissions, shared by the ClusterRole (cluster-wide install) and every
Role (namespaced install). Each rule's reason is in docs/helm.md.
*/}}
{{- define "opamp-operator.namespacedRules" -}}
- apiGroups: [opampoperator.io]
  resources: [collectorfleets]
  verbs: [get, list, watch, patch]
- apiGroups: [opampoperator.io]
  resources: [configrollouts]
  verbs: [list, watch, patch]
- apiGroups: [opampoperator.io]
  resources: [collectorfleets/status, configrollouts/status]
  verbs: [patch]
- apiGroups: [opampoperator.io]
  resources: [collectorfleets/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch{{ if .Values.templateMode.enabled }}, create, patch, delete{{ end }}]
- apiGroups: [""]
  resources: [secrets]
  {{- with .Values.tokenSecrets.resourceNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [get, list, create, delete]
{{- if .Values.templateMode.enabled }}
- apiGroups: [apps]
  resources: [deployments, daemonsets]
  verbs: [get, create, patch, delete]
{{- end }}
{{- if and (gt (int .Values.replicas) 1) .Values.watchNamespaces }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, create, patch]
{{- end }}
{{- end }}
