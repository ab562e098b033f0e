#!/usr/bin/env bash
# The e2e suite on kind, for machines with Docker: create the cluster, build
# the images with the repository's Dockerfile, load them, start PostgreSQL in
# the cluster, run the suite, delete the cluster (KEEP_CLUSTER=1 keeps it).
# Needs: docker, kind, kubectl, python3 with helm-sdkpy (pip install helm-sdkpy).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
NAME=kvc-e2e
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
for tool in docker kind kubectl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
python3 -c "import helm_sdkpy" 2>/dev/null || python3 -m pip install -q --ignore-requires-python "helm-sdkpy==0.1.32"

kind get clusters | grep -qx "$NAME" || kind create cluster --config "$ROOT/e2e/kind/kind.yaml"
export KUBECONFIG="$(mktemp)"
cleanup() {
  rm -f "$KUBECONFIG"
  [ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$NAME"
}
trap cleanup EXIT
kind get kubeconfig --name "$NAME" > "$KUBECONFIG"

docker build --target kvserver -t "docker.io/kvcluster/kvserver:$VERSION" "$ROOT"
docker build --target operator -t "docker.io/kvcluster/kvcluster-operator:$VERSION" "$ROOT"
kind load docker-image --name "$NAME" "docker.io/kvcluster/kvserver:$VERSION" \
  "docker.io/kvcluster/kvcluster-operator:$VERSION"

kubectl apply -f "$ROOT/e2e/kind/postgres.yaml"
kubectl -n kvc-e2e-pg rollout status deploy/postgres --timeout=300s
export E2E_PG_URL="postgres://kv:kv-e2e-pw@postgres.kvc-e2e-pg.svc.cluster.local:5432/kv?sslmode=disable"

cd "$ROOT" && cargo test --locked -p kvcluster-e2e --test suite -- --ignored --nocapture
