#!/usr/bin/env bash
# The test command: sets up the host (packages, libvirtd, test guest) and runs every check.
# Usage (as root, on Debian 12): scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/snapback-target}

bash scripts/setup-host.sh
bash tests/guest/build-guest.sh /var/tmp/snapback-guest

echo "== set-up check (no exact versions, registry packages from scripts/pins/ only)" >&2
bash scripts/check-setup.sh

echo "== helm chart" >&2
bash scripts/check-chart.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy -D warnings" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test" >&2
# Guests run under TCG on two cores: two test threads keep them responsive.
cargo test --locked -- --test-threads=2 "$@"
