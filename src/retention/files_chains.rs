//! The points of a files-mode target (pure). A files point carries no manifest of its own on
//! the target (its manifest is inside the file tree, under `@snapback`), so retention reads
//! the chain from duplicity's file names alone: each complete set is a point, named by its
//! set time, in the chain of the full it was made from.

use jiff::Timestamp;

use super::plan::Point;
use crate::duplicity::names::{chain_links, lost_volume, SetKind};

/// A files chain's name: `files-` and its full's set time.
pub fn chain_name(start: Timestamp) -> String {
    format!("files-{}", start.strftime("%Y%m%dT%H%M%SZ"))
}

/// Every complete set of a files target as a point, oldest first, with its chain's start and
/// its own set time (which name its files on the target).
pub fn files_points<S: AsRef<str>>(names: &[S]) -> Vec<(Point, Timestamp, Timestamp)> {
    chain_links(names)
        .into_iter()
        .map(|l| {
            let broken = if !l.linked {
                Some("a set before it in its chain is missing from the target".to_string())
            } else if lost_volume(names, &l.set) {
                Some("a volume of this set is missing from the target".to_string())
            } else {
                None
            };
            let point = Point {
                id: l.set.end.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                time: l.set.end,
                chain: chain_name(l.chain_start),
                full: l.set.kind == SetKind::Full,
                // Unknown from the names: `maxTotalSize` does not apply to files chains.
                size: 0,
                broken,
            };
            (point, l.chain_start, l.set.end)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_complete_set_is_a_point_in_the_chain_of_its_full() {
        let names = [
            "duplicity-full.20260101T000000Z.manifest",
            "duplicity-full.20260101T000000Z.vol1.difftar.gz",
            "duplicity-inc.20260101T000000Z.to.20260102T000000Z.manifest",
            "duplicity-inc.20260101T000000Z.to.20260102T000000Z.vol1.difftar.gz",
            "duplicity-full.20260103T000000Z.manifest",
            "duplicity-full.20260103T000000Z.vol1.difftar.gz",
            // Being written: no manifest yet, so not a point.
            "duplicity-inc.20260103T000000Z.to.20260104T000000Z.vol1.difftar.gz",
            // Its volume is gone.
            "duplicity-inc.20260103T000000Z.to.20260105T000000Z.manifest",
        ];
        let got: Vec<(String, String, bool, bool)> = files_points(&names)
            .into_iter()
            .map(|(p, _, _)| (p.id, p.chain, p.full, p.broken.is_some()))
            .collect();
        let want = [
            (
                "2026-01-01T00:00:00Z",
                "files-20260101T000000Z",
                true,
                false,
            ),
            (
                "2026-01-02T00:00:00Z",
                "files-20260101T000000Z",
                false,
                false,
            ),
            (
                "2026-01-03T00:00:00Z",
                "files-20260103T000000Z",
                true,
                false,
            ),
            (
                "2026-01-05T00:00:00Z",
                "files-20260103T000000Z",
                false,
                true,
            ),
        ]
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c, d));
        assert_eq!(got, want);
    }
}
