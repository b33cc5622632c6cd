//! The layers of `src/` point one way. The README's architecture section lists them top to
//! bottom in a ```layers block; a module may use only modules of the layers below its own.
//! This test reads that block and every `crate::` path in `src/`, so a new back-edge (or a
//! module the README does not place) fails here, and the README cannot drift from the code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module name → layer number (0 is the bottom), from the README's ```layers block.
fn layers_from_readme(readme: &str) -> BTreeMap<String, usize> {
    let block = readme
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a ```layers block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        // "engine, restore, retention   what they do": names, then two or more spaces.
        let names = line.split("  ").next().unwrap_or_default();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let layer = lines.len() - 1 - i;
            assert!(
                out.insert(name.to_string(), layer).is_none(),
                "{name} is listed twice in the README's layers"
            );
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a file names through `crate::`, with `crate::{a, b::c}` groups opened.
fn used_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for item in inner.split(',') {
                let m = item.trim().split("::").next().unwrap_or_default();
                if !m.is_empty() {
                    out.push(m.to_string());
                }
            }
        } else {
            let m: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !m.is_empty() {
                out.push(m);
            }
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let layers = layers_from_readme(&readme);
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for f in &files {
        let Some(from) = module_of(&src, f) else {
            continue;
        };
        let Some(&from_layer) = layers.get(&from) else {
            problems.push(format!(
                "src/{from} is not placed in the README's layers block"
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for to in used_modules(&text) {
            if to == from {
                continue;
            }
            match layers.get(&to) {
                Some(&l) if l < from_layer => {}
                Some(&l) => problems.push(format!(
                    "{} uses crate::{to} (layer {l}) from layer {from_layer}: a module may use only the layers below it",
                    f.strip_prefix(root()).unwrap().display()
                )),
                None => problems.push(format!(
                    "{} uses crate::{to}, which the README's layers block does not place",
                    f.strip_prefix(root()).unwrap().display()
                )),
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_layer_the_readme_names_exists_in_src() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let src = root().join("src");
    for name in layers_from_readme(&readme).keys() {
        assert!(
            src.join(name).is_dir() || src.join(format!("{name}.rs")).is_file(),
            "the README's layers name {name}, which is not a module of src/"
        );
    }
}

#[test]
fn the_check_sees_grouped_and_inline_paths() {
    let text = "use crate::{api::X, units};\nlet t = crate::catalog::layout::domain_dir(n);";
    assert_eq!(used_modules(text), ["api", "units", "catalog"]);
    let layers = layers_from_readme("```layers\ncli  top\napi, units  bottom\n```\n");
    assert_eq!(layers["cli"], 1);
    assert_eq!(layers["units"], 0);
}
