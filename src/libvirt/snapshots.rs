//! Snapshots of a domain (local restore points) through libvirt, and the durable record of
//! checkpoints a revert dropped, kept in the domain's own `<metadata>`.
//!
//! Facts of libvirt 9.0 / QEMU 7.2 this follows (measured): an internal snapshot with memory
//! of a running qcow2 domain works, pausing the guest for the save; a disk-only internal
//! snapshot of a running domain is refused; reverting to an internal snapshot while any
//! checkpoint exists makes QEMU exit ("Device has active dirty bitmaps"), so the caller drops
//! the checkpoints first (`localpoints::revert`).

use roxmltree::Document;
use virt::domain::Domain;
use virt::sys;

use super::domain_xml::escape_attr;
use super::error::{LibvirtError, VirtErrorKind};
use super::host::LibvirtHost;

/// A snapshot of a VM as the source keeps it (snapback's own or not: the caller tells them
/// apart by `description`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub description: String,
    /// When the source recorded it, in seconds since the epoch.
    pub created_secs: i64,
    /// Whether it holds the VM's RAM and device state.
    pub memory: bool,
    /// Whether its disk state is inside the disks' images (qcow2 internal snapshots) rather
    /// than in overlay files beside them.
    pub internal: bool,
}

/// A snapshot to take: internal, with the VM's memory when `memory`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub name: String,
    pub description: String,
    pub memory: bool,
}

/// The namespace of the record of dropped checkpoints: apart from the labels' element
/// (`METADATA_NS`), since libvirt keeps one element per namespace and setting one replaces it.
pub const REVERTS_NS: &str = "https://snapback.dev/xmlns/reverts/1";

/// How many dropped checkpoint names the record keeps: only the newest chain's last
/// checkpoint matters to the next backup, the rest is history for people.
const DROPPED_KEPT: usize = 32;

fn other(m: impl Into<String>) -> LibvirtError {
    LibvirtError::new(VirtErrorKind::Other, m)
}

/// Escapes element text.
fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The XML of an internal snapshot, with the domain's memory when asked (only a running
/// domain has any; a shut-off one gets a disk-only internal snapshot by qemu-img).
pub fn snapshot_create_xml(req: &SnapshotRequest) -> String {
    let memory = if req.memory {
        "<memory snapshot='internal'/>"
    } else {
        "<memory snapshot='no'/>"
    };
    format!(
        "<domainsnapshot><name>{}</name><description>{}</description>{memory}</domainsnapshot>",
        escape_text(&req.name),
        escape_text(&req.description)
    )
}

/// Reads libvirt's snapshot XML.
pub fn parse_snapshot(xml: &str) -> Result<SnapshotInfo, String> {
    let doc = Document::parse(xml).map_err(|e| format!("snapshot XML: {e}"))?;
    let root = doc.root_element();
    let text = |tag: &str| {
        root.children()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_string()
    };
    let memory_kind = root
        .children()
        .find(|n| n.has_tag_name("memory"))
        .and_then(|n| n.attribute("snapshot"))
        .unwrap_or("no");
    let external_disk = root
        .children()
        .filter(|n| n.has_tag_name("disks"))
        .flat_map(|d| d.children().filter(|n| n.has_tag_name("disk")))
        .any(|d| d.attribute("snapshot") == Some("external"));
    // A running snapshot without a memory element is an old-style internal one with memory.
    let state = text("state");
    let memory = match memory_kind {
        "internal" | "external" => true,
        _ => state == "running" || state == "paused",
    };
    Ok(SnapshotInfo {
        name: text("name"),
        description: text("description"),
        created_secs: text("creationTime").trim().parse().unwrap_or(0),
        memory,
        internal: memory_kind != "external" && !external_disk,
    })
}

/// The element recording dropped checkpoints.
pub fn dropped_element(names: &[String]) -> String {
    let items: String = names
        .iter()
        .map(|n| format!("<checkpoint name='{}'/>", escape_attr(n)))
        .collect();
    format!("<dropped>{items}</dropped>")
}

/// Reads the element recording dropped checkpoints.
pub fn parse_dropped(xml: &str) -> Vec<String> {
    let Ok(doc) = Document::parse(xml) else {
        return Vec::new();
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("checkpoint"))
        .filter_map(|n| n.attribute("name"))
        .map(String::from)
        .collect()
}

/// The snapshot XML with its own `<description>` replaced (it comes before the `<domain>`
/// element, which may have a description of its own).
fn with_description(xml: &str, description: &str) -> Result<String, LibvirtError> {
    let start = xml
        .find("<description>")
        .ok_or_else(|| other("the snapshot has no description to replace"))?;
    // `<domain ` or `<domain>`, not the root `<domainsnapshot>`.
    let domain_at = ["<domain ", "<domain>"]
        .iter()
        .filter_map(|t| xml.find(t))
        .min()
        .unwrap_or(xml.len());
    if start > domain_at {
        return Err(other("the snapshot has no description of its own"));
    }
    let end = xml[start..]
        .find("</description>")
        .map(|e| start + e)
        .ok_or_else(|| other("the snapshot's description is not closed"))?;
    Ok(format!(
        "{}<description>{}{}",
        &xml[..start],
        escape_text(description),
        &xml[end..]
    ))
}

fn lookup(
    d: &Domain,
    name: &str,
) -> Result<Option<virt::domain_snapshot::DomainSnapshot>, LibvirtError> {
    match Domain::lookup_snapshot_by_name(d, name, 0) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            use virt::enumutil::Enum;
            if matches!(
                e.code(),
                Enum::Known(virt::error::ErrorNumber::NoDomainSnapshot)
            ) {
                Ok(None)
            } else {
                Err(e.into())
            }
        }
    }
}

impl LibvirtHost {
    pub async fn snapshots(&self, dom: &str) -> Result<Vec<SnapshotInfo>, LibvirtError> {
        self.with_domain(dom, |d| {
            let mut out = Vec::new();
            for s in d.list_all_snapshots(0)? {
                let xml = s.xml_desc(0)?;
                out.push(parse_snapshot(&xml).map_err(other)?);
            }
            Ok(out)
        })
        .await
    }

    /// One call, not retried: libvirt refuses a name that exists, so a second try after a
    /// dropped connection fails rather than making two.
    pub async fn create_snapshot(
        &self,
        dom: &str,
        req: &SnapshotRequest,
    ) -> Result<(), LibvirtError> {
        let xml = snapshot_create_xml(req);
        self.with_domain_once(dom, move |d| {
            d.create_snapshot_xml(&xml, sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)?;
            Ok(())
        })
        .await
    }

    /// Redefines the snapshot from its own XML with a new description (as `virsh
    /// snapshot-edit` does); its state, disks and memory are untouched.
    pub async fn describe_snapshot(
        &self,
        dom: &str,
        name: &str,
        description: &str,
    ) -> Result<(), LibvirtError> {
        let (name, description) = (name.to_string(), description.to_string());
        self.with_domain(dom, move |d| {
            let s =
                lookup(d, &name)?.ok_or_else(|| other(format!("snapshot '{name}' not found")))?;
            let xml = with_description(
                &s.xml_desc(sys::VIR_DOMAIN_SNAPSHOT_XML_SECURE)?,
                &description,
            )?;
            let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
            if s.is_current(0)? {
                flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
            }
            d.create_snapshot_xml(&xml, flags)?;
            Ok(())
        })
        .await
    }

    pub async fn delete_snapshot(&self, dom: &str, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_string();
        self.with_domain(dom, move |d| {
            if let Some(s) = lookup(d, &name)? {
                s.delete(0)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn revert_snapshot(&self, dom: &str, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_string();
        self.with_domain_once(dom, move |d| {
            let s =
                lookup(d, &name)?.ok_or_else(|| other(format!("snapshot '{name}' not found")))?;
            s.revert(0)?;
            Ok(())
        })
        .await
    }

    pub async fn dropped_checkpoints(&self, dom: &str) -> Result<Vec<String>, LibvirtError> {
        self.with_domain(dom, |d| {
            match d.metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(REVERTS_NS),
                sys::VIR_DOMAIN_AFFECT_CONFIG,
            ) {
                Ok(xml) => Ok(parse_dropped(&xml)),
                Err(e) => {
                    use virt::enumutil::Enum;
                    if matches!(
                        e.code(),
                        Enum::Known(virt::error::ErrorNumber::NoDomainMetadata)
                    ) {
                        Ok(Vec::new())
                    } else {
                        Err(e.into())
                    }
                }
            }
        })
        .await
    }

    /// Adds names to the record, in the persistent definition (and the live one while it
    /// runs), keeping the newest `DROPPED_KEPT`.
    pub async fn record_dropped_checkpoints(
        &self,
        dom: &str,
        names: &[String],
    ) -> Result<(), LibvirtError> {
        let mut all = self.dropped_checkpoints(dom).await?;
        for n in names {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
        let skip = all.len().saturating_sub(DROPPED_KEPT);
        let element = dropped_element(&all[skip..]);
        self.with_domain(dom, move |d| {
            let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
            if d.is_active()? {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            d.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(&element),
                Some("snapbackreverts"),
                Some(REVERTS_NS),
                flags,
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_snapshot_with_memory_is_read_from_libvirts_xml() {
        let xml =
            "<domainsnapshot><name>snapback-1</name><description>snapback-point {}</description>
            <state>running</state><creationTime>1764558000</creationTime>
            <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>
            <domain><description>a domain</description></domain></domainsnapshot>";
        let s = parse_snapshot(xml).unwrap();
        assert_eq!(s.name, "snapback-1");
        assert_eq!(s.description, "snapback-point {}");
        assert_eq!(s.created_secs, 1764558000);
        assert!(s.memory && s.internal);
        let edited = with_description(xml, "new <text>").unwrap();
        assert_eq!(parse_snapshot(&edited).unwrap().description, "new <text>");
        assert!(edited.contains("<description>a domain</description>"));
    }

    #[test]
    fn an_external_disk_only_snapshot_is_neither_internal_nor_with_memory() {
        let xml = "<domainsnapshot><name>x</name><state>disk-snapshot</state>
            <memory snapshot='no'/><disks><disk name='vda' snapshot='external'/></disks></domainsnapshot>";
        let s = parse_snapshot(xml).unwrap();
        assert!(!s.memory && !s.internal);
        assert_eq!(s.description, "");
    }

    #[test]
    fn the_dropped_checkpoints_record_reads_back_what_was_written() {
        let names = vec!["a'b".to_string(), "c".to_string()];
        assert_eq!(parse_dropped(&dropped_element(&names)), names);
        assert!(parse_dropped("not xml").is_empty());
    }

    #[test]
    fn the_create_xml_escapes_the_description() {
        let x = snapshot_create_xml(&SnapshotRequest {
            name: "n".into(),
            description: "a<b".into(),
            memory: true,
        });
        assert_eq!(parse_snapshot(&x).unwrap().description, "a<b");
        assert!(x.contains("<memory snapshot='internal'/>"));
    }
}
