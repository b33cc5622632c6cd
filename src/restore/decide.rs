//! The next step of a restore, decided purely from its recorded status and what was observed
//! on the host. Every re-run check lives here, so a restore resumed after a crash keeps the
//! work already done: fetched members whose checksums match, rebuilt disks, a domain already
//! defined under the recorded UUID, an in-place swap already made, old disks already renamed.

use crate::api::{RestorePhase, RestoreRequestSpec, RestoreRequestStatus};
use crate::libvirt::DomainState;

/// What was found on the host for the current phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Per chain member (as in `status.chainRuns`): its fetched files are whole and match the
    /// checksums recorded at backup time.
    pub members_fetched: Vec<bool>,
    /// Per restored disk (as in `status.disks`): the rebuilt image is at its final path.
    pub disks_present: Vec<bool>,
    /// The state of the domain the restore defines (by its recorded UUID), if it exists.
    pub defined: Option<DomainState>,
    /// A files restore: per path (as in `status.files.paths`), something is at its
    /// destination.
    pub files_present: Vec<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Choose the point and its chain, check the destination.
    Resolve,
    /// Fetch these chain members (indexes into `chainRuns`); the others are already verified.
    Fetch(Vec<usize>),
    /// A files restore: restore these paths (indexes into `status.files.paths`) into `to`,
    /// then end Succeeded; the others are restored already.
    RestoreFiles(Vec<usize>),
    /// Rebuild these disks (indexes into `disks`), then run the endRecovery hooks.
    Rebuild(Vec<usize>),
    /// Place these rebuilt disks (indexes into `disks`) where the VM will read them (KubeVirt:
    /// upload each into its DataVolume), before the VM is defined or swapped onto them.
    Place(Vec<usize>),
    /// Define the new domain from the backup's XML under the UUID recorded first.
    DefineNew,
    /// In place: preRecovery hooks, save the original XML, shut the domain down and
    /// redefine it on the restored disks.
    Swap,
    /// The domain is defined (or swapped) already: go on.
    Defined,
    /// Start the restored domain (unless it runs already) and check that it keeps running.
    Start {
        running: bool,
    },
    /// postRecovery hooks; in place, rename the replaced disks aside unless that was done.
    Recover {
        rename_old: bool,
    },
    Done,
}

pub fn decide(spec: &RestoreRequestSpec, s: &RestoreRequestStatus, o: &Observed) -> Step {
    let todo = |done: &[bool], n: usize| -> Vec<usize> {
        (0..n)
            .filter(|&i| !done.get(i).copied().unwrap_or(false))
            .collect()
    };
    match s.phase {
        RestorePhase::Pending | RestorePhase::Resolving => Step::Resolve,
        RestorePhase::Fetching if s.files.is_some() => {
            // A path counts as restored only when status says so and it is there.
            let paths = s.files.as_ref().map_or(&[][..], |f| &f.paths[..]);
            let done: Vec<bool> = paths
                .iter()
                .zip(o.files_present.iter().chain(std::iter::repeat(&false)))
                .map(|(p, present)| p.restored && *present)
                .collect();
            Step::RestoreFiles(todo(&done, paths.len()))
        }
        RestorePhase::Fetching => Step::Fetch(todo(&o.members_fetched, s.chain_runs.len())),
        RestorePhase::Rebuilding => {
            // A disk counts as rebuilt only when status says so and the file is there.
            let done: Vec<bool> = s
                .disks
                .iter()
                .zip(o.disks_present.iter().chain(std::iter::repeat(&false)))
                .map(|(d, present)| d.verified && *present)
                .collect();
            Step::Rebuild(todo(&done, s.disks.len()))
        }
        RestorePhase::Defining if s.disks.iter().any(|d| d.placed_as.is_some() && !d.placed) => {
            let placed: Vec<bool> = s
                .disks
                .iter()
                .map(|d| d.placed_as.is_none() || d.placed)
                .collect();
            Step::Place(todo(&placed, s.disks.len()))
        }
        RestorePhase::Defining if spec.in_place => {
            if s.swapped {
                Step::Defined
            } else {
                Step::Swap
            }
        }
        RestorePhase::Defining => {
            if s.defined_uuid.is_some() && o.defined.is_some() {
                Step::Defined
            } else {
                Step::DefineNew
            }
        }
        RestorePhase::Starting => Step::Start {
            running: o.defined == Some(DomainState::Running),
        },
        RestorePhase::Recovering => Step::Recover {
            rename_old: spec.in_place && s.replaced_disks.is_empty(),
        },
        RestorePhase::Succeeded | RestorePhase::Failed => Step::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PointRef, RestoredDisk};

    fn member(run: &str) -> PointRef {
        PointRef {
            run: run.into(),
            time: "2026-01-01T00:00:00Z".parse().unwrap(),
            type_: None,
            chain: run.into(),
            chain_index: 0,
        }
    }

    fn disk(name: &str, verified: bool) -> RestoredDisk {
        RestoredDisk {
            name: name.into(),
            path: format!("/images/{name}.qcow2"),
            virtual_size: 1,
            verified,
            device: false,
            ..Default::default()
        }
    }

    fn status(phase: RestorePhase) -> RestoreRequestStatus {
        RestoreRequestStatus {
            phase,
            chain_runs: vec![member("full"), member("inc1"), member("inc2")],
            disks: vec![disk("vda", true), disk("vdb", false)],
            ..Default::default()
        }
    }

    fn spec(in_place: bool) -> RestoreRequestSpec {
        let mut s: RestoreRequestSpec =
            serde_json::from_value(serde_json::json!({"domain": "web", "targetRef": "t"})).unwrap();
        s.in_place = in_place;
        s.new_name = (!in_place).then(|| "copy".to_string());
        s
    }

    #[test]
    fn each_phase_resumes_with_only_the_work_left() {
        type Case = (
            &'static str,
            bool,
            fn(&mut RestoreRequestStatus),
            Observed,
            Step,
        );
        let none: fn(&mut RestoreRequestStatus) = |_| {};
        let table: Vec<Case> = vec![
            (
                "new request",
                false,
                none,
                Observed::default(),
                Step::Resolve,
            ),
            (
                "nothing fetched yet",
                false,
                |s| s.phase = RestorePhase::Fetching,
                Observed::default(),
                Step::Fetch(vec![0, 1, 2]),
            ),
            (
                "the full was fetched before a crash",
                false,
                |s| s.phase = RestorePhase::Fetching,
                Observed {
                    members_fetched: vec![true, false, true],
                    ..Default::default()
                },
                Step::Fetch(vec![1]),
            ),
            (
                "a disk marked verified but deleted is rebuilt again",
                false,
                |s| s.phase = RestorePhase::Rebuilding,
                Observed {
                    disks_present: vec![false, true],
                    ..Default::default()
                },
                Step::Rebuild(vec![0, 1]),
            ),
            (
                "a verified disk at its path is kept",
                false,
                |s| s.phase = RestorePhase::Rebuilding,
                Observed {
                    disks_present: vec![true, false],
                    ..Default::default()
                },
                Step::Rebuild(vec![1]),
            ),
            (
                "as new: nothing defined yet",
                false,
                |s| s.phase = RestorePhase::Defining,
                Observed::default(),
                Step::DefineNew,
            ),
            (
                "as new: UUID recorded, libvirt has no such domain (crash before define)",
                false,
                |s| {
                    s.phase = RestorePhase::Defining;
                    s.defined_uuid = Some("u".into());
                },
                Observed::default(),
                Step::DefineNew,
            ),
            (
                "as new: defined before the crash",
                false,
                |s| {
                    s.phase = RestorePhase::Defining;
                    s.defined_uuid = Some("u".into());
                },
                Observed {
                    defined: Some(DomainState::ShutOff),
                    ..Default::default()
                },
                Step::Defined,
            ),
            (
                "placed disks: only the one not uploaded yet is placed, before the define",
                false,
                |s| {
                    s.phase = RestorePhase::Defining;
                    s.disks[0].placed_as = Some("web-copy-vda".into());
                    s.disks[0].placed = true;
                    s.disks[1].placed_as = Some("web-copy-vdb".into());
                },
                Observed::default(),
                Step::Place(vec![1]),
            ),
            (
                "in place: placed disks come before the swap",
                true,
                |s| {
                    s.phase = RestorePhase::Defining;
                    s.disks[1].placed_as = Some("web-vdb-r".into());
                },
                Observed::default(),
                Step::Place(vec![1]),
            ),
            (
                "in place: not swapped yet",
                true,
                |s| s.phase = RestorePhase::Defining,
                Observed::default(),
                Step::Swap,
            ),
            (
                "in place: swapped before the crash",
                true,
                |s| {
                    s.phase = RestorePhase::Defining;
                    s.swapped = true;
                },
                Observed::default(),
                Step::Defined,
            ),
            (
                "starting a domain that is off",
                false,
                |s| s.phase = RestorePhase::Starting,
                Observed {
                    defined: Some(DomainState::ShutOff),
                    ..Default::default()
                },
                Step::Start { running: false },
            ),
            (
                "started before the crash",
                false,
                |s| s.phase = RestorePhase::Starting,
                Observed {
                    defined: Some(DomainState::Running),
                    ..Default::default()
                },
                Step::Start { running: true },
            ),
            (
                "in place: old disks still to rename",
                true,
                |s| s.phase = RestorePhase::Recovering,
                Observed::default(),
                Step::Recover { rename_old: true },
            ),
            (
                "in place: old disks renamed before the crash",
                true,
                |s| {
                    s.phase = RestorePhase::Recovering;
                    s.replaced_disks = vec!["/images/vda.qcow2.snapback-replaced-r".into()];
                },
                Observed::default(),
                Step::Recover { rename_old: false },
            ),
            (
                "as new: nothing to rename",
                false,
                |s| s.phase = RestorePhase::Recovering,
                Observed::default(),
                Step::Recover { rename_old: false },
            ),
            (
                "finished",
                false,
                |s| s.phase = RestorePhase::Succeeded,
                Observed::default(),
                Step::Done,
            ),
        ];
        for (case, in_place, set, observed, want) in table {
            let mut s = status(RestorePhase::Pending);
            set(&mut s);
            assert_eq!(decide(&spec(in_place), &s, &observed), want, "{case}");
        }
    }

    #[test]
    fn a_files_restore_resumes_with_only_the_paths_not_restored_or_gone_since() {
        use crate::api::{RestoredFiles, RestoredPath};
        let mut spec = spec(false);
        spec.new_name = None;
        let path = |restored: bool| RestoredPath {
            asked: "/etc".into(),
            found: "vdb/etc".into(),
            path: "/r/etc".into(),
            restored,
            ..Default::default()
        };
        let mut s = RestoreRequestStatus {
            phase: RestorePhase::Fetching,
            files: Some(RestoredFiles {
                paths: vec![path(true), path(false), path(true)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let seen = |v: &[bool]| Observed {
            files_present: v.to_vec(),
            ..Default::default()
        };
        assert_eq!(
            decide(&spec, &s, &seen(&[true, true, true])),
            Step::RestoreFiles(vec![1])
        );
        assert_eq!(
            decide(&spec, &s, &seen(&[true, false, false])),
            Step::RestoreFiles(vec![1, 2]),
            "a path recorded restored but gone from to is restored again"
        );
        s.files.as_mut().unwrap().paths[1].restored = true;
        assert_eq!(
            decide(&spec, &s, &seen(&[true, true, true])),
            Step::RestoreFiles(vec![]),
            "nothing left: the step only counts and ends"
        );
        s.phase = RestorePhase::Pending;
        assert_eq!(decide(&spec, &s, &Observed::default()), Step::Resolve);
    }
}
