{{- define "otel-ebpf.name" -}}
{{- if contains "otel-ebpf" .Release.Name }}{{ .Release.Name }}{{ else }}{{ .Release.Name }}-otel-ebpf{{ end -}}
{{- end -}}

{{- define "otel-ebpf.labels" -}}
app.kubernetes.io/name: otel-ebpf
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* The collector container, the same in both modes. */}}
{{- define "otel-ebpf.container" -}}
- name: otel-ebpf
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run"]
  env:
    - {name: OTEL_EBPF_MODE, value: {{ .Values.mode | quote }}}
    - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ printf "http://%s" .Values.otlp.endpoint | quote }}}
    - {name: OTEL_EXPORTER_OTLP_PROTOCOL, value: grpc}
    - {name: OTEL_EXPORTER_OTLP_INSECURE, value: {{ .Values.otlp.insecure | quote }}}
    - {name: OTEL_TRACES_EXPORTER, value: otlp}
    - {name: OTEL_METRICS_EXPORTER, value: {{ ternary "otlp" "none" .Values.otlp.metrics | quote }}}
    - {name: OTEL_EBPF_KUBE_METADATA_ENABLE, value: {{ .Values.kubernetesMetadata | quote }}}
    - {name: OTEL_EBPF_HEALTH_ENDPOINT, value: "0.0.0.0:13133"}
    - name: K8S_NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    {{- range $name, $value := .Values.extraEnv }}
    - {name: {{ $name }}, value: {{ $value | quote }}}
    {{- end }}
  ports:
    - {name: health, containerPort: 13133, protocol: TCP}
  readinessProbe:
    httpGet: {path: /, port: health}
    periodSeconds: 10
  livenessProbe:
    httpGet: {path: /, port: health}
    initialDelaySeconds: 60  # bcc compiles the programs at start
    periodSeconds: 30
  resources: {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- if .Values.privileged }}
    privileged: true
    {{- else }}
    runAsUser: 0  # tracefs and /proc/PID files are root's
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
      add:
        - BPF            # load programs, create maps
        - PERFMON        # attach tracepoints and uprobes (perf_event_open)
        - SYS_RESOURCE   # lift the locked-memory limit for maps on kernels before 5.11
        - SYS_PTRACE     # read other processes' /proc/PID/{environ,exe,root,maps}
        - DAC_READ_SEARCH  # read other users' /proc/PID files and containers' libssl
    {{- end }}
  volumeMounts:
    - {name: tracefs, mountPath: /sys/kernel/tracing}
    - {name: modules, mountPath: /lib/modules, readOnly: true}
    - {name: headers, mountPath: /usr/src, readOnly: true}
    - {name: tmp, mountPath: /tmp}
    - {name: programs, mountPath: /var/cache/otel-ebpf}
{{- end -}}

{{- define "otel-ebpf.volumes" -}}
- name: tracefs
  hostPath: {path: /sys/kernel/tracing}
- name: modules
  hostPath: {path: /lib/modules}
- name: headers
  hostPath: {path: /usr/src}
- name: tmp
  emptyDir: {}
# compiled eBPF programs, kept so a restart skips the compiler: on the node for
# the DaemonSet (its next pod skips the compile too), with the pod for a sidecar
- name: programs
{{- if eq .Values.mode "sidecar" }}
  emptyDir: {}
{{- else }}
  hostPath: {path: /var/cache/otel-ebpf, type: DirectoryOrCreate}
{{- end }}
{{- end -}}
