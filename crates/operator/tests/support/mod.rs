//! What the operator's integration tests share: the operator binary under the chart's
//! RBAC, ApplicationInstance and Operation fixtures, and control-plane jobs. Generic
//! fixtures (waiting, namespaces, third-party controller stand-ins) are in
//! `testkit::fixtures`.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod control_plane;
mod instances;
mod operations;
mod replica;

pub use binary::{Operator, chart_identity, chart_rules, free_port};
pub use control_plane::{job, mock, register_cluster};
pub use instances::{
    helm_chart, instance, instance_controller_reports, managed_instance, placeholder,
};
pub use operations::{Env, SECRET, WAIT, message, reason};
pub use replica::start_replica;
pub use testkit::fixtures::eventually;
