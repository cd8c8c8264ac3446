//! Pull-mode agent (spec connectivity §3): polls the control plane for jobs, applies them
//! within a scope policy, and reports conditions and results back. See docs/agent.md.

pub mod applier;
pub mod backoff;
pub mod client;
pub mod connectivity;
pub mod credentials;
pub mod events;
pub mod idempotency;
pub mod reporter;
pub mod scope;
pub mod signing;
pub mod wire;
