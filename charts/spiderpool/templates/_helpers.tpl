{{/* Labels every object carries. */}}
{{- define "spiderpool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: spiderpool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "spiderpool.annotations" -}}
{{- with .Values.global.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The selector of a component (immutable: name and release only). */}}
{{- define "spiderpool.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* An image reference: registry (or the global override)/repository:tag@digest. */}}
{{- define "spiderpool.image" -}}
{{- $image := .image -}}
{{- $registry := .root.Values.global.imageRegistryOverride | default $image.registry -}}
{{- $tag := $image.tag | default .root.Chart.AppVersion | toString -}}
{{- if $registry }}{{ $registry }}/{{ end }}{{ $image.repository }}
{{- if $tag }}:{{ $tag }}{{ end }}
{{- if $image.digest }}@{{ $image.digest }}{{ end }}
{{- end -}}

{{/* IPv4 and IPv6 on or off: feature.* (the older spelling) wins over ipam.* when given. */}}
{{- define "spiderpool.ipv4" -}}
{{- if kindIs "bool" .Values.feature.enableIPv4 }}{{ .Values.feature.enableIPv4 }}{{ else }}{{ .Values.ipam.enableIPv4 }}{{ end -}}
{{- end -}}
{{- define "spiderpool.ipv6" -}}
{{- if kindIs "bool" .Values.feature.enableIPv6 }}{{ .Values.feature.enableIPv6 }}{{ else }}{{ .Values.ipam.enableIPv6 }}{{ end -}}
{{- end -}}

{{/* An IPv4 address as a number (for range checks the schema cannot make). */}}
{{- define "spiderpool.ipv4int" -}}
{{- $p := splitList "." . -}}
{{- add (mul (atoi (index $p 0)) 16777216) (mul (atoi (index $p 1)) 65536) (mul (atoi (index $p 2)) 256) (atoi (index $p 3)) -}}
{{- end -}}

{{/* Fail unless an IPv4 address (the "ip" key) is inside a CIDR (the "cidr" key); "what" names the value. */}}
{{- define "spiderpool.ipv4InSubnet" -}}
{{- $net := splitList "/" .cidr -}}
{{- $powers := list 1 2 4 8 16 32 64 128 256 512 1024 2048 4096 8192 16384 32768 65536 131072 262144 524288 1048576 2097152 4194304 8388608 16777216 33554432 67108864 134217728 268435456 536870912 1073741824 2147483648 4294967296 -}}
{{- $size := int64 (index $powers (sub 32 (atoi (index $net 1)))) -}}
{{- $base := int64 (include "spiderpool.ipv4int" (index $net 0)) -}}
{{- $ip := int64 (include "spiderpool.ipv4int" .ip) -}}
{{- if ne (div $ip $size) (div $base $size) -}}
{{- fail (printf "%s: %s is outside clusterDefaultPool.ipv4Subnet %s; give an address of that subnet" .what .ip .cidr) -}}
{{- end -}}
{{- end -}}

{{/* The checks values.schema.json cannot express; each failure names the value and the fix. */}}
{{- define "spiderpool.validate" -}}
{{- if and (ne (include "spiderpool.ipv4" .) "true") (ne (include "spiderpool.ipv6" .) "true") -}}
{{- fail "ipam.enableIPv4 and ipam.enableIPv6 (or feature.enableIPv4/6) are both false: enable at least one IP family" -}}
{{- end -}}
{{- $pool := .Values.clusterDefaultPool -}}
{{- if $pool.installIPv4IPPool -}}
{{- if ne (include "spiderpool.ipv4" .) "true" -}}
{{- fail "clusterDefaultPool.installIPv4IPPool is true but IPv4 is disabled: set ipam.enableIPv4=true or installIPv4IPPool=false" -}}
{{- end -}}
{{- if not $pool.ipv4Subnet -}}
{{- fail "clusterDefaultPool.installIPv4IPPool is true but clusterDefaultPool.ipv4Subnet is empty: give a CIDR, e.g. 172.18.0.0/16" -}}
{{- end -}}
{{- if not $pool.ipv4IPRanges -}}
{{- fail "clusterDefaultPool.installIPv4IPPool is true but clusterDefaultPool.ipv4IPRanges is empty: give ranges, e.g. [172.18.40.10-172.18.40.100]" -}}
{{- end -}}
{{- range $pool.ipv4IPRanges -}}
{{- $ends := splitList "-" . -}}
{{- range $ends -}}
{{- include "spiderpool.ipv4InSubnet" (dict "ip" . "cidr" $pool.ipv4Subnet "what" "clusterDefaultPool.ipv4IPRanges") -}}
{{- end -}}
{{- if eq (len $ends) 2 -}}
{{- if gt (int64 (include "spiderpool.ipv4int" (index $ends 0))) (int64 (include "spiderpool.ipv4int" (index $ends 1))) -}}
{{- fail (printf "clusterDefaultPool.ipv4IPRanges: %s ends before it starts; write the lower address first" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $pool.ipv4Gateway -}}
{{- include "spiderpool.ipv4InSubnet" (dict "ip" $pool.ipv4Gateway "cidr" $pool.ipv4Subnet "what" "clusterDefaultPool.ipv4Gateway") -}}
{{- end -}}
{{- end -}}
{{- if $pool.installIPv6IPPool -}}
{{- if ne (include "spiderpool.ipv6" .) "true" -}}
{{- fail "clusterDefaultPool.installIPv6IPPool is true but IPv6 is disabled: set ipam.enableIPv6=true or installIPv6IPPool=false" -}}
{{- end -}}
{{- if or (not $pool.ipv6Subnet) (not $pool.ipv6IPRanges) -}}
{{- fail "clusterDefaultPool.installIPv6IPPool is true but clusterDefaultPool.ipv6Subnet or ipv6IPRanges is empty: give both, e.g. fd00::/64 and [fd00::10-fd00::100]" -}}
{{- end -}}
{{- end -}}
{{- $tls := .Values.spiderpoolController.tls -}}
{{- if and (eq $tls.method "provided") (or (not $tls.provided.tlsCert) (not $tls.provided.tlsKey) (not $tls.provided.tlsCa)) -}}
{{- fail "spiderpoolController.tls.method=provided needs spiderpoolController.tls.provided.tlsCert, tlsKey and tlsCa (PEM)" -}}
{{- end -}}
{{- if and .Values.spiderpoolAgent.prometheus.serviceMonitor.install (not .Values.spiderpoolAgent.prometheus.enabled) -}}
{{- fail "spiderpoolAgent.prometheus.serviceMonitor.install needs spiderpoolAgent.prometheus.enabled=true (the metrics Service it selects)" -}}
{{- end -}}
{{- if and .Values.spiderpoolController.prometheus.serviceMonitor.install (not .Values.spiderpoolController.prometheus.enabled) -}}
{{- fail "spiderpoolController.prometheus.serviceMonitor.install needs spiderpoolController.prometheus.enabled=true (the metrics Service it selects)" -}}
{{- end -}}
{{- end -}}

{{/* The controller's replicas: no more than the nodes it may run on (one per node on the host
network), when the cluster can be asked (helm install/upgrade; `helm template` has no cluster and
renders the value as given). A one-node cluster gets one replica, and so no PodDisruptionBudget
that would block its drain. */}}
{{- define "spiderpool.controllerReplicas" -}}
{{- $c := .Values.spiderpoolController -}}
{{- $want := int $c.replicas -}}
{{- $nodes := lookup "v1" "Node" "" "" -}}
{{- if and $nodes (gt (len ($nodes.items | default list)) 0) -}}
{{- $fit := 0 -}}
{{- range $nodes.items -}}
{{- $labels := .metadata.labels | default dict -}}
{{- $match := true -}}
{{- range $k, $v := $c.nodeSelector -}}
{{- if ne (get $labels $k) $v }}{{ $match = false }}{{ end -}}
{{- end -}}
{{- if $match }}{{ $fit = add1 $fit }}{{ end -}}
{{- end -}}
{{- min $want (max $fit 1) -}}
{{- else -}}
{{- $want -}}
{{- end -}}
{{- end -}}
