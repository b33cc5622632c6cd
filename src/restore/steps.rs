//! The phases of a restore. Each can run again after a crash: work already done is found
//! and kept (fetched files with the right checksum, a rebuilt and checked image, a domain
//! already defined with the recorded UUID).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::xml::{rewrite, XmlEdit};
use super::RestoreEngine;
use crate::api::{FailureReason, PointRef, RestorePhase, RestoreRequest, RestoredDisk};
use crate::catalog::layout;
use crate::catalog::manifest::{domain_xml_name, manifest_name, Manifest};
use crate::catalog::points::list_points;
use crate::catalog::select::{chain_for, parse_at, select};
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::libvirt::{domain_xml, DomainState, VirtErrorKind};
use crate::lifecycle::{Event, Journal};
use crate::qemu_img;
use crate::state_dir;
use crate::units::human_bytes;

/// What a chain member's fetch dir holds.
#[derive(Debug, PartialEq, Eq)]
enum Fetched {
    Verified,
    Missing,
    /// This export is whole but its checksum is not the one recorded at backup time.
    Mismatch(String),
}

fn invalid(msg: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, msg)
}

fn io_err(what: &str, e: std::io::Error) -> StepError {
    let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
        FailureReason::StorageFull
    } else {
        FailureReason::Internal
    };
    StepError::new(reason, format!("{what}: {e}"))
}

/// A storage directory must exist, be writable and hold `need` bytes.
pub fn check_storage_dir(dir: &Path, need: u64) -> Result<(), StepError> {
    if !dir.is_dir() {
        return Err(invalid(format!(
            "storage dir {} does not exist or is not a directory",
            dir.display()
        )));
    }
    let probe = dir.join(format!(".snapback-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"x").map_err(|e| {
        invalid(format!(
            "storage dir {} is not writable: {e}",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    let free = state_dir::free_bytes(dir).unwrap_or(u64::MAX);
    if free < need {
        return Err(StepError::new(
            FailureReason::StorageFull,
            format!(
                "storage dir {} has {} free, the restored disks need up to {}",
                dir.display(),
                human_bytes(free),
                human_bytes(need)
            ),
        ));
    }
    Ok(())
}

impl<J: Journal<RestoreRequest>> RestoreEngine<'_, J> {
    fn work_dir(&self) -> PathBuf {
        PathBuf::from(self.lc.status().work_dir.clone().unwrap_or_default())
    }

    /// Runs hooks of a stage; the domain in their environment is the one being restored to.
    async fn hooks(
        &mut self,
        stage: HookStage,
        extra: Vec<(String, String)>,
    ) -> Result<(), StepError> {
        let hooks = stage.of(&self.lc.record.spec.hooks).to_vec();
        let domain = self
            .lc
            .status()
            .defined_domain
            .clone()
            .unwrap_or_else(|| self.lc.record.spec.domain.clone());
        self.lc
            .run_hooks(self.host, stage, &hooks, &domain, extra)
            .await
    }

    /// Resolving: choose the point and its chain; check the destination before touching anything.
    pub(crate) async fn resolve(&mut self) -> Result<(), StepError> {
        self.lc.enter(RestorePhase::Resolving).await?;
        let spec = self.lc.record.spec.clone();
        match (&spec.new_name, spec.in_place) {
            (Some(_), true) => return Err(invalid("choose one of --as NAME and --in-place")),
            (None, false) => {
                return Err(invalid("say where to restore: --as NEWNAME or --in-place"))
            }
            _ => {}
        }
        if let Some(n) = &spec.new_name {
            if n.trim().is_empty() || n.contains('/') || n.chars().any(char::is_control) {
                // Debug-quoted: a control character in the name must not split the message.
                return Err(invalid(format!(
                    "{n:?} is not a valid domain name (no '/', no control characters)"
                )));
            }
            if self.host.domain(n).await.is_ok() {
                return Err(invalid(format!(
                    "--as names an existing domain '{n}'; choose another name"
                )));
            }
        }
        let at = parse_at(spec.at.as_deref()).map_err(invalid)?;
        let original = if spec.in_place {
            match self.host.domain(&spec.domain).await {
                Ok(v) => Some(v),
                Err(e) if e.kind == VirtErrorKind::DomainNotFound => {
                    return Err(StepError::new(
                        FailureReason::DomainNotFound,
                        format!(
                            "domain '{}' is not defined here: restore it with --as NAME",
                            spec.domain
                        ),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };

        let work = self.ctx.state_dir.join("restore-work").join(self.lc.name());
        self.lc.status_mut().work_dir = Some(work.display().to_string());
        let target = self.domain_target();
        let points = list_points(&target, &work.join("manifests")).await?;
        if points.is_empty() {
            return Err(StepError::new(
                FailureReason::DomainNotFound,
                format!("the target holds no backups of domain '{}'", spec.domain),
            ));
        }
        let idx = select(&points, &at).map_err(invalid)?;
        let chain = chain_for(&points, idx)
            .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))?;
        let point = &points[idx];

        let storage = match (&spec.storage_dir, &original) {
            (Some(d), _) => PathBuf::from(d),
            (None, Some(v)) => Path::new(
                v.facts
                    .disks
                    .first()
                    .map(|d| d.source())
                    .unwrap_or("/var/lib/libvirt/images"),
            )
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/var/lib/libvirt/images")),
            (None, None) => PathBuf::from("/var/lib/libvirt/images"),
        };
        let fetched: u64 = chain.iter().map(|&i| points[i].size()).sum();
        check_storage_dir(&storage, fetched)?;
        std::fs::create_dir_all(&work).map_err(|e| io_err("cannot create the work dir", e))?;
        check_storage_dir(&work, fetched)
            .map_err(|e| StepError::new(e.reason, format!("work dir: {}", e.message)))?;

        let base = spec.new_name.clone().unwrap_or_else(|| spec.domain.clone());
        let suffix = if spec.in_place {
            format!("-restored-{}", self.lc.name())
        } else {
            String::new()
        };
        let disks: Vec<RestoredDisk> = point
            .manifest
            .disks
            .iter()
            .map(|d| RestoredDisk {
                name: d.name.clone(),
                path: storage
                    .join(format!(
                        "{}-{}{suffix}.qcow2",
                        layout::domain_dir(&base),
                        d.name
                    ))
                    .display()
                    .to_string(),
                virtual_size: d.virtual_size,
                verified: false,
            })
            .collect();
        for d in &disks {
            if Path::new(&d.path).exists() {
                return Err(invalid(format!(
                    "{} already exists; remove it or choose another --storage-dir",
                    d.path
                )));
            }
        }
        let to_ref = |i: usize| PointRef {
            run: points[i].manifest.run.clone(),
            time: points[i].set_time,
            type_: Some(points[i].manifest.type_),
            chain: points[i].manifest.chain.clone(),
            chain_index: points[i].manifest.chain_index,
        };
        let s = self.lc.status_mut();
        s.point = Some(to_ref(idx));
        s.chain_runs = chain.iter().map(|&i| to_ref(i)).collect();
        s.disks = disks;
        s.defined_domain = Some(base);
        let note = format!(
            "restoring {} ({:?}, captured {}) from a chain of {}",
            point.manifest.run,
            point.manifest.type_,
            point.time(),
            chain.len()
        );
        self.lc.report(Event::Note(note));
        self.lc.enter(RestorePhase::Fetching).await
    }

    fn member_dir(&self, run: &str) -> PathBuf {
        self.work_dir().join("fetch").join(run)
    }

    async fn read_manifest(&self, run: &str) -> Result<Manifest, StepError> {
        let p = self.member_dir(run).join(manifest_name(run));
        let text =
            std::fs::read(&p).map_err(|e| io_err(&format!("cannot read {}", p.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| {
            StepError::new(
                FailureReason::VerificationFailed,
                format!("{}: {e}", p.display()),
            )
        })
    }

    /// Whether a member's fetched exports are all there and match the checksums recorded at
    /// backup time. Files are fetched under a `.part` name and renamed when duplicity is done,
    /// so a file under its own name is whole: a mismatch is the target's copy, not a fetch
    /// that a crash cut short.
    async fn member_fetched(&self, run: &str) -> Result<Fetched, StepError> {
        let Ok(m) = self.read_manifest(run).await else {
            return Ok(Fetched::Missing);
        };
        for d in &m.disks {
            let p = self.member_dir(run).join(&d.export_file);
            if !p.exists() {
                return Ok(Fetched::Missing);
            }
            let sum = tokio::task::spawn_blocking(move || state_dir::sha256_file(&p))
                .await
                .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
                .map_err(|e| io_err("cannot read a fetched export", e))?;
            if Some(&sum) != d.sha256.as_ref() {
                return Ok(Fetched::Mismatch(d.export_file.clone()));
            }
        }
        Ok(Fetched::Verified)
    }

    /// Restores one file of a member from the target (see `fetch::fetch_file`).
    async fn fetch_file(
        &self,
        run: &str,
        time: jiff::Timestamp,
        file: &str,
    ) -> Result<(), StepError> {
        let target = self.domain_target();
        let dir = self.member_dir(run);
        let mut cancel = self.lc.cancel.clone();
        tokio::select! {
            r = super::fetch::fetch_file(&target, &dir, time, file) => r,
            _ = cancel.changed() => Err(StepError::new(FailureReason::Interrupted, "interrupted while fetching")),
        }
    }

    /// Fetching: restore each chain member's files from the target with duplicity.
    pub(crate) async fn fetch(&mut self) -> Result<(), StepError> {
        let members = self.lc.status().chain_runs.clone();
        for (i, m) in members.iter().enumerate() {
            if self.member_fetched(&m.run).await? == Fetched::Verified {
                continue; // fetched before a crash
            }
            let dir = self.member_dir(&m.run);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create the fetch dir", e))?;
            self.lc.report(Event::Note(format!(
                "fetching {} ({}/{})",
                m.run,
                i + 1,
                members.len()
            )));
            let time = m.time;
            // The manifest came with the listing; fetch it only if that copy is gone.
            let listed = self
                .work_dir()
                .join("manifests")
                .join(manifest_name(&m.run));
            if std::fs::copy(&listed, dir.join(manifest_name(&m.run))).is_err() {
                self.fetch_file(&m.run, time, &manifest_name(&m.run))
                    .await?;
            }
            let mut files = Vec::new();
            if Some(&m.run) == self.lc.status().point.as_ref().map(|p| &p.run) {
                files.push(domain_xml_name(&m.run));
            }
            let man = self.read_manifest(&m.run).await?;
            files.extend(man.disks.iter().map(|d| d.export_file.clone()));
            // One file at a time: duplicity then reads only the volumes that hold it, not every
            // earlier set of the chain (restoring a whole later set re-reads the full).
            for f in files {
                self.fetch_file(&m.run, time, &f).await?;
                crate::process::crash_point("restore:fetching:file");
            }
            match self.member_fetched(&m.run).await? {
                Fetched::Verified => {}
                Fetched::Missing => {
                    return Err(StepError::new(
                        FailureReason::VerificationFailed,
                        format!("the target's copy of {} is incomplete", m.run),
                    ))
                }
                Fetched::Mismatch(file) => {
                    return Err(StepError::new(
                        FailureReason::VerificationFailed,
                        format!(
                            "{file} from the target does not match the checksum recorded at backup time"
                        ),
                    ))
                }
            }
            self.lc.status_mut().progress = Some(crate::api::Progress {
                bytes_done: i as u64 + 1,
                bytes_total: members.len() as u64,
            });
            self.lc.save().await?;
        }
        self.lc.enter(RestorePhase::Rebuilding).await
    }

    /// Rebuilding: rebase each incremental onto its parent, flatten the chain into one qcow2
    /// per disk, and check it.
    pub(crate) async fn rebuild(&mut self) -> Result<(), StepError> {
        let members = self.lc.status().chain_runs.clone();
        let mut disks = self.lc.status().disks.clone();
        let total: u64 = disks.iter().map(|d| d.virtual_size).sum();
        let mut base_done = 0u64;
        for d in disks.iter_mut() {
            if d.verified && Path::new(&d.path).exists() {
                base_done += d.virtual_size;
                continue;
            }
            let mut images = Vec::new();
            for m in &members {
                let man = self.read_manifest(&m.run).await?;
                let Some(md) = man.disks.iter().find(|x| x.name == d.name) else {
                    return Err(StepError::new(
                        FailureReason::VerificationFailed,
                        format!("{} has no disk {}", m.run, d.name),
                    ));
                };
                images.push(self.member_dir(&m.run).join(&md.export_file));
            }
            for pair in images.windows(2) {
                let argv = ["rebase", "-u", "-F", "qcow2", "-b"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([pair[0].display().to_string(), pair[1].display().to_string()]);
                qemu_img::run_qemu_img(
                    &argv.collect::<Vec<_>>(),
                    FailureReason::VerificationFailed,
                    FailureReason::StorageFull,
                    |_| {},
                )
                .await?;
            }
            let top = images
                .last()
                .expect("a chain has a full")
                .display()
                .to_string();
            let part = format!("{}.part", d.path);
            let argv: Vec<String> = ["convert", "-p", "-O", "qcow2", "-f", "qcow2"]
                .iter()
                .map(|s| s.to_string())
                .chain([top, part.clone()])
                .collect();
            let report = &self.lc.report;
            let vsize = d.virtual_size;
            qemu_img::run_qemu_img(
                &argv,
                FailureReason::VerificationFailed,
                FailureReason::StorageFull,
                |pct| {
                    if pct > 0.0 {
                        crate::process::crash_point("restore:rebuilding:converting");
                    }
                    report(Event::Progress {
                        stage: "Rebuilding",
                        done: base_done + (vsize as f64 * pct / 100.0) as u64,
                        total,
                    })
                },
            )
            .await?;
            qemu_img::check(&part).await?;
            std::fs::rename(&part, &d.path)
                .map_err(|e| io_err("cannot move the rebuilt disk in place", e))?;
            d.verified = true;
            base_done += vsize;
        }
        self.lc.status_mut().disks = disks.clone();
        self.lc.save().await?;
        let list = disks
            .iter()
            .map(|d| format!("{}={}", d.name, d.path))
            .collect::<Vec<_>>()
            .join(",");
        self.hooks(
            HookStage::EndRecovery,
            vec![("SNAPBACK_RESTORED_DISKS".into(), list)],
        )
        .await?;
        self.lc.enter(RestorePhase::Defining).await
    }

    fn saved_xml(&self) -> Result<String, StepError> {
        let run = self
            .lc
            .status()
            .point
            .as_ref()
            .map(|p| p.run.clone())
            .unwrap_or_default();
        let p = self.member_dir(&run).join(domain_xml_name(&run));
        std::fs::read_to_string(&p)
            .map_err(|e| io_err(&format!("the backup's domain XML {}", p.display()), e))
    }

    /// Defining: a new domain from the saved XML, or the existing one swapped onto the
    /// restored disks (its old disks untouched until the end).
    pub(crate) async fn define(&mut self) -> Result<(), StepError> {
        let spec = self.lc.record.spec.clone();
        let disk_paths: BTreeMap<String, String> = self
            .lc
            .status()
            .disks
            .iter()
            .map(|d| (d.name.clone(), d.path.clone()))
            .collect();
        if let Some(new) = &spec.new_name {
            // The UUID is chosen and recorded first: a restore resumed after the define can
            // then find its own domain, where libvirt would refuse a second define of the name.
            let uuid = match self.lc.status().defined_uuid.clone() {
                Some(u) => u,
                None => {
                    let u = uuid::Uuid::new_v4().to_string();
                    self.lc.status_mut().defined_uuid = Some(u.clone());
                    self.lc.save().await?;
                    u
                }
            };
            if self.host.domain(&uuid).await.is_err() {
                let storage = Path::new(&self.lc.status().disks[0].path)
                    .parent()
                    .map(|p| p.display().to_string());
                let edit = XmlEdit {
                    new_name: Some(new.clone()),
                    new_uuid: Some(uuid.clone()),
                    disk_paths,
                    log_dir: storage,
                };
                let xml = rewrite(&self.saved_xml()?, &edit)
                    .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))?;
                let defined = self.host.define(xml).await?;
                crate::process::crash_point("restore:defining:defined");
                if defined != uuid {
                    return Err(StepError::new(
                        FailureReason::Internal,
                        format!("libvirt defined {new} as {defined}, not {uuid}"),
                    ));
                }
            }
        } else if !self.lc.status().swapped {
            self.hooks(HookStage::PreRecovery, vec![]).await?;
            let view = self.host.domain(&spec.domain).await?;
            let original = self.work_dir().join("original.xml");
            if !original.exists() {
                std::fs::write(&original, &view.inactive_xml)
                    .map_err(|e| io_err("cannot save the original XML", e))?;
                self.lc.status_mut().was_running =
                    matches!(view.state, DomainState::Running | DomainState::Paused);
                self.lc.save().await?;
            }
            self.power_off(&spec.domain, spec.shutdown_timeout_seconds)
                .await?;
            // The old checkpoints' bitmaps live in the old disks: forget them, the next backup is a full.
            for cp in self.host.checkpoints(&spec.domain).await? {
                self.host.forget_checkpoint(&spec.domain, &cp).await?;
            }
            let edit = XmlEdit {
                new_name: None,
                new_uuid: None,
                disk_paths,
                log_dir: None,
            };
            let xml = rewrite(&view.inactive_xml, &edit)
                .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))?;
            let uuid = self.host.define(xml).await?;
            crate::process::crash_point("restore:defining:swapped");
            let s = self.lc.status_mut();
            s.defined_uuid = Some(uuid);
            s.swapped = true;
            self.lc.save().await?;
        }
        let next = if spec.start {
            RestorePhase::Starting
        } else {
            RestorePhase::Recovering
        };
        self.lc.enter(next).await
    }

    /// Graceful shutdown, then forced off after the timeout.
    async fn power_off(&mut self, dom: &str, timeout_s: u32) -> Result<(), StepError> {
        let deadline = Instant::now() + Duration::from_secs(timeout_s as u64);
        let mut asked = false;
        loop {
            let v = self.host.domain(dom).await?;
            if v.state == DomainState::ShutOff {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.lc.report(Event::Note(
                    "the guest did not shut down in time; forcing it off".into(),
                ));
                return Ok(self.host.destroy(dom).await?);
            }
            if !asked {
                let _ = self.host.shutdown(dom).await;
                asked = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starting: start the restored domain and check it keeps running.
    pub(crate) async fn start(&mut self) -> Result<(), StepError> {
        let id = self.lc.status().defined_uuid.clone().unwrap_or_default();
        if self.host.domain(&id).await?.state != DomainState::Running {
            self.host.start(&id).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if self.host.domain(&id).await?.state != DomainState::Running {
            return Err(StepError::new(
                FailureReason::VerificationFailed,
                "the restored domain stopped right after starting",
            ));
        }
        self.lc.condition(
            "Started",
            true,
            "DomainRunning",
            "the restored domain is running".into(),
        );
        self.lc.enter(RestorePhase::Recovering).await
    }

    /// Recovering: postRecovery hooks; in place, only now are the old disks renamed aside.
    pub(crate) async fn recover(&mut self) -> Result<(), StepError> {
        self.hooks(HookStage::PostRecovery, vec![]).await?;
        if self.lc.record.spec.in_place && self.lc.status().replaced_disks.is_empty() {
            let original = std::fs::read_to_string(self.work_dir().join("original.xml"))
                .map_err(|e| io_err("original XML", e))?;
            let facts = domain_xml::parse_domain(&original)
                .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
            let mut kept = Vec::new();
            for d in facts
                .disks
                .iter()
                .filter(|d| d.kind == crate::libvirt::DiskKind::File)
            {
                let from = d.source().to_string();
                let to = format!("{from}.snapback-replaced-{}", self.lc.name());
                if Path::new(&from).exists() {
                    std::fs::rename(&from, &to)
                        .map_err(|e| io_err("cannot rename the replaced disk", e))?;
                    kept.push(to);
                }
            }
            self.lc.status_mut().replaced_disks = kept.clone();
            self.lc.condition(
                "OldDisksKept",
                true,
                "Renamed",
                format!(
                    "the replaced disks were renamed, not deleted: {}",
                    kept.join(", ")
                ),
            );
        }
        let _ = std::fs::remove_dir_all(self.work_dir());
        self.lc.finish(RestorePhase::Succeeded, None).await
    }

    /// Undo a failed restore: no half-written disk stays attached to a domain, and an in-place
    /// restore puts the domain back on its old disks.
    pub(crate) async fn rollback(&mut self) -> Result<(), StepError> {
        let s = self.lc.status().clone();
        let mut problems = Vec::new();
        if self.lc.record.spec.in_place {
            if s.swapped {
                let id = self.lc.record.spec.domain.clone();
                let _ = self.host.destroy(&id).await;
                match std::fs::read_to_string(self.work_dir().join("original.xml")) {
                    Ok(xml) => {
                        if let Err(e) = self.host.define(xml).await {
                            problems.push(format!("redefine the original domain: {e}"));
                        } else {
                            self.lc.status_mut().swapped = false;
                        }
                    }
                    Err(e) => problems.push(format!("original XML: {e}")),
                }
            }
            if s.was_running && self.lc.status().defined_uuid.is_some() {
                if let Ok(v) = self.host.domain(&self.lc.record.spec.domain).await {
                    if v.state == DomainState::ShutOff {
                        if let Err(e) = self.host.start(&self.lc.record.spec.domain).await {
                            problems.push(format!("restart the original domain: {e}"));
                        }
                    }
                }
            }
        } else if let Some(uuid) = &s.defined_uuid {
            let _ = self.host.destroy(uuid).await;
            if let Err(e) = self.host.undefine(uuid).await {
                if e.kind != VirtErrorKind::DomainNotFound {
                    problems.push(format!("undefine the new domain: {e}"));
                }
            }
        }
        if self.lc.status().replaced_disks.is_empty() {
            for d in &s.disks {
                let _ = std::fs::remove_file(&d.path);
                let _ = std::fs::remove_file(format!("{}.part", d.path));
            }
        }
        if s.work_dir.is_some() {
            let _ = std::fs::remove_dir_all(self.work_dir());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StepError::new(FailureReason::Internal, problems.join("; ")))
        }
    }
}
