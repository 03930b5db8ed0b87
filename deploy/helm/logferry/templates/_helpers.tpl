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

{{- define "logferry.ingest.fullname" -}}
{{- printf "%s-ingest" (include "logferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "logferry.route.fullname" -}}
{{- printf "%s-route" (include "logferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "logferry.kafkaInit.fullname" -}}
{{- printf "%s-kafka-init" (include "logferry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "true" in kafka mode (ingest + route against Kafka), empty in embedded mode. */}}
{{- define "logferry.kafkaMode" -}}
{{- if eq (.Values.mode | default "embedded") "kafka" -}}true{{- end -}}
{{- end -}}

{{/* The Service the agents send to: the backend's (embedded) or ingest's (kafka). */}}
{{- define "logferry.backend.serviceName" -}}
{{- if include "logferry.kafkaMode" . -}}
{{- include "logferry.ingest.fullname" . -}}
{{- else -}}
{{- include "logferry.backend.fullname" . -}}
{{- end -}}
{{- end -}}

{{/*
Label carried by every pod that serves the backend's /metrics (the StatefulSet's in
embedded mode; ingest and route in kafka mode): the metrics Service selects on it.
*/}}
{{- define "logferry.backend.metricsPodLabels" -}}
app.kubernetes.io/name: {{ include "logferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: logferry-backend
{{- end -}}

{{/*
Kafka mode's requirements; renders nothing, fails with the reason otherwise. Included
by every kafka-mode template.
*/}}
{{- define "logferry.kafka.validate" -}}
{{- if not (trim (toString .Values.kafka.brokers)) -}}
{{- fail "mode=kafka needs kafka.brokers: the Kafka bootstrap brokers, host:port[,host:port...] (e.g. --set kafka.brokers=kafka-0.kafka:9092)" -}}
{{- end -}}
{{- if not (include "logferry.backend.keysSecret" .) -}}
{{- fail "mode=kafka needs backend.keys.existingSecret (or the inline backend.keys.signingKey/signingPublicKey): every ingest replica verifies tokens and every router signs checkpoints with the same signing key, and routers read the tenants' decryption keys from it; no pod can generate them on a volume the others see" -}}
{{- end -}}
{{- if not .Values.backend.tls.secretName -}}
{{- fail "mode=kafka needs backend.tls.secretName: a kubernetes.io/tls Secret for the ingest Service's name; without one every ingest replica would create a development CA of its own, which the agents cannot trust" -}}
{{- end -}}
{{- end -}}

{{/*
The Kafka flags shared by ingest, route and kafka init, as YAML list items (include
with nindent at the args' indentation).
*/}}
{{- define "logferry.kafka.args" -}}
- --kafka-brokers
- {{ .Values.kafka.brokers | toString | quote }}
- --kafka-topic
- {{ .Values.kafka.topic | toString | quote }}
{{- range $name, $value := .Values.kafka.properties }}
{{- /* Numbers from a values file arrive as float64, which %v would print as 1e+06. */}}
{{- if kindIs "float64" $value }}{{ $value = int64 $value }}{{ end }}
- --kafka-property
- {{ printf "%s=%v" $name $value | quote }}
{{- end }}
{{- if .Values.kafka.propertiesSecret }}
- --kafka-properties-file
- /etc/logferry/kafka/client.properties
{{- end }}
{{- end -}}

{{/*
The kafka.propertiesSecret mount of ingest, route and kafka init, and its volume:
empty without one. Include with `trim | nindent` at the volumeMounts' (volumes')
indentation.
*/}}
{{- define "logferry.kafka.propertiesMount" -}}
{{- if .Values.kafka.propertiesSecret }}
# librdkafka properties with secrets (--kafka-properties-file), and whatever
# else the Secret holds (a CA for ssl.ca.location). A directory mount, no
# subPath; read at start.
- name: kafka-properties
  mountPath: /etc/logferry/kafka
  readOnly: true
{{- end }}
{{- end -}}

{{- define "logferry.kafka.propertiesVolume" -}}
{{- if .Values.kafka.propertiesSecret }}
- name: kafka-properties
  secret:
    secretName: {{ .Values.kafka.propertiesSecret }}
    # Readable by the non-root backend through the pod's fsGroup, as the keys.
    defaultMode: 0400
{{- end }}
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

{{/* Backend address the agents use: the backend Service, or the ingest Service in kafka mode. */}}
{{- define "logferry.agent.endpoint" -}}
{{- if .Values.agent.endpoint -}}
{{- .Values.agent.endpoint -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%v" (include "logferry.backend.serviceName" .) .Release.Namespace .Values.backend.port -}}
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

{{/*
The backend's configuration mounts, shared by the StatefulSet (embedded) and the
ingest and route Deployments (kafka): the keys Secret over /data/keys, the tenants
ConfigMap as a directory, and the TLS Secret. Include with
(dict "ctx" $ "tls" true|false) and `trim | nindent` at the volumeMounts' indentation.
*/}}
{{- define "logferry.backend.configMounts" -}}
{{- if include "logferry.backend.keysSecret" .ctx }}
# The keys Secret over the data directory's keys/, read-only: signing.pem
# is there before the first start, so the backend generates no key of its
# own. A directory mount (no subPath), so a key replaced in the Secret
# reaches the pod; `logferry keys generate` cannot write here, run it
# elsewhere.
- name: keys
  mountPath: /data/keys
  readOnly: true
{{- end }}
# A directory mount, never subPath: the kubelet swaps the ConfigMap's files
# in place and the backend, watching the directory, reloads the registry.
- name: tenants
  mountPath: /etc/logferry/tenants
  readOnly: true
{{- if and .tls .ctx.Values.backend.tls.secretName }}
- name: tls
  mountPath: /etc/logferry/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* The volumes of logferry.backend.configMounts; include with the same dict. */}}
{{- define "logferry.backend.configVolumes" -}}
{{- $keysSecret := include "logferry.backend.keysSecret" .ctx }}
- name: tenants
  configMap:
    name: {{ include "logferry.backend.tenantsConfigMap" .ctx }}
    items:
      - key: {{ include "logferry.backend.tenantsKey" .ctx }}
        path: tenants.yaml
{{- if $keysSecret }}
- name: keys
  secret:
    secretName: {{ $keysSecret }}
    # Owner-only (root). With the pod's fsGroup the kubelet makes the files
    # group-readable (0440, group fsGroup), which is how the non-root backend
    # reads them: keep backend.podSecurityContext.fsGroup.
    defaultMode: 0400
    items:
      - key: signing.pem
        path: signing.pem
      - key: signing.pub.pem
        path: signing.pub.pem
      {{- range .ctx.Values.backend.keys.tenantKeys }}
      - key: {{ include "logferry.backend.tenantKeySecretKey" . }}
        path: tenants/{{ .tenant }}/{{ int64 .id }}.key
      {{- end }}
{{- end }}
{{- if and .tls .ctx.Values.backend.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .ctx.Values.backend.tls.secretName }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every backend pod (StatefulSet, ingest, route, kafka init). */}}
{{- define "logferry.backend.podPlacement" -}}
{{- with .Values.backend.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.backend.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.backend.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
/readyz answers 503 until the process is ready (embedded: the buffer recovered and the
gRPC listener up; ingest: the listener up; route: its consumers started) and again
once shutdown begins; /healthz while the process runs. Both on port `metrics`.
*/}}
{{- define "logferry.backend.probes" -}}
startupProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 10
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 20
  failureThreshold: 3
{{- end -}}
