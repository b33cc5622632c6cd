#!/usr/bin/env bash
# Prints snapback's performance as ratios against `cp --sparse=always` of the same image,
# measured in one run on this machine. A benchmark, not a test: it asserts nothing.
# Usage (as root): scripts/bench.sh [ALLOCATED_MIB (default 1536)]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/snapback-target}
. scripts/lib-guest.sh

ALLOC=${1:-1536}
DISK=$(( ALLOC + 512 ))
CHANGED=$(( ALLOC * 5 / 100 ))        # ~5% of the allocated data changes between backups
WORK=/var/tmp/snapback-bench
VM=snapback-bench

bash scripts/setup-host.sh >/dev/null
bash tests/guest/build-guest.sh /var/tmp/snapback-guest
command -v /usr/bin/time >/dev/null || apt-get install -y -q time >/dev/null
cargo build --release --locked -q
B="$CARGO_TARGET_DIR/release/snapback"

cleanup() {
  for d in $VM $VM-restored; do virsh -q destroy $d >/dev/null 2>&1 || true; virsh -q undefine $d --checkpoints-metadata >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
phase_secs() { # run-yaml phase -> seconds the phase took
  python3 - "$1" "$2" <<'PY'
import sys, re, datetime
text = open(sys.argv[1]).read()
m = re.search(r"- phase: %s\n\s+startTime: \"([^\"]+)\"\n\s+endTime: \"([^\"]+)\"" % sys.argv[2], text)
p = lambda s: datetime.datetime.fromisoformat(s[:26].rstrip('Z') + '+00:00')
print(f"{(p(m.group(2)) - p(m.group(1))).total_seconds():.2f}")
PY
}
field() { grep -m1 "^  $2:" "$1" | awk '{print $2}'; }

echo "preparing a guest with ${ALLOC} MiB allocated (${DISK} MiB disk), rewriting ${CHANGED} MiB between backups" >&2
define_writer_guest $VM "$WORK/vm" $DISK $ALLOC $CHANGED 20
wait_writes "$WORK/vm/serial.log" 2
export SNAPBACK_STATE_DIR=$WORK/state
TARGET=file://$WORK/target
mkdir -p "$WORK/cp"

# The physical limit: copying the same image (twice; the second, warm copy is the reference).
cp --sparse=always "$WORK/vm/disk.qcow2" "$WORK/cp/a.qcow2"; rm -f "$WORK/cp/a.qcow2"; sync
t0=$(now); cp --sparse=always "$WORK/vm/disk.qcow2" "$WORK/cp/a.qcow2"; sync; t1=$(now)
CP=$(secs $t0 $t1); rm -f "$WORK/cp/a.qcow2"

t0=$(now)
/usr/bin/time -f %M -o "$WORK/full.rss" "$B" backup --domain $VM --target "$TARGET" >"$WORK/full.name" 2>"$WORK/full.err"
t1=$(now); FULL=$(secs $t0 $t1)
FULLRUN=$SNAPBACK_STATE_DIR/backupruns/$(cat "$WORK/full.name").yaml
EXPORT=$(phase_secs "$FULLRUN" Exporting)
UPLOAD=$(phase_secs "$FULLRUN" Uploading)
FULLSIZE=$(field "$FULLRUN" sizeBytes)

start=$(guest_writes "$WORK/vm/serial.log")
wait_writes "$WORK/vm/serial.log" $(( start + CHANGED ))
t0=$(now)
"$B" backup --domain $VM --target "$TARGET" >"$WORK/inc.name" 2>"$WORK/inc.err"
t1=$(now); INC=$(secs $t0 $t1)
INCRUN=$SNAPBACK_STATE_DIR/backupruns/$(cat "$WORK/inc.name").yaml
INCSIZE=$(field "$INCRUN" sizeBytes)

start=$(guest_writes "$WORK/vm/serial.log")
wait_writes "$WORK/vm/serial.log" $(( start + CHANGED ))
"$B" backup --domain $VM --target "$TARGET" --pause --quiesce none >"$WORK/inc2.name" 2>"$WORK/inc2.err"
PAUSERUN=$SNAPBACK_STATE_DIR/backupruns/$(cat "$WORK/inc2.name").yaml
PAUSE=$(field "$PAUSERUN" freezeWindowMs)

mkdir -p "$WORK/restored"
t0=$(now)
/usr/bin/time -f %M -o "$WORK/restore.rss" "$B" restore --domain $VM --target "$TARGET" --as $VM-restored --storage-dir "$WORK/restored" >/dev/null 2>"$WORK/restore.err"
sync; t1=$(now); RESTORE=$(secs $t0 $t1)

cat <<TABLE

snapback bench: ${ALLOC} MiB allocated, cp --sparse=always of the image = ${CP} s
measure                                              seconds   ratio     target
full backup, snapshot to uploaded (file://)          $FULL     $(ratio $FULL $CP)x cp   <= 4x cp
  export step alone                                  $EXPORT     $(ratio $EXPORT $CP)x cp   <= 2x cp
  duplicity upload alone                             $UPLOAD     $(ratio $UPLOAD $CP)x cp
incremental, ~5% changed (${CHANGED} MiB rewritten)      $INC     $(ratio $INC $FULL)x full <= 0.25x full
  incremental export size / full export size                   $(ratio $INCSIZE $FULLSIZE)
pause window around the snapshot (ms)                $PAUSE
restore full + 2 incrementals as a new domain        $RESTORE     $(ratio $RESTORE $CP)x cp   <= 3x cp
peak RSS of snapback backup (full)                   $(( $(cat "$WORK/full.rss") / 1024 )) MiB              <= 100 MiB
peak RSS of snapback restore                         $(( $(cat "$WORK/restore.rss") / 1024 )) MiB
TABLE

# Controller cost (issue 4): one scheduling pass over 1,000 domains, in-process.
echo
cargo bench --locked -q --bench controller 2>/dev/null
