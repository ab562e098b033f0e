#!/usr/bin/env bash
# Backup and restore on this machine, on a 3-node kvserver cluster (SQLite, durable
# settings), for two datasets: 1M keys of 100 B and 10k keys of 100 KiB.
#
#   backup:   `kvctl backup save` (GET /v1/backup, checked end to end) — MiB/s, keys/s;
#   restore:  a new node started with --bootstrap --restore-from, until it serves the
#             backup's revision and has sealed it (snapshot) — MiB/s, keys/s;
#   p99:      puts (100 B, 16 connections) without, then during back-to-back backups;
#   RPO:      continuous backup (`kvctl backup continuous`, flush every 1 s) while
#             kvbench puts at 16 connections; bench/rpo.py times each probe write from
#             its acknowledgement to the segment that holds it (small dataset only).
#
# Everything it starts it stops. ~8 minutes.
#   bench/backup.sh
#   DATASETS=small SMALL_KEYS=200000 bench/backup.sh     # quicker
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATASETS="${DATASETS:-small large}"
SMALL_KEYS="${SMALL_KEYS:-1000000}"
LARGE_KEYS="${LARGE_KEYS:-10000}"
PUT_S="${PUT_S:-10}"
RPO_S="${RPO_S:-20}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
(cd "$ROOT" && cargo build --release --locked -q -p kvserver -p kvbench -p kvchaos)
KVSERVER="$ROOT/target/release/kvserver"
KVCHAOS="$ROOT/target/release/kvchaos"
KVBENCH="$ROOT/target/release/kvbench"
KVCTL="$ROOT/target/release/kvctl"
RESULTS="$OUT/backup.jsonl"
: > "$RESULTS"
now() { date +%s.%N; }
record() { echo "$1" >> "$RESULTS"; echo "$1" >&2; }

dataset() {  # dataset NAME KEYS VALUE_BYTES
  local name=$1 keys=$2 size=$3
  echo "== $name: $keys keys of $size B" >&2
  start_kv "$name" 3
  local eps_var="EPS_$name" pids_var="PIDS_$name" harness_var="HARNESS_$name"
  local eps=${!eps_var} first=${!eps_var%%,*}
  local t0 t1
  t0=$(now)
  "$KVBENCH" --endpoints "$eps" --workload put --keys "$keys" --value-size "$size" --preload \
    --connections 32 --duration-s 0.2 --warmup-s 0 --json > /dev/null
  t1=$(now)
  record "{\"dataset\":\"$name\",\"step\":\"preload\",\"seconds\":$(echo "$t1 - $t0" | bc)}"

  # Full backup.
  local file="$OUT/$name.kvbak"
  t0=$(now)
  "$KVCTL" --endpoints "$first" --timeout-ms 600000 backup save "$file" > "$OUT/$name.save.json"
  t1=$(now)
  local bytes rev
  bytes=$(stat -c %s "$file")
  rev=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["header"]["revision"])' "$OUT/$name.save.json")
  record "{\"dataset\":\"$name\",\"step\":\"backup\",\"keys\":$keys,\"bytes\":$bytes,\"seconds\":$(echo "$t1 - $t0" | bc)}"

  # Restore into a new single-node cluster, until it serves the revision, sealed.
  take_port; local api=$PORT; take_port; local raft=$PORT
  t0=$(now)
  "$KVSERVER" --node-id 1 --cluster-id "restored-$name" --data-dir "$OUT/restored-$name" \
    --api-addr "127.0.0.1:$api" --raft-addr "127.0.0.1:$raft" --bootstrap --restore-from "$file" \
    --log-level warn > "$OUT/restored-$name.log" 2>&1 &
  local rpid=$!
  PIDS+=("$rpid")
  local ok=""
  for _ in $(seq 1 3000); do
    if curl -sf "http://127.0.0.1:$api/v1/cluster" 2>/dev/null | python3 -c '
import json,sys
c=json.load(sys.stdin)
sys.exit(0 if c.get("revision")=='"$rev"' and c.get("snapshot_index") is not None else 1)'; then ok=1; break; fi
    kill -0 "$rpid" 2>/dev/null || break
    sleep 0.1
  done
  t1=$(now)
  [ -n "$ok" ] || { echo "error: the restore did not complete" >&2; tail -n 20 "$OUT/restored-$name.log" >&2; return 1; }
  record "{\"dataset\":\"$name\",\"step\":\"restore\",\"keys\":$keys,\"bytes\":$bytes,\"seconds\":$(echo "$t1 - $t0" | bc)}"
  stop_pids "$rpid"

  # Put latency without, then during back-to-back backups.
  "$KVBENCH" --endpoints "$eps" --pids "${!pids_var}" --workload put --keys 10000 --value-size 100 \
    --connections 16 --duration-s "$PUT_S" --warmup-s 1 --json \
    | sed "s/^{/{\"dataset\":\"$name\",\"step\":\"puts\",/" >> "$RESULTS"
  (while true; do "$KVCTL" --endpoints "$first" --timeout-ms 600000 backup save "$OUT/$name.loop.kvbak" > /dev/null 2>&1 || true; done) &
  local loop=$!
  "$KVBENCH" --endpoints "$eps" --pids "${!pids_var}" --workload put --keys 10000 --value-size 100 \
    --connections 16 --duration-s "$PUT_S" --warmup-s 1 --json \
    | sed "s/^{/{\"dataset\":\"$name\",\"step\":\"puts during backups\",/" >> "$RESULTS"
  kill "$loop" 2>/dev/null || true; wait "$loop" 2>/dev/null || true
  pkill -f "$OUT/$name.loop.kvbak" 2>/dev/null || true

  if [ "$name" = small ]; then
    # Continuous backup's recovery point under load.
    local dest="$OUT/continuous"
    "$KVCTL" --endpoints "$first" --timeout-ms 600000 backup continuous --dest "$dest" \
      --flush-interval-ms 1000 --scratch "$OUT" > "$OUT/continuous.log" 2>&1 &
    local follower=$!
    PIDS+=("$follower")
    for _ in $(seq 1 1200); do
      compgen -G "$dest/bench-$name/full/*.kvbak" >/dev/null && break
      sleep 0.1
    done
    "$KVBENCH" --endpoints "$eps" --workload put --keys 10000 --value-size 100 --connections 16 \
      --duration-s "$RPO_S" --warmup-s 0 --json > "$OUT/rpo-load.json" &
    local load=$!
    local rpo
    rpo=$(python3 "$ROOT/bench/rpo.py" "$first" "$dest" "bench-$name" "$RPO_S" 0.25)
    wait "$load"
    local rate
    rate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops_per_s"])' "$OUT/rpo-load.json" 2>/dev/null || echo null)
    record "{\"dataset\":\"$name\",\"step\":\"rpo\",\"load_puts_per_s\":$rate,${rpo#\{}"
    stop_pids "$follower"
  fi
  stop_pids "${!harness_var}"
}

for d in $DATASETS; do
  case $d in
    small) dataset small "$SMALL_KEYS" 100 ;;
    large) dataset large "$LARGE_KEYS" 102400 ;;
    *) echo "unknown dataset $d (small, large)" >&2; exit 2 ;;
  esac
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["dataset"], {})[r["step"]] = r
print("| dataset | backup MiB/s | backup keys/s | restore MiB/s | restore keys/s | put p99 ms (alone → during backups) | put/s (alone → during) |")
print("|---|---|---|---|---|---|---|")
for name, s in by.items():
    b, r = s.get("backup"), s.get("restore")
    p, q = s.get("puts", {}), s.get("puts during backups", {})
    mib = lambda x: x["bytes"] / 2**20 / x["seconds"]
    ks = lambda x: x["keys"] / x["seconds"]
    lat = lambda x: x.get("p99_ms")
    print(f"| {name}: {b['keys']:,} keys, {b['bytes']/2**20:.0f} MiB file | {mib(b):.1f} | {ks(b):,.0f} | {mib(r):.1f} | {ks(r):,.0f} "
          f"| {lat(p)} → {lat(q)} | {p.get('ops_per_s', 0):,.0f} → {q.get('ops_per_s', 0):,.0f} |")
for name, s in by.items():
    if "rpo" in s:
        x = s["rpo"]
        print(f"\nRPO of continuous backup (flush 1 s) under {x['load_puts_per_s']:,.0f} puts/s: "
              f"p50 {x['rpo_p50_ms']} ms, p99 {x['rpo_p99_ms']} ms, max {x['rpo_max_ms']} ms over {x['probes']} probes")
PY
