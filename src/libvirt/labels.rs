//! snapback's labels in a domain's `<metadata>` (pure): what `snapback label` and `unlabel`
//! write and `domainSelector.metadata` matches. One element,
//! `<labels xmlns="https://snapback.dev/xmlns/1" key="value" .../>`, under the key `snapback`;
//! other tools' metadata is never touched (libvirt keeps each namespace's element apart).

use std::collections::BTreeMap;

use super::domain_xml::escape_attr;

/// A label key: it becomes an XML attribute name, so letters, digits, `_`, `-` and `.`,
/// starting with a letter or `_` (no `:`, which would name a namespace).
pub fn check_key(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if first_ok && rest_ok && !key.to_ascii_lowercase().starts_with("xml") {
        Ok(())
    } else {
        Err(format!(
            "label key '{key}': use letters, digits, '_', '-' and '.', starting with a letter or '_' (and not 'xml')"
        ))
    }
}

/// `key=value` arguments, in order (a later one for the same key wins).
pub fn parse_assignments(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!("'{a}' is not key=value"));
        };
        check_key(k)?;
        if v.chars().any(char::is_control) {
            return Err(format!(
                "label {k}: the value may not hold control characters"
            ));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The element for `labels`, or `None` to remove it (no labels left).
pub fn element(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    let attrs: String = labels
        .iter()
        .map(|(k, v)| format!(" {k}=\"{}\"", escape_attr(v)))
        .collect();
    Some(format!("<labels{attrs}/>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_key_value_pairs_with_keys_that_are_attribute_names() {
        let got = parse_assignments(&["tier=gold".into(), "backup=".into(), "tier=silver".into()])
            .unwrap();
        assert_eq!(got.get("tier").map(String::as_str), Some("silver"));
        assert_eq!(got.get("backup").map(String::as_str), Some(""));
        for bad in ["tier", "1st=x", "a:b=x", "=x", "xmlns=x", "a b=x"] {
            assert!(parse_assignments(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_assignments(&["a=x\ny".into()]).is_err());
    }

    #[test]
    fn the_element_holds_every_label_escaped_and_none_means_remove() {
        let mut l = BTreeMap::new();
        assert_eq!(element(&l), None);
        l.insert("tier".to_string(), "a\"<&'b".to_string());
        let e = element(&l).unwrap();
        // Read back the way the selector reads it.
        let xml = format!(
            "<domain><metadata><sb:labels xmlns:sb=\"{}\"{}</metadata></domain>",
            super::super::domain_xml::METADATA_NS,
            &e["<labels".len()..]
        );
        let read = super::super::domain_xml::snapback_metadata(&xml);
        assert_eq!(read, l, "{xml}");
    }
}
