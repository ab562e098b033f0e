#!/usr/bin/env bash
# Puts with 1, 3 and 16 partitions on 3 and 5 kvserver nodes (issue 21): the
# same load (kvbench put, 64 connections, spread over every node's API) on
# clusters that differ only in their partition count, with each node's share
# of the server CPU and of the partitions' leaderships. Keys are routed to
# their partition's group by whichever node a request reaches; with one
# partition, one leader does every write. On this machine the two cores cap the
# total, so what the table shows is whether the work spreads, not a speed-up.
#
# Everything it starts it stops (trap). ~4 minutes.
#
#   bench/partitions.sh
#   NODES="3" PARTITIONS="1 16" DURATION=10 bench/partitions.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
KEYS="${KEYS:-10000}"
CONNS="${CONNS:-64}"
NODES="${NODES:-3 5}"
PARTITIONS="${PARTITIONS:-1 3 16}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
(cd "$ROOT" && cargo build --release --locked -q -p kvserver -p kvbench -p kvchaos)
KVSERVER="$ROOT/target/release/kvserver"
KVCHAOS="$ROOT/target/release/kvchaos"
KVBENCH="$ROOT/target/release/kvbench"

ticks() {  # ticks PID: user+system CPU ticks of a process so far
  awk '{print $14 + $15}' "/proc/$1/stat"
}

printf '| nodes | partitions | put ops/s | p50 ms | p99 ms | server CPU us/op | CPU share per node | leaderships per node |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for n in $NODES; do
  for p in $PARTITIONS; do
    name="n${n}p${p}"
    start_kv "$name" "$n" --set "partitions=$p" --set "initial_nodes=$n"
    eps_var="EPS_$name"; pids_var="PIDS_$name"; harness_var="HARNESS_$name"
    eps="${!eps_var}"; pids="${!pids_var}"
    first="${eps%%,*}"
    # Placed and formed: every partition has a leader.
    for _ in $(seq 1 300); do
      if curl -sf "http://$first/v1/partitions" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if len(d["items"]) == int(sys.argv[1]) and all(i["formed"] and i["leader_id"] for i in d["items"]) else 1)
' "$p"; then break; fi
      sleep 0.2
    done
    "$KVBENCH" --target kv --endpoints "$eps" --workload put --connections 64 --keys "$KEYS" \
      --preload --duration-s 0 --warmup-s 0 --json > /dev/null
    declare -A before=()
    for pid in ${pids//,/ }; do before[$pid]=$(ticks "$pid"); done
    report=$("$KVBENCH" --target kv --endpoints "$eps" --pids "$pids" --workload put \
      --connections "$CONNS" --duration-s "$DURATION" --warmup-s "$WARMUP" --keys "$KEYS" --json)
    shares=""; total=0
    declare -A used=()
    for pid in ${pids//,/ }; do used[$pid]=$(( $(ticks "$pid") - before[$pid] )); total=$((total + used[$pid])); done
    for pid in ${pids//,/ }; do
      shares+="${shares:+ / }$(( total > 0 ? 100 * used[$pid] / total : 0 ))%"
    done
    leaders=$(curl -sf "http://$first/v1/partitions" | python3 -c '
import json, sys, collections
d = json.load(sys.stdin)
c = collections.Counter(i["leader_id"] for i in d["items"])
print(" / ".join(str(c.get(n, 0)) for n in range(1, int(sys.argv[1]) + 1)))
' "$n")
    python3 - "$n" "$p" "$shares" "$leaders" <<PY
import json, sys
r = json.loads('''$report''')
n, p, shares, leaders = sys.argv[1:5]
print(f"| {n} | {p} | {r['ops_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r.get('server_cpu_us_per_op') or 0:.0f} | {shares} | {leaders} |")
PY
    stop_pids "${!harness_var}"
    unset before used
  done
done
