#!/usr/bin/env bash
# Builds kvserver, kvctl and the operator and packs them into images (docker-archive
# tars made by mkimage.py, no Docker needed), tagged as the manifests and the
# chart expect them (docker.io/kvcluster/...:<version>), then loads them into
# the local cluster's containerd. KVC_PROFILE=release for optimized binaries
# (default: the debug build the test run already made, debug info stripped).
# Both images carry the host's CA bundle, as the Dockerfile's do (ca-certificates):
# backups to S3 over HTTPS verify the service's certificate against it.
# KVC_IMAGES_ONLY=1 writes the tars to $KVC_STATE/images without loading.
source "$(dirname "$0")/lib.sh"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROFILE="${KVC_PROFILE:-debug}"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
OUT="$KVC_STATE/images"
mkdir -p "$OUT/bin"

flag=(); [ "$PROFILE" = release ] && flag=(--release)
log "building binaries ($PROFILE)"
(cd "$ROOT" && cargo build --locked "${flag[@]}" -p kvserver -p kvcluster-operator --bins)
for b in kvserver kvctl kvcluster-operator; do
  objcopy --strip-debug "$ROOT/target/$PROFILE/$b" "$OUT/bin/$b"
done
if [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then
  need_root
  apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null
fi
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox-static is missing (run e2e/local/build.sh)"

python3 "$HERE/mkimage.py" --tag "docker.io/kvcluster/kvserver:$VERSION" --out "$OUT/kvserver.tar" \
  --file "$OUT/bin/kvserver:/usr/local/bin/kvserver" --file "$OUT/bin/kvctl:/usr/local/bin/kvctl" \
  --file "$BUSYBOX:/bin/busybox" --link /bin/sh:busybox --with-libs \
  --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
  --entrypoint /usr/local/bin/kvserver --user 10001
python3 "$HERE/mkimage.py" --tag "docker.io/kvcluster/kvcluster-operator:$VERSION" \
  --out "$OUT/operator.tar" --file "$OUT/bin/kvcluster-operator:/usr/local/bin/kvcluster-operator" \
  --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
  --with-libs --entrypoint /usr/local/bin/kvcluster-operator --user 10001

if [ "${KVC_IMAGES_ONLY:-0}" != 1 ]; then
  need_root
  for t in kvserver operator; do
    kvc_ctr images import "$OUT/$t.tar" >/dev/null
  done
  kvc_ctr images ls -q | grep kvcluster >&2
fi
