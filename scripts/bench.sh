#!/usr/bin/env bash
# End-to-end benchmark on the 2-host namespace layout (two veth links between
# host A and host B), all figures from one run so they can be compared:
#
#   plain          the raw link 0, no tunnel (baseline)
#   wireguard-go   Debian's userspace WireGuard over link 0
#   boringtun      boringtun-cli (crates.io, installed into target/bench-tools
#                  on first use) over link 0
#   mpvr-1link     mpvr over link 0 only
#   mpvr-2links    mpvr over both links (every packet duplicated: bulk_policy "all")
#   mpvr-1link-plain  mpvr over link 0 with the plain TUN
#                  (MPVR_DISABLE_OFFLOADS=tun: no TSO/GRO on the TUN)
#   mpvr-1link-1queue  mpvr over link 0 with one TUN queue and one socket
#                  per link (MPVR_DISABLE_OFFLOADS=queues: TCP not apart
#                  in the TUN, bulk data not apart in the links' sockets)
#
# For each: TCP throughput (iperf3, 1 stream), the CPU time both tunnel
# processes spent per gigabit of that TCP run (utime + stime from
# /proc/PID/stat), UDP throughput (iperf3, 1200-byte datagrams), ping RTT
# percentiles (one ping per 5 ms; and the median at one ping per 0.3 ms,
# "busy": the tunnel's threads and the CPUs have not gone idle in between,
# which on a VM that halts idle virtual CPUs is most of an idle ping's cost;
# and "under TCP": the median and p99 of pings every 10 ms during the TCP
# run, real-time beside a download when the tunnel is the bottleneck),
# the resident memory of the tunnel process, and the residual
# loss of a 2000 packets/s stream while each link drops 5 % of the packets
# (nftables numgen). Prints a table and writes JSON (default
# target/bench/bench.json), then runs scripts/bench-realtime.sh (real-time
# quality under bulk load; BENCH_REALTIME=0 skips it).
#
# BENCH_BASE=<git revision> also builds that revision (in a worktree under
# target/) and measures its mpvr rows in the same run, alternating with this
# tree's (which goes first alternates too), BENCH_ROUNDS times each
# (default 3; rows are the medians): a
# before/after comparison on one noisy machine. BENCH_BORINGTUN=0 skips the
# boringtun row. BENCH_LINKS="2" measures only the 2-link mpvr rows
# (default "1 2"; the plain-TUN row goes with 1).
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
rounds=1
base_mpvr=
if [ -n "${BENCH_BASE:-}" ]; then
  rounds=${BENCH_ROUNDS:-3}
  rev=$(git rev-parse --verify "$BENCH_BASE^{commit}")
  base_tree=$root/target/bench-base/tree
  rm -rf "$base_tree"; git worktree prune
  git worktree add --detach -f "$base_tree" "$rev" >/dev/null
  (cd "$base_tree" && CARGO_TARGET_DIR=$root/target/bench-base/target cargo build --locked --release --quiet --bin mpvr)
  base_mpvr=$root/target/bench-base/target/release/mpvr
  git worktree remove --force "$base_tree"
  echo "bench: base ${BENCH_BASE} = ${rev:0:10}, $rounds alternating rounds" >&2
fi
boringtun=
if [ "${BENCH_BORINGTUN:-1}" != 0 ]; then
  boringtun=$root/target/bench-tools/bin/boringtun-cli
  if [ ! -x "$boringtun" ]; then
    echo "bench: installing boringtun-cli from crates.io into target/bench-tools" >&2
    cargo install --quiet --locked boringtun-cli --version 0.7.1 --root "$root/target/bench-tools"
  fi
fi

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

# CPU time (user + system, in clock ticks) of the given processes so far.
cpu_ticks() {
  local p
  # Fields 14 and 15 of /proc/PID/stat: 12 and 13 after the ")" that ends the name.
  for p in "$@"; do sed 's/.*) //' "/proc/$p/stat"; done | awk '{t += $12 + $13} END {print t}'
}

measure() { # name target-ip pid-at-A [pid-at-B]
  local name=$1 ip=$2 pid=$3 pid_b=${4:-0}
  ip netns exec "$B" iperf3 -s -1 -D -p 5299 >/dev/null 2>&1
  sleep 0.3
  local tcp udp t0=0 cpu=0
  if [ "$pid" != 0 ]; then t0=$(cpu_ticks "$pid" "$pid_b"); fi
  # Pings every 10 ms while TCP runs, from its second second to half a
  # second before its end.
  local n_loaded=$(( secs * 100 - 150 ))
  if [ "$n_loaded" -lt 20 ]; then n_loaded=20; fi
  (sleep 1; ip netns exec "$A" ping -n -c "$n_loaded" -i 0.01 -W 1 "$ip" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' > "$work/loaded.txt") &
  local pinger=$!
  tcp=$(ip netns exec "$A" iperf3 -c "$ip" -p 5299 -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  wait "$pinger"
  local loaded
  loaded=$(sort -n "$work/loaded.txt" | awk '{a[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; if (NR) print a[int((NR + 1) / 2)], a[i]; else print -1, -1}')
  if [ "$pid" != 0 ]; then
    # CPU seconds per gigabit received: ticks / CLK_TCK over bits / 1e9.
    cpu=$(python3 -c "print(($(cpu_ticks "$pid" "$pid_b") - $t0) / $(getconf CLK_TCK) / ($tcp * $secs / 1e9))")
  fi
  ip netns exec "$B" iperf3 -s -1 -D -p 5298 >/dev/null 2>&1
  sleep 0.3
  # UDP: offered 3 Gbit/s of 1200-byte datagrams; what arrives.
  udp=$(ip netns exec "$A" iperf3 -c "$ip" -p 5298 -u -b 3G -l 1200 -t "$secs" -J | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; print(e["sum"]["bits_per_second"] * (1 - e["sum"]["lost_percent"] / 100))')
  local rtts
  rtts=$(ip netns exec "$A" ping -n -c 300 -i 0.005 -W 1 "$ip" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | tr '\n' ' ')
  local busy
  busy=$(ip netns exec "$A" ping -n -c 1000 -i 0.0003 -W 1 "$ip" | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n | awk '{a[NR] = $1} END {print (NR ? a[int((NR + 1) / 2)] : -1)}')
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
  echo "$name $tcp $udp $rss $loss $cpu $busy $loaded $rtts" >> "$results"
  echo "  $name: TCP $(python3 -c "print(round($tcp/1e6))") Mbit/s ($(python3 -c "print(round($cpu, 2))") CPU s/Gbit), UDP $(python3 -c "print(round($udp/1e6))") Mbit/s, loss at 5 % per link $loss %" >&2
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

start_mpvr() { # binary ns id key addr peer peerpub endpoints include [bulk_policy]
  local bin=$1; shift
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
  # One control socket per daemon: both run on this machine. $offloads is
  # what MPVR_DISABLE_OFFLOADS gets (empty: every offload the kernel has).
  ip netns exec "$1" env MPVR_DISABLE_OFFLOADS="$offloads" "$bin" run -c "$cfg" --socket "$work/$1.sock" \
    >/dev/null 2>"$work/$1.log" &
  last_pid=$!
  pids+=("$last_pid")
}

echo "bench: ${secs}s per TCP run" >&2
measure plain 10.1.0.2 0

# A WireGuard userspace implementation over link 0, as interfaces wga/wgb:
# run_wg name command... (the command gets the interface name appended).
run_wg() {
  local name=$1; shift
  WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$A" "$@" wga >/dev/null 2>&1 & pids+=($!); local wa=$!
  WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$B" "$@" wgb >/dev/null 2>&1 & pids+=($!); local wb=$!
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
  measure "$name" 10.8.0.2 "$wa" "$wb"
  kill "$wa" "$wb"; wait "$wa" "$wb" 2>/dev/null || true
  # Ours, named for this script: the next implementation waits for its own.
  rm -f /var/run/wireguard/wga.sock /var/run/wireguard/wgb.sock
  sleep 0.3
}
run_wg wireguard-go wireguard-go -f
if [ -n "$boringtun" ]; then
  # Its own defaults (4 threads, multi-queue TUN).
  run_wg boringtun "$boringtun" --foreground --disable-drop-privileges --log "$work/boringtun.log"
fi

run_mpvr() { # name binary links [offloads to disable]
  local name=$1 bin=$2 links=$3 inc_a inc_b
  offloads=${4:-}
  if [ "$links" = 1 ]; then inc_a='["a0"]'; inc_b='["b0"]'; else inc_a='["a0", "a1"]'; inc_b='["b0", "b1"]'; fi
  start_mpvr "$bin" "$A" 1 "$work/a.key" 10.9.0.1 2 "$pb" '["10.1.0.2:51820", "10.2.0.2:51820"]' "$inc_a" all; local ma=$last_pid
  start_mpvr "$bin" "$B" 2 "$work/b.key" 10.9.0.2 1 "$pa" '["10.1.0.1:51820", "10.2.0.1:51820"]' "$inc_b" all; local mb=$last_pid
  for _ in $(seq 50); do ip netns exec "$A" ping -c 1 -W 0.2 10.9.0.2 >/dev/null 2>&1 && break; done
  measure "$name" 10.9.0.2 "$ma" "$mb"
  kill "$ma" "$mb"; wait "$ma" "$mb" 2>/dev/null || true
}
for links in ${BENCH_LINKS:-1 2}; do
  for round in $(seq "$rounds"); do
    # Which tree goes first alternates too: an order effect cancels out.
    if [ -n "$base_mpvr" ] && [ $((round % 2)) = 0 ]; then
      run_mpvr "mpvr-${links}link@base" "$base_mpvr" "$links"
      run_mpvr "mpvr-${links}link" "$mpvr" "$links"
    else
      run_mpvr "mpvr-${links}link" "$mpvr" "$links"
      if [ -n "$base_mpvr" ]; then run_mpvr "mpvr-${links}link@base" "$base_mpvr" "$links"; fi
    fi
  done
done
# The same over the plain TUN (one system call per packet), as a kernel
# that refuses the TUN offloads runs it: what the offloads bring.
# And with one TUN queue and one socket per link (TCP and bulk data not
# apart): what the second queue and the second socket bring to real-time
# beside TCP.
case " ${BENCH_LINKS:-1 2} " in *" 1 "*) run_mpvr mpvr-1link-plain "$mpvr" 1 tun; run_mpvr mpvr-1link-1queue "$mpvr" 1 queues ;; esac

python3 - "$results" "$out_dir/bench.json" <<'EOP'
import json, sys, statistics, datetime, platform, os
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    rtts = sorted(float(x) for x in f[9:])
    q = lambda p: rtts[min(len(rtts) - 1, int(round(p / 100 * (len(rtts) - 1))))] if rtts else None
    runs.setdefault(f[0], []).append({
        "tcp_mbit_s": float(f[1]) / 1e6, "udp_mbit_s": float(f[2]) / 1e6, "rss_kib": int(f[3]),
        "loss_pct_at_5pct_per_link": float(f[4]), "cpu_s_per_gbit": float(f[5]),
        "rtt_ms": {"p50": q(50), "p90": q(90), "p99": q(99), "n": len(rtts), "busy_p50": float(f[6]),
                   "under_tcp_p50": float(f[7]), "under_tcp_p99": float(f[8])}})
# A row measured in several rounds (BENCH_BASE) is the median of each figure;
# the rounds themselves are kept in the JSON.
med = statistics.median
rows = {}
for name, rs in runs.items():
    r = {k: med(x[k] for x in rs) for k in ("tcp_mbit_s", "udp_mbit_s", "rss_kib", "loss_pct_at_5pct_per_link", "cpu_s_per_gbit")}
    r["rtt_ms"] = {k: med(x["rtt_ms"][k] for x in rs) for k in ("p50", "p90", "p99", "n", "busy_p50", "under_tcp_p50", "under_tcp_p99")}
    if len(rs) > 1:
        r["rounds"] = rs
    rows[name] = r
base, wg = rows["plain"], rows.get("wireguard-go")
for name, r in rows.items():
    r["tcp_vs_plain"] = r["tcp_mbit_s"] / base["tcp_mbit_s"]
    if wg:
        r["tcp_vs_wireguard_go"] = r["tcp_mbit_s"] / wg["tcp_mbit_s"]
    r["rtt_p50_added_ms"] = r["rtt_ms"]["p50"] - base["rtt_ms"]["p50"]
    r["rtt_busy_p50_added_ms"] = r["rtt_ms"]["busy_p50"] - base["rtt_ms"]["busy_p50"]
doc = {"date": datetime.date.today().isoformat(), "base": os.environ.get("BENCH_BASE"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
       "kernel": platform.release(), "results": rows}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print(f"{'':19} {'TCP Mbit/s':>10} {'vs wg-go':>8} {'CPU s/Gbit':>10} {'UDP Mbit/s':>10} {'RTT p50':>8} {'p99':>7} {'+p50 ms':>8} {'+busy':>6} {'TCP p50':>8} {'TCP p99':>8} {'loss %':>7} {'RSS MiB':>8}")
for name, r in rows.items():
    cpu = f"{r['cpu_s_per_gbit']:10.2f}" if r["cpu_s_per_gbit"] else f"{'-':>10}"
    print(f"{name:19} {r['tcp_mbit_s']:10.0f} {r.get('tcp_vs_wireguard_go', 0):8.2f} {cpu} {r['udp_mbit_s']:10.0f} "
          f"{r['rtt_ms']['p50']:8.3f} {r['rtt_ms']['p99']:7.3f} {r['rtt_p50_added_ms']:8.3f} {r['rtt_busy_p50_added_ms']:6.3f} "
          f"{r['rtt_ms']['under_tcp_p50']:8.2f} {r['rtt_ms']['under_tcp_p99']:8.2f} "
          f"{r['loss_pct_at_5pct_per_link']:7.3f} {r['rss_kib'] / 1024:8.1f}")
for name, r in rows.items():
    b = rows.get(name + "@base")
    if b:
        print(f"{name} against {name}@base ({len(r.get('rounds', [r]))} rounds, medians): "
              f"TCP {r['tcp_mbit_s'] / b['tcp_mbit_s'] - 1:+.1%}, UDP {r['udp_mbit_s'] / b['udp_mbit_s'] - 1:+.1%}, "
              f"CPU/Gbit {r['cpu_s_per_gbit'] / b['cpu_s_per_gbit'] - 1:+.1%}, "
              f"added RTT p50 {r['rtt_p50_added_ms'] * 1000:.0f} vs {b['rtt_p50_added_ms'] * 1000:.0f} us "
              f"(busy {r['rtt_busy_p50_added_ms'] * 1000:.0f} vs {b['rtt_busy_p50_added_ms'] * 1000:.0f} us)")
print(f"(JSON: {sys.argv[2]})")
EOP

if [ "${BENCH_REALTIME:-1}" != 0 ]; then
  "$root/scripts/bench-realtime.sh" "$((secs * 2))"
fi
