//! The status fields a backup run and a restore share, behind one small trait, so one
//! lifecycle serves both engines while each CRD keeps its own schema.

use std::fmt::Debug;

use jiff::Timestamp;

use crate::api::{
    BackupPhase, BackupRun, BackupRunStatus, Condition, Failure, HookResult, PhaseRecord, Progress,
    RestorePhase, RestoreRequest, RestoreRequestStatus,
};

/// A phase of a run or a restore.
pub trait Phase: Copy + Debug + PartialEq + Send + Sync + 'static {
    fn is_terminal(self) -> bool;
    /// The terminal phase of a failure.
    fn failed() -> Self;
}

impl Phase for BackupPhase {
    fn is_terminal(self) -> bool {
        BackupPhase::is_terminal(self)
    }
    fn failed() -> Self {
        BackupPhase::Failed
    }
}

impl Phase for RestorePhase {
    fn is_terminal(self) -> bool {
        RestorePhase::is_terminal(self)
    }
    fn failed() -> Self {
        RestorePhase::Failed
    }
}

/// Borrows of the shared fields of one status.
pub struct Shared<'a, P> {
    pub phase: &'a mut P,
    pub phases: &'a mut Vec<PhaseRecord<P>>,
    pub conditions: &'a mut Vec<Condition>,
    pub hooks: &'a mut Vec<HookResult>,
    pub progress: &'a mut Option<Progress>,
    pub start_time: &'a mut Option<Timestamp>,
    pub completion_time: &'a mut Option<Timestamp>,
    pub duration: &'a mut Option<String>,
    pub failure: &'a mut Option<Failure>,
}

/// A status the lifecycle can drive.
pub trait Status: Default + Clone + Send + Sync {
    type Phase: Phase;
    fn phase(&self) -> Self::Phase;
    fn shared(&mut self) -> Shared<'_, Self::Phase>;
}

/// A resource with such a status: a BackupRun or a RestoreRequest.
pub trait Record: Clone + Send + Sync + 'static {
    type Status: Status;
    /// `backup` or `restore`: the first word of crash points and log lines.
    const KIND: &'static str;
    fn name(&self) -> String;
    fn generation(&self) -> Option<i64>;
    fn status(&self) -> Option<&Self::Status>;
    fn status_slot(&mut self) -> &mut Option<Self::Status>;
}

macro_rules! shared_fields {
    ($s:expr) => {
        Shared {
            phase: &mut $s.phase,
            phases: &mut $s.phases,
            conditions: &mut $s.conditions,
            hooks: &mut $s.hooks,
            progress: &mut $s.progress,
            start_time: &mut $s.start_time,
            completion_time: &mut $s.completion_time,
            duration: &mut $s.duration,
            failure: &mut $s.failure,
        }
    };
}

impl Status for BackupRunStatus {
    type Phase = BackupPhase;
    fn phase(&self) -> BackupPhase {
        self.phase
    }
    fn shared(&mut self) -> Shared<'_, BackupPhase> {
        shared_fields!(self)
    }
}

impl Status for RestoreRequestStatus {
    type Phase = RestorePhase;
    fn phase(&self) -> RestorePhase {
        self.phase
    }
    fn shared(&mut self) -> Shared<'_, RestorePhase> {
        shared_fields!(self)
    }
}

macro_rules! record {
    ($ty:ty, $status:ty, $kind:literal) => {
        impl Record for $ty {
            type Status = $status;
            const KIND: &'static str = $kind;
            fn name(&self) -> String {
                self.metadata.name.clone().unwrap_or_default()
            }
            fn generation(&self) -> Option<i64> {
                self.metadata.generation
            }
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn status_slot(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
        }
    };
}

record!(BackupRun, BackupRunStatus, "backup");
record!(RestoreRequest, RestoreRequestStatus, "restore");
