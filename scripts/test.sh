#!/usr/bin/env bash
# The one test command (README, CI): formatting, lints, and every test in the
# workspace. Needs only a Rust toolchain; SQLite is compiled in (bundled).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
