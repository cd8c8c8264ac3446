//! The crate's promise, checked on its resolved dependency tree: no Kubernetes client,
//! no controller runtime, no async runtime. A dependency that pulls one in fails here.

use std::process::Command;

#[test]
fn dependency_tree_has_no_client_and_no_tokio() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "--manifest-path", manifest])
        .args(["--package", "vworkspace-decide"])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"kube-core"), "tree not read: {tree}");
    for forbidden in [
        "kube",
        "kube-client",
        "kube-runtime",
        "tokio",
        "hyper",
        "reqwest",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "vworkspace-decide depends on {forbidden}:\n{tree}"
        );
    }
}
