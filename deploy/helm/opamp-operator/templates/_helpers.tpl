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

{{- define "opamp-operator.apiServiceHost" -}}
{{ include "opamp-operator.fullname" . }}-api.{{ .Release.Namespace }}.svc
{{- end }}

{{/* The URL template-mode Collectors (and NOTES.txt) are given: ws://, or wss:// with TLS. */}}
{{- define "opamp-operator.agentEndpoint" -}}
{{- $scheme := ternary "wss" "ws" .Values.opamp.tls.enabled }}
{{- default (printf "%s://%s:4320/v1/opamp" $scheme (include "opamp-operator.serviceHost" .)) .Values.operator.agentEndpoint }}
{{- end }}

{{/* The Secret with the agents' port certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "opamp-operator.opampTLSSecret" -}}
{{- default (printf "%s-opamp-tls" (include "opamp-operator.fullname" .)) .Values.opamp.tls.existingSecret }}
{{- end }}

{{/* Where that Secret is mounted in the operator's container. */}}
{{- define "opamp-operator.opampTLSDir" -}}
/opamp-tls
{{- end }}

{{/* Where the agents' port certificate comes from: certManager, existingSecret or helm. */}}
{{- define "opamp-operator.opampTLSSource" -}}
{{- $tls := .Values.opamp.tls }}
{{- if $tls.certManager.enabled }}certManager
{{- else if $tls.existingSecret }}existingSecret
{{- else }}helm
{{- end }}
{{- end }}

{{/* Whether the Secret's ca.crt is the chart's own CA, which template-mode Collectors are
given (`run --agent-ca-file`); a CA of yours may be anywhere, or a public one. */}}
{{- define "opamp-operator.givesAgentsCA" -}}
{{- $source := include "opamp-operator.opampTLSSource" . }}
{{- if and .Values.opamp.tls.enabled (or (eq $source "helm") (and (eq $source "certManager") (not .Values.opamp.tls.certManager.issuerRef))) }}true{{ end }}
{{- end }}

{{/* The DNS names of the agents' port certificate (JSON list): the OpAMP Service's, the
API Service's when it shares the certificate, localhost (port-forward, kind's node port)
and opamp.tls.dnsNames. */}}
{{- define "opamp-operator.opampCertNames" -}}
{{- $fullname := include "opamp-operator.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $services := list $fullname }}
{{- if .Values.api.useOpampCertificate }}
{{- $services = append $services (printf "%s-api" $fullname) }}
{{- end }}
{{- $names := list }}
{{- range $services }}
{{- $names = concat $names (list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.cluster.local" . $ns)) }}
{{- end }}
{{- concat $names (list "localhost") .Values.opamp.tls.dnsNames | toJson }}
{{- end }}

{{/* Its IP addresses (JSON list): 127.0.0.1 and opamp.tls.ipAddresses. */}}
{{- define "opamp-operator.opampCertIPs" -}}
{{- concat (list "127.0.0.1") .Values.opamp.tls.ipAddresses | toJson }}
{{- end }}

{{/* Values that cannot work together: fail with what to change. */}}
{{- define "opamp-operator.validate" -}}
{{- $tls := .Values.opamp.tls }}
{{- if $tls.enabled }}
{{- if and $tls.certManager.enabled $tls.existingSecret }}
{{- fail "opamp.tls: set either certManager.enabled or existingSecret, not both" }}
{{- end }}
{{- if and (eq (include "opamp-operator.opampTLSSource" .) "helm") (ne $tls.clientAuth "none") }}
{{- fail "opamp.tls.clientAuth needs opamp.tls.certManager.enabled=true or opamp.tls.existingSecret: Helm's CA key is not kept, so it cannot sign agents' client certificates" }}
{{- end }}
{{- else if ne $tls.clientAuth "none" }}
{{- fail "opamp.tls.clientAuth needs opamp.tls.enabled (client certificates need TLS)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.api.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs api.service.enabled" }}
{{- end }}
{{- end }}

{{/* A self-signed cert-manager Issuer is made when a Certificate has no issuerRef. */}}
{{- define "opamp-operator.selfSignedIssuer" -}}
{{- $hook := and .Values.webhook.enabled .Values.webhook.certManager.enabled (not .Values.webhook.certManager.issuerRef) }}
{{- $opamp := and .Values.opamp.tls.enabled .Values.opamp.tls.certManager.enabled (not .Values.opamp.tls.certManager.issuerRef) }}
{{- if or $hook $opamp }}true{{ end }}
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

{{/*
The namespaces the operator watches, as a JSON list: the one place the install's mode is
decided, read (`include ... | fromJsonArray`) by every template that depends on it (the
`--namespace` args, the Roles and the ClusterRole's rules, the peering rules, the webhook's
namespaceSelector, NOTES.txt), so they cannot disagree.
  clusterWide: true   -> [] (a cluster-wide install: one ClusterRole, every namespace);
                         watchNamespaces must then be empty
  watchNamespaces set -> those namespaces (a Role in each)
  neither             -> [the release namespace] (the default: least privilege)
*/}}
{{- define "opamp-operator.watchedNamespaces" -}}
{{- if .Values.clusterWide }}
{{- if .Values.watchNamespaces }}
{{- fail (printf "clusterWide=true watches every namespace, so watchNamespaces must be empty (it is %s): set clusterWide=false to watch only those namespaces, or empty watchNamespaces for a cluster-wide install" (toJson .Values.watchNamespaces)) }}
{{- end }}
{{- list | toJson }}
{{- else }}
{{- default (list .Release.Namespace) .Values.watchNamespaces | toJson }}
{{- end }}
{{- end }}

{{/*
The namespaced permissions, shared by the ClusterRole (cluster-wide install) and every
Role (namespaced install, the default). Each rule's reason is in docs/helm.md.
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
  verbs: [list, watch{{ if .Values.templateMode.enabled }}, delete{{ end }}]
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
{{- if and (gt (int .Values.replicas) 1) (include "opamp-operator.watchedNamespaces" . | fromJsonArray) }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, create, patch]
{{- end }}
{{- end }}
