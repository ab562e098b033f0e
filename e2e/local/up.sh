#!/usr/bin/env bash
# Brings up a single-node Kubernetes from Debian packages (see README
# "Kubernetes without Docker"): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd + runc, kubelet, kube-proxy, a CNI bridge, dnsmasq
# as cluster DNS and a small agent (agent.sh) that keeps DNS records and
# hostPath volumes in step with the API. Writes $KVC_STATE/kubeconfig.
#
# Every process is started here, recorded in $KVC_STATE/pids/<name>.pid and
# stopped by that PID in down.sh.
source "$(dirname "$0")/lib.sh"
need_root
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ -d "$KVC_STATE/pids" ] && ls "$KVC_STATE/pids"/*.pid >/dev/null 2>&1; then
  die "a local cluster is already running (state in $KVC_STATE); run e2e/local/down.sh first"
fi
"$HERE/build.sh"

mkdir -p "$KVC_STATE"/{pids,logs,pki,etcd,kubelet,cni/net.d,containerd,pv}
chmod 0711 "$KVC_STATE"
started=$(date +%s)

# start NAME CMD...: runs CMD in its own session, logs to logs/NAME.log, records the PID.
start() {
  local name=$1; shift
  setsid "$@" >"$KVC_STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$KVC_STATE/pids/$name.pid"
  log "started $name (pid $!)"
}
# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${secs}s waiting for $what; last log lines:"
      tail -n 30 "$KVC_STATE"/logs/*.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  log "$what: ready"
}

# --- network: the bridge exists before anything uses its address ---------
if ! ip link show "$KVC_BRIDGE" >/dev/null 2>&1; then
  ip link add "$KVC_BRIDGE" type bridge
fi
ip addr replace "$KVC_GATEWAY/${KVC_POD_CIDR#*/}" dev "$KVC_BRIDGE"
ip link set "$KVC_BRIDGE" up
sysctl -qw net.ipv4.ip_forward=1
if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  # Service traffic between two pods on the bridge must pass iptables both ways.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
fi
cat > "$KVC_STATE/cni/net.d/10-kvc.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kvc",
  "plugins": [
    {"type": "bridge", "bridge": "$KVC_BRIDGE", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "subnet": "$KVC_POD_CIDR", "gateway": "$KVC_GATEWAY",
              "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$KVC_STATE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF

# --- certificates and credentials -----------------------------------------
PKI="$KVC_STATE/pki"
if [ ! -f "$PKI/apiserver.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -days 30 -subj "/CN=kvcluster-e2e-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" \
    -subj "/CN=kube-apiserver" 2>/dev/null
  svc_ip="$(echo "$KVC_SERVICE_CIDR" | cut -d/ -f1 | awk -F. '{print $1"."$2"."$3".1"}')"
  printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n' \
    "$KVC_GATEWAY" "$svc_ip" > "$PKI/san.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -out "$PKI/apiserver.crt" -days 30 -extfile "$PKI/san.ext" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  token=$(openssl rand -hex 24)
  echo "$token,kvc-admin,kvc-admin,\"system:masters\"" > "$PKI/tokens.csv"
  chmod 0600 "$PKI"/*.key "$PKI/tokens.csv"
fi
token=$(cut -d, -f1 "$PKI/tokens.csv")
API_URL="https://$KVC_GATEWAY:$KVC_API_PORT"
cat > "$KUBECONFIG_OUT" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kvc-local
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: kvc-admin
  user:
    token: $token
contexts:
- name: kvc-local
  context: {cluster: kvc-local, user: kvc-admin}
current-context: kvc-local
EOF
chmod 0600 "$KUBECONFIG_OUT"

# --- control plane ---------------------------------------------------------
start etcd etcd --name kvc-e2e --data-dir "$KVC_STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$KVC_ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$KVC_ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$KVC_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$KVC_ETCD_PEER_PORT" \
  --initial-cluster "kvc-e2e=http://127.0.0.1:$KVC_ETCD_PEER_PORT" \
  --unsafe-no-fsync
wait_for etcd 30 curl -sf "http://127.0.0.1:$KVC_ETCD_PORT/health"

start kube-apiserver "$KVC_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$KVC_ETCD_PORT" \
  --bind-address="$KVC_GATEWAY" --secure-port="$KVC_API_PORT" --advertise-address="$KVC_GATEWAY" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=Node,RBAC \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-cluster-ip-range="$KVC_SERVICE_CIDR" \
  --kubelet-preferred-address-types=InternalIP \
  --allow-privileged=true --insecure-port=0
wait_for kube-apiserver 90 kvc_kubectl get --raw /readyz

start kube-controller-manager "$KVC_BIN/kube-controller-manager" \
  --kubeconfig="$KUBECONFIG_OUT" --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" --use-service-account-credentials=false \
  --leader-elect=false --port=0 --secure-port=0 --bind-address=127.0.0.1 \
  --controllers='*,-nodeipam'
start kube-scheduler "$KVC_BIN/kube-scheduler" \
  --kubeconfig="$KUBECONFIG_OUT" --leader-elect=false --port=0 --secure-port=0

# --- node ------------------------------------------------------------------
cat > "$KVC_STATE/containerd/config.toml" <<EOF
version = 2
root = "$KVC_STATE/containerd/root"
state = "$KVC_STATE/containerd/state"
[grpc]
  address = "$KVC_CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$KVC_PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$KVC_STATE/cni/net.d"
EOF
start containerd containerd --config "$KVC_STATE/containerd/config.toml"
wait_for containerd 30 kvc_ctr version

# The pause image: the static binary built from Kubernetes' own source.
python3 "$HERE/mkimage.py" --tag "$KVC_PAUSE_IMAGE" --out "$KVC_STATE/pause.tar" \
  --file "$KVC_BIN/pause:/pause" --entrypoint /pause >/dev/null
kvc_ctr images import "$KVC_STATE/pause.tar" >/dev/null

# Pods resolve through dnsmasq on the gateway; no host search domains leak in.
echo "nameserver $KVC_GATEWAY" > "$KVC_STATE/resolv.conf"
: > "$KVC_STATE/hosts.cluster"
start dnsmasq dnsmasq --no-daemon --no-resolv --no-hosts --keep-in-foreground \
  --listen-address="$KVC_GATEWAY" --bind-interfaces --local=/cluster.local/ \
  --addn-hosts="$KVC_STATE/hosts.cluster" --pid-file="$KVC_STATE/dnsmasq.pid"

start kubelet "$KVC_BIN/kubelet" \
  --kubeconfig="$KUBECONFIG_OUT" --container-runtime=remote \
  --container-runtime-endpoint="unix://$KVC_CONTAINERD_SOCK" \
  --cgroup-driver=cgroupfs --fail-swap-on=false --hostname-override="$KVC_NODE" \
  --node-ip="$KVC_GATEWAY" --address="$KVC_GATEWAY" --root-dir="$KVC_STATE/kubelet" \
  --read-only-port=0 --cluster-dns="$KVC_GATEWAY" --cluster-domain=cluster.local \
  --resolv-conf="$KVC_STATE/resolv.conf" --image-gc-high-threshold=100 \
  --image-gc-low-threshold=99 --eviction-hard= --pod-infra-container-image="$KVC_PAUSE_IMAGE" \
  --healthz-bind-address=127.0.0.1 --healthz-port=0 --volume-plugin-dir="$KVC_STATE/kubelet/plugins"
start kube-proxy "$KVC_BIN/kube-proxy" \
  --kubeconfig="$KUBECONFIG_OUT" --hostname-override="$KVC_NODE" --cluster-cidr="$KVC_POD_CIDR" \
  --proxy-mode=iptables --metrics-bind-address=127.0.0.1:10249 \
  --healthz-bind-address=127.0.0.1:10256 --conntrack-max-per-core=0
node_ready() {
  kvc_kubectl get node "$KVC_NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True
}
wait_for "node $KVC_NODE Ready" 120 node_ready

# The cluster's default StorageClass, served by the agent's hostPath provisioner.
kvc_kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: kvc-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kvcluster.io/local-hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
start agent "$HERE/agent.sh"
sa_ready() { kvc_kubectl -n default get secret -o name | grep -q default-token; }
wait_for "service account tokens" 60 sa_ready
dns_ready() { grep -q "kubernetes.default.svc.cluster.local" "$KVC_STATE/hosts.cluster"; }
wait_for "cluster DNS records" 30 dns_ready

log "local Kubernetes $KVC_K8S_VERSION up in $(( $(date +%s) - started ))s"
log "export KUBECONFIG=$KUBECONFIG_OUT"
