//! The command line: clap definitions and one module per subcommand.

pub mod backup;
pub mod browse;
pub mod cbt;
pub mod cluster;
pub mod describe;
pub mod get;
pub mod kubevirt_worker;
pub mod label;
pub mod limits;
pub mod local;
pub mod progress;
pub mod prune;
pub mod release;
pub mod restore;
pub mod standalone;
pub mod target_args;
pub mod verify;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::{FailureReason, Hooks};
use crate::error::StepError;

/// Reads a `--hooks-file` (YAML with preSnapshot ... postRecovery lists); none means no hooks.
pub fn read_hooks_file(path: Option<&std::path::Path>) -> Result<Hooks, StepError> {
    let Some(f) = path else {
        return Ok(Hooks::default());
    };
    std::fs::read_to_string(f)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_saphyr::from_str::<Hooks>(&t).map_err(|e| e.to_string()))
        .map_err(|e| {
            StepError::new(
                FailureReason::InvalidSpec,
                format!("hooks file {}: {e}", f.display()),
            )
        })
}

#[derive(Parser, Debug)]
#[command(
    name = "snapback",
    version,
    about = "Back up and restore libvirt/KVM virtual machines"
)]
pub struct Cli {
    /// Log as JSON lines (for log collectors)
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Back up one domain (full or incremental) to a duplicity target
    Backup(backup::BackupArgs),
    /// Restore a domain from its backups, as a new domain or in place
    Restore(restore::RestoreArgs),
    /// List a domain's restore points on a target
    List(restore::ListArgs),
    /// Local restore points read-only under @GMT dirs: mount, unmount, list; Samba and NFS snippets
    Browse(browse::BrowseArgs),
    /// Read a domain's backups back from the target and check them (checksums, qemu-img check)
    Verify(verify::VerifyArgs),
    /// Changed-block tracking for raw and block-device disks: enable, disable, status
    Cbt(cbt::CbtArgs),
    /// Set labels on a domain (`key=value`), which a policy's domainSelector.metadata matches
    Label(label::LabelArgs),
    /// Remove labels from a domain
    Unlabel(label::UnlabelArgs),
    /// Local restore points of a domain (snapshots with RAM on this host): take, list, expire
    Local(local::LocalArgs),
    /// Return a domain to a local restore point (RAM included: it resumes where it was)
    Revert(local::RevertArgs),
    /// Apply every policy's retention in a config dir (whole chains only)
    Prune(prune::PruneArgs),
    /// Single-host mode: run the schedules of a config dir (or every policy now with --once)
    Standalone(standalone::StandaloneArgs),
    /// Finish backups and restores of one target whose process died
    Resume(ResumeArgs),
    /// Print the CustomResourceDefinitions (YAML), or with --reference the field reference
    Crd(CrdArgs),
    /// Kubernetes: schedule policies into BackupRuns (leader-elected; run as a Deployment)
    Controller(cluster::ControllerArgs),
    /// Kubernetes: publish this node's VirtHost and run its BackupRuns and RestoreRequests
    Agent(cluster::AgentArgs),
    /// Kubernetes: back up KubeVirt VMs through KubeVirt's API (leader-elected; a Deployment)
    KubevirtWorker(kubevirt_worker::KubeVirtWorkerArgs),
    /// Kubernetes: remove snapback's finalizers from its objects (the chart's uninstall hook)
    ReleaseFinalizers(release::ReleaseArgs),
    /// List resources in a kubectl-like table
    Get(GetArgs),
    /// Show one resource in full: phases with timings, failure reason, conditions, hook output
    Describe(DescribeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub target: target_args::TargetArgs,
    #[command(flatten)]
    pub common: backup::CommonArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    #[value(alias = "backuprun", alias = "br")]
    Backupruns,
    #[value(alias = "restorerequest", alias = "rr")]
    Restorerequests,
}

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Print the resource field reference (Markdown) instead
    #[arg(long)]
    pub reference: bool,
}

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    pub kind: Kind,
    pub name: String,
    #[arg(long, default_value = "/var/lib/snapback", env = "SNAPBACK_STATE_DIR")]
    pub state_dir: std::path::PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    pub kind: Kind,
    #[arg(long, default_value = "/var/lib/snapback", env = "SNAPBACK_STATE_DIR")]
    pub state_dir: std::path::PathBuf,
}
