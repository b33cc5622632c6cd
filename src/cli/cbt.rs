//! `snapback cbt enable | disable | status --domain D`: changed-block tracking for a domain's
//! raw file and block-device disks (see `crate::cbt`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::backup::CommonArgs;
use crate::cbt::{Cbt, DiskCbt};
use crate::libvirt::LibvirtHost;
use crate::table::table;

#[derive(Args, Debug)]
pub struct CbtArgs {
    #[command(subcommand)]
    pub action: CbtAction,
}

#[derive(Subcommand, Debug)]
pub enum CbtAction {
    /// Put a qcow2 overlay over each raw disk and redefine the domain on it (from its next start)
    Enable {
        #[arg(long)]
        domain: String,
        /// Where the overlays are made (small files: metadata and bitmaps only)
        #[arg(long, value_name = "DIR")]
        overlay_dir: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Redefine the domain on its raw disks again (from its next start)
    Disable {
        #[arg(long)]
        domain: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Each disk's changed-block tracking: Native, Disabled, PendingRestart, Enabled,
    /// DisablePendingRestart
    Status {
        #[arg(long)]
        domain: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn print(disks: &[DiskCbt]) {
    let rows = disks
        .iter()
        .map(|d| [d.disk.clone(), format!("{:?}", d.state), d.source.clone()])
        .collect();
    print!("{}", table(["DISK", "STATE", "SOURCE"], rows));
}

pub async fn execute(args: CbtArgs) -> i32 {
    let common = match &args.action {
        CbtAction::Enable { common, .. }
        | CbtAction::Disable { common, .. }
        | CbtAction::Status { common, .. } => common,
    };
    let host = match LibvirtHost::connect(&common.connect).await {
        Ok(h) => h,
        Err(e) => {
            let e = crate::error::StepError::from(e);
            eprintln!("{}: {}", e.reason, e.message);
            return 1;
        }
    };
    let state_dir = std::path::absolute(&common.state_dir).unwrap_or(common.state_dir.clone());
    let cbt = Cbt {
        source: &host,
        state_dir: &state_dir,
    };
    let done = match &args.action {
        CbtAction::Enable {
            domain,
            overlay_dir,
            ..
        } => {
            let dir = std::path::absolute(overlay_dir).unwrap_or(overlay_dir.clone());
            cbt.enable(domain, &dir).await
        }
        CbtAction::Disable { domain, .. } => cbt.disable(domain).await,
        CbtAction::Status { domain, .. } => cbt.status(domain).await,
    };
    match done {
        Ok(disks) => {
            print(&disks);
            0
        }
        Err(e) => {
            eprintln!("{}: {}", e.reason, e.message);
            1
        }
    }
}
