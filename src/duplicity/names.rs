//! What duplicity's file names on a target say (pure): which set a file belongs to and when
//! that set was taken. duplicity names every set by the second it starts, so these times are
//! also what keeps two backups on one target apart.

use jiff::Timestamp;

/// The kind of backup set a duplicity file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// `duplicity-full.T.*`: a full set's manifest or volumes.
    Full,
    /// `duplicity-full-signatures.T.*`
    FullSignatures,
    /// `duplicity-inc.A.to.B.*`: an incremental set's manifest or volumes.
    Incremental,
    /// `duplicity-new-signatures.A.to.B.*`
    NewSignatures,
}

/// One file of a backup set: its kind and times (`start` is the parent's time for an
/// incremental, the set's own time for a full; `end` is the set's own time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetFile {
    pub kind: SetKind,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// duplicity's time format in file names: `20261130T043419Z` (UTC, whole seconds).
pub fn parse_time(s: &str) -> Option<Timestamp> {
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", s)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// Reads a file name; `None` for anything that is not a duplicity backup set's file.
pub fn parse(name: &str) -> Option<SetFile> {
    let mut parts = name.split('.');
    let kind = match parts.next()? {
        "duplicity-full" => SetKind::Full,
        "duplicity-full-signatures" => SetKind::FullSignatures,
        "duplicity-inc" => SetKind::Incremental,
        "duplicity-new-signatures" => SetKind::NewSignatures,
        _ => return None,
    };
    let first = parse_time(parts.next()?)?;
    match kind {
        SetKind::Full | SetKind::FullSignatures => Some(SetFile {
            kind,
            start: first,
            end: first,
        }),
        SetKind::Incremental | SetKind::NewSignatures => {
            if parts.next()? != "to" {
                return None;
            }
            let end = parse_time(parts.next()?)?;
            (first < end).then_some(SetFile {
                kind,
                start: first,
                end,
            })
        }
    }
}

/// The newest set time among the names, partial sets included.
pub fn newest_time<S: AsRef<str>>(names: &[S]) -> Option<Timestamp> {
    names
        .iter()
        .filter_map(|n| parse(n.as_ref()))
        .map(|f| f.end)
        .max()
}

/// The time of the newest complete set: duplicity uploads a set's manifest last, so a set
/// with its manifest on the target is whole. (Encrypted manifests end in `.manifest.gpg`.)
pub fn newest_complete_time<S: AsRef<str>>(names: &[S]) -> Option<Timestamp> {
    complete_sets(names).iter().map(|f| f.end).max()
}

/// The backup sets (full and incremental) whose manifest is on the target, oldest first:
/// every set that was uploaded whole, whatever has happened to its volumes since.
pub fn complete_sets<S: AsRef<str>>(names: &[S]) -> Vec<SetFile> {
    let mut sets: Vec<SetFile> = names
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| n.ends_with(".manifest") || n.ends_with(".manifest.gpg"))
        .filter_map(parse)
        .filter(|f| matches!(f.kind, SetKind::Full | SetKind::Incremental))
        .collect();
    sets.sort_by_key(|f| (f.end, f.start));
    sets.dedup();
    sets
}

/// The number of a backup set's volume file (`duplicity-inc.A.to.B.vol3.difftar.gpg`: 3);
/// `None` for manifests, signatures and anything else.
pub fn volume_number(name: &str) -> Option<u32> {
    let f = parse(name)?;
    if !matches!(f.kind, SetKind::Full | SetKind::Incremental) {
        return None;
    }
    name.split('.')
        .find_map(|p| p.strip_prefix("vol")?.parse().ok())
}

/// Whether the complete set `set` has lost a volume, by the names alone: duplicity numbers a
/// set's volumes 1, 2, ... and writes at least one, so a set with its manifest but no volume,
/// or with a gap in the numbers, lost one. (A lost last volume does not show in the names;
/// reading the set then fails instead.)
pub fn lost_volume<S: AsRef<str>>(names: &[S], set: &SetFile) -> bool {
    let vols: std::collections::BTreeSet<u32> = names
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| parse(n).is_some_and(|f| f == *set))
        .filter_map(volume_number)
        .collect();
    vols.is_empty() || vols.last().copied() != Some(vols.len() as u32)
}

/// A complete set's place in its chain, read from the file names alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub set: SetFile,
    /// The time of the full the chain starts from; for an incremental whose parent is not on
    /// the target, its parent's time (the chain it was made for).
    pub chain_start: Timestamp,
    /// Whether every set between the chain's full and this one is on the target (the full
    /// itself: always).
    pub linked: bool,
}

/// Every complete set with its chain, oldest first. An incremental belongs to the chain of
/// the set it was made from (its start time is that set's own time), as duplicity links
/// them; this holds whatever has happened to any set's volumes, where duplicity's own
/// collection leaves out a full without volumes and with it every set after it.
pub fn chain_links<S: AsRef<str>>(names: &[S]) -> Vec<ChainLink> {
    let mut links: Vec<ChainLink> = Vec::new();
    for set in complete_sets(names) {
        let link = match set.kind {
            SetKind::Full => ChainLink {
                set,
                chain_start: set.end,
                linked: true,
            },
            _ => match links.iter().find(|l| l.set.end == set.start) {
                Some(parent) => ChainLink {
                    set,
                    chain_start: parent.chain_start,
                    linked: parent.linked,
                },
                None => ChainLink {
                    set,
                    chain_start: set.start,
                    linked: false,
                },
            },
        };
        links.push(link);
    }
    links
}

/// The time to give duplicity for a new set (`--current-time`): now, or one second after the
/// newest set on the target when the clock has not passed it (two runs in one second, a clock
/// stepped back, another host's clock ahead). Two sets with one time overwrite each other's
/// files, and two chains with one time break every later duplicity call on the target.
pub fn next_set_time<S: AsRef<str>>(now: Timestamp, names: &[S]) -> i64 {
    let now = now.as_second();
    match newest_time(names) {
        Some(t) if t.as_second() >= now => t.as_second() + 1,
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn full_and_incremental_names_give_their_set_times() {
        assert_eq!(
            parse("duplicity-full.20260101T000000Z.vol1.difftar.gpg"),
            Some(SetFile {
                kind: SetKind::Full,
                start: t("2026-01-01T00:00:00Z"),
                end: t("2026-01-01T00:00:00Z"),
            })
        );
        assert_eq!(
            parse("duplicity-new-signatures.20260101T000000Z.to.20260102T030405Z.sigtar.gz"),
            Some(SetFile {
                kind: SetKind::NewSignatures,
                start: t("2026-01-01T00:00:00Z"),
                end: t("2026-01-02T03:04:05Z"),
            })
        );
    }

    #[test]
    fn other_files_and_malformed_names_are_not_sets() {
        for n in [
            "",
            "unrelated.txt",
            "duplicity-full",
            "duplicity-full.notatime.manifest",
            "duplicity-inc.20260101T000000Z.manifest",
            "duplicity-inc.20260101T000000Z.from.20260102T000000Z.manifest",
            "duplicity-inc.20260102T000000Z.to.20260101T000000Z.manifest",
            "duplicity-full.20261399T000000Z.manifest",
        ] {
            assert_eq!(parse(n), None, "{n}");
        }
    }

    #[test]
    fn a_new_set_takes_the_clock_when_the_target_is_older() {
        let names = ["duplicity-full.20260101T000000Z.manifest"];
        assert_eq!(
            next_set_time(t("2026-01-01T00:00:05Z"), &names),
            t("2026-01-01T00:00:05Z").as_second()
        );
        assert_eq!(
            next_set_time::<&str>(t("2026-01-01T00:00:05.9Z"), &[]),
            t("2026-01-01T00:00:05Z").as_second()
        );
    }

    #[test]
    fn a_new_set_in_the_same_second_or_behind_the_target_comes_one_second_after_the_newest() {
        let names = [
            "duplicity-full.20260101T000000Z.manifest",
            "duplicity-inc.20260101T000000Z.to.20260101T000010Z.manifest",
            "duplicity-new-signatures.20260101T000000Z.to.20260101T000010Z.sigtar.gz",
        ];
        let after = t("2026-01-01T00:00:11Z").as_second();
        assert_eq!(next_set_time(t("2026-01-01T00:00:10Z"), &names), after);
        assert_eq!(next_set_time(t("2026-01-01T00:00:10.5Z"), &names), after);
        // The clock was stepped back by an hour.
        assert_eq!(next_set_time(t("2025-12-31T23:00:00Z"), &names), after);
    }

    #[test]
    fn the_newest_complete_set_is_the_newest_with_a_manifest() {
        let names = [
            "duplicity-full.20260101T000000Z.manifest.gpg",
            "duplicity-inc.20260101T000000Z.to.20260101T000010Z.manifest.gpg",
            "duplicity-inc.20260101T000010Z.to.20260101T000020Z.vol1.difftar.gpg",
        ];
        assert_eq!(
            newest_complete_time(&names),
            Some(t("2026-01-01T00:00:10Z"))
        );
        assert_eq!(newest_complete_time::<&str>(&[]), None);
    }

    #[test]
    fn a_partial_set_counts_as_taken() {
        let names = ["duplicity-full.20260101T000000Z.vol1.difftar"];
        assert_eq!(
            next_set_time(t("2026-01-01T00:00:00Z"), &names),
            t("2026-01-01T00:00:01Z").as_second()
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_set_without_a_volume_or_with_a_gap_in_its_volumes_lost_one() {
        let n = names(&[
            "duplicity-full.20260101T000000Z.manifest.gpg",
            "duplicity-full.20260101T000000Z.vol1.difftar.gpg",
            "duplicity-full.20260101T000000Z.vol2.difftar.gpg",
            "duplicity-full-signatures.20260101T000000Z.sigtar.gpg",
            "duplicity-inc.20260101T000000Z.to.20260101T000010Z.manifest.gpg",
            "duplicity-new-signatures.20260101T000000Z.to.20260101T000010Z.sigtar.gpg",
            "duplicity-inc.20260101T000010Z.to.20260101T000020Z.manifest.gpg",
            "duplicity-inc.20260101T000010Z.to.20260101T000020Z.vol1.difftar.gpg",
            "duplicity-inc.20260101T000010Z.to.20260101T000020Z.vol3.difftar.gpg",
        ]);
        let lost: Vec<Timestamp> = complete_sets(&n)
            .iter()
            .filter(|s| lost_volume(&n, s))
            .map(|s| s.end)
            .collect();
        assert_eq!(
            lost,
            [t("2026-01-01T00:00:10Z"), t("2026-01-01T00:00:20Z")],
            "the full has volumes 1 and 2; the first incremental none, the second a gap"
        );
        assert_eq!(
            volume_number("duplicity-inc.20260101T000010Z.to.20260101T000020Z.vol12.difftar.gz"),
            Some(12)
        );
        assert_eq!(
            volume_number("duplicity-full-signatures.20260101T000000Z.sigtar.gpg"),
            None
        );
    }

    #[test]
    fn every_set_after_a_full_belongs_to_its_chain_even_when_a_set_between_lost_its_volumes() {
        let n = names(&[
            // The full lost its only volume: duplicity's collection drops its whole chain.
            "duplicity-full.20260101T000000Z.manifest",
            "duplicity-inc.20260101T000000Z.to.20260101T000010Z.manifest",
            "duplicity-inc.20260101T000000Z.to.20260101T000010Z.vol1.difftar",
            "duplicity-inc.20260101T000010Z.to.20260101T000020Z.manifest",
            "duplicity-inc.20260101T000010Z.to.20260101T000020Z.vol1.difftar",
            "duplicity-full.20260101T000030Z.manifest",
            "duplicity-full.20260101T000030Z.vol1.difftar",
            // Its parent (00:40) is gone altogether.
            "duplicity-inc.20260101T000040Z.to.20260101T000050Z.manifest",
        ]);
        let got: Vec<(Timestamp, Timestamp, bool)> = chain_links(&n)
            .iter()
            .map(|l| (l.set.end, l.chain_start, l.linked))
            .collect();
        let c0 = t("2026-01-01T00:00:00Z");
        let c1 = t("2026-01-01T00:00:30Z");
        assert_eq!(
            got,
            [
                (c0, c0, true),
                (t("2026-01-01T00:00:10Z"), c0, true),
                (t("2026-01-01T00:00:20Z"), c0, true),
                (c1, c1, true),
                (t("2026-01-01T00:00:50Z"), t("2026-01-01T00:00:40Z"), false),
            ]
        );
    }
}
