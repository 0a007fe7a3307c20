{{/*
Helpers shared by every template: names, labels, capability checks, and the ONE Deployment and
Service definition used for all three services (gateway, router, cache). Per-kind templates
range over "qlens.services" and include these, so the three services cannot drift apart.

Object names are fixed (qlens-gateway, qlens-router, qlens-cache, ...), not release-prefixed: the
services find each other at http://qlens-router:8081 and http://qlens-cache:8082
(docs/internals.md), and the deployment guide's commands name them.
*/}}

{{- define "qlens.name" -}}qlens{{- end -}}

{{/* The three services, in a fixed order (deterministic output). */}}
{{- define "qlens.services" -}}gateway router cache{{- end -}}

{{- define "qlens.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. Context: the root. */}}
{{- define "qlens.commonLabels" -}}
app.kubernetes.io/name: {{ include "qlens.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "qlens.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "qlens.chart" . }}
qlens.quantumlayer.ai/environment: {{ .Values.environment | quote }}
{{- end -}}

{{/* Labels of one service's objects. Context: (dict "root" $ "service" "gateway"). */}}
{{- define "qlens.labels" -}}
{{ include "qlens.commonLabels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* Pod selector of one service: stable across upgrades (no version in it). */}}
{{- define "qlens.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qlens.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "qlens.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "qlens.serviceAccountName" -}}{{ include "qlens.name" . }}{{- end -}}

{{/* Does this service talk to Redis? cache: when it stores entries there; gateway: when budget
     counters live there (the gateway keeps them itself). Returns "true" or "". */}}
{{- define "qlens.usesRedis" -}}
{{- $v := .root.Values -}}
{{- if and (eq .service "cache") $v.cache.enabled (eq $v.cache.backend "redis") -}}true
{{- else if and (eq .service "gateway") $v.costControls.enabled (eq $v.costControls.store "redis") -}}true
{{- end -}}
{{- end -}}

{{/* Replicas, and whether a PodDisruptionBudget makes sense for the service ("true" or ""). */}}
{{- define "qlens.needsPdb" -}}
{{- $v := .root.Values -}}
{{- if and $v.podDisruptionBudget.enabled (or $v.autoscaling.enabled (gt (int (index $v.replicas .service)) 1)) -}}true{{- end -}}
{{- end -}}

{{/*
Capability checks. On a live cluster .Capabilities.APIVersions is discovery's answer. Offline
(`helm template`, `qlensctl template`), Helm's built-in list contains every version its client
library knows whatever --kube-version says, so the Kubernetes version the API went GA in is
checked as well: rendering for 1.20 then picks the beta versions that 1.20 serves.
*/}}
{{- define "qlens.hpaApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "autoscaling/v2") (semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version) -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{- define "qlens.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/* external-secrets.io/v1 from ESO 0.16 on; v1beta1 before (and when the cluster cannot say). */}}
{{- define "qlens.externalSecretsApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "external-secrets.io/v1" -}}
external-secrets.io/v1
{{- else -}}
external-secrets.io/v1beta1
{{- end -}}
{{- end -}}

{{/* The service configuration (ServiceConfig) the services read from config.yaml. */}}
{{- define "qlens.serviceConfig" -}}
{{- $v := .Values -}}
{{- $cfg := dict "name" $v.environment "providers" $v.providers "models" $v.models "routing" $v.routing "cache" $v.cache "costControls" $v.costControls "auth" $v.auth "usage" $v.usage "admin" $v.admin "gateway" $v.gateway "ports" $v.ports "observability" $v.observability -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Container resources of one service: serviceResources.<service> merged over resources. */}}
{{- define "qlens.resources" -}}
{{- $v := .root.Values -}}
{{- $override := index ($v.serviceResources | default dict) .service | default dict -}}
{{- toYaml (mergeOverwrite (deepCopy $v.resources) (deepCopy $override)) -}}
{{- end -}}

{{/* An optional env var from a key of Secret `secrets.name`. Context: (list root NAME key). */}}
{{- define "qlens.secretEnv" -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ (index . 0).Values.secrets.name }}
      key: {{ index . 2 }}
      optional: true
{{- end -}}

{{/* Environment of one service's container. */}}
{{- define "qlens.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
- name: QLENS_HOST
  value: "0.0.0.0"
- name: QLENS_PORT
  value: {{ index $v.ports .service | quote }}
- name: QLENS_CONFIG
  value: /etc/qlens/config.yaml
{{- if eq .service "gateway" }}
- name: QLENS_ROUTER_URL
  value: {{ printf "http://%s-router:%v" (include "qlens.name" $root) $v.ports.router | quote }}
- name: QLENS_CACHE_URL
  value: {{ printf "http://%s-cache:%v" (include "qlens.name" $root) $v.ports.cache | quote }}
- name: QLENS_API_KEYS_FILE
  value: /etc/qlens/keys/keys.json
{{- if $v.admin.enabled }}
- name: QLENS_ADMIN_KEYS_FILE
  value: /etc/qlens/admin-keys/keys.json
{{- end }}
{{- end }}
{{- if eq .service "router" }}
{{- /* provider credentials: the list comes with the rendered values (the provider registry) */}}
{{- range $v.secrets.credentials }}
{{ include "qlens.secretEnv" (list $root .env .key) }}
{{- end }}
{{- end }}
{{- if include "qlens.usesRedis" . }}
{{ include "qlens.secretEnv" (list $root "QLENS_REDIS_URL" "redis-url") }}
{{- end }}
{{- if $v.observability.tracing.enabled }}
{{- /* the trace resource: which service, namespace and environment a span comes from */}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "qlens-%s" .service | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=%s,deployment.environment=%s" $root.Release.Namespace $v.environment | quote }}
{{- end }}
{{- end -}}

{{/*
The one Deployment definition. Context: (dict "root" $ "service" "gateway"), plus
"previousImage" for the service's qlens-<service>-previous Deployment (previousVersion.enabled):
the same pod at 0 replicas running the image the current upgrade replaced. Its pods carry the
service's selector labels too (so its Service reaches them after `rollback --emergency`) and a
track label that keeps the two Deployments' own selectors apart.
*/}}
{{- define "qlens.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $previous := .previousImage | default "" -}}
{{- $name := printf "%s-%s%s" (include "qlens.name" $root) .service (ternary "-previous" "" (ne $previous "")) -}}
{{- $image := $previous | default (printf "%s/%s-%s:%s" $v.image.repository (include "qlens.name" $root) .service (include "qlens.imageTag" $root)) -}}
{{- $r := $v.rollout -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "qlens.labels" . | nindent 4 }}
    {{- if $previous }}
    qlens.quantumlayer.ai/track: previous
    {{- end }}
spec:
  replicas: {{ ternary 0 (index $v.replicas .service) (ne $previous "") }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # a new pod must be Ready before an old one goes: capacity never drops during a rollout
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "qlens.selectorLabels" . | nindent 6 }}
      {{- if $previous }}
      qlens.quantumlayer.ai/track: previous
      {{- end }}
  template:
    metadata:
      labels:
        {{- include "qlens.labels" . | nindent 8 }}
        {{- if $previous }}
        qlens.quantumlayer.ai/track: previous
        {{- end }}
      annotations:
        checksum/config: {{ include "qlens.serviceConfig" $root | sha256sum }}
        {{- if eq $v.monitoring.mode "basic" }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ index $v.ports .service | quote }}
        prometheus.io/path: /metrics
        {{- end }}
    spec:
      serviceAccountName: {{ include "qlens.serviceAccountName" $root }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      # preStop, then the drain, then in-flight requests (see `rollout` in values.yaml)
      terminationGracePeriodSeconds: {{ $r.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .service }}
          image: {{ $image | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ index $v.ports .service }}
              protocol: TCP
          env:
            {{- include "qlens.env" . | nindent 12 }}
            - name: QLENS_VERSION
              value: {{ splitList ":" $image | last | quote }}
            - name: QLENS_DRAIN_SECONDS
              value: {{ $r.drainSeconds | quote }}
            - name: QLENS_GRACEFUL_SECONDS
              value: {{ max 1 (sub (sub (sub (int $r.terminationGracePeriodSeconds) (int $r.preStopSeconds)) (int $r.drainSeconds)) 2) | quote }}
          {{- if gt (int $r.preStopSeconds) 0 }}
          lifecycle:
            preStop:
              # the pod is already out of its Service's endpoints; this waits until every
              # kube-proxy and load balancer has seen that before the process gets SIGTERM
              exec:
                command: ["sleep", {{ $r.preStopSeconds | quote }}]
          {{- end }}
          livenessProbe:
            httpGet:
              path: /health
              port: http
            initialDelaySeconds: 5
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /health/ready
              port: http
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            {{- include "qlens.resources" . | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/qlens/config.yaml
              subPath: config.yaml
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if eq .service "gateway" }}
            - name: api-keys
              mountPath: /etc/qlens/keys
              readOnly: true
            {{- if $v.admin.enabled }}
            - name: admin-keys
              mountPath: /etc/qlens/admin-keys
              readOnly: true
            {{- end }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "qlens.name" $root }}-config
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if eq .service "gateway" }}
        # A directory mount (not subPath): `qlensctl keys` updates reach running pods.
        - name: api-keys
          secret:
            secretName: {{ $v.apiKeys.secretName }}
            optional: true
        {{- if $v.admin.enabled }}
        - name: admin-keys
          secret:
            secretName: {{ $v.adminKeys.secretName }}
            optional: true
        {{- end }}
        {{- end }}
{{- end -}}

{{/* The one Service definition. Context: (dict "root" $ "service" "gateway"). */}}
{{- define "qlens.service" -}}
{{- $root := .root -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "qlens.name" $root }}-{{ .service }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "qlens.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "qlens.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ index $root.Values.ports .service }}
      targetPort: http
      protocol: TCP
{{- end -}}

{{/* The image the live qlens-<service> runs when this upgrade replaces it with another one, else
     the one the live qlens-<service>-previous keeps ("" on a first install, in `helm template`,
     and when nothing was ever replaced). Context: (dict "root" $ "service" "gateway"). */}}
{{- define "qlens.previousImage" -}}
{{- $root := .root -}}
{{- $ns := $root.Release.Namespace -}}
{{- $new := printf "%s/%s-%s:%s" $root.Values.image.repository (include "qlens.name" $root) .service (include "qlens.imageTag" $root) -}}
{{- $live := lookup "apps/v1" "Deployment" $ns (printf "%s-%s" (include "qlens.name" $root) .service) -}}
{{- $kept := lookup "apps/v1" "Deployment" $ns (printf "%s-%s-previous" (include "qlens.name" $root) .service) -}}
{{- $liveImage := "" -}}
{{- if $live -}}{{- $liveImage = (index $live.spec.template.spec.containers 0).image -}}{{- end -}}
{{- if and $liveImage (ne $liveImage $new) -}}
{{- $liveImage -}}
{{- else if $kept -}}
{{- (index $kept.spec.template.spec.containers 0).image -}}
{{- end -}}
{{- end -}}

{{/* Refuse values rendered for another namespace (see `namespace` in values.yaml). */}}
{{- define "qlens.checks" -}}
{{- $v := .Values -}}
{{- if and $v.namespace (ne $v.namespace .Release.Namespace) -}}
{{- fail (printf "these values are for namespace %s, not %s: install with --namespace %s" $v.namespace .Release.Namespace $v.namespace) -}}
{{- end -}}
{{- if and (eq $v.secrets.backend "keyVault") (not $v.externalSecrets.enabled) -}}
{{- fail "secrets.backend is keyVault but externalSecrets.enabled is false: nothing would write the provider Secret" -}}
{{- end -}}
{{- if and $v.tls.enabled (not $v.ingress.enabled) -}}
{{- fail "tls.enabled needs ingress.enabled: TLS is terminated at the gateway's Ingress" -}}
{{- end -}}
{{- end -}}
