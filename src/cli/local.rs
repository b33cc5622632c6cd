//! `snapback local take|list|expire --domain D` and `snapback revert --domain D --to POINT`:
//! local restore points of one domain on this host (see `localpoints`).

use clap::{Args, Subcommand};
use jiff::Timestamp;

use super::backup::CommonArgs;
use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::LibvirtHost;
use crate::localpoints::{self, expire, revert, rules, take};
use crate::table::table;

#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub command: LocalCommand,
}

#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Take a point now: an internal snapshot with the VM's RAM; prints its name last
    Take(TakeArgs),
    /// List the domain's points (snapshots snapback did not make are not shown)
    List(ListArgs),
    /// Delete the points the rules say are due, oldest first
    Expire(ExpireArgs),
}

#[derive(Args, Debug)]
pub struct TakeArgs {
    /// The domain (name or UUID)
    #[arg(long)]
    pub domain: String,
    /// Do not freeze the guest's filesystems through its agent (crash-consistent point)
    #[arg(long)]
    pub no_quiesce: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub domain: String,
    /// Expiry rules, to show each point's expiry (as `expire` takes them)
    #[arg(long = "rule", value_name = "MATCH=AFTER")]
    pub rules: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ExpireArgs {
    #[arg(long)]
    pub domain: String,
    /// An expiry rule, `CRON=DURATION` (`0 0 * * *=7d`): points whose time the 5-field cron
    /// expression (UTC) covers are kept that long; of several rules that cover a point the
    /// longest wins; a point none covers is kept as long as the shortest rule says
    #[arg(long = "rule", value_name = "MATCH=AFTER", required = true)]
    pub rules: Vec<String>,
    /// Keep at most this many points (the oldest go first)
    #[arg(long)]
    pub max_count: Option<usize>,
    /// Expire as if it were this time (RFC 3339), to see what a rule set does
    #[arg(long)]
    pub now: Option<Timestamp>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct RevertArgs {
    /// The domain (name or UUID)
    #[arg(long)]
    pub domain: String,
    /// The point's name (`snapback local list`)
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn done(r: Result<(), StepError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {}", e.reason, e.message);
            1
        }
    }
}

fn parse_rules(args: &[String]) -> Result<Vec<rules::Rule>, StepError> {
    args.iter()
        .map(|r| rules::parse_rule_arg(r))
        .collect::<Result<_, _>>()
        .map_err(|m| StepError::new(FailureReason::InvalidSpec, m))
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |m| format!("{m}ms"))
}

pub async fn local(args: LocalArgs) -> i32 {
    done(match args.command {
        LocalCommand::Take(a) => take_cmd(a).await,
        LocalCommand::List(a) => list_cmd(a).await,
        LocalCommand::Expire(a) => expire_cmd(a).await,
    })
}

async fn take_cmd(mut a: TakeArgs) -> Result<(), StepError> {
    a.common.absolutize();
    let host = LibvirtHost::connect(&a.common.connect).await?;
    let opts = take::TakeOptions {
        quiesce: !a.no_quiesce,
        policy: None,
        scheduled: None,
    };
    let p = take::take(&host, &a.common.state_dir, &a.domain, &opts).await?;
    eprintln!(
        "took {} of {} (memory: {}, quiesced: {}, guest paused {})",
        p.name,
        p.domain,
        p.memory,
        p.quiesced,
        ms(p.paused_ms)
    );
    println!("{}", p.name);
    Ok(())
}

async fn list_cmd(a: ListArgs) -> Result<(), StepError> {
    let rules = parse_rules(&a.rules)?;
    let host = LibvirtHost::connect(&a.common.connect).await?;
    let points = localpoints::list(&host, &a.domain).await?;
    let rows = points
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.created.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                if p.memory { "yes" } else { "no" }.into(),
                if p.internal { "internal" } else { "external" }.into(),
                if p.quiesced { "yes" } else { "no" }.into(),
                ms(p.paused_ms),
                rules::expires_at(&rules, p.created)
                    .map_or("-".into(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            ["NAME", "CREATED", "MEMORY", "KIND", "QUIESCED", "PAUSED", "EXPIRES"],
            rows
        )
    );
    Ok(())
}

async fn expire_cmd(mut a: ExpireArgs) -> Result<(), StepError> {
    a.common.absolutize();
    let rules = parse_rules(&a.rules)?;
    let host = LibvirtHost::connect(&a.common.connect).await?;
    let now = a.now.unwrap_or_else(Timestamp::now);
    let out = expire::expire(
        &host,
        &a.common.state_dir,
        &a.domain,
        &rules,
        now,
        a.max_count,
        &[],
    )
    .await?;
    for (p, why) in &out.deleted {
        println!("deleted {} ({why:?})", p.name);
    }
    eprintln!("{} deleted, {} kept", out.deleted.len(), out.kept.len());
    Ok(())
}

pub async fn revert_cmd(mut a: RevertArgs) -> i32 {
    a.common.absolutize();
    done(
        async {
            let host = LibvirtHost::connect(&a.common.connect).await?;
            let r = revert::revert(&host, &a.common.state_dir, &a.domain, &a.to).await?;
            if !r.dropped_checkpoints.is_empty() {
                eprintln!(
                    "dropped {} checkpoint(s) first (QEMU cannot revert with dirty bitmaps): the next backup is a full (LocalRevert)",
                    r.dropped_checkpoints.len()
                );
            }
            eprintln!(
                "reverted {} to {} in {}ms (the revert itself {}ms)",
                a.domain,
                r.point.name,
                r.total_time.as_millis(),
                r.revert_time.as_millis()
            );
            println!("{}", r.point.name);
            Ok(())
        }
        .await,
    )
}
