//! Which pending backup runs may start now on this host (pure): at most `max_runs` at once,
//! and, with a staging budget, no more staging in use or expected than the budget. The node
//! agent and the single-host daemon both ask it; a run it does not admit waits (it stays
//! Pending with an `Admitted=False` condition saying why) and is asked about again on the
//! next look, so a full host delays its night's runs instead of failing them.
//!
//! Restores and verifies are not counted: a restore is what a user is waiting for and
//! should not queue behind a night of backups, and both are rare next to scheduled runs.

use jiff::Timestamp;

use crate::api::{reason, set_condition, BackupRun, Condition, ConditionType};
use crate::units::human_bytes;

/// The limits of one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Backup runs past Pending at once (at least 1).
    pub max_runs: usize,
    /// Bytes of staging the runs may hold together; `None`: no budget (only the engine's own
    /// check of the filesystem's free space before each export).
    pub staging_budget: Option<u64>,
}

impl Limits {
    /// No limit: the kubevirt-worker, whose runs are spread over the cluster's nodes.
    pub const UNLIMITED: Limits = Limits {
        max_runs: usize::MAX,
        staging_budget: None,
    };
}

/// The default of `--max-concurrent-runs`: two runs keep both halves of a run's work busy
/// (one exporting while another uploads) on a small host without piling up staging and
/// duplicity processes; more is a choice for hosts with cores and disk to spare.
pub const DEFAULT_MAX_RUNS: usize = 2;

/// A pending run as admission sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// Not started yet (or resumed before its export): it needs up to this much staging.
    New { need: u64 },
    /// Resumed past Snapshotting: it holds its snapshot (a libvirt job or exported files)
    /// and this much staging already. It always goes on, since waiting would hold both
    /// longer, and it counts by what it holds (or will, whichever is more).
    Resumed { holds: u64 },
}

/// Why a run waits: the reason word of its `Admitted=False` condition and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Every run slot is taken.
    Slots { running: usize, max: usize },
    /// The staging budget cannot hold it next to the runs in flight, or an older run waits
    /// for staging first (`behind`), so a large run is not starved by smaller later ones.
    Staging {
        need: u64,
        in_use: u64,
        budget: u64,
        behind: bool,
    },
}

use reason::{WAITING_FOR_SLOT, WAITING_FOR_STAGING};

impl Wait {
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::Slots { .. } => WAITING_FOR_SLOT,
            Wait::Staging { .. } => WAITING_FOR_STAGING,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Wait::Slots { running, max } => format!(
                "waiting for a free run slot: {running} of {max} runs in flight on this host (--max-concurrent-runs)"
            ),
            Wait::Staging {
                need,
                in_use,
                budget,
                behind,
            } => {
                let head = if *behind {
                    "waiting behind an older run for staging space".to_string()
                } else {
                    "waiting for staging space".to_string()
                };
                format!(
                    "{head}: needs up to {}, {} of the {} budget in use (--staging-budget)",
                    human_bytes(*need),
                    human_bytes(*in_use),
                    human_bytes(*budget)
                )
            }
        }
    }
}

/// What admission says about one candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// It needs more than the whole budget, and nothing else is in flight: it runs alone.
    /// Failing it instead would never back that domain up, and the estimate is an upper
    /// bound (an incremental is counted as a full); alone, nothing shares staging with it and
    /// the engine still fails it `StagingFull` before exporting if the filesystem cannot hold it.
    AdmitAlone {
        need: u64,
        budget: u64,
    },
    Wait(Wait),
}

impl Decision {
    pub fn admitted(&self) -> bool {
        !matches!(self, Decision::Wait(_))
    }
}

impl Candidate {
    /// The staging it counts for once admitted.
    pub fn counted(self) -> u64 {
        match self {
            Candidate::New { need } => need,
            Candidate::Resumed { holds } => holds,
        }
    }
}

/// Decides for each candidate, oldest first, given the staging the runs in flight hold or
/// are expected to need (one entry per run in flight). Admitted candidates count against the
/// later ones.
pub fn admit(limits: Limits, in_flight: &[u64], candidates: &[Candidate]) -> Vec<Decision> {
    let mut flight = in_flight.to_vec();
    let mut staging_queue = false;
    candidates
        .iter()
        .map(|&c| {
            let d = admit_next(limits, &flight, staging_queue, c);
            match &d {
                Decision::Wait(Wait::Staging { .. }) => staging_queue = true,
                d if d.admitted() => flight.push(c.counted()),
                _ => {}
            }
            d
        })
        .collect()
}

/// Decides for one candidate. `older_waits_for_staging`: an older candidate of the same look
/// was told to wait for staging, so this one queues behind it.
pub fn admit_next(
    limits: Limits,
    in_flight: &[u64],
    older_waits_for_staging: bool,
    c: Candidate,
) -> Decision {
    let need = match c {
        Candidate::Resumed { .. } => return Decision::Admit,
        Candidate::New { need } => need,
    };
    let max = limits.max_runs.max(1);
    let running = in_flight.len();
    let in_use = in_flight.iter().fold(0u64, |a, b| a.saturating_add(*b));
    if running >= max {
        return Decision::Wait(Wait::Slots { running, max });
    }
    let Some(budget) = limits.staging_budget else {
        return Decision::Admit;
    };
    let wait = |behind| {
        Decision::Wait(Wait::Staging {
            need,
            in_use,
            budget,
            behind,
        })
    };
    if older_waits_for_staging {
        wait(true)
    } else if in_use.saturating_add(need) <= budget {
        Decision::Admit
    } else if running == 0 {
        Decision::AdmitAlone { need, budget }
    } else {
        wait(false)
    }
}

/// The `Admitted` condition a decision gives a run, at `now`.
pub fn admitted_condition(d: &Decision, generation: Option<i64>, now: Timestamp) -> Condition {
    let (status, reason, message) = match d {
        Decision::Admit => (
            true,
            reason::ADMITTED,
            "started within the host's run slots and staging budget".to_string(),
        ),
        Decision::AdmitAlone { need, budget } => (
            true,
            reason::ALONE_OVER_BUDGET,
            format!(
                "needs up to {}, more than the whole {} staging budget: started alone",
                human_bytes(*need),
                human_bytes(*budget)
            ),
        ),
        Decision::Wait(w) => (false, w.reason(), w.message()),
    };
    Condition::at(
        ConditionType::Admitted,
        status,
        reason,
        message,
        generation,
        now,
    )
}

/// Sets the run's `Admitted` condition; `true` when its status, reason or message changed
/// (a waiting run is written only then, not on every look).
pub fn set_admitted(run: &mut BackupRun, c: Condition) -> bool {
    let st = run.status.get_or_insert_with(Default::default);
    let same = st.conditions.iter().any(|o| {
        o.type_ == c.type_ && o.status == c.status && o.reason == c.reason && o.message == c.message
    });
    set_condition(&mut st.conditions, c);
    !same
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn new(mib: u64) -> Candidate {
        Candidate::New { need: mib * MIB }
    }

    fn short(d: &Decision) -> String {
        match d {
            Decision::Admit => "admit".into(),
            Decision::AdmitAlone { .. } => "alone".into(),
            Decision::Wait(Wait::Slots { .. }) => "slot".into(),
            Decision::Wait(Wait::Staging { behind: false, .. }) => "staging".into(),
            Decision::Wait(Wait::Staging { behind: true, .. }) => "behind".into(),
        }
    }

    /// (max runs, budget MiB, in flight MiB, candidates, expected)
    type Case = (
        usize,
        Option<u64>,
        Vec<u64>,
        Vec<Candidate>,
        Vec<&'static str>,
    );

    #[test]
    fn admission_follows_the_slot_limit_and_the_staging_budget_oldest_first() {
        let cases: Vec<Case> = vec![
            // Slots alone.
            (
                2,
                None,
                vec![],
                vec![new(1), new(1), new(1)],
                vec!["admit", "admit", "slot"],
            ),
            (1, None, vec![5], vec![new(1)], vec!["slot"]),
            (
                3,
                None,
                vec![5, 5],
                vec![new(9), new(9)],
                vec!["admit", "slot"],
            ),
            // A limit of 0 is read as 1: a host that runs nothing would never back up.
            (0, None, vec![], vec![new(1), new(1)], vec!["admit", "slot"]),
            // The budget: what fits goes, up to the budget exactly.
            (
                8,
                Some(100),
                vec![],
                vec![new(50), new(50), new(1)],
                vec!["admit", "admit", "staging"],
            ),
            (8, Some(100), vec![60], vec![new(40)], vec!["admit"]),
            (8, Some(100), vec![60], vec![new(41)], vec!["staging"]),
            // A smaller later run does not pass one waiting for staging.
            (
                8,
                Some(100),
                vec![60],
                vec![new(50), new(10)],
                vec!["staging", "behind"],
            ),
            // Slots are checked before the budget.
            (1, Some(100), vec![60], vec![new(50)], vec!["slot"]),
            // Too big for the budget even alone: it runs when nothing else does, alone.
            (
                8,
                Some(100),
                vec![],
                vec![new(150), new(1)],
                vec!["alone", "staging"],
            ),
            (8, Some(100), vec![1], vec![new(150)], vec!["staging"]),
            // A resumed run always goes on, past the slots and the budget, and counts.
            (
                1,
                Some(100),
                vec![90],
                vec![Candidate::Resumed { holds: 80 * MIB }, new(1)],
                vec!["admit", "slot"],
            ),
            (
                4,
                Some(100),
                vec![],
                vec![Candidate::Resumed { holds: 80 * MIB }, new(30)],
                vec!["admit", "staging"],
            ),
            // A need of nothing (the domain's disks could not be read: the run fails in
            // Preparing without staging) fits any budget.
            (8, Some(100), vec![100], vec![new(0)], vec!["admit"]),
        ];
        for (i, (max, budget, flight, cands, want)) in cases.into_iter().enumerate() {
            let limits = Limits {
                max_runs: max,
                staging_budget: budget.map(|b| b * MIB),
            };
            let flight: Vec<u64> = flight.iter().map(|m| m * MIB).collect();
            let got: Vec<String> = admit(limits, &flight, &cands).iter().map(short).collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn a_waiting_run_is_rewritten_only_when_its_reason_or_figures_change() {
        let now = Timestamp::UNIX_EPOCH;
        let mut run = BackupRun::new("r", crate::api::BackupRunSpec::new("d", "t"));
        let slots = Decision::Wait(Wait::Slots { running: 2, max: 2 });
        assert!(set_admitted(
            &mut run,
            admitted_condition(&slots, None, now)
        ));
        assert!(!set_admitted(
            &mut run,
            admitted_condition(&slots, None, now)
        ));
        let later = Decision::Wait(Wait::Slots { running: 3, max: 3 });
        assert!(set_admitted(
            &mut run,
            admitted_condition(&later, None, now)
        ));
        assert!(set_admitted(
            &mut run,
            admitted_condition(&Decision::Admit, None, now)
        ));
        let s = run.status.unwrap();
        assert_eq!(s.phase, crate::api::BackupPhase::Pending);
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(
            (
                s.conditions[0].status.as_str(),
                s.conditions[0].reason.as_str()
            ),
            ("True", "Admitted")
        );
    }

    #[test]
    fn a_waiting_run_says_why_with_a_stable_reason_word_and_the_figures() {
        let limits = Limits {
            max_runs: 2,
            staging_budget: Some(100 * MIB),
        };
        let d = admit(limits, &[60 * MIB, 30 * MIB], &[new(1)]);
        let Decision::Wait(w) = &d[0] else {
            panic!("{d:?}")
        };
        assert_eq!(w.reason(), "WaitingForSlot");
        assert!(w.message().contains("2 of 2 runs"), "{}", w.message());
        let d = admit(limits, &[60 * MIB], &[new(50)]);
        let Decision::Wait(w) = &d[0] else {
            panic!("{d:?}")
        };
        assert_eq!(w.reason(), "WaitingForStaging");
        assert_eq!(
            w.message(),
            "waiting for staging space: needs up to 50.0MiB, 60.0MiB of the 100.0MiB budget in use (--staging-budget)"
        );
    }
}
