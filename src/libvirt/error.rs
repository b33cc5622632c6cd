//! The libvirt layer's error type.

use virt::error::{Error as VirtError, ErrorNumber};

/// What kind of libvirt failure happened, as far as snapback cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtErrorKind {
    /// libvirtd could not be reached.
    Unavailable,
    DomainNotFound,
    CheckpointNotFound,
    /// A checkpoint's bitmap is missing or broken.
    CheckpointInconsistent,
    /// No guest agent is configured or it does not answer.
    AgentUnavailable,
    /// The guest agent did not answer in time.
    AgentTimeout,
    /// The domain is not in a state that allows the operation (e.g. shut off).
    InvalidState,
    /// The source cannot do this at all (snapshots of a source without them).
    Unsupported,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LibvirtError {
    pub kind: VirtErrorKind,
    pub message: String,
}

impl LibvirtError {
    pub fn new(kind: VirtErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<VirtError> for LibvirtError {
    fn from(e: VirtError) -> Self {
        use virt::enumutil::Enum;
        let kind = match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => VirtErrorKind::DomainNotFound,
            Enum::Known(ErrorNumber::NoDomainCheckpoint) => VirtErrorKind::CheckpointNotFound,
            Enum::Known(ErrorNumber::CheckpointInconsistent) => {
                VirtErrorKind::CheckpointInconsistent
            }
            Enum::Known(ErrorNumber::AgentUnresponsive) => VirtErrorKind::AgentUnavailable,
            Enum::Known(ErrorNumber::AgentCommandTimeout) => VirtErrorKind::AgentTimeout,
            Enum::Known(ErrorNumber::OperationInvalid) => VirtErrorKind::InvalidState,
            Enum::Known(ErrorNumber::NoConnect) | Enum::Known(ErrorNumber::SystemError)
                if e.message().contains("Failed to connect socket")
                    || e.message().contains("no connection driver") =>
            {
                VirtErrorKind::Unavailable
            }
            // "argument unsupported: QEMU guest agent is not configured"
            Enum::Known(ErrorNumber::ArgumentUnsupported) if e.message().contains("agent") => {
                VirtErrorKind::AgentUnavailable
            }
            _ => VirtErrorKind::Other,
        };
        Self {
            kind,
            message: e.message().to_string(),
        }
    }
}
