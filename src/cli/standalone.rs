//! `snapback standalone --config DIR [--once]`: single-host mode.
//!
//! Without `--once` it is a daemon: it runs each policy's schedule, runs RestoreRequests once,
//! and re-reads the config dir when a file changes. The state dir is the journal: a tick's
//! runs are written (Pending) before the tick is marked scheduled, and unfinished runs are
//! driven first on every loop, so a restart neither loses nor duplicates a run.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use jiff::Timestamp;
use kube::api::ObjectMeta;
use tokio::sync::watch;

use super::backup::{cancel_on_signal, run_name, CommonArgs};
use super::progress::stderr_reporter;
use super::restore::table;
use crate::api::{
    BackupPhase, BackupPolicy, BackupRun, BackupRunSpec, FailureReason, RestoreRequest,
};
use crate::engine::{BackupEngine, RunContext};
use crate::libvirt::LibvirtHost;
use crate::restore::{RestoreContext, RestoreEngine};
use crate::retention::prune::prune_after_run;
use crate::schedule::{due, Schedule};
use crate::selector;
use crate::standalone::config::{self, Config};
use crate::store::FileStore;

#[derive(Args, Debug)]
pub struct StandaloneArgs {
    /// A directory of BackupTarget, BackupPolicy and RestoreRequest manifests
    #[arg(long)]
    pub config: PathBuf,
    /// Run every policy now, once, and exit (for cron or a systemd timer)
    #[arg(long)]
    pub once: bool,
    /// Seconds between looks at the schedules and the config dir (daemon mode)
    #[arg(long, default_value_t = 20)]
    pub interval: u64,
    #[command(flatten)]
    pub common: CommonArgs,
}

struct Ctx {
    host: LibvirtHost,
    store: FileStore,
    state_dir: PathBuf,
    cancel: watch::Receiver<bool>,
}

pub async fn execute(mut args: StandaloneArgs) -> i32 {
    args.common.absolutize();
    let cfg = match config::load_dir(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("InvalidSpec: {e}");
            return 1;
        }
    };
    if let Err(e) = check_policies(&cfg) {
        eprintln!("InvalidSpec: {e}");
        return 1;
    }
    let host = match LibvirtHost::connect(&args.common.connect).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("LibvirtUnavailable: {e}");
            return 1;
        }
    };
    let ctx = Ctx {
        host,
        store: FileStore::new(&args.common.state_dir),
        state_dir: args.common.state_dir.clone(),
        cancel: cancel_on_signal(),
    };
    if args.once {
        once(&ctx, &cfg).await
    } else {
        daemon(
            &ctx,
            cfg,
            &args.config,
            Duration::from_secs(args.interval.max(1)),
        )
        .await
    }
}

/// Schedules and time zones are checked up front, with the file named.
fn check_policies(cfg: &Config) -> Result<(), String> {
    for (file, p) in &cfg.policies {
        Schedule::parse(&p.spec.schedule, p.spec.time_zone.as_deref()).map_err(|e| {
            format!(
                "{}: BackupPolicy {}: spec.{e}",
                file.display(),
                p.metadata.name.clone().unwrap_or_default()
            )
        })?;
    }
    Ok(())
}

/// The domains a policy selects on this host (none when libvirt cannot list them).
async fn matched_domains(host: &LibvirtHost, p: &BackupPolicy) -> Vec<String> {
    selector::on_host(host, &p.spec.domain_selector)
        .await
        .unwrap_or_default()
}

fn new_run(name: String, p: &BackupPolicy, domain: &str) -> BackupRun {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let spec = BackupRunSpec::from_policy(&pname, &p.spec, domain);
    BackupRun {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

fn policy_named<'a>(cfg: &'a Config, name: &str) -> Option<&'a BackupPolicy> {
    cfg.policies
        .iter()
        .map(|(_, p)| p)
        .find(|p| p.metadata.name.as_deref() == Some(name))
}

/// Drives one run through the engine, then applies its policy's retention when it succeeded.
/// Returns a one-line outcome.
async fn drive(ctx: &Ctx, cfg: &Config, run: BackupRun) -> (BackupRun, String) {
    let name = run.metadata.name.clone().unwrap_or_default();
    let Some(target) = cfg.target(&run.spec.target_ref) else {
        let msg = format!(
            "waiting: target '{}' is not in the config dir",
            run.spec.target_ref
        );
        return (run, msg);
    };
    let base = match crate::driver::target::target_config(target, &ctx.state_dir) {
        Ok(b) => b,
        Err(e) => return (run, format!("Failed ({})", e.reason)),
    };
    let rctx = RunContext {
        target: base.clone(),
        state_dir: ctx.state_dir.clone(),
        history: ctx.store.backup_runs().unwrap_or_default(),
        poll: Duration::from_millis(250),
    };
    let done = BackupEngine::new(
        &ctx.host,
        &ctx.store,
        rctx,
        run,
        stderr_reporter(name.clone()),
        ctx.cancel.clone(),
    )
    .run()
    .await;
    let mut s = done.status.clone().unwrap_or_default();
    let mut outcome = match (&s.failure, s.phase) {
        (Some(f), p) => format!("{p:?} ({})", f.reason),
        (None, p) => format!("{p:?}"),
    };
    let policy = done
        .spec
        .policy_ref
        .as_deref()
        .and_then(|p| policy_named(cfg, p));
    if let (BackupPhase::Succeeded, Some(p)) = (s.phase, policy) {
        if let Some(after) =
            prune_after_run(&base, &done.spec.domain, &p.spec, &ctx.state_dir).await
        {
            if after.condition.status == "True" {
                outcome.push_str(&format!(", pruned {} chain(s)", after.deleted_chains.len()));
            } else {
                outcome.push_str(", prune failed");
            }
            crate::api::set_condition(&mut s.conditions, after.condition);
            let mut rec = done.clone();
            rec.status = Some(s.clone());
            let _ = ctx.store.write("backupruns", &name, &rec);
            let runs = ctx.store.backup_runs().unwrap_or_default();
            super::prune::expire_runs(&ctx.store, &runs, &after.deleted_chains);
            return (rec, outcome);
        }
    }
    (done, outcome)
}

fn interrupted(r: &BackupRun) -> bool {
    r.status
        .as_ref()
        .and_then(|s| s.failure.as_ref())
        .is_some_and(|f| f.reason == FailureReason::Interrupted)
}

async fn once(ctx: &Ctx, cfg: &Config) -> i32 {
    let mut rows = Vec::new();
    let mut failed = 0;
    'policies: for (_, policy) in &cfg.policies {
        let pname = policy.metadata.name.clone().unwrap_or_default();
        if policy.spec.suspend {
            continue;
        }
        for domain in matched_domains(&ctx.host, policy).await {
            let name = run_name(&domain, Timestamp::now());
            let (done, outcome) = drive(ctx, cfg, new_run(name.clone(), policy, &domain)).await;
            if done.status.as_ref().map(|s| s.phase) == Some(BackupPhase::Failed) {
                failed += 1;
            }
            rows.push([pname.clone(), domain, name, outcome]);
            if interrupted(&done) {
                break 'policies;
            }
        }
    }
    print!("{}", table(["POLICY", "DOMAIN", "RUN", "RESULT"], rows));
    i32::from(failed > 0)
}

/// A cheap fingerprint of the config dir: names, sizes and modification times.
fn config_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

fn stored_policy(store: &FileStore, p: &BackupPolicy) -> BackupPolicy {
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut out = p.clone();
    out.status = store
        .read::<BackupPolicy>("backuppolicies", &name)
        .ok()
        .and_then(|s| s.status);
    out
}

async fn daemon(ctx: &Ctx, mut cfg: Config, dir: &Path, interval: Duration) -> i32 {
    let mut fingerprint = config_fingerprint(dir);
    eprintln!(
        "standalone: {} polic(ies), {} target(s), {} restore request(s) from {}",
        cfg.policies.len(),
        cfg.targets.len(),
        cfg.restores.len(),
        dir.display()
    );
    loop {
        // Config changes are picked up here; a broken edit keeps the last good config.
        let fp = config_fingerprint(dir);
        if fp != fingerprint {
            fingerprint = fp;
            match config::load_dir(dir)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    check_policies(&c)?;
                    Ok(c)
                }) {
                Ok(c) => {
                    eprintln!("standalone: config reloaded");
                    cfg = c;
                }
                Err(e) => eprintln!("InvalidSpec: {e} (keeping the previous config)"),
            }
        }
        let now = Timestamp::now();
        let mut next_wake = now + interval;

        // 1. Schedule: write the tick's runs, then mark the tick scheduled.
        for (_, p) in &cfg.policies {
            let pname = p.metadata.name.clone().unwrap_or_default();
            let Ok(sched) = Schedule::parse(&p.spec.schedule, p.spec.time_zone.as_deref()) else {
                continue;
            };
            let mut rec = stored_policy(&ctx.store, p);
            let st = rec.status.get_or_insert_with(Default::default);
            let since = match st
                .last_schedule_time
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
            {
                Some(t) => t,
                None => {
                    // First sight of the policy: ticks before it existed are not owed.
                    st.last_schedule_time = Some(now.to_string());
                    now
                }
            };
            let d = due(&sched, since, now, p.spec.starting_deadline_seconds);
            st.next_schedule_time = (!p.spec.suspend)
                .then_some(d.next)
                .flatten()
                .map(|t| t.to_string());
            if let Some(n) = d.next {
                next_wake = next_wake.min(n);
            }
            if !p.spec.suspend {
                if let Some(tick) = d.tick {
                    let domains = matched_domains(&ctx.host, p).await;
                    st.matched_domains = domains.clone();
                    for domain in domains {
                        let name = crate::schedule::run_name(&pname, &domain, tick);
                        if ctx.store.path_of("backupruns", &name).exists() {
                            continue;
                        }
                        let run = new_run(name.clone(), p, &domain);
                        if let Err(e) = ctx.store.write("backupruns", &name, &run) {
                            eprintln!("Internal: cannot record {name}: {e}");
                        }
                    }
                }
                if let Some(latest) = d.latest {
                    st.last_schedule_time = Some(latest.to_string());
                    st.missed_schedules += u64::from(d.missed);
                    if d.missed > 0 {
                        eprintln!(
                            "{pname}: {} tick(s) missed{}",
                            d.missed,
                            if d.deadline_passed {
                                " (past startingDeadlineSeconds)"
                            } else {
                                "; ran the newest only"
                            }
                        );
                    }
                }
            }
            if let Err(e) = ctx.store.write("backuppolicies", &pname, &rec) {
                eprintln!("Internal: cannot record policy {pname}: {e}");
            }
        }

        // 2. Drive every unfinished run, oldest first (new ones and those a crash left).
        let mut pending: Vec<BackupRun> = ctx
            .store
            .backup_runs()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.spec.policy_ref.is_some())
            .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
            .collect();
        pending.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for run in pending {
            if *ctx.cancel.borrow() {
                break;
            }
            let name = run.metadata.name.clone().unwrap_or_default();
            let (done, outcome) = drive(ctx, &cfg, run).await;
            let policy = done.spec.policy_ref.clone().unwrap_or_default();
            eprintln!("{name}: {outcome}");
            if done.status.as_ref().map(|s| s.phase) == Some(BackupPhase::Succeeded) {
                let p = policy_named(&cfg, &policy).cloned();
                if let Some(p) = p {
                    let mut rec = stored_policy(&ctx.store, &p);
                    let st = rec.status.get_or_insert_with(Default::default);
                    st.last_successful_time = Some(Timestamp::now().to_string());
                    let _ = ctx.store.write("backuppolicies", &policy, &rec);
                }
            }
        }

        // 3. RestoreRequests run once each.
        for (_, rr) in &cfg.restores {
            if *ctx.cancel.borrow() {
                break;
            }
            run_restore_once(ctx, &cfg, rr).await;
        }

        if *ctx.cancel.borrow() {
            eprintln!("standalone: stopping");
            return 0;
        }
        let wait = (next_wake.as_millisecond() - Timestamp::now().as_millisecond()).max(200);
        let mut cancel = ctx.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            _ = cancel.changed() => {}
        }
        if *ctx.cancel.borrow() {
            eprintln!("standalone: stopping");
            return 0;
        }
    }
}

/// Runs a RestoreRequest from the config dir unless the state dir says it already finished.
/// An unfinished one (the daemon died mid-restore) is resumed.
async fn run_restore_once(ctx: &Ctx, cfg: &Config, rr: &RestoreRequest) {
    let name = rr.metadata.name.clone().unwrap_or_default();
    let mut req = rr.clone();
    if let Ok(prev) = ctx.store.read::<RestoreRequest>("restorerequests", &name) {
        if prev.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
            return;
        }
        req.status = prev.status;
    }
    let Some(target) = cfg.target(&rr.spec.target_ref) else {
        eprintln!(
            "{name}: waiting: target '{}' is not in the config dir",
            rr.spec.target_ref
        );
        return;
    };
    let target = match crate::driver::target::target_config(target, &ctx.state_dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {}: {}", e.reason, e.message);
            return;
        }
    };
    let done = RestoreEngine::new(
        &ctx.host,
        &ctx.store,
        RestoreContext {
            target,
            state_dir: ctx.state_dir.clone(),
        },
        req,
        stderr_reporter(name.clone()),
        ctx.cancel.clone(),
    )
    .run()
    .await;
    let s = done.status.unwrap_or_default();
    eprintln!(
        "{name}: {:?}{}",
        s.phase,
        s.failure
            .map(|f| format!(" ({}: {})", f.reason, f.message))
            .unwrap_or_default()
    );
}
