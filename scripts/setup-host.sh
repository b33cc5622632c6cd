#!/usr/bin/env bash
# Installs and starts everything snapback's tests and demo need on a bare Debian 12 machine.
# Idempotent: running it twice is harmless. Must run as root.
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh must run as root (it installs packages and starts libvirtd)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

need_pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 duplicity gpg gpg-agent python3-boto3 cpio e2fsprogs xfsprogs fdisk
  busybox-static qemu-guest-agent time lvm2)

missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# The machine image ships qemu-utils from backports (10.x), which conflicts with Debian 12's
# qemu-system-x86 (7.2). Pin the qemu helper packages to the version of qemu-system-x86.
qemu_ver=$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$qemu_ver" ] || [ "$qemu_ver" = "(none)" ]; then
  log "apt-get update"
  apt-get update -qq
  qemu_ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
fi
have_utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if [ "${#missing[@]}" -gt 0 ] || [ "$have_utils" != "$qemu_ver" ]; then
  log "installing: ${missing[*]:-} (qemu $qemu_ver)"
  apt-get update -qq || true
  apt-get install -y -q --allow-downgrades --no-install-recommends \
    "${need_pkgs[@]}" \
    "qemu-utils=$qemu_ver" "qemu-block-extra=$qemu_ver" "qemu-system-common=$qemu_ver" \
    "qemu-system-data" >/dev/null
fi

# Users and groups libvirtd's qemu driver expects.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images

# Run qemu as root and without namespaces/cgroups: the test machines are containers where
# those are unavailable, and test images live in directories libvirt-qemu cannot read.
conf=/etc/libvirt/qemu.conf
conf_changed=0
if ! grep -q '^# snapback-test-settings' "$conf" 2>/dev/null; then
  conf_changed=1
  cat >>"$conf" <<'CONF'
# snapback-test-settings
user = "root"
group = "root"
dynamic_ownership = 0
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
CONF
fi

# A local S3-compatible server for S3 target tests (moto's server, from PyPI).
if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto[server]"
  python3 -m pip install -q 'moto[server]' >/dev/null 2>&1 || pip3 install -q 'moto[server]'
fi

if ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  virtlogd -d
fi
# A libvirtd started by the package install would not have read the settings above.
if [ "$conf_changed" = 1 ] && pgrep -x libvirtd >/dev/null; then
  log "restarting libvirtd to apply $conf"
  pkill -x libvirtd || true
  for _ in $(seq 1 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
fi
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null
log "libvirtd is up: $(virsh -c qemu:///system version | tr '\n' ' ')"
