//! Starting: start the restored domain and check that it keeps running.

use std::time::Duration;

use crate::api::{reason, ConditionType};
use crate::api::{FailureReason, RestorePhase, RestoreRequest};
use crate::error::StepError;
use crate::libvirt::DomainState;
use crate::lifecycle::Journal;
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Starts the restored domain (unless a run before a crash did) and checks that it keeps
    /// running.
    pub(crate) async fn start(&mut self, running: bool) -> Result<(), StepError> {
        let id = self.lc.status().defined_uuid.clone().unwrap_or_default();
        if !running {
            self.source.start(&id).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if self.source.domain(&id).await?.state != DomainState::Running {
            return Err(StepError::new(
                FailureReason::VerificationFailed,
                "the restored domain stopped right after starting",
            ));
        }
        self.lc.condition(
            ConditionType::Started,
            true,
            reason::DOMAIN_RUNNING,
            "the restored domain is running".into(),
        );
        self.lc.enter(RestorePhase::Recovering).await
    }
}
