#!/usr/bin/env bash
# Installs the Debian packages the local cluster needs and builds the
# Kubernetes binaries once from Debian's source package (cached per version in
# $KVC_CACHE; a second run returns at once).
source "$(dirname "$0")/lib.sh"
need_root

PKGS=(etcd-server containerd runc containernetworking-plugins golang-go rsync jq
      iptables conntrack socat ethtool busybox-static dnsmasq-base
      golang-github-modern-go-reflect2-dev dpkg-dev openssl iproute2 gcc libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -x "$KVC_BIN/kube-apiserver" ] && [ -f "$KVC_BIN/.complete" ]; then
  log "Kubernetes $KVC_K8S_VERSION binaries cached in $KVC_BIN"
  exit 0
fi

WORK="$KVC_CACHE/build-$KVC_K8S_VERSION"
rm -rf "$WORK"; mkdir -p "$WORK"
cd "$WORK"

# Debian's source package of Kubernetes vendors all its Go dependencies, so
# the build needs no module proxy.
if ! apt-get indextargets --format '$(CREATED_BY)' 2>/dev/null | grep -q Sources; then
  log "adding a deb-src entry for bookworm"
  cat > /etc/apt/sources.list.d/kvcluster-e2e-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi
log "downloading the kubernetes source package"
apt-get source --download-only kubernetes >/dev/null 2>&1 || apt-get source --download-only kubernetes
orig=$(ls kubernetes_*.orig.tar.gz | head -1)
[ -n "$orig" ] || die "no kubernetes orig tarball downloaded"
mkdir src && tar -xzf "$orig" -C src --strip-components=1
cd src
grep -q "gitVersion *= *\"v$KVC_K8S_VERSION" staging/src/k8s.io/component-base/version/base.go 2>/dev/null \
  || log "note: source version differs from $KVC_K8S_VERSION (see base.go)"

# reflect2 v1.0.1 (vendored) crashes under Go >= 1.18 the first time a custom
# resource is stored; v1.0.2 from Debian is a drop-in replacement.
R2=vendor/github.com/modern-go/reflect2
rm -f "$R2"/*.go "$R2"/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$R2"/
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$R2"/ 2>/dev/null || true
rm -f "$R2"/*_test.go

mkdir -p .go/src/k8s.io && ln -s ../../.. .go/src/k8s.io/kubernetes
# Version stamps: the tarball has no git metadata.
export KUBE_GIT_VERSION="v$KVC_K8S_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian
log "building Kubernetes $KVC_K8S_VERSION (about 15-20 min on 2 cores)"
env GOPATH="$PWD/.go" HOME="$WORK/home" GOCACHE="$WORK/gocache" CGO_ENABLED=0 GOFLAGS=-mod=vendor \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl" \
  > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "kubernetes build failed (log: $WORK/build.log)"; }

mkdir -p "$KVC_BIN"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  install -m 0755 "_output/bin/$b" "$KVC_BIN/$b"
done
# The pause container, from the same tree, statically linked.
gcc -static -O2 -o "$KVC_BIN/pause" build/pause/linux/pause.c
touch "$KVC_BIN/.complete"
cd / && rm -rf "$WORK"
log "built into $KVC_BIN"
