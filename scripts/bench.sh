#!/usr/bin/env bash
# End-to-end benchmark on the 2-host namespace layout (two veth links between
# host A and host B), all figures from one run so they can be compared:
#
#   plain          the raw link 0, no tunnel (baseline)
#   wireguard-go   Debian's userspace WireGuard over link 0
#   mpvr-1link     mpvr over link 0 only
#   mpvr-2links    mpvr over both links (every packet duplicated: bulk_policy "all")
#
# For each: TCP throughput (iperf3, 1 stream), UDP throughput (iperf3, 1200-byte
# datagrams), ping RTT percentiles, the resident memory of the tunnel process,
# and the residual loss of a 2000 packets/s stream while each link drops 5 %
# of the packets (nftables numgen). Prints a table and writes JSON
# (default target/bench/bench.json), then runs scripts/bench-realtime.sh
# (real-time quality under bulk load; BENCH_REALTIME=0 skips it).
# Needs root. Usage: scripts/bench.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-5}
out_dir=target/bench
mkdir -p "$out_dir"

if [ "$(id -u)" != 0 ]; then echo "bench: needs root (network namespaces)" >&2; exit 1; fi
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v python3 >/dev/null || need+=(python3)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --locked --release --quiet
mpvr=$PWD/target/release/mpvr

A=mpvrbenchA$$; B=mpvrbenchB$$
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  sleep 0.3
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$A"; ip netns add "$B"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
for i in 0 1; do
  ip link add "a$i" netns "$A" type veth peer name "b$i" netns "$B"
  ip -n "$A" addr add "10.$((i+1)).0.1/24" dev "a$i"; ip -n "$A" link set "a$i" up
  ip -n "$B" addr add "10.$((i+1)).0.2/24" dev "b$i"; ip -n "$B" link set "b$i" up
done

"$mpvr" genkey > "$work/a.key"; "$mpvr" genkey > "$work/b.key"; chmod 600 "$work"/*.key
pa=$("$mpvr" pubkey < "$work/a.key"); pb=$("$mpvr" pubkey < "$work/b.key")

results="$work/results.txt"
: > "$results"

measure() { # name target-ip pid
  local name=$1 ip=$2 pid=$3
  ip netns exec "$B" iperf3 -s -1 -D -p 5299 >/dev/null 2>&1
  sleep 0.3
  local tcp udp
  tcp=$(ip netns exec "$A" iperf3 -c "$ip" -p 5299 -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  ip netns exec "$B" iperf3 -s -1 -D -p 5298 >/dev/null 2>&1
  sleep 0.3
  # UDP: offered 3 Gbit/s of 1200-byte datagrams; what arrives.
  udp=$(ip netns exec "$A" iperf3 -c "$ip" -p 5298 -u -b 3G -l 1200 -t "$secs" -J | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; print(e["sum"]["bits_per_second"] * (1 - e["sum"]["lost_percent"] / 100))')
  local rtts
  rtts=$(ip netns exec "$A" ping -n -c 300 -i 0.005 -W 1 "$ip" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | tr '\n' ' ')
  local rss=0
  if [ "$pid" != 0 ]; then rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status"); fi
  # Residual loss: 5 % of the packets arriving at B on each link are dropped
  # (nftables numgen, independently per packet and link) while a 2000
  # packets/s stream of 20 000 packets runs.
  impair on
  ip netns exec "$B" "$root/target/release/mpvr-stream" recv --bind "$ip:7100" --count 20000 --idle 2s \
    --label x > "$work/loss.out" &
  local rx=$!
  sleep 0.3
  ip netns exec "$A" "$root/target/release/mpvr-stream" send --to "$ip:7100" --count 20000 --rate 2000 --size 200
  wait "$rx"
  impair off
  local loss
  loss=$(awk '{print $5}' "$work/loss.out")
  echo "$name $tcp $udp $rss $loss $rtts" >> "$results"
  echo "  $name: TCP $(python3 -c "print(round($tcp/1e6))") Mbit/s, UDP $(python3 -c "print(round($udp/1e6))") Mbit/s, loss at 5 % per link $loss %" >&2
}

impair() { # on|off
  if [ "$1" = on ]; then
    ip netns exec "$B" nft -f - <<EON
table netdev mpvrbench {
  chain b0 { type filter hook ingress device b0 priority 0; numgen random mod 100 < 5 drop; }
  chain b1 { type filter hook ingress device b1 priority 0; numgen random mod 100 < 5 drop; }
}
EON
  else
    ip netns exec "$B" nft delete table netdev mpvrbench
  fi
}

start_mpvr() { # ns id key addr peer peerpub endpoints include [bulk_policy]
  local cfg="$work/$1.toml"
  # iperf3's TCP and UDP are bulk: with two links the run copies them onto
  # both (bulk_policy "all"), to measure what duplication costs.
  cat > "$cfg" <<EOC
bulk_policy = "${9:-failover}"
[host]
id = $2
private_key_file = "$3"
addresses = ["$4/24"]
[links]
allow_virtual = true
include = $8
[[peer]]
id = $5
public_key = "$6"
endpoints = $7
prefixes = ["10.9.0.$5/32"]
EOC
  # One control socket per daemon: both run on this machine.
  ip netns exec "$1" "$mpvr" run -c "$cfg" --socket "$work/$1.sock" >/dev/null 2>"$work/$1.log" &
  last_pid=$!
  pids+=("$last_pid")
}

echo "bench: ${secs}s per TCP run" >&2
measure plain 10.1.0.2 0

# wireguard-go over link 0.
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$A" wireguard-go -f wga >/dev/null 2>&1 & pids+=($!); wga=$!
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$B" wireguard-go -f wgb >/dev/null 2>&1 & pids+=($!); wgb=$!
for _ in $(seq 100); do
  # The UAPI sockets are per name, shared by all namespaces: hence wga and wgb.
  [ -S /var/run/wireguard/wga.sock ] && [ -S /var/run/wireguard/wgb.sock ] && break
  sleep 0.1
done
"$mpvr" genkey > "$work/wa.key"; "$mpvr" genkey > "$work/wb.key"
ip netns exec "$A" wg set wga listen-port 51900 private-key "$work/wa.key" peer "$("$mpvr" pubkey < "$work/wb.key")" allowed-ips 10.8.0.2/32 endpoint 10.1.0.2:51900
ip netns exec "$B" wg set wgb listen-port 51900 private-key "$work/wb.key" peer "$("$mpvr" pubkey < "$work/wa.key")" allowed-ips 10.8.0.1/32 endpoint 10.1.0.1:51900
ip -n "$A" addr add 10.8.0.1/24 dev wga; ip -n "$A" link set wga up
ip -n "$B" addr add 10.8.0.2/24 dev wgb; ip -n "$B" link set wgb up
ip netns exec "$A" ping -c 1 -W 2 10.8.0.2 >/dev/null
measure wireguard-go 10.8.0.2 "$wga"
kill "$wga" "$wgb"; sleep 0.3

for links in 1 2; do
  if [ "$links" = 1 ]; then inc_a='["a0"]'; inc_b='["b0"]'; else inc_a='["a0", "a1"]'; inc_b='["b0", "b1"]'; fi
  start_mpvr "$A" 1 "$work/a.key" 10.9.0.1 2 "$pb" '["10.1.0.2:51820", "10.2.0.2:51820"]' "$inc_a" all; ma=$last_pid
  start_mpvr "$B" 2 "$work/b.key" 10.9.0.2 1 "$pa" '["10.1.0.1:51820", "10.2.0.1:51820"]' "$inc_b" all; mb=$last_pid
  for _ in $(seq 50); do ip netns exec "$A" ping -c 1 -W 0.2 10.9.0.2 >/dev/null 2>&1 && break; done
  measure "mpvr-${links}link" 10.9.0.2 "$ma"
  kill "$ma" "$mb"; wait "$ma" "$mb" 2>/dev/null || true
done

python3 - "$results" "$out_dir/bench.json" <<'EOP'
import json, sys, statistics, datetime, platform, os
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rtts = sorted(float(x) for x in f[5:])
    q = lambda p: rtts[min(len(rtts) - 1, int(round(p / 100 * (len(rtts) - 1))))] if rtts else None
    rows[f[0]] = {"tcp_mbit_s": float(f[1]) / 1e6, "udp_mbit_s": float(f[2]) / 1e6, "rss_kib": int(f[3]),
                  "loss_pct_at_5pct_per_link": float(f[4]),
                  "rtt_ms": {"p50": q(50), "p90": q(90), "p99": q(99), "n": len(rtts)}}
base, wg = rows["plain"], rows.get("wireguard-go")
for name, r in rows.items():
    r["tcp_vs_plain"] = r["tcp_mbit_s"] / base["tcp_mbit_s"]
    if wg:
        r["tcp_vs_wireguard_go"] = r["tcp_mbit_s"] / wg["tcp_mbit_s"]
    r["rtt_p50_added_ms"] = r["rtt_ms"]["p50"] - base["rtt_ms"]["p50"]
doc = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
       "kernel": platform.release(), "results": rows}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print(f"{'':14} {'TCP Mbit/s':>10} {'vs wg-go':>8} {'UDP Mbit/s':>10} {'RTT p50':>8} {'p99':>7} {'+p50 ms':>8} {'loss %':>7} {'RSS MiB':>8}")
for name, r in rows.items():
    print(f"{name:14} {r['tcp_mbit_s']:10.0f} {r.get('tcp_vs_wireguard_go', 0):8.2f} {r['udp_mbit_s']:10.0f} "
          f"{r['rtt_ms']['p50']:8.3f} {r['rtt_ms']['p99']:7.3f} {r['rtt_p50_added_ms']:8.3f} "
          f"{r['loss_pct_at_5pct_per_link']:7.3f} {r['rss_kib'] / 1024:8.1f}")
print(f"(JSON: {sys.argv[2]})")
EOP

if [ "${BENCH_REALTIME:-1}" != 0 ]; then
  "$root/scripts/bench-realtime.sh" "$((secs * 2))"
fi
