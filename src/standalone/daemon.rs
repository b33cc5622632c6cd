//! Single-host mode: each policy's schedule, RestoreRequests run once each, and a config dir
//! re-read when a file changes. The state dir is the journal: a tick's runs are written
//! (Pending) before the tick is marked scheduled, and unfinished runs are driven first on
//! every loop, so a restart neither loses nor duplicates a run. Scheduling is the same pure
//! tick planner the Kubernetes controller uses, so `concurrencyPolicy` and the history limits
//! hold here too.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use tokio::sync::watch;

use super::config::{self, Config};
use super::local;
use super::site::{LocalSite, Targets};
use crate::api::{
    BackupPhase, BackupPolicy, BackupPolicyStatus, BackupRun, BackupRunSpec, RestoreRequest,
};
use crate::driver::admission::{admit, admitted_condition, set_admitted, Decision, Limits};
use crate::driver::local::local_settings;
use crate::driver::staging_need;
use crate::driver::tick::{plan_tick, record_outcomes, Notice, TickInput};
use crate::driver::verify::due_verifies;
use crate::driver::{BackupOutcome, Driver};
use crate::libvirt::LibvirtHost;
use crate::lifecycle::Reporter;
use crate::schedule::{adhoc_run_name, run_name, Schedule};
use crate::selector;
use crate::store::FileStore;
use crate::table::table;

/// What the daemon and `--once` work with.
pub struct Ctx<'a> {
    pub host: &'a LibvirtHost,
    pub store: &'a FileStore,
    pub state_dir: &'a Path,
    pub cancel: watch::Receiver<bool>,
    /// A progress reporter for a run or restore of this name.
    pub reporter: fn(String) -> Reporter,
    /// How many runs the daemon drives at once, and the staging they may hold together.
    pub limits: Limits,
}

impl Ctx<'_> {
    pub(super) fn driver(&self) -> Driver<'_, LibvirtHost> {
        Driver {
            host: self.host,
            state_dir: self.state_dir,
            poll: Duration::from_millis(250),
            metrics: None,
        }
    }

    pub(super) fn site<'c>(&'c self, cfg: &'c Config) -> LocalSite<'c> {
        LocalSite {
            store: self.store,
            targets: Targets::Config(cfg),
        }
    }

    pub(super) fn stopping(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// Schedules and time zones are checked up front, with the file named.
pub fn check_policies(cfg: &Config) -> Result<(), String> {
    for (file, p) in &cfg.policies {
        Schedule::parse(&p.spec.schedule, p.spec.time_zone.as_deref()).map_err(|e| {
            format!(
                "{}: BackupPolicy {}: spec.{e}",
                file.display(),
                p.metadata.name.clone().unwrap_or_default()
            )
        })?;
        if p.spec.virtual_machine_selector.is_some() {
            return Err(format!(
                "{}: BackupPolicy {}: spec.virtualMachineSelector needs KubeVirt, that is the Kubernetes controller; on a single host, select libvirt domains with domainSelector",
                file.display(),
                p.metadata.name.clone().unwrap_or_default()
            ));
        }
        if let Some(v) = &p.spec.verify {
            Schedule::parse(&v.schedule, p.spec.time_zone.as_deref()).map_err(|e| {
                format!(
                    "{}: BackupPolicy {}: spec.verify.{e}",
                    file.display(),
                    p.metadata.name.clone().unwrap_or_default()
                )
            })?;
        }
        if let Some(l) = &p.spec.local_snapshots {
            local_settings(l, p.spec.time_zone.as_deref()).map_err(|e| {
                format!(
                    "{}: BackupPolicy {}: spec.{e}",
                    file.display(),
                    p.metadata.name.clone().unwrap_or_default()
                )
            })?;
        }
    }
    Ok(())
}

/// The domains a policy selects on this host (none when libvirt cannot list them).
pub(super) async fn matched_domains(host: &LibvirtHost, p: &BackupPolicy) -> Vec<String> {
    selector::on_host(host, &p.spec.domain_selector)
        .await
        .unwrap_or_default()
}

fn new_run(name: String, p: &BackupPolicy, domain: &str) -> BackupRun {
    let pname = p.metadata.name.clone().unwrap_or_default();
    BackupRun {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: BackupRunSpec::from_policy(&pname, &p.spec, domain),
        status: None,
    }
}

/// Drives one run, unless its target is not (yet) in the config dir: then it waits.
async fn drive(ctx: &Ctx<'_>, cfg: &Config, run: BackupRun) -> Result<BackupOutcome, String> {
    // A local point needs no target.
    if run.spec.is_local() {
        let run = ctx.driver().local_point(&ctx.site(cfg), run).await;
        return Ok(BackupOutcome { run, pruned: None });
    }
    if cfg.target(&run.spec.target_ref).is_none() {
        return Err(format!(
            "waiting: target '{}' is not in the config dir",
            run.spec.target_ref
        ));
    }
    let name = run.metadata.name.clone().unwrap_or_default();
    let report = (ctx.reporter)(name);
    Ok(ctx
        .driver()
        .backup(&ctx.site(cfg), run, report, ctx.cancel.clone())
        .await)
}

fn phase_of(r: &BackupRun) -> Option<BackupPhase> {
    r.status.as_ref().map(|s| s.phase)
}

/// `--once`: every policy now, one run per selected domain, and a table of the results. The
/// runs are recorded first and driven as the daemon drives its runs: as many at once as the
/// host's limits admit.
pub async fn once(ctx: &Ctx<'_>, cfg: &Config) -> i32 {
    let mut made: Vec<(String, String, String)> = Vec::new();
    for (_, policy) in &cfg.policies {
        let pname = policy.metadata.name.clone().unwrap_or_default();
        if policy.spec.suspend {
            continue;
        }
        for domain in matched_domains(ctx.host, policy).await {
            if policy.spec.local_snapshots.is_some() {
                let name = format!("{}-lp", adhoc_run_name(&domain, Timestamp::now()));
                let run = local::new_local_run(name.clone(), policy, &domain, None);
                if let Err(e) = ctx.store.write("backupruns", &name, &run) {
                    eprintln!("Internal: cannot record {name}: {e}");
                } else {
                    made.push((pname.clone(), domain.clone(), name));
                }
            }
            let name = adhoc_run_name(&domain, Timestamp::now());
            if let Err(e) =
                ctx.store
                    .write("backupruns", &name, &new_run(name.clone(), policy, &domain))
            {
                eprintln!("Internal: cannot record {name}: {e}");
                continue;
            }
            made.push((pname.clone(), domain, name));
        }
    }
    let only: HashSet<String> = made.iter().map(|(_, _, n)| n.clone()).collect();
    let mut results = drive_pending(ctx, cfg, Some(&only)).await;
    local::expire_all(ctx, cfg, Timestamp::now()).await;
    let mut failed = 0;
    let mut rows = Vec::new();
    for (pname, domain, name) in made {
        let result = match results.remove(&name) {
            Some(Ok(o)) => {
                if phase_of(&o.run) == Some(BackupPhase::Failed) {
                    failed += 1;
                }
                o.summary()
            }
            Some(Err(waiting)) => waiting,
            // Never started: the process was told to stop first.
            None => "not started (stopping)".to_string(),
        };
        rows.push([pname, domain, name, result]);
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

/// The policy as configured, with the status this daemon recorded for it.
fn stored_policy(store: &FileStore, p: &BackupPolicy) -> BackupPolicy {
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut out = p.clone();
    let stored = store.read::<BackupPolicy>("backuppolicies", &name).ok();
    out.metadata.creation_timestamp = stored
        .as_ref()
        .and_then(|s| s.metadata.creation_timestamp.clone());
    out.status = stored.and_then(|s| s.status);
    out
}

fn print_notice(policy: &str, n: &Notice) {
    let level = if n.warning { "warning" } else { "note" };
    eprintln!("{policy}: {level}: {}: {}", n.reason, n.message);
}

/// One look at a policy's schedule: writes the tick's runs, replaces or skips what the
/// concurrency policy says, removes runs beyond the history limits, then records the status.
async fn schedule_policy(
    ctx: &Ctx<'_>,
    cfg: &Config,
    p: &BackupPolicy,
    now: Timestamp,
) -> Option<Timestamp> {
    let pname = p.metadata.name.clone().unwrap_or_default();
    let Ok(sched) = Schedule::parse(&p.spec.schedule, p.spec.time_zone.as_deref()) else {
        return None;
    };
    let mut rec = stored_policy(ctx.store, p);
    let st = rec.status.get_or_insert_with(Default::default);
    // First sight of the policy: ticks before it existed are not owed. Recorded, so a tick
    // that falls between two looks is still owed at the second.
    st.last_schedule_time.get_or_insert_with(|| now.to_string());
    // When the policy was first seen: local ticks from before it are not owed either.
    let since = rec.metadata.creation_timestamp.get_or_insert(Time(now)).0;
    let st = rec.status.get_or_insert_with(Default::default);
    let all = ctx.store.backup_runs().unwrap_or_default();
    let runs: Vec<&BackupRun> = all
        .iter()
        .filter(|r| r.spec.policy_ref.as_deref() == Some(pname.as_str()))
        .collect();
    record_outcomes(st, &runs, now);
    // The planner reads the domains only when a tick is due: libvirt is asked (and, for
    // metadata selectors, every domain's XML read) then, not on every loop.
    let plan_with = |domains: &[String], st: &BackupPolicyStatus| {
        plan_tick(&TickInput {
            spec: &p.spec,
            schedule: &sched,
            status: st,
            since: now,
            domains,
            runs: &runs,
            can_run: true,
            now,
        })
    };
    let first = plan_with(&[], st);
    let plan = if first.tick.is_some() {
        let domains = matched_domains(ctx.host, p).await;
        let plan = plan_with(&domains, st);
        st.matched_domains = domains;
        plan
    } else {
        first
    };
    for n in &plan.notices {
        print_notice(&pname, n);
    }
    // Replaced runs are cancelled: driven with the signal already given, they clean up what
    // their dead process left and end Interrupted; then they go, as the controller deletes them.
    for name in &plan.replace {
        if let Some(old) = runs
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
        {
            let (_tx, cancelled) = watch::channel(true);
            if cfg.target(&old.spec.target_ref).is_some() {
                let report = (ctx.reporter)(name.clone());
                ctx.driver()
                    .backup(&ctx.site(cfg), (*old).clone(), report, cancelled)
                    .await;
            }
            eprintln!("{pname}: {name} replaced by the tick's new run (Replace)");
            remove_run(ctx.store, name);
        }
    }
    if let Some(tick) = plan.tick {
        for domain in &plan.start {
            let name = run_name(&pname, domain, tick);
            if ctx.store.path_of("backupruns", &name).exists() {
                continue;
            }
            if let Err(e) = ctx
                .store
                .write("backupruns", &name, &new_run(name.clone(), p, domain))
            {
                eprintln!("Internal: cannot record {name}: {e}");
            }
        }
    }
    for name in &plan.history {
        remove_run(ctx.store, name);
    }
    plan.apply(st);
    if let Err(e) = ctx.store.write("backuppolicies", &pname, &rec) {
        eprintln!("Internal: cannot record policy {pname}: {e}");
    }
    let local_next = local::schedule_local(ctx, p, since, now).await;
    match (plan.next_schedule_time, local_next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads back the backups of the policy's domains whose verify tick is due; answers the
/// verify schedule's next tick.
async fn verify_policy(
    ctx: &Ctx<'_>,
    cfg: &Config,
    p: &BackupPolicy,
    now: Timestamp,
) -> Option<Timestamp> {
    let v = p.spec.verify.as_ref()?;
    let sched = Schedule::parse(&v.schedule, p.spec.time_zone.as_deref()).ok()?;
    if p.spec.suspend || cfg.target(&p.spec.target_ref).is_none() {
        return sched.next_after(now);
    }
    let pname = p.metadata.name.clone().unwrap_or_default();
    let all = ctx.store.backup_runs().unwrap_or_default();
    let runs: Vec<&BackupRun> = all
        .iter()
        .filter(|r| r.spec.policy_ref.as_deref() == Some(pname.as_str()))
        .collect();
    for due in due_verifies(&sched, &runs, now) {
        if ctx.stopping() {
            break;
        }
        let broken = ctx
            .driver()
            .verify(&ctx.site(cfg), (None, &pname, &p.spec), &due, &runs)
            .await;
        eprintln!(
            "{pname}: verify of {} for {}: {}",
            due.domain,
            due.tick,
            if broken == 0 {
                "OK".to_string()
            } else {
                format!("{broken} broken (see the runs' Verified condition)")
            }
        );
    }
    sched.next_after(now)
}

fn remove_run(store: &FileStore, name: &str) {
    let path = store.path_of("backupruns", name);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("Internal: cannot remove run {name}: {e}");
        }
    }
}

/// Runs until a signal: schedules, drives runs, runs restores, sleeps until the next tick.
pub async fn daemon(ctx: &Ctx<'_>, mut cfg: Config, dir: &Path, interval: Duration) -> i32 {
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

        // 1. Schedule: write the ticks' runs, then mark the ticks scheduled.
        for (_, p) in &cfg.policies {
            if let Some(n) = schedule_policy(ctx, &cfg, p, now).await {
                next_wake = next_wake.min(n);
            }
        }

        // 2. Drive every unfinished run, oldest first (new ones and those a crash left), up
        // to the host's limits at once.
        drive_pending(ctx, &cfg, None).await;

        // 3. Expire the local points their policies' rules let go.
        if let Some(n) = local::expire_all(ctx, &cfg, Timestamp::now()).await {
            next_wake = next_wake.min(n);
        }

        // 4. Verify the domains whose verify tick is due.
        for (_, p) in &cfg.policies {
            if ctx.stopping() {
                break;
            }
            if let Some(n) = verify_policy(ctx, &cfg, p, Timestamp::now()).await {
                next_wake = next_wake.min(n);
            }
        }

        // 5. RestoreRequests run once each.
        for (_, rr) in &cfg.restores {
            if ctx.stopping() {
                break;
            }
            run_restore_once(ctx, &cfg, rr).await;
        }

        if ctx.stopping() {
            eprintln!("standalone: stopping");
            return 0;
        }
        let wait = (next_wake.as_millisecond() - Timestamp::now().as_millisecond()).max(200);
        let mut cancel = ctx.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            _ = cancel.changed() => {}
        }
        if ctx.stopping() {
            eprintln!("standalone: stopping");
            return 0;
        }
    }
}

/// Drives the unfinished runs, oldest first, as many at once as admission lets
/// (driver/admission.rs), one per domain at a time; returns when none is left to drive in
/// this pass. A run that waits gets an `Admitted=False` condition with its reason, and
/// starts when a run in flight ends. Verifies and restores come after the pass, so they
/// never run beside these runs.
/// `only`: these runs and no others (`--once`). Answers each driven run's result.
async fn drive_pending(
    ctx: &Ctx<'_>,
    cfg: &Config,
    only: Option<&HashSet<String>>,
) -> HashMap<String, Result<BackupOutcome, String>> {
    let mut results = HashMap::new();
    let mut flight = FuturesUnordered::new();
    // The runs in flight: domain and the staging each is counted for.
    let mut in_flight: HashMap<String, (String, u64)> = HashMap::new();
    // Driven in this pass (one that came back waiting for its target is not tried again
    // until the next pass).
    let mut driven: HashSet<String> = HashSet::new();
    loop {
        if !ctx.stopping() {
            let mut pending: Vec<BackupRun> = ctx
                .store
                .backup_runs()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.spec.policy_ref.is_some())
                .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
                .filter(|r| !driven.contains(r.metadata.name.as_deref().unwrap_or_default()))
                .filter(|r| {
                    only.is_none_or(|o| o.contains(r.metadata.name.as_deref().unwrap_or_default()))
                })
                .collect();
            pending.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            // One run per domain at a time: the oldest of each domain not in flight.
            let mut domains: HashSet<String> = in_flight.values().map(|(d, _)| d.clone()).collect();
            pending.retain(|r| domains.insert(r.spec.domain.clone()));
            let with_need = ctx.limits.staging_budget.is_some();
            let mut candidates = Vec::with_capacity(pending.len());
            for r in &pending {
                candidates.push(staging_need::candidate(ctx.host, r, with_need).await);
            }
            let held: Vec<u64> = in_flight.values().map(|(_, b)| *b).collect();
            let decisions = admit(ctx.limits, &held, &candidates);
            for ((mut run, c), d) in pending.into_iter().zip(candidates).zip(decisions) {
                let name = run.metadata.name.clone().unwrap_or_default();
                let condition = admitted_condition(&d, run.metadata.generation, Timestamp::now());
                let changed = set_admitted(&mut run, condition);
                if let Decision::Wait(w) = &d {
                    if changed {
                        eprintln!("{name}: {}: {}", w.reason(), w.message());
                        if let Err(e) = ctx.store.write("backupruns", &name, &run) {
                            eprintln!("Internal: cannot record {name}: {e}");
                        }
                    }
                    continue;
                }
                in_flight.insert(name.clone(), (run.spec.domain.clone(), c.counted()));
                driven.insert(name.clone());
                flight.push(async move { (name, drive(ctx, cfg, run).await) });
            }
        }
        let Some((name, result)) = flight.next().await else {
            return results;
        };
        in_flight.remove(&name);
        match &result {
            Ok(o) => eprintln!("{name}: {}", o.summary()),
            Err(waiting) => eprintln!("{name}: {waiting}"),
        }
        results.insert(name, result);
    }
}

/// Runs a RestoreRequest from the config dir unless the state dir says it already finished.
/// An unfinished one (the daemon died mid-restore) is resumed.
async fn run_restore_once(ctx: &Ctx<'_>, cfg: &Config, rr: &RestoreRequest) {
    let name = rr.metadata.name.clone().unwrap_or_default();
    let mut req = rr.clone();
    if let Ok(prev) = ctx.store.read::<RestoreRequest>("restorerequests", &name) {
        if prev.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
            return;
        }
        req.status = prev.status;
    }
    let local = rr.spec.source == crate::api::RestoreSource::Local;
    if !local && cfg.target(&rr.spec.target_ref).is_none() {
        eprintln!(
            "{name}: waiting: target '{}' is not in the config dir",
            rr.spec.target_ref
        );
        return;
    }
    let report = (ctx.reporter)(name.clone());
    let done = ctx
        .driver()
        .restore(&ctx.site(cfg), req, report, ctx.cancel.clone())
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
