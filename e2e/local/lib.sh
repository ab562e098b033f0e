# Shared settings of the local Kubernetes provisioner (sourced, not run).
#
# Everything lives in two places outside the repository:
#   $KVC_CACHE  binaries built once per Kubernetes version (reused across runs)
#   $KVC_STATE  the running cluster: pids, certificates, data dirs, logs
# and one network: the bridge $KVC_BRIDGE with gateway $KVC_GATEWAY, which is
# also the node's address, the DNS server's address and where pods reach the
# host (e.g. the PostgreSQL the e2e suite starts).
set -euo pipefail

KVC_K8S_VERSION="1.20.2"
KVC_CACHE="${KVC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvcluster-e2e}"
KVC_BIN="$KVC_CACHE/k8s-$KVC_K8S_VERSION/bin"
KVC_STATE="${KVC_STATE:-/var/tmp/kvcluster-e2e}"
KVC_BRIDGE="${KVC_BRIDGE:-kvc0}"
KVC_POD_CIDR="${KVC_POD_CIDR:-10.244.0.0/24}"
KVC_GATEWAY="${KVC_GATEWAY:-10.244.0.1}"
KVC_SERVICE_CIDR="${KVC_SERVICE_CIDR:-10.96.0.0/16}"
KVC_NODE="${KVC_NODE:-kvc-node}"
KVC_PAUSE_IMAGE="registry.k8s.io/pause:kvc-$KVC_K8S_VERSION"
# Ports on 127.0.0.1 only; chosen away from the usual defaults so a
# developer's own etcd/apiserver is not disturbed.
KVC_ETCD_PORT="${KVC_ETCD_PORT:-23790}"
KVC_ETCD_PEER_PORT="${KVC_ETCD_PEER_PORT:-23800}"
KVC_API_PORT="${KVC_API_PORT:-16443}"
KUBECONFIG_OUT="$KVC_STATE/kubeconfig"
KVC_CONTAINERD_SOCK="$KVC_STATE/containerd/containerd.sock"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it starts containerd, kubelet and changes iptables)"; }

# ctr against our own containerd, never the host's.
kvc_ctr() { ctr --address "$KVC_CONTAINERD_SOCK" -n k8s.io "$@"; }
kvc_kubectl() { "$KVC_BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" "$@"; }
