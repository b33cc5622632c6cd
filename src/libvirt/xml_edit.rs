//! Rewriting a domain XML (pure): for a restore (new name, UUID, disks, logs, NVRAM) and for
//! changed-block tracking (disks onto overlays and back). Edits are spliced into the original
//! text at the byte ranges roxmltree reports, so everything not edited stays as the user wrote it.

use std::collections::BTreeMap;
use std::ops::Range;

use roxmltree::{Document, Node};

use super::domain_xml::escape_attr;

/// What to change in the saved XML.
#[derive(Clone, Debug, Default)]
pub struct XmlEdit {
    /// A new name; with it the MAC addresses are dropped so libvirt makes new ones, and the
    /// UUID is replaced by `new_uuid` (or dropped for libvirt to choose one).
    pub new_name: Option<String>,
    /// The new domain's UUID. Chosen and recorded before the define, a resumed restore can
    /// tell its own domain from a stranger's of the same name.
    pub new_uuid: Option<String>,
    /// Disk target dev → the restored image (qcow2, no backing file).
    pub disk_paths: BTreeMap<String, String>,
    /// How a disk in `disk_paths` is held when it is not a qcow2 file.
    pub placements: BTreeMap<String, Placement>,
    /// For a new domain: file-backed serial/console logs move to `<prefix>-<file name>`, so
    /// two domains never write the same log file.
    pub log_prefix: Option<String>,
    /// A UEFI domain's variable store: its own path, so two domains never share one.
    pub nvram_path: Option<String>,
}

/// What a disk's new path is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// A qcow2 file (a restored disk, a changed-block tracking overlay).
    #[default]
    Qcow2File,
    /// A raw image file.
    RawFile,
    /// A block device, raw.
    RawBlock,
}

fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

pub fn rewrite(xml: &str, edit: &XmlEdit) -> Result<String, String> {
    let doc = Document::parse(xml).map_err(|e| format!("saved domain XML: {e}"))?;
    let root = doc.root_element();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();

    if let Some(name) = &edit.new_name {
        let n = child(root, "name").ok_or("saved domain XML has no <name>")?;
        edits.push((n.range(), format!("<name>{}</name>", escape_attr(name))));
        let uuid = edit
            .new_uuid
            .as_ref()
            .map(|u| format!("<uuid>{}</uuid>", escape_attr(u)))
            .unwrap_or_default();
        match child(root, "uuid") {
            Some(u) => edits.push((u.range(), uuid)),
            None if !uuid.is_empty() => {
                let end = n.range().end;
                edits.push((end..end, uuid));
            }
            None => {}
        }
    }
    if let Some(path) = &edit.nvram_path {
        let os = child(root, "os").ok_or("saved domain XML has no <os>")?;
        let text = escape_attr(path);
        match child(os, "nvram") {
            Some(n) => {
                let attrs: String = n
                    .attributes()
                    .map(|a| format!(" {}='{}'", a.name(), escape_attr(a.value())))
                    .collect();
                edits.push((n.range(), format!("<nvram{attrs}>{text}</nvram>")));
            }
            None => {
                let at = os
                    .children()
                    .rfind(|c| c.is_element())
                    .map(|c| c.range().end)
                    .ok_or("saved domain XML has an empty <os>")?;
                edits.push((at..at, format!("<nvram>{text}</nvram>")));
            }
        }
    }
    let Some(devices) = child(root, "devices") else {
        return Err("saved domain XML has no <devices>".into());
    };
    let mut seen = 0;
    for d in devices.children().filter(|c| c.is_element()) {
        match d.tag_name().name() {
            "disk" => {
                let Some(dev) = child(d, "target").and_then(|t| t.attribute("dev")) else {
                    continue;
                };
                let Some(path) = edit.disk_paths.get(dev) else {
                    continue;
                };
                seen += 1;
                let (kind, source, format) = match edit.placements.get(dev) {
                    Some(Placement::RawBlock) => ("block", "dev", "raw"),
                    Some(Placement::RawFile) => ("file", "file", "raw"),
                    _ => ("file", "file", "qcow2"),
                };
                if let Some(a) = d.attributes().find(|a| a.name() == "type") {
                    edits.push((a.range_value(), kind.into()));
                }
                let src = format!("<source {source}='{}'/>", escape_attr(path));
                match child(d, "source") {
                    Some(s) => edits.push((s.range(), src)),
                    None => return Err(format!("disk {dev} has no <source>")),
                }
                match child(d, "driver") {
                    Some(drv) => {
                        let mut attrs: Vec<String> = drv
                            .attributes()
                            .filter(|a| a.name() != "type" && a.name() != "name")
                            .map(|a| format!("{}='{}'", a.name(), escape_attr(a.value())))
                            .collect();
                        attrs.insert(0, format!("name='qemu' type='{format}'"));
                        edits.push((drv.range(), format!("<driver {}/>", attrs.join(" "))));
                    }
                    None => edits.push((
                        child(d, "target")
                            .map(|t| t.range().start..t.range().start)
                            .unwrap_or_default(),
                        format!("<driver name='qemu' type='{format}'/>"),
                    )),
                }
                for bs in d.children().filter(|c| c.has_tag_name("backingStore")) {
                    edits.push((bs.range(), String::new()));
                }
            }
            "interface" if edit.new_name.is_some() => {
                if let Some(m) = child(d, "mac") {
                    edits.push((m.range(), String::new()));
                }
            }
            "serial" | "console"
                if edit.log_prefix.is_some() && d.attribute("type") == Some("file") =>
            {
                let prefix = edit.log_prefix.as_deref().unwrap_or_default();
                if let Some(src) = child(d, "source") {
                    if let Some(a) = src.attributes().find(|a| a.name() == "path") {
                        let base = std::path::Path::new(a.value())
                            .file_name()
                            .and_then(|f| f.to_str())
                            .unwrap_or("serial.log");
                        let p = format!("{prefix}-{base}");
                        edits.push((a.range_value(), escape_attr(&p)));
                    }
                }
            }
            _ => {}
        }
    }
    if seen != edit.disk_paths.len() {
        return Err(format!(
            "the saved XML has {seen} of the {} restored disks",
            edit.disk_paths.len()
        ));
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    Document::parse(&out).map_err(|e| format!("rewritten XML does not parse: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uefi_copy_gets_its_own_variable_store_whether_or_not_the_xml_named_one() {
        let named = "<domain><name>web</name><os><type>hvm</type>\
            <loader readonly='yes' type='pflash'>/fw/CODE.fd</loader>\
            <nvram template='/fw/VARS.fd'>/nv/web_VARS.fd</nvram></os><devices/></domain>";
        let edit = XmlEdit {
            new_name: Some("copy".into()),
            nvram_path: Some("/nv/copy_VARS.fd".into()),
            ..Default::default()
        };
        let out = rewrite(named, &edit).unwrap();
        assert!(
            out.contains("<nvram template='/fw/VARS.fd'>/nv/copy_VARS.fd</nvram>"),
            "{out}"
        );
        assert!(!out.contains("/nv/web_VARS.fd"), "{out}");
        let auto =
            "<domain><name>web</name><os firmware='efi'><type>hvm</type></os><devices/></domain>";
        let out = rewrite(auto, &edit).unwrap();
        assert!(
            out.contains("<type>hvm</type><nvram>/nv/copy_VARS.fd</nvram></os>"),
            "{out}"
        );
    }
    use crate::libvirt::domain_xml::parse_domain;

    const XML: &str = "<domain type='qemu'>\n  <name>web</name>\n  <uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>\n  <devices>\n    <disk type='block' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source dev='/dev/vg/web'/>\n      <backingStore/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/></interface>\n    <serial type='file'><source path='/var/log/web.log'/><target port='0'/></serial>\n  </devices>\n</domain>";

    fn edit(new_name: Option<&str>) -> XmlEdit {
        XmlEdit {
            new_name: new_name.map(String::from),
            new_uuid: None,
            disk_paths: [("vda".to_string(), "/restore/web2-vda.qcow2".to_string())].into(),
            log_prefix: new_name.map(|n| format!("/restore/{n}")),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_domain_gets_a_new_name_no_uuid_no_mac_and_its_own_disk_and_log() {
        let out = rewrite(XML, &edit(Some("web2"))).unwrap();
        let f = parse_domain(&out).unwrap();
        assert_eq!(f.name, "web2");
        assert_eq!(f.uuid, "");
        assert!(!out.contains("52:54:00"));
        assert_eq!(f.disks[0].source(), "/restore/web2-vda.qcow2");
        assert_eq!(f.disks[0].format(), "qcow2");
        assert_eq!(f.disks[0].chain.len(), 1, "no backing store");
        assert!(out.contains("<disk type='file'"));
        assert!(
            out.contains("cache='none'"),
            "other driver settings are kept"
        );
        assert!(out.contains("path='/restore/web2-web.log'"));
        assert!(
            out.contains("<source network='default'/>"),
            "untouched parts stay as they were"
        );
    }

    #[test]
    fn a_new_domain_takes_the_uuid_chosen_for_it() {
        let mut e = edit(Some("web2"));
        e.new_uuid = Some("5f0c4b2e-8d1a-4c3e-9b7f-2a6d1e0c9b88".into());
        let f = parse_domain(&rewrite(XML, &e).unwrap()).unwrap();
        assert_eq!(f.uuid, "5f0c4b2e-8d1a-4c3e-9b7f-2a6d1e0c9b88");
        let no_uuid = XML.replace("  <uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>\n", "");
        let f = parse_domain(&rewrite(&no_uuid, &e).unwrap()).unwrap();
        assert_eq!(f.uuid, "5f0c4b2e-8d1a-4c3e-9b7f-2a6d1e0c9b88");
    }

    #[test]
    fn in_place_keeps_name_uuid_and_macs_and_swaps_only_the_disks() {
        let out = rewrite(XML, &edit(None)).unwrap();
        let f = parse_domain(&out).unwrap();
        assert_eq!(
            (f.name.as_str(), f.uuid.as_str()),
            ("web", "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert!(out.contains("52:54:00:12:34:56"));
        assert!(out.contains("/var/log/web.log"));
        assert_eq!(f.disks[0].source(), "/restore/web2-vda.qcow2");
    }

    #[test]
    fn a_disk_restored_onto_a_block_device_is_a_raw_block_disk_on_it() {
        let mut e = edit(None);
        e.disk_paths.insert("vda".into(), "/dev/vg/web-new".into());
        e.placements.insert("vda".into(), Placement::RawBlock);
        let out = rewrite(XML, &e).unwrap();
        let f = parse_domain(&out).unwrap();
        assert_eq!(f.disks[0].source(), "/dev/vg/web-new");
        assert_eq!(f.disks[0].format(), "raw");
        assert_eq!(f.disks[0].kind, crate::libvirt::DiskKind::Block);
        assert!(out.contains("cache='none'"), "{out}");
    }

    #[test]
    fn names_and_paths_are_escaped_and_missing_disks_are_refused() {
        let mut e = edit(Some("a'b<c"));
        e.disk_paths.insert("vda".into(), "/r/x&y.qcow2".into());
        let out = rewrite(XML, &e).unwrap();
        assert_eq!(parse_domain(&out).unwrap().name, "a'b<c");
        e.disk_paths.insert("vdz".into(), "/r/z".into());
        assert!(rewrite(XML, &e).unwrap_err().contains("1 of the 2"));
    }
}
