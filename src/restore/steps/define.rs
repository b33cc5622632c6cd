//! Defining: a new domain from the backup's XML, or the existing one swapped onto the restored
//! disks (its old disks untouched until the end).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::io_err;
use crate::api::{DiskFormat, FailureReason, RestorePhase, RestoreRequest};
use crate::catalog::manifest::domain_xml_name;
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::libvirt::xml_edit::{Placement, XmlEdit};
use crate::libvirt::DomainState;
use crate::lifecycle::{Event, Journal};
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    fn saved_xml(&self) -> Result<String, StepError> {
        let run = self.point_run();
        let p = self.member_dir(&run).join(domain_xml_name(&run));
        std::fs::read_to_string(&p)
            .map_err(|e| io_err(&format!("the backup's domain XML {}", p.display()), e))
    }

    fn disk_paths(&self) -> BTreeMap<String, String> {
        self.lc
            .status()
            .disks
            .iter()
            .map(|d| {
                let at = d.placed_as.clone().unwrap_or_else(|| d.path.clone());
                (d.name.clone(), at)
            })
            .collect()
    }

    fn placements(&self) -> BTreeMap<String, Placement> {
        let disks = &self.lc.status().disks;
        disks
            .iter()
            .map(|d| {
                let placement = match (d.device, d.format()) {
                    (true, _) => Placement::RawBlock,
                    (false, DiskFormat::Raw) => Placement::RawFile,
                    (false, DiskFormat::Qcow2) => Placement::Qcow2File,
                };
                (d.name.clone(), placement)
            })
            .collect()
    }

    /// A new domain from the backup's XML, under a new name and a UUID chosen and recorded
    /// first: a restore resumed after the define then finds its own domain, where libvirt
    /// would refuse a second define of the name.
    pub(crate) async fn define_new(&mut self) -> Result<(), StepError> {
        let new = self.lc.record.spec.new_name.clone().unwrap_or_default();
        let uuid = match self.lc.status().defined_uuid.clone() {
            Some(u) => u,
            None => {
                let u = uuid::Uuid::new_v4().to_string();
                self.lc.status_mut().defined_uuid = Some(u.clone());
                self.lc.save().await?;
                u
            }
        };
        // Logs go beside the restored disk files; with every disk on a device, where the
        // spec's storage would have put them.
        let storage = self
            .lc
            .status()
            .disks
            .iter()
            .find(|d| !d.device)
            .and_then(|d| Path::new(&d.path).parent().map(|p| p.display().to_string()))
            .or_else(|| {
                let spec = &self.lc.record.spec;
                Some(
                    crate::restore::plan::storage_dir(spec, None)
                        .display()
                        .to_string(),
                )
            });
        let saved = self.saved_xml()?;
        let fw = self
            .source
            .saved_firmware(&saved)
            .map_err(|e| StepError::new(FailureReason::VerificationFailed, e))?;
        self.check_boot_files(&fw, &saved);
        let nvram_path = self.firmware_for_new(&fw, &new, &uuid).await?;
        let edit = XmlEdit {
            new_name: Some(new.clone()),
            new_uuid: Some(uuid.clone()),
            disk_paths: self.disk_paths(),
            placements: self.placements(),
            log_prefix: storage
                .map(|dir| format!("{dir}/{}", crate::catalog::layout::domain_dir(&new))),
            nvram_path,
        };
        let xml = self
            .source
            .rewrite_definition(&saved, &edit)
            .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))?;
        let xml = self.separate_host_files(xml, &new)?;
        let defined = self.source.define(xml).await?;
        crate::process::crash_point("restore:defining:defined");
        if defined != uuid {
            return Err(StepError::new(
                FailureReason::Internal,
                format!("libvirt defined {new} as {defined}, not {uuid}"),
            ));
        }
        self.defined().await
    }

    /// In place: preRecovery hooks, the original XML saved (once), the domain shut down and
    /// redefined on the restored disks. Its old disks stay untouched until the end.
    pub(crate) async fn swap(&mut self) -> Result<(), StepError> {
        let spec = self.lc.record.spec.clone();
        self.hooks(HookStage::PreRecovery, vec![]).await?;
        let view = self.source.domain(&spec.domain).await?;
        let original = self.work_dir().join("original.xml");
        if !original.exists() {
            std::fs::write(&original, &view.inactive_xml)
                .map_err(|e| io_err("cannot save the original XML", e))?;
            self.lc.status_mut().was_running =
                matches!(view.state, DomainState::Running | DomainState::Paused);
            self.lc.save().await?;
        }
        // The definition as it was before this restore touched it: a resumed swap must not
        // take a shut-down VM's (KubeVirt's run strategy is part of it) for the original.
        let before = std::fs::read_to_string(&original)
            .map_err(|e| io_err("cannot read the original XML", e))?;
        self.power_off(&spec.domain, spec.shutdown_timeout_seconds)
            .await?;
        // The old checkpoints' bitmaps live in the old disks: forget them, the next backup is a full.
        for cp in self.source.checkpoints(&spec.domain).await? {
            self.source.forget_checkpoint(&spec.domain, &cp).await?;
        }
        // Shut down, the domain's firmware state can be replaced (its old files kept).
        self.check_boot_files(&view.facts.firmware, &view.inactive_xml);
        let files = self.source.firmware_state(&view);
        self.firmware_in_place(files).await?;
        let edit = XmlEdit {
            new_name: None,
            new_uuid: None,
            disk_paths: self.disk_paths(),
            placements: self.placements(),
            log_prefix: None,
            nvram_path: None,
        };
        let xml = self
            .source
            .rewrite_definition(&before, &edit)
            .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))?;
        let uuid = self.source.define(xml).await?;
        crate::process::crash_point("restore:defining:swapped");
        let s = self.lc.status_mut();
        s.defined_uuid = Some(uuid);
        s.swapped = true;
        self.lc.save().await?;
        self.defined().await
    }

    /// The domain is defined (or swapped): start it, or go straight to recovery.
    pub(crate) async fn defined(&mut self) -> Result<(), StepError> {
        let spec = &self.lc.record.spec;
        let next = if spec.start || spec.resume {
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
            let v = self.source.domain(dom).await?;
            if v.state == DomainState::ShutOff {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.lc.report(Event::Note(
                    "the guest did not shut down in time; forcing it off".into(),
                ));
                return Ok(self.source.destroy(dom).await?);
            }
            if !asked {
                let _ = self.source.shutdown(dom).await;
                asked = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
