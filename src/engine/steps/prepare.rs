//! Preparing: validate, resolve the domain and disks, choose full or incremental, set up staging.

use jiff::Timestamp;

use crate::api::BackupRun;
use crate::api::{reason, ConditionType};
use crate::api::{
    BackupPhase, BackupType, ChangedBlockTracking, FailureReason, MemoryState, OfflinePolicy,
    RunDisk,
};
use crate::catalog::layout;
use crate::duplicity::{self, Action};
use crate::engine::decide::{choose_type, disk_full_reason, ChainFacts, PreviousRun};
use crate::engine::{history, plan, BackupEngine};
use crate::error::StepError;
use crate::libvirt::VirtErrorKind;
use crate::lifecycle::{Event, Journal};
use crate::source::Source;
use crate::state_dir;
use crate::units::human_bytes;

use super::manifest_name;

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn prepare(&mut self) -> Result<(), StepError> {
        if self.lc.status().phase == BackupPhase::Pending {
            self.lc.enter(BackupPhase::Preparing).await?;
        }
        let spec = self.lc.record.spec.clone();
        let full_every = plan::validate_spec(&spec)?;
        let files = self.files_mode();
        let memory = spec.memory == MemoryState::Include;
        if memory && files {
            return Err(StepError::new(
                FailureReason::InvalidSpec,
                "memory: Include keeps the RAM state beside disk images; files mode keeps files only (use mode: Image)",
            ));
        }
        if memory && !self.source.saves_memory() {
            return Err(StepError::new(
                FailureReason::InvalidSpec,
                format!(
                    "memory: Include: {} cannot save a VM's memory state",
                    self.source.location()
                ),
            ));
        }

        let view = self
            .source
            .domain(&spec.domain)
            .await
            .map_err(|e| match e.kind {
                VirtErrorKind::DomainNotFound => StepError::new(
                    FailureReason::DomainNotFound,
                    format!(
                        "domain '{}' not found on {}",
                        spec.domain,
                        self.source.location()
                    ),
                ),
                _ => e.into(),
            })?;
        let name = self.lc.name();
        let uuid = view.facts.uuid.clone();
        self.lc.status_mut().domain_uuid = Some(uuid.clone());
        self.lc.status_mut().domain_name = Some(view.facts.name.clone());
        self.lc.status_mut().target_url = Some(self.ctx.target.url.redacted());
        self.ensure_lock()?;
        // Under the lock, so two runs never switch one domain's disks at once; the domain as
        // it is defined afterwards is what this point saves.
        let view = if spec.changed_block_tracking == ChangedBlockTracking::Enable && !files {
            self.enable_cbt(&spec.domain).await;
            self.source.domain(&uuid).await?
        } else {
            view
        };
        self.reconcile_checkpoints(&view).await;

        let online = plan::online(view.state)?;
        if !online && !self.source.disks_are_local() {
            // Disks in a cluster (KubeVirt) are only read through a running VM's backup job.
            return Err(StepError::new(
                FailureReason::DomainShutOff,
                format!(
                    "{} is not running: {} backs up running VMs only",
                    spec.domain,
                    self.source.location()
                ),
            ));
        }
        if !online && spec.consistency.offline == OfflinePolicy::Skip {
            return self.skip().await;
        }
        if view.facts.disks.is_empty() {
            return Err(StepError::new(
                FailureReason::InvalidSpec,
                "the domain has no writable disk to back up",
            ));
        }

        let tkey = layout::target_key(self.ctx.target.url.as_str());
        let dir = state_dir::staging_dir(&self.ctx.state_dir, &tkey, &uuid);
        std::fs::create_dir_all(&dir).map_err(|e| {
            StepError::new(
                FailureReason::StagingFull,
                format!("cannot create staging dir {}: {e}", dir.display()),
            )
        })?;
        // We hold the lock: anything left in staging is debris of an earlier failed run.
        state_dir::empty_dir(&dir).map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot empty staging: {e}"),
            )
        })?;

        // The chain: what the previous run left in libvirt and on the target.
        let url = self.ctx.target.url.redacted();
        let previous = history::previous_run(&self.ctx.history, &uuid, &url, spec.mode, &name);
        let disks_now: Vec<(String, u64)> = view
            .facts
            .disks
            .iter()
            .zip(&view.sizes)
            .map(|(d, s)| (d.name.clone(), *s))
            .collect();
        let mut facts = ChainFacts {
            image: !files,
            previous: previous.clone(),
            online,
            checkpoint_present: false,
            checkpoint_dropped_by_revert: false,
            checkpoint_valid: false,
            target_has_previous: false,
            disks: disks_now,
            now: Timestamp::now(),
            full_every,
            max_incrementals: spec.full_cadence.max_incrementals,
            any_tracked: view
                .facts
                .disks
                .iter()
                .any(|d| RunDisk::tracks_changes(d.format())),
        };
        if let (true, Some(_)) = (files, &previous) {
            let names = duplicity::backend::list(&self.domain_target()).await?;
            facts.target_has_previous = duplicity::names::newest_complete_time(&names).is_some();
        }
        if let (true, false, Some(prev)) = (online, files, &previous) {
            if let Some(cp) = &prev.checkpoint {
                facts.checkpoint_present = self.source.checkpoints(&uuid).await?.contains(cp);
                if !facts.checkpoint_present {
                    // A revert to a local point drops the checkpoints and records which.
                    facts.checkpoint_dropped_by_revert =
                        self.source.dropped_checkpoints(&uuid).await?.contains(cp);
                }
                if facts.checkpoint_present {
                    facts.checkpoint_valid = match self.source.validate_checkpoint(&uuid, cp).await
                    {
                        Ok(()) => true,
                        Err(e) if e.kind == VirtErrorKind::CheckpointInconsistent => {
                            self.lc.report(Event::Note(format!(
                                "checkpoint {cp} is inconsistent: {}",
                                e.message
                            )));
                            false
                        }
                        Err(e) => return Err(e.into()),
                    };
                }
            }
            if facts.checkpoint_valid {
                facts.target_has_previous = self.target_ends_with(prev).await?;
            }
        }
        let (type_, full_reason) = choose_type(spec.type_, &facts)
            .map_err(|(reason, message)| StepError::new(reason, message))?;

        // The disks the parent checkpoint keeps a bitmap for: a disk that gained one since
        // (changed-block tracking enabled and the domain restarted) is whole this once.
        let parent_bitmaps = match (type_, previous.as_ref().and_then(|p| p.checkpoint.as_ref())) {
            (BackupType::Incremental, Some(cp)) if !files => {
                let xml = self.source.checkpoint_xml(&uuid, cp).await?;
                crate::libvirt::domain_xml::checkpoint_covers(&xml).map_err(|e| {
                    StepError::new(FailureReason::CheckpointInconsistent, e.to_string())
                })?
            }
            _ => None,
        };
        let in_parent = |disk: &str| {
            parent_bitmaps
                .as_ref()
                .is_none_or(|b| b.iter().any(|d| d == disk))
        };
        // A whole export needs up to the allocated size of its disk in staging (files mode
        // always exports whole disks); refuse early, not half-way.
        let whole = |d: &crate::libvirt::Disk| {
            type_ == BackupType::Full
                || files
                || !RunDisk::tracks_changes(d.format())
                || !in_parent(&d.name)
        };
        let need: u64 = view
            .facts
            .disks
            .iter()
            .zip(&view.sizes)
            .filter(|(d, _)| whole(d))
            .map(|(d, size)| crate::engine::whole_export_need(d, *size, online, files))
            .sum::<u64>()
            // The memory state takes up to the domain's RAM beside the exports.
            + (memory && online)
                .then(|| crate::libvirt::memory_state::ram_bytes(&view.xml))
                .flatten()
                .unwrap_or(0);
        let free = state_dir::free_bytes(&dir).unwrap_or(u64::MAX);
        if need > 0 && free < need {
            return Err(StepError::new(
                FailureReason::StagingFull,
                format!(
                    "staging {} has {} free, the export needs up to {}",
                    dir.display(),
                    human_bytes(free),
                    human_bytes(need)
                ),
            ));
        }
        if spec.depth != 0 && online {
            self.lc.condition(
                ConditionType::DepthApplied,
                false,
                reason::ONLINE_EXPORT_IS_WHOLE_CHAIN,
                "a running domain's push-mode export always holds the whole backing chain; depth applies to shut-off domains".into(),
            );
        }

        std::fs::write(dir.join(format!("{name}.domain.xml")), &view.inactive_xml).map_err(
            |e| {
                StepError::new(
                    FailureReason::StagingFull,
                    format!("cannot write domain XML: {e}"),
                )
            },
        )?;

        let mut place = plan::chain_place(&name, type_, previous.as_ref(), online, files);
        if !facts.any_tracked {
            // No disk can hold a bitmap: a checkpoint would have nothing in it.
            place.checkpoint = None;
        }
        if memory && !online {
            self.lc.note(
                "memory: Include: the domain is shut off, so there is no memory state; the point holds its disks",
            );
        }
        let s = self.lc.status_mut();
        s.online = online;
        s.memory_pending = memory && online;
        s.type_ = Some(type_);
        s.full_reason = full_reason;
        s.checkpoint = place.checkpoint;
        s.parent_checkpoint = place.parent_checkpoint;
        s.chain = Some(place.chain);
        s.chain_index = place.chain_index;
        s.staging_dir = Some(dir.display().to_string());
        s.disks = view
            .facts
            .disks
            .iter()
            .zip(&view.sizes)
            .map(|(d, size)| RunDisk {
                name: d.name.clone(),
                source: d.source().to_string(),
                format: d.format().to_string(),
                virtual_size: *size,
                export_file: format!("{name}.{}.qcow2", d.name),
                export_bytes: 0,
                sha256: None,
                full_reason: (!files)
                    .then(|| {
                        disk_full_reason(
                            type_,
                            full_reason,
                            RunDisk::tracks_changes(d.format()),
                            in_parent(&d.name),
                        )
                    })
                    .flatten(),
            })
            .collect();
        let whole: Vec<String> = s
            .disks
            .iter()
            .filter(|d| type_ == BackupType::Incremental && d.full_reason.is_some())
            .map(|d| format!("{} ({:?})", d.name, d.full_reason.unwrap()))
            .collect();
        let note = match (type_, full_reason) {
            (BackupType::Full, Some(r)) => format!("full backup ({r:?})"),
            _ if whole.is_empty() => format!(
                "incremental since {}",
                self.lc
                    .status()
                    .parent_checkpoint
                    .clone()
                    .unwrap_or_default()
            ),
            _ => format!(
                "incremental since {}; whole: {}",
                self.lc
                    .status()
                    .parent_checkpoint
                    .clone()
                    .unwrap_or_default(),
                whole.join(", ")
            ),
        };
        self.lc.report(Event::Note(note));
        self.lc.enter(BackupPhase::Snapshotting).await
    }

    /// Whether the target's newest backup holds the given file (a run's manifest); with an
    /// empty name, whether the target holds any backup of this chain at all.
    /// Whether the target's newest complete set is the previous run's. Read from the target's
    /// file names, so it holds whatever this host's or duplicity's clock says; runs recorded
    /// without their set's time ask duplicity for the files of the newest set instead.
    async fn target_ends_with(&self, prev: &PreviousRun) -> Result<bool, StepError> {
        let Some(t) = prev.target_time else {
            return self.target_has_manifest(&manifest_name(&prev.name)).await;
        };
        let names = duplicity::backend::list(&self.domain_target()).await?;
        Ok(duplicity::names::newest_complete_time(&names) == Some(t))
    }

    pub(crate) async fn target_has_manifest(&self, manifest: &str) -> Result<bool, StepError> {
        let out = duplicity::run(
            &self.domain_target(),
            &Action::ListCurrentFiles { time: None },
            |_| {},
        )
        .await;
        match out {
            Ok(o) => Ok(o.stdout.lines().any(|l| l.trim_end().ends_with(manifest))),
            // An empty target has no chain: that is an answer, not an error.
            Err(e)
                if e.message.to_ascii_lowercase().contains("chains found")
                    || e.message.contains("No backup chains") =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn skip(&mut self) -> Result<(), StepError> {
        let why = StepError::new(
            FailureReason::DomainShutOff,
            "the domain is shut off and the policy says offline: Skip",
        );
        self.lc.finish(BackupPhase::Skipped, Some(why)).await
    }
}
