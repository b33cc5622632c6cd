//! Persistent dirty bitmaps in qcow2 images, for the cases libvirt's checkpoint API does not
//! cover (facts measured on libvirt 9.0 and QEMU 7.2):
//! - libvirt cannot delete a checkpoint of an inactive domain ("cannot delete checkpoint for
//!   inactive domain"); dropping only its record leaves the bitmap in the image, and QEMU loads
//!   and updates it on every later start.
//! - A bitmap whose record is gone is invisible to libvirt, and a later checkpoint of the same
//!   name fails with "Bitmap already exists".
//!
//! The image's own list is read with `qemu-img info -U` (shared, read-only: safe while QEMU
//! runs, and it does not taint the domain). QEMU writes a removal made over QMP to the image at
//! once.

use std::process::Command;

use super::error::{LibvirtError, VirtErrorKind};

/// The names of the persistent bitmaps in `qemu-img info --output=json` output (pure).
pub fn parse_image_bitmaps(info_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(info_json).map_err(|e| format!("qemu-img info: {e}"))?;
    Ok(v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

fn qemu_img(args: &[&str]) -> Result<String, LibvirtError> {
    let out = Command::new("qemu-img").args(args).output().map_err(|e| {
        LibvirtError::new(VirtErrorKind::Other, format!("cannot run qemu-img: {e}"))
    })?;
    if !out.status.success() {
        return Err(LibvirtError::new(
            VirtErrorKind::Other,
            format!(
                "qemu-img {}: {}",
                args.first().copied().unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each image of a backing chain with the names of its persistent bitmaps, top first, from
/// `qemu-img info --backing-chain --output=json` output (pure).
pub fn parse_chain_bitmaps(info_json: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(info_json).map_err(|e| format!("qemu-img info: {e}"))?;
    let images = match v.as_array() {
        Some(a) => a.clone(),
        None => vec![v],
    };
    images
        .iter()
        .map(|img| {
            let file = img["filename"].as_str().unwrap_or_default().to_string();
            Ok((file, parse_image_bitmaps(&img.to_string())?))
        })
        .collect()
}

/// Each image of the backing chain of `path` (itself first) with its bitmaps. Bitmaps are
/// not only in the top image: an image that held checkpoint bitmaps becomes a backing image
/// when an overlay is put over it (an external snapshot, `qemu-img create -b`), and its
/// bitmaps stay in it, where QEMU still loads them.
pub fn chain_bitmaps(path: &str) -> Result<Vec<(String, Vec<String>)>, LibvirtError> {
    let json = qemu_img(&["info", "-U", "--backing-chain", "--output=json", path])?;
    parse_chain_bitmaps(&json).map_err(|m| LibvirtError::new(VirtErrorKind::Other, m))
}

/// The bitmaps stored in a qcow2 image and in its backing images (none for other formats),
/// each name once.
pub fn image_bitmaps(path: &str) -> Result<Vec<String>, LibvirtError> {
    let mut names: Vec<String> = Vec::new();
    for (_, found) in chain_bitmaps(path)? {
        for b in found {
            if !names.contains(&b) {
                names.push(b);
            }
        }
    }
    Ok(names)
}

/// Removes a bitmap from the image of a domain that is not running and from every backing
/// image of it that holds one of that name; absent is fine. Only the named bitmap is
/// touched: the caller names a snapback checkpoint that no chain needs.
pub fn remove_image_bitmap(path: &str, name: &str) -> Result<(), LibvirtError> {
    for (image, found) in chain_bitmaps(path)? {
        if found.iter().any(|b| b == name) {
            qemu_img(&["bitmap", "--remove", &image, name])?;
        }
    }
    Ok(())
}

/// The QMP node name of the format layer whose image file is `path`, from `query-block`.
pub fn node_of(query_block_json: &str, path: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(query_block_json).ok()?;
    v["return"].as_array()?.iter().find_map(|dev| {
        let ins = &dev["inserted"];
        (ins["file"].as_str() == Some(path))
            .then(|| ins["node-name"].as_str().map(str::to_string))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_names_are_read_from_qemu_img_info() {
        let json = r#"{"format":"qcow2","format-specific":{"type":"qcow2","data":{"compat":"1.1",
            "bitmaps":[{"flags":["in-use","auto"],"name":"snapback-r2","granularity":65536},
                       {"flags":["auto"],"name":"snapback-r1","granularity":65536}]}}}"#;
        assert_eq!(
            parse_image_bitmaps(json).unwrap(),
            ["snapback-r2", "snapback-r1"]
        );
    }

    #[test]
    fn an_image_without_bitmaps_or_a_raw_image_has_none() {
        assert_eq!(
            parse_image_bitmaps(
                r#"{"format":"qcow2","format-specific":{"type":"qcow2","data":{}}}"#
            )
            .unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_image_bitmaps(r#"{"format":"raw"}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_image_bitmaps("not json").is_err());
    }

    #[test]
    fn the_node_of_a_disk_is_found_by_its_image_file() {
        let json = r#"{"return":[
            {"device":"","qdev":"/machine/peripheral/virtio-disk0/virtio-backend",
             "inserted":{"file":"/img/a.qcow2","node-name":"libvirt-1-format"}},
            {"device":"","qdev":"/machine/peripheral/virtio-disk1/virtio-backend",
             "inserted":{"file":"/img/b.qcow2","node-name":"libvirt-2-format"}},
            {"device":"ide0-0-0","removable":true}]}"#;
        assert_eq!(
            node_of(json, "/img/b.qcow2").as_deref(),
            Some("libvirt-2-format")
        );
        assert_eq!(node_of(json, "/img/c.qcow2"), None);
    }

    #[test]
    fn each_image_of_a_backing_chain_has_its_own_bitmaps() {
        let json = r#"[
            {"filename":"/img/top.qcow2","format":"qcow2","backing-filename":"base.qcow2",
             "format-specific":{"type":"qcow2","data":{"bitmaps":[{"name":"snapback-r2"}]}}},
            {"filename":"/img/base.qcow2","format":"qcow2",
             "format-specific":{"type":"qcow2","data":{"bitmaps":[{"name":"snapback-r1"},{"name":"other"}]}}},
            {"filename":"/img/raw.img","format":"raw"}]"#;
        assert_eq!(
            parse_chain_bitmaps(json).unwrap(),
            [
                (
                    "/img/top.qcow2".to_string(),
                    vec!["snapback-r2".to_string()]
                ),
                (
                    "/img/base.qcow2".to_string(),
                    vec!["snapback-r1".to_string(), "other".to_string()]
                ),
                ("/img/raw.img".to_string(), vec![]),
            ]
        );
        // A single image, as `qemu-img info` without --backing-chain prints it.
        assert_eq!(
            parse_chain_bitmaps(r#"{"filename":"/img/a.qcow2","format":"raw"}"#).unwrap(),
            [("/img/a.qcow2".to_string(), vec![])]
        );
        assert!(parse_chain_bitmaps("[{").is_err());
    }
}
