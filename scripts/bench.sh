#!/usr/bin/env bash
# Prints snapback's performance as ratios against `cp --sparse=always` of the same image,
# measured in one run on this machine (issue 16's figures). A benchmark, not a test: it
# asserts nothing. Run it on a quiet machine: other work skews the seconds, not the bytes.
# Usage (as root): scripts/bench.sh [ALLOCATED_MIB (default 1536)] [--quick]
#   --quick leaves out the slow sections (linearity with a 6 GiB disk, 3 disks, the night).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/snapback-target}
. scripts/lib-guest.sh

ALLOC=1536 QUICK=
for a in "$@"; do case $a in --quick) QUICK=1 ;; *) ALLOC=$a ;; esac; done
DISK=$(( ALLOC + 512 ))
CHANGED=$(( ALLOC * 5 / 100 ))        # ~5% of the allocated data changes between backups
WORK=/var/tmp/snapback-bench
VM=snapback-bench
VMS="$VM $VM-restored $VM-small $VM-large $VM-3disk $(seq -f "$VM-night%g" 1 8)"

bash scripts/setup-host.sh >/dev/null
bash tests/guest/build-guest.sh /var/tmp/snapback-guest
command -v /usr/bin/time >/dev/null || apt-get install -y -q time >/dev/null
cargo build --release --locked -q
B="$CARGO_TARGET_DIR/release/snapback"

cleanup() {
  for d in $VMS; do virsh -q destroy "$d" >/dev/null 2>&1 || true; virsh -q undefine "$d" --checkpoints-metadata --nvram >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mib() { echo $(( $1 / 1048576 )); }
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
qemu_written() { # domain -> bytes its qemu process has written so far (the push-mode export, the guest's writes)
  awk '/^write_bytes/ {print $2}' "/proc/$(cat "/run/libvirt/qemu/$1.pid")/io"
}

# Runs snapback with argv, timed; sets T (seconds), W (bytes written by snapback and every
# child it reaped: duplicity, gpg, qemu-img), RSS (peak KiB of the largest of them).
# /proc/PID/io of a process counts the writes of the children it reaped, so a shell that
# runs snapback and then reads its own counter sees the whole tree.
measure() {
  local out=$1; shift
  local t0 t1
  t0=$(now)
  /usr/bin/time -f %M -o "$WORK/rss" bash -c '"$@" >"$0.out" 2>"$0.err"; rc=$?; awk "/^write_bytes/ {print \$2}" /proc/$$/io >"$0.io"; exit $rc' "$out" "$B" "$@"
  t1=$(now); T=$(secs "$t0" "$t1"); W=$(cat "$out.io"); RSS=$(cat "$WORK/rss")
}

# A full, an incremental, a paused incremental and a restore of a running writer guest.
echo "preparing a guest with ${ALLOC} MiB allocated (${DISK} MiB disk), rewriting ${CHANGED} MiB between backups" >&2
define_writer_guest $VM "$WORK/vm" $DISK "$ALLOC" $CHANGED 20
wait_writes "$WORK/vm/serial.log" 2
export SNAPBACK_STATE_DIR=$WORK/state
TARGET=file://$WORK/target
mkdir -p "$WORK/cp"

# The physical limit: copying the same image (twice; the second, warm copy is the reference).
cp --sparse=always "$WORK/vm/disk.qcow2" "$WORK/cp/a.qcow2"; rm -f "$WORK/cp/a.qcow2"; sync
t0=$(now); cp --sparse=always "$WORK/vm/disk.qcow2" "$WORK/cp/a.qcow2"; sync; t1=$(now)
CP=$(secs "$t0" "$t1"); rm -f "$WORK/cp/a.qcow2"
ALLOC_BYTES=$(( ALLOC * 1048576 ))

# Bytes written by a backup: snapback's process tree, plus what the domain's qemu wrote
# (libvirt has qemu write the export), less the guest's own writes (1 MiB per line of its
# serial log).
g0=$(guest_writes "$WORK/vm/serial.log"); q0=$(qemu_written $VM)
measure "$WORK/full" backup --domain $VM --target "$TARGET"
sync; g1=$(guest_writes "$WORK/vm/serial.log"); q1=$(qemu_written $VM)
FULL=$T FULLRSS=$RSS
FULLW=$(( W + q1 - q0 - (g1 - g0) * 1048576 ))
FULLRUN=$SNAPBACK_STATE_DIR/backupruns/$(head -n1 "$WORK/full.out").yaml
EXPORT=$(phase_secs "$FULLRUN" Exporting)
UPLOAD=$(phase_secs "$FULLRUN" Uploading)
FULLSIZE=$(field "$FULLRUN" sizeBytes)

start=$(guest_writes "$WORK/vm/serial.log")
wait_writes "$WORK/vm/serial.log" $(( start + CHANGED ))
measure "$WORK/inc" backup --domain $VM --target "$TARGET"
INC=$T
INCRUN=$SNAPBACK_STATE_DIR/backupruns/$(head -n1 "$WORK/inc.out").yaml
INCSIZE=$(field "$INCRUN" sizeBytes)

start=$(guest_writes "$WORK/vm/serial.log")
wait_writes "$WORK/vm/serial.log" $(( start + CHANGED ))
measure "$WORK/inc2" backup --domain $VM --target "$TARGET" --pause --quiesce none
PAUSERUN=$SNAPBACK_STATE_DIR/backupruns/$(head -n1 "$WORK/inc2.out").yaml
PAUSE=$(field "$PAUSERUN" freezeWindowMs)

mkdir -p "$WORK/restored"
measure "$WORK/restore" restore --domain $VM --target "$TARGET" --as $VM-restored --storage-dir "$WORK/restored"
sync
RESTORE=$T RESTORERSS=$RSS RESTOREW=$W

# Encrypted (symmetric) full of the same domain to a second target.
head -c 32 /dev/urandom | base64 >"$WORK/passphrase"
measure "$WORK/enc" backup --domain $VM --target "file://$WORK/target-enc" --type full --encrypt-passphrase-file "$WORK/passphrase"
ENC=$T
virsh -q destroy $VM >/dev/null 2>&1 || true

cat <<TABLE

snapback bench: ${ALLOC} MiB allocated (${DISK} MiB disk), cp --sparse=always of the image = ${CP} s
measure                                              value       ratio          target
full backup, snapshot to uploaded (file://)          ${FULL} s   $(ratio "$FULL" "$CP")x cp        <= 4x cp (2.5x disk-bound)
  export step                                        ${EXPORT} s   $(ratio "$EXPORT" "$CP")x cp
  duplicity upload                                   ${UPLOAD} s   $(ratio "$UPLOAD" "$CP")x cp
  bytes written / allocated data                     $(mib $FULLW) MiB  $(ratio $FULLW $ALLOC_BYTES)x          <= 1.2x
full backup, encrypted (symmetric gpg)               ${ENC} s   $(ratio "$ENC" "$CP")x cp        <= 6x cp
incremental, ~5% changed (${CHANGED} MiB rewritten)      ${INC} s   $(ratio "$INC" "$FULL")x full      <= 0.15x full
  incremental export / full export                               $(ratio "$INCSIZE" "$FULLSIZE")x
pause window around the snapshot                     ${PAUSE} ms
restore full + 2 incrementals as a new domain        ${RESTORE} s   $(ratio "$RESTORE" "$CP")x cp        <= 4x cp (2.5x disk-bound)
  restore time / full backup time                                $(ratio "$RESTORE" "$FULL")x          <= 1x
  bytes written / allocated data                     $(mib $RESTOREW) MiB  $(ratio $RESTOREW $ALLOC_BYTES)x          <= 1.2x
peak memory (largest process): full backup           $(( FULLRSS / 1024 )) MiB                          <= 100 MiB
peak memory (largest process): restore               $(( RESTORERSS / 1024 )) MiB                          <= 100 MiB
TABLE

if [ -z "$QUICK" ]; then
  # Cost follows the allocated data, not the virtual size; memory does not follow either.
  echo >&2 "preparing two 6 GiB disks, 512 MiB and 3072 MiB allocated"
  for s in small:512 large:3072; do
    define_writer_guest "$VM-${s%%:*}" "$WORK/${s%%:*}" 6144 "${s##*:}" 8 1000
  done
  wait_writes "$WORK/small/serial.log" 1; wait_writes "$WORK/large/serial.log" 1
  measure "$WORK/small" backup --domain $VM-small --target "file://$WORK/target-small"
  SMALL=$T SMALLRSS=$RSS
  measure "$WORK/large" backup --domain $VM-large --target "file://$WORK/target-large"
  LARGE=$T LARGERSS=$RSS
  virsh -q destroy $VM-small >/dev/null; virsh -q destroy $VM-large >/dev/null

  # A domain of three disks of ${ALLOC}/3 MiB each, against cp of the three images.
  THIRD=$(( ALLOC / 3 ))
  define_writer_guest $VM-3disk "$WORK/3disk" $(( THIRD + 256 )) $THIRD 8 1000
  for n in b c; do
    truncate -s $(( THIRD + 256 ))M "$WORK/3disk/vd$n.raw"
    dd if=/dev/urandom of="$WORK/3disk/vd$n.raw" bs=1M count=$THIRD conv=notrunc status=none
    qemu-img convert -O qcow2 "$WORK/3disk/vd$n.raw" "$WORK/3disk/vd$n.qcow2"; rm -f "$WORK/3disk/vd$n.raw"
    virsh -q attach-disk $VM-3disk "$WORK/3disk/vd$n.qcow2" vd$n --driver qemu --subdriver qcow2 --config >/dev/null
  done
  # The 'pc' machine here takes no hot-plugged disks: started again on its new definition.
  virsh -q destroy $VM-3disk >/dev/null; : >"$WORK/3disk/serial.log"; virsh -q start $VM-3disk >/dev/null
  wait_writes "$WORK/3disk/serial.log" 1
  sync
  t0=$(now); cp --sparse=always "$WORK/3disk/"*.qcow2 "$WORK/cp/"; sync; t1=$(now)
  CP3=$(secs "$t0" "$t1"); rm -f "$WORK/cp/"*
  measure "$WORK/3disk" backup --domain $VM-3disk --target "file://$WORK/target-3disk"
  THREE=$T
  virsh -q destroy $VM-3disk >/dev/null

  cat <<TABLE
full backup, 6 GiB disk, 512 MiB allocated           ${SMALL} s   $(ratio "$SMALL" 0.5) s/GiB allocated
full backup, 6 GiB disk, 3072 MiB allocated          ${LARGE} s   $(ratio "$LARGE" 3) s/GiB allocated   (linear: equal s/GiB)
  peak memory (largest process), 512 MiB / 3 GiB     $(( SMALLRSS / 1024 )) MiB / $(( LARGERSS / 1024 )) MiB        <= 100 MiB each
full backup, 3 disks of ${THIRD} MiB                   ${THREE} s   $(ratio "$THREE" "$CP3")x cp of the 3 images
TABLE

  # A whole host's night: 8 running domains of 512 MiB at one tick (`standalone --once`),
  # one at a time, all at once, and with the default limit plus a staging budget of three
  # exports; the peak of staging is sampled (a bench may sample; the tests do not).
  echo >&2 "preparing 8 domains of 512 MiB for the night"
  NIGHT=$(seq -f "$VM-night%g" 1 8)
  for d in $NIGHT; do define_writer_guest "$d" "$WORK/$d" 768 512 8 1000; done
  for d in $NIGHT; do wait_writes "$WORK/$d/serial.log" 1; done
  BUDGET=$(( 3 * 540 * 1048576 ))
  night() { # NAME LIMIT [BUDGET] -> NS: seconds of the whole night; PEAK: most staging seen
    local dir=$WORK/night-$1 t0 t1 sampler
    mkdir -p "$dir/config"
    printf 'apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: local\nspec:\n  url: file://%s/target\n' "$dir" >"$dir/config/target.yaml"
    printf "apiVersion: snapback.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: night\nspec:\n  domainSelector:\n    globs: ['%s-night*']\n  targetRef: local\n  schedule: '0 2 * * *'\n  consistency: {quiesce: None}\n" "$VM" >"$dir/config/policy.yaml"
    ( set +e; peak=0; while :; do n=$(du -sb "$dir/state/staging" 2>/dev/null | cut -f1); [ "${n:-0}" -gt $peak ] && peak=$n && echo $peak >"$dir/peak"; sleep 0.2; done ) &
    sampler=$!
    t0=$(now)
    env SNAPBACK_STATE_DIR="$dir/state" SNAPBACK_MAX_CONCURRENT_RUNS="$2" ${3:+SNAPBACK_STAGING_BUDGET=$3} \
      "$B" standalone --config "$dir/config" --once >"$dir/out" 2>"$dir/err"
    t1=$(now)
    kill $sampler 2>/dev/null || true; wait $sampler 2>/dev/null || true
    grep -c Succeeded "$dir/out" >"$dir/ok" || true
    PEAK=$(cat "$dir/peak" 2>/dev/null || echo 0)
    NS=$(secs "$t0" "$t1")
  }
  night serial 1; SERIAL=$NS SERIALPEAK=$PEAK SERIALOK=$(cat "$WORK/night-serial/ok")
  night parallel 8; PARALLEL=$NS PARALLELPEAK=$PEAK PARALLELOK=$(cat "$WORK/night-parallel/ok")
  night limited 2 $BUDGET; LIMITED=$NS LIMITEDPEAK=$PEAK LIMITEDOK=$(cat "$WORK/night-limited/ok")
  BEST=$(python3 -c "print(min($SERIAL, $PARALLEL))")
  cat <<TABLE
night of 8 x 512 MiB, one at a time                  ${SERIAL} s   $SERIALOK/8 succeeded, staging peak $(mib $SERIALPEAK) MiB
night of 8 x 512 MiB, all at once                    ${PARALLEL} s   $PARALLELOK/8 succeeded, staging peak $(mib $PARALLELPEAK) MiB
night, default limit (2) and a $(mib $BUDGET) MiB staging budget   ${LIMITED} s   $LIMITEDOK/8 succeeded, staging peak $(mib $LIMITEDPEAK) MiB
  limited night / best of serial and parallel                  $(ratio "$LIMITED" "$BEST")x          <= 1.3x
TABLE
  for d in $NIGHT; do virsh -q destroy "$d" >/dev/null 2>&1 || true; done
fi

# Controller cost (issue 4): one scheduling pass over 1,000 domains, in-process.
echo
cargo bench --locked -q --bench controller 2>/dev/null
