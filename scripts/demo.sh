#!/usr/bin/env bash
# The README's demo command.
#
# Today it shows the real mpvr core in the deterministic network simulator:
# the same real-time stream over each impaired link alone, then over all of
# them through mpvr. The namespace testbed demo (three hosts, a relay, real
# TUN devices and sockets) replaces it when the testbed issue lands.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "demo: cargo is not installed; install Rust from https://rustup.rs and run again" >&2
  exit 1
fi
cargo build --locked --release --quiet
mpvr=target/release/mpvr

echo "### Two uplinks: 20 ms and 40 ms, 5 % loss each; the second is cut for 2 s"
"$mpvr" sim --packets 100000 --rate 10000 \
  --link "delay=20ms,jitter=2ms,loss=5%" \
  --link "delay=40ms,jitter=4ms,loss=5%,blackout=3s-5s"
echo
echo "### Two ISPs and LTE: bursty loss, jitter, a blackout on each, never at the same time"
"$mpvr" sim --packets 100000 --rate 5000 --size 1200 \
  --link "delay=12ms,jitter-sd=2ms,burst=3%,blackout=2s-4s" \
  --link "delay=18ms,jitter-sd=3ms,loss=2%,blackout=8s-11s" \
  --link "delay=45ms,jitter=25ms,loss=8%,blackout=14s-16s"
