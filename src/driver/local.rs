//! Local restore points for the front-ends: a Local run takes its VM's point (and mounts it
//! for browsing where the policy says), and expiry deletes the points a policy's rules let
//! go, unmounting them first, and marks their runs `Expired`.
//!
//! A point is recorded twice: in the snapshot itself (snapback's mark, with the policy and
//! the tick it answers, see `localpoints::point`) and on its run. Expiry goes by the
//! snapshots, so a point whose run was never written (the process was killed between the
//! two) is still expired by its policy's rules.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::{Driver, Site};
use crate::api::{
    reason, set_condition, BackupPhase, BackupPolicySpec, BackupRun, BackupRunStatus, BackupType,
    BrowseSpec, Condition, ConditionType, Failure, FailureReason, LocalSnapshotsSpec, MemoryState,
    Quiesce,
};
use crate::browse::name::gmt_name;
use crate::browse::point::{self as browse, Disk, PointRef, Settings};
use crate::browse::{nfs, samba, servers};
use crate::error::StepError;
use crate::lifecycle::Journal;
use crate::localpoints::expire::expire_policy;
use crate::localpoints::rules::{self, Aged, Rule};
use crate::localpoints::take::{take, TakeOptions};
use crate::localpoints::{self, Point};
use crate::schedule::Schedule;
use crate::source::Source;

use super::local_due::scheduled_at;

/// A policy's `localSnapshots`, checked: its rules parsed, in the policy's time zone.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    pub schedule: Schedule,
    pub rules: Vec<Rule>,
    pub max_count: Option<usize>,
    pub quiesce: bool,
    pub browse: Option<BrowseSpec>,
}

/// Checks a policy's `localSnapshots`; the error names the field.
pub fn local_settings(
    spec: &LocalSnapshotsSpec,
    tz: Option<&str>,
) -> Result<LocalSettings, String> {
    let schedule =
        Schedule::parse(&spec.schedule, tz).map_err(|e| format!("localSnapshots.{e}"))?;
    if spec.expire.is_empty() {
        return Err("localSnapshots.expire: give at least one rule (match and after)".into());
    }
    let rules = spec
        .expire
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Rule::parse_in(&r.match_, &r.after, tz)
                .map_err(|e| format!("localSnapshots.expire[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if spec.memory == MemoryState::Exclude {
        return Err("localSnapshots.memory: Exclude is not built yet: libvirt takes an internal snapshot of a running VM only with its RAM, and cannot revert an external one (libvirt 9.0); use Include".into());
    }
    if spec.max_count == Some(0) {
        return Err("localSnapshots.maxCount: at least 1".into());
    }
    if let Some(b) = &spec.browse {
        if !Path::new(&b.dir).is_absolute() {
            return Err(format!(
                "localSnapshots.browse.dir: {} is not absolute",
                b.dir
            ));
        }
        if let Some(l) = b
            .link_dir
            .as_deref()
            .filter(|l| !Path::new(l).is_absolute())
        {
            return Err(format!(
                "localSnapshots.browse.linkDir: {l} is not absolute"
            ));
        }
    }
    Ok(LocalSettings {
        schedule,
        rules,
        max_count: spec.max_count.map(|n| n as usize),
        quiesce: spec.quiesce != Quiesce::None,
        browse: spec.browse.clone(),
    })
}

/// Where one VM's points are mounted: a directory per VM under the policy's browse dir.
pub fn browse_settings(b: &BrowseSpec, domain: &str) -> Result<Settings, StepError> {
    // A domain name is one path component here: libvirt forbids '/', and '.' or '..' would
    // climb out of the browse dir.
    if domain.is_empty() || domain == "." || domain == ".." || domain.contains('/') {
        return Err(StepError::new(
            FailureReason::InvalidSpec,
            format!("domain name {domain:?} cannot name a browse directory"),
        ));
    }
    Ok(Settings {
        dir: PathBuf::from(&b.dir).join(domain),
        link_dir: b.link_dir.as_ref().map(|l| PathBuf::from(l).join(domain)),
    })
}

fn failed(mut run: BackupRun, e: StepError) -> BackupRun {
    let s = run.status.get_or_insert_with(Default::default);
    s.phase = BackupPhase::Failed;
    s.completion_time = Some(Timestamp::now());
    s.failure = Some(Failure {
        reason: e.reason,
        message: e.message,
    });
    run
}

/// The Samba share and the NFS export of one VM's points, as files beside its browse dir
/// (`<dir>/<vm>.samba.conf`, `<dir>/<vm>.ganesha.conf`) for smb.conf and ganesha.conf to
/// include. The share serves the newest point (`newest`, rewritten with each point: smbd
/// reloads an included file when it changes) and offers the older ones as Windows "Previous
/// Versions"; the export serves every point's directory.
fn write_snippets(
    b: &BrowseSpec,
    domain: &str,
    vm_dir: &Path,
    newest: Timestamp,
) -> Result<(), (String, String)> {
    let root = Path::new(&b.dir);
    let bad = |e: String| (FailureReason::InvalidSpec.as_str().to_string(), e);
    if b.samba {
        let tree = vm_dir.join(gmt_name(newest));
        let text = samba::share_snippet(&samba::SambaShare {
            name: domain,
            path: &tree,
            snapdir: vm_dir,
        })
        .map_err(bad)?;
        write_file(&root.join(format!("{domain}.samba.conf")), &text)?;
    }
    if b.nfs {
        let text = nfs::export_block(&nfs::NfsExport {
            export_id: export_id(vm_dir),
            path: vm_dir,
            pseudo: &format!("/snapback/{domain}"),
            clients: &[],
        })
        .map_err(bad)?;
        write_file(&root.join(format!("{domain}.ganesha.conf")), &text)?;
    }
    Ok(())
}

/// A ganesha export id for a VM's browse dir that stays the same from point to point: from a
/// hash of the dir, above the ids people usually give by hand (1..1000).
fn export_id(vm_dir: &Path) -> u32 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(vm_dir.as_os_str().as_encoded_bytes());
    1001 + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 64_000
}

fn write_file(path: &Path, text: &str) -> Result<(), (String, String)> {
    let tmp = path.with_extension("conf.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            (
                FailureReason::Internal.as_str().to_string(),
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

/// The `Shared` condition of a mounted point whose policy asks for Samba or NFS: the
/// snippets are written either way, and a host without the server says so.
fn shared_condition(b: &BrowseSpec, domain: &str, vm_dir: &Path, newest: Timestamp) -> Condition {
    let (ok, why, msg) = match write_snippets(b, domain, vm_dir, newest) {
        Err((why, msg)) => (false, why, msg),
        Ok(()) => {
            let missing = [
                b.samba.then(servers::samba_missing).flatten(),
                b.nfs.then(servers::nfs_server_missing).flatten(),
            ];
            match missing.into_iter().flatten().next() {
                Some((why, msg)) => (false, why.to_string(), msg),
                None => (
                    true,
                    reason::SNIPPETS_WRITTEN.to_string(),
                    format!("include {}/{domain}.*.conf in the servers' config", b.dir),
                ),
            }
        }
    };
    Condition::now(ConditionType::Shared, ok, &why, msg, None)
}

impl<S: Source> Driver<'_, S> {
    /// Takes the point a Local run asks for, mounts it where the policy browses, and records
    /// it on the run. A run left unfinished by a kill is taken again: `take` first deletes a
    /// point whose take did not finish.
    pub async fn local_point<T: Site>(&self, site: &T, mut run: BackupRun) -> BackupRun {
        let ns = run.metadata.namespace.clone();
        let pname = run.spec.policy_ref.clone().unwrap_or_default();
        let settings = match site.policy(ns.as_deref(), &pname).await {
            Some(p) => match p.local_snapshots.as_ref() {
                Some(l) => local_settings(l, p.time_zone.as_deref()),
                None => Err(format!("policy {pname} has no localSnapshots any more")),
            },
            None => Err(format!("policy {pname} is gone")),
        };
        let settings = match settings {
            Ok(s) => s,
            Err(m) => {
                return self
                    .save_local(
                        site,
                        failed(run, StepError::new(FailureReason::InvalidSpec, m)),
                    )
                    .await
            }
        };
        let s = run.status.get_or_insert_with(BackupRunStatus::default);
        s.phase = BackupPhase::Snapshotting;
        s.type_ = Some(BackupType::Local);
        s.start_time.get_or_insert_with(Timestamp::now);
        run = self.save_local(site, run).await;
        let opts = TakeOptions {
            quiesce: settings.quiesce,
            policy: Some(pname.clone()),
            scheduled: scheduled_at(&run),
        };
        let point = match take(self.host, self.state_dir, &run.spec.domain, &opts).await {
            Ok(p) => p,
            Err(e) => return self.save_local(site, failed(run, e)).await,
        };
        let s = run.status.get_or_insert_with(BackupRunStatus::default);
        s.local_point = Some(point.name.clone());
        s.snapshot_time = Some(point.created);
        s.quiesced = point.quiesced;
        s.paused_seconds = point.paused_ms.map(|ms| ms as f64 / 1000.0);
        s.expires_at = rules::expires_at(&settings.rules, point.rule_time());
        if let Some(b) = &settings.browse {
            let c = match self.mount_point(b, &point).await {
                Ok(dir) => Condition::now(
                    ConditionType::Browsable,
                    true,
                    reason::MOUNTED,
                    format!("mounted read-only at {}", dir.display()),
                    None,
                ),
                // The point itself is whole: only browsing it failed.
                Err(e) => Condition::now(
                    ConditionType::Browsable,
                    false,
                    e.reason.as_str(),
                    e.message,
                    None,
                ),
            };
            let mounted = c.status == "True";
            set_condition(&mut s.conditions, c);
            if mounted && (b.samba || b.nfs) {
                let shared = match browse_settings(b, &point.domain) {
                    Ok(at) => shared_condition(b, &point.domain, &at.dir, point.created),
                    Err(e) => Condition::now(
                        ConditionType::Shared,
                        false,
                        e.reason.as_str(),
                        e.message,
                        None,
                    ),
                };
                set_condition(&mut s.conditions, shared);
            }
        }
        s.phase = BackupPhase::Succeeded;
        s.completion_time = Some(Timestamp::now());
        self.save_local(site, run).await
    }

    async fn save_local<T: Site>(&self, site: &T, run: BackupRun) -> BackupRun {
        if let Err(e) = Journal::<BackupRun>::save(site, &run).await {
            tracing::warn!(run = ?run.metadata.name, "cannot record the local point: {e}");
        }
        run
    }

    /// The point as browsing knows it: the domain's qcow2 disks hold its snapshot.
    async fn point_ref(&self, point: &Point) -> Result<PointRef, StepError> {
        let view = self.host.domain(&point.domain).await?;
        let disks = view
            .facts
            .disks
            .iter()
            .filter(|d| d.format() == "qcow2")
            .map(|d| Disk {
                target: d.name.clone(),
                path: PathBuf::from(d.source()),
            })
            .collect();
        Ok(PointRef {
            domain: point.domain.clone(),
            snapshot: point.name.clone(),
            time: point.created,
            disks,
        })
    }

    async fn mount_point(&self, b: &BrowseSpec, point: &Point) -> Result<PathBuf, StepError> {
        let settings = browse_settings(b, &point.domain)?;
        let p = self.point_ref(point).await?;
        Ok(browse::mount_point(&settings, &p).await?.dir)
    }

    /// Deletes the points of `domain` that the policy's rules let go at `now`, oldest first:
    /// a mounted one is unmounted first, and one being read (a process has a file open in
    /// it) is kept until it is free. Their runs get the `Expired` condition. Answers the
    /// points deleted.
    pub async fn expire_local<T: Site>(
        &self,
        site: &T,
        ns: Option<&str>,
        pname: &str,
        policy: &BackupPolicySpec,
        domain: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, StepError> {
        let Some(spec) = policy.local_snapshots.as_ref() else {
            return Ok(Vec::new());
        };
        let settings = local_settings(spec, policy.time_zone.as_deref())
            .map_err(|m| StepError::new(FailureReason::InvalidSpec, m))?;
        let points: Vec<Point> = localpoints::list(self.host, domain)
            .await?
            .into_iter()
            .filter(|p| p.policy.as_deref() == Some(pname))
            .collect();
        let browse_at = match &settings.browse {
            Some(b) => Some(browse_settings(b, domain)?),
            None => None,
        };
        let mut in_use: Vec<String> = Vec::new();
        if let Some(bs) = &browse_at {
            for p in &points {
                if !browse::in_use(&bs.dir, p.created).is_empty() {
                    in_use.push(p.name.clone());
                }
            }
        }
        let aged: Vec<Aged> = points
            .iter()
            .map(|p| Aged {
                name: p.name.clone(),
                created: p.rule_time(),
            })
            .collect();
        let due = rules::due(&aged, &settings.rules, now, settings.max_count, &in_use);
        if let Some(bs) = &browse_at {
            for (name, _) in &due {
                let Some(p) = points.iter().find(|p| p.name == *name) else {
                    continue;
                };
                if let Err(e) = browse::unmount_point(&bs.dir, p.created).await {
                    tracing::warn!(point = %name, "kept: cannot unmount it: {}", e.message);
                    in_use.push(name.clone());
                }
            }
        }
        let done = expire_policy(
            self.host,
            self.state_dir,
            domain,
            (&settings.rules, now, settings.max_count),
            &in_use,
            pname,
        )
        .await?;
        let deleted: Vec<String> = done.deleted.iter().map(|(p, _)| p.name.clone()).collect();
        for r in site.runs(ns).await {
            let hit = r.spec.is_local()
                && r.spec.domain == domain
                && r.status
                    .as_ref()
                    .and_then(|s| s.local_point.as_ref())
                    .is_some_and(|n| deleted.contains(n));
            if hit {
                let mut r = r.clone();
                if let Some(s) = r.status.as_mut() {
                    set_condition(
                        &mut s.conditions,
                        Condition::now(
                            ConditionType::Expired,
                            true,
                            reason::LOCAL_POINT_EXPIRED,
                            "the point's expiry rules let it go; its snapshot is deleted".into(),
                            None,
                        ),
                    );
                }
                if let Err(e) = site.save_finished(&r).await {
                    tracing::warn!(run = ?r.metadata.name, "cannot mark expired: {e}");
                }
            }
        }
        Ok(deleted)
    }
}
