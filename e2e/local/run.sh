#!/usr/bin/env bash
# The whole e2e run on this machine, as CI does it: provision the local
# Kubernetes, start PostgreSQL for the pods, build and load the images, run the
# suite, and tear everything down (also when a phase fails). Prints how long
# each phase took.
source "$(dirname "$0")/lib.sh"
need_root
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
declare -a TIMES=()
phase() {  # phase NAME CMD...: runs and times one phase.
  local name=$1; shift
  local t0; t0=$(date +%s)
  log "== $name"
  "$@"
  TIMES+=("$name: $(( $(date +%s) - t0 ))s")
}
finish() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -d "$KVC_STATE/logs" ]; then
    log "failed (rc $rc); state of the cluster and the last log lines:"
    kvc_kubectl get all -A -o wide 2>/dev/null | head -60 >&2 || true
    for f in "$KVC_STATE"/logs/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done
    # Failed pods last: CI shows the tail of this output.
    kvc_kubectl get pods -A --no-headers 2>/dev/null |
      awk '$1 != "kube-system" {print ($4 == "Running" || $4 == "Completed" ? 0 : 1), $1, $2}' |
      sort -s -k1,1n | while read -r bad ns pod; do
        echo "--- pod $ns/$pod" >&2
        kvc_kubectl -n "$ns" logs "$pod" --tail=$((bad ? 40 : 25)) --all-containers >&2 2>&1 || true
      done
    # The suite's own error very last: it names the scenario and what it saw
    # (CI's excerpt once held only the tail of a backtrace and not the error).
    if [ -s "$KVC_STATE/suite.out" ]; then
      echo "--- the suite's error" >&2
      awk '/^Error: /{on=1} on && /^(Stack backtrace:|test result:)/{exit} on' "$KVC_STATE/suite.out" | head -40 >&2
    fi
  fi
  local t0; t0=$(date +%s)
  "$HERE/down.sh" || rc=1
  TIMES+=("teardown: $(( $(date +%s) - t0 ))s")
  log "phase timings: ${TIMES[*]}"
  exit "$rc"
}
trap finish EXIT

# A half-torn-down earlier run must not get in the way.
"$HERE/down.sh" >/dev/null 2>&1 || true
phase "build (packages + Kubernetes binaries, cached)" "$HERE/build.sh"
phase "cluster up" "$HERE/up.sh"
E2E_PG_URL=$("$HERE/postgres.sh")
export E2E_PG_URL
E2E_S3_ENDPOINT=$("$HERE/s3.sh")
export E2E_S3_ENDPOINT
phase "images" "$HERE/images.sh"
export KUBECONFIG="$KUBECONFIG_OUT" KUBECTL="$KVC_BIN/kubectl"
# No backtraces on the suite's errors: each names its scenario and what it saw,
# and a backtrace of the test thread only pushes that out of CI's excerpt.
phase "suite" bash -c "set -o pipefail; cd '$ROOT' && RUST_LIB_BACKTRACE=0 cargo test --locked -p kvcluster-e2e --test suite -- --ignored --nocapture 2>&1 | tee '$KVC_STATE/suite.out'"
