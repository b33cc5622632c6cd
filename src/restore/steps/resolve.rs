//! Resolving: choose the point and its chain; check the destination before touching anything.

use std::path::Path;

use super::{check_storage_dir, invalid, io_err};
use crate::api::{FailureReason, PointRef, RestorePhase, RestoreRequest};
use crate::catalog::points::list_sets;
use crate::catalog::select::{chain_for, damaged_instead, parse_at, select};
use crate::error::StepError;
use crate::libvirt::VirtErrorKind;
use crate::lifecycle::{Event, Journal};
use crate::restore::{plan, RestoreEngine};
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Resolving: choose the point and its chain; check the destination before touching anything.
    pub(crate) async fn resolve(&mut self) -> Result<(), StepError> {
        if let Some(f) = self.lc.record.spec.files.clone() {
            return self.resolve_files(f).await;
        }
        self.lc.enter(RestorePhase::Resolving).await?;
        let spec = self.lc.record.spec.clone();
        plan::check_destination(&spec)?;
        if let Some(n) = &spec.new_name {
            if self.source.domain(n).await.is_ok() {
                return Err(invalid(format!(
                    "--as names an existing domain '{n}'; choose another name"
                )));
            }
        }
        let at = parse_at(spec.at.as_deref()).map_err(invalid)?;
        let original = if spec.in_place {
            match self.source.domain(&spec.domain).await {
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
        let listing = list_sets(&target, &work.join("manifests")).await?;
        let points = listing.points;
        if points.is_empty() && !listing.damaged.is_empty() {
            return Err(StepError::new(
                FailureReason::VerificationFailed,
                format!(
                    "every backup set of domain '{}' on the target is damaged ({}); `snapback verify --all` lists them",
                    spec.domain, listing.damaged[0].error.message
                ),
            ));
        }
        if points.is_empty() {
            return Err(StepError::new(
                FailureReason::DomainNotFound,
                format!("the target holds no backups of domain '{}'", spec.domain),
            ));
        }
        let idx = select(&points, &at).map_err(invalid)?;
        let damaged: Vec<_> = listing.damaged.iter().map(|d| d.set_time).collect();
        if let Some(t) = damaged_instead(&points[idx], &damaged, &at) {
            let why = listing
                .damaged
                .iter()
                .find(|d| d.set_time == t)
                .map(|d| d.error.message.clone())
                .unwrap_or_default();
            return Err(StepError::new(
                FailureReason::VerificationFailed,
                format!(
                    "the backup set of {t}, the point asked for, cannot be restored from the target \
                     ({why}); restore an earlier point with --at (`snapback verify --all` names \
                     every point that is sound)"
                ),
            ));
        }
        let chain = chain_for(&points, idx, &listing.damaged)
            .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))?;
        let point = &points[idx];

        // Restored files go beside the original's first file disk, never into /dev.
        let first_disk = original
            .as_ref()
            .and_then(|v| {
                v.facts
                    .disks
                    .iter()
                    .find(|d| d.kind == crate::libvirt::DiskKind::File)
            })
            .map(|d| d.source().to_string());
        // A source whose disks are not files here (KubeVirt) gets them rebuilt in the work
        // dir and placed from there; they go with it.
        let storage = if self.source.disks_are_local() {
            plan::storage_dir(&spec, first_disk.as_deref())
        } else {
            let d = work.join("disks");
            std::fs::create_dir_all(&d).map_err(|e| io_err("cannot create the work dir", e))?;
            d
        };
        let fetched: u64 = chain.iter().map(|&i| points[i].size()).sum();
        let all_onto_devices = point
            .manifest
            .disks
            .iter()
            .all(|d| spec.target_devices.contains_key(&d.name));
        if !all_onto_devices {
            check_storage_dir(&storage, fetched)?;
        }
        std::fs::create_dir_all(&work).map_err(|e| io_err("cannot create the work dir", e))?;
        check_storage_dir(&work, fetched)
            .map_err(|e| StepError::new(e.reason, format!("work dir: {}", e.message)))?;

        let base = spec.new_name.clone().unwrap_or_else(|| spec.domain.clone());
        let mut disks = plan::restored_disks(&spec, &self.lc.name(), &point.manifest, &storage);
        for d in disks.iter_mut() {
            d.placed_as =
                self.source
                    .placement_name(spec.new_name.as_deref(), &d.name, &self.lc.name());
            if d.placed_as.is_some() {
                if let Some(dir) = Path::new(&d.path).parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| io_err("cannot create the work dir", e))?;
                }
            }
        }
        plan::check_devices(&spec, &point.manifest, &self.device_facts().await?)?;
        for d in disks.iter().filter(|d| !d.device) {
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
}
