//! The pure heart of the engine: what to do next, and whether a run is full or incremental.
//! No I/O here: everything comes in as arguments, so the rules are tested as tables.

use jiff::{SignedDuration, Timestamp};

use crate::api::{
    BackupPhase, BackupRunStatus, BackupType, FailureReason, FullReason, RequestedType,
};
use crate::libvirt::JobState;

/// What the engine saw of the world just now.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Whether the domain still exists.
    pub domain_exists: bool,
    /// The backup job of the domain (online runs).
    pub job: JobState,
    /// Whether the checkpoint this run creates exists in libvirt.
    pub checkpoint_exists: bool,
    /// Whether every export file of the run is present and complete in staging.
    pub exports_present: bool,
    /// Whether the source fetches a completed job's exports into staging itself (KubeVirt):
    /// missing ones are fetched then, not a reason to fail.
    pub exports_fetched: bool,
}

/// The next step of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Resolve the domain and disks, choose full or incremental, set up staging.
    Prepare,
    /// The process died while the guest was frozen or paused: thaw/resume it first.
    Recover,
    /// Hooks, freeze, (pause), begin the job, thaw, hooks.
    Snapshot,
    /// The job already began (we died right after): run the onSnapshot hooks that did not
    /// complete (a paused application must be let go), then move on to waiting for the job.
    FinishSnapshot,
    /// Wait for the running job (online) or export from the files (offline).
    Export,
    Upload,
    Finalize,
    /// Clean up and fail.
    Fail(FailureReason, String),
    /// Terminal: nothing to do.
    Done,
}

pub fn decide(s: &BackupRunStatus, o: &Observed) -> Step {
    if s.phase.is_terminal() {
        return Step::Done;
    }
    if s.guest_frozen || s.guest_paused {
        return Step::Recover;
    }
    if s.phase != BackupPhase::Pending && s.phase != BackupPhase::Preparing && !o.domain_exists {
        return Step::Fail(
            FailureReason::DomainNotFound,
            "the domain disappeared during the run".into(),
        );
    }
    match s.phase {
        BackupPhase::Pending | BackupPhase::Preparing => Step::Prepare,
        BackupPhase::Snapshotting => {
            let begun =
                s.online && (matches!(o.job, JobState::Active { .. }) || o.checkpoint_exists);
            if begun && s.memory_pending {
                // The guest ran again since the job's instant: its memory cannot be saved to
                // match the disks any more.
                Step::Fail(
                    FailureReason::Interrupted,
                    "the run was interrupted while the guest's memory state was being saved; it cannot be taken at the disks' instant any more".into(),
                )
            } else if begun {
                Step::FinishSnapshot
            } else {
                Step::Snapshot
            }
        }
        BackupPhase::Exporting => {
            if !s.online {
                return Step::Export; // re-exporting from files is idempotent
            }
            match &o.job {
                JobState::Active { .. } => Step::Export,
                JobState::Completed if o.exports_present || o.exports_fetched => Step::Export,
                JobState::Failed(msg) => Step::Fail(job_failure_reason(msg), msg.clone()),
                _ => Step::Fail(
                    FailureReason::BackupJobFailed,
                    "the backup job is gone and its exports are incomplete (libvirtd or qemu restarted?)".into(),
                ),
            }
        }
        BackupPhase::Uploading => Step::Upload,
        BackupPhase::Finalizing => Step::Finalize,
        BackupPhase::Succeeded | BackupPhase::Failed | BackupPhase::Skipped => Step::Done,
    }
}

/// Why a push-mode job that ended in error failed the run. qemu reports a full export
/// filesystem as its ENOSPC text: that is staging's disk, so the user is sent there
/// (`StagingFull`), not to the VM or libvirt.
pub fn job_failure_reason(message: &str) -> FailureReason {
    if message.to_lowercase().contains("no space left on device") {
        FailureReason::StagingFull
    } else {
        FailureReason::BackupJobFailed
    }
}

/// What is known about the previous successful run of the same domain to the same target.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviousRun {
    pub name: String,
    pub checkpoint: Option<String>,
    pub chain: String,
    pub chain_index: u32,
    /// When the chain's full was taken.
    pub chain_start: Timestamp,
    /// The time of the previous run's set on the target, when recorded.
    pub target_time: Option<Timestamp>,
    /// (disk name, virtual size) of the previous run.
    pub disks: Vec<(String, u64)>,
}

/// What Preparing found out about the chain before choosing the type.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainFacts {
    /// Image mode: an incremental needs a running domain and the previous checkpoint. Files
    /// mode exports whole disks every time; its incrementals are duplicity's, file by file.
    pub image: bool,
    pub previous: Option<PreviousRun>,
    /// Whether the domain runs (push-mode job) or is shut off.
    pub online: bool,
    /// The previous checkpoint: present in libvirt, and its bitmaps valid.
    pub checkpoint_present: bool,
    /// The previous checkpoint is gone because a revert to a local point dropped it (the
    /// source's durable record says so).
    pub checkpoint_dropped_by_revert: bool,
    pub checkpoint_valid: bool,
    /// Whether the target still ends with the previous run.
    pub target_has_previous: bool,
    /// (disk name, virtual size) now.
    pub disks: Vec<(String, u64)>,
    pub now: Timestamp,
    pub full_every: Option<SignedDuration>,
    pub max_incrementals: Option<u32>,
    /// Whether any disk keeps a changed-block bitmap (a qcow2 top image): without one, no
    /// image-mode run can be incremental.
    pub any_tracked: bool,
}

/// The outcome of choosing: type plus the reason for a full, or a refusal.
pub type TypeChoice = Result<(BackupType, Option<FullReason>), (FailureReason, String)>;

/// Why an incremental is impossible, in the order the checks are made.
pub fn full_reason(f: &ChainFacts) -> Option<FullReason> {
    if f.image && !f.online {
        return Some(FullReason::DomainShutOff);
    }
    if f.image && !f.any_tracked {
        return Some(FullReason::NoBitmapSupport);
    }
    let Some(prev) = &f.previous else {
        return Some(FullReason::NoChain);
    };
    if f.image && prev.checkpoint.is_some() && !f.checkpoint_present {
        return Some(if f.checkpoint_dropped_by_revert {
            FullReason::LocalRevert
        } else {
            FullReason::CheckpointMissing
        });
    }
    if f.image && prev.checkpoint.is_none() {
        return Some(FullReason::CheckpointMissing);
    }
    if f.image && !f.checkpoint_valid {
        return Some(FullReason::CheckpointInconsistent);
    }
    let names = |v: &[(String, u64)]| {
        let mut n: Vec<String> = v.iter().map(|d| d.0.clone()).collect();
        n.sort();
        n
    };
    if names(&prev.disks) != names(&f.disks) {
        return Some(FullReason::DiskSetChanged);
    }
    if prev
        .disks
        .iter()
        .any(|(n, size)| f.disks.iter().any(|(m, s2)| m == n && s2 != size))
    {
        return Some(FullReason::DiskSizeChanged);
    }
    if !f.target_has_previous {
        return Some(FullReason::TargetChainMissing);
    }
    if let Some(every) = f.full_every {
        if f.now.duration_since(prev.chain_start) >= every {
            return Some(FullReason::FullCadence);
        }
    }
    if let Some(max) = f.max_incrementals {
        // The next run would be incremental number prev.chain_index + 1.
        if prev.chain_index + 1 > max {
            return Some(FullReason::FullCadence);
        }
    }
    None
}

/// Why one disk of an image-mode run is exported whole, if it is: a disk without a bitmap
/// always is (in one job with the others, at the same instant); one with a bitmap follows
/// the run, unless the parent checkpoint has no bitmap for it (it gained one since, as a raw
/// disk does when changed-block tracking is enabled).
pub fn disk_full_reason(
    run: BackupType,
    run_reason: Option<FullReason>,
    tracked: bool,
    in_parent: bool,
) -> Option<FullReason> {
    match (tracked, run) {
        (false, _) => Some(FullReason::NoBitmapSupport),
        (true, BackupType::Full) => Some(run_reason.unwrap_or(FullReason::Requested)),
        (true, BackupType::Incremental) if !in_parent => Some(FullReason::CheckpointMissing),
        (true, BackupType::Incremental) => None,
        // A local point exports nothing; no disk of it is on a target.
        (true, BackupType::Local) => None,
    }
}

/// Applies the requested type to the facts.
pub fn choose_type(requested: RequestedType, f: &ChainFacts) -> TypeChoice {
    match requested {
        RequestedType::Full => Ok((BackupType::Full, Some(FullReason::Requested))),
        // The driver takes local points itself; one reaching the backup engine is a bug in
        // the caller, refused rather than turned into a backup the user did not ask for.
        RequestedType::Local => Err((
            FailureReason::InvalidSpec,
            "a Local run is a local restore point, not a backup to a target".into(),
        )),
        RequestedType::Auto => match full_reason(f) {
            Some(r) => Ok((BackupType::Full, Some(r))),
            None => Ok((BackupType::Incremental, None)),
        },
        RequestedType::Incremental => match full_reason(f) {
            // Cadence is advice for Auto; an explicit incremental only needs a valid chain.
            None | Some(FullReason::FullCadence) => Ok((BackupType::Incremental, None)),
            // No disk that could ever be incremental is a spec to change, not a chain to mend.
            Some(FullReason::NoBitmapSupport) => Err((
                FailureReason::InvalidSpec,
                "an incremental backup is not possible: no disk of the domain keeps a changed-block bitmap (raw or block disks: see `snapback cbt enable`); run with --type auto or full".into(),
            )),
            Some(r) => Err((
                FailureReason::CheckpointInconsistent,
                format!(
                    "an incremental backup is not possible: {r:?}; run with --type auto or full"
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: BackupPhase) -> BackupRunStatus {
        BackupRunStatus {
            phase,
            online: true,
            ..Default::default()
        }
    }
    fn obs(job: JobState, cp: bool, exports: bool) -> Observed {
        Observed {
            domain_exists: true,
            job,
            checkpoint_exists: cp,
            exports_present: exports,
            exports_fetched: false,
        }
    }
    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn decide_follows_the_phase_table() {
        use JobState::*;
        let active = Active { done: 1, total: 2 };
        let rows: Vec<(BackupPhase, Observed, Step)> = vec![
            (BackupPhase::Pending, obs(None, false, false), Step::Prepare),
            (
                BackupPhase::Preparing,
                obs(None, false, false),
                Step::Prepare,
            ),
            (
                BackupPhase::Snapshotting,
                obs(None, false, false),
                Step::Snapshot,
            ),
            (
                BackupPhase::Snapshotting,
                obs(active.clone(), true, false),
                Step::FinishSnapshot,
            ),
            (
                BackupPhase::Snapshotting,
                obs(Completed, true, true),
                Step::FinishSnapshot,
            ),
            (
                BackupPhase::Exporting,
                obs(active, true, false),
                Step::Export,
            ),
            (
                BackupPhase::Exporting,
                obs(Completed, true, true),
                Step::Export,
            ),
            (BackupPhase::Uploading, obs(None, true, true), Step::Upload),
            (
                BackupPhase::Finalizing,
                obs(None, true, false),
                Step::Finalize,
            ),
            (BackupPhase::Succeeded, obs(None, true, false), Step::Done),
            (BackupPhase::Failed, obs(None, false, false), Step::Done),
            (BackupPhase::Skipped, obs(None, false, false), Step::Done),
        ];
        for (phase, o, want) in rows {
            assert_eq!(
                decide(&status(phase), &o),
                want,
                "phase {phase:?} with {o:?}"
            );
        }
    }

    #[test]
    fn a_memory_run_resumed_after_its_job_began_without_its_state_fails_and_one_before_snapshots() {
        let mut s = status(BackupPhase::Snapshotting);
        s.memory_pending = true;
        let rows = [
            (obs(JobState::Completed, true, true), "fail"),
            (
                obs(JobState::Active { done: 0, total: 1 }, true, false),
                "fail",
            ),
            (obs(JobState::None, false, false), "snapshot"),
        ];
        for (o, want) in rows {
            let got = decide(&s, &o);
            match want {
                "fail" => assert!(
                    matches!(&got, Step::Fail(FailureReason::Interrupted, m) if m.contains("memory")),
                    "{o:?}: {got:?}"
                ),
                _ => assert_eq!(got, Step::Snapshot, "{o:?}"),
            }
        }
        // Paused or frozen by the dead run: the guest is given back first, whatever else.
        s.guest_paused = true;
        assert_eq!(
            decide(&s, &obs(JobState::Completed, true, true)),
            Step::Recover
        );
        // Saved before the process died: the run goes on with it.
        s.guest_paused = false;
        s.memory_pending = false;
        assert_eq!(
            decide(&s, &obs(JobState::Completed, true, true)),
            Step::FinishSnapshot
        );
    }

    #[test]
    fn decide_fails_an_export_whose_job_failed_or_vanished() {
        let s = status(BackupPhase::Exporting);
        assert!(matches!(
            decide(&s, &obs(JobState::Failed("EIO".into()), true, false)),
            Step::Fail(FailureReason::BackupJobFailed, m) if m == "EIO"
        ));
        assert!(matches!(
            decide(&s, &obs(JobState::None, true, false)),
            Step::Fail(FailureReason::BackupJobFailed, _)
        ));
        assert!(matches!(
            decide(&s, &obs(JobState::Completed, true, false)),
            Step::Fail(FailureReason::BackupJobFailed, _)
        ));
    }

    #[test]
    fn decide_reexports_an_offline_run_after_a_crash() {
        let s = BackupRunStatus {
            phase: BackupPhase::Exporting,
            online: false,
            ..Default::default()
        };
        assert_eq!(decide(&s, &obs(JobState::None, false, false)), Step::Export);
    }

    #[test]
    fn decide_thaws_first_when_a_crash_left_the_guest_frozen_or_paused() {
        let mut s = status(BackupPhase::Snapshotting);
        s.guest_frozen = true;
        assert_eq!(
            decide(&s, &obs(JobState::None, false, false)),
            Step::Recover
        );
        s.guest_frozen = false;
        s.guest_paused = true;
        assert_eq!(
            decide(&s, &obs(JobState::None, false, false)),
            Step::Recover
        );
    }

    #[test]
    fn decide_fails_when_the_domain_disappears_mid_run() {
        let o = Observed {
            domain_exists: false,
            job: JobState::None,
            checkpoint_exists: false,
            exports_present: false,
            exports_fetched: false,
        };
        assert!(matches!(
            decide(&status(BackupPhase::Uploading), &o),
            Step::Fail(FailureReason::DomainNotFound, _)
        ));
        assert_eq!(
            decide(&status(BackupPhase::Pending), &o),
            Step::Prepare,
            "Prepare reports it itself"
        );
    }

    fn facts() -> ChainFacts {
        ChainFacts {
            image: true,
            previous: Some(PreviousRun {
                name: "r1".into(),
                checkpoint: Some("snapback-r1".into()),
                chain: "r0".into(),
                chain_index: 1,
                chain_start: t("2026-01-01T00:00:00Z"),
                target_time: None,
                disks: vec![("vda".into(), 100), ("vdb".into(), 50)],
            }),
            online: true,
            checkpoint_present: true,
            checkpoint_dropped_by_revert: false,
            checkpoint_valid: true,
            target_has_previous: true,
            disks: vec![("vdb".into(), 50), ("vda".into(), 100)],
            now: t("2026-01-03T00:00:00Z"),
            full_every: None,
            max_incrementals: None,
            any_tracked: true,
        }
    }

    #[test]
    fn files_mode_incrementals_need_neither_a_checkpoint_nor_a_running_domain() {
        let mut f = facts();
        f.image = false;
        f.online = false;
        f.checkpoint_present = false;
        f.checkpoint_valid = false;
        assert_eq!(full_reason(&f), None);
        f.target_has_previous = false;
        assert_eq!(full_reason(&f), Some(FullReason::TargetChainMissing));
        f.previous = None;
        assert_eq!(full_reason(&f), Some(FullReason::NoChain));
    }

    #[test]
    fn auto_gives_an_incremental_when_libvirt_and_target_hold_the_chain() {
        assert_eq!(
            choose_type(RequestedType::Auto, &facts()),
            Ok((BackupType::Incremental, None))
        );
    }

    #[test]
    fn auto_falls_back_to_a_full_and_says_why() {
        type Change = Box<dyn Fn(&mut ChainFacts)>;
        let cases: Vec<(Change, FullReason)> = vec![
            (Box::new(|f| f.previous = None), FullReason::NoChain),
            (Box::new(|f| f.online = false), FullReason::DomainShutOff),
            (
                Box::new(|f| f.checkpoint_present = false),
                FullReason::CheckpointMissing,
            ),
            (
                Box::new(|f| {
                    f.checkpoint_present = false;
                    f.checkpoint_dropped_by_revert = true;
                }),
                FullReason::LocalRevert,
            ),
            (
                Box::new(|f| f.checkpoint_valid = false),
                FullReason::CheckpointInconsistent,
            ),
            (
                Box::new(|f| f.disks.push(("vdc".into(), 1))),
                FullReason::DiskSetChanged,
            ),
            (
                Box::new(|f| f.disks[1].1 = 200),
                FullReason::DiskSizeChanged,
            ),
            (
                Box::new(|f| f.target_has_previous = false),
                FullReason::TargetChainMissing,
            ),
            (
                Box::new(|f| f.full_every = Some(SignedDuration::from_hours(24))),
                FullReason::FullCadence,
            ),
            (
                Box::new(|f| f.max_incrementals = Some(1)),
                FullReason::FullCadence,
            ),
            (
                Box::new(|f| f.any_tracked = false),
                FullReason::NoBitmapSupport,
            ),
        ];
        for (change, want) in cases {
            let mut f = facts();
            change(&mut f);
            assert_eq!(
                choose_type(RequestedType::Auto, &f),
                Ok((BackupType::Full, Some(want))),
                "{want:?}"
            );
        }
    }

    #[test]
    fn a_disk_without_a_bitmap_is_whole_in_every_run_and_one_with_a_bitmap_follows_the_run() {
        use BackupType::*;
        use FullReason::*;
        let rows = [
            (Incremental, None, true, true, None),
            (Incremental, None, true, false, Some(CheckpointMissing)),
            (Incremental, None, false, false, Some(NoBitmapSupport)),
            (Full, Some(NoChain), true, false, Some(NoChain)),
            (Full, Some(NoChain), false, false, Some(NoBitmapSupport)),
        ];
        for (run, why, tracked, in_parent, want) in rows {
            assert_eq!(
                disk_full_reason(run, why, tracked, in_parent),
                want,
                "{run:?} tracked {tracked}, in the parent {in_parent}"
            );
        }
    }

    #[test]
    fn cadence_not_yet_due_keeps_the_incremental() {
        let mut f = facts();
        f.full_every = Some(SignedDuration::from_hours(24 * 7));
        f.max_incrementals = Some(2);
        assert_eq!(
            choose_type(RequestedType::Auto, &f),
            Ok((BackupType::Incremental, None))
        );
    }

    #[test]
    fn explicit_incremental_without_a_chain_is_refused_not_silently_full() {
        let mut f = facts();
        f.checkpoint_valid = false;
        assert!(matches!(
            choose_type(RequestedType::Incremental, &f),
            Err((FailureReason::CheckpointInconsistent, _))
        ));
        assert_eq!(
            choose_type(RequestedType::Full, &facts()),
            Ok((BackupType::Full, Some(FullReason::Requested)))
        );
    }
}
