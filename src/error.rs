//! The error of the engine layers (engine, restore, retention, files, driver): a stable reason
//! word that status, exit lines and metrics carry, and a message for people.

use crate::api::FailureReason;
use crate::libvirt::VirtErrorKind;

/// The engine layers' error: a stable reason word and a message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct StepError {
    pub reason: FailureReason,
    pub message: String,
}

impl StepError {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl From<crate::libvirt::LibvirtError> for StepError {
    fn from(e: crate::libvirt::LibvirtError) -> Self {
        let reason = match e.kind {
            VirtErrorKind::Unavailable => FailureReason::LibvirtUnavailable,
            VirtErrorKind::DomainNotFound => FailureReason::DomainNotFound,
            VirtErrorKind::CheckpointInconsistent => FailureReason::CheckpointInconsistent,
            // Asked of a source that cannot: a request to change, not a fault to retry.
            VirtErrorKind::Unsupported => FailureReason::InvalidSpec,
            _ => FailureReason::LibvirtError,
        };
        Self::new(reason, e.message)
    }
}

impl From<crate::duplicity::DuplicityError> for StepError {
    fn from(e: crate::duplicity::DuplicityError) -> Self {
        Self::new(e.reason, e.message)
    }
}
