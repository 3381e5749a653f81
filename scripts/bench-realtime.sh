#!/usr/bin/env bash
# Real-time quality under bulk load, end to end, all figures from one run:
# the namespace testbed's pair layout, link0 a "fibre" (20 ms, 50 Mbit/s, a
# 64 kB queue) and link1 an "LTE" link (60 ms, 5 Mbit/s, 312 kB: half a
# second of buffer), both through mpvr-linkemu. Real media from Debian's
# ffmpeg over RTP (Opus audio at 50 packets/s on port 5004, H.264 video,
# 640x360 at 30 fps and 1 Mbit/s, on port 5006) from host a to host b through
# mpvr, per-packet one-way delay from captures of both TUNs on the machine's
# one clock (mpvr-stream owd), TCP bulk from iperf3 (its first second, slow
# start, left out of the throughput).
#
# Runs, each SECS long (default 10):
#   alone      the media alone
#   tcp1       the media and one TCP flow
#   tcp4       the media and four TCP flows
#   dup-all    one TCP flow with yesterday's behaviour: bulk copied onto both
#              links, nothing shaped (bulk_policy = "all", no rates)
# The first three run with the defaults a site would use: fibre primary
# (up = "50mbit"), LTE secondary (up = "5mbit"), on both hosts.
#
# Reports per run and stream: deadline-met share at 150 ms, p50/p99 one-way
# delay, bulk throughput, and the bytes each link carried per class (from
# `mpvr status --json`). Writes target/bench/realtime.json.
# Needs root. Usage: scripts/bench-realtime.sh [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-10}
out_dir=target/bench
mkdir -p "$out_dir"

if [ "$(id -u)" != 0 ]; then echo "bench-realtime: needs root (network namespaces)" >&2; exit 1; fi
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v python3 >/dev/null || need+=(python3)
command -v ethtool >/dev/null || need+=(ethtool)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --locked --release --quiet
bin=$root/target/release
export TESTBED_PREFIX=rtb$$ MPVR_LINKEMU=$bin/mpvr-linkemu
tb=$root/testbed/netns.sh
A=$TESTBED_PREFIX-a; B=$TESTBED_PREFIX-b
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
  sleep 0.3
  "$tb" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$tb" up pair >/dev/null
"$tb" impair link0 "delay=20ms,rate=50mbit,queue=64kb"
"$tb" impair link1 "delay=60ms,rate=5mbit,queue=312kb"
"$bin/mpvr" genkey > "$work/a.key"; "$bin/mpvr" genkey > "$work/b.key"; chmod 600 "$work"/*.key
pa=$("$bin/mpvr" pubkey < "$work/a.key"); pb=$("$bin/mpvr" pubkey < "$work/b.key")

start() { # classes|dup-all
  local me peer ns key pub i
  for me in 1 2; do
    if [ $me = 1 ]; then ns=$A; key=$work/a.key; pub=$pb; peer=2; i=a; else ns=$B; key=$work/b.key; pub=$pa; peer=1; i=b; fi
    {
      if [ "$1" = dup-all ]; then echo 'bulk_policy = "all"'; fi
      cat <<EOC
[host]
id = $me
private_key_file = "$key"
addresses = ["10.9.0.$me/24"]
[links]
include = ["${i}0", "${i}1"]
allow_virtual = true
EOC
      if [ "$1" = classes ]; then
        printf '[link.%s0]\nup = "50mbit"\n[link.%s1]\nrole = "secondary"\nup = "5mbit"\n' "$i" "$i"
      fi
      cat <<EOC
[[peer]]
id = $peer
public_key = "$pub"
endpoints = ["10.0.0.$peer:51820", "10.0.1.$peer:51820"]
prefixes = ["10.9.0.$peer/32"]
EOC
    } > "$work/$me.toml"
    ip netns exec "$ns" "$bin/mpvr" run -c "$work/$me.toml" --socket "$work/$me.sock" >/dev/null 2>"$work/$me.log" &
    pids+=($!)
  done
  for _ in $(seq 100); do ip netns exec "$A" ping -c 1 -W 0.2 10.9.0.2 >/dev/null 2>&1 && break; done
  sleep 2 # every path up
}

stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

class_bytes() { # -> "fibre_rt fibre_bulk lte_rt lte_bulk"
  "$bin/mpvr" status -s "$work/1.sock" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
l = {x["name"]: x["by_class"] for x in s["links"]}
print(l["a0"]["realtime"]["bytes"], l["a0"]["bulk"]["bytes"], l["a1"]["realtime"]["bytes"], l["a1"]["bulk"]["bytes"])'
}

run() { # name tcp-flows
  local name=$1 flows=$2 before after
  before=$(class_bytes)
  if [ "$flows" -gt 0 ]; then
    ip netns exec "$B" iperf3 -s -1 -p 5299 >/dev/null 2>&1 & pids+=($!)
    sleep 0.3
    ip netns exec "$A" iperf3 -c 10.9.0.2 -p 5299 -t $((secs + 3)) -O 1 -P "$flows" -J > "$work/$name.iperf" &
    local iperf=$!
    sleep 2
  fi
  local owd=(ip netns exec "$A" "$bin/mpvr-stream" owd --at "$A:mpvr0" --to "$B:mpvr0" --duration "$((secs + 2))s")
  "${owd[@]}" --port 5004 --label audio > "$work/$name.audio" &
  local oa=$!
  "${owd[@]}" --port 5006 --label video > "$work/$name.video" &
  local ov=$!
  sleep 0.5
  ip netns exec "$A" ffmpeg -hide_banner -loglevel error -re -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t "$secs" -c:a libopus -b:a 32k -frame_duration 20 -application voip -f rtp rtp://10.9.0.2:5004 >/dev/null &
  local fa=$!
  ip netns exec "$A" ffmpeg -hide_banner -loglevel error -re -f lavfi -i "testsrc=size=640x360:rate=30" \
    -t "$secs" -c:v libx264 -preset ultrafast -tune zerolatency -b:v 1M -g 60 -f rtp rtp://10.9.0.2:5006 >/dev/null &
  local fv=$!
  wait "$fa" "$fv" "$oa" "$ov"
  local bps=0
  if [ "$flows" -gt 0 ]; then
    wait "$iperf"
    bps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"])' "$work/$name.iperf")
  fi
  after=$(class_bytes)
  echo "$name $flows $bps $before $after $(cat "$work/$name.audio") $(cat "$work/$name.video")" >> "$work/results"
  echo "  $name: $(cat "$work/$name.audio"); $(cat "$work/$name.video"); bulk $(python3 -c "print(round($bps/1e6, 1))") Mbit/s" >&2
  # What the paths did meanwhile (host a's view).
  "$bin/mpvr" status -s "$work/1.sock" | sed -n '/recent path changes/,$p' | head -6 >&2
}

: > "$work/results"
echo "bench-realtime: ${secs}s per run" >&2
start classes
run alone 0
run tcp1 1
run tcp4 4
stop
start dup-all
run dup-all 1
stop

python3 - "$work/results" "$out_dir/realtime.json" <<'EOP'
import json, sys, datetime, platform, os
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    name, flows, bps = f[0], int(f[1]), float(f[2])
    b0, b1 = [int(x) for x in f[3:7]], [int(x) for x in f[7:11]]
    d = [y - x for x, y in zip(b0, b1)]
    def stream(g):
        return {"sent": int(g[1]), "received": int(g[2]), "lost": int(g[3]), "deadline_met_pct": float(g[5]),
                "p50_ms": float(g[6]), "p99_ms": float(g[7]), "max_ms": float(g[8])}
    rows[name] = {"tcp_flows": flows, "bulk_mbit_s": bps / 1e6, "audio": stream(f[11:20]), "video": stream(f[20:29]),
                  "bytes": {"fibre": {"realtime": d[0], "bulk": d[1]}, "lte": {"realtime": d[2], "bulk": d[3]}}}
base = rows["alone"]
for r in rows.values():
    for s in ("audio", "video"):
        r[s]["met_vs_alone_points"] = r[s]["deadline_met_pct"] - base[s]["deadline_met_pct"]
        r[s]["p99_vs_alone_ms"] = r[s]["p99_ms"] - base[s]["p99_ms"]
    bulk = r["bytes"]["fibre"]["bulk"] + r["bytes"]["lte"]["bulk"]
    r["lte_bulk_share_pct"] = 100.0 * r["bytes"]["lte"]["bulk"] / bulk if bulk else 0.0
    r["bulk_vs_fibre"] = r["bulk_mbit_s"] / 50.0
doc = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
       "kernel": platform.release(), "links": {"fibre": "20 ms, 50 Mbit/s, 64 kB queue", "lte": "60 ms, 5 Mbit/s, 312 kB queue"},
       "results": rows}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
print(f"{'':8} {'stream':6} {'met@150':>8} {'vs alone':>8} {'p50 ms':>7} {'p99 ms':>7} {'+p99':>6} {'lost':>5}  {'bulk Mbit/s':>11} {'of fibre':>8} {'LTE bulk %':>10}")
for name, r in rows.items():
    for s in ("audio", "video"):
        x = r[s]
        tail = f"  {r['bulk_mbit_s']:11.1f} {r['bulk_vs_fibre']:8.2f} {r['lte_bulk_share_pct']:10.2f}" if s == "audio" else ""
        print(f"{name:8} {s:6} {x['deadline_met_pct']:7.2f}% {x['met_vs_alone_points']:+8.2f} {x['p50_ms']:7.1f} "
              f"{x['p99_ms']:7.1f} {x['p99_vs_alone_ms']:+6.1f} {x['lost']:5d}{tail}")
print(f"(JSON: {sys.argv[2]})")
EOP
