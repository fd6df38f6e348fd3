{{- define "batchgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "batchgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "batchgate.labels" -}}
{{ include "batchgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The PromQL for this release's pods in this namespace. */}}
{{- define "batchgate.podSelector" -}}
namespace="{{ .Release.Namespace }}",pod=~"{{ include "batchgate.fullname" . }}-.*"
{{- end -}}

{{/* The query KEDA scales on: total queue depth of this release's pods. */}}
{{- define "batchgate.queueQuery" -}}
sum(inference_queue_depth{ {{- include "batchgate.podSelector" . -}} })
{{- end -}}
