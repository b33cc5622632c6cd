//! The point's own files in a files-mode tree. An image point stores its manifest, domain XML,
//! checkpoint XML and firmware state (UEFI variables, TPM) beside the exports; a files point
//! uploads a tree of guest filesystems instead, so those files go into one more top directory
//! of that tree. Its name starts with `@`, which no guest filesystem's name can (they are disk
//! and partition names such as `vdb1`, `VG-LV` with LVM's character set, or `mdN`).

use std::path::Path;

/// The tree's directory holding the point's own files (`snapback restore --files @snapback:/`).
pub const POINT_DIR: &str = "@snapback";

/// Puts every file of `staging` except the disks' exports into `<tree>/@snapback`, and
/// returns their names. Hard links where it can (staging and the tree are siblings, so on one
/// filesystem), copies otherwise. The tree is made afresh by each attach, so a resumed upload
/// places them again.
pub fn place_point_files(
    staging: &Path,
    tree: &Path,
    exports: &[String],
) -> std::io::Result<Vec<String>> {
    let dir = tree.join(POINT_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut placed = Vec::new();
    for entry in std::fs::read_dir(staging)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if exports.contains(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let to = dir.join(&name);
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to)?;
        }
        placed.push(name);
    }
    placed.sort();
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_point_files_go_into_the_tree_and_the_disk_exports_do_not() {
        let d = tempfile::tempdir().unwrap();
        let staging = d.path().join("staging");
        let tree = d.path().join("staging.tree");
        std::fs::create_dir_all(&staging).unwrap();
        for f in [
            "r.vda.qcow2",
            "r.manifest.json",
            "r.nvram.fd",
            "r.domain.xml",
        ] {
            std::fs::write(staging.join(f), f).unwrap();
        }
        std::fs::create_dir(staging.join("sub")).unwrap();
        let placed = place_point_files(&staging, &tree, &["r.vda.qcow2".into()]).unwrap();
        assert_eq!(placed, ["r.domain.xml", "r.manifest.json", "r.nvram.fd"]);
        let nvram = std::fs::read(tree.join(POINT_DIR).join("r.nvram.fd")).unwrap();
        assert_eq!(nvram, b"r.nvram.fd");
        assert!(!tree.join(POINT_DIR).join("r.vda.qcow2").exists());
        // Placing again (a resumed upload) gives the same tree.
        let again = place_point_files(&staging, &tree, &["r.vda.qcow2".into()]).unwrap();
        assert_eq!(again, placed);
    }
}
