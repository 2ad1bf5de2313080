{{- define "kfo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kfo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
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

{{- /* The operator image: by digest when image.digest is set, else by tag. */ -}}
{{- define "kfo.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
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

{{/*
The rules on namespaced resources: in the ClusterRole, or with watchNamespace in a Role there.
*/}}
{{- define "kfo.namespacedRules" -}}
- apiGroups: ["fallback.kong-dp.io"]
  resources: ["fallbackconfigpolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["fallback.kong-dp.io"]
  resources: ["fallbackconfigpolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.rollout }}
# dataPlanes.rollout: find a pod's workload, dry-run the injection on one of its pods,
# read and record the pacing annotation, restart it. Off unless a user wants rollouts.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]

{{- end }}
{{- end }}
