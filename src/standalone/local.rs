//! Single-host mode's local restore points: each policy's `localSnapshots.schedule` writes
//! Local runs (driven with the backups, see `daemon::drive`), and every loop expires the
//! points the policy's rules let go.

use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::config::Config;
use super::daemon::{matched_domains, Ctx};
use crate::api::{BackupPolicy, BackupRun, BackupRunSpec, RequestedType};
use crate::driver::local::local_settings;
use crate::driver::local_due::{due_local_points, SCHEDULED_AT};
use crate::schedule::local_run_name;

/// A Local run of `domain` for `policy`; `tick`: the schedule's tick it answers (none for
/// `--once`).
pub fn new_local_run(
    name: String,
    p: &BackupPolicy,
    domain: &str,
    tick: Option<Timestamp>,
) -> BackupRun {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let mut spec = BackupRunSpec::from_policy(&pname, &p.spec, domain);
    spec.type_ = RequestedType::Local;
    BackupRun {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: tick.map(|t| [(SCHEDULED_AT.to_string(), t.to_string())].into()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// Writes the Local runs the policy's local schedule owes now; answers its next tick.
/// `since`: when the policy was first seen (ticks before are not owed).
pub async fn schedule_local(
    ctx: &Ctx<'_>,
    p: &BackupPolicy,
    since: Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    let l = p.spec.local_snapshots.as_ref()?;
    let settings = local_settings(l, p.spec.time_zone.as_deref()).ok()?;
    let next = settings.schedule.next_after(now);
    let latest = settings.schedule.latest_at_or_before(now);
    if p.spec.suspend || latest.is_none_or(|t| t <= since) {
        return next;
    }
    let pname = p.metadata.name.clone().unwrap_or_default();
    let all = ctx.store.backup_runs().unwrap_or_default();
    let runs: Vec<&BackupRun> = all
        .iter()
        .filter(|r| r.spec.policy_ref.as_deref() == Some(pname.as_str()))
        .collect();
    let domains = matched_domains(ctx.host, p).await;
    for due in due_local_points(&settings.schedule, &runs, &domains, since, now) {
        let name = local_run_name(&pname, &due.domain, due.tick);
        if ctx.store.path_of("backupruns", &name).exists() {
            continue;
        }
        let run = new_local_run(name.clone(), p, &due.domain, Some(due.tick));
        if let Err(e) = ctx.store.write("backupruns", &name, &run) {
            eprintln!("Internal: cannot record {name}: {e}");
        }
    }
    next
}

/// Expires every policy's local points due at `now`; answers when the next live point
/// expires (the daemon wakes for it).
pub async fn expire_all(ctx: &Ctx<'_>, cfg: &Config, now: Timestamp) -> Option<Timestamp> {
    for (_, p) in &cfg.policies {
        if p.spec.local_snapshots.is_none() || ctx.stopping() {
            continue;
        }
        let pname = p.metadata.name.clone().unwrap_or_default();
        for domain in matched_domains(ctx.host, p).await {
            match ctx
                .driver()
                .expire_local(&ctx.site(cfg), None, &pname, &p.spec, &domain, now)
                .await
            {
                Ok(gone) => {
                    for g in gone {
                        eprintln!("{pname}: {domain}: local point {g} expired");
                    }
                }
                Err(e) => eprintln!("{pname}: {domain}: {}: {}", e.reason, e.message),
            }
        }
    }
    ctx.store
        .backup_runs()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.spec.is_local())
        .filter_map(|r| r.status.as_ref())
        .filter(|s| {
            !s.conditions
                .iter()
                .any(|c| c.type_ == "Expired" && c.status == "True")
        })
        .filter_map(|s| s.expires_at)
        .filter(|t| *t > now)
        .min()
}
