//! Test control plane for vworkspace-operator: a real etcd, kube-apiserver and
//! kube-controller-manager built from pinned upstream Go modules (see `tools/`), with our
//! CRDs and the third-party CRDs the operator drives installed.
//!
//! Integration tests call [`ControlPlane::get`] once per test process; `cargo xtask
//! dev-cluster` uses [`start`] with [`Lifetime::Detached`] to keep one running for a person.
//!
//! This crate is a dev-dependency only; `unwrap` is tolerated nowhere on purpose: a
//! failing harness must say what failed.

mod binaries;
mod cluster;
mod crds;
pub mod fixtures;
mod pki;
mod process;
mod shared;

pub use binaries::{Binaries, ETCD_VERSION, KUBERNETES_VERSION, ensure_binaries, repo_root};
pub use cluster::{Running, StartOptions, start};
pub use crds::{install_crds, our_crd_files, third_party_crd_files};
pub use process::Lifetime;
pub use shared::{ControlPlane, fresh_namespace};
