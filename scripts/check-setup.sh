#!/usr/bin/env bash
# Checks that set-up does not depend on the day it runs:
# - no script asks apt for an exact version (pkg=VERSION), so a Debian rebuild cannot break it;
# - no script installs a registry package except from the locks in scripts/pins/;
# - with freshly refreshed package lists, the qemu family resolves to one build and the whole
#   package set resolves (scripts/setup-host.sh --check, a dry run of apt-get install).
# Usage (as root): scripts/check-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[check-setup] $*" >&2; }
fail=0
files=()
for f in scripts/*.sh tests/guest/*.sh deploy/Dockerfile; do
  [ "$f" = scripts/check-setup.sh ] || files+=("$f")
done

# apt-get install lines that name PACKAGE=VERSION.
if grep -nE 'apt-get[^#]*install[^#]*[a-z0-9.+-]+=[0-9]' "${files[@]}"; then
  log "an exact Debian version is requested above"
  fail=1
fi
# pip or npm installs of named packages outside setup-host.sh (which installs only the locks).
if grep -nE '(pip3?|-m pip)"? install|npm (install|pack|i) ' "${files[@]}" |
  grep -vE '^scripts/setup-host.sh:[0-9]+: +("\$TOOLS/venv/bin/pip" install|step "pip install)'; then
  log "a registry package is installed outside scripts/pins/ above"
  fail=1
fi
if ! grep -q -- '--require-hashes -r "$PINS/requirements.txt"' scripts/setup-host.sh ||
  ! grep -q 'npm ci' scripts/setup-host.sh; then
  log "setup-host.sh no longer installs from the locks"
  fail=1
fi
[ "$fail" = 0 ] || exit 1
bash scripts/setup-host.sh --check >/dev/null
log "set-up OK: no exact versions, registry packages only from scripts/pins/, apt resolves"
