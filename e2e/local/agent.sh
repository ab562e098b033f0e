#!/usr/bin/env bash
# The local cluster's agent, started and stopped by up.sh/down.sh. Once a
# second it makes two things match the API:
#  - cluster DNS: the hosts file dnsmasq serves (a Service's ClusterIP as
#    <svc>.<ns>.svc.cluster.local; a pod with hostname+subdomain, as
#    StatefulSet pods have, as <host>.<subdomain>.<ns>.svc.cluster.local),
#    reloaded with SIGHUP when it changes;
#  - volumes: the `kvc-local` StorageClass's provisioner. A pending claim gets a
#    hostPath PersistentVolume bound to it (a directory under $KVC_STATE/pv); a
#    released volume of ours is deleted with its directory.
source "$(dirname "$0")/lib.sh"
PROVISIONER=kvcluster.io/local-hostpath
HOSTS="$KVC_STATE/hosts.cluster"

sync_dns() {
  local new="$HOSTS.new"
  kvc_kubectl get services,pods -A -o json 2>/dev/null | jq -r '
    .items[] |
    if .kind == "Service" then
      select(.spec.clusterIP != null and .spec.clusterIP != "None") |
      "\(.spec.clusterIP) \(.metadata.name).\(.metadata.namespace).svc.cluster.local"
    else
      select(.status.podIP != null and .spec.hostname != null and .spec.subdomain != null
             and .metadata.deletionTimestamp == null) |
      "\(.status.podIP) \(.spec.hostname).\(.spec.subdomain).\(.metadata.namespace).svc.cluster.local"
    end' | sort > "$new" || return 0
  if ! cmp -s "$new" "$HOSTS"; then
    mv "$new" "$HOSTS"
    kill -HUP "$(cat "$KVC_STATE/pids/dnsmasq.pid")" 2>/dev/null || true
  fi
}

sync_volumes() {
  local pvcs
  pvcs=$(kvc_kubectl get pvc -A -o json 2>/dev/null) || return 0
  echo "$pvcs" | jq -c '.items[] | select(.status.phase == "Pending" and (.spec.volumeName // "") == ""
        and (.spec.storageClassName // "") == "kvc-local")' |
  while read -r pvc; do
    local uid ns name size modes dir
    uid=$(jq -r .metadata.uid <<<"$pvc"); ns=$(jq -r .metadata.namespace <<<"$pvc")
    name=$(jq -r .metadata.name <<<"$pvc"); size=$(jq -r '.spec.resources.requests.storage' <<<"$pvc")
    modes=$(jq -c '.spec.accessModes' <<<"$pvc")
    dir="$KVC_STATE/pv/pvc-$uid"
    mkdir -p "$dir" && chmod 0777 "$dir"
    kvc_kubectl create -f - >/dev/null 2>&1 <<PV || true
{"apiVersion": "v1", "kind": "PersistentVolume",
 "metadata": {"name": "pvc-$uid", "annotations": {"pv.kubernetes.io/provisioned-by": "$PROVISIONER"}},
 "spec": {"capacity": {"storage": "$size"}, "accessModes": $modes,
          "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "kvc-local",
          "hostPath": {"path": "$dir", "type": "Directory"},
          "claimRef": {"namespace": "$ns", "name": "$name", "uid": "$uid"}}}
PV
  done
  kvc_kubectl get pv -o json 2>/dev/null | jq -r --arg p "$PROVISIONER" '.items[] |
      select(.metadata.annotations["pv.kubernetes.io/provisioned-by"] == $p
             and (.status.phase == "Released" or .status.phase == "Failed")) | .metadata.name' |
  while read -r pv; do
    kvc_kubectl delete pv "$pv" --wait=false >/dev/null 2>&1 && rm -rf "${KVC_STATE:?}/pv/$pv"
  done
}

trap 'exit 0' TERM INT
while true; do
  sync_dns
  sync_volumes
  sleep 1
done
