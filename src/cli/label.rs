//! `snapback label DOMAIN key=value...` and `snapback unlabel DOMAIN key...`: edit the labels
//! in the domain's XML that a policy's `domainSelector.metadata` matches, the one-command way
//! to put a VM under a policy (or take it out). Policies see it at their next look.

use clap::Args;

use super::backup::CommonArgs;
use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::domain_xml::snapback_metadata;
use crate::libvirt::labels::{check_key, element, parse_assignments};
use crate::libvirt::LibvirtHost;
use crate::table::table;

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// The domain (name or UUID)
    pub domain: String,
    /// Labels to set, `key=value` (a key already there gets the new value)
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct UnlabelArgs {
    /// The domain (name or UUID)
    pub domain: String,
    /// Label keys to remove (a key that is not there is no error)
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn invalid(m: String) -> StepError {
    StepError::new(FailureReason::InvalidSpec, m)
}

/// Reads the domain's labels, changes them with `change`, writes them back and prints them.
async fn edit(
    common: &CommonArgs,
    domain: &str,
    change: impl FnOnce(&mut std::collections::BTreeMap<String, String>),
) -> Result<(), StepError> {
    let host = LibvirtHost::connect(&common.connect).await?;
    let view = host.domain(domain).await?;
    let mut labels = snapback_metadata(&view.inactive_xml);
    change(&mut labels);
    host.set_snapback_labels(&view.facts.name, element(&labels))
        .await?;
    let rows = labels.into_iter().map(|(k, v)| [k, v]).collect();
    print!("{}", table(["LABEL", "VALUE"], rows));
    Ok(())
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

pub async fn label(args: LabelArgs) -> i32 {
    let set = match parse_assignments(&args.labels) {
        Ok(s) => s,
        Err(m) => return done(Err(invalid(m))),
    };
    done(edit(&args.common, &args.domain, |l| l.extend(set)).await)
}

pub async fn unlabel(args: UnlabelArgs) -> i32 {
    if let Some(m) = args.keys.iter().find_map(|k| check_key(k).err()) {
        return done(Err(invalid(m)));
    }
    done(
        edit(&args.common, &args.domain, |l| {
            for k in &args.keys {
                l.remove(k);
            }
        })
        .await,
    )
}
