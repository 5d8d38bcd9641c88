{{/* Names, labels, security contexts and shared env, defined once. */}}

{{- define "oss-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "oss-serve.fullname" -}}
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

{{- define "oss-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "router") */}}
{{- define "oss-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oss-serve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "oss-serve.labels" -}}
helm.sh/chart: {{ include "oss-serve.chart" .root }}
{{ include "oss-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: oss-serve
{{- end -}}

{{/* repository:tag, or repository@digest when image.digest is set (pinning). */}}
{{- define "oss-serve.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
checkov findings that do not apply, each with its reason (metadata annotations).
(dict "apiToken" true) adds the autoscaler's API token.
*/}}
{{- define "oss-serve.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_15=Images use immutable version tags or digests; Always would re-pull multi-GB CUDA images on every scale-up (set image.*.pullPolicy to change)
checkov.io/skip2: CKV_K8S_43=Digest pinning is opt-in per image (image.*.digest); the default is the chart appVersion tag
checkov.io/skip3: CKV_K8S_35=oss-serve reads settings only from OSS_SERVE_* env vars; secrets arrive as secretKeyRef (never literals) and are SecretStr, redacted from logs
{{- if .apiToken }}
checkov.io/skip4: CKV_K8S_38=The autoscaler patches replica counts through the Kubernetes API; its token is bound to a Role limited to get/patch on this release's replica workloads
{{- end }}
{{- end -}}

{{/* Names of the parts. */}}
{{- define "oss-serve.routerName" -}}{{ include "oss-serve.fullname" . }}-router{{- end -}}
{{- define "oss-serve.redisName" -}}{{ include "oss-serve.fullname" . }}-redis{{- end -}}

{{/* The headless Service that names each Redis pod (mode sentinel). */}}
{{- define "oss-serve.redisHeadlessName" -}}{{ include "oss-serve.redisName" . }}-headless{{- end -}}

{{/*
host:port of every sentinel (one per Redis pod), comma-separated, as a redis+sentinel://
URL and KEDA's redis-sentinel-streams scaler list them.
*/}}
{{- define "oss-serve.sentinelAddresses" -}}
{{- $name := include "oss-serve.redisName" . -}}
{{- $domain := printf "%s.%s.svc" (include "oss-serve.redisHeadlessName" .) .Release.Namespace -}}
{{- $addresses := list -}}
{{- range $i := until (int .Values.redis.sentinel.replicas) -}}
{{- $addresses = append $addresses (printf "%s-%d.%s:%d" $name $i $domain (int $.Values.redis.sentinel.port)) -}}
{{- end -}}
{{- join "," $addresses -}}
{{- end -}}
{{- define "oss-serve.rayClusterName" -}}{{ include "oss-serve.fullname" . }}-replicas{{- end -}}
{{- define "oss-serve.autoscalerName" -}}{{ include "oss-serve.fullname" . }}-autoscaler{{- end -}}
{{/* (dict "root" $ "pool" "a100") */}}
{{- define "oss-serve.poolDeploymentName" -}}{{ include "oss-serve.fullname" .root }}-replica-{{ .pool }}{{- end -}}

{{/* Pools with enabled != false, as a sorted list of names. */}}
{{- define "oss-serve.enabledPools" -}}
{{- $names := list -}}
{{- range $name, $pool := .Values.pools -}}
{{- if and $pool (ne (toString $pool.enabled) "false") -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- $names | sortAlpha | toJson -}}
{{- end -}}

{{/* Pod security context shared by every pod. */}}
{{- define "oss-serve.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{/* Container security context shared by every container. */}}
{{- define "oss-serve.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Redis connection env for oss-serve processes. The URL comes from a Secret: either the
external Redis URL key, or the internal password composed into a URL by Kubernetes'
$(VAR) expansion, so that no secret value is ever rendered.
*/}}
{{- define "oss-serve.redisEnv" -}}
{{- if eq .Values.redis.mode "external" -}}
- name: OSS_SERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.urlKey }}
{{- else -}}
- name: OSS_SERVE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.internal.auth.existingSecret }}
      key: {{ .Values.redis.internal.auth.passwordKey }}
{{- if eq .Values.redis.mode "sentinel" }}
- name: OSS_SERVE_REDIS_URL
  value: "redis+sentinel://:$(OSS_SERVE_REDIS_PASSWORD)@{{ include "oss-serve.sentinelAddresses" . }}/{{ .Values.redis.sentinel.masterSet }}/0?sentinel_password=$(OSS_SERVE_REDIS_PASSWORD)"
{{- else }}
- name: OSS_SERVE_REDIS_URL
  value: "redis://:$(OSS_SERVE_REDIS_PASSWORD)@{{ include "oss-serve.redisName" . }}:{{ .Values.redis.internal.port }}/0"
{{- end }}
{{- end }}
- name: OSS_SERVE_CLUSTER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.security.clusterToken.existingSecret }}
      key: {{ .Values.security.clusterToken.key }}
{{- if .Values.security.tls.enabled }}
{{- $dir := .Values.security.tls.mountPath }}
- name: OSS_SERVE_TLS_CERT
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: OSS_SERVE_TLS_KEY
  value: {{ printf "%s/tls.key" $dir | quote }}
- name: OSS_SERVE_TLS_CA
  value: {{ printf "%s/ca.crt" $dir | quote }}
- name: OSS_SERVE_TLS_SERVER_NAME
  value: {{ .Values.security.tls.serverName | quote }}
{{- end }}
- name: OSS_SERVE_REDIS_NAMESPACE
  value: {{ .Values.settings.redisNamespace | quote }}
- name: OSS_SERVE_LOG_LEVEL
  value: {{ .Values.settings.logLevel | quote }}
- name: OSS_SERVE_LOG_FORMAT
  value: {{ .Values.settings.logFormat | quote }}
{{- end -}}

{{/* Replica settings of one pool: (dict "root" $ "name" "a100" "pool" $pool) */}}
{{- define "oss-serve.replicaEnv" -}}
{{- $root := .root -}}
- name: OSS_SERVE_REPLICA_POOL
  value: {{ .name | quote }}
- name: OSS_SERVE_REPLICA_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OSS_SERVE_MODEL
  value: {{ $root.Values.model.path | quote }}
- name: OSS_SERVE_SERVED_MODEL_NAME
  value: {{ $root.Values.model.servedModelName | quote }}
- name: OSS_SERVE_TENSOR_PARALLEL_SIZE
  value: {{ .pool.tensorParallelSize | quote }}
- name: OSS_SERVE_EXPERT_PARALLEL_SIZE
  value: {{ .pool.expertParallelSize | quote }}
- name: OSS_SERVE_MAX_MODEL_LEN
  value: {{ .pool.maxModelLen | quote }}
- name: OSS_SERVE_GPU_MEMORY_UTILIZATION
  value: {{ .pool.gpuMemoryUtilization | quote }}
- name: OSS_SERVE_DEVICE
  value: cuda
- name: OSS_SERVE_CACHE_DIR
  value: /tmp/oss-serve-cache
{{- with $root.Values.model.lora }}
{{- if .enabled }}
- name: OSS_SERVE_ENABLE_LORA
  value: "true"
- name: OSS_SERVE_LORA_MODULES
  value: {{ include "oss-serve.loraModules" . | quote }}
- name: OSS_SERVE_MAX_LORAS
  value: {{ .maxLoras | quote }}
- name: OSS_SERVE_MAX_LORA_RANK
  value: {{ .maxLoraRank | quote }}
- name: OSS_SERVE_MAX_CPU_LORAS
  value: {{ .maxCpuLoras | quote }}
{{- end }}
{{- end }}
{{ include "oss-serve.redisEnv" $root }}
{{- end -}}

{{/* The Ray custom resource the nodes of pool `name` advertise (cluster/ray/placement.py). */}}
{{- define "oss-serve.poolResource" -}}oss-serve-pool-{{ . }}{{- end -}}
{{/* --lora-modules as the JSON list of "name=path" that OSS_SERVE_LORA_MODULES holds. */}}
{{- define "oss-serve.loraModules" -}}
{{- $modules := list -}}
{{- range $name, $path := .modules -}}
{{- $modules = append $modules (printf "%s=%s" $name $path) -}}
{{- end -}}
{{- $modules | toJson -}}
{{- end -}}

{{/* GPUs one replica of a pool needs: tensor parallel x expert parallel. */}}
{{- define "oss-serve.poolGpus" -}}
{{- mul (int .tensorParallelSize) (int .expertParallelSize) -}}
{{- end -}}

{{/* Scheduling of a GPU pool's pods: (dict "root" $ "pool" $pool) */}}
{{- define "oss-serve.poolScheduling" -}}
{{- $root := .root -}}
nodeSelector:
  {{ $root.Values.replicas.gpuProductLabel }}: {{ .pool.gpuProduct | quote }}
  {{- with .pool.nodeSelector }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
tolerations:
  {{- toYaml (concat $root.Values.replicas.gpuTolerations (default list .pool.tolerations)) | nindent 2 }}
{{- with .pool.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Volumes of a replica pod: /dev/shm for NCCL, weights, writable scratch. */}}
{{- define "oss-serve.replicaVolumes" -}}
{{- $root := .root -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .pool.shmSize }}
- name: tmp
  emptyDir:
    sizeLimit: 8Gi
{{- if $root.Values.security.tls.enabled }}
- name: tls
  secret:
    secretName: {{ $root.Values.security.tls.replicaSecret }}
    defaultMode: 0440
{{- end }}
- name: models
{{- if eq $root.Values.model.weights.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $root.Values.model.weights.pvc.claimName }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ $root.Values.model.weights.initContainer.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "oss-serve.replicaVolumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: tmp
  mountPath: /tmp
- name: models
  mountPath: {{ .Values.model.weights.mountPath }}
  readOnly: true
{{- if .Values.security.tls.enabled }}
- name: tls
  mountPath: {{ .Values.security.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The init container that fills the weights volume, when weights.source=initContainer. */}}
{{- define "oss-serve.weightsInitContainers" -}}
{{- $w := .Values.model.weights -}}
{{- if eq $w.source "initContainer" }}
initContainers:
  - name: fetch-weights
    image: {{ include "oss-serve.image" (dict "root" . "image" $w.initContainer.image) }}
    imagePullPolicy: IfNotPresent
    command: {{ toJson $w.initContainer.command }}
    securityContext:
      {{- include "oss-serve.containerSecurityContext" . | nindent 6 }}
    resources:
      {{- toYaml $w.initContainer.resources | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: {{ $w.mountPath }}
{{- end }}
{{- end -}}

{{/*
The `oss-serve replica` container of one pool: (dict "root" $ "name" "a100" "pool" $pool
"gpus" true|false). With gpus=false it is the driver beside a Ray worker (the Ray container
holds the GPUs and runs the engine's rank actors); with gpus=true it is the whole replica
(Deployment workload).
*/}}
{{- define "oss-serve.replicaContainer" -}}
{{- $root := .root -}}
{{- $gpus := include "oss-serve.poolGpus" .pool -}}
- name: replica
  image: {{ include "oss-serve.image" (dict "root" $root "image" $root.Values.image.replica) }}
  imagePullPolicy: {{ $root.Values.image.replica.pullPolicy }}
  args: ["replica"]
  env:
    {{- include "oss-serve.replicaEnv" . | nindent 4 }}
    {{- if not .gpus }}
    - name: RAY_ADDRESS
      value: "{{ include "oss-serve.rayClusterName" $root }}-head-svc:6379"
    # the engine runs as Ray rank actors on the Ray worker's GPUs, also for TP x EP = 1
    - name: OSS_SERVE_RAY_ENGINE
      value: "true"
    {{- end }}
  securityContext:
    {{- include "oss-serve.containerSecurityContext" $root | nindent 4 }}
  resources:
    {{- if .gpus }}
    requests:
      {{- toYaml .pool.resources.requests | nindent 6 }}
      nvidia.com/gpu: {{ $gpus | quote }}
    limits:
      {{- toYaml .pool.resources.limits | nindent 6 }}
      nvidia.com/gpu: {{ $gpus | quote }}
    {{- else }}
    {{- toYaml $root.Values.replicas.driverResources | nindent 4 }}
    {{- end }}
  # Healthy = this replica's heartbeat in its Redis registry hash is fresh (the contract
  # every replica keeps); loading weights may take minutes, hence the startup budget.
  startupProbe:
    exec:
      command: ["python", "-m", "oss_serve.cluster.replica.probe", "--max-age-s", "60"]
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 180
  livenessProbe:
    exec:
      command: ["python", "-m", "oss_serve.cluster.replica.probe", "--max-age-s", "60"]
    periodSeconds: 30
    timeoutSeconds: 5
    failureThreshold: 3
  readinessProbe:
    exec:
      command: ["python", "-m", "oss_serve.cluster.replica.probe", "--max-age-s", "30"]
    periodSeconds: 10
    timeoutSeconds: 5
  volumeMounts:
    {{- include "oss-serve.replicaVolumeMounts" $root | nindent 4 }}
{{- end -}}

{{/* Checks across fields that values.schema.json cannot express; fail with the field name. */}}
{{- define "oss-serve.validate" -}}
{{- range $name := include "oss-serve.enabledPools" . | fromJsonArray }}
{{- $pool := index $.Values.pools $name }}
{{- if gt (int $pool.minReplicas) (int $pool.maxReplicas) }}
{{- fail (printf "pools.%s: minReplicas (%v) is above maxReplicas (%v)" $name $pool.minReplicas $pool.maxReplicas) }}
{{- end }}
{{- if or (lt (int $pool.replicas) (int $pool.minReplicas)) (gt (int $pool.replicas) (int $pool.maxReplicas)) }}
{{- fail (printf "pools.%s: replicas (%v) must lie within minReplicas..maxReplicas (%v..%v)" $name $pool.replicas $pool.minReplicas $pool.maxReplicas) }}
{{- end }}
{{- end }}
{{- if eq (len (include "oss-serve.enabledPools" . | fromJsonArray)) 0 }}
{{- fail "pools: enable at least one GPU pool" }}
{{- end }}
{{- with .Values.router.autoscaling }}
{{- if and .enabled (gt (int .minReplicas) (int .maxReplicas)) }}
{{- fail "router.autoscaling: minReplicas is above maxReplicas" }}
{{- end }}
{{- end }}
{{- with .Values.redis.sentinel }}
{{- if and (eq $.Values.redis.mode "sentinel") (gt (int .quorum) (int .replicas)) }}
{{- fail (printf "redis.sentinel.quorum (%v) is above redis.sentinel.replicas (%v): no failover could ever be agreed" .quorum .replicas) }}
{{- end }}
{{- end }}
{{- end -}}
