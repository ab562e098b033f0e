#!/usr/bin/env bash
# Side-by-side benchmark of kvserver and etcd on this machine, one run, same load
# generator (kvbench), durable settings on both sides.
#
#   main table: 3-node kvserver (SQLite) vs 3-member etcd (Debian's etcd-server,
#               default settings), put / linearizable get / stale get / CAS at 1, 16
#               and 64 connections, the two stores alternating cell by cell;
#   more rows:  3-node kvserver on PostgreSQL (one local server, fsync on, synchronous
#               commit) against the 3-member etcd cells of the main table, 1-node
#               kvserver vs 1-member etcd, and the loopback HTTP floor (kvbench's
#               fixed-response server under the same load generator);
#   TLS rows:   the main table's cells again with TLS on both sides — kvserver with
#               peer mTLS and HTTPS (`kvchaos cluster --tls`), etcd with client and
#               peer TLS and client-certificate auth (`--client-cert-auth`,
#               `--peer-client-cert-auth`), certificates from one CA (`kvchaos certs`) —
#               and the cost of TLS against the plain cells of the same run.
#
# Everything it starts it stops (trap). etcd and PostgreSQL are installed from
# Debian packages if absent. ~6 minutes.
#
#   bench/compare.sh                 # everything
#   EXTRA=0 bench/compare.sh         # main table only (~3 min)
#   TLS=0 bench/compare.sh           # without the TLS rows
#   DURATION=10 bench/compare.sh     # longer cells
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
KEYS="${KEYS:-10000}"
WORKLOADS="${WORKLOADS:-put get stale-get cas}"
CONNS="${CONNS:-1 16 64}"
EXTRA="${EXTRA:-1}"
TLS="${TLS:-1}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
command -v etcd >/dev/null || apt_install etcd-server
(cd "$ROOT" && cargo build --release --locked -q -p kvserver -p kvbench -p kvchaos)
KVSERVER="$ROOT/target/release/kvserver"
KVCHAOS="$ROOT/target/release/kvchaos"
KVBENCH="$ROOT/target/release/kvbench"

# start_etcd NAME N [tls]: an N-member etcd cluster; with `tls`, client and peer TLS
# with client-certificate auth on both (certificates in $CERTS). Sets EPS_NAME and PIDS_NAME.
start_etcd() {
  local name=$1 n=$2 tls=${3:-} cluster="" eps="" pids="" client=() peer=() s=http sec=()
  [ -n "$tls" ] && s=https
  for i in $(seq 1 "$n"); do
    take_port; client[i]=$PORT; take_port; peer[i]=$PORT
    cluster+="${cluster:+,}e$i=$s://127.0.0.1:${peer[i]}"
  done
  for i in $(seq 1 "$n"); do
    if [ -n "$tls" ]; then
      sec=(--cert-file "$CERTS/e$i.pem" --key-file "$CERTS/e$i-key.pem" --trusted-ca-file "$CERTS/ca.pem"
           --client-cert-auth --peer-cert-file "$CERTS/e$i.pem" --peer-key-file "$CERTS/e$i-key.pem"
           --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth)
    fi
    etcd --name "e$i" --data-dir "$OUT/$name/$i" \
      --listen-client-urls "$s://127.0.0.1:${client[i]}" --advertise-client-urls "$s://127.0.0.1:${client[i]}" \
      --listen-peer-urls "$s://127.0.0.1:${peer[i]}" --initial-advertise-peer-urls "$s://127.0.0.1:${peer[i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --logger zap --log-level warn "${sec[@]}" \
      > "$OUT/$name-$i.log" 2>&1 &
    PIDS+=($!); pids+="${pids:+,}$!"; eps+="${eps:+,}127.0.0.1:${client[i]}"
  done
  for i in $(seq 1 "$n"); do
    if [ -n "$tls" ]; then
      CURL_TLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client.pem" --key "$CERTS/client-key.pem")
    else
      CURL_TLS=()
    fi
    wait_http "$s://127.0.0.1:${client[i]}/health"
  done
  CURL_TLS=()
  printf -v "EPS_${name//-/_}" '%s' "$eps"; printf -v "PIDS_${name//-/_}" '%s' "$pids"
}


RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
bench() {  # bench SETUP TARGET EPS PIDS WORKLOAD CONNS [kvbench TLS flags...]
  local setup=$1 target=$2 eps=$3 pids=$4 w=$5 c=$6; shift 6
  "$KVBENCH" --target "$target" --endpoints "$eps" --pids "$pids" --workload "$w" --connections "$c" \
    --duration-s "$DURATION" --warmup-s "$WARMUP" --keys "$KEYS" --json "$@" \
    | sed "s/^{/{\"setup\":\"$setup\",/" >> "$RESULTS"
}
preload() {  # preload TARGET EPS [kvbench TLS flags...]
  local target=$1 eps=$2; shift 2
  "$KVBENCH" --target "$target" --endpoints "$eps" --workload put --connections 64 --keys "$KEYS" \
    --preload --duration-s 0 --warmup-s 0 --json "$@" > /dev/null
}

echo "starting a 3-node kvserver (SQLite) and a 3-member etcd" >&2
start_kv kv3 3
start_etcd etcd3 3
preload kv "$EPS_kv3"; preload etcd "$EPS_etcd3"
for w in $WORKLOADS; do
  for c in $CONNS; do
    echo "  $w c=$c" >&2
    bench kv3 kv "$EPS_kv3" "$PIDS_kv3" "$w" "$c"
    bench etcd3 etcd "$EPS_etcd3" "$PIDS_etcd3" "$w" "$c"
  done
done
stop_pids "$HARNESS_kv3"; stop_pids "$PIDS_etcd3"

if [ "$EXTRA" = 1 ]; then
  echo "starting PostgreSQL and a 3-node kvserver on it" >&2
  start_pg
  KV_STORAGE_BACKEND=postgres KV_STORAGE_POSTGRES_URL="$PG_URL" start_kv kv3-pg 3
  preload kv "$EPS_kv3_pg"
  for cell in "put 1" "put 64" "get 64"; do
    set -- $cell; echo "  postgres $1 c=$2" >&2
    bench kv3-pg kv "$EPS_kv3_pg" "$PIDS_kv3_pg" "$1" "$2"
  done
  stop_pids "$HARNESS_kv3_pg"; $PG_CTL stop -m fast >/dev/null; PG_CTL=""

  echo "starting a 1-node kvserver and a 1-member etcd" >&2
  start_kv kv1 1
  start_etcd etcd1 1
  preload kv "$EPS_kv1"; preload etcd "$EPS_etcd1"
  for cell in "put 1" "put 64" "get 64"; do
    set -- $cell; echo "  1-node $1 c=$2" >&2
    bench kv1 kv "$EPS_kv1" "$PIDS_kv1" "$1" "$2"
    bench etcd1 etcd "$EPS_etcd1" "$PIDS_etcd1" "$1" "$2"
  done
  stop_pids "$HARNESS_kv1"; stop_pids "$PIDS_etcd1"

  echo "loopback HTTP floor (fixed-response server)" >&2
  take_port; FIXED="127.0.0.1:$PORT"
  "$KVBENCH" --serve-fixed "$FIXED" & PIDS+=($!); FIXED_PID=$!
  wait_http "http://$FIXED/"
  for c in $CONNS; do bench floor fixed "$FIXED" "$FIXED_PID" get "$c"; done
fi

if [ "$TLS" = 1 ]; then
  echo "TLS: a 3-node kvserver (peer mTLS + HTTPS) and a 3-member etcd (client + peer TLS)" >&2
  CERTS="$OUT/certs"
  "$KVCHAOS" certs --dir "$CERTS" --names e1,e2,e3 --hosts 127.0.0.1,localhost
  ETCD_TLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client.pem" --key "$CERTS/client-key.pem")
  KVCHAOS_FLAGS=--tls start_kv kv3-tls 3
  start_etcd etcd3-tls 3 tls
  read -r -a KV_TLS <<<"$TLSARGS_kv3_tls"
  preload kv "$EPS_kv3_tls" "${KV_TLS[@]}"; preload etcd "$EPS_etcd3_tls" "${ETCD_TLS[@]}"
  for w in $WORKLOADS; do
    for c in $CONNS; do
      echo "  tls $w c=$c" >&2
      bench kv3-tls kv "$EPS_kv3_tls" "$PIDS_kv3_tls" "$w" "$c" "${KV_TLS[@]}"
      bench etcd3-tls etcd "$EPS_etcd3_tls" "$PIDS_etcd3_tls" "$w" "$c" "${ETCD_TLS[@]}"
    done
  done
  stop_pids "$HARNESS_kv3_tls"; stop_pids "$PIDS_etcd3_tls"
fi

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cell = {(r["setup"], r["workload"], r["connections"]): r for r in rows}
def f(x, d=0):
    return "-" if x is None else f"{x:,.{d}f}"
def ratio(a, b):
    return f'{a["ops_per_s"] / b["ops_per_s"]:.2f}×' if a and b and b["ops_per_s"] else "-"
def errs(r):
    return sum(r["errors"].values()) if r else "-"
print("| workload | conns | kvserver ops/s | etcd ops/s | ratio | kv p50 ms | etcd p50 ms | kv p99 ms | etcd p99 ms | kv CPU µs/op | etcd CPU µs/op | kv RSS MiB | etcd RSS MiB | errors kv/etcd |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (setup, w, c), k in cell.items():
    e = cell.get(("etcd3", w, c))
    if setup != "kv3" or not e:
        continue
    print(f'| {w} | {c} | {f(k["ops_per_s"])} | {f(e["ops_per_s"])} | {ratio(k, e)} | {k["p50_ms"]:.2f} | {e["p50_ms"]:.2f} | '
          f'{k["p99_ms"]:.2f} | {e["p99_ms"]:.2f} | {f(k["server_cpu_us_per_op"])} | {f(e["server_cpu_us_per_op"])} | '
          f'{k["server_peak_rss_mib"]} | {e["server_peak_rss_mib"]} | {errs(k)}/{errs(e)} |')
other = [(s, w, c) for (s, w, c) in cell if s in ("kv3-pg", "kv1")]
if other:
    print()
    print("| setup | workload | conns | kvserver ops/s | etcd ops/s (same shape) | ratio | kv p50 ms | etcd p50 ms | kv p99 ms | etcd p99 ms | kv CPU µs/op | kv RSS MiB | etcd RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    names = {"kv3-pg": ("3-node, PostgreSQL", "etcd3"), "kv1": ("1-node, SQLite", "etcd1")}
    for s, w, c in other:
        k = cell[(s, w, c)]
        label, peer = names[s]
        e = cell.get((peer, w, c))
        print(f'| {label} | {w} | {c} | {f(k["ops_per_s"])} | {f(e and e["ops_per_s"])} | {ratio(k, e)} | {k["p50_ms"]:.2f} | '
              f'{e["p50_ms"] if e else 0:.2f} | {k["p99_ms"]:.2f} | {e["p99_ms"] if e else 0:.2f} | '
              f'{f(k["server_cpu_us_per_op"])} | {k["server_peak_rss_mib"]} | {e and e["server_peak_rss_mib"]} |')
tls = [(w, c) for (s, w, c) in cell if s == "kv3-tls"]
if tls:
    print()
    print("| TLS (both sides) | conns | kvserver ops/s | etcd ops/s | ratio | kv p50 ms | etcd p50 ms | kv p99 ms | etcd p99 ms | kv CPU µs/op | etcd CPU µs/op | kv TLS/plain | etcd TLS/plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w, c in tls:
        k, e = cell[("kv3-tls", w, c)], cell.get(("etcd3-tls", w, c))
        kp, ep = cell.get(("kv3", w, c)), cell.get(("etcd3", w, c))
        print(f'| {w} | {c} | {f(k["ops_per_s"])} | {f(e and e["ops_per_s"])} | {ratio(k, e)} | {k["p50_ms"]:.2f} | '
              f'{e["p50_ms"] if e else 0:.2f} | {k["p99_ms"]:.2f} | {e["p99_ms"] if e else 0:.2f} | '
              f'{f(k["server_cpu_us_per_op"])} | {f(e and e["server_cpu_us_per_op"])} | {ratio(k, kp)} | {ratio(e, ep)} |')
floor = {c: r for (s, w, c), r in cell.items() if s == "floor"}
if floor:
    print()
    print("| HTTP floor (fixed response) | conns | ops/s | p50 ms | p99 ms | kvserver lin. get / floor | kvserver stale get / floor |")
    print("|---|---|---|---|---|---|---|")
    for c, r in sorted(floor.items()):
        g, sg = cell.get(("kv3", "get", c)), cell.get(("kv3", "stale-get", c))
        pct = lambda x: f'{100 * x["ops_per_s"] / r["ops_per_s"]:.0f} %' if x and r["ops_per_s"] else "-"
        print(f'| fixed | {c} | {f(r["ops_per_s"])} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {pct(g)} | {pct(sg)} |')
PY
