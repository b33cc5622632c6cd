//! Changed-block tracking for raw and block disks, decided (pure): where a disk's overlay
//! lives, and what state each disk is in, read from the domain's persistent and live
//! definitions. libvirt is the record: an overlay named in the persistent XML is enabled from
//! the next start, one in the live XML is in use now.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::layout;
use crate::libvirt::domain_xml::{Disk, DomainFacts};

pub use crate::libvirt::domain_xml::{
    is_cbt_overlay as is_overlay, CBT_OVERLAY_SUFFIX as OVERLAY_SUFFIX,
};

/// The overlay of `disk` of `domain` in the directory the user chose.
pub fn overlay_path(dir: &Path, domain: &str, disk: &str) -> PathBuf {
    dir.join(format!(
        "{}-{disk}{OVERLAY_SUFFIX}",
        layout::domain_dir(domain)
    ))
}

/// A disk's changed-block tracking, as `snapback cbt status` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CbtState {
    /// A qcow2 disk: libvirt keeps its bitmaps itself.
    Native,
    /// A raw or block disk without an overlay: exported whole every run.
    Disabled,
    /// The overlay is defined; the running domain uses it from its next start.
    PendingRestart,
    /// The domain runs on (or, shut off, starts on) the overlay: incrementals are possible.
    Enabled,
    /// The overlay is no longer defined; the running domain uses it until its next start.
    DisablePendingRestart,
}

/// The state of one disk from its persistent definition and, for a running domain, its live
/// one.
pub fn state(persistent: &Disk, live: Option<&Disk>) -> CbtState {
    let defined = is_overlay(persistent.source());
    let in_use = live.map_or(defined, |d| is_overlay(d.source()));
    match (defined, in_use) {
        (true, true) => CbtState::Enabled,
        (true, false) => CbtState::PendingRestart,
        (false, true) => CbtState::DisablePendingRestart,
        (false, false) if persistent.format() == "qcow2" => CbtState::Native,
        (false, false) => CbtState::Disabled,
    }
}

/// Every disk's state; `live` is `None` for a shut-off domain.
pub fn states(persistent: &DomainFacts, live: Option<&DomainFacts>) -> Vec<(String, CbtState)> {
    persistent
        .disks
        .iter()
        .map(|d| {
            let now = live.and_then(|l| l.disks.iter().find(|x| x.name == d.name));
            (d.name.clone(), state(d, now))
        })
        .collect()
}

/// The disks `cbt enable` gives an overlay: raw files and block devices without one.
pub fn to_enable(persistent: &DomainFacts) -> Vec<&Disk> {
    persistent
        .disks
        .iter()
        .filter(|d| d.format() == "raw" && !is_overlay(d.source()))
        .filter(|d| d.kind != crate::libvirt::DiskKind::Network)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::parse_domain;

    fn facts(vdb: &str) -> DomainFacts {
        parse_domain(&format!(
            "<domain><name>web</name><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/web.qcow2'/><target dev='vda'/></disk>\
             {vdb}</devices></domain>"
        ))
        .unwrap()
    }

    const BARE: &str = "<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/web'/><target dev='vdb'/></disk>";
    const OVERLAID: &str = "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/o/web-vdb.snapback-cbt.qcow2'/><target dev='vdb'/></disk>";

    #[test]
    fn a_disks_state_follows_the_overlay_in_its_persistent_and_live_definitions() {
        use CbtState::*;
        let (bare, overlaid) = (facts(BARE), facts(OVERLAID));
        let rows = [
            ("shut off, bare", &bare, None, Disabled),
            ("shut off, overlaid", &overlaid, None, Enabled),
            (
                "defined, not yet started on it",
                &overlaid,
                Some(&bare),
                PendingRestart,
            ),
            ("running on it", &overlaid, Some(&overlaid), Enabled),
            (
                "undefined, still running on it",
                &bare,
                Some(&overlaid),
                DisablePendingRestart,
            ),
            ("running bare", &bare, Some(&bare), Disabled),
        ];
        for (case, persistent, live, want) in rows {
            let got = states(persistent, live);
            assert_eq!(got[0], ("vda".to_string(), Native), "{case}");
            assert_eq!(got[1], ("vdb".to_string(), want), "{case}");
        }
        assert_eq!(to_enable(&bare).len(), 1);
        assert!(
            to_enable(&overlaid).is_empty(),
            "an overlaid disk is not overlaid again"
        );
    }

    #[test]
    fn overlays_are_named_for_their_domain_and_disk_and_recognised_by_that_name() {
        let p = overlay_path(Path::new("/o"), "web", "vdb");
        assert_eq!(p, PathBuf::from("/o/web-vdb.snapback-cbt.qcow2"));
        assert!(is_overlay(p.to_str().unwrap()));
        assert!(!is_overlay("/i/web.qcow2"));
    }
}
