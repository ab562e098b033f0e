#!/usr/bin/env bash
# Hand-offs per put: how often each kind of thread of a kvserver parks (voluntary
# context switches, from /proc/PID/task/*/status) per acknowledged put, for a
# 1-node and a 3-node cluster under one client (the latency case, where every
# hand-off to an idle thread is a futex wake and a context switch). Thread kinds
# are grouped by name (tokio-runtime-worker, raft-log, sqlx-sqlite-worker, ...).
#
#   bench/handoffs.sh                      # the build of this checkout
#   KVSERVER=/path/to/old/kvserver bench/handoffs.sh   # another build, same method
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-5}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
if [ -z "${KVSERVER:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked -q -p kvserver -p kvbench -p kvchaos)
  KVSERVER="$ROOT/target/release/kvserver"
else
  (cd "$ROOT" && cargo build --release --locked -q -p kvbench -p kvchaos)
fi
KVCHAOS="$ROOT/target/release/kvchaos"
KVBENCH="$ROOT/target/release/kvbench"

# switches PIDS: "thread-kind count" lines, summed over the processes' threads.
switches() {
  local p t
  for p in ${1//,/ }; do
    for t in /proc/"$p"/task/*; do
      printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(sed -n 's/^voluntary_ctxt_switches:\s*//p' "$t/status")"
    done
  done | awk '{sub(/-[0-9]+$/, "", $1); s[$1] += $2} END {for (k in s) print k, s[k]}' | sort
}

measure() {  # measure NAME NODES
  local name=$1 n=$2
  start_kv "$name" "$n"
  local eps_var="EPS_$name" pids_var="PIDS_$name" harness_var="HARNESS_$name"
  local eps=${!eps_var} pids=${!pids_var}
  "$KVBENCH" --target kv --endpoints "${eps%%,*}" --workload put --connections 1 \
    --duration-s 1 --warmup-s 0 --keys 1000 --json >/dev/null
  switches "$pids" >"$OUT/$name.before"
  "$KVBENCH" --target kv --endpoints "${eps%%,*}" --workload put --connections 1 \
    --duration-s "$DURATION" --warmup-s 0 --keys 1000 --json >"$OUT/$name.json"
  switches "$pids" >"$OUT/$name.after"
  python3 - "$name" "$n" "$OUT/$name.before" "$OUT/$name.after" "$OUT/$name.json" <<'PY'
import json, sys
name, nodes, before, after, res = sys.argv[1:]
r = json.load(open(res))
ops = r["ops"] if "ops" in r else round(r["ops_per_s"] * r["duration_s"])
read = lambda f: {k: int(v) for k, v in (l.split() for l in open(f))}
b, a = read(before), read(after)
per = {k: (a[k] - b.get(k, 0)) / max(ops, 1) for k in a}
total = sum(per.values())
kinds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05)
print(f"| {nodes}-node | {ops} | {r['p50_ms']:.2f} | {total:.1f} | {kinds} |")
PY
  stop_pids "${!harness_var}"
}

echo "| cluster | puts | p50 ms | parks per put (all threads, all nodes) | by thread kind |"
echo "|---|---|---|---|---|"
measure one 1
measure three 3
