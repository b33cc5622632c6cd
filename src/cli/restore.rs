//! `snapback restore` and `snapback list`: restores driven by the target alone.

use std::path::PathBuf;

use clap::Args;
use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::backup::CommonArgs;
use super::progress::stderr_reporter;
use super::target_args::TargetArgs;
use crate::api::{
    BackupType, DiskFormat, FailureReason, RestorePhase, RestoreRequest, RestoreRequestSpec,
};
use crate::catalog::layout;
use crate::catalog::points::list_sets;
use crate::catalog::select::RestorePoint;
use crate::driver::Driver;
use crate::error::StepError;
use crate::libvirt::LibvirtHost;
use crate::process::cancel_on_signal;
use crate::schedule::adhoc_run_name;
use crate::standalone::site::{LocalSite, Targets};
use crate::store::FileStore;
use crate::table::table;
use crate::units::human_bytes;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backed-up domain's name
    #[arg(long)]
    pub domain: String,
    #[command(flatten)]
    pub target: TargetArgs,
    /// RFC 3339 time (the newest point at or before it) or `latest`
    #[arg(long)]
    pub at: Option<String>,
    /// Restore as a new domain with this name
    #[arg(
        long = "as",
        value_name = "NEWNAME",
        conflicts_with_all = ["in_place", "files"],
        required_unless_present_any = ["in_place", "files"]
    )]
    pub as_name: Option<String>,
    /// Restore over the existing domain (its old disks are kept, renamed, until verified)
    #[arg(long, conflicts_with = "files")]
    pub in_place: bool,
    /// Files mode: guest paths (files or trees) to restore, `/etc/hosts` or `vdb1:/etc/hosts`;
    /// `@snapback:/` gives the point's own files (manifest, domain XML, UEFI variables, TPM)
    #[arg(long, num_args = 1.., value_name = "PATH", requires = "to")]
    pub files: Vec<String>,
    /// Files mode: the directory the files are restored into
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Where the restored disks are written
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Start the domain after the restore
    #[arg(long)]
    pub start: bool,
    /// Bring the domain back running from the point's saved RAM state (a backup taken with
    /// --memory) instead of booting it; implies --start
    #[arg(long)]
    pub resume: bool,
    /// A YAML file with preRecovery, endRecovery and postRecovery hooks
    #[arg(long)]
    pub hooks_file: Option<PathBuf>,
    /// Seconds to wait for a graceful shutdown (in place) before forcing the domain off
    #[arg(long, default_value_t = 120)]
    pub shutdown_timeout: u32,
    /// Write a disk onto a block device instead of a new file, `vdb=/dev/vg/web-new`
    /// (repeatable); in place, the domain is repointed to it and its old device kept
    #[arg(long, value_name = "DISK=DEVICE", value_parser = disk_device, conflicts_with = "files")]
    pub to_device: Vec<(String, String)>,
    /// Allow --to-device to write over a device that holds a filesystem or partition table
    #[arg(long, requires = "to_device")]
    pub overwrite: bool,
    /// The format of the restored disk files; by default each disk keeps its own (a raw file
    /// or block disk comes back as a sparse raw file, a qcow2 disk as qcow2)
    #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "files")]
    pub format: Option<FormatArg>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `--format`: the format of restored disk files.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}

impl From<FormatArg> for DiskFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Raw => DiskFormat::Raw,
            FormatArg::Qcow2 => DiskFormat::Qcow2,
        }
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub domain: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `--files PATH... --to DIR`: single files or trees from the domain's files-mode backups.
async fn restore_files(args: &RestoreArgs) -> i32 {
    use crate::catalog::select::{parse_at, At};
    let at = match parse_at(args.at.as_deref()) {
        Ok(At::Latest) => None,
        Ok(At::Time(t)) => Some(t),
        Ok(At::Run(run)) => {
            return failure(StepError::new(
                FailureReason::InvalidSpec,
                format!("--at '{run}': a files restore takes a time (RFC 3339), not a run name"),
            ))
        }
        Err(e) => return failure(StepError::new(FailureReason::InvalidSpec, e)),
    };
    let base = match args.target.to_config(&args.common.state_dir) {
        Ok(b) => b,
        Err(e) => return failure(e),
    };
    let target = crate::catalog::layout::files_target(&base, &args.domain);
    let time = at.map(|t| t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string());
    let to = args.to.clone().unwrap_or_default();
    let to = std::path::absolute(&to).unwrap_or(to);
    match crate::files::restore::restore_files(&target, &args.files, time, &to).await {
        Ok(done) => {
            let rows = done
                .into_iter()
                .map(|(want, found, dest)| [want, found, dest.display().to_string()])
                .collect();
            print!("{}", table(["ASKED", "FOUND", "RESTORED TO"], rows));
            0
        }
        Err(e) => failure(e),
    }
}

fn driver<'a>(host: &'a LibvirtHost, state_dir: &'a std::path::Path) -> Driver<'a, LibvirtHost> {
    Driver {
        host,
        state_dir,
        poll: std::time::Duration::from_millis(250),
        metrics: None,
    }
}

/// `vdb=/dev/vg/web-new`, the device given by an absolute path.
fn disk_device(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((disk, dev)) if !disk.is_empty() && dev.starts_with('/') => {
            Ok((disk.to_string(), dev.to_string()))
        }
        _ => Err(format!(
            "{s:?}: expected DISK=DEVICE with an absolute device path, e.g. vdb=/dev/vg/web-new"
        )),
    }
}

fn failure(e: StepError) -> i32 {
    eprintln!("{}: {}", e.reason, e.message);
    1
}

pub async fn execute(mut args: RestoreArgs) -> i32 {
    args.common.absolutize();
    if !args.files.is_empty() {
        return restore_files(&args).await;
    }
    let store = FileStore::new(&args.common.state_dir);
    let name = format!("restore-{}", adhoc_run_name(&args.domain, Timestamp::now()));
    println!("{name}");
    let hooks = match super::read_hooks_file(args.hooks_file.as_deref()) {
        Ok(h) => h,
        Err(e) => return failure(e),
    };
    let mut named = std::collections::BTreeSet::new();
    if let Some((disk, _)) = args.to_device.iter().find(|(d, _)| !named.insert(d)) {
        return failure(StepError::new(
            crate::api::FailureReason::InvalidSpec,
            format!("--to-device names disk {disk} more than once"),
        ));
    }
    let storage_dir = args.storage_dir.as_ref().map(|p| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.clone())
            .display()
            .to_string()
    });
    let req = RestoreRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: RestoreRequestSpec {
            domain: args.domain.clone(),
            target_ref: crate::duplicity::url::redact(&args.target.target),
            source: crate::api::RestoreSource::Target,
            local_point: None,
            at: args.at.clone(),
            new_name: args.as_name.clone(),
            in_place: args.in_place,
            storage_dir,
            start: args.start || args.resume,
            resume: args.resume,
            hooks,
            shutdown_timeout_seconds: args.shutdown_timeout,
            target_devices: args.to_device.iter().cloned().collect(),
            overwrite: args.overwrite,
            disk_format: args.format.map(DiskFormat::from),
            files: None,
        },
        status: None,
    };
    if let Err(e) = std::fs::create_dir_all(&args.common.state_dir) {
        return failure(StepError::new(
            crate::api::FailureReason::InvalidSpec,
            format!("cannot create state dir: {e}"),
        ));
    }
    let host = match LibvirtHost::connect(&args.common.connect).await {
        Ok(h) => h,
        Err(e) => return failure(e.into()),
    };
    let site = LocalSite {
        store: &store,
        targets: Targets::Given(Box::new(args.target.to_config(&args.common.state_dir))),
    };
    let done = driver(&host, &args.common.state_dir)
        .restore(
            &site,
            req,
            stderr_reporter(name.clone()),
            cancel_on_signal(),
        )
        .await;
    let s = done.status.unwrap_or_default();
    match (s.phase, s.failure) {
        (RestorePhase::Succeeded, _) => {
            let point = s
                .point
                .map(|p| format!("{} ({:?})", p.run, p.type_.unwrap_or(BackupType::Full)))
                .unwrap_or_default();
            let disks = s
                .disks
                .iter()
                .map(|d| d.path.clone())
                .collect::<Vec<_>>()
                .join(", ");
            let kept = if s.replaced_disks.is_empty() {
                String::new()
            } else {
                format!("; old disks kept as {}", s.replaced_disks.join(", "))
            };
            eprintln!(
                "Succeeded: restored {point} as domain {} on {disks} in {}{kept}",
                s.defined_domain.unwrap_or_default(),
                s.duration.unwrap_or_default()
            );
            0
        }
        (_, Some(f)) => {
            eprintln!("{}: {}", f.reason, f.message);
            1
        }
        (p, None) => {
            eprintln!("Internal: the restore ended in phase {p:?} without a reason");
            1
        }
    }
}

/// Continues every unfinished restore of this target whose process died.
pub async fn resume_stale(
    host: &LibvirtHost,
    store: &FileStore,
    target: &TargetArgs,
    state_dir: &std::path::Path,
    cancel: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<RestoreRequest>, StepError> {
    let reqs: Vec<RestoreRequest> = store
        .list("restorerequests")
        .map_err(|e| StepError::new(crate::api::FailureReason::Internal, e.to_string()))?;
    let url = crate::duplicity::url::redact(&target.target);
    let site = LocalSite {
        store,
        targets: Targets::Given(Box::new(target.to_config(state_dir))),
    };
    let mut done = Vec::new();
    for req in reqs {
        let unfinished = req.status.as_ref().is_some_and(|s| !s.phase.is_terminal());
        if !unfinished || req.spec.target_ref != url {
            continue;
        }
        let name = req.metadata.name.clone().unwrap_or_default();
        eprintln!("{name}: resuming an interrupted restore");
        let report = stderr_reporter(name);
        done.push(
            driver(host, state_dir)
                .restore(&site, req, report, cancel.clone())
                .await,
        );
    }
    Ok(done)
}

fn list_row(p: &RestorePoint) -> [String; 5] {
    [
        p.time().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        match p.manifest.type_ {
            BackupType::Full => "full".into(),
            BackupType::Incremental => "incremental".into(),
            BackupType::Local => "local".into(),
        },
        p.manifest.chain.clone(),
        human_bytes(p.size()),
        p.manifest.run.clone(),
    ]
}

pub async fn list(mut args: ListArgs) -> i32 {
    args.common.absolutize();
    let target = match args.target.to_config(&args.common.state_dir) {
        Ok(t) => layout::domain_target(&t, &args.domain),
        Err(e) => return failure(e),
    };
    let scratch = args
        .common
        .state_dir
        .join("list-scratch")
        .join(format!("{}", std::process::id()));
    let result = list_sets(&target, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match result {
        Ok(l) if l.points.is_empty() && l.damaged.is_empty() => failure(StepError::new(
            crate::api::FailureReason::DomainNotFound,
            format!("the target holds no backups of domain '{}'", args.domain),
        )),
        Ok(l) => {
            let mut rows: Vec<(Timestamp, [String; 5])> =
                l.points.iter().map(|p| (p.set_time, list_row(p))).collect();
            rows.extend(l.damaged.iter().map(|d| {
                (
                    d.set_time,
                    [
                        d.set_time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        if d.full { "full" } else { "incremental" }.into(),
                        "?".into(),
                        "-".into(),
                        d.label(),
                    ],
                )
            }));
            rows.sort_by_key(|(t, _)| *t);
            print!(
                "{}",
                table(
                    ["TIME", "TYPE", "CHAIN", "SIZE", "RUN"],
                    rows.into_iter().map(|(_, r)| r).collect()
                )
            );
            if !l.damaged.is_empty() {
                // Whole sets whose chain needs a damaged one are counted apart: they are not
                // damaged themselves.
                let own = l.damaged.iter().filter(|d| d.needs.is_none()).count();
                let after = l.damaged.len() - own
                    + l.points
                        .iter()
                        .filter(|p| crate::catalog::select::chain_damage(p, &l.damaged).is_some())
                        .count();
                eprintln!(
                    "{own} backup set(s) cannot be read from the target, and {after} later set(s) of their chains cannot be restored without them; `snapback verify --all` names each. The next backup of the domain starts a new chain when told --type full.",
                );
            }
            0
        }
        Err(e) => failure(e),
    }
}

/// `snapback get restorerequests`.
pub fn restore_table(reqs: &[RestoreRequest]) -> String {
    let rows = reqs
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            let phase = match (&s.failure, s.phase) {
                (Some(f), p) if p.is_terminal() => format!("{p:?} ({})", f.reason),
                (_, p) => format!("{p:?}"),
            };
            [
                r.metadata.name.clone().unwrap_or_default(),
                r.spec.domain.clone(),
                s.point
                    .as_ref()
                    .map(|p| p.run.clone())
                    .unwrap_or_else(|| "-".into()),
                // A files restore's target is its directory.
                s.defined_domain
                    .clone()
                    .or_else(|| r.spec.files.as_ref().map(|f| f.to.clone()))
                    .unwrap_or_else(|| "-".into()),
                phase,
                s.duration.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        ["NAME", "DOMAIN", "POINT", "TARGET", "PHASE", "DURATION"],
        rows,
    )
}
