//! Typed subsets of the third-party kinds the operator writes and watches.
//!
//! Only the fields the operator sets or reads are modelled; every optional field is
//! omitted when unset, so server-side apply claims exactly the fields we mean to own,
//! and unknown fields on live objects are ignored when reading.

pub mod argo;
pub mod flux;
pub mod snapshot;
pub mod velero;
pub mod volsync;
