//! `snapback backup`: one backup of one domain, recorded in the state dir.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::progress::stderr_reporter;
use super::target_args::TargetArgs;
use crate::api::{
    BackupPhase, BackupRun, BackupRunSpec, Consistency, FailureReason, FullCadence, OfflinePolicy,
    Quiesce, RequestedType,
};
use crate::driver::Driver;
use crate::error::StepError;
use crate::libvirt::LibvirtHost;
use crate::lifecycle::Lifecycle;
use crate::process::cancel_on_signal;
use crate::schedule::adhoc_run_name;
use crate::standalone::site::{LocalSite, Targets};
use crate::store::FileStore;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TypeArg {
    Auto,
    Full,
    Incremental,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum QuiesceArg {
    Preferred,
    Required,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OfflineArg {
    Backup,
    Skip,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Domain name or UUID
    #[arg(long)]
    pub domain: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long = "type", value_enum, default_value = "auto")]
    pub type_: TypeArg,
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, value_enum, default_value = "preferred")]
    pub quiesce: QuiesceArg,
    /// Pause the guest's vCPUs around the snapshot point
    #[arg(long)]
    pub pause: bool,
    /// What to do with a shut-off domain
    #[arg(long, value_enum, default_value = "backup")]
    pub offline: OfflineArg,
    /// Force a full when the chain's full is older than this (e.g. 7d)
    #[arg(long)]
    pub full_every: Option<String>,
    /// Force a full after this many incrementals
    #[arg(long)]
    pub max_incrementals: Option<u32>,
    /// Backing-chain depth for shut-off domains: 0 whole chain, -1 all but the base, N top N
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub depth: i32,
    /// A YAML file with hooks (preSnapshot, onSnapshot, postSnapshot), each an argv list
    #[arg(long)]
    pub hooks_file: Option<PathBuf>,
    /// image: whole disks (checkpoint incrementals); files: the guest's filesystems, mounted
    /// read-only from the export (duplicity's file incrementals)
    #[arg(long, value_enum, default_value = "image")]
    pub mode: ModeArg,
    /// Files mode: a guest path to back up (repeatable; default everything)
    #[arg(long, value_name = "PATH")]
    pub include: Vec<String>,
    /// Files mode: a guest path to leave out (repeatable; duplicity globs allowed)
    #[arg(long, value_name = "PATH")]
    pub exclude: Vec<String>,
    /// Give raw and block disks a changed-block tracking overlay first (`snapback cbt enable`)
    #[arg(long)]
    pub enable_cbt: bool,
    /// Where those overlays go (default /var/lib/libvirt/images)
    #[arg(long, value_name = "DIR", requires = "enable_cbt")]
    pub cbt_dir: Option<PathBuf>,
    /// Also save the guest's RAM and device state in the point, at the disks' instant (the
    /// guest stays paused until the job and the state are taken), for `restore --resume`
    #[arg(long)]
    pub memory: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModeArg {
    Image,
    Files,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// libvirt connection URI
    #[arg(long, default_value = "qemu:///system", env = "SNAPBACK_CONNECT")]
    pub connect: String,
    /// Where runs, staging and caches live
    #[arg(long, default_value = "/var/lib/snapback", env = "SNAPBACK_STATE_DIR")]
    pub state_dir: PathBuf,
}

impl CommonArgs {
    /// libvirt writes exports by absolute path: a relative --state-dir is made absolute.
    pub fn absolutize(&mut self) {
        if let Ok(p) = std::path::absolute(&self.state_dir) {
            self.state_dir = p;
        }
    }
}

/// Records a run that failed before the engine could start (libvirt unreachable, the state
/// dir not writable): nothing was touched, so nothing is cleaned up.
async fn fail_early(site: &LocalSite<'_>, run: BackupRun, e: StepError) -> BackupRun {
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let name = run.metadata.name.clone().unwrap_or_default();
    let mut lc = Lifecycle::new(run, site, stderr_reporter(name), cancel);
    lc.fail(e).await;
    lc.record
}

/// Runs the engine over every unfinished run in the store whose process died (its lock is
/// free), so each resumes at the step it stopped in. Returns the finished runs.
pub async fn resume_stale(
    host: &LibvirtHost,
    store: &FileStore,
    target: &TargetArgs,
    state_dir: &std::path::Path,
    only_domain: Option<&str>,
    cancel: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<BackupRun>, StepError> {
    let runs = store
        .backup_runs()
        .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
    let url = crate::duplicity::url::redact(&target.target);
    let site = LocalSite {
        store,
        targets: Targets::Given(Box::new(target.to_config(state_dir))),
    };
    let driver = Driver {
        host,
        state_dir,
        poll: Duration::from_millis(250),
        metrics: None,
    };
    let mut done = Vec::new();
    for run in runs
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| !s.phase.is_terminal()))
    {
        if run.spec.target_ref != url || only_domain.is_some_and(|d| d != run.spec.domain) {
            continue;
        }
        let name = run.metadata.name.clone().unwrap_or_default();
        eprintln!("{name}: resuming an interrupted run");
        let finished = driver
            .backup(
                &site,
                run.clone(),
                stderr_reporter(name.clone()),
                cancel.clone(),
            )
            .await
            .run;
        if finished
            .status
            .as_ref()
            .and_then(|s| s.failure.as_ref())
            .is_some_and(|f| f.reason == FailureReason::Busy)
        {
            // The run is alive in another process: it was not ours to resume. Restore its record.
            store
                .write("backupruns", &name, run)
                .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
            continue;
        }
        done.push(finished);
    }
    Ok(done)
}

pub async fn execute(mut args: BackupArgs) -> i32 {
    args.common.absolutize();
    let store = FileStore::new(&args.common.state_dir);
    let now = Timestamp::now();
    let name = adhoc_run_name(&args.domain, now);
    let hooks = match super::read_hooks_file(args.hooks_file.as_deref()) {
        Ok(h) => h,
        Err(e) => return report_failure(&name, e),
    };
    let spec = BackupRunSpec {
        domain: args.domain.clone(),
        virtual_machine: None,
        policy_ref: None,
        target_ref: crate::duplicity::url::redact(&args.target.target),
        type_: match args.type_ {
            TypeArg::Auto => RequestedType::Auto,
            TypeArg::Full => RequestedType::Full,
            TypeArg::Incremental => RequestedType::Incremental,
        },
        node_name: None,
        consistency: Consistency {
            quiesce: match args.quiesce {
                QuiesceArg::Preferred => Quiesce::Preferred,
                QuiesceArg::Required => Quiesce::Required,
                QuiesceArg::None => Quiesce::None,
            },
            pause: args.pause,
            offline: match args.offline {
                OfflineArg::Backup => OfflinePolicy::Backup,
                OfflineArg::Skip => OfflinePolicy::Skip,
            },
            ..Default::default()
        },
        hooks,
        full_cadence: FullCadence {
            full_every: args.full_every.clone(),
            max_incrementals: args.max_incrementals,
        },
        depth: args.depth,
        mode: match args.mode {
            ModeArg::Image => crate::api::BackupMode::Image,
            ModeArg::Files => crate::api::BackupMode::Files,
        },
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        changed_block_tracking: if args.enable_cbt {
            crate::api::ChangedBlockTracking::Enable
        } else {
            crate::api::ChangedBlockTracking::Leave
        },
        changed_block_tracking_dir: args.cbt_dir.as_ref().map(|d| {
            std::path::absolute(d)
                .unwrap_or(d.clone())
                .display()
                .to_string()
        }),
        memory: if args.memory {
            crate::api::MemoryState::Include
        } else {
            crate::api::MemoryState::Exclude
        },
    };
    let run = BackupRun {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec,
        status: None,
    };

    if let Err(e) = std::fs::create_dir_all(&args.common.state_dir) {
        return report_failure(
            &name,
            StepError::new(
                FailureReason::InvalidSpec,
                format!("cannot create state dir: {e}"),
            ),
        );
    }
    let site = LocalSite {
        store: &store,
        targets: Targets::Given(Box::new(args.target.to_config(&args.common.state_dir))),
    };
    let host = match LibvirtHost::connect(&args.common.connect).await {
        Ok(h) => h,
        Err(e) => return finish(fail_early(&site, run, e.into()).await),
    };
    let cancel = cancel_on_signal();
    if let Err(e) = resume_stale(
        &host,
        &store,
        &args.target,
        &args.common.state_dir,
        Some(&args.domain),
        &cancel,
    )
    .await
    {
        eprintln!("warning: could not resume earlier runs: {e}");
    }
    let driver = Driver {
        host: &host,
        state_dir: &args.common.state_dir,
        poll: Duration::from_millis(250),
        metrics: None,
    };
    let report = stderr_reporter(name.clone());
    finish(driver.backup(&site, run, report, cancel).await.run)
}

fn report_failure(name: &str, e: StepError) -> i32 {
    println!("{name}");
    eprintln!("{}: {}", e.reason, e.message);
    1
}

/// Prints the run's name on stdout; on failure the last stderr line starts with the reason word.
fn finish(run: BackupRun) -> i32 {
    println!("{}", run.metadata.name.clone().unwrap_or_default());
    let s = run.status.unwrap_or_default();
    match (s.phase, s.failure) {
        (BackupPhase::Succeeded, _) => {
            eprintln!(
                "Succeeded: {} backup, {} in {}",
                s.type_
                    .map(|t| format!("{t:?}").to_lowercase())
                    .unwrap_or_default(),
                s.size.unwrap_or_default(),
                s.duration.unwrap_or_default()
            );
            0
        }
        (BackupPhase::Skipped, Some(f)) => {
            eprintln!("Skipped: {}: {}", f.reason, f.message);
            0
        }
        (_, Some(f)) => {
            eprintln!("{}: {}", f.reason, f.message);
            1
        }
        (p, None) => {
            eprintln!("Internal: the run ended in phase {p:?} without a reason");
            1
        }
    }
}
