//! The committed CRD manifests are exactly what the Rust types generate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn committed_copies_match_the_generator() {
    let files = vworkspace_api::crd_files();
    assert_eq!(files.len(), 3, "one file per CRD");
    for dir in ["config/crd/bases", "charts/vworkspace-operator/files/crds"] {
        for (name, yaml) in &files {
            let path = repo().join(dir).join(name);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == *yaml,
                "{} differs from the generated CRD; run `cargo xtask crdgen`",
                path.display()
            );
        }
        let on_disk = std::fs::read_dir(repo().join(dir)).unwrap().count();
        assert_eq!(
            on_disk,
            files.len(),
            "{dir} holds a file that is not a generated CRD"
        );
    }
}

#[test]
fn crd_subcommand_prints_all_three() {
    let out = Command::new(env!("CARGO_BIN_EXE_vworkspace-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, vworkspace_api::crd_yaml());
    for kind in ["ApplicationInstance", "Operation", "Cluster"] {
        assert!(text.contains(&format!("kind: {kind}\n")), "missing {kind}");
    }
}
