#!/usr/bin/env bash
# Regenerates the pinned lock files in this folder after an edit of requirements.in or
# npm/package.json. Not run by set-up or CI: those only install what the locks name.
# Usage: scripts/pins/update.sh
set -euo pipefail
cd "$(dirname "$0")"
PIP_TOOLS=pip-tools==7.6.2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$PIP_TOOLS"
"$work/venv/bin/pip-compile" -q --generate-hashes --strip-extras --allow-unsafe \
  --no-emit-find-links -o requirements.txt requirements.in
(cd npm && rm -f package-lock.json && npm install --package-lock-only --ignore-scripts)
echo "updated requirements.txt and npm/package-lock.json; commit them"
