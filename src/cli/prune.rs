//! `snapback prune --config DIR [--dry-run]`: applies every policy's retention.

use std::path::PathBuf;

use clap::Args;
use jiff::tz::TimeZone;

use super::backup::CommonArgs;
use crate::api::{BackupRun, FailureReason};
use crate::catalog::layout;
use crate::error::StepError;
use crate::libvirt::LibvirtHost;
use crate::retention::prune::{expired, prune_domain, prune_files_domain, Deleted};
use crate::selector;
use crate::standalone::config;
use crate::store::FileStore;
use crate::table::table;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// A directory of BackupTarget and BackupPolicy manifests
    #[arg(long)]
    pub config: PathBuf,
    /// Print what would be deleted and why, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn fail(e: impl std::fmt::Display, reason: FailureReason) -> i32 {
    eprintln!("{reason}: {e}");
    1
}

/// The domains a policy covers: those its selector picks on this host.
async fn domains(
    p: &crate::api::BackupPolicySpec,
    connect: &str,
) -> Result<Vec<String>, StepError> {
    let sel = &p.domain_selector;
    if sel.globs.is_empty() && sel.metadata.is_empty() {
        return Ok(sel.names.clone());
    }
    let host = LibvirtHost::connect(connect).await?;
    Ok(selector::on_host(&host, sel).await?)
}

pub async fn execute(mut args: PruneArgs) -> i32 {
    args.common.absolutize();
    let cfg = match config::load_dir(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(e, FailureReason::InvalidSpec),
    };
    let store = FileStore::new(&args.common.state_dir);
    let runs = store.backup_runs().unwrap_or_default();
    let in_progress: Vec<String> = runs
        .iter()
        .filter_map(|r| r.status.as_ref())
        .filter(|s| !s.phase.is_terminal())
        .filter_map(|s| s.chain.clone())
        .collect();
    let mut rows = Vec::new();
    let mut failed = 0;
    for (file, policy) in &cfg.policies {
        let pname = policy.metadata.name.clone().unwrap_or_default();
        let keep_all = policy
            .spec
            .retention
            .is_unset()
            .then_some("no retention rules: everything is kept");
        let files = policy.spec.mode == crate::api::BackupMode::Files;
        if let Some(why) = keep_all {
            let dash = || "-".to_string();
            rows.push([pname, dash(), dash(), dash(), "keep".into(), why.into()]);
            continue;
        }
        let rules = match policy.spec.retention.validate() {
            Ok(r) => r,
            Err(e) => {
                return fail(
                    format!("{}: BackupPolicy {pname}: {e}", file.display()),
                    FailureReason::InvalidSpec,
                )
            }
        };
        let tz = match policy.spec.time_zone.as_deref() {
            None | Some("") => TimeZone::UTC,
            Some(z) => match TimeZone::get(z) {
                Ok(tz) => tz,
                Err(e) => {
                    return fail(
                        format!(
                            "{}: BackupPolicy {pname}: spec.timeZone '{z}': {e}",
                            file.display()
                        ),
                        FailureReason::InvalidSpec,
                    )
                }
            },
        };
        let Some(t) = cfg.target(&policy.spec.target_ref) else {
            continue;
        };
        let base = match crate::driver::target::target_config(t, &args.common.state_dir) {
            Ok(b) => b,
            Err(e) => return fail(e.message, e.reason),
        };
        let doms = match domains(&policy.spec, &args.common.connect).await {
            Ok(d) => d,
            Err(e) => return fail(e.message, e.reason),
        };
        for d in doms {
            let result = if files {
                let target = layout::files_target(&base, &d);
                prune_files_domain(&target, &rules, &tz, args.dry_run).await
            } else {
                let target = layout::domain_target(&base, &d);
                let scratch = args
                    .common
                    .state_dir
                    .join("prune-scratch")
                    .join(layout::domain_dir(&d));
                let r =
                    prune_domain(&target, &rules, &tz, &in_progress, &scratch, args.dry_run).await;
                let _ = std::fs::remove_dir_all(&scratch);
                r
            };
            match result {
                Ok(done) => {
                    for dec in &done.plan.decisions {
                        let action = match (dec.keep, args.dry_run) {
                            (true, _) => "keep",
                            (false, true) => "would delete",
                            (false, false) => "deleted",
                        };
                        rows.push([
                            pname.clone(),
                            d.clone(),
                            dec.id.clone(),
                            dec.time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                            action.to_string(),
                            dec.reasons.join(", "),
                        ]);
                    }
                    if !args.dry_run {
                        let deleted = Deleted {
                            chains: done.plan.delete_chains.clone(),
                            set_times: done.deleted_sets.clone(),
                        };
                        expire_runs(&store, &runs, &deleted);
                    }
                }
                Err(e) => {
                    // A failed prune deletes nothing more; the next prune plans again from the target.
                    eprintln!("{pname}/{d}: {}: {}", e.reason, e.message);
                    failed += 1;
                }
            }
        }
    }
    print!(
        "{}",
        table(["POLICY", "DOMAIN", "RUN", "TIME", "ACTION", "WHY"], rows)
    );
    i32::from(failed > 0)
}

/// Marks the stored runs of deleted chains `Expired` (their backups are gone from the target).
pub fn expire_runs(store: &FileStore, runs: &[BackupRun], deleted: &Deleted) {
    for r in runs.iter().filter_map(|r| expired(r, deleted)) {
        let name = r.metadata.name.clone().unwrap_or_default();
        if let Err(e) = store.write("backupruns", &name, &r) {
            eprintln!("warning: cannot mark {name} expired: {e}");
        }
    }
}
