//! Snapshotting: preSnapshot hooks, freeze, (pause), begin the job, thaw, onSnapshot hooks.
//! Also the recovery of a guest left frozen or paused by a run that died here.

use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::api::BackupRun;
use crate::api::RunDisk;
use crate::api::{reason, ConditionType};
use crate::api::{BackupPhase, FailureReason, Quiesce};
use crate::engine::BackupEngine;
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::lifecycle::{Event, Journal};
use crate::source::{BackupRequest, DiskExport, Source};

impl<J: Journal<BackupRun>, S: Source> BackupEngine<'_, J, S> {
    pub(crate) async fn snapshot(&mut self) -> Result<(), StepError> {
        let spec = self.lc.record.spec.clone();
        self.run_hooks(HookStage::PreSnapshot, &spec.hooks.pre_snapshot)
            .await?;
        if self.lc.status().online {
            self.begin_job().await?;
        } else {
            // A shut-off domain's disks do not change: the files are the snapshot.
            let view = self.source.domain(&self.domain_id()).await?;
            self.capture_firmware(&view).await?;
            self.lc.status_mut().snapshot_time = Some(Timestamp::now());
            self.lc.save().await?;
        }
        self.run_hooks(HookStage::OnSnapshot, &spec.hooks.on_snapshot)
            .await?;
        self.lc.enter(BackupPhase::Exporting).await
    }

    /// Resuming after the job began: the onSnapshot hooks not yet recorded as run are run now
    /// (an interrupted one again), so a hook that lets a paused application continue is never
    /// skipped by a crash.
    pub(crate) async fn finish_snapshot(&mut self) -> Result<(), StepError> {
        let hooks = self.lc.record.spec.hooks.on_snapshot.clone();
        let done = self
            .lc
            .status()
            .hooks
            .iter()
            .filter(|h| h.stage == HookStage::OnSnapshot.as_str())
            .count();
        let pending = hooks.get(done..).unwrap_or_default();
        self.run_hooks(HookStage::OnSnapshot, pending).await?;
        // A source that names its own checkpoint (KubeVirt) may have begun the job after the
        // last save: its name is taken from the job, not from the plan.
        if let Some(cp) = self
            .source
            .job_outcome(&self.domain_id())
            .await?
            .and_then(|o| o.checkpoint)
        {
            self.lc.status_mut().checkpoint = Some(cp);
        }
        self.lc.enter(BackupPhase::Exporting).await
    }

    async fn begin_job(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        let c = self.lc.record.spec.consistency.clone();
        let view = self.source.domain(&id).await?;
        let mut window_start: Option<Instant> = None;

        // A paused guest cannot answer its agent, and its disks are already still.
        let paused = view.state == crate::libvirt::DomainState::Paused;
        if paused && c.quiesce == Quiesce::Required {
            return Err(StepError::new(
                FailureReason::QuiesceFailed,
                "the domain is paused: its guest agent cannot freeze the filesystems (quiesce: Required)",
            ));
        }
        if paused && c.quiesce != Quiesce::None {
            self.lc.condition(
                ConditionType::Quiesced,
                false,
                reason::DOMAIN_PAUSED,
                "the domain was paused: its disks do not change, the guest agent cannot answer"
                    .into(),
            );
        }
        // A source that freezes the guest itself (KubeVirt) is asked to in the request.
        let by_source = self.source.quiesces_itself();
        if c.quiesce != Quiesce::None && !paused && !by_source {
            self.lc.status_mut().guest_frozen = true;
            self.lc.save().await?;
            let res = if view.facts.has_agent_channel {
                self.source
                    .freeze(&id, Duration::from_secs(c.freeze_timeout_seconds as u64))
                    .await
                    .map_err(|e| e.message)
            } else {
                Err("the domain has no qemu guest agent channel".to_string())
            };
            match res {
                Ok(n) => {
                    window_start = Some(Instant::now());
                    self.lc.status_mut().quiesced = true;
                    self.lc.condition(
                        ConditionType::Quiesced,
                        true,
                        reason::FILESYSTEMS_FROZEN,
                        format!("{n} guest filesystem(s) frozen"),
                    );
                }
                Err(msg) => {
                    self.lc.status_mut().guest_frozen = false;
                    self.lc.save().await?;
                    if c.quiesce == Quiesce::Required {
                        return Err(StepError::new(
                            FailureReason::QuiesceFailed,
                            format!("cannot freeze guest filesystems: {msg}"),
                        ));
                    }
                    self.lc.condition(
                        ConditionType::Quiesced,
                        false,
                        reason::GUEST_AGENT_UNAVAILABLE,
                        format!("crash-consistent backup: {msg}"),
                    );
                    self.lc
                        .report(Event::Note(format!("warning: not quiesced: {msg}")));
                }
            }
        }
        // Memory runs pause the vCPUs whatever `pause` says: the saved RAM must be of the
        // disks' instant (see `memory.rs`).
        let memory = self.lc.status().memory_pending;
        let mut paused_at: Option<Instant> = None;
        if (c.pause || memory) && !paused {
            self.lc.status_mut().guest_paused = true;
            self.lc.save().await?;
            paused_at = Some(Instant::now());
            if let Err(e) = self.source.suspend(&id).await {
                self.undo_freeze_and_pause(window_start).await?;
                return Err(e.into());
            }
            window_start.get_or_insert_with(Instant::now);
        }

        let s = self.lc.status().clone();
        let dir = self.staging();
        let request = BackupRequest {
            incremental_since: s.parent_checkpoint.clone(),
            checkpoint: s.checkpoint.clone(),
            exports: s
                .disks
                .iter()
                .map(|d| DiskExport {
                    disk: d.name.clone(),
                    file: dir.join(&d.export_file),
                    tracked: RunDisk::tracks_changes(&d.format),
                    whole: d.full_reason.is_some(),
                })
                .collect(),
            quiesce: c.quiesce != Quiesce::None,
        };
        // Files mode saves it too: a point's files tree carries it beside the filesystems.
        let begun = match self.capture_firmware(&view).await {
            Ok(()) => self.source.begin_backup(&id, &request).await,
            Err(e) => {
                self.undo_freeze_and_pause(window_start).await?;
                return Err(e);
            }
        };
        if let Ok(b) = &begun {
            crate::process::crash_point("backup:snapshotting:job-begun");
            // A source that names its own checkpoints (KubeVirt) is followed.
            if b.checkpoint != s.checkpoint {
                self.lc.status_mut().checkpoint = b.checkpoint.clone();
            }
        }
        self.lc.status_mut().snapshot_time = Some(Timestamp::now());
        let captured = match (&begun, memory) {
            (Ok(_), true) => self.capture_memory().await,
            _ => Ok(()),
        };
        // Thaw (and resume) whatever happened: the job's point in time is fixed once it began.
        self.undo_freeze_and_pause(window_start).await?;
        if let (Some(t), true) = (paused_at, memory) {
            let secs = t.elapsed().as_secs_f64();
            self.lc.status_mut().paused_seconds = Some((secs * 1000.0).round() / 1000.0);
            self.lc.save().await?;
        }
        captured?;
        begun.map(|_| ()).map_err(|e| {
            StepError::new(
                FailureReason::BackupJobFailed,
                format!("cannot begin the backup job: {}", e.message),
            )
        })
    }

    async fn undo_freeze_and_pause(
        &mut self,
        window_start: Option<Instant>,
    ) -> Result<(), StepError> {
        let id = self.domain_id();
        let mut problems = Vec::new();
        if self.lc.status().guest_paused {
            match self.source.resume(&id).await {
                Ok(()) => self.lc.status_mut().guest_paused = false,
                Err(e) => problems.push(format!("resume: {e}")),
            }
        }
        if self.lc.status().guest_frozen {
            match self.source.thaw(&id).await {
                Ok(_) => self.lc.status_mut().guest_frozen = false,
                Err(e) => problems.push(format!("thaw: {e}")),
            }
        }
        if let Some(t) = window_start {
            self.lc.status_mut().freeze_window_ms = Some(t.elapsed().as_millis() as u64);
        }
        self.lc.save().await?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StepError::new(
                FailureReason::LibvirtError,
                problems.join("; "),
            ))
        }
    }

    /// A run died while the guest was frozen or paused: give the guest back first.
    pub(crate) async fn recover(&mut self) -> Result<(), StepError> {
        let id = self.domain_id();
        self.lc.report(Event::Note(
            "recovering: thawing/resuming the guest left by an interrupted run".into(),
        ));
        self.wait_for_memory_save().await;
        if self.lc.status().guest_paused {
            // "not paused" is fine: someone resumed it already.
            let _ = self.source.resume(&id).await;
            self.lc.status_mut().guest_paused = false;
        }
        if self.lc.status().guest_frozen {
            let _ = self.source.thaw(&id).await;
            self.lc.status_mut().guest_frozen = false;
        }
        self.lc.save().await
    }
}
