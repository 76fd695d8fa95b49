{{/* Names, labels and image references shared by the templates. */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name, plus the chart name unless it already contains it ("kubetune" -> kubetune-operator). */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.operatorName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- default (include "kubetune.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selects the operator pods; never matches trainer pods (app.kubernetes.io/name: kubetune-trainer). A selector is
immutable, so it holds no value that may change between upgrades (nameOverride): the chart's own name. */}}
{{- define "kubetune.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.operatorLabels" -}}
{{ include "kubetune.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* repository@digest when a digest is given, else repository:tag (tag defaults to the appVersion). */}}
{{- define "kubetune.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces that get the trainer ServiceAccount. */}}
{{- define "kubetune.trainerNamespaces" -}}
{{- $ns := .Values.trainer.serviceAccount.namespaces | default .Values.watchNamespaces -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* Refuses value combinations the schema cannot express. */}}
{{- define "kubetune.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaces") (not .Values.watchNamespaces) -}}
{{- fail "rbac.scope=namespaces needs watchNamespaces: the namespaces to grant the operator Roles in" -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicas > 1 needs leaderElection.enabled=true: replicas without the Lease would reconcile at once" -}}
{{- end -}}
{{- end -}}
