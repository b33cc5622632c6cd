# Shared by demo.sh and bench.sh: defines and starts a writer guest.
# usage: define_writer_guest NAME DIR DISK_MIB PREFILL_MIB WRITE_MIB [WRITE_INTERVAL_MS]
define_writer_guest() {
  local name=$1 dir=$2 disk_mib=$3 prefill_mib=$4 write_mib=$5 interval=${6:-200}
  local gd=/var/tmp/snapback-guest
  mkdir -p "$dir"
  virsh -q destroy "$name" >/dev/null 2>&1 || true
  virsh -q undefine "$name" --checkpoints-metadata >/dev/null 2>&1 || true
  rm -f "$dir/disk.qcow2" "$dir/prefill.raw" "$dir/serial.log"
  truncate -s "${disk_mib}M" "$dir/prefill.raw"
  dd if=/dev/urandom of="$dir/prefill.raw" bs=1M count="$prefill_mib" conv=notrunc status=none
  qemu-img convert -O qcow2 "$dir/prefill.raw" "$dir/disk.qcow2"
  rm -f "$dir/prefill.raw"
  cat >"$dir/domain.xml" <<XML
<domain type='qemu'><name>$name</name><memory unit='MiB'>192</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$gd/vmlinuz</kernel><initrd>$gd/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet snapback.write_mb=$write_mib snapback.write_offset_mb=64 snapback.write_interval_ms=$interval</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='$dir/serial.log'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices></domain>
XML
  virsh -q define "$dir/domain.xml" >/dev/null
  virsh -q start "$name" >/dev/null
}

# usage: guest_writes LOGFILE -> number of 1 MiB blocks written since boot
guest_writes() {
  local n
  n=$(grep -a 'SNAPBACK-WRITER wrote' "$1" 2>/dev/null | tail -n1 | tr -d '\r' | awk '{print $3}')
  echo $(( ${n:--1} + 1 ))
}

# usage: wait_writes LOGFILE N
wait_writes() {
  local i
  for i in $(seq 1 600); do
    [ "$(guest_writes "$1")" -ge "$2" ] && return 0
    sleep 0.2
  done
  echo "guest did not write $2 blocks" >&2
  return 1
}
