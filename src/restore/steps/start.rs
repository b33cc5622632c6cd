//! Starting: start the restored domain and check that it keeps running.

use std::time::Duration;

use crate::api::{reason, ConditionType};
use crate::api::{FailureReason, RestorePhase, RestoreRequest};
use crate::error::StepError;
use crate::libvirt::DomainState;
use crate::lifecycle::Journal;
use crate::restore::RestoreEngine;
use crate::source::Source;

/// How long a resumed guest's agent is given to answer the thaw.
const THAW_WAIT: Duration = Duration::from_secs(60);

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Starts the restored domain (unless a run before a crash did) and checks that it keeps
    /// running.
    pub(crate) async fn start(&mut self, running: bool) -> Result<(), StepError> {
        let id = self.lc.status().defined_uuid.clone().unwrap_or_default();
        if !running && self.lc.record.spec.resume {
            self.resume_from_memory(&id).await?;
        } else if !running {
            self.source.start(&id).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if self.source.domain(&id).await?.state != DomainState::Running {
            return Err(StepError::new(
                FailureReason::VerificationFailed,
                "the restored domain stopped right after starting",
            ));
        }
        let how = if self.lc.record.spec.resume {
            "the restored domain is running, resumed from the point's memory state"
        } else {
            "the restored domain is running"
        };
        self.lc.condition(
            ConditionType::Started,
            true,
            reason::DOMAIN_RUNNING,
            how.into(),
        );
        self.lc.enter(RestorePhase::Recovering).await
    }
}

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Starts the defined domain from the point's memory state. The source rewrites the
    /// definition the file carries, so it is given a copy: the fetched file keeps the checksum
    /// it was verified with, and a resumed restore finds it as it was.
    async fn resume_from_memory(&mut self, id: &str) -> Result<(), StepError> {
        let run = self.point_run();
        let man = self.read_manifest(&run).await?;
        let state = super::fetch::resume_state(&run, &man)?;
        let fetched = self.member_dir(&run).join(&state.file);
        let copy = self.work_dir().join(format!("{}.resume", state.file));
        let (from, to) = (fetched.clone(), copy.clone());
        tokio::task::spawn_blocking(move || std::fs::copy(from, to))
            .await
            .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
            .map_err(|e| super::io_err(&format!("cannot copy {}", fetched.display()), e))?;
        crate::process::crash_point("restore:starting:memory-copied");
        let res = self.source.restore_memory(id, &copy).await;
        let _ = std::fs::remove_file(&copy);
        res.map_err(|e| {
            StepError::new(
                FailureReason::LibvirtError,
                format!(
                    "cannot resume the domain from its memory state: {}",
                    e.message
                ),
            )
        })?;
        self.thaw_resumed(id).await
    }

    /// A point taken with quiesce froze the guest's filesystems before the vCPUs were paused,
    /// so its memory holds them frozen: the original was thawed after the save, the resumed
    /// copy must be too, through its own guest agent (which may take a moment to answer
    /// after the restore). Not thawing would leave its filesystems blocked.
    async fn thaw_resumed(&mut self, id: &str) -> Result<(), StepError> {
        if !self.source.domain(id).await?.facts.has_agent_channel {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + THAW_WAIT;
        loop {
            match self.source.thaw(id).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.lc.note(format!(
                        "thawed {n} guest filesystem(s) frozen at the backup's instant"
                    ));
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    self.lc.note(format!(
                        "warning: could not thaw the resumed guest's filesystems (frozen if the point was quiesced): {e}"
                    ));
                    return Ok(());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}
