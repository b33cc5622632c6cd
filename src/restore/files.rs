//! What a files restore (`spec.files`) decides from the spec and duplicity's view of the
//! domain's files chain (pure): whether the spec is well said, which backup set is the point,
//! which run made it, and where each path found lands under `to`. `steps/files.rs` gathers
//! (the target) and applies.

use std::path::Path;

use jiff::Timestamp;

use crate::api::{FailureReason, FilesRestore, Hooks, RestoreRequestSpec, RestoredPath};
use crate::catalog::select::At;
use crate::duplicity::log::BackupSet;
use crate::error::StepError;
use crate::files::point::POINT_DIR;
use crate::files::select::{check_guest_path, locate};

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, message)
}

/// A files restore names paths and an absolute `to`, and none of the image restore's fields.
pub fn check_spec(spec: &RestoreRequestSpec, f: &FilesRestore) -> Result<(), StepError> {
    let mut image_fields = Vec::new();
    if spec.new_name.is_some() {
        image_fields.push("newName");
    }
    if spec.in_place {
        image_fields.push("inPlace");
    }
    if spec.storage_dir.is_some() {
        image_fields.push("storageDir");
    }
    if spec.start {
        image_fields.push("start");
    }
    if spec.resume {
        image_fields.push("resume");
    }
    if !spec.target_devices.is_empty() {
        image_fields.push("targetDevices");
    }
    if spec.overwrite {
        image_fields.push("overwrite");
    }
    if spec.disk_format.is_some() {
        image_fields.push("diskFormat");
    }
    // The recovery hooks run around a domain's restore; a files restore has none.
    if spec.hooks != Hooks::default() {
        image_fields.push("hooks");
    }
    if !image_fields.is_empty() {
        return Err(invalid(format!(
            "files restores files into a directory: it takes none of {}",
            image_fields.join(", ")
        )));
    }
    if f.paths.is_empty() {
        return Err(invalid(
            "files.paths is empty: name the guest paths to restore, e.g. /etc/hosts or vdb1:/etc",
        ));
    }
    for p in &f.paths {
        let path = match p.split_once(":/") {
            Some((fs, rest)) if !fs.is_empty() && !fs.contains('/') => format!("/{rest}"),
            _ => p.clone(),
        };
        check_guest_path(&path).map_err(|e| invalid(format!("files.paths: {e}")))?;
    }
    let to = Path::new(&f.to);
    if !to.is_absolute() {
        return Err(invalid(format!(
            "files.to '{}' is not an absolute directory",
            f.to
        )));
    }
    if f.to.split('/').any(|c| c == "..") || f.to.chars().any(char::is_control) {
        return Err(invalid(format!(
            "files.to {:?} may not contain '..' or control characters",
            f.to
        )));
    }
    if f.to.trim_end_matches('/').is_empty() {
        return Err(invalid(
            "files.to is /: the guest's files would land over the host's; name a directory",
        ));
    }
    Ok(())
}

/// The set of the point asked for, oldest first in `sets`: the newest, or the newest made at
/// or before a time (whole seconds, as points are listed). For a run, the newest: the search
/// for its set, by the run's name in each set's listing (`point_run`), starts there.
pub fn choose_set(sets: &[BackupSet], at: &At) -> Result<usize, String> {
    match at {
        At::Latest | At::Run(_) if sets.is_empty() => Err("no sets".into()),
        At::Latest | At::Run(_) => Ok(sets.len() - 1),
        At::Time(t) => sets
            .iter()
            .rposition(|s| s.time.as_second() <= t.as_second())
            .ok_or_else(|| {
                format!(
                    "at {t} is before the first files-mode backup ({})",
                    sets.first().map(|s| s.time.to_string()).unwrap_or_default()
                )
            }),
    }
}

/// The run that made a point, from its listing (tree paths): its manifest is
/// `@snapback/<run>.manifest.json`, the only one there, as each point's tree is made afresh.
pub fn point_run(listing: &[String]) -> Option<String> {
    listing.iter().find_map(|l| {
        l.strip_prefix(POINT_DIR)?
            .strip_prefix('/')?
            .strip_suffix(".manifest.json")
            .filter(|r| !r.is_empty() && !r.contains('/'))
            .map(str::to_string)
    })
}

/// Each asked path found in the point's listing, and where it lands under `to`: at its guest
/// path when one filesystem holds it, under `<fs>/` for each when several do. A path that
/// is not there fails the restore, naming it.
pub fn plan_paths(
    listing: &[String],
    asked: &[String],
    to: &Path,
    point: Timestamp,
) -> Result<Vec<RestoredPath>, StepError> {
    let mut out = Vec::new();
    for want in asked {
        let hits = locate(listing, want).map_err(invalid)?;
        if hits.is_empty() {
            return Err(invalid(format!(
                "{want} is not in the files-mode backup of {point}"
            )));
        }
        for h in &hits {
            let dest = crate::files::restore::destination(to, h, hits.len());
            let path = dest.display().to_string();
            // Two asked paths that land on the same place are restored once.
            if out.iter().any(|p: &RestoredPath| p.path == path) {
                continue;
            }
            out.push(RestoredPath {
                asked: want.clone(),
                found: h.clone(),
                path,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

/// The tree paths of `listing` under `found` (itself included), relative to it: what a
/// restore of `found` brings back, for counting it.
pub fn under<'a>(listing: &'a [String], found: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    listing.iter().filter_map(move |l| {
        if l == found {
            Some("")
        } else {
            l.strip_prefix(found)?.strip_prefix('/')
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> RestoreRequestSpec {
        let mut base = serde_json::json!({"domain": "web", "targetRef": "t"});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_files_spec_is_refused_with_the_reason_when_it_is_not_well_said() {
        let files = serde_json::json!({"paths": ["/etc/hosts"], "to": "/srv/restored"});
        let cases: Vec<(serde_json::Value, Option<&str>)> = vec![
            (serde_json::json!({ "files": files }), None),
            (
                serde_json::json!({"files": {"paths": ["vdb1:/etc", "@snapback:/", "/"], "to": "/r/"}}),
                None,
            ),
            (
                serde_json::json!({"files": files, "newName": "x"}),
                Some("it takes none of newName"),
            ),
            (
                serde_json::json!({"files": files, "inPlace": true, "diskFormat": "Raw"}),
                Some("it takes none of inPlace, diskFormat"),
            ),
            (
                serde_json::json!({"files": files, "storageDir": "/s", "start": true,
                    "targetDevices": {"vdb": "/dev/x"}, "overwrite": true}),
                Some("storageDir, start, targetDevices, overwrite"),
            ),
            (
                serde_json::json!({"files": files,
                    "hooks": {"postRecovery": [{"command": ["true"]}]}}),
                Some("it takes none of hooks"),
            ),
            (
                serde_json::json!({"files": {"paths": [], "to": "/r"}}),
                Some("files.paths is empty"),
            ),
            (
                serde_json::json!({"files": {"paths": ["etc/hosts"], "to": "/r"}}),
                Some("'etc/hosts' is not an absolute guest path"),
            ),
            (
                serde_json::json!({"files": {"paths": ["vdb1:/../x"], "to": "/r"}}),
                Some("may not contain '..'"),
            ),
            (
                serde_json::json!({"files": {"paths": ["/etc"], "to": "restored"}}),
                Some("files.to 'restored' is not an absolute directory"),
            ),
            (
                serde_json::json!({"files": {"paths": ["/etc"], "to": "/srv/../etc"}}),
                Some("may not contain '..'"),
            ),
            (
                serde_json::json!({"files": {"paths": ["/etc"], "to": "/"}}),
                Some("files.to is /"),
            ),
        ];
        for (v, want) in cases {
            let s = spec(v.clone());
            let got = check_spec(&s, s.files.as_ref().unwrap());
            match want {
                None => assert!(got.is_ok(), "{v}: {got:?}"),
                Some(w) => {
                    let e = got.expect_err(&v.to_string());
                    assert_eq!(e.reason, FailureReason::InvalidSpec);
                    assert!(e.message.contains(w), "{v}: {}", e.message);
                }
            }
        }
    }

    fn set(t: &str) -> BackupSet {
        let time: Timestamp = t.parse().unwrap();
        BackupSet {
            time,
            full: false,
            chain_start: time,
        }
    }

    #[test]
    fn the_point_is_the_newest_set_or_the_newest_at_or_before_the_time() {
        let sets = [set("2026-11-01T10:00:00Z"), set("2026-11-02T10:00:00Z")];
        let at = |s: &str| At::Time(s.parse().unwrap());
        assert_eq!(choose_set(&sets, &At::Latest), Ok(1));
        assert_eq!(choose_set(&sets, &at("2026-11-02T10:00:00.7Z")), Ok(1));
        assert_eq!(choose_set(&sets, &at("2026-11-02T09:59:59Z")), Ok(0));
        let e = choose_set(&sets, &at("2026-10-01T00:00:00Z")).unwrap_err();
        assert!(e.contains("before the first files-mode backup"), "{e}");
        assert!(choose_set(&[], &At::Latest).is_err());
    }

    fn listing() -> Vec<String> {
        [
            "@snapback",
            "@snapback/web-20261102-1000.domain.xml",
            "@snapback/web-20261102-1000.manifest.json",
            "vdb",
            "vdb/etc",
            "vdb/etc/hosts",
            "vdb/etc/app",
            "vdb/etc/app/x.manifest.json",
            "vdc1",
            "vdc1/etc",
            "vdc1/etc/hosts",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn the_run_of_a_point_is_named_by_its_own_manifest_not_a_guest_file() {
        assert_eq!(point_run(&listing()).as_deref(), Some("web-20261102-1000"));
        assert_eq!(point_run(&listing()[3..]), None);
    }

    #[test]
    fn paths_land_at_their_guest_path_or_under_each_filesystem_that_holds_them() {
        let t: Timestamp = "2026-11-02T10:00:00Z".parse().unwrap();
        let to = Path::new("/r");
        let got = plan_paths(
            &listing(),
            &[
                "vdb:/etc/app".into(),
                "/etc/hosts".into(),
                "/etc/app".into(),
            ],
            to,
            t,
        )
        .unwrap();
        let found: Vec<(&str, &str)> = got
            .iter()
            .map(|p| (p.found.as_str(), p.path.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("vdb/etc/app", "/r/etc/app"),
                ("vdb/etc/hosts", "/r/vdb/etc/hosts"),
                ("vdc1/etc/hosts", "/r/vdc1/etc/hosts"),
            ]
        );
        let e = plan_paths(&listing(), &["/etc/passwd".into()], to, t).unwrap_err();
        assert_eq!(e.reason, FailureReason::InvalidSpec);
        assert!(e
            .message
            .contains("/etc/passwd is not in the files-mode backup of 2026-11-02T10:00:00Z"));
        let own = plan_paths(&listing(), &["@snapback:/".into()], to, t).unwrap();
        assert_eq!(own[0].path, "/r/");
    }

    #[test]
    fn what_a_path_brings_back_is_itself_and_what_is_under_it() {
        let l = listing();
        let got: Vec<&str> = under(&l, "vdb/etc").collect();
        assert_eq!(got, ["", "hosts", "app", "app/x.manifest.json"]);
        assert_eq!(under(&l, "vdb/et").count(), 0);
    }
}
