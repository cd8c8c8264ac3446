//! The Pull-mode wire format lives in the `vworkspace-protocol` crate, shared with the
//! mock control plane; re-exported here under the agent's name for it.

pub use vworkspace_protocol::*;
