{{- define "kfo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kfo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kfo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kfo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kfo.labels" -}}
{{ include "kfo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kfo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kfo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kfo.webhookService" -}}
{{- printf "%s-webhook" (include "kfo.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kfo.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "kfo.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The pod and container security contexts of the Deployment and the cleanup Job: the
"restricted" Pod Security Standard. */ -}}
{{- define "kfo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kfo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
