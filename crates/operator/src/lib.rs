//! vworkspace-operator library: everything the binary runs, testable without it.

pub mod agent;
pub mod approval;
pub mod controller;
pub mod engines;
pub mod flux;
pub mod kinds;
pub mod leader;
pub mod metrics;
pub mod probes;
