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

{{/* The ConfigMap holding the tenant registry: an existing one, or the chart's. */}}
{{- define "logferry.backend.tenantsConfigMap" -}}
{{- default (include "logferry.backend.fullname" .) .Values.backend.tenants.existingConfigMap -}}
{{- end -}}

{{/* The key of the registry in that ConfigMap. */}}
{{- define "logferry.backend.tenantsKey" -}}
{{- if .Values.backend.tenants.existingConfigMap -}}
{{- default "tenants.yaml" .Values.backend.tenants.existingConfigMapKey -}}
{{- else -}}
tenants.yaml
{{- end -}}
{{- end -}}

{{/*
The Secret with the backend's keys: backend.keys.existingSecret, or the chart's own
when keys are given inline; empty when neither (keys are then generated on the PVC).
Fails on contradictory values.
*/}}
{{- define "logferry.backend.keysSecret" -}}
{{- $keys := .Values.backend.keys -}}
{{- $inline := or $keys.signingKey $keys.signingPublicKey -}}
{{- if and $keys.existingSecret $inline -}}
{{- fail "backend.keys: set existingSecret or the inline signingKey/signingPublicKey, not both" -}}
{{- end -}}
{{- if $keys.existingSecret -}}
{{- range $keys.tenantKeys -}}
{{- if .value -}}
{{- fail (printf "backend.keys.tenantKeys: %s/%v has an inline value, but the keys come from existingSecret %s; put it in that Secret" .tenant .id $keys.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- $keys.existingSecret -}}
{{- else if $inline -}}
{{- if not (and $keys.signingKey $keys.signingPublicKey) -}}
{{- fail "backend.keys: signingKey and signingPublicKey go together (the backend cannot write the missing one into the read-only Secret mount)" -}}
{{- end -}}
{{- range $keys.tenantKeys -}}
{{- if not .value -}}
{{- fail (printf "backend.keys.tenantKeys: %s/%v needs a value (the base64 key file of `logferry keys generate`) when the chart creates the Secret" .tenant .id) -}}
{{- end -}}
{{- end -}}
{{- printf "%s-keys" (include "logferry.backend.fullname" .) -}}
{{- else if $keys.tenantKeys -}}
{{- fail "backend.keys.tenantKeys needs backend.keys.existingSecret or the inline signing key pair: the Secret mounted at /data/keys must hold the signing key too" -}}
{{- end -}}
{{- end -}}

{{/* Secret key of a tenant's decryption key: include with one backend.keys.tenantKeys entry. */}}
{{- define "logferry.backend.tenantKeySecretKey" -}}
{{- default (printf "tenant.%s.%d.key" .tenant (int64 .id)) .secretKey -}}
{{- end -}}
