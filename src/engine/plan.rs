//! What Preparing decides once it has gathered the facts (pure): whether the spec can run at
//! all, whether the domain is online, and where the run sits in its chain. `steps/prepare.rs`
//! gathers (libvirt, the target, staging) and applies; the rules are here, table-tested.

use jiff::SignedDuration;

use crate::api::{BackupRunSpec, BackupType, FailureReason};
use crate::error::StepError;
use crate::libvirt::DomainState;
use crate::units::parse_duration;

use super::decide::PreviousRun;

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, message)
}

/// Rejects names that cannot be a libvirt domain name or UUID (control characters, empty).
/// Shell metacharacters are harmless: nothing is ever passed through a shell.
pub fn validate_domain_id(id: &str) -> Result<(), StepError> {
    if id.trim().is_empty() {
        return Err(invalid("the domain name is empty"));
    }
    if id.chars().any(|c| c.is_control()) || id.len() > 1024 {
        return Err(invalid(
            "the domain name contains control characters or is too long",
        ));
    }
    Ok(())
}

/// Everything about a run's spec that can be refused before the domain is looked at.
/// Returns the full cadence's `fullEvery`, parsed.
pub fn validate_spec(spec: &BackupRunSpec) -> Result<Option<SignedDuration>, StepError> {
    validate_domain_id(&spec.domain)?;
    let hooks = spec
        .hooks
        .pre_snapshot
        .iter()
        .chain(&spec.hooks.on_snapshot)
        .chain(&spec.hooks.post_snapshot);
    for h in hooks {
        if h.command.first().is_none_or(|p| p.is_empty()) {
            return Err(invalid("a hook has an empty command"));
        }
    }
    for p in spec.include.iter().chain(&spec.exclude) {
        crate::files::select::check_guest_path(p).map_err(invalid)?;
    }
    spec.full_cadence
        .full_every
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(invalid)
}

/// A running or paused domain is backed up by a push-mode job; a shut-off one from its files.
pub fn online(state: DomainState) -> Result<bool, StepError> {
    match state {
        DomainState::Running | DomainState::Paused => Ok(true),
        DomainState::ShutOff => Ok(false),
        DomainState::Other => Err(StepError::new(
            FailureReason::LibvirtError,
            "the domain is neither running, paused nor shut off (crashed or in transition); not backing it up now",
        )),
    }
}

/// Where a run sits in its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainPlace {
    /// The checkpoint this run creates (image mode, online).
    pub checkpoint: Option<String>,
    /// The checkpoint an incremental starts from.
    pub parent_checkpoint: Option<String>,
    /// The run holding the chain's full.
    pub chain: String,
    pub chain_index: u32,
}

/// The run `name`'s place: a full starts a chain of its own; an incremental continues the
/// previous run's. Files mode needs no checkpoint: every export is whole and duplicity finds
/// the changes.
pub fn chain_place(
    name: &str,
    type_: BackupType,
    previous: Option<&PreviousRun>,
    online: bool,
    files: bool,
) -> ChainPlace {
    let continued = match (type_, previous) {
        (BackupType::Incremental, Some(p)) => Some(p),
        _ => None,
    };
    ChainPlace {
        checkpoint: (online && !files).then(|| format!("snapback-{name}")),
        parent_checkpoint: continued
            .filter(|_| !files)
            .and_then(|p| p.checkpoint.clone()),
        chain: continued.map_or_else(|| name.to_string(), |p| p.chain.clone()),
        chain_index: continued.map_or(0, |p| p.chain_index + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn previous() -> PreviousRun {
        PreviousRun {
            name: "r1".into(),
            checkpoint: Some("snapback-r1".into()),
            chain: "r0".into(),
            chain_index: 1,
            chain_start: "2026-01-01T00:00:00Z".parse().unwrap(),
            target_time: None,
            disks: vec![],
        }
    }

    #[test]
    fn a_run_takes_its_place_in_the_chain_by_type_mode_and_power_state() {
        let p = previous();
        let full_here = |checkpoint: Option<&str>| ChainPlace {
            checkpoint: checkpoint.map(String::from),
            parent_checkpoint: None,
            chain: "r2".into(),
            chain_index: 0,
        };
        // (case, type, previous, online, files, place)
        let table = [
            (
                "an online incremental continues from the previous checkpoint",
                BackupType::Incremental,
                Some(&p),
                true,
                false,
                ChainPlace {
                    checkpoint: Some("snapback-r2".into()),
                    parent_checkpoint: Some("snapback-r1".into()),
                    chain: "r0".into(),
                    chain_index: 2,
                },
            ),
            (
                "a full starts its own chain, online with a checkpoint",
                BackupType::Full,
                Some(&p),
                true,
                false,
                full_here(Some("snapback-r2")),
            ),
            (
                "a shut-off full needs no checkpoint",
                BackupType::Full,
                None,
                false,
                false,
                full_here(None),
            ),
            (
                "files mode continues duplicity's chain without checkpoints",
                BackupType::Incremental,
                Some(&p),
                true,
                true,
                ChainPlace {
                    checkpoint: None,
                    parent_checkpoint: None,
                    chain: "r0".into(),
                    chain_index: 2,
                },
            ),
        ];
        for (case, type_, prev, online, files, want) in table {
            assert_eq!(
                chain_place("r2", type_, prev, online, files),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn a_spec_is_refused_before_the_domain_is_touched() {
        let spec = |v: serde_json::Value| -> BackupRunSpec { serde_json::from_value(v).unwrap() };
        let ok = spec(serde_json::json!({"domain": "web", "targetRef": "t",
            "fullCadence": {"fullEvery": "7d"}}));
        assert_eq!(
            validate_spec(&ok).unwrap(),
            Some(SignedDuration::from_hours(168))
        );
        for (case, bad) in [
            (
                "empty domain",
                serde_json::json!({"domain": " ", "targetRef": "t"}),
            ),
            (
                "control character",
                serde_json::json!({"domain": "a\nb", "targetRef": "t"}),
            ),
            (
                "empty hook",
                serde_json::json!({"domain": "web", "targetRef": "t",
                    "hooks": {"preSnapshot": [{"command": [""]}]}}),
            ),
            (
                "bad cadence",
                serde_json::json!({"domain": "web", "targetRef": "t",
                    "fullCadence": {"fullEvery": "7x"}}),
            ),
        ] {
            let e = validate_spec(&spec(bad)).unwrap_err();
            assert_eq!(e.reason, FailureReason::InvalidSpec, "{case}");
        }
        assert!(online(DomainState::Paused).unwrap());
        assert!(!online(DomainState::ShutOff).unwrap());
        assert!(online(DomainState::Other).is_err());
    }
}
