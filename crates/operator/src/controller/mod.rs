//! Controllers: observe → decide (pure, in `crate::flux`) → act.

pub mod application_instance;
mod events;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

/// Shared state handed to every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: "vworkspace-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }
}
