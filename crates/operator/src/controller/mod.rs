//! Controllers: observe → decide (pure) → act, on the shared reconciler [`kit`].

pub mod application_instance;
pub mod cluster;
pub mod events;
pub mod kit;
pub mod operation;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::Recorder;

use crate::metrics::Metrics;

/// Shared state handed to every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Label selector limiting which ApplicationInstances and Operations are reconciled
    /// (`--reconcile-selector`); `None` reconciles all of them.
    pub selector: Option<String>,
    pub kit: kit::Kit,
}

impl kit::HasKit for Context {
    fn kit(&self) -> &kit::Kit {
        &self.kit
    }
}

impl Context {
    /// A context with its own (unserved) metrics registry; see [`Context::with_metrics`].
    pub fn new(client: Client) -> Self {
        let kit = kit::Kit::new(client.clone(), Arc::new(Metrics::new()));
        Context {
            recorder: kit.recorder().clone(),
            client,
            selector: None,
            kit,
        }
    }

    /// Records reconcile metrics in `metrics` (the registry served on `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.kit = kit::Kit::new(self.client.clone(), metrics);
        self.recorder = self.kit.recorder().clone();
        self
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
