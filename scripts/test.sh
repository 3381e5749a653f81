#!/usr/bin/env bash
# The README's test command: formatting, lints, every test (unit, property,
# simulator scenarios, namespace end-to-end tests as root, benchmarks in test
# mode), the static build and the Debian package with their checks, then a
# short run of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test --all-targets"
cargo test --locked --all-targets
echo "== the static binary and the Debian package"
scripts/package.sh --check
echo "== fuzz targets, 20 s each"
scripts/fuzz.sh 20
