#!/usr/bin/env bash
# Build the seed design's three VirtualBox VMs with VBoxManage and start
# them with mpvr running:
#
#   VM0 (mpvr-vm0)  net0 192.168.0.2 --- VM1 (mpvr-vm1) 192.168.0.3, 192.168.1.3,
#                   net1 192.168.1.2 ---                192.168.2.3, 192.168.3.3 --- net2/net3 --- VM2 (mpvr-vm2)
#
# Each netN is a VirtualBox internal network (mpvr-net0 .. mpvr-net3); adapter 1
# of every VM is NAT, for management. Adapters get fixed MAC addresses, which
# the netplan files in netplan/ match and rename to net0 .. net3.
#
# Usage: testbed/virtualbox/create-vms.sh BASE.vdi [OUT_DIR]
#   BASE.vdi  a cloud image with cloud-init (Debian 12 genericcloud, Ubuntu
#             22.04 or later), for example:
#             qemu-img convert -O vdi debian-12-genericcloud-amd64.qcow2 BASE.vdi
#   OUT_DIR   where the VM disks and seed ISOs go (default target/virtualbox)
# Needs VBoxManage, genisoimage (or xorriso), gzip and base64, and a built
# target/release/mpvr (cargo build --release). Each VM gets through
# cloud-init: its netplan file, the mpvr binary, a fresh key, the config from
# examples/seed/ with the other VMs' public keys, and an mpvr systemd unit.
# testbed/virtualbox/destroy-vms.sh removes them.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
base=${1:?usage: create-vms.sh BASE.vdi [OUT_DIR]}
out=${2:-$root/target/virtualbox}
mpvr=$root/target/release/mpvr

command -v VBoxManage >/dev/null || { echo "create-vms: VBoxManage not found (install VirtualBox)" >&2; exit 1; }
[ -x "$mpvr" ] || { echo "create-vms: build mpvr first: cargo build --release" >&2; exit 1; }
[ -f "$base" ] || { echo "create-vms: no base disk $base" >&2; exit 1; }
if command -v genisoimage >/dev/null; then mkiso=(genisoimage); elif command -v xorriso >/dev/null; then mkiso=(xorriso -as mkisofs); else
  echo "create-vms: install genisoimage or xorriso (for the cloud-init seed ISOs)" >&2; exit 1
fi
mkdir -p "$out"

# VM number -> the networks it joins (adapter 2 onward) and the MAC prefix.
declare -A nets=([0]="net0 net1" [1]="net0 net1 net2 net3" [2]="net2 net3")

for n in 0 1 2; do
  (umask 077; "$mpvr" genkey > "$out/vm$n.key")
  "$mpvr" pubkey < "$out/vm$n.key" > "$out/vm$n.pub"
done

indent() { sed 's/^/      /'; }

for n in 0 1 2; do
  vm=mpvr-vm$n
  seed=$out/vm$n-seed
  mkdir -p "$seed"
  config=$(sed -e "s|REPLACE with VM0's public key|$(cat "$out/vm0.pub")|" \
               -e "s|REPLACE with VM1's public key|$(cat "$out/vm1.pub")|" \
               -e "s|REPLACE with VM2's public key|$(cat "$out/vm2.pub")|" \
               "$root/examples/seed/vm$n.toml")
  cat > "$seed/meta-data" <<EOM
instance-id: $vm
local-hostname: $vm
EOM
  {
    echo "#cloud-config"
    echo "write_files:"
    echo "  - path: /etc/netplan/60-mpvr.yaml"
    echo "    permissions: '0600'"
    echo "    content: |"
    indent < "$root/netplan/vm$n.yaml"
    echo "  - path: /etc/mpvr/private.key"
    echo "    permissions: '0600'"
    echo "    content: $(cat "$out/vm$n.key")"
    echo "  - path: /etc/mpvr/mpvr.toml"
    echo "    content: |"
    echo "$config" | indent
    echo "  - path: /usr/local/bin/mpvr"
    echo "    permissions: '0755'"
    echo "    encoding: gz+b64"
    echo "    content: $(gzip -c "$mpvr" | base64 -w0)"
    echo "  - path: /etc/sysctl.d/60-mpvr.conf"
    echo "    content: |"
    printf '%s\n' "net.ipv4.conf.all.arp_ignore = 1" "net.ipv4.conf.all.arp_announce = 2" \
      "net.ipv4.conf.all.rp_filter = 2" | indent
    echo "  - path: /etc/systemd/system/mpvr.service"
    echo "    content: |"
    printf '%s\n' "[Unit]" "Description=mpvr multipath virtual router" "After=network-online.target" \
      "Wants=network-online.target" "[Service]" "ExecStart=/usr/local/bin/mpvr run -c /etc/mpvr/mpvr.toml" \
      "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW" "RuntimeDirectory=mpvr" "RuntimeDirectoryMode=0700" \
      "Restart=on-failure" "[Install]" \
      "WantedBy=multi-user.target" | indent
    echo "runcmd:"
    echo "  - [sysctl, --system]"
    echo "  - [netplan, apply]"
    echo "  - [systemctl, daemon-reload]"
    echo "  - [systemctl, enable, --now, mpvr]"
  } > "$seed/user-data"
  "${mkiso[@]}" -output "$out/vm$n-seed.iso" -volid cidata -joliet -rock "$seed/user-data" "$seed/meta-data" 2>/dev/null

  VBoxManage createvm --name "$vm" --ostype Debian_64 --register
  VBoxManage modifyvm "$vm" --memory 1024 --cpus 1 --chipset ich9 \
    --nic1 nat --macaddress1 "0800274D5${n}00"
  adapter=2
  for net in ${nets[$n]}; do
    VBoxManage modifyvm "$vm" "--nic$adapter" intnet "--intnet$adapter" "mpvr-$net" \
      "--macaddress$adapter" "0800274D5${n}0$(( ${net#net} + 1 ))" "--nicpromisc$adapter" allow-all
    adapter=$((adapter + 1))
  done
  VBoxManage clonemedium disk "$base" "$out/$vm.vdi" --format VDI
  VBoxManage storagectl "$vm" --name SATA --add sata --controller IntelAhci
  VBoxManage storageattach "$vm" --storagectl SATA --port 0 --device 0 --type hdd --medium "$out/$vm.vdi"
  VBoxManage storageattach "$vm" --storagectl SATA --port 1 --device 0 --type dvddrive --medium "$out/vm$n-seed.iso"
  VBoxManage startvm "$vm" --type headless
done

echo "create-vms: mpvr-vm0, mpvr-vm1 and mpvr-vm2 are booting; cloud-init installs and starts mpvr."
echo "create-vms: then, on mpvr-vm0: ping 10.9.0.2 (VM2, through VM1)"
