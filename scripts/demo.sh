#!/usr/bin/env bash
# The README's demo command. On a fresh Linux machine, as root:
#   - installs what it needs (iproute2, iputils-ping, ethtool) and builds mpvr;
#   - builds the seed layout in network namespaces: vm0 and vm2 each joined to
#     vm1 (the virtual router) by two emulated links: net0/net2 20 ms, net1/net3
#     40 ms, 5 % loss each way on every link;
#   - starts mpvr on the three hosts with the configs of examples/seed/;
#   - sends a real-time stream (500 packets/s for 10 s) from vm0 to vm2 through
#     mpvr, and the same stream over each raw link, all at once; net0 is cut
#     for 2 s in the middle;
#   - shows `mpvr status` on vm0 during the cut (the path over net0 down, why,
#     and each path's RTT, jitter, loss, first arrivals and rescues);
#   - prints loss and latency per raw link and through mpvr, then tears down.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "$(id -u)" != 0 ]; then echo "demo: run as root (it builds network namespaces): sudo $0" >&2; exit 1; fi
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v ethtool >/dev/null || need+=(ethtool)
if [ ${#need[@]} -gt 0 ]; then
  echo "demo: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "demo: cargo is needed to build mpvr: install Rust (rustup.rs)" >&2; exit 1; }
echo "demo: building mpvr"
cargo build --locked --release --quiet
bin=$root/target/release
export TESTBED_PREFIX=mpvrdemo
tb=$root/testbed/netns.sh
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  "$tb" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$tb" up seed
"$tb" impair net0 "delay=20ms,jitter=2ms,loss=5%"
"$tb" impair net1 "delay=40ms,jitter=4ms,loss=5%"
"$tb" impair net2 "delay=20ms,jitter=2ms,loss=5%"
"$tb" impair net3 "delay=40ms,jitter=4ms,loss=5%"
echo "demo: links: net0 and net2 20 ms ± 2 ms, net1 and net3 40 ms ± 4 ms, 5 % loss each way on all"

# Keys and configs: the example files with real keys.
for vm in vm0 vm1 vm2; do
  (umask 077; "$bin/mpvr" genkey > "$work/$vm.key")
  "$bin/mpvr" pubkey < "$work/$vm.key" > "$work/$vm.pub"
done
for vm in vm0 vm1 vm2; do
  sed -e "s|/etc/mpvr/private.key|$work/$vm.key|" \
      -e "s|REPLACE with VM0's public key|$(cat "$work/vm0.pub")|" \
      -e "s|REPLACE with VM1's public key|$(cat "$work/vm1.pub")|" \
      -e "s|REPLACE with VM2's public key|$(cat "$work/vm2.pub")|" \
      -e 's|^\[links\]$|[links]\nallow_virtual = true  # the testbed links are veths|' \
      "examples/seed/$vm.toml" > "$work/$vm.toml"
done
for vm in vm1 vm0 vm2; do
  "$tb" exec "$vm" "$bin/mpvr" run -c "$work/$vm.toml" --socket "$work/$vm.sock" >/dev/null 2>"$work/$vm.log" &
  pids+=($!)
done
for _ in $(seq 100); do
  "$tb" exec vm0 ping -c 1 -W 1 10.9.0.2 >/dev/null 2>&1 && break
done
echo "demo: mpvr runs on vm0, vm1 and vm2; vm0 reaches vm2 (10.9.0.2) through vm1"

count=5000; rate=500
recv() { # host bind label
  "$tb" exec "$1" "$bin/mpvr-stream" recv --bind "$2" --count $count --idle 3s --label "$3" > "$work/$3.out" &
  pids+=($!); recvs+=($!)
}
send() { # host to
  "$tb" exec "$1" "$bin/mpvr-stream" send --to "$2" --count $count --rate $rate --size 200 &
  pids+=($!); sends+=($!)
}
recvs=(); sends=()
recv vm1 192.168.0.3:7001 net0; recv vm1 192.168.1.3:7002 net1
recv vm2 192.168.2.2:7003 net2; recv vm2 192.168.3.2:7004 net3
recv vm2 10.9.0.2:7000 mpvr
sleep 0.5
echo "demo: streaming $count packets at $rate/s on each raw link and through mpvr; net0 will be cut from 4 s to 6 s"
send vm0 192.168.0.3:7001; send vm0 192.168.1.3:7002
send vm1 192.168.2.2:7003; send vm1 192.168.3.2:7004
send vm0 10.9.0.2:7000
sleep 4; "$tb" cut net0 2s; echo "demo: net0 cut for 2 s"
sleep 1.5
echo
echo "demo: \`mpvr status\` on vm0, 1.5 s into the cut:"
"$bin/mpvr" status -s "$work/vm0.sock" | sed 's/^/  | /'
echo
wait "${sends[@]}"; wait "${recvs[@]}"

echo
printf '%-34s %8s %8s %8s %8s %8s %8s\n' "" "loss %" "dup" "p50 ms" "p95 ms" "p99 ms" "max ms"
row() { # label file
  read -r _ _ _ _ loss dup _ p50 p95 p99 max < "$2"
  printf '%-34s %8s %8s %8s %8s %8s %8s\n' "$1" "$loss" "$dup" "$p50" "$p95" "$p99" "$max"
}
row "raw net0 vm0->vm1 (20 ms, cut 2 s)" "$work/net0.out"
row "raw net1 vm0->vm1 (40 ms)" "$work/net1.out"
row "raw net2 vm1->vm2 (20 ms)" "$work/net2.out"
row "raw net3 vm1->vm2 (40 ms)" "$work/net3.out"
row "mpvr vm0->vm2, 2 hops via vm1" "$work/mpvr.out"
echo
echo "mpvr crosses two hops (vm0 -> vm1 -> vm2), each with two links at 5 % loss;"
echo "the best raw two-hop path would add up two links' losses and delays (about 10 % and 40 ms)."

echo
echo "demo: \`mpvr status\` on vm1, the relay, after the stream (its paths to vm0 and to vm2):"
"$bin/mpvr" status -s "$work/vm1.sock" | sed 's/^/  | /'
