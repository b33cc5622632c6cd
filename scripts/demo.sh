#!/usr/bin/env bash
# The demo: installs everything, builds snapback, creates a demo VM on the local libvirtd,
# backs it up twice (full, then incremental), restores it as a new VM, and verifies it.
# Usage (as root, on Debian 12): scripts/demo.sh        scripts/demo.sh --clean
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/snapback-target}
. scripts/lib-guest.sh

DEMO=/var/tmp/snapback-demo
VM=snapback-demo
COPY=snapback-demo-restored
if [ "${1:-}" = "--clean" ]; then
  for d in $VM $COPY; do virsh -q destroy $d >/dev/null 2>&1 || true; virsh -q undefine $d --checkpoints-metadata >/dev/null 2>&1 || true; done
  rm -rf "$DEMO"
  echo "demo removed"
  exit 0
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "setting up the host (packages, libvirtd, test guest)"
bash scripts/setup-host.sh
bash tests/guest/build-guest.sh /var/tmp/snapback-guest
say "building snapback"
cargo build --release --locked -q
B="$CARGO_TARGET_DIR/release/snapback"

say "creating the demo VM '$VM' (64 MiB of data, a guest that keeps writing)"
for d in $VM $COPY; do virsh -q destroy $d >/dev/null 2>&1 || true; virsh -q undefine $d --checkpoints-metadata >/dev/null 2>&1 || true; done
rm -rf "$DEMO"
define_writer_guest $VM "$DEMO/vm" 512 64 8
wait_writes "$DEMO/vm/serial.log" 3
export SNAPBACK_STATE_DIR=$DEMO/state
TARGET=file://$DEMO/target

say "backup 1 (auto: the first is a full)"
"$B" backup --domain $VM --target "$TARGET"
wait_writes "$DEMO/vm/serial.log" $(( $(guest_writes "$DEMO/vm/serial.log") + 5 ))

say "backup 2 (auto: incremental), with the VM paused so the result can be compared byte for byte"
virsh -q suspend $VM
qemu-img convert -U -O qcow2 "$DEMO/vm/disk.qcow2" "$DEMO/reference.qcow2"
"$B" backup --domain $VM --target "$TARGET"
virsh -q resume $VM

say "snapback get backupruns"
"$B" get backupruns

say "snapback list: restore points on the target"
"$B" list --domain $VM --target "$TARGET"

say "restore the latest point as a new VM '$COPY'"
mkdir -p "$DEMO/restored"
"$B" restore --domain $VM --target "$TARGET" --as $COPY --storage-dir "$DEMO/restored"

say "snapback get restorerequests"
"$B" get restorerequests

say "verification"
qemu-img compare "$DEMO/reference.qcow2" "$DEMO/restored/$COPY-vda.qcow2"
virsh -q start $COPY
wait_writes "$DEMO/restored/$COPY-serial.log" 3
echo "the restored VM '$COPY' boots and writes beside the original:"
virsh list --all | grep -E "Name|snapback-demo"
echo
echo "demo done. Files: $DEMO. Remove everything with: scripts/demo.sh --clean"
