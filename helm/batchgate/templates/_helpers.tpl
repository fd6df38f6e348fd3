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
{{- if eq (int .Values.monitoring.metricsPort) (int .Values.service.port) -}}
{{- fail (printf "batchgate: monitoring.metricsPort %v equals service.port: the proxy serves /metrics on a port of its own (METRICS_PORT must differ from PORT)" .Values.monitoring.metricsPort) -}}
{{- end -}}
{{- $pm := .Values.monitoring.podMonitor.enabled -}}
{{- if and (kindIs "bool" $pm) $pm .Values.monitoring.serviceMonitor.enabled -}}
{{- fail "batchgate: monitoring.podMonitor.enabled and monitoring.serviceMonitor.enabled are both true: every pod would be scraped twice; choose one" -}}
{{- end -}}
{{- /* models: the routing file's rules (docs/versions.md) that the schema cannot check, here rather than in a crash-looping proxy. */ -}}
{{- if .Values.models -}}
{{- $seen := dict -}}
{{- $total := 0.0 -}}
{{- $shadows := list -}}
{{- range $i, $v := .Values.models -}}
{{- if hasKey $seen $v.version -}}
{{- fail (printf "batchgate: models[%d]: version %q is listed twice; each version needs its own name (its container, socket and metrics label)" $i $v.version) -}}
{{- end -}}
{{- $_ := set $seen $v.version true -}}
{{- $total = addf $total $v.weight -}}
{{- if $v.shadow }}{{ $shadows = append $shadows $v.version }}{{ end -}}
{{- end -}}
{{- if le $total 0.0 -}}
{{- fail "batchgate: every version in models has weight 0: at least one needs a weight above 0" -}}
{{- end -}}
{{- if gt (len $shadows) 1 -}}
{{- fail (printf "batchgate: models: versions %s all set shadow; at most one version is the shadow" (join ", " $shadows)) -}}
{{- end -}}
{{- end -}}
{{- with .Values.routing.sticky -}}
{{- if and .header .image -}}
{{- fail "batchgate: routing.sticky: set header or image, not both" -}}
{{- else if not (or .header .image) -}}
{{- fail "batchgate: routing.sticky: set header (such as X-User-Id) or image: true; {} for no sticky assignment" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The model that `source: download` fetches, as JSON {url, sha256}: model.url
and model.sha256 when set (both), otherwise the ONNX Model Zoo file pinned
for model.variant (the runtime's fetch-model pins, runtime/modelfetch).
*/}}
{{- define "batchgate.modelPin" -}}
{{- include "batchgate.pin" (dict "m" .Values.model "what" "model") -}}
{{- end -}}

{{/*
The pin of a model setting .m ({variant, url, sha256}) as JSON {url,
sha256}; .what names the setting in errors (model, models[1].model).
*/}}
{{- define "batchgate.pin" -}}
{{- $pins := dict
  "fp32" (dict "url" "https://github.com/onnx/models/raw/652f4e4af7975c8e7a505c4b6e0f8ac72d8260ea/vision/classification/resnet/model/resnet50-v1-12.onnx"
               "sha256" "ab65bdc02c5b3123eb3cdf6dac01742438517d8635d4f233913b2be1c70db3b6")
  "int8" (dict "url" "https://github.com/onnx/models/raw/4c46cd00fbdb7cd30b6c1c17ab54f2e1f4f7b177/validated/vision/classification/resnet/model/resnet50-v1-12-int8.onnx"
               "sha256" "c234f30975989788b4405f25253275aae247ab6dbdd34aaa69ab0a59ff76f6d0") -}}
{{- $m := .m -}}
{{- if and $m.url $m.sha256 -}}
{{- dict "url" $m.url "sha256" $m.sha256 | toJson -}}
{{- else if or $m.url $m.sha256 -}}
{{- fail (printf "batchgate: set both %[1]s.url and %[1]s.sha256, or neither (the model pinned for %[1]s.variant)" .what) -}}
{{- else -}}
{{- get $pins $m.variant | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The versions of `models` (docs/versions.md), resolved, as JSON {"list":
[...]}: each entry's version, weight, shadow and rollback, its socket in the
shared emptyDir (/sock/<version>.sock), and its model and runtime settings
with the defaults filled in: model.source and model.variant when the entry
does not set them, the pinned model of its variant unless it sets url and
sha256, runtime.image (overridden key by key) and runtime.resources. A
downloaded model lands at /models/<sha256>.onnx: content-addressed, so
versions and releases sharing a PVC never overwrite each other's. Empty
list: no `models`, the single runtime of `model`.
*/}}
{{- define "batchgate.versions" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $i, $v := .Values.models -}}
{{- $m := $v.model | default dict -}}
{{- $source := $m.source | default $root.Values.model.source -}}
{{- $variant := $m.variant | default $root.Values.model.variant -}}
{{- $r := dict "version" $v.version "weight" $v.weight "socket" (printf "/sock/%s.sock" $v.version)
  "variant" $variant "source" $source "modelPath" ""
  "image" (merge (deepCopy ($v.image | default dict)) $root.Values.runtime.image)
  "resources" ($v.resources | default $root.Values.runtime.resources) -}}
{{- if eq $source "download" -}}
{{- $pin := include "batchgate.pin" (dict "m" (dict "variant" $variant "url" $m.url "sha256" $m.sha256) "what" (printf "models[%d].model" $i)) | fromJson -}}
{{- $_ := set $r "pin" $pin -}}
{{- $_ := set $r "modelPath" (printf "/models/%s.onnx" $pin.sha256) -}}
{{- end -}}
{{- with $v.shadow }}{{ $_ := set $r "shadow" . }}{{ end -}}
{{- with $v.rollback }}{{ $_ := set $r "rollback" . }}{{ end -}}
{{- $out = append $out $r -}}
{{- end -}}
{{- dict "list" $out | toJson -}}
{{- end -}}

{{/*
The routing file (docs/versions.md, proxy/routing) of `models`: one model,
routing.modelName, with a version per entry. The chart's camelCase keys
become the file's snake_case ones.
*/}}
{{- define "batchgate.routingFile" -}}
{{- $r := .Values.routing -}}
{{- $model := dict "name" $r.modelName "share_cache" $r.shareCache -}}
{{- with $r.sticky }}{{ $_ := set $model "sticky" . }}{{ end -}}
{{- $keys := dict "window" "window" "minRequests" "min_requests" "maxErrorRate" "max_error_rate" "maxP99" "max_p99" "percent" "percent" "maxQueue" "max_queue" -}}
{{- $versions := list -}}
{{- range (include "batchgate.versions" . | fromJson).list -}}
{{- $e := dict "name" .version "socket" .socket "variant" .variant "weight" .weight -}}
{{- with .rollback -}}
{{- $rb := dict -}}
{{- range $k, $val := . }}{{ $_ := set $rb (get $keys $k) $val }}{{ end -}}
{{- $_ := set $e "rollback" $rb -}}
{{- end -}}
{{- with .shadow -}}
{{- $sh := dict "version" $e.name -}}
{{- range $k, $val := . }}{{ $_ := set $sh (get $keys $k) $val }}{{ end -}}
{{- $_ := set $model "shadow" $sh -}}
{{- end -}}
{{- $versions = append $versions $e -}}
{{- end -}}
{{- $_ := set $model "versions" $versions -}}
{{- dict "models" (list $model) | toYaml -}}
{{- end -}}

{{/*
The OpenTelemetry environment (docs/tracing.md) of one container, as env
entries; nothing while tracing.endpoint is empty. Takes a dict: root,
service (OTEL_SERVICE_NAME), container (its name), attrs (further resource
attributes of this container, a dict). OTEL_RESOURCE_ATTRIBUTES names the
namespace and pod through the downward API ($(VAR) expands env entries
defined above it), then the container, attrs and
tracing.resourceAttributes (which win on a clash), sorted by key.
OTEL_TRACES_SAMPLER_ARG goes with the ratio samplers only.
*/}}
{{- define "batchgate.tracingEnv" -}}
{{- $t := .root.Values.tracing -}}
{{- if $t.endpoint -}}
{{- $attrs := dict "k8s.namespace.name" "$(K8S_NAMESPACE_NAME)" "k8s.pod.name" "$(K8S_POD_NAME)" "k8s.container.name" .container -}}
{{- range $k, $v := .attrs }}{{ $_ := set $attrs $k (toString $v) }}{{ end -}}
{{- range $k, $v := $t.resourceAttributes }}{{ $_ := set $attrs $k (toString $v) }}{{ end -}}
{{- $pairs := list -}}
{{- range $k := keys $attrs | sortAlpha }}{{ $pairs = append $pairs (printf "%s=%s" $k (get $attrs $k)) }}{{ end -}}
- name: K8S_NAMESPACE_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: K8S_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ $t.endpoint | quote }}}
- {name: OTEL_SERVICE_NAME, value: {{ .service | quote }}}
- {name: OTEL_TRACES_SAMPLER, value: {{ $t.sampler | quote }}}
{{- if hasSuffix "traceidratio" $t.sampler }}
- {name: OTEL_TRACES_SAMPLER_ARG, value: {{ $t.ratio | toString | quote }}}
{{- end }}
- {name: OTEL_RESOURCE_ATTRIBUTES, value: {{ join "," $pairs | quote }}}
{{- end -}}
{{- end -}}

{{/*
A runtime container, as a native sidecar (an init container that keeps
running). The single runtime and every version of `models` are rendered
from it, so they share image settings, env (tracing included), probes and
security. Takes a dict: root, name, socket, image, resources, variant,
modelPath ("": the model baked into the image), cacheDir, modelName ("":
the runtime's own), version (with `models`: the version it serves).
*/}}
{{- define "batchgate.runtimeContainer" -}}
{{- $root := .root -}}
{{- $sp := $root.Values.runtime.startupProbe -}}
- name: {{ .name }}
  image: {{ include "batchgate.image" (dict "image" .image "root" $root) | quote }}
  imagePullPolicy: {{ .image.pullPolicy }}
  # A native sidecar: started (and startup-probed) before the proxy,
  # stopped only after the proxy has drained and exited.
  restartPolicy: Always
  env:
    - {name: RUNTIME_SOCKET, value: {{ .socket }}}
    - {name: MAX_BATCH_SIZE, value: {{ $root.Values.runtime.maxBatchSize | quote }}}
    - {name: INTRA_OP_THREADS, value: {{ $root.Values.runtime.threads | quote }}}
    - {name: ORT_CACHE_DIR, value: {{ .cacheDir }}}
    - {name: MODEL_VARIANT, value: {{ .variant | quote }}}
    {{- if .modelPath }}
    - {name: MODEL_PATH, value: {{ .modelPath }}}
    {{- end }}
    {{- with .modelName }}
    - {name: MODEL_NAME, value: {{ . | quote }}}
    {{- end }}
    {{- $attrs := dict "batchgate.model.variant" .variant -}}
    {{- with .version }}{{ $_ := set $attrs "batchgate.model.version" . }}{{ end -}}
    {{- with .modelName }}{{ $_ := set $attrs "batchgate.model.name" . }}{{ end -}}
    {{- with include "batchgate.tracingEnv" (dict "root" $root "service" "batchgate-runtime" "container" .name "attrs" $attrs) }}{{ . | nindent 4 }}{{ end }}
    {{- with $root.Values.runtime.extraEnv }}{{ toYaml . | nindent 4 }}{{ end }}
  # Ready means model loaded and every batch size warmed up; the
  # proxy starts only then. Budget: modelLoadSeconds + n(n+1)/2
  # warm-up images x secondsPerWarmupImage with n = maxBatchSize,
  # here {{ include "batchgate.startupSeconds" $root }} s. `runtime probe` waits up to
  # 2 s for the handshake: the 3 s timeout leaves it room.
  startupProbe:
    exec: {command: ["/usr/local/bin/runtime", "probe"]}
    periodSeconds: {{ $sp.periodSeconds }}
    timeoutSeconds: 3
    failureThreshold: {{ max 1 (ceil (divf (include "batchgate.startupSeconds" $root) $sp.periodSeconds) | int) }}
  # Liveness checks progress, not only the socket: `runtime probe`
  # fails when the executor has made no progress for
  # RUNTIME_STALL_TIMEOUT (4 s: a batch stuck in ONNX Runtime, or
  # batches waiting while none finishes) or the process does not
  # answer (stopped). The proxy's /readyz turns red on the same signal.
  # A runtime that fails liveness is stuck (or stopped, and a stopped
  # process ignores SIGTERM): it gets 5 s, not the pod's grace period
  # (sized for the proxy's drain), before SIGKILL. Measured on a real
  # node (helm TestRealNodeServing): SIGSTOP to restart ~40 s, ~80 s
  # with the pod's 45 s.
  livenessProbe:
    exec: {command: ["/usr/local/bin/runtime", "probe", "-timeout", "5s"]}
    periodSeconds: 10
    timeoutSeconds: 6
    failureThreshold: 3
    terminationGracePeriodSeconds: 5
  resources: {{- toYaml .resources | nindent 4 }}
  securityContext:
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: sock, mountPath: /sock}
    - {name: cache, mountPath: /cache}
    {{- if .modelPath }}
    - {name: models, mountPath: /models, readOnly: true}
    {{- end }}
{{- end -}}

{{/*
The init container that downloads a pinned model into the models volume.
Takes a dict: name, pin ({url, sha256}), file (its name in /models), root.
*/}}
{{- define "batchgate.fetchModelContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: "{{ $root.Values.model.downloaderImage.repository }}:{{ $root.Values.model.downloaderImage.tag }}"
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
  command:
    - sh
    - -c
    - |
      set -eu
      if [ -f /models/{{ .file }} ] && echo "{{ .pin.sha256 }}  /models/{{ .file }}" | sha256sum -c >/dev/null 2>&1; then exit 0; fi
      # Leftovers of pods killed mid-download (their trap never ran).
      find /models -maxdepth 1 -name '{{ .file }}.*.partial' -mmin +60 -exec rm -f {} + || true
      tmp="/models/{{ .file }}.$POD_NAME.partial"
      trap 'rm -f "$tmp"' EXIT
      curl -fsSL -o "$tmp" "{{ .pin.url }}"
      echo "{{ .pin.sha256 }}  $tmp" | sha256sum -c -
      mv -f "$tmp" /models/{{ .file }}
  resources: {{- toYaml $root.Values.model.downloaderResources | nindent 4 }}
  securityContext:
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities: {drop: [ALL]}
  volumeMounts:
    - {name: models, mountPath: /models}
{{- end -}}

{{/* The container the CPU HPA measures: the runtime, or with `models` the runtime of the first version with a weight above 0. */}}
{{- define "batchgate.hpaContainer" -}}
{{- $name := "runtime" -}}
{{- range .Values.models -}}
{{- if and (eq $name "runtime") (gt (float64 .weight) 0.0) }}{{ $name = printf "runtime-%s" .version }}{{ end -}}
{{- end -}}
{{- $name -}}
{{- end -}}
