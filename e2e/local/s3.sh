#!/usr/bin/env bash
# Starts a private S3-protocol server (moto, from PyPI) for the e2e suite's
# backup scenario, listening on the bridge gateway so pods reach it (never on
# other interfaces), with one bucket. Started like every other process of the
# local cluster (pids/s3.pid), stopped by down.sh. Prints the endpoint.
source "$(dirname "$0")/lib.sh"
need_root
S3PORT="${KVC_S3_PORT:-29000}"
if ! command -v moto_server >/dev/null; then
  log "installing moto[server] (PyPI)"
  python3 -m pip install -q "moto[server]==5.2.1" >&2
fi
setsid moto_server -H "$KVC_GATEWAY" -p "$S3PORT" > "$KVC_STATE/logs/s3.log" 2>&1 < /dev/null &
echo $! > "$KVC_STATE/pids/s3.pid"
ENDPOINT="http://$KVC_GATEWAY:$S3PORT"
for _ in $(seq 1 60); do
  curl -fsS -o /dev/null -X PUT "$ENDPOINT/kvc-e2e-backups" 2>/dev/null && break
  sleep 0.5
done
curl -fsS -o /dev/null "$ENDPOINT/kvc-e2e-backups" || { tail "$KVC_STATE/logs/s3.log" >&2; die "the S3 server did not start"; }
log "S3 (moto) on $KVC_GATEWAY:$S3PORT, bucket kvc-e2e-backups"
echo "$ENDPOINT"
