//! The host files a domain's devices name beside its disks and firmware (pure): what each is,
//! whether the domain writes it, and how a copy restored as new is kept off the original's.
//!
//! A restore as new must never leave two domains on one writable file. Disks, the variable
//! store and the TPM state get files of their own elsewhere; this covers the rest of
//! `<devices>`:
//! - chardev output files (`type='file'`, and `<log file=...>`): the copy writes its own,
//!   beside the original's, with the new domain's name in front;
//! - sockets the domain listens on (`mode='bind'`, vhost-user `mode='server'`): moved the same
//!   way, as two listeners cannot share one path;
//! - shared host directories (`<filesystem>` without `<readonly/>`): read-only in the copy
//!   where libvirt allows it (9p); a virtiofs share, which libvirt 9.0 cannot make read-only,
//!   is left out of the copy;
//! - other writable host files and devices (an nvdimm or pmem backing file, a passed-through
//!   host TPM, an evdev input, an audio output file): left out of the copy;
//! - files it only reads (an rng's entropy source, read-only shares) and sockets it connects
//!   to (a server that is meant to be shared): kept as they are.

use std::ops::Range;

use roxmltree::{Document, Node};

use super::domain_xml::escape_attr;

/// How a device uses the host file it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Read only: kept in a copy, and checked to exist on the host before a restore defines.
    Reads,
    /// A socket the domain connects to: the peer is meant to be shared.
    Connects,
    /// An output file the domain writes (chardev file, chardev log).
    Writes,
    /// A socket the domain listens on.
    Listens,
    /// A host directory (or image) shared with the guest, writable.
    SharesWritable,
    /// A host file or device the domain owns while it runs (nvdimm, TPM passthrough, evdev).
    Holds,
}

impl Use {
    /// Whether two running domains naming the file would both change it.
    pub fn writable(self) -> bool {
        !matches!(self, Use::Reads | Use::Connects)
    }
}

/// A host file named by one of the domain's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFile {
    /// The device element's name: `serial`, `channel`, `filesystem`, `memory`, `rng` ...
    pub role: String,
    pub path: String,
    pub used: Use,
}

fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

const CHARDEVS: [&str; 8] = [
    "serial",
    "console",
    "parallel",
    "channel",
    "smartcard",
    "redirdev",
    "rng",
    "interface",
];

/// One finding: the file, and where its path sits in the text (the attribute value or the
/// element text) or which device element it belongs to.
struct Found {
    file: HostFile,
    value: Range<usize>,
    device: Range<usize>,
    /// For a writable share: its driver is virtiofs (cannot be made read-only).
    virtiofs: bool,
    /// For a writable share: where `<readonly/>` goes (the end of the `<source>` element).
    after_source: usize,
    /// A chardev's `<log file=...>`, not its `<source>`.
    from_log: bool,
}

fn find(xml: &str) -> Result<Vec<Found>, String> {
    let doc = Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
    let Some(devices) = child(doc.root_element(), "devices") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for d in devices.children().filter(|c| c.is_element()) {
        let tag = d.tag_name().name();
        let mut push =
            |path: &str, value: Range<usize>, used: Use, after_source: usize, from_log| {
                out.push(Found {
                    file: HostFile {
                        role: tag.to_string(),
                        path: path.to_string(),
                        used,
                    },
                    value,
                    device: d.range(),
                    virtiofs: child(d, "driver").and_then(|x| x.attribute("type"))
                        == Some("virtiofs"),
                    after_source,
                    from_log,
                });
            };
        let dtype = d.attribute("type").unwrap_or("");
        match tag {
            "disk" => {}
            "filesystem" => {
                let ro = child(d, "readonly").is_some();
                if let Some(s) = child(d, "source") {
                    for a in s.attributes() {
                        if matches!(a.name(), "dir" | "file") {
                            let used = if ro { Use::Reads } else { Use::SharesWritable };
                            push(a.value(), a.range_value(), used, s.range().end, false);
                        }
                    }
                }
            }
            "memory" => {
                if let Some(p) = child(d, "source").and_then(|s| child(s, "path")) {
                    if let (Some(t), Some(first)) = (p.text(), p.first_child()) {
                        push(t.trim(), first.range(), Use::Holds, 0, false);
                    }
                }
            }
            "input" => {
                if let Some(a) =
                    child(d, "source").and_then(|s| s.attributes().find(|a| a.name() == "evdev"))
                {
                    push(a.value(), a.range_value(), Use::Holds, 0, false);
                }
            }
            "tpm" => {
                let backend = child(d, "backend");
                if backend.and_then(|b| b.attribute("type")) == Some("passthrough") {
                    if let Some(a) = backend
                        .and_then(|b| child(b, "device"))
                        .and_then(|x| x.attributes().find(|a| a.name() == "path"))
                    {
                        push(a.value(), a.range_value(), Use::Holds, 0, false);
                    }
                }
            }
            "audio" => {
                if let Some(a) = d.attributes().find(|a| a.name() == "path") {
                    push(a.value(), a.range_value(), Use::Holds, 0, false);
                }
            }
            "shmem" => {
                if let Some(a) =
                    child(d, "server").and_then(|s| s.attributes().find(|a| a.name() == "path"))
                {
                    push(a.value(), a.range_value(), Use::Connects, 0, false);
                }
            }
            t if CHARDEVS.contains(&t) => {
                if t == "rng" {
                    if let Some(b) = child(d, "backend") {
                        if b.attribute("model") == Some("random") {
                            if let (Some(text), Some(first)) = (b.text(), b.first_child()) {
                                push(text.trim(), first.range(), Use::Reads, 0, false);
                            }
                        }
                    }
                    continue;
                }
                if t == "interface" && dtype != "vhostuser" {
                    continue;
                }
                if let Some(s) = child(d, "source") {
                    if let Some(a) = s.attributes().find(|a| a.name() == "path") {
                        let mode = s.attribute("mode").unwrap_or("");
                        let used = match (dtype, mode) {
                            ("file", _) => Some(Use::Writes),
                            ("unix" | "vhostuser", "bind" | "server") => Some(Use::Listens),
                            ("unix" | "vhostuser", _) => Some(Use::Connects),
                            _ => None,
                        };
                        if let Some(used) = used {
                            push(a.value(), a.range_value(), used, 0, false);
                        }
                    }
                }
                if let Some(a) =
                    child(d, "log").and_then(|l| l.attributes().find(|a| a.name() == "file"))
                {
                    push(a.value(), a.range_value(), Use::Writes, 0, true);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Every host file the domain's devices name, disks aside.
pub fn host_files(xml: &str) -> Result<Vec<HostFile>, String> {
    Ok(find(xml)?.into_iter().map(|f| f.file).collect())
}

/// What a copy restored as new was given instead of the original's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Separation {
    /// Its own file or socket at this path.
    Moved {
        role: String,
        from: String,
        to: String,
    },
    /// The share is read-only in the copy.
    MadeReadOnly { role: String, path: String },
    /// The device is not in the copy.
    LeftOut { role: String, path: String },
}

/// The path the copy `new` uses for one of the original's files: the same directory, the new
/// domain's name in front of the file name.
pub fn own_path(original: &str, new: &str) -> String {
    let p = std::path::Path::new(original);
    let base = p.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    let name = format!("{new}-{base}");
    match p.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join(name).display().to_string(),
        None => name,
    }
}

/// Rewrites a copy's XML so it shares no writable host file with the original (see the module
/// comment). `skip_chardev_files`: serial and console output files already moved by the
/// restore's own rewrite (`xml_edit`'s log prefix).
pub fn separate(
    xml: &str,
    new: &str,
    skip_chardev_files: bool,
) -> Result<(String, Vec<Separation>), String> {
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut done = Vec::new();
    let mut left_out: Vec<Range<usize>> = Vec::new();
    for f in find(xml)? {
        let role = f.file.role.clone();
        let path = f.file.path.clone();
        match f.file.used {
            Use::Reads | Use::Connects => {}
            Use::Writes | Use::Listens => {
                let moved_already = matches!(role.as_str(), "serial" | "console")
                    && f.file.used == Use::Writes
                    && !f.from_log;
                if skip_chardev_files && moved_already {
                    continue;
                }
                let to = own_path(&path, new);
                edits.push((f.value.clone(), escape_attr(&to)));
                done.push(Separation::Moved {
                    role,
                    from: path,
                    to,
                });
            }
            Use::SharesWritable if !f.virtiofs => {
                edits.push((f.after_source..f.after_source, "<readonly/>".into()));
                done.push(Separation::MadeReadOnly { role, path });
            }
            Use::SharesWritable | Use::Holds => {
                if !left_out.contains(&f.device) {
                    left_out.push(f.device.clone());
                    edits.push((f.device.clone(), String::new()));
                }
                done.push(Separation::LeftOut { role, path });
            }
        }
    }
    // A device left out takes any edit inside it with it.
    edits.retain(|(r, t)| {
        !left_out
            .iter()
            .any(|d| d.start <= r.start && r.end <= d.end && !(r == d && t.is_empty()))
    });
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    Document::parse(&out).map_err(|e| format!("separated XML does not parse: {e}"))?;
    Ok((out, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain><name>web</name><devices>\
        <disk type='file'><source file='/img/web.qcow2'/><target dev='vda'/></disk>\
        <serial type='file'><source path='/var/log/web.log'/><target port='0'/></serial>\
        <channel type='file'><source path='/var/log/web-ch.out'/><target type='virtio' name='x.0'/></channel>\
        <channel type='unix'><source mode='bind' path='/run/app/web.sock'/><target type='virtio' name='app.0'/><log file='/var/log/web-app.log'/></channel>\
        <channel type='unix'><source mode='connect' path='/run/agentd.sock'/><target type='virtio' name='peer.0'/></channel>\
        <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
        <filesystem type='mount' accessmode='mapped'><source dir='/srv/share'/><target dir='share'/></filesystem>\
        <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/fast'/><target dir='fast'/></filesystem>\
        <filesystem type='mount'><source dir='/srv/ro'/><target dir='ro'/><readonly/></filesystem>\
        <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
        <memory model='nvdimm'><source><path>/srv/nv.img</path></source><target><size unit='KiB'>1024</size></target></memory>\
        <interface type='vhostuser'><source type='unix' path='/run/vhu.sock' mode='client'/><model type='virtio'/></interface>\
        </devices></domain>";

    #[test]
    fn every_device_file_is_listed_with_how_the_domain_uses_it() {
        let got: Vec<(String, String, Use)> = host_files(XML)
            .unwrap()
            .into_iter()
            .map(|f| (f.role, f.path, f.used))
            .collect();
        let want = [
            ("serial", "/var/log/web.log", Use::Writes),
            ("channel", "/var/log/web-ch.out", Use::Writes),
            ("channel", "/run/app/web.sock", Use::Listens),
            ("channel", "/var/log/web-app.log", Use::Writes),
            ("channel", "/run/agentd.sock", Use::Connects),
            ("filesystem", "/srv/share", Use::SharesWritable),
            ("filesystem", "/srv/fast", Use::SharesWritable),
            ("filesystem", "/srv/ro", Use::Reads),
            ("rng", "/dev/urandom", Use::Reads),
            ("memory", "/srv/nv.img", Use::Holds),
            ("interface", "/run/vhu.sock", Use::Connects),
        ]
        .map(|(r, p, u)| (r.to_string(), p.to_string(), u));
        assert_eq!(got, want);
    }

    #[test]
    fn a_copy_gets_its_own_outputs_and_sockets_read_only_shares_and_no_held_files() {
        let (out, done) = separate(XML, "copy", true).unwrap();
        // The serial log is the restore's own rewrite's to move.
        assert!(out.contains("/var/log/web.log"), "{out}");
        assert!(
            out.contains("<source path='/var/log/copy-web-ch.out'/>"),
            "{out}"
        );
        assert!(out.contains("path='/run/app/copy-web.sock'"), "{out}");
        assert!(
            out.contains("<log file='/var/log/copy-web-app.log'/>"),
            "{out}"
        );
        assert!(
            out.contains("path='/run/agentd.sock'"),
            "a server it connects to stays"
        );
        assert!(
            out.contains("<source dir='/srv/share'/><readonly/>"),
            "a 9p share becomes read-only: {out}"
        );
        assert!(
            !out.contains("/srv/fast"),
            "virtiofs cannot be read-only: left out"
        );
        assert!(
            !out.contains("/srv/nv.img"),
            "an nvdimm file is the original's"
        );
        assert!(out.contains("/dev/urandom") && out.contains("/srv/ro"));
        assert_eq!(
            done.iter()
                .filter(|d| matches!(d, Separation::LeftOut { .. }))
                .count(),
            2
        );
        // Nothing writable is shared any more.
        let left: Vec<HostFile> = host_files(&out)
            .unwrap()
            .into_iter()
            .filter(|f| f.used.writable() && f.role != "serial")
            .filter(|f| host_files(XML).unwrap().iter().any(|o| o.path == f.path))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn the_copys_own_path_is_beside_the_original_with_the_new_name_in_front() {
        assert_eq!(
            own_path("/run/app/web.sock", "copy"),
            "/run/app/copy-web.sock"
        );
        assert_eq!(own_path("web.sock", "copy"), "copy-web.sock");
    }

    #[test]
    fn a_domain_without_devices_names_no_host_file() {
        assert!(host_files("<domain><name>a</name></domain>")
            .unwrap()
            .is_empty());
        let (out, done) = separate("<domain><name>a</name><devices/></domain>", "b", true).unwrap();
        assert!(done.is_empty() && out.contains("<devices/>"));
    }
}
