//! Pure reading of libvirt domain and checkpoint XML: disks, backing chains, the depth rule.

use roxmltree::{Document, Node};

/// How a disk's top image is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskKind {
    File,
    Block,
    Network,
}

/// One image of a disk's backing chain, top first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainImage {
    pub path: String,
    pub format: String,
}

/// A disk of a domain that snapback backs up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Target device name (`vda`): the stable key of a disk across runs.
    pub name: String,
    pub kind: DiskKind,
    /// The whole backing chain, top image first.
    pub chain: Vec<ChainImage>,
}

impl Disk {
    pub fn source(&self) -> &str {
        self.chain.first().map(|c| c.path.as_str()).unwrap_or("")
    }
    pub fn format(&self) -> &str {
        self.chain
            .first()
            .map(|c| c.format.as_str())
            .unwrap_or("raw")
    }
}

/// The firmware and boot files a domain's XML names, and whether it has state beside its
/// disks: a UEFI variable store (NVRAM) and an emulated TPM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Firmware {
    /// UEFI: `<os firmware='efi'>` or a pflash `<loader>`.
    pub efi: bool,
    /// The read-only firmware code.
    pub loader: Option<String>,
    /// The per-domain variable store, when the XML names it.
    pub nvram: Option<String>,
    /// An emulated TPM (swtpm), whose state libvirt keeps per domain UUID.
    pub tpm_emulator: bool,
    /// Direct kernel boot files, shared read-only.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub dtb: Option<String>,
}

impl Firmware {
    /// The read-only files the domain boots from, shared by every domain that names them:
    /// (role, path).
    pub fn read_only_files(&self) -> Vec<(&'static str, &str)> {
        [
            ("loader", &self.loader),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("dtb", &self.dtb),
        ]
        .into_iter()
        .filter_map(|(role, p)| p.as_deref().map(|p| (role, p)))
        .collect()
    }
}

/// What the domain XML says snapback needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: String,
    pub uuid: String,
    pub disks: Vec<Disk>,
    /// Whether a qemu guest agent channel is configured.
    pub has_agent_channel: bool,
    pub firmware: Firmware,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read domain XML: {0}")]
pub struct XmlError(pub String);

fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn source_of(n: Node) -> Option<String> {
    let src = child(n, "source")?;
    src.attribute("file")
        .or_else(|| src.attribute("dev"))
        .or_else(|| src.attribute("name"))
        .or_else(|| src.attribute("volume"))
        .map(str::to_string)
}

/// Reads a `<disk>` or `<backingStore>` chain, top first.
fn chain_of(disk: Node) -> Vec<ChainImage> {
    let mut chain = Vec::new();
    let format = child(disk, "driver")
        .and_then(|d| d.attribute("type"))
        .unwrap_or("raw");
    if let Some(path) = source_of(disk) {
        chain.push(ChainImage {
            path,
            format: format.to_string(),
        });
    }
    let mut cur = child(disk, "backingStore");
    while let Some(bs) = cur {
        let Some(path) = source_of(bs) else { break };
        let format = child(bs, "format")
            .and_then(|f| f.attribute("type"))
            .unwrap_or("raw");
        chain.push(ChainImage {
            path,
            format: format.to_string(),
        });
        cur = child(bs, "backingStore");
    }
    chain
}

/// Parses the disks (device='disk', writable, with a source) and identity of a domain.
/// CD-ROMs, floppies, read-only and shareable disks are not backed up: they are not the
/// domain's own data, and a shareable disk cannot be captured consistently from one domain.
pub fn parse_domain(xml: &str) -> Result<DomainFacts, XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError(e.to_string()))?;
    let root = doc.root_element();
    let text = |tag: &str| {
        child(root, tag)
            .and_then(|n| n.text())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let name = text("name");
    let uuid = text("uuid");
    if name.is_empty() {
        return Err(XmlError("no <name>".into()));
    }
    let mut disks = Vec::new();
    let mut has_agent_channel = false;
    if let Some(devices) = child(root, "devices") {
        for d in devices.children().filter(|c| c.has_tag_name("disk")) {
            if d.attribute("device").unwrap_or("disk") != "disk" {
                continue;
            }
            if child(d, "readonly").is_some() || child(d, "shareable").is_some() {
                continue;
            }
            let Some(target) = child(d, "target").and_then(|t| t.attribute("dev")) else {
                continue;
            };
            let kind = match d.attribute("type").unwrap_or("file") {
                "block" => DiskKind::Block,
                "network" => DiskKind::Network,
                _ => DiskKind::File,
            };
            let chain = chain_of(d);
            if chain.is_empty() {
                continue; // an empty drive
            }
            disks.push(Disk {
                name: target.to_string(),
                kind,
                chain,
            });
        }
        has_agent_channel = devices
            .children()
            .filter(|c| c.has_tag_name("channel"))
            .any(|c| {
                child(c, "target").and_then(|t| t.attribute("name"))
                    == Some("org.qemu.guest_agent.0")
            });
    }
    Ok(DomainFacts {
        name,
        uuid,
        disks,
        has_agent_channel,
        firmware: firmware_of(root),
    })
}

fn firmware_of(root: Node) -> Firmware {
    let os = child(root, "os");
    let text = |tag: &str| {
        os.and_then(|o| child(o, tag))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let loader = os.and_then(|o| child(o, "loader"));
    let efi = os.and_then(|o| o.attribute("firmware")) == Some("efi")
        || loader.and_then(|l| l.attribute("type")) == Some("pflash");
    let tpm_emulator = child(root, "devices").is_some_and(|d| {
        d.children()
            .filter(|c| c.has_tag_name("tpm"))
            .any(|t| child(t, "backend").and_then(|b| b.attribute("type")) == Some("emulator"))
    });
    Firmware {
        efi,
        loader: text("loader"),
        nvram: text("nvram"),
        tpm_emulator,
        kernel: text("kernel"),
        initrd: text("initrd"),
        dtb: text("dtb"),
    }
}

/// How snapback names the qcow2 overlay it puts over a raw disk for changed-block tracking
/// (`snapback cbt enable`), and so tells it from any other qcow2 file.
pub const CBT_OVERLAY_SUFFIX: &str = ".snapback-cbt.qcow2";

/// Whether a disk source is such an overlay: its data lives in a raw file or device.
pub fn is_cbt_overlay(path: &str) -> bool {
    path.ends_with(CBT_OVERLAY_SUFFIX)
}

/// The depth rule: how many images of a backing chain of `len` images a backup covers.
/// 0 = the whole chain, -1 = all but the shared base, N > 0 = the top N images.
/// Always at least the top image.
pub fn depth_images(len: usize, depth: i32) -> usize {
    let n = match depth {
        0 => len,
        d if d < 0 => len.saturating_sub(d.unsigned_abs() as usize),
        d => (d as usize).min(len),
    };
    n.clamp(1.min(len), len)
}

/// The bitmap names per disk of a checkpoint XML (`<disk name='vda' bitmap='cp1'/>`).
pub fn checkpoint_disks(xml: &str) -> Result<Vec<String>, XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError(e.to_string()))?;
    let Some(disks) = child(doc.root_element(), "disks") else {
        return Ok(Vec::new());
    };
    Ok(disks
        .children()
        .filter(|d| d.has_tag_name("disk") && d.attribute("checkpoint") == Some("bitmap"))
        .filter_map(|d| d.attribute("name").map(str::to_string))
        .collect())
}

/// The disks a checkpoint keeps a bitmap for; `None` when its XML lists no disks (a
/// checkpoint of every disk, as libvirt's default is).
pub fn checkpoint_covers(xml: &str) -> Result<Option<Vec<String>>, XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError(e.to_string()))?;
    if child(doc.root_element(), "disks").is_none() {
        return Ok(None);
    }
    checkpoint_disks(xml).map(Some)
}

/// Every file or device any `<disk>` of a domain XML names, read-only, shared and backing
/// images included: what a restore must never write over.
pub fn every_disk_source(xml: &str) -> Result<Vec<String>, XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError(e.to_string()))?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("disk"))
        .flat_map(|d| d.descendants().filter(|n| n.has_tag_name("source")))
        .filter_map(|s| s.attribute("file").or_else(|| s.attribute("dev")))
        .map(str::to_string)
        .collect())
}

/// Escapes text for an XML attribute value.
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// One disk of a push-mode backup job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupDisk {
    pub name: String,
    /// The qcow2 file the export is written to.
    pub target: String,
    /// Exported whole even in an incremental job.
    pub whole: bool,
    /// Given a bitmap in the new checkpoint; a raw or block disk, for which libvirt keeps
    /// none, is named there with `checkpoint='no'`.
    pub bitmap: bool,
}

/// The `<domainbackup>` XML of a push-mode job writing one qcow2 per disk. In an incremental
/// job a whole disk says `backupmode='full'` (libvirt 7.6 and later).
pub fn backup_xml(incremental_since: Option<&str>, disks: &[BackupDisk]) -> String {
    let mut x = String::from("<domainbackup mode='push'>");
    if let Some(cp) = incremental_since {
        x.push_str(&format!("<incremental>{}</incremental>", escape_attr(cp)));
    }
    x.push_str("<disks>");
    for d in disks {
        let mode = if d.whole && incremental_since.is_some() {
            " backupmode='full'"
        } else {
            ""
        };
        x.push_str(&format!(
            "<disk name='{}' backup='yes'{mode} type='file'><driver type='qcow2'/><target file='{}'/></disk>",
            escape_attr(&d.name),
            escape_attr(&d.target)
        ));
    }
    x.push_str("</disks></domainbackup>");
    x
}

/// The `<domaincheckpoint>` XML creating a bitmap on every disk that can hold one; another
/// is named with `checkpoint='no'`, as libvirt would otherwise refuse the checkpoint.
pub fn checkpoint_create_xml(name: &str, disks: &[BackupDisk]) -> String {
    let mut x = format!(
        "<domaincheckpoint><name>{}</name><disks>",
        escape_attr(name)
    );
    for d in disks {
        let kind = if d.bitmap { "bitmap" } else { "no" };
        x.push_str(&format!(
            "<disk name='{}' checkpoint='{kind}'/>",
            escape_attr(&d.name)
        ));
    }
    x.push_str("</disks></domaincheckpoint>");
    x
}

/// The namespace of snapback's element in a domain's `<metadata>`.
pub const METADATA_NS: &str = "https://snapback.dev/xmlns/1";

/// The attributes of `<snapback:labels xmlns:snapback="https://snapback.dev/xmlns/1" k="v"/>`
/// inside the domain's `<metadata>`: what `domainSelector.metadata` matches. Set them with
/// `virsh metadata DOMAIN https://snapback.dev/xmlns/1 --key snapback --set '<labels tier="gold"/>'`.
pub fn snapback_metadata(xml: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(doc) = Document::parse(xml) else {
        return out;
    };
    if let Some(m) = child(doc.root_element(), "metadata") {
        for el in m.children().filter(|n| n.is_element()) {
            if el.tag_name().namespace() == Some(METADATA_NS) && el.tag_name().name() == "labels" {
                for a in el.attributes() {
                    out.insert(a.name().to_string(), a.value().to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapback_metadata_labels_are_read_and_other_metadata_ignored() {
        let xml = r#"<domain><name>d</name><metadata>
            <other:x xmlns:other="urn:o" tier="no"/>
            <sb:labels xmlns:sb="https://snapback.dev/xmlns/1" tier="gold" backup="yes"/>
            </metadata></domain>"#;
        let m = super::snapback_metadata(xml);
        assert_eq!(m.get("tier").map(String::as_str), Some("gold"));
        assert_eq!(m.len(), 2);
        assert!(super::snapback_metadata("<domain/>").is_empty());
    }

    use super::*;

    const XML: &str = r#"<domain type='qemu'><name>web</name><uuid>u-1</uuid><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/img/top.qcow2'/>
        <backingStore type='file'><format type='qcow2'/><source file='/img/mid.qcow2'/>
          <backingStore type='file'><format type='raw'/><source file='/img/base.raw'/><backingStore/></backingStore>
        </backingStore>
        <target dev='vda' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdb'/><target dev='vdb'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/><readonly/></disk>
      <disk type='file' device='disk'><source file='/img/shared.raw'/><target dev='vdc'/><shareable/></disk>
      <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    </devices></domain>"#;

    #[test]
    fn parse_domain_lists_writable_disks_with_their_backing_chains() {
        let f = parse_domain(XML).unwrap();
        assert_eq!(f.name, "web");
        assert_eq!(f.uuid, "u-1");
        assert!(f.has_agent_channel);
        let names: Vec<_> = f.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vdb"]);
        let chain: Vec<_> = f.disks[0].chain.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(chain, ["/img/top.qcow2", "/img/mid.qcow2", "/img/base.raw"]);
        assert_eq!(f.disks[0].chain[2].format, "raw");
        assert_eq!(f.disks[1].kind, DiskKind::Block);
        assert_eq!(f.disks[1].source(), "/dev/sdb");
    }

    #[test]
    fn depth_rule_selects_whole_chain_all_but_base_or_top_n() {
        assert_eq!(depth_images(3, 0), 3);
        assert_eq!(depth_images(3, -1), 2);
        assert_eq!(depth_images(1, -1), 1, "a single image is never dropped");
        assert_eq!(depth_images(3, 1), 1);
        assert_eq!(depth_images(3, 7), 3);
        assert_eq!(depth_images(0, 0), 0);
    }

    #[test]
    fn generated_xml_escapes_names_and_paths() {
        let disk = BackupDisk {
            name: "vda".into(),
            target: "/s/a&b.qcow2".into(),
            whole: false,
            bitmap: true,
        };
        let x = backup_xml(Some("cp'1"), std::slice::from_ref(&disk));
        assert!(x.contains("<incremental>cp&apos;1</incremental>"));
        assert!(x.contains("file='/s/a&amp;b.qcow2'"));
        Document::parse(&x).unwrap();
        let c = checkpoint_create_xml("n<1", &[disk]);
        Document::parse(&c).unwrap();
        assert!(c.contains("n&lt;1"));
    }

    #[test]
    fn a_disk_without_a_bitmap_is_whole_in_an_incremental_job_and_left_out_of_the_checkpoint() {
        let disks = [
            BackupDisk {
                name: "vda".into(),
                target: "/s/r.vda.qcow2".into(),
                whole: false,
                bitmap: true,
            },
            BackupDisk {
                name: "vdb".into(),
                target: "/s/r.vdb.qcow2".into(),
                whole: true,
                bitmap: false,
            },
        ];
        let text = backup_xml(Some("cp1"), &disks);
        let doc = Document::parse(&text).unwrap();
        let inc = doc
            .descendants()
            .filter(|n| n.has_tag_name("disk"))
            .map(|n| (n.attribute("name"), n.attribute("backupmode")))
            .collect::<Vec<_>>();
        assert_eq!(inc, [(Some("vda"), None), (Some("vdb"), Some("full"))]);
        assert!(
            !backup_xml(None, &disks).contains("backupmode"),
            "a full job needs no per-disk mode"
        );
        let cp = checkpoint_create_xml("cp2", &disks);
        assert!(cp.contains("<disk name='vda' checkpoint='bitmap'/>"));
        assert!(cp.contains("<disk name='vdb' checkpoint='no'/>"));
        assert_eq!(checkpoint_disks(&cp).unwrap(), ["vda"]);
    }

    #[test]
    fn a_checkpoint_without_a_disk_list_covers_every_disk() {
        assert_eq!(
            checkpoint_covers("<domaincheckpoint><name>c</name></domaincheckpoint>").unwrap(),
            None
        );
        let listed = "<domaincheckpoint><name>c</name><disks><disk name='vda' checkpoint='bitmap'/><disk name='vdb' checkpoint='no'/></disks></domaincheckpoint>";
        assert_eq!(checkpoint_covers(listed).unwrap(), Some(vec!["vda".into()]));
    }

    #[test]
    fn every_disk_source_includes_shared_read_only_and_backing_images() {
        let all = every_disk_source(XML).unwrap();
        for want in [
            "/img/mid.qcow2",
            "/img/base.raw",
            "/dev/sdb",
            "/iso/x.iso",
            "/img/shared.raw",
        ] {
            assert!(all.iter().any(|s| s == want), "{want} in {all:?}");
        }
    }

    #[test]
    fn checkpoint_disks_reads_bitmap_disks() {
        let x = "<domaincheckpoint><name>c</name><disks><disk name='vda' checkpoint='bitmap' bitmap='c'/><disk name='vdb' checkpoint='no'/></disks></domaincheckpoint>";
        assert_eq!(checkpoint_disks(x).unwrap(), ["vda"]);
    }
}
