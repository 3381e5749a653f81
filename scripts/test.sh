#!/usr/bin/env bash
# The README's test command: formatting, lints, then every test (unit,
# property, simulator scenarios, benchmarks in test mode).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test --all-targets"
cargo test --locked --all-targets
