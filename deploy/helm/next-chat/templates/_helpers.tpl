{{/*
Names, labels and the few computed values the templates share.
*/}}

{{/* The port the server listens on inside the pod (the image's EXPOSE). */}}
{{- define "next-chat.containerPort" -}}
5000
{{- end }}

{{- define "next-chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
RELEASE-next-chat, or the release name alone when it already contains the
chart name; at most 63 characters (a DNS label).
*/}}
{{- define "next-chat.fullname" -}}
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

{{- define "next-chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "next-chat.labels" -}}
helm.sh/chart: {{ include "next-chat.chart" . }}
{{ include "next-chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "next-chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "next-chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The server pods' selector: the common labels plus the component. */}}
{{- define "next-chat.serverSelectorLabels" -}}
{{ include "next-chat.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "next-chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "next-chat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "next-chat.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The release's own Secret: database and Redis URLs and generated passwords. */}}
{{- define "next-chat.secretName" -}}
{{- include "next-chat.fullname" . }}
{{- end }}

{{- define "next-chat.redisHost" -}}
{{- printf "%s-redis" (include "next-chat.fullname" .) }}
{{- end }}

{{- define "next-chat.mysqlHost" -}}
{{- printf "%s-mysql" (include "next-chat.fullname" .) }}
{{- end }}

{{/*
A value kept in the release's Secret: the one given in values if any, else
the one already stored (so upgrades keep generated passwords), else a new
random one. Call with (list $ "secret-key" .Values.some.password).
*/}}
{{- define "next-chat.secretValue" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "next-chat.secretName" $root) }}
{{- if and $existing (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Where the server's database URL comes from: an EnvVarSource for
NEXT_CHAT_DATABASE. The chart refuses to render without a database, since
SQLite inside a pod would lose history and cannot be shared by replicas.
*/}}
{{- define "next-chat.databaseUrlSource" -}}
{{- if .Values.mysql.enabled -}}
secretKeyRef:
  name: {{ include "next-chat.secretName" . }}
  key: database-url
{{- else if .Values.externalDatabase.existingSecret -}}
secretKeyRef:
  name: {{ .Values.externalDatabase.existingSecret }}
  key: {{ .Values.externalDatabase.existingSecretKey }}
{{- else if .Values.externalDatabase.url -}}
secretKeyRef:
  name: {{ include "next-chat.secretName" . }}
  key: database-url
{{- else }}
{{- fail "no history database: set mysql.enabled=true, externalDatabase.url or externalDatabase.existingSecret" }}
{{- end }}
{{- end }}

{{/* Whether the server gets a Redis at all ("true" or ""). */}}
{{- define "next-chat.hasRedis" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.url .Values.externalRedis.existingSecret }}true{{ end }}
{{- end }}

{{/* An EnvVarSource for NEXT_CHAT_REDIS; only called when hasRedis. */}}
{{- define "next-chat.redisUrlSource" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret -}}
secretKeyRef:
  name: {{ .Values.externalRedis.existingSecret }}
  key: {{ .Values.externalRedis.existingSecretKey }}
{{- else -}}
secretKeyRef:
  name: {{ include "next-chat.secretName" . }}
  key: redis-url
{{- end }}
{{- end }}

{{/* Refuses value combinations that would deploy something broken. */}}
{{- /* The secretKeyRef of the JWT key: auth.jwt.existingSecret, else the HS256 secret the chart generated in the release's Secret. */ -}}
{{- define "next-chat.jwtKeySource" -}}
{{- if .Values.auth.jwt.existingSecret -}}
secretKeyRef:
  name: {{ .Values.auth.jwt.existingSecret }}
  key: {{ .Values.auth.jwt.existingSecretKey }}
{{- else -}}
secretKeyRef:
  name: {{ include "next-chat.secretName" . }}
  key: jwt-secret
{{- end }}
{{- end }}

{{- /* Non-empty when the chart generates the HS256 secret (jwt mode, no key of yours). */ -}}
{{- define "next-chat.jwtSecretGenerated" -}}
{{- if and (eq .Values.auth.mode "jwt") (not .Values.auth.jwt.jwksUrl) (not .Values.auth.jwt.existingSecret) }}true{{- end }}
{{- end }}

{{- /* NEXT_CHAT_JWT_ISSUER and _AUDIENCE when set: the server checks them and the test Pod puts them in its tokens. */ -}}
{{- define "next-chat.jwtClaimsEnv" -}}
{{- if .Values.auth.jwt.issuer }}
- name: NEXT_CHAT_JWT_ISSUER
  value: {{ .Values.auth.jwt.issuer | quote }}
{{- end }}
{{- if .Values.auth.jwt.audience }}
- name: NEXT_CHAT_JWT_AUDIENCE
  value: {{ .Values.auth.jwt.audience | quote }}
{{- end }}
{{- end }}

{{- /* Non-empty when the JWT public key is mounted from auth.jwt.existingSecret. */ -}}
{{- define "next-chat.jwtPublicKeyMounted" -}}
{{- if and (eq .Values.auth.mode "jwt") (not .Values.auth.jwt.jwksUrl) (eq .Values.auth.jwt.keyType "publicKey") }}true{{- end }}
{{- end }}

{{- define "next-chat.validate" -}}
{{- if not (or (eq .Values.auth.mode "header") (eq .Values.auth.mode "jwt")) }}
{{- fail (printf "auth.mode must be header or jwt, not %s" .Values.auth.mode) }}
{{- end }}
{{- if and (eq .Values.auth.mode "jwt") (not .Values.auth.jwt.jwksUrl) (eq .Values.auth.jwt.keyType "publicKey") (not .Values.auth.jwt.existingSecret) }}
{{- fail "auth.jwt.keyType publicKey needs the key: auth.jwt.existingSecret (a Secret holding the PEM public key)" }}
{{- end }}
{{- if and (eq .Values.auth.mode "jwt") (or .Values.auth.jwt.jwksUrl (eq .Values.auth.jwt.keyType "publicKey")) (not .Values.auth.jwt.audience) }}
{{- fail "auth.jwt.audience is required with a JWKS or a public key (the provider signs tokens for other applications too): the aud of this server's tokens, or \"any\"" }}
{{- end }}
{{- if not (or (eq .Values.auth.jwt.keyType "secret") (eq .Values.auth.jwt.keyType "publicKey")) }}
{{- fail (printf "auth.jwt.keyType must be secret or publicKey, not %s" .Values.auth.jwt.keyType) }}
{{- end }}
{{- if .Values.externalRedis.cluster }}
{{- if .Values.redis.enabled }}
{{- fail "externalRedis.cluster needs an external Redis Cluster: the bundled Redis is a single node; set redis.enabled=false and externalRedis.url (the seed nodes) or externalRedis.existingSecret" }}
{{- end }}
{{- if not (or .Values.externalRedis.url .Values.externalRedis.existingSecret) }}
{{- fail "externalRedis.cluster needs the cluster's seed nodes: set externalRedis.url (comma-separated redis:// URLs) or externalRedis.existingSecret" }}
{{- end }}
{{- if or (contains "{" .Values.config.redis_key_prefix) (contains "}" .Values.config.redis_key_prefix) }}
{{- fail "config.redis_key_prefix must not contain { or } with externalRedis.cluster (the server makes its own hash tags)" }}
{{- end }}
{{- else if and (not .Values.redis.enabled) (contains "," .Values.externalRedis.url) }}
{{- fail "externalRedis.url names several nodes: that is a Redis Cluster's seed list, so set externalRedis.cluster=true (or give one URL)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "next-chat.hasRedis" .)) }}
{{- fail "replicaCount > 1 needs Redis: set redis.enabled=true, externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- $needed := add .Values.preStopSleepSeconds .Values.config.shutdown_timeout_secs 5 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + config.shutdown_timeout_secs + 5 (%d) so the server can drain" (int .Values.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- end }}
