#!/usr/bin/env bash
# Builds the "writer" test guest: a Debian cloud kernel plus a busybox initramfs whose /init
# keeps writing recognisable data to /dev/vda. Output: $OUT/vmlinuz and $OUT/initrd.gz.
# Idempotent: does nothing when both files exist. Needs only Debian's package mirror.
set -euo pipefail
OUT=${1:-/var/tmp/snapback-guest}
# Rebuild when this script changed since the guest was built.
stamp=$(sha256sum "$0" | cut -c1-16)
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then exit 0; fi
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then apt-get update -qq; kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
apt-get download -q "$kpkg" busybox-static >/dev/null
dpkg -x "$kpkg"_*.deb kernel
dpkg -x busybox-static_*.deb bb

kver=$(ls kernel/lib/modules | head -n1)
root=initramfs
mkdir -p $root/bin $root/dev $root/proc $root/sys $root/modules
cp bb/bin/busybox $root/bin/busybox
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
  f=$(find kernel/lib/modules/"$kver" -name "$m.ko*" | head -n1)
  [ -n "$f" ] || continue # built into the kernel
  case "$f" in
    *.xz) xz -dc "$f" >$root/modules/$m.ko ;;
    *.zst) zstd -qdc "$f" >$root/modules/$m.ko ;;
    *) cp "$f" $root/modules/$m.ko ;;
  esac
done

# The qemu guest agent (for filesystem freeze and guest-exec hooks), with its libraries.
qga=/usr/sbin/qemu-ga
if [ -x "$qga" ]; then
  mkdir -p $root/sbin $root/lib64 $root/lib/x86_64-linux-gnu
  cp "$qga" $root/sbin/qemu-ga
  for lib in $(ldd "$qga" | awk '/=> \// {print $3} /^[ \t]*\/lib64\// {print $1}'); do
    cp -L "$lib" "$root$lib" 2>/dev/null || cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
  done
fi

cat >$root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
  [ -f /modules/$m.ko ] && insmod /modules/$m.ko
done
mkdir -p /tmp /var/run /run
# Start the guest agent on its virtio port when the domain has the channel (no udev here:
# the port is found by name in sysfs).
if [ -x /sbin/qemu-ga ]; then
  for i in $(seq 1 30); do
    for p in /sys/class/virtio-ports/*; do
      [ -f "$p/name" ] && [ "$(cat "$p/name")" = org.qemu.guest_agent.0 ] && qga_dev=/dev/${p##*/}
    done
    [ -n "$qga_dev" ] && break
    sleep 0.1
  done
  if [ -n "$qga_dev" ] && [ -e "$qga_dev" ]; then
    /sbin/qemu-ga -m virtio-serial -p "$qga_dev" -f /run/qga.pid -t /run -d && echo "SNAPBACK-WRITER agent up"
  fi
fi
# snapback.write_mb=N: size of the region that is rewritten in a loop (MiB), starting at
# snapback.write_offset_mb=M. snapback.write_interval_ms sets the pause between 1 MiB writes.
region=8; offset=64; interval=200
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    snapback.write_mb=*) region=${arg#*=} ;;
    snapback.write_offset_mb=*) offset=${arg#*=} ;;
    snapback.write_interval_ms=*) interval=${arg#*=} ;;
  esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "SNAPBACK-WRITER up region=${region}MiB offset=${offset}MiB"
n=0
while true; do
  seek=$((offset + n % region))
  { printf 'SNAPBACK-WRITER block %08d\n' "$n"; head -c 1048000 /dev/urandom; } | \
    dd of=/dev/vda bs=1M seek=$seek count=1 conv=notrunc,fsync iflag=fullblock 2>/dev/null
  echo "SNAPBACK-WRITER wrote $n"
  n=$((n+1))
  usleep $((interval * 1000))
done
INIT
chmod +x $root/init
(cd $root && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd.gz.tmp"
cp kernel/boot/vmlinuz-"$kver" "$OUT/vmlinuz.tmp"
mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$stamp" >"$OUT/stamp"
echo "guest built: $OUT (kernel $kver)" >&2
