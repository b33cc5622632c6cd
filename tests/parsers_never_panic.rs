//! Every parser of outside input, fed arbitrary and near-valid input: it never panics, and
//! what it refuses comes with a message that says what is wrong.

use proptest::prelude::*;

use snapback::api::Hooks;
use snapback::catalog::layout::domain_dir;
use snapback::catalog::manifest::Manifest;
use snapback::catalog::select::parse_at;
use snapback::duplicity::log::{classify, collection_sets, LogParser};
use snapback::duplicity::{names, TargetUrl};
use snapback::engine::lvm::report as lvs_report;
use snapback::retention::rules::{parse_age, parse_size, RetentionSpec};
use snapback::schedule::Schedule;
use snapback::units::parse_duration;

/// Text that looks like the input it is fed to, so the fuzzing gets past the first character.
fn near(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(words).prop_map(str::to_string),
            "[ -~]{0,6}",
            "\\PC{0,3}",
        ],
        0..8,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn lvs_reports_are_read_or_refused_with_a_message(
        text in near(&["{", "}", "[", "]", "\"report\":", "\"lv\":", "{\"vg_name\":\"vg0\",",
            "\"lv_name\":\"web\",", "\"lv_size\":\"1073741824\",", "\"vg_free\":\"0\",",
            "\"vg_extent_size\":\"4194304\"", "\"lv_attr\":\"swi-I-s---\"", ",", "\"\""])
    ) {
        match lvs_report::parse(&text) {
            Ok(volumes) => for v in volumes {
                let _ = (v.is_thin(), v.is_snapshot(), v.is_invalid_snapshot());
            },
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn duplicity_log_lines_and_collection_status_never_panic(
        lines in prop::collection::vec(near(&["NOTICE ", "ERROR ", "WARNING ", ". ", "\n", "3 ",
            "Full ", "Incremental ", "Sun Nov 22 06:44:39 2026", "chain-complete", "16 1234 1 100"]), 0..40),
        code in any::<u32>(),
        text in "\\PC{0,200}",
    ) {
        let mut p = LogParser::default();
        let msgs: Vec<_> = lines.iter().filter_map(|l| p.line(l)).collect();
        for m in &msgs {
            let _ = m.transfer();
        }
        let _ = collection_sets(&msgs);
        let _ = classify(code, &text);
    }

    #[test]
    fn target_urls_are_parsed_or_refused_with_a_message(
        url in near(&["file://", "boto3+s3://", "s3://", "sftp://", "ftp://", "user:pw@", "/", "..", "host", ":22", "%2F", "?x=1"])
    ) {
        if let Err(e) = TargetUrl::parse(&url) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn schedules_and_time_zones_are_parsed_or_refused_with_a_message(
        expr in near(&["*", "*/5", "0", "1-5", ",", " ", "@daily", "@hourly", "MON", "JAN", "L", "#", "?"]),
        tz in prop::option::of(near(&["Europe/Berlin", "UTC", "America/", "../", "Etc/GMT+5"])),
    ) {
        if let Err(e) = Schedule::parse(&expr, tz.as_deref()) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn durations_ages_and_sizes_never_panic(
        s in near(&["1", "7", "30", "d", "h", "m", "s", "w", "y", "GiB", "MiB", "K", "-", ".", "99999999999999999999"])
    ) {
        if let Err(e) = parse_duration(&s) {
            prop_assert!(!e.is_empty());
        }
        if let Err(e) = parse_age(&s) {
            prop_assert!(!e.is_empty());
        }
        let _ = parse_size(&s);
    }

    #[test]
    fn retention_rules_and_hooks_files_from_yaml_never_panic(
        yaml in near(&["keepLast: ", "keepDaily: ", "keepWeekly: ", "maxAge: ", "maxFullBackups: ",
            "preSnapshot:\n", "- command: [", "]\n", "runIn: Guest\n", "onError: Fail\n",
            "timeoutSeconds: ", "5000000000", "-1", "\n", "  ", "'", "\""])
    ) {
        if let Ok(r) = serde_saphyr::from_str::<RetentionSpec>(&yaml) {
            if let Err(e) = r.validate() {
                prop_assert!(!e.to_string().is_empty());
            }
        }
        let _ = serde_saphyr::from_str::<Hooks>(&yaml);
    }

    #[test]
    fn manifests_read_from_the_target_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = serde_json::from_slice::<Manifest>(&bytes);
    }

    #[test]
    fn duplicity_file_names_and_restore_times_never_panic(
        name in near(&["duplicity-full.", "duplicity-inc.", "duplicity-new-signatures.", "20261130T043419Z",
            ".to.", ".manifest", ".vol1.difftar", ".gpg", "99999999T999999Z"]),
        at in near(&["2026-11-30T04:34:19Z", "latest", "web1-20261122", "..", "/", "+01:00", "."]),
    ) {
        let _ = names::parse(&name);
        let _ = names::next_set_time(jiff::Timestamp::now(), &[name.as_str()]);
        if let Err(e) = parse_at(Some(&at)) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn a_domain_name_never_leaves_its_directory_on_the_target(name in "\\PC{0,80}") {
        let d = domain_dir(&name);
        prop_assert!(!d.is_empty());
        prop_assert!(!d.contains('/') && !d.contains('\\'));
        prop_assert!(d != "." && d != ".." && !d.starts_with('.'));
    }

    #[test]
    fn config_dirs_with_arbitrary_yaml_load_or_are_refused_naming_the_file(
        yaml in near(&["apiVersion: snapback.dev/v1alpha1\n", "kind: BackupPolicy\n", "kind: BackupTarget\n",
            "metadata:\n  name: x\n", "spec:\n", "  schedule: '0 2 * * *'\n", "---\n", "  url: file:///t\n", "  - ", ":"])
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), &yaml).unwrap();
        if let Err(e) = snapback::standalone::config::load_dir(dir.path()) {
            prop_assert!(e.to_string().contains("policy.yaml"), "{}", e);
        }
    }
}
