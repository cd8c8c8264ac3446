//! Test control plane for vworkspace-operator: a real etcd, kube-apiserver and
//! kube-controller-manager built from pinned upstream Go modules (see `tools/`), with our
//! CRDs and the third-party CRDs the operator drives installed.
//!
//! Integration tests call [`ControlPlane::get`] (light profile) or [`FullCluster::get`]
//! (full profile: scheduler, kwok, Flux, chart sources; see [`Profile`]) once per test
//! process; `cargo xtask dev-cluster` uses [`start`] with [`Lifetime::Detached`] to keep
//! one running for a person.
//!
//! This crate is a dev-dependency only; `unwrap` is tolerated nowhere on purpose: a
//! failing harness must say what failed.

mod binaries;
pub mod charts;
mod cluster;
mod crds;
pub mod fixtures;
mod full;
mod pki;
pub mod policies;
mod process;
mod shared;
mod tools;

pub use binaries::{Binaries, ETCD_VERSION, KUBERNETES_VERSION, ensure_binaries, repo_root};
pub use cluster::{Profile, Running, StartOptions, start};
pub use crds::{flux_crd_files, install_crds, our_crd_files, third_party_crd_files};
pub use full::{FullProfile, NODE_NAME};
pub use process::Lifetime;
pub use shared::{ControlPlane, FullCluster, fresh_namespace};
pub use tools::{Tools, ensure_helm, ensure_tools};
