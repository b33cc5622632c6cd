//! `snapback standalone --config DIR --once`: every policy's backups now, then its retention.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::backup::{cancel_on_signal, run_name, CommonArgs};
use super::progress::stderr_reporter;
use super::restore::table;
use crate::api::{BackupPhase, BackupRun, BackupRunSpec, Condition, FailureReason, RequestedType};
use crate::engine::{staging, BackupEngine, RunContext};
use crate::libvirt::LibvirtHost;
use crate::retention::prune::prune_domain;
use crate::standalone::{config, glob};
use crate::store::FileStore;

#[derive(Args, Debug)]
pub struct StandaloneArgs {
    /// A directory of BackupTarget and BackupPolicy manifests
    #[arg(long)]
    pub config: PathBuf,
    /// Run every policy now, once, and exit (for cron or a systemd timer)
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn execute(mut args: StandaloneArgs) -> i32 {
    args.common.absolutize();
    if !args.once {
        eprintln!(
            "InvalidSpec: only --once is implemented yet: run it from cron or a systemd timer"
        );
        return 2;
    }
    let cfg = match config::load_dir(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("InvalidSpec: {e}");
            return 1;
        }
    };
    let host = match LibvirtHost::connect(&args.common.connect).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("LibvirtUnavailable: {e}");
            return 1;
        }
    };
    let all_domains = host.domain_names().await.unwrap_or_default();
    let store = FileStore::new(&args.common.state_dir);
    let cancel = cancel_on_signal();
    let mut rows = Vec::new();
    let mut failed = 0;
    for (file, policy) in &cfg.policies {
        let pname = policy.metadata.name.clone().unwrap_or_default();
        let spec = &policy.spec;
        if spec.suspend {
            continue;
        }
        let rules = match spec.retention.validate() {
            Ok(r) => Some(r),
            Err(_) if spec.retention.is_unset() => None,
            Err(e) => {
                eprintln!("InvalidSpec: {}: BackupPolicy {pname}: {e}", file.display());
                return 1;
            }
        };
        let tz = spec
            .time_zone
            .as_deref()
            .filter(|z| !z.is_empty())
            .map(TimeZone::get)
            .transpose();
        let tz = match tz {
            Ok(t) => t.unwrap_or(TimeZone::UTC),
            Err(e) => {
                eprintln!(
                    "InvalidSpec: {}: BackupPolicy {pname}: spec.timeZone: {e}",
                    file.display()
                );
                return 1;
            }
        };
        let Some(target) = cfg.target(&spec.target_ref) else {
            continue;
        };
        let base = match config::target_config(target, &args.common.state_dir) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{}: {}", e.reason, e.message);
                return 1;
            }
        };
        let mut domains = spec.domain_selector.names.clone();
        for d in &all_domains {
            if spec
                .domain_selector
                .globs
                .iter()
                .any(|g| glob::matches(g, d))
                && !domains.contains(d)
            {
                domains.push(d.clone());
            }
        }
        for domain in domains {
            let name = run_name(&domain, Timestamp::now());
            let run = BackupRun {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                spec: BackupRunSpec {
                    domain: domain.clone(),
                    policy_ref: Some(pname.clone()),
                    target_ref: spec.target_ref.clone(),
                    type_: RequestedType::Auto,
                    node_name: None,
                    consistency: spec.consistency.clone(),
                    hooks: spec.hooks.clone(),
                    full_cadence: spec.full_cadence.clone(),
                    depth: spec.depth,
                },
                status: None,
            };
            let ctx = RunContext {
                target: base.clone(),
                state_dir: args.common.state_dir.clone(),
                history: store.backup_runs().unwrap_or_default(),
                poll: Duration::from_millis(250),
            };
            let done = BackupEngine::new(
                &host,
                &store,
                ctx,
                run,
                stderr_reporter(name.clone()),
                cancel.clone(),
            )
            .run()
            .await;
            let mut s = done.status.clone().unwrap_or_default();
            let mut outcome = match (&s.failure, s.phase) {
                (Some(f), p) => format!("{p:?} ({})", f.reason),
                (None, p) => format!("{p:?}"),
            };
            if let (BackupPhase::Succeeded, Some(rules)) = (s.phase, rules.as_ref()) {
                // Retention after each successful run. A failed prune is recorded on the run and
                // simply planned again after the next one; it never deletes part of a needed chain.
                let dt = staging::domain_target(&base, &domain);
                let scratch = args
                    .common
                    .state_dir
                    .join("prune-scratch")
                    .join(staging::domain_dir(&domain));
                let pruned = prune_domain(&dt, rules, &tz, &[], &scratch, false).await;
                let _ = std::fs::remove_dir_all(&scratch);
                let c = match &pruned {
                    Ok(p) => {
                        outcome
                            .push_str(&format!(", pruned {} chain(s)", p.plan.delete_chains.len()));
                        Condition::now(
                            "Pruned",
                            true,
                            "RetentionApplied",
                            format!("deleted chains: {:?}", p.plan.delete_chains),
                            None,
                        )
                    }
                    Err(e) => {
                        outcome.push_str(", prune failed");
                        Condition::now("Pruned", false, e.reason.as_str(), e.message.clone(), None)
                    }
                };
                crate::api::set_condition(&mut s.conditions, c);
                let mut rec = done.clone();
                rec.status = Some(s.clone());
                let _ = store.write("backupruns", &name, &rec);
                if let Ok(p) = pruned {
                    let runs = store.backup_runs().unwrap_or_default();
                    super::prune::expire_runs(&store, &runs, &p.plan.delete_chains);
                }
            } else if s.phase == BackupPhase::Failed {
                failed += 1;
            }
            rows.push([pname.clone(), domain, name, outcome]);
            if s.failure
                .as_ref()
                .is_some_and(|f| f.reason == FailureReason::Interrupted)
            {
                break;
            }
        }
    }
    print!("{}", table(["POLICY", "DOMAIN", "RUN", "RESULT"], rows));
    i32::from(failed > 0)
}
