//! The condition types snapback sets, and the reason words of its conditions that are not
//! failure reasons (those are `FailureReason`). Status carries them as strings; code names
//! them here, so a typo is a compile error and a reader finds every use.

/// Every condition type, on whichever resource it appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// BackupPolicy: the spec is valid and its target exists.
    Ready,
    /// BackupPolicy: the target exists and is not reported unavailable.
    TargetAvailable,
    /// BackupPolicy: how the newest finished run ended.
    LastRunSucceeded,
    /// BackupPolicy (`virtualMachineSelector`): every selected VM can be backed up now.
    KubeVirtReady,
    /// BackupTarget: its URL is valid.
    Available,
    /// BackupRun: the guest's filesystems were frozen for the snapshot.
    Quiesced,
    /// BackupRun: how the depth rule applied to a running domain.
    DepthApplied,
    /// BackupRun: retention ran after it.
    Pruned,
    /// BackupRun: retention deleted its chain from the target; for a local point, its expiry
    /// rules deleted its snapshot.
    Expired,
    /// BackupRun: how its point read back from the target at the last verify.
    Verified,
    /// BackupRun: its agent stopped answering while it ran.
    AgentHeartbeatStale,
    /// BackupRun: whether its host let it start (False while it waits for a run slot or
    /// staging space, with `WaitingForSlot` or `WaitingForStaging`).
    Admitted,
    /// BackupRun (`changedBlockTracking: Enable`): whether the raw disks have overlays.
    ChangedBlockTracking,
    /// BackupRun (a local point, `localSnapshots.browse`): its guest filesystems are mounted
    /// read-only under the browse dir.
    Browsable,
    /// BackupRun (a local point, `browse.samba` or `browse.nfs`): the share and export
    /// snippets are written and the host has the servers to serve them.
    Shared,
    /// RestoreRequest: the restored domain was started and keeps running.
    Started,
    /// RestoreRequest (in place): the replaced disks were kept, renamed.
    OldDisksKept,
    /// RestoreRequest: the UEFI variable store and TPM state came from the backup.
    FirmwareRestored,
    /// RestoreRequest: the read-only boot files the domain names are on this host.
    BootFilesPresent,
    /// RestoreRequest (as new): the copy shares no writable host file with the original.
    HostFilesSeparate,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::TargetAvailable => "TargetAvailable",
            Self::LastRunSucceeded => "LastRunSucceeded",
            Self::KubeVirtReady => "KubeVirtReady",
            Self::Available => "Available",
            Self::Quiesced => "Quiesced",
            Self::DepthApplied => "DepthApplied",
            Self::Pruned => "Pruned",
            Self::Expired => "Expired",
            Self::Verified => "Verified",
            Self::AgentHeartbeatStale => "AgentHeartbeatStale",
            Self::Admitted => "Admitted",
            Self::ChangedBlockTracking => "ChangedBlockTracking",
            Self::Browsable => "Browsable",
            Self::Shared => "Shared",
            Self::Started => "Started",
            Self::OldDisksKept => "OldDisksKept",
            Self::FirmwareRestored => "FirmwareRestored",
            Self::BootFilesPresent => "BootFilesPresent",
            Self::HostFilesSeparate => "HostFilesSeparate",
        }
    }
}

/// Reason words of conditions that report success or a state, not a failure.
pub mod reason {
    pub const SCHEDULED: &str = "Scheduled";
    pub const SUSPENDED: &str = "Suspended";
    pub const FOUND: &str = "Found";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const URL_VALID: &str = "UrlValid";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const HEARTBEAT_FRESH: &str = "HeartbeatFresh";
    pub const AGENT_NOT_ANSWERING: &str = "AgentNotAnswering";
    pub const FILESYSTEMS_FROZEN: &str = "FilesystemsFrozen";
    pub const GUEST_AGENT_UNAVAILABLE: &str = "GuestAgentUnavailable";
    /// Quiesced=False: not asked for (`quiesce: None`).
    pub const QUIESCE_SKIPPED: &str = "QuiesceSkipped";
    pub const DOMAIN_PAUSED: &str = "DomainPaused";
    pub const ONLINE_EXPORT_IS_WHOLE_CHAIN: &str = "OnlineExportIsWholeChain";
    pub const RETENTION_APPLIED: &str = "RetentionApplied";
    pub const NOT_SUPPORTED: &str = "NotSupported";
    pub const PRUNED: &str = "Pruned";
    /// A local point's expiry rules (or `maxCount`) deleted it.
    pub const LOCAL_POINT_EXPIRED: &str = "LocalPointExpired";
    /// A local point's guest filesystems are mounted for browsing.
    pub const MOUNTED: &str = "Mounted";
    /// A local point's Samba and NFS snippets are written, and the servers are installed.
    pub const SNIPPETS_WRITTEN: &str = "SnippetsWritten";
    pub const DOMAIN_RUNNING: &str = "DomainRunning";
    pub const RENAMED: &str = "Renamed";
    /// In place on KubeVirt: the VM's old claims were left as they were, repointed from.
    pub const LEFT_AS_THEY_WERE: &str = "LeftAsTheyWere";
    pub const RESTORED: &str = "Restored";
    pub const NOT_IN_BACKUP: &str = "NotInBackup";
    pub const MISSING_ON_HOST: &str = "MissingOnHost";
    /// HostFilesSeparate=True: the copy's output files and sockets are its own.
    pub const OWN_FILES: &str = "OwnFiles";
    /// HostFilesSeparate=False: a share was made read-only or a device left out of the copy.
    pub const DEVICES_CHANGED: &str = "DevicesChanged";
    pub const ENABLED: &str = "Enabled";
    pub const PENDING_RESTART: &str = "PendingRestart";
    pub const ENABLE_FAILED: &str = "EnableFailed";
    /// Verified: every export of the point's chain matched its SHA-256 and read as sound qcow2.
    pub const READ_BACK_OK: &str = "ReadBackOK";
    /// Admitted=True: the run started within its host's limits.
    pub const ADMITTED: &str = "Admitted";
    /// Admitted=True: it needs more staging than the whole budget, so it started alone.
    pub const ALONE_OVER_BUDGET: &str = "AloneOverBudget";
    /// Admitted=False: every run slot of its host is taken (`--max-concurrent-runs`).
    pub const WAITING_FOR_SLOT: &str = "WaitingForSlot";
    /// Admitted=False: the staging budget cannot hold it yet (`--staging-budget`).
    pub const WAITING_FOR_STAGING: &str = "WaitingForStaging";
    /// KubeVirtReady: every VM the policy selects can be backed up.
    pub const ALL_VMS_READY: &str = "AllVMsReady";
}
