{{/* The chart's name, or nameOverride. */}}
{{- define "fleetlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else the release name (with the chart's
name added unless the release name already contains it). At most 40 characters, so that
suffixes such as "-operator" keep names within 63.
*/}}
{{- define "fleetlm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := include "fleetlm.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fleetlm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: include "fleetlm.selectorLabels" (list . "operator") */}}
{{- define "fleetlm.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "fleetlm.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's objects: include "fleetlm.labels" (list . "operator") */}}
{{- define "fleetlm.labels" -}}
{{ include "fleetlm.selectorLabels" . }}
{{- $root := index . 0 }}
app.kubernetes.io/part-of: fleetlm
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "fleetlm.chart" $root }}
{{- end }}

{{/* repository:tag of one of .Values.image: include "fleetlm.image" (list . .Values.image.router) */}}
{{- define "fleetlm.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "fleetlm.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "fleetlm.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Redis the engines and routers share: the chart's own, or redis.url. */}}
{{- define "fleetlm.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "fleetlm.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "redis.url is required when redis.enabled is false (e.g. redis://redis.example:6379/0)" .Values.redis.url }}
{{- end }}
{{- end }}

{{/* The securityContext of every container of this chart. */}}
{{- define "fleetlm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
