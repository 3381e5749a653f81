#!/usr/bin/env bash
# The mpvr testbed in network namespaces on one Linux machine, with every
# link going through mpvr-linkemu (delay, jitter, loss, blackouts: this
# kernel has no netem).
#
#   testbed/netns.sh up seed|pair       build it (tears down an old one first)
#   testbed/netns.sh down               remove everything it made
#   testbed/netns.sh impair LINK SPEC [ab|ba|both]
#                                       set a link's model, e.g. "delay=20ms,jitter=2ms,loss=5%"
#   testbed/netns.sh cut LINK on|off|DURATION
#   testbed/netns.sh show [LINK]        models and counters
#   testbed/netns.sh exec HOST CMD...   run a command on a host (vm0, vm1, vm2 / a, b)
#
# Layouts (the seed design's, and a minimal one):
#   seed: vm0 net0 192.168.0.2/24, net1 192.168.1.2/24; vm2 net2 192.168.2.2/24,
#         net3 192.168.3.2/24; vm1 (the router) 192.168.{0,1,2,3}.3 on net0..net3.
#         Links: net0 net1 (vm0-vm1), net2 net3 (vm1-vm2).
#   pair: a a0 10.0.0.1/24, a1 10.0.1.1/24; b b0 10.0.0.2/24, b1 10.0.1.2/24.
#         Links: link0 (a0-b0), link1 (a1-b1).
# Each link is a veth from a host to the "wan" namespace, the emulator, and
# a veth from wan to the other host: one Ethernet segment per link. Offloads
# are off on every relayed veth (the emulator relays frames as they are).
#
# Environment: TESTBED_SEED (default 1) seeds the emulators (link k uses
# seed + 2k and seed + 2k + 1); TESTBED_PREFIX (default "tb") names the namespaces
# (PREFIX-vm0, PREFIX-wan, ...), so tests can run their own; MPVR_LINKEMU is
# the emulator binary (default target/release/mpvr-linkemu, built if missing).
# Needs root, iproute2 and ethtool.
set -euo pipefail

prefix=${TESTBED_PREFIX:-tb}
root=$(cd "$(dirname "$0")/.." && pwd)
state=/run/mpvr-testbed/$prefix
wan=$prefix-wan
linkemu=${MPVR_LINKEMU:-$root/target/release/mpvr-linkemu}

die() { echo "testbed: $*" >&2; exit 1; }
ns() { echo "$prefix-$1"; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"; }

offloads_off() { # ns dev
  ip netns exec "$1" ethtool -K "$2" rx off tx off tso off gso off gro off >/dev/null 2>&1 || true
}

host_sysctls() { # ns
  # Keep the links really separate: answer ARP only for the address of the
  # interface asked, announce with the interface's own address, loose rp_filter.
  ip netns exec "$1" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
    net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2 net.ipv4.ip_forward=0
}

add_host() { # name
  ip netns add "$(ns "$1")"
  ip -n "$(ns "$1")" link set lo up
  host_sysctls "$(ns "$1")"
  echo "$1" >> "$state/hosts"
}

# link NAME HOST_A IF_A ADDR_A HOST_B IF_B ADDR_B
link() {
  local name=$1 ha=$2 ia=$3 aa=$4 hb=$5 ib=$6 ab=$7
  ip link add "$ia" netns "$(ns "$ha")" type veth peer name "${name}a" netns "$wan"
  ip link add "$ib" netns "$(ns "$hb")" type veth peer name "${name}b" netns "$wan"
  ip -n "$(ns "$ha")" addr add "$aa" dev "$ia"
  ip -n "$(ns "$hb")" addr add "$ab" dev "$ib"
  for end in "$(ns "$ha") $ia" "$(ns "$hb") $ib" "$wan ${name}a" "$wan ${name}b"; do
    # shellcheck disable=SC2086
    offloads_off $end
  done
  ip -n "$wan" link set "${name}a" promisc on up
  ip -n "$wan" link set "${name}b" promisc on up
  ip -n "$(ns "$ha")" link set "$ia" up
  ip -n "$(ns "$hb")" link set "$ib" up
  # Every link draws from its own random sequence (seed, seed + 1 for its
  # two directions): links with one seed would lose the same packets.
  local seed=$(( ${TESTBED_SEED:-1} + 2 * $(wc -l < "$state/links") ))
  ip netns exec "$wan" "$linkemu" run --a "${name}a" --b "${name}b" --control "$state/$name.sock" \
    --seed "$seed" >"$state/$name.log" 2>&1 &
  echo $! > "$state/$name.pid"
  for _ in $(seq 50); do [ -S "$state/$name.sock" ] && break; sleep 0.05; done
  [ -S "$state/$name.sock" ] || die "emulator of $name did not start: $(cat "$state/$name.log")"
  echo "$name" >> "$state/links"
}

down() {
  if [ -d "$state" ]; then
    for f in "$state"/*.pid; do
      [ -e "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
    done
    if [ -f "$state/hosts" ]; then
      while read -r h; do ip netns del "$(ns "$h")" 2>/dev/null || true; done < "$state/hosts"
    fi
    rm -rf "$state"
  fi
  ip netns del "$wan" 2>/dev/null || true
}

up() {
  local layout=$1
  down
  [ -x "$linkemu" ] || (cd "$root" && cargo build --release --quiet --bin mpvr-linkemu)
  mkdir -p "$state"
  : > "$state/hosts"; : > "$state/links"
  echo "$layout" > "$state/layout"
  ip netns add "$wan"
  ip -n "$wan" link set lo up
  case $layout in
    seed)
      add_host vm0; add_host vm1; add_host vm2
      link net0 vm0 net0 192.168.0.2/24 vm1 net0 192.168.0.3/24
      link net1 vm0 net1 192.168.1.2/24 vm1 net1 192.168.1.3/24
      link net2 vm2 net2 192.168.2.2/24 vm1 net2 192.168.2.3/24
      link net3 vm2 net3 192.168.3.2/24 vm1 net3 192.168.3.3/24
      ;;
    pair)
      add_host a; add_host b
      link link0 a a0 10.0.0.1/24 b b0 10.0.0.2/24
      link link1 a a1 10.0.1.1/24 b b1 10.0.1.2/24
      ;;
    *) die "unknown layout $layout: use seed or pair" ;;
  esac
  echo "testbed $prefix: $layout up (links: $(tr '\n' ' ' < "$state/links"))"
}

ctl() { # link words...
  local l=$1; shift
  [ -S "$state/$l.sock" ] || die "no link $l in testbed $prefix (links: $(tr '\n' ' ' < "$state/links" 2>/dev/null))"
  "$linkemu" ctl --control "$state/$l.sock" "$@"
}

cmd=${1:-}
case $cmd in
  up) need_root; up "${2:?usage: up seed|pair}" ;;
  down) need_root; down; echo "testbed $prefix: down" ;;
  impair) need_root; ctl "${2:?usage: impair LINK SPEC [ab|ba|both]}" set "${4:-both}" "${3:?SPEC}" >/dev/null ;;
  cut) need_root; ctl "${2:?usage: cut LINK on|off|DURATION}" blackout both "${3:?on|off|DURATION}" >/dev/null ;;
  show)
    need_root
    if [ -n "${2:-}" ]; then ctl "$2" show; else
      while read -r l; do echo "== $l"; ctl "$l" show; done < "$state/links"
    fi ;;
  exec) need_root; h=${2:?usage: exec HOST CMD...}; shift 2; exec ip netns exec "$(ns "$h")" "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 1 ;;
esac
