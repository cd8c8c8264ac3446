//! Keeps the committed CRD manifests identical to what the Rust types generate.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Directories holding one file per CRD.
pub fn targets() -> [PathBuf; 2] {
    let root = testkit::repo_root();
    [
        root.join("config/crd/bases"),
        root.join("charts/vworkspace-operator/files/crds"),
    ]
}

pub fn run(check: bool) -> Result<()> {
    let files = vworkspace_api::crd_files();
    let mut stale = Vec::new();
    for dir in targets() {
        std::fs::create_dir_all(&dir)?;
        for (name, yaml) in &files {
            let path = dir.join(name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == *yaml {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else {
                std::fs::write(&path, yaml)?;
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "CRD manifests out of date (run `cargo xtask crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
