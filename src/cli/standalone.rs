//! `snapback standalone --config DIR [--once]`: single-host mode (see `standalone::daemon`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::backup::CommonArgs;
use super::limits::LimitArgs;
use super::progress::stderr_reporter;
use crate::libvirt::LibvirtHost;
use crate::process::cancel_on_signal;
use crate::standalone::{config, daemon};
use crate::store::FileStore;

#[derive(Args, Debug)]
pub struct StandaloneArgs {
    /// A directory of BackupTarget, BackupPolicy and RestoreRequest manifests
    #[arg(long)]
    pub config: PathBuf,
    /// Run every policy now, once, and exit (for cron or a systemd timer)
    #[arg(long)]
    pub once: bool,
    /// Seconds between looks at the schedules and the config dir (daemon mode)
    #[arg(long, default_value_t = 20)]
    pub interval: u64,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

pub async fn execute(mut args: StandaloneArgs) -> i32 {
    args.common.absolutize();
    let cfg = match config::load_dir(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("InvalidSpec: {e}");
            return 1;
        }
    };
    if let Err(e) = daemon::check_policies(&cfg) {
        eprintln!("InvalidSpec: {e}");
        return 1;
    }
    let host = match LibvirtHost::connect(&args.common.connect).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("LibvirtUnavailable: {e}");
            return 1;
        }
    };
    let store = FileStore::new(&args.common.state_dir);
    let ctx = daemon::Ctx {
        host: &host,
        store: &store,
        state_dir: &args.common.state_dir,
        cancel: cancel_on_signal(),
        reporter: stderr_reporter,
        limits: args.limits.limits(),
    };
    if args.once {
        daemon::once(&ctx, &cfg).await
    } else {
        let interval = Duration::from_secs(args.interval.max(1));
        daemon::daemon(&ctx, cfg, &args.config, interval).await
    }
}
