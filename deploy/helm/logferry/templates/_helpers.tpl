{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "logferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified release name. */}}
{{- define "logferry.fullname" -}}
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

{{- define "logferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every object. */}}
{{- define "logferry.labels" -}}
helm.sh/chart: {{ include "logferry.chart" . }}
app.kubernetes.io/name: {{ include "logferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "agent"). */}}
{{- define "logferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "logferry.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "logferry.backend.fullname" -}}
{{- printf "%s-backend" (include "logferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "logferry.agent.fullname" -}}
{{- printf "%s-agent" (include "logferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "logferry.backend.image" -}}
{{- printf "%s:%s" .Values.backend.image.repository (default .Chart.AppVersion .Values.backend.image.tag) -}}
{{- end -}}

{{- define "logferry.agent.image" -}}
{{- printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) -}}
{{- end -}}

{{/* Backend address the agents use. */}}
{{- define "logferry.agent.endpoint" -}}
{{- if .Values.agent.endpoint -}}
{{- .Values.agent.endpoint -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%v" (include "logferry.backend.fullname" .) .Release.Namespace .Values.backend.port -}}
{{- end -}}
{{- end -}}

{{/* Name expected in the backend's certificate; empty means the endpoint's host. */}}
{{- define "logferry.agent.tlsServerName" -}}
{{- if .Values.agent.tls.serverName -}}
{{- .Values.agent.tls.serverName -}}
{{- else if and (not .Values.backend.tls.secretName) (not .Values.agent.endpoint) -}}
localhost
{{- end -}}
{{- end -}}

{{- define "logferry.agent.credentialsSecret" -}}
{{- default (include "logferry.agent.fullname" .) .Values.agent.credentials.secretName -}}
{{- end -}}

{{- define "logferry.agent.caConfigMap" -}}
{{- default (printf "%s-ca" (include "logferry.fullname" .)) .Values.agent.tls.caConfigMapName -}}
{{- end -}}

{{- define "logferry.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "logferry.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the plugin reads its token: the Secret volume's mount path plus the key. */}}
{{- define "logferry.agent.tokenFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.agent.credentials.mountPath) .Values.agent.credentials.tokenKey -}}
{{- end -}}

{{- define "logferry.agent.caFile" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.agent.tls.caMountPath) .Values.agent.tls.caKey -}}
{{- end -}}
