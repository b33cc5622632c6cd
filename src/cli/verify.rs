//! `snapback verify`: reads a domain's backups back from the target and checks them.

use clap::Args;

use super::backup::CommonArgs;
use super::target_args::TargetArgs;
use crate::api::FailureReason;
use crate::catalog::layout;
use crate::catalog::select::parse_at;
use crate::restore::verify::{verify, PointCheck, Which};
use crate::table::table;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The backed-up domain's name
    #[arg(long)]
    pub domain: String,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The point to verify: RFC 3339 time (the newest point at or before it), a run name, or
    /// `latest` (the default)
    #[arg(long, conflicts_with = "all")]
    pub at: Option<String>,
    /// Verify every point on the target
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn row(c: &PointCheck) -> [String; 5] {
    [
        c.time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        if c.full { "full" } else { "incremental" }.into(),
        c.run.clone().unwrap_or_else(|| "?".into()),
        match &c.broken {
            None => "OK".into(),
            Some(e) => format!("broken ({})", e.reason),
        },
        c.broken
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default(),
    ]
}

/// Prints a line per point; exits 1 when any point is broken (the last stderr line starts with
/// `VerificationFailed`) or the target cannot be read (its reason word).
pub async fn execute(mut args: VerifyArgs) -> i32 {
    args.common.absolutize();
    let which = if args.all {
        Which::All
    } else {
        match parse_at(args.at.as_deref()) {
            Ok(at) => Which::One(at),
            Err(e) => {
                eprintln!("{}: {e}", FailureReason::InvalidSpec);
                return 1;
            }
        }
    };
    let target = match args.target.to_config(&args.common.state_dir) {
        Ok(t) => layout::domain_target(&t, &args.domain),
        Err(e) => {
            eprintln!("{}: {}", e.reason, e.message);
            return 1;
        }
    };
    let scratch = args
        .common
        .state_dir
        .join("verify-work")
        .join(std::process::id().to_string());
    match verify(&target, &which, &scratch).await {
        Ok(checks) => {
            print!(
                "{}",
                table(
                    ["TIME", "TYPE", "RUN", "RESULT", "DETAIL"],
                    checks.iter().map(row).collect()
                )
            );
            let broken = checks.iter().filter(|c| !c.ok()).count();
            if broken == 0 {
                0
            } else {
                eprintln!(
                    "{}: {broken} of {} points are broken",
                    FailureReason::VerificationFailed,
                    checks.len()
                );
                1
            }
        }
        Err(e) => {
            eprintln!("{}: {}", e.reason, e.message);
            1
        }
    }
}
