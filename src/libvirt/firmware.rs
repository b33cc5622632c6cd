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
}
