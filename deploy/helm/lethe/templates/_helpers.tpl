{{/* Names ------------------------------------------------------------------------------------------ */}}
{{- define "lethe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lethe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lethe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: call with (dict "root" $ "component" "api") ------------------------------------------------ */}}
{{- define "lethe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lethe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lethe.labels" -}}
helm.sh/chart: {{ include "lethe.chart" .root }}
{{ include "lethe.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: lethe
{{- end }}

{{- define "lethe.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Secrets: where each secret value lives (an existing Secret, or one this chart creates) ------------- */}}
{{- define "lethe.secretName" -}}
{{- if .item.existingSecret }}{{ .item.existingSecret }}{{ else }}{{ include "lethe.fullname" .root }}-{{ .suffix }}{{ end }}
{{- end }}

{{- define "lethe.hasApiTokens" -}}
{{- if or .Values.secrets.apiTokens.value .Values.secrets.apiTokens.existingSecret }}true{{ end }}
{{- end }}

{{- define "lethe.hasEventKey" -}}
{{- if or .Values.secrets.eventKey.value .Values.secrets.eventKey.existingSecret }}true{{ end }}
{{- end }}

{{/* Checks run by every workload, so a missing secret stops `helm install` with a message. */}}
{{- define "lethe.validate" -}}
{{- if not (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "set database.url (postgresql://user:password@host:5432/lethe) or database.existingSecret" }}
{{- end }}
{{- if not (or .Values.broker.url .Values.broker.existingSecret) }}
{{- fail "set broker.url (redis://… or amqp://…) or broker.existingSecret" }}
{{- end }}
{{- if not (or .Values.secrets.subjectKey.value .Values.secrets.subjectKey.existingSecret) }}
{{- fail "set secrets.subjectKey.value (openssl rand -hex 32; the same for ever) or secrets.subjectKey.existingSecret" }}
{{- end }}
{{- if not (or .Values.secrets.signingKey.value .Values.secrets.signingKey.existingSecret) }}
{{- fail "set secrets.signingKey.value (an Ed25519 PEM: openssl genpkey -algorithm ed25519) or secrets.signingKey.existingSecret" }}
{{- end }}
{{- if and .Values.intake.enabled (not (include "lethe.hasEventKey" .)) }}
{{- fail "the intake needs secrets.eventKey.value or secrets.eventKey.existingSecret (or set intake.enabled=false)" }}
{{- end }}
{{- range $name, $_ := .Values.config }}
{{- if has $name (list "LETHE_DATABASE_URL" "LETHE_BROKER_URL" "LETHE_SUBJECT_KEY" "LETHE_EVENT_KEY" "LETHE_SIGNING_KEY" "LETHE_API_TOKENS" "LETHE_DATA_MAP") }}
{{- fail (printf "config.%s is set by the chart: use database, broker, secrets or dataMap instead" $name) }}
{{- end }}
{{- end }}
{{- if not (or .Values.dataMap.content .Values.dataMap.existingConfigMap) }}
{{- fail "set dataMap.content (the data map YAML) or dataMap.existingConfigMap" }}
{{- end }}
{{- end }}

{{/* Environment of every lethe container: (dict "root" $ "dataMap" bool "apiTokens" bool) -------------- */}}
{{- define "lethe.env" -}}
{{- $root := .root }}
- name: LETHE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "lethe.secretName" (dict "root" $root "item" $root.Values.database "suffix" "database") }}
      key: {{ $root.Values.database.existingSecretKey }}
- name: LETHE_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "lethe.secretName" (dict "root" $root "item" $root.Values.broker "suffix" "broker") }}
      key: {{ $root.Values.broker.existingSecretKey }}
- name: LETHE_SUBJECT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "lethe.secretName" (dict "root" $root "item" $root.Values.secrets.subjectKey "suffix" "subject-key") }}
      key: {{ $root.Values.secrets.subjectKey.existingSecretKey }}
{{- if include "lethe.hasEventKey" $root }}
- name: LETHE_EVENT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "lethe.secretName" (dict "root" $root "item" $root.Values.secrets.eventKey "suffix" "event-key") }}
      key: {{ $root.Values.secrets.eventKey.existingSecretKey }}
{{- end }}
- name: LETHE_SIGNING_KEY
  value: /etc/lethe/signing/signing-key.pem
{{- if .dataMap }}
- name: LETHE_DATA_MAP
  value: /etc/lethe/datamap/datamap.yaml
{{- end }}
{{- if and .apiTokens (include "lethe.hasApiTokens" $root) }}
- name: LETHE_API_TOKENS
  value: /etc/lethe/tokens/api-tokens
{{- end }}
{{- range $name, $value := $root.Values.config }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes: (dict "root" $ "dataMap" bool "apiTokens" bool) ------------------------------------------- */}}
{{- define "lethe.volumes" -}}
{{- $root := .root }}
- name: signing-key
  secret:
    secretName: {{ include "lethe.secretName" (dict "root" $root "item" $root.Values.secrets.signingKey "suffix" "signing-key") }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.secrets.signingKey.existingSecretKey }}
        path: signing-key.pem
{{- if .dataMap }}
- name: datamap
  configMap:
    name: {{ $root.Values.dataMap.existingConfigMap | default (printf "%s-datamap" (include "lethe.fullname" $root)) }}
    items:
      - key: {{ $root.Values.dataMap.existingConfigMapKey }}
        path: datamap.yaml
{{- end }}
{{- if and .apiTokens (include "lethe.hasApiTokens" $root) }}
- name: api-tokens
  secret:
    secretName: {{ include "lethe.secretName" (dict "root" $root "item" $root.Values.secrets.apiTokens "suffix" "api-tokens") }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.secrets.apiTokens.existingSecretKey }}
        path: api-tokens
{{- end }}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- with $root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lethe.volumeMounts" -}}
{{- $root := .root }}
- name: signing-key
  mountPath: /etc/lethe/signing
  readOnly: true
{{- if .dataMap }}
- name: datamap
  mountPath: /etc/lethe/datamap
  readOnly: true
{{- end }}
{{- if and .apiTokens (include "lethe.hasApiTokens" $root) }}
- name: api-tokens
  mountPath: /etc/lethe/tokens
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/lethe
{{- with $root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every workload: (dict "root" $ "overrides" map) ------------------------ */}}
{{- define "lethe.podSpec" -}}
{{- $root := .root }}
{{- $o := .overrides | default dict }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
# lethe never calls the Kubernetes API; and no service links: they would inject LETHE_*-looking variables.
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with ($o.nodeSelector | default $root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($o.tolerations | default $root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($o.affinity | default $root.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($o.topologySpreadConstraints | default $root.Values.topologySpreadConstraints) }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod annotations: secret checksums roll the pods when a secret this chart owns changes. */}}
{{- define "lethe.podAnnotations" -}}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A worker's liveness: its own Celery node answers a ping through the broker. lethe builds its Celery app
in workers.app.create_app(Lethe()) and has no module-level app for `celery -A … inspect ping`, so the probe
pings through lethe's app; default_nodename(None) is the name `lethe worker` runs under (celery@<pod name>).
The same command is the healthcheck of the workers in deploy/docker-compose.yml. */}}
{{- define "lethe.workerPing" -}}
import sys; from celery.utils.nodenames import default_nodename; from orchestrator.service import Lethe; sys.exit(0 if Lethe().app.control.ping([default_nodename(None)], timeout=10) else 1)
{{- end }}
