#!/usr/bin/env bash
# Stop and delete the VMs that create-vms.sh made, with their disks.
# Usage: testbed/virtualbox/destroy-vms.sh [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/virtualbox}
command -v VBoxManage >/dev/null || { echo "destroy-vms: VBoxManage not found" >&2; exit 1; }
for n in 0 1 2; do
  vm=mpvr-vm$n
  VBoxManage controlvm "$vm" poweroff 2>/dev/null || true
  VBoxManage unregistervm "$vm" --delete 2>/dev/null || true
done
rm -rf "$out"
echo "destroy-vms: done"
