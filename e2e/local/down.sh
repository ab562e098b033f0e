#!/usr/bin/env bash
# Tears the local cluster down without leaving debris: every process started
# by up.sh (by its recorded PID, with its process group), the containers,
# the mounts under $KVC_STATE, the bridge and the iptables rules of kube-proxy
# and the CNI plugins, then $KVC_STATE itself. The binary cache stays.
# Safe to run twice, and on a half-started cluster.
source "$(dirname "$0")/lib.sh"
need_root
set +e

stop() {  # stop NAME: TERM its process group, KILL after 10 s.
  local f="$KVC_STATE/pids/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

[ -d "$KVC_STATE" ] || { log "nothing to tear down ($KVC_STATE does not exist)"; }
stop agent
stop kube-proxy
[ -x "$KVC_BIN/kube-proxy" ] && "$KVC_BIN/kube-proxy" --cleanup >/dev/null 2>&1
stop kubelet
# Containers, then their shims, then containerd.
if [ -S "$KVC_CONTAINERD_SOCK" ]; then
  kvc_ctr tasks ls 2>/dev/null | awk 'NR>1 {print $2}' | while read -r pid; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  done
fi
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $KVC_CONTAINERD_SOCK" 2>/dev/null); do
  kill -KILL "$pid" 2>/dev/null
done
stop containerd
stop postgres
stop s3
stop dnsmasq
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd

# Mounts: kubelet's secret tmpfs, containerd's overlay and shm mounts, netns files.
if [ -n "$KVC_STATE" ]; then
  for _ in 1 2 3; do
    mounts=$(awk -v s="$KVC_STATE" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r)
    [ -z "$mounts" ] && break
    for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
fi
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$ns" 2>/dev/null; done

# Network: pod veths go with their namespaces; the bridge and CNI chains are ours.
ip link show "$KVC_BRIDGE" >/dev/null 2>&1 && ip link delete "$KVC_BRIDGE" && log "deleted bridge $KVC_BRIDGE"
# iptables: kube-proxy --cleanup leaves the kubelet's chains (KUBE-FIREWALL,
# KUBE-MARK-*, canaries) and the CNI plugins' chains: unhook and delete them all.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for table in nat filter mangle; do
    chains=$("$ipt" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}')
    [ -z "$chains" ] && continue
    "$ipt" -t "$table" -S 2>/dev/null | grep -E -- "^-A [A-Z]+ .*-j (KUBE-|CNI-)" | grep -Ev -- "^-A (KUBE-|CNI-)" |
      sed 's/^-A/-D/' | while read -r rule; do eval "$ipt" -t "$table" "$rule" 2>/dev/null; done
    for chain in $chains; do "$ipt" -t "$table" -F "$chain" 2>/dev/null; done
    for chain in $chains; do "$ipt" -t "$table" -X "$chain" 2>/dev/null; done
  done
done

if [ -d "$KVC_STATE" ]; then
  left=$(awk -v s="$KVC_STATE" 'index($2, s) == 1' /proc/mounts | wc -l)
  [ "$left" -eq 0 ] || die "$left mounts under $KVC_STATE could not be removed"
  rm -rf "$KVC_STATE"
fi
log "local cluster torn down"
