//! Which duplicity files on a target make up a chain (pure).

use jiff::Timestamp;

use crate::duplicity::names::{parse, SetKind};

/// The files of the chain whose full was taken at `start` and whose last set is at `end`,
/// newest first: deleting in this order leaves a valid, shorter chain if it is interrupted.
pub fn chain_files(names: &[String], start: Timestamp, end: Timestamp) -> Vec<String> {
    let mut hits: Vec<(Timestamp, &String)> = Vec::new();
    for n in names {
        let Some(f) = parse(n) else { continue };
        let member = match f.kind {
            SetKind::Full | SetKind::FullSignatures => f.start == start,
            SetKind::Incremental | SetKind::NewSignatures => f.start >= start && f.end <= end,
        };
        if member {
            hits.push((f.end, n));
        }
    }
    hits.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(y.1)));
    hits.into_iter().map(|(_, n)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_its_full_and_the_incrementals_between_its_start_and_end() {
        let names: Vec<String> = [
            "duplicity-full.20260101T000000Z.manifest",
            "duplicity-full.20260101T000000Z.vol1.difftar",
            "duplicity-full-signatures.20260101T000000Z.sigtar",
            "duplicity-inc.20260101T000000Z.to.20260102T000000Z.manifest",
            "duplicity-new-signatures.20260101T000000Z.to.20260102T000000Z.sigtar",
            "duplicity-inc.20260102T000000Z.to.20260103T000000Z.vol1.difftar",
            "duplicity-full.20260104T000000Z.manifest",
            "duplicity-inc.20260104T000000Z.to.20260105T000000Z.manifest",
            "unrelated.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let files = chain_files(&names, t("2026-01-01T00:00:00Z"), t("2026-01-03T00:00:00Z"));
        assert_eq!(files.len(), 6);
        assert_eq!(
            files[0], "duplicity-inc.20260102T000000Z.to.20260103T000000Z.vol1.difftar",
            "newest first"
        );
        assert!(
            files[4..].iter().all(|f| f.contains("full")),
            "the full goes last"
        );
        assert!(!files.iter().any(|f| f.contains("20260104")));
    }
}
