#!/usr/bin/env bash
# Build the Debian package around a static (musl) binary, then check both:
#   scripts/package.sh          build target/debian/mpvr_*.deb
#   scripts/package.sh --check  build, then check the binary and the package
# Needs: rustup target x86_64-unknown-linux-musl, musl-tools (ring's C
# parts), cargo-deb; `.ci/run` installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
bin=target/$target/dist/mpvr
fail() { echo "package.sh: $*" >&2; exit 1; }

rustup target list --installed 2>/dev/null | grep -qx "$target" \
  || fail "the $target target is missing: rustup target add $target"
command -v musl-gcc >/dev/null || fail "musl-gcc is missing: apt-get install musl-tools"
cargo deb --version >/dev/null 2>&1 || fail "cargo-deb is missing: cargo install cargo-deb --locked"

echo "== static build ($target, profile dist: LTO)"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked --profile dist --target "$target" --bin mpvr

echo "== manual page and completions"
mkdir -p target/dist-assets
"$bin" man | gzip -9n > target/dist-assets/mpvr.1.gz
"$bin" completions bash > target/dist-assets/mpvr.bash
"$bin" completions zsh > target/dist-assets/_mpvr
"$bin" completions fish > target/dist-assets/mpvr.fish

echo "== cargo deb"
rm -f target/debian/mpvr_*.deb target/debian/mpvr-dbgsym_*
cargo deb --no-build --target "$target" --profile dist --dbgsym --compress-debug-symbols=zlib --fast
deb=$(ls target/debian/mpvr_*.deb)
echo "built $deb"

[ "${1:-}" = "--check" ] || exit 0

echo "== the static binary"
file "$bin" | grep -q "static-pie linked\|statically linked" || fail "$bin is not static: $(file "$bin")"
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q "statically linked\|not a dynamic executable"; then
  fail "$bin has dynamic dependencies: $(ldd "$bin")"
fi
if objdump -T "$bin" 2>/dev/null | grep -q GLIBC_; then fail "$bin needs glibc symbols"; fi
"$bin" --version | grep -qx "mpvr $(cargo pkgid | sed 's/.*[#@]//')" || fail "--version: $("$bin" --version)"
# `mpvr check` on every example says exactly what the glibc build says
# (both need the keys the examples leave to the user).
# The test profile's build, which `cargo test` made already.
cargo build --locked --profile test --bin mpvr
glibc=target/debug/mpvr
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$glibc" genkey > "$work/private.key"
chmod 600 "$work/private.key"
public=$("$glibc" pubkey < "$work/private.key")
for example in examples/*/*.toml; do
  cfg="$work/$(basename "$(dirname "$example")")-$(basename "$example")"
  sed -e "s|^private_key_file.*|private_key_file = \"$work/private.key\"|" \
      -e "s|^public_key.*|public_key = \"$public\"|" "$example" > "$cfg"
  set +e
  static_out=$("$bin" check -c "$cfg" 2>&1); static_rc=$?
  glibc_out=$("$glibc" check -c "$cfg" 2>&1); glibc_rc=$?
  set -e
  if [ "$static_rc" != "$glibc_rc" ] || [ "$static_out" != "$glibc_out" ]; then
    fail "mpvr check on $example: static ($static_rc) and glibc ($glibc_rc) builds differ:
$static_out
---
$glibc_out"
  fi
  grep -q "host " <<<"$static_out" || fail "mpvr check on $example listed nothing: $static_out"
  echo "  $example: check exits $static_rc, as the glibc build"
done

echo "== the package"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/mpvr ./usr/lib/systemd/system/mpvr.service ./usr/share/man/man1/mpvr.1.gz \
  ./usr/share/bash-completion/completions/mpvr ./usr/share/zsh/vendor-completions/_mpvr \
  ./usr/share/fish/vendor_completions.d/mpvr.fish ./etc/iproute2/rt_protos.d/mpvr.conf \
  ./usr/share/doc/mpvr/README.md ./usr/share/doc/mpvr/examples/two-hosts/host1.toml \
  ./usr/share/doc/mpvr/examples/exit/relay.toml ./usr/share/doc/mpvr/copyright; do
  grep -q " $f\$" <<<"$contents" || fail "$deb lacks $f:
$contents"
done
dpkg-deb -x "$deb" "$work/root"
if file "$work/root/usr/bin/mpvr" | grep -q "not stripped\|with debug_info"; then
  fail "the packaged binary is not stripped: $(file "$work/root/usr/bin/mpvr")"
fi
file "$work/root/usr/bin/mpvr" | grep -q "static" || fail "the packaged binary is not static"
ls target/debian/mpvr-dbgsym_*.ddeb >/dev/null 2>&1 || fail "no -dbgsym package with the debug info"
size=$(stat -c %s "$work/root/usr/bin/mpvr")
echo "  packaged binary: $((size / 1024 / 1024)) MiB, stripped, static"
dpkg-deb -f "$deb" Package Version Architecture Depends Recommends
zcat "$work/root/usr/share/man/man1/mpvr.1.gz" | grep -q '^\.TH mpvr' || fail "the manual page is not roff"
# The unit inside the package, pointed at the packaged binary.
sed "s|/usr/bin/mpvr|$work/root/usr/bin/mpvr|g" "$work/root/usr/lib/systemd/system/mpvr.service" > "$work/mpvr.service"
systemd-analyze verify --man=no "$work/mpvr.service" || fail "systemd-analyze verify refused the packaged unit"
echo "package ok: $deb"

# A few end-to-end tests with the static binary, as root.
if [ "$(id -u)" = 0 ]; then
  echo "== end-to-end tests with the static binary"
  MPVR_TEST_BIN="$PWD/$bin" cargo test --locked --test netns -- \
    ping_across_the_tunnel_over_ipv4_and_ipv6 sigterm_removes_everything_it_added
else
  [ -z "${CI:-}" ] || fail "CI runs as root: the static binary's end-to-end tests cannot be skipped"
  echo "SKIPPED the static binary's end-to-end tests: they need root (network namespaces)"
fi
