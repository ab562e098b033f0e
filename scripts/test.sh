#!/usr/bin/env bash
# The one test command (README, CI): formatting, lints, and every test in the
# workspace on both storage backends, then the end-to-end suite on a local
# Kubernetes (e2e/local/run.sh: provisions, runs, tears down). Needs a Rust
# toolchain and root; installs the
# PostgreSQL server from Debian packages when it is missing (the tests start
# private, throwaway PostgreSQL instances of their own, on free ports of
# 127.0.0.1, and stop them). If PostgreSQL cannot be had, this fails: the
# PostgreSQL tests are never skipped. The same for the S3-protocol server the
# backup tests run against (moto, from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds each crate once: incremental state would only double the size of
# target/ (it once filled CI's disk).
export CARGO_INCREMENTAL=0

have_pg() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null; }
if ! have_pg && [ -z "${KV_TEST_PG_BIN:-}" ]; then
  echo "==> installing the PostgreSQL server (Debian package postgresql)"
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
    echo "error: PostgreSQL server binaries are missing and cannot be installed here (need root and apt-get)." >&2
    echo "       Install the 'postgresql' package, or point KV_TEST_PG_BIN at a directory holding initdb and pg_ctl." >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null
  # The package starts a system cluster we do not use; the tests run their own.
  if command -v pg_lsclusters > /dev/null; then
    pg_lsclusters -h 2> /dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2> /dev/null || true; done
  fi
  have_pg || { echo "error: postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl found" >&2; exit 1; }
fi

if ! python3 -c "import helm_sdkpy" 2> /dev/null; then
  echo "==> installing the Helm library for Python (PyPI helm-sdkpy) to lint the chart"
  python3 -m pip install -q --ignore-requires-python "helm-sdkpy==0.1.32"
fi
if ! command -v moto_server > /dev/null && [ -z "${KV_TEST_S3_BIN:-}" ]; then
  echo "==> installing the S3-protocol test server (PyPI moto[server]; the backup tests start private instances on loopback)"
  python3 -m pip install -q "moto[server]==5.2.1"
  command -v moto_server > /dev/null || { echo "error: moto installed but moto_server is not on PATH" >&2; exit 1; }
fi
if ! python3 -c "import yaml" 2> /dev/null; then
  echo "==> installing PyYAML (the chart lint writes a namespace-scoped values file)"
  python3 -m pip install -q "PyYAML==6.0.3"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> the client builds without the server stack (no openraft, no sqlx)"
cargo build -p kvserver --no-default-features --lib --locked
if cargo tree -p kvserver --no-default-features -e normal --locked | grep -E "^.*(openraft|sqlx)" > /dev/null; then
  echo "error: kvserver without the server feature pulls in openraft or sqlx" >&2
  exit 1
fi
echo "==> helm lint charts/kvcluster-operator (real Helm, via helm-sdkpy)"
python3 scripts/helm_lint.py charts/kvcluster-operator > /dev/null
echo "==> cargo test (SQLite and PostgreSQL)"
# kvserver/tests/hostile.rs holds 10,000 sockets at once (the idle-connection
# flood): raise the soft limit on open files to the hard one.
ulimit -n "$(ulimit -Hn)"
cargo test --workspace --locked
echo "==> API fuzzing against the OpenAPI document (schemathesis, scripts/fuzz_api.sh)"
scripts/fuzz_api.sh target/debug/kvserver
echo "==> disk: $(du -sh target 2> /dev/null | cut -f1) in target/, $(df -h . | awk 'NR==2 {print $4}') free"
echo "==> end-to-end suite on a local Kubernetes built from Debian packages (e2e/local/run.sh)"
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the end-to-end phase provisions Kubernetes (containerd, kubelet, iptables) and needs root" >&2
  exit 1
fi
e2e/local/run.sh
