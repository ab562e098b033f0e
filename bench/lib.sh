# Shared by the benchmark scripts (compare.sh, backup.sh): a scratch directory
# and process list cleaned up on exit, Debian packages on demand, free ports,
# waiting for HTTP, and kvserver clusters / PostgreSQL started for a run.
# Sourced after `set -euo pipefail`; expects ROOT and sets OUT, PIDS, PG_CTL.

OUT="$(mktemp -d -t kvc-bench.XXXXXX)"
PIDS=()
PG_CTL=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$PG_CTL" ]; then $PG_CTL stop -m immediate >/dev/null 2>&1 || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

apt_install() {  # apt_install PACKAGE
  echo "installing $1 (Debian package)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null; }
}
# Distinct free ports on 127.0.0.1, handed out by take_port (sets PORT).
read -r -a PORTS <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(40):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"
PI=0
take_port() { PORT=${PORTS[$PI]}; PI=$((PI + 1)); }
CURL_TLS=()
wait_http() {  # wait_http URL: polls until it answers 2xx (30 s); CURL_TLS: curl's TLS flags.
  for _ in $(seq 1 150); do curl -sf "${CURL_TLS[@]}" -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "error: $1 did not come up" >&2; return 1
}

# start_kv NAME N [kvserver flags...]: an N-node kvserver cluster formed by the
# project's one process harness (`kvchaos cluster`: node 1 initializes, the others
# join as learners and are promoted, every node ready). Sets EPS_NAME, PIDS_NAME
# (the kvserver processes, for kvbench's RSS figures) and HARNESS_NAME.
start_kv() {
  local name=$1 n=$2; shift 2
  local ready="$OUT/$name.ready"
  # KVCHAOS_FLAGS: flags of the harness itself (`--tls`); "$@" go to every kvserver.
  # shellcheck disable=SC2086
  "$KVCHAOS" cluster --kvserver "$KVSERVER" --nodes "$n" --cluster-id "bench-$name" \
    --ready-file "$ready" ${KVCHAOS_FLAGS:-} -- --log-level warn "$@" > "$OUT/$name.log" 2>&1 &
  local harness=$!
  PIDS+=("$harness")
  for _ in $(seq 1 300); do
    [ -f "$ready" ] && break
    if ! kill -0 "$harness" 2>/dev/null; then
      echo "error: cluster $name did not form:" >&2; tail -n 20 "$OUT/$name.log" >&2; return 1
    fi
    sleep 0.2
  done
  [ -f "$ready" ] || { echo "error: cluster $name did not come up in 60 s" >&2; return 1; }
  printf -v "EPS_${name//-/_}" '%s' "$(sed -n 's/^endpoints=//p' "$ready")"
  printf -v "PIDS_${name//-/_}" '%s' "$(sed -n 's/^pids=//p' "$ready")"
  printf -v "HARNESS_${name//-/_}" '%s' "$harness"
  # With --tls: the cluster's CA and a client certificate, for kvbench.
  printf -v "TLSARGS_${name//-/_}" '%s' "$(sed -n 's/^ca=/--cacert /p; s/^cert=/--cert /p; s/^key=/--key /p' "$ready" | tr '\n' ' ')"
}

stop_pids() {  # stop_pids 1,2,3
  local p
  for p in ${1//,/ }; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# start_pg: a private PostgreSQL server (fsync on, synchronous commit). Sets PG_URL.
start_pg() {
  local bin
  bin=$(compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -1 || true)
  if [ -z "$bin" ]; then
    apt_install postgresql
    # The package starts a system cluster; this benchmark uses its own.
    if command -v pg_lsclusters >/dev/null; then
      pg_lsclusters -h 2>/dev/null | while read -r ver cname _; do pg_ctlcluster "$ver" "$cname" stop 2>/dev/null || true; done
    fi
    bin=$(compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -1)
  fi
  local as=() dir="$OUT/pg"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: its files belong to the postgres user.
    chmod 755 "$OUT"; chown postgres: "$dir"; as=(runuser -u postgres --)
  fi
  take_port; local port=$PORT
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U kv --auth=trust -E UTF8 --locale=C.UTF-8 --no-instructions >/dev/null
  PG_CTL="${as[*]} $bin/pg_ctl -D $dir/data"
  $PG_CTL -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200" \
    -l "$dir/server.log" -w -t 60 start >/dev/null
  PG_URL="postgres://kv@127.0.0.1:$port/postgres"
}

