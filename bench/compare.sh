#!/usr/bin/env bash
# Side-by-side benchmark: a 3-node kvserver (SQLite, durable defaults) and a
# 3-member etcd (Debian's etcd-server, default durable settings) on 127.0.0.1,
# driven by the same load generator (kvbench) with the same workloads at 1, 16
# and 64 connections, alternating between the stores. Prints one table with
# the ratio kvserver/etcd per cell. Everything it starts it stops.
#
#   bench/compare.sh                 # ~5 min
#   DURATION=10 bench/compare.sh     # longer cells
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
KEYS="${KEYS:-10000}"
WORKLOADS="${WORKLOADS:-put get stale-get cas}"
CONNS="${CONNS:-1 16 64}"
OUT="$(mktemp -d -t kvc-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$OUT"
}
trap cleanup EXIT

if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
fi
(cd "$ROOT" && cargo build --release --locked -q -p kvserver -p kvbench)
KVSERVER="$ROOT/target/release/kvserver"
KVBENCH="$ROOT/target/release/kvbench"

# 12 distinct free ports on 127.0.0.1.
read -r -a P <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(12):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"
wait_http() {  # wait_http URL: polls until it answers (30 s).
  for _ in $(seq 1 150); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "error: $1 did not come up" >&2; return 1
}

for i in 1 2 3; do
  api=${P[$((i-1))]}; raft=${P[$((i+2))]}
  "$KVSERVER" --node-id "$i" --cluster-id bench --data-dir "$OUT/kv$i" \
    --api-addr "127.0.0.1:$api" --raft-addr "127.0.0.1:$raft" --log-level warn > "$OUT/kv$i.log" 2>&1 &
  PIDS+=($!); KV_PIDS+="${KV_PIDS:+,}$!"
  KV_EPS+="${KV_EPS:+,}127.0.0.1:$api"
done
for i in 1 2 3; do wait_http "http://127.0.0.1:${P[$((i-1))]}/healthz"; done
# Node 1 forms a one-voter cluster; 2 and 3 join as learners and are promoted.
kv_post() { curl -sf -XPOST "http://127.0.0.1:${P[0]}$1" -H 'content-type: application/json' -d "$2" > /dev/null; }
kv_post /v1/cluster/init '{}'
wait_http "http://127.0.0.1:${P[0]}/readyz"
for i in 2 3; do
  kv_post /v1/cluster/learners "{\"id\":$i,\"api_addr\":\"127.0.0.1:${P[$((i-1))]}\",\"raft_addr\":\"127.0.0.1:${P[$((i+2))]}\",\"wait\":true}"
done
kv_post /v1/cluster/membership '{"add_voters":[2,3]}'
for i in 1 2 3; do wait_http "http://127.0.0.1:${P[$((i-1))]}/readyz"; done

cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:${P[$((i+8))]}"; done
for i in 1 2 3; do
  client=${P[$((i+5))]}; peer=${P[$((i+8))]}
  etcd --name "e$i" --data-dir "$OUT/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new --logger zap --log-level warn \
    > "$OUT/etcd$i.log" 2>&1 &
  PIDS+=($!); ETCD_PIDS+="${ETCD_PIDS:+,}$!"
  ETCD_EPS+="${ETCD_EPS:+,}127.0.0.1:$client"
done
for i in 1 2 3; do wait_http "http://127.0.0.1:${P[$((i+5))]}/health"; done

bench() {  # bench TARGET EPS PIDS WORKLOAD CONNS [extra]
  "$KVBENCH" --target "$1" --endpoints "$2" --pids "$3" --workload "$4" --connections "$5" \
    --duration-s "$DURATION" --warmup-s "$WARMUP" --keys "$KEYS" --json "${@:6}"
}
echo "preloading $KEYS keys into each store" >&2
for t in kv etcd; do
  eps=$([ $t = kv ] && echo "$KV_EPS" || echo "$ETCD_EPS")
  "$KVBENCH" --target $t --endpoints "$eps" --workload put --connections 64 --keys "$KEYS" \
    --preload --duration-s 0 --warmup-s 0 --json > /dev/null
done

: > "$OUT/results.jsonl"
for w in $WORKLOADS; do
  for c in $CONNS; do
    echo "  $w c=$c" >&2
    bench kv "$KV_EPS" "$KV_PIDS" "$w" "$c" >> "$OUT/results.jsonl"
    bench etcd "$ETCD_EPS" "$ETCD_PIDS" "$w" "$c" >> "$OUT/results.jsonl"
  done
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cells = {}
for r in rows:
    cells.setdefault((r["workload"], r["connections"]), {})[r["target"]] = r
def f(x, d=0):
    return "-" if x is None else f"{x:,.{d}f}"
print("| workload | conns | kvserver ops/s | etcd ops/s | ratio | kv p50 ms | etcd p50 ms | kv p99 ms | etcd p99 ms | kv CPU µs/op | etcd CPU µs/op | kv RSS MiB | etcd RSS MiB | errors kv/etcd |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (w, c), t in cells.items():
    k, e = t.get("kv"), t.get("etcd")
    if not k or not e:
        continue
    ratio = k["ops_per_s"] / e["ops_per_s"] if e["ops_per_s"] else float("nan")
    errs = f'{sum(k["errors"].values())}/{sum(e["errors"].values())}'
    print(f'| {w} | {c} | {f(k["ops_per_s"])} | {f(e["ops_per_s"])} | {ratio:.2f}× | {k["p50_ms"]:.2f} | {e["p50_ms"]:.2f} | '
          f'{k["p99_ms"]:.2f} | {e["p99_ms"]:.2f} | {f(k["server_cpu_us_per_op"])} | {f(e["server_cpu_us_per_op"])} | '
          f'{k["server_peak_rss_mib"]} | {e["server_peak_rss_mib"]} | {errs} |')
PY
