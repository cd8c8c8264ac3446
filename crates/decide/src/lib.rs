//! The decisions of vworkspace-operator, with no client in scope.
//!
//! Everything here is a pure function of objects the controllers observed: the Flux
//! children of an instance and the mapping of their status, the typed subsets of
//! third-party kinds, the Operation engines (builders, status mappers, parameter
//! schemas), approval-claim verification and the Operation gates. The crate depends on
//! `kube-core`, not on `kube`'s client or on tokio, so the compiler keeps IO out;
//! `crates/operator` observes, calls these, and acts.

pub mod admission;
pub mod approval;
pub mod cluster;
pub mod engines;
pub mod flux;
pub mod instance;
pub mod kinds;
pub mod namespace_policy;
pub mod operation;
