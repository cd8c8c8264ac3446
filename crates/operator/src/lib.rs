//! vworkspace-operator library: everything the binary runs, testable without it.

pub mod agent;
pub mod controller;
pub mod kube_client;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod metrics_auth;
pub mod probes;
pub mod webhook;

// The pure decisions live in `vworkspace-decide`; re-exported at their old paths.
pub use vworkspace_decide::{approval, engines, flux, kinds};
