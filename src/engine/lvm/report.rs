//! Reading `lvs --reportformat json --units b --nosuffix` (pure): what snapback needs to know
//! about the logical volume behind a disk.

use serde::Deserialize;

/// The columns asked of `lvs`; the JSON report names each, so their order does not matter.
pub const COLUMNS: &str =
    "vg_name,lv_name,lv_path,lv_size,segtype,pool_lv,lv_attr,vg_free,vg_extent_size";

/// One logical volume as `lvs` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// `linear`, `striped`, `thin`, `raid1`, `snapshot` ...
    pub segtype: String,
    /// The thin pool of a thin volume, else empty.
    pub pool: String,
    /// `lv_attr`, ten characters: the first is the volume's type, the fifth its state.
    pub attr: String,
    /// Free bytes in the volume group (where a classic snapshot's copy-on-write space comes from).
    pub vg_free: u64,
    /// The volume group's extent size in bytes: LVM rounds every size up to it.
    pub extent: u64,
}

impl LogicalVolume {
    /// A thin volume: its snapshot takes space from the pool as it diverges, no size is given.
    pub fn is_thin(&self) -> bool {
        self.segtype == "thin"
    }

    /// A classic snapshot itself (`s`, or `S` while merging): LVM cannot snapshot it again.
    pub fn is_snapshot(&self) -> bool {
        matches!(self.attr.chars().next(), Some('s' | 'S'))
    }

    /// A classic snapshot that ran out of copy-on-write space (`I`, or `S` when also
    /// suspended): its content is lost, anything read from it is not the origin's.
    pub fn is_invalid_snapshot(&self) -> bool {
        self.is_snapshot() && matches!(self.attr.chars().nth(4), Some('I' | 'S'))
    }
}

#[derive(Deserialize)]
struct Report {
    report: Vec<Section>,
}

#[derive(Deserialize)]
struct Section {
    #[serde(default)]
    lv: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    #[serde(default)]
    vg_name: String,
    #[serde(default)]
    lv_name: String,
    #[serde(default)]
    lv_path: String,
    #[serde(default)]
    lv_size: String,
    #[serde(default)]
    segtype: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    vg_free: String,
    #[serde(default)]
    vg_extent_size: String,
}

fn bytes(field: &str, v: &str) -> Result<u64, String> {
    // `--units b --nosuffix` gives plain digits; anything else is not what was asked for.
    v.trim()
        .parse()
        .map_err(|_| format!("lvs reported {field} {v:?}, not a number of bytes"))
}

/// The volumes in an `lvs` JSON report (one for a query by path).
pub fn parse(json: &str) -> Result<Vec<LogicalVolume>, String> {
    let r: Report = serde_json::from_str(json).map_err(|e| format!("lvs report: {e}"))?;
    r.report
        .into_iter()
        .flat_map(|s| s.lv)
        .map(|row| {
            if row.vg_name.is_empty() || row.lv_name.is_empty() {
                return Err("lvs reported a volume without its name or group".to_string());
            }
            Ok(LogicalVolume {
                size: bytes("lv_size", &row.lv_size)?,
                vg_free: bytes("vg_free", &row.vg_free)?,
                extent: bytes("vg_extent_size", &row.vg_extent_size)?,
                vg: row.vg_name,
                name: row.lv_name,
                path: row.lv_path,
                segtype: row.segtype,
                pool: row.pool_lv,
                attr: row.lv_attr,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lvm2 2.03 prints for `lvs --reportformat json --units b --nosuffix -o COLUMNS`.
    const LINEAR: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"vg_name":"vg0", "lv_name":"web", "lv_path":"/dev/vg0/web", "lv_size":"10737418240", "segtype":"linear", "pool_lv":"", "lv_attr":"-wi-a-----", "vg_free":"5368709120", "vg_extent_size":"4194304"}
              ]
          }
      ]
  }
"#;

    #[test]
    fn a_linear_volume_is_read_with_its_sizes_in_bytes() {
        let v = parse(LINEAR).unwrap();
        assert_eq!(
            v,
            [LogicalVolume {
                vg: "vg0".into(),
                name: "web".into(),
                path: "/dev/vg0/web".into(),
                size: 10 << 30,
                segtype: "linear".into(),
                pool: String::new(),
                attr: "-wi-a-----".into(),
                vg_free: 5 << 30,
                extent: 4 << 20,
            }]
        );
        assert!(!v[0].is_thin() && !v[0].is_snapshot() && !v[0].is_invalid_snapshot());
    }

    #[test]
    fn thin_volumes_snapshots_and_invalid_snapshots_are_told_apart() {
        let row = |segtype: &str, attr: &str| {
            LINEAR
                .replace("\"linear\"", &format!("{segtype:?}"))
                .replace("-wi-a-----", attr)
        };
        let thin = &parse(&row("thin", "Vwi-a-tz--")).unwrap()[0];
        assert!(thin.is_thin() && !thin.is_snapshot());
        let snap = &parse(&row("linear", "swi-a-s---")).unwrap()[0];
        assert!(snap.is_snapshot() && !snap.is_invalid_snapshot());
        let overflowed = &parse(&row("linear", "swi-I-s---")).unwrap()[0];
        assert!(overflowed.is_invalid_snapshot());
        let origin = &parse(&row("linear", "owi-a-s---")).unwrap()[0];
        assert!(!origin.is_snapshot(), "an origin can be snapshotted again");
    }

    #[test]
    fn sizes_with_units_an_empty_report_and_broken_json_are_errors_or_nothing() {
        assert!(parse(&LINEAR.replace("10737418240", "10.00g"))
            .unwrap_err()
            .contains("lv_size"));
        assert!(parse(&LINEAR.replace("\"vg0\"", "\"\"")).is_err());
        assert_eq!(parse(r#"{"report":[{"lv":[]}]}"#).unwrap(), []);
        assert!(parse("  Volume group \"x\" not found").is_err());
    }
}
