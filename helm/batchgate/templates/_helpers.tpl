{{/* The chart's name, or nameOverride. */}}
{{- define "batchgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Every object's name. At most 46 characters: a pod is named
<fullname>-<pod-template-hash, up to 10>-<5>, and Kubernetes truncates a
generated name's base to 58 characters, so a longer name would give pods the
scaling query (anchored to that shape) could not match.
*/}}
{{- define "batchgate.fullname" -}}
{{- $name := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $name = .Values.fullnameOverride -}}
{{- else -}}
{{- $base := include "batchgate.name" . -}}
{{- if contains $base .Release.Name -}}
{{- $name = .Release.Name -}}
{{- else -}}
{{- $name = printf "%s-%s" .Release.Name $base -}}
{{- end -}}
{{- end -}}
{{- $name = $name | trimSuffix "-" -}}
{{- if gt (len $name) 46 -}}
{{- fail (printf "batchgate: the name %q has %d characters; at most 46 keep pod names untruncated, which the scaling query relies on: set fullnameOverride" $name (len $name)) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "batchgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batchgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "batchgate.labels" -}}
{{ include "batchgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels for the Prometheus Operator's selectors: release: <kube-prometheus-stack's release>, then the object's own. */}}
{{- define "batchgate.monitorLabels" -}}
{{- $l := deepCopy (.labels | default dict) -}}
{{- with .root.Values.monitoring.prometheusRelease }}{{ $_ := set $l "release" . }}{{ end -}}
{{- if $l }}{{ toYaml $l }}{{ end -}}
{{- end -}}

{{/* An image reference; the tag defaults to the chart's appVersion. */}}
{{- define "batchgate.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
The PromQL selector of this release's pods in this namespace. The pod regex
is anchored to the Deployment's pod-name shape <fullname>-<rs hash>-<pod
hash>: a second release named <fullname>-v2 has pods
<fullname>-v2-<hash>-<hash>, which it does not match. (A "." in the name
is left unescaped: it matches itself, and any other character in that place.)
*/}}
{{- define "batchgate.podSelector" -}}
namespace="{{ .Release.Namespace }}",pod=~"{{ include "batchgate.fullname" . }}-[a-z0-9]+-[a-z0-9]+"
{{- end -}}

{{/*
The query KEDA scales on: total queue depth of this release's pods. max by
(namespace, pod) first, so that a pod scraped twice (a ServiceMonitor and a
PodMonitor, or annotations and a monitor) counts once.
*/}}
{{- define "batchgate.queueQuery" -}}
sum(max by (namespace, pod) (inference_queue_depth{ {{- include "batchgate.podSelector" . -}} }))
{{- end -}}

{{/* The routes that run inferences: the rejection ratio's denominator. */}}
{{- define "batchgate.inferenceRoutes" -}}
route=~"/predict|/v2/models/infer"
{{- end -}}

{{/* "true" when a PodMonitor is rendered: explicitly, or on "auto" where the cluster serves the API and no ServiceMonitor is asked for. */}}
{{- define "batchgate.podMonitor" -}}
{{- $pm := .Values.monitoring.podMonitor.enabled -}}
{{- if and (kindIs "bool" $pm) $pm -}}
true
{{- else if and (eq (toString $pm) "auto") (not .Values.monitoring.serviceMonitor.enabled) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor") -}}
true
{{- end -}}
{{- end -}}

{{/* Seconds the startup probe allows: model load + n(n+1)/2 warm-up images. */}}
{{- define "batchgate.startupSeconds" -}}
{{- $n := int .Values.runtime.maxBatchSize -}}
{{- $sp := .Values.runtime.startupProbe -}}
{{- addf (float64 $sp.modelLoadSeconds) (mulf (div (mul $n (add $n 1)) 2) (float64 $sp.secondsPerWarmupImage)) -}}
{{- end -}}

{{/* Cross-field checks the schema cannot express. */}}
{{- define "batchgate.validate" -}}
{{- $k := .Values.keda -}}
{{- if gt (int $k.minReplicas) (int $k.maxReplicas) -}}
{{- fail (printf "batchgate: keda.minReplicas %v > keda.maxReplicas %v" $k.minReplicas $k.maxReplicas) -}}
{{- end -}}
{{- if or (lt (int $k.fallback.replicas) (int $k.minReplicas)) (gt (int $k.fallback.replicas) (int $k.maxReplicas)) -}}
{{- fail (printf "batchgate: keda.fallback.replicas %v is outside keda.minReplicas..keda.maxReplicas (%v..%v)" $k.fallback.replicas $k.minReplicas $k.maxReplicas) -}}
{{- end -}}
{{- if gt (int .Values.hpa.minReplicas) (int .Values.hpa.maxReplicas) -}}
{{- fail (printf "batchgate: hpa.minReplicas %v > hpa.maxReplicas %v" .Values.hpa.minReplicas .Values.hpa.maxReplicas) -}}
{{- end -}}
{{- if lt (int .Values.runtime.maxBatchSize) (int .Values.proxy.maxBatchSize) -}}
{{- fail (printf "batchgate: runtime.maxBatchSize %v < proxy.maxBatchSize %v: the runtime would refuse the proxy's batches" .Values.runtime.maxBatchSize .Values.proxy.maxBatchSize) -}}
{{- end -}}
{{- $pm := .Values.monitoring.podMonitor.enabled -}}
{{- if and (kindIs "bool" $pm) $pm .Values.monitoring.serviceMonitor.enabled -}}
{{- fail "batchgate: monitoring.podMonitor.enabled and monitoring.serviceMonitor.enabled are both true: every pod would be scraped twice; choose one" -}}
{{- end -}}
{{- end -}}
