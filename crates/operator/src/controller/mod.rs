//! Controllers: observe → decide (pure, in `crate::flux`) → act.

pub mod application_instance;
pub mod cluster;
mod events;
pub mod operation;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

/// Shared state handed to every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Label selector limiting which ApplicationInstances and Operations are reconciled
    /// (`--reconcile-selector`); `None` reconciles all of them.
    pub selector: Option<String>,
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
            selector: None,
        }
    }

    /// Only reconcile objects matching `selector` (e.g.
    /// `app.vworkspace.io/managed-by in (control-plane,odoo)`).
    pub fn with_selector(mut self, selector: Option<String>) -> Self {
        self.selector = selector.filter(|s| !s.trim().is_empty());
        self
    }

    /// Watch configuration for the primary resource of a controller.
    pub fn primary_watch_config(&self) -> kube::runtime::watcher::Config {
        let config = kube::runtime::watcher::Config::default();
        match &self.selector {
            Some(s) => config.labels(s),
            None => config,
        }
    }
}
