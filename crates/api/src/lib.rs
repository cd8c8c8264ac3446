//! The vworkspace-operator API: CRD types, their conditions, well-known keys, pure spec
//! validation and CRD manifest generation.

pub mod application_instance;
pub mod cluster;
pub mod conditions;
pub mod crdgen;
pub mod keys;
pub mod operation;
mod schema;
pub mod validation;

pub use application_instance::ApplicationInstance;
pub use cluster::Cluster;
pub use crdgen::{crd_file_name, crd_files, crd_yaml, crds};
pub use operation::Operation;
