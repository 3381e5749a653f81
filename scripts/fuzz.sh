#!/usr/bin/env bash
# Build the cargo-fuzz targets (fuzz/) and run each for SECONDS (default 20):
#   parse      any bytes through the checked wire view and header parser
#   receive    any datagram into a node with a session (nothing unauthenticated accepted)
#   handshake  any bytes as a Noise initiation
#   classify   any bytes as inner packets through the traffic classifier
#   bodies     any bytes as an advert, probe, probe reply or path notice body
#   session    any body as an advert, probe, probe reply, path notice, MTU
#              probe or reply sealed inside a real session, into the node
# The machine has a stable toolchain only; cargo-fuzz's sanitizer flags are
# unstable, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
# Usage: scripts/fuzz.sh [SECONDS [RUNS]]   (scripts/fuzz.sh 3600 for an hour
# each; scripts/fuzz.sh 3600 10000000 stops each at 10 million inputs)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-20}
runs=${2:--1}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz --version 0.13.2
fi
cargo fuzz build -O
for t in parse receive handshake classify bodies session; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O "$t" -- -max_total_time="$secs" -runs="$runs" 2>&1 | grep -E "^Done|ERROR|panicked|SUMMARY" || true
  # cargo fuzz exits non-zero on a finding; check the artifacts too.
  if compgen -G "artifacts/$t/crash-*" >/dev/null; then
    echo "fuzz: $t found a crash: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
