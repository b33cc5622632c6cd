//! NFS: an EXPORT block for nfs-ganesha (NFSv4, FSAL VFS) serving the browse dir read-only.
//! Pure: the caller writes it to a file the host's ganesha.conf includes
//! (`%include "/etc/ganesha/snapback-web.conf"`). There is no kernel NFS server on the
//! machines this was built on; ganesha runs in user space.

use std::path::Path;

/// One export of a browse dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsExport<'a> {
    /// Ganesha's export id, unique on the host: 1 to 65535 (0 is its pseudo root).
    pub export_id: u32,
    /// The browse dir holding the `@GMT-...` point directories.
    pub path: &'a Path,
    /// Where NFSv4 clients find it in ganesha's pseudo filesystem (`/snapback/web1`).
    pub pseudo: &'a str,
    /// Clients allowed (addresses, networks, host names); empty: any client, read-only.
    pub clients: &'a [String],
}

/// A string ganesha's parser reads back unchanged inside double quotes.
fn quoted(what: &str, v: &str) -> Result<String, String> {
    if v.is_empty() || v.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(format!(
            "{what} {v:?}: empty, or a control character, '\"' or '\\' ganesha.conf cannot carry"
        ));
    }
    Ok(format!("\"{v}\""))
}

/// The EXPORT block, or why the input cannot be expressed in ganesha.conf.
pub fn export_block(e: &NfsExport) -> Result<String, String> {
    if !(1..=65535).contains(&e.export_id) {
        return Err(format!("export id {}: must be 1 to 65535", e.export_id));
    }
    if !e.path.is_absolute() {
        return Err(format!("browse dir {} is not absolute", e.path.display()));
    }
    let path = e
        .path
        .to_str()
        .ok_or_else(|| format!("browse dir {} is not UTF-8", e.path.display()))?;
    let path = quoted("browse dir", path)?;
    if !e.pseudo.starts_with('/') || e.pseudo == "/" {
        return Err(format!(
            "pseudo path {:?} must be absolute and not the root",
            e.pseudo
        ));
    }
    let pseudo = quoted("pseudo path", e.pseudo)?;
    // Read-only for everyone the export lets in; root is squashed to the anonymous user, so
    // a client's root reads only what the guest's files let anyone read.
    let (access, clients) = if e.clients.is_empty() {
        ("RO", String::new())
    } else {
        let list: Result<Vec<String>, String> =
            e.clients.iter().map(|c| quoted("client", c)).collect();
        (
            "None",
            format!(
                "\tCLIENT {{\n\t\tClients = {};\n\t\tAccess_Type = RO;\n\t}}\n",
                list?.join(", ")
            ),
        )
    };
    Ok(format!(
        "# Written by snapback: the local restore points in {path}, read-only.\n\
         EXPORT {{\n\
         \tExport_Id = {id};\n\
         \tPath = {path};\n\
         \tPseudo = {pseudo};\n\
         \tAccess_Type = {access};\n\
         \tSquash = Root_Squash;\n\
         \tProtocols = 4;\n\
         \tTransports = TCP;\n\
         \tSecType = sys;\n\
         {clients}\
         \tFSAL {{\n\t\tName = VFS;\n\t}}\n\
         }}\n",
        id = e.export_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_is_nfsv4_vfs_read_only_with_root_squashed() {
        let b = export_block(&NfsExport {
            export_id: 7,
            path: Path::new("/srv/web1/points"),
            pseudo: "/snapback/web1",
            clients: &[],
        })
        .unwrap();
        let lines: Vec<&str> = b.lines().map(str::trim).collect();
        for want in [
            "EXPORT {",
            "Export_Id = 7;",
            "Path = \"/srv/web1/points\";",
            "Pseudo = \"/snapback/web1\";",
            "Access_Type = RO;",
            "Squash = Root_Squash;",
            "Protocols = 4;",
            "Name = VFS;",
        ] {
            assert!(lines.contains(&want), "{want} missing from:\n{b}");
        }
        assert_eq!(b.matches('{').count(), b.matches('}').count());
    }

    #[test]
    fn named_clients_get_read_only_and_everyone_else_nothing() {
        let clients = vec!["10.0.0.0/24".to_string(), "backup.example".to_string()];
        let b = export_block(&NfsExport {
            export_id: 8,
            path: Path::new("/p"),
            pseudo: "/p",
            clients: &clients,
        })
        .unwrap();
        let lines: Vec<&str> = b.lines().map(str::trim).collect();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("Access_Type"))
                .count(),
            2
        );
        assert!(lines.contains(&"Access_Type = None;"));
        assert!(lines.contains(&"Clients = \"10.0.0.0/24\", \"backup.example\";"));
        assert!(lines.contains(&"Access_Type = RO;"));
    }

    #[test]
    fn input_ganesha_conf_would_read_differently_is_refused() {
        let none: &[String] = &[];
        let quote = vec!["a\"b".to_string()];
        let cases: Vec<(u32, &str, &str, &[String])> = vec![
            (0, "/p", "/p", none),
            (65536, "/p", "/p", none),
            (1, "p", "/p", none),
            (1, "/p", "p", none),
            (1, "/p", "/", none),
            (1, "/p\"; Access_Type = RW; \"", "/p", none),
            (1, "/p\n", "/p", none),
            (1, "/p", "/p", &quote),
        ];
        for (id, path, pseudo, clients) in cases {
            let e = NfsExport {
                export_id: id,
                path: Path::new(path),
                pseudo,
                clients,
            };
            assert!(export_block(&e).is_err(), "{e:?}");
        }
    }
}
