{{/* Labels every object carries. Names are fixed (one installation per cluster: the CSIDriver
csi.wimsey.dev is cluster-wide, and the plugin finds the node API through its Service's name). */}}
{{- define "wimsey.labels" -}}
app.kubernetes.io/part-of: wimsey
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "wimsey.operatorSelector" -}}
app.kubernetes.io/name: wimsey-operator
{{- end }}

{{- define "wimsey.csiSelector" -}}
app.kubernetes.io/name: wimsey-csi
{{- end }}

{{/* registry/repository:tag[@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "wimsey.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $ref := printf "%s/%s:%s" $root.Values.image.registry $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- if $image.digest -}}
{{- $ref = printf "%s@%s" $ref $image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end }}

{{/* The operator's config file (operator/src/config.rs FileConfig). */}}
{{- define "wimsey.operatorConfig" -}}
{{- $ignore := .Values.ignoreNamespaces | default list -}}
{{- if not (has .Release.Namespace $ignore) -}}
{{- $ignore = append $ignore .Release.Namespace -}}
{{- end -}}
backend: {{ .Values.backend }}
{{- with .Values.clusterDomain }}
clusterDomain: {{ . | quote }}
{{- end }}
{{- with .Values.className }}
className: {{ . | quote }}
{{- end }}
{{- if .Values.watchClassless }}
watchClassless: true
{{- end }}
ignoreNamespaces:
{{- range $ignore }}
  - {{ . | quote }}
{{- end }}
{{- with .Values.parentIDTemplate }}
parentIDTemplate: {{ . | quote }}
{{- end }}
{{- with .Values.entryIDPrefix }}
entryIDPrefix: {{ . | quote }}
{{- end }}
{{- with .Values.svid.defaultX509TTL }}
defaultX509SVIDTTL: {{ . | quote }}
{{- end }}
{{- with .Values.svid.defaultJWTTTL }}
defaultJWTSVIDTTL: {{ . | quote }}
{{- end }}
{{- if eq .Values.backend "spire" }}
{{- $spire := .Values.spire }}
spireServerSocketPath: {{ $spire.serverSocketPath | quote }}
{{- if or $spire.driftCheckInterval $spire.createBatchSize $spire.updateBatchSize $spire.deleteBatchSize $spire.listPageSize }}
spireSync:
  {{- with $spire.driftCheckInterval }}
  driftCheckInterval: {{ . | quote }}
  {{- end }}
  {{- range $key := list "createBatchSize" "updateBatchSize" "deleteBatchSize" "listPageSize" }}
  {{- with index $spire $key }}
  {{ $key }}: {{ . }}
  {{- end }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}
