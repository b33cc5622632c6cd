//! Where libvirt keeps a domain's firmware state on this host (libvirt 9.0's conventions):
//! the UEFI variable store by domain name, the swtpm state by domain UUID.

use std::path::PathBuf;

use super::domain_xml::Firmware;

/// libvirt's directory of per-domain UEFI variable stores.
pub const NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";
/// libvirt's directory of per-domain swtpm state.
pub const SWTPM_DIR: &str = "/var/lib/libvirt/swtpm";
/// The one file of a TPM 2.0's persistent state (volatile state exists only while a domain
/// is saved to disk or migrating).
pub const TPM_STATE_FILE: &str = "tpm2-00.permall";

/// The variable store libvirt gives a domain of this name when its XML names none.
pub fn default_nvram(name: &str) -> PathBuf {
    PathBuf::from(NVRAM_DIR).join(format!("{name}_VARS.fd"))
}

/// The domain's variable store: the one its XML names, else libvirt's default for its name.
/// `None` for a BIOS domain.
pub fn nvram_path(fw: &Firmware, name: &str) -> Option<PathBuf> {
    if !fw.efi {
        return None;
    }
    Some(
        fw.nvram
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| default_nvram(name)),
    )
}

/// The directory libvirt keeps a domain's swtpm state in (it creates it at the first start).
pub fn tpm_dir(uuid: &str) -> PathBuf {
    PathBuf::from(SWTPM_DIR).join(uuid)
}

/// The TPM 2.0 state file of a domain.
pub fn tpm_state(uuid: &str) -> PathBuf {
    tpm_dir(uuid).join("tpm2").join(TPM_STATE_FILE)
}

/// The system qemu driver's settings file.
pub const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// The account (user, group) a system libvirtd runs swtpm as, from its qemu.conf text:
/// `swtpm_user` and `swtpm_group` when set, else `tss`. libvirt itself falls back to root when
/// the account does not exist; see `swtpm_owner`.
pub fn swtpm_account(qemu_conf: &str) -> (String, String) {
    let setting = |key: &str| {
        qemu_conf.lines().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    (
        setting("swtpm_user").unwrap_or_else(|| "tss".into()),
        setting("swtpm_group").unwrap_or_else(|| "tss".into()),
    )
}

/// The uid and gid swtpm runs as on this host. A restored TPM state must belong to them, or
/// swtpm cannot lock its directory and the domain does not start.
pub fn swtpm_owner() -> (u32, u32) {
    let conf = std::fs::read_to_string(QEMU_CONF).unwrap_or_default();
    let (user, group) = swtpm_account(&conf);
    (user_id(&user).unwrap_or(0), group_id(&group).unwrap_or(0))
}

/// The uid of a user name, through the system's user database (NSS).
fn user_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the size passed; the answer is read only
    // when getpwnam_r reports an entry.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(entry.pw_uid)
}

/// The gid of a group name, through the system's group database (NSS).
fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user_id`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(entry.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::parse_domain;

    #[test]
    fn uefi_domains_name_their_store_or_get_libvirts_default_and_bios_ones_have_none() {
        let efi = parse_domain(
            "<domain><name>web</name><os firmware='efi'><type>hvm</type></os>\
             <devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm></devices></domain>",
        )
        .unwrap();
        assert!(efi.firmware.efi && efi.firmware.tpm_emulator);
        assert_eq!(
            nvram_path(&efi.firmware, "web"),
            Some(PathBuf::from("/var/lib/libvirt/qemu/nvram/web_VARS.fd"))
        );
        let named = parse_domain(
            "<domain><name>db</name><os><loader readonly='yes' type='pflash'>/fw/CODE.fd</loader>\
             <nvram template='/fw/VARS.fd'>/data/db.fd</nvram><kernel>/boot/k</kernel></os><devices/></domain>",
        )
        .unwrap();
        assert_eq!(named.firmware.loader.as_deref(), Some("/fw/CODE.fd"));
        assert_eq!(named.firmware.kernel.as_deref(), Some("/boot/k"));
        assert!(!named.firmware.tpm_emulator);
        assert_eq!(
            nvram_path(&named.firmware, "db"),
            Some(PathBuf::from("/data/db.fd"))
        );
        let bios =
            parse_domain("<domain><name>b</name><os><type>hvm</type></os><devices/></domain>")
                .unwrap();
        assert_eq!(nvram_path(&bios.firmware, "b"), None);
        assert_eq!(
            tpm_state("u-1"),
            PathBuf::from("/var/lib/libvirt/swtpm/u-1/tpm2/tpm2-00.permall")
        );
    }

    #[test]
    fn swtpm_runs_as_tss_unless_qemu_conf_names_another_account() {
        let tss = ("tss".to_string(), "tss".to_string());
        assert_eq!(swtpm_account(""), tss);
        assert_eq!(
            swtpm_account("user = \"root\"\n#swtpm_user = \"nobody\"\n"),
            tss,
            "a commented-out setting and other keys are not the swtpm account"
        );
        assert_eq!(
            swtpm_account("swtpm_user = \"oneadmin\"\nswtpm_group=\"kvm\"\n"),
            ("oneadmin".to_string(), "kvm".to_string())
        );
    }

    #[test]
    fn account_names_resolve_through_the_user_database() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(user_id("no-such-user-snapback"), None);
    }
}
