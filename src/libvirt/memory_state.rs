//! A domain's RAM and device state as one file, pure: the snapshot XML that saves it and the
//! rewrite of the domain definition a saved file carries.
//!
//! The state is saved with an external snapshot that holds memory only (`<memory
//! snapshot='external' file=...>`, every disk `snapshot='no'`) and keeps no metadata: libvirt
//! writes its save image (the format `virsh save` writes and `virsh restore` loads), the qemu
//! process goes on, and no snapshot record is left to clean up. Measured on libvirt 9.0 and
//! QEMU 7.2 (README, "Memory state in backups"): it must be taken after the push-mode job has
//! ended (libvirt runs it only then), and never before the job begins: the save leaves the
//! disks inactive in qemu, and qemu crashed when the guest was resumed under a job begun then.
//!
//! A save image embeds the saved domain's definition, and libvirt loads it only into a domain
//! of the same name and UUID. A restore as a new domain therefore puts the new domain's
//! definition into its copy of the file, as `virsh save-image-define` does (which refuses a
//! new name or UUID): the header keeps its size, the definition and libvirt's cookie are
//! written again within the header's data area, and the qemu stream after it is untouched.

use roxmltree::Document;

/// libvirt's save image header (`virQEMUSaveHeader`, src/qemu/qemu_saveimage.h): magic,
/// version, data_len, was_running, compressed, cookieOffset, 14 unused words.
pub const SAVE_HEADER_LEN: usize = 92;
const SAVE_MAGIC: &[u8; 16] = b"LibvirtQemudSave";

/// The snapshot XML that saves the domain's memory into `file` and touches no disk.
/// `disks` are every `<disk>` target of the domain (libvirt would snapshot an unlisted one).
pub fn memory_snapshot_xml(name: &str, file: &str, disks: &[String]) -> String {
    let disks: String = disks
        .iter()
        .map(|d| format!("<disk name='{}' snapshot='no'/>", escape(d)))
        .collect();
    format!(
        "<domainsnapshot><name>{}</name><description>snapback memory state (no metadata kept)</description>\
<memory snapshot='external' file='{}'/><disks>{disks}</disks></domainsnapshot>",
        escape(name),
        escape(file)
    )
}

/// Every disk target of a domain's XML (`<target dev=...>`), CD-ROMs and read-only disks too.
pub fn all_disk_targets(xml: &str) -> Result<Vec<String>, String> {
    let doc = Document::parse(xml).map_err(|e| e.to_string())?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.parent().is_some_and(|p| p.has_tag_name("devices")))
        .filter_map(|d| {
            d.children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dev"))
                .map(String::from)
        })
        .collect())
}

/// The domain's RAM in bytes, from `<memory unit=...>` (libvirt writes KiB): the most its
/// saved state can take, which holds the RAM the guest touched plus its devices' state.
pub fn ram_bytes(xml: &str) -> Option<u64> {
    let doc = Document::parse(xml).ok()?;
    let m = doc
        .root_element()
        .children()
        .find(|c| c.has_tag_name("memory"))?;
    let n: u64 = m.text()?.trim().parse().ok()?;
    let scale: u64 = match m.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The data area a save image's header announces, in bytes (what follows the header before
/// the qemu stream): checks the magic.
pub fn save_data_len(header: &[u8]) -> Result<usize, String> {
    if header.len() < SAVE_HEADER_LEN || &header[..16] != SAVE_MAGIC {
        return Err("not a libvirt save image (bad magic)".into());
    }
    Ok(word(header, 1) as usize)
}

fn word(header: &[u8], i: usize) -> u32 {
    let at = 16 + 4 * i;
    u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
}

/// The header and data area of a save image with `xml` as its definition, the same length as
/// given (`header` is the header followed by its whole data area). libvirt's cookie (the CPU
/// and features the state was saved with) is kept. Fails when the new definition does not fit
/// the data area (libvirt leaves 64 KiB to spare) or the image is compressed.
pub fn rewrite_save_data(header: &[u8], xml: &str) -> Result<Vec<u8>, String> {
    let data_len = save_data_len(header)?;
    if header.len() != SAVE_HEADER_LEN + data_len {
        return Err("the save image's data area is cut short".into());
    }
    if word(header, 3) != 0 {
        return Err("a compressed save image cannot be given a new definition".into());
    }
    let data = &header[SAVE_HEADER_LEN..];
    let cookie_offset = word(header, 4) as usize;
    let cookie: &[u8] = if cookie_offset == 0 {
        &[]
    } else {
        let rest = data
            .get(cookie_offset..)
            .ok_or("the save image's cookie lies outside its data area")?;
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or("the save image's cookie is not terminated")?;
        &rest[..=end]
    };
    if xml.as_bytes().contains(&0) {
        return Err("the definition holds a NUL byte".into());
    }
    let new_len = xml.len() + 1 + cookie.len();
    if new_len > data_len {
        return Err(format!(
            "the definition ({} bytes) does not fit the save image's {data_len} bytes",
            xml.len()
        ));
    }
    let mut out = Vec::with_capacity(header.len());
    out.extend_from_slice(&header[..16 + 4 * 4]);
    let new_cookie_offset = if cookie.is_empty() {
        0
    } else {
        xml.len() as u32 + 1
    };
    out.extend_from_slice(&new_cookie_offset.to_le_bytes());
    out.extend_from_slice(&header[16 + 4 * 5..SAVE_HEADER_LEN]);
    out.extend_from_slice(xml.as_bytes());
    out.push(0);
    out.extend_from_slice(cookie);
    out.resize(header.len(), 0);
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(xml: &str, cookie: Option<&str>, data_len: u32, compressed: u32) -> Vec<u8> {
        let mut h = SAVE_MAGIC.to_vec();
        let cookie_offset = cookie.map_or(0, |_| xml.len() as u32 + 1);
        for w in [2, data_len, 0, compressed, cookie_offset] {
            h.extend_from_slice(&u32::to_le_bytes(w));
        }
        h.resize(SAVE_HEADER_LEN, 0);
        h.extend_from_slice(xml.as_bytes());
        h.push(0);
        if let Some(c) = cookie {
            h.extend_from_slice(c.as_bytes());
            h.push(0);
        }
        h.resize(SAVE_HEADER_LEN + data_len as usize, 0);
        h
    }

    #[test]
    fn a_new_definition_replaces_the_old_one_and_keeps_the_cookie_and_the_length() {
        let old = image(
            "<domain><name>web</name></domain>",
            Some("<cookie/>"),
            200,
            0,
        );
        let new = rewrite_save_data(&old, "<domain><name>web-copy</name></domain>").unwrap();
        assert_eq!(new.len(), old.len());
        assert_eq!(
            new,
            image(
                "<domain><name>web-copy</name></domain>",
                Some("<cookie/>"),
                200,
                0
            )
        );
        assert_eq!(save_data_len(&new).unwrap(), 200);
    }

    #[test]
    fn save_images_that_cannot_take_a_new_definition_are_refused() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("bad magic", b"NotLibvirt".to_vec(), "magic"),
            (
                "too long",
                image("<d/>", Some("<c/>"), 16, 0),
                "does not fit",
            ),
            ("compressed", image("<d/>", None, 64, 1), "compressed"),
            (
                "cut short",
                image("<d/>", None, 64, 0)[..100].to_vec(),
                "cut short",
            ),
        ];
        for (what, img, want) in cases {
            let xml = if what == "too long" {
                "<domain>much longer than sixteen bytes</domain>"
            } else {
                "<d/>"
            };
            let err = rewrite_save_data(&img, xml).unwrap_err();
            assert!(err.contains(want), "{what}: {err}");
        }
    }

    #[test]
    fn a_domains_ram_is_read_in_its_unit() {
        let table = [
            (
                "<domain><memory unit='KiB'>262144</memory></domain>",
                Some(256 << 20),
            ),
            ("<domain><memory>1024</memory></domain>", Some(1 << 20)),
            (
                "<domain><memory unit='GiB'>2</memory></domain>",
                Some(2 << 30),
            ),
            ("<domain><memory unit='parsec'>2</memory></domain>", None),
            ("<domain><name>x</name></domain>", None),
        ];
        for (xml, want) in table {
            assert_eq!(ram_bytes(xml), want, "{xml}");
        }
    }

    #[test]
    fn an_image_without_a_cookie_gets_none() {
        let old = image("<a/>", None, 64, 0);
        let new = rewrite_save_data(&old, "<bb/>").unwrap();
        assert_eq!(new, image("<bb/>", None, 64, 0));
    }

    #[test]
    fn the_snapshot_lists_every_disk_as_not_snapshotted_and_saves_memory_to_the_file() {
        let xml = "<domain><devices>\
            <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda'/></disk>\
            <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>\
            </devices></domain>";
        let disks = all_disk_targets(xml).unwrap();
        assert_eq!(disks, vec!["vda", "sda"]);
        let snap = memory_snapshot_xml("m", "/st/r'1.memory", &disks);
        assert!(snap.contains("<memory snapshot='external' file='/st/r&apos;1.memory'/>"));
        assert!(snap.contains("<disk name='vda' snapshot='no'/><disk name='sda' snapshot='no'/>"));
    }
}
