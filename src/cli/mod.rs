//! The command line: clap definitions and one module per subcommand.

pub mod backup;
pub mod get;
pub mod progress;
pub mod restore;
pub mod target_args;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Resume runs whose process died, for one target
    Resume(ResumeArgs),
    /// List resources in a kubectl-like table
    Get(GetArgs),
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
pub struct GetArgs {
    pub kind: Kind,
    #[arg(long, default_value = "/var/lib/snapback", env = "SNAPBACK_STATE_DIR")]
    pub state_dir: std::path::PathBuf,
}
