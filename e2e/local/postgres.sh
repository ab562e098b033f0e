#!/usr/bin/env bash
# Starts a private PostgreSQL for the e2e suite's PostgreSQL-backed KVCluster,
# listening on the bridge gateway so pods reach it (never on other interfaces).
# Started like every other process of the local cluster (pids/postgres.pid),
# stopped by down.sh. Prints the URL pods use.
source "$(dirname "$0")/lib.sh"
need_root
PGPORT="${KVC_PG_PORT:-25432}"
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDATA="$KVC_STATE/pg"
PW="kv-e2e-pw"
rm -rf "$PGDATA" "$KVC_STATE/pgsock"
mkdir -p "$PGDATA" "$KVC_STATE/pgsock"
chown postgres "$PGDATA" "$KVC_STATE/pgsock"
echo "$PW" > "$KVC_STATE/pg.pw"; chown postgres "$KVC_STATE/pg.pw"; chmod 0600 "$KVC_STATE/pg.pw"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres -A scram-sha-256 \
  --pwfile="$KVC_STATE/pg.pw" >/dev/null
echo "host all all $KVC_POD_CIDR scram-sha-256" >> "$PGDATA/pg_hba.conf"
echo "host all all $KVC_GATEWAY/32 scram-sha-256" >> "$PGDATA/pg_hba.conf"
setsid runuser -u postgres -- "$PGBIN/postgres" -D "$PGDATA" -c listen_addresses="$KVC_GATEWAY" \
  -c port="$PGPORT" -c unix_socket_directories="$KVC_STATE/pgsock" -c fsync=off \
  > "$KVC_STATE/logs/postgres.log" 2>&1 < /dev/null &
echo $! > "$KVC_STATE/pids/postgres.pid"
for _ in $(seq 1 60); do
  "$PGBIN/pg_isready" -q -h "$KVC_GATEWAY" -p "$PGPORT" && break
  sleep 0.5
done
"$PGBIN/pg_isready" -q -h "$KVC_GATEWAY" -p "$PGPORT" || { tail "$KVC_STATE/logs/postgres.log"; die "postgres did not start"; }
PGPASSWORD="$PW" psql -q -h "$KVC_GATEWAY" -p "$PGPORT" -U postgres -d postgres \
  -c "CREATE ROLE kv LOGIN PASSWORD '$PW'" -c "CREATE DATABASE kv OWNER kv" >/dev/null
log "postgres on $KVC_GATEWAY:$PGPORT"
echo "postgres://kv:$PW@$KVC_GATEWAY:$PGPORT/kv?sslmode=disable"
