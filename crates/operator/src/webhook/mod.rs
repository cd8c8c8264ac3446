//! The validating admission webhook (spec §9, issue 13): the rules that need other
//! objects, secrets or operator configuration, served over TLS on its own port.
//!
//! - [`tls`]: the HTTPS listener; the serving certificate is swapped in place, so a
//!   rotation never drops a call.
//! - [`certs`]: where that certificate comes from: files (cert-manager) reloaded when
//!   they change, or generated here with the `caBundle` of our own
//!   ValidatingWebhookConfiguration patched and rotated before expiry.
//! - [`review`]: AdmissionReview in and out, the spec §9.3 short cuts.
//! - [`lookups`]: the reads a review needs (target, registered cluster ids, served kinds).
//! - [`registration`]: the ValidatingWebhookConfiguration we ship (chart, kustomize and
//!   tests build it from the same rules).
//!
//! The decisions themselves are `vworkspace_decide::admission`, built from the checks
//! the controllers run.

pub mod certs;
pub mod lookups;
pub mod registration;
pub mod review;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

pub use registration::{INSTANCE_PATH, OPERATION_PATH};

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// PEM files in a directory (a mounted cert-manager Secret), re-read every `poll`.
    Files {
        dir: PathBuf,
        cert_name: String,
        key_name: String,
        poll: Duration,
    },
    /// Generated at start-up; the `caBundle` of `configuration` is patched.
    Generate(certs::GenerateConfig),
}

/// Settings of the webhook (CLI flags in main.rs).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Listen address, e.g. `0.0.0.0:9443`.
    pub bind: String,
    pub certs: CertSource,
    /// HMAC key of approval claims (the controller's); empty rejects every claim.
    pub approval_secret: String,
    /// Chart URL prefixes an ApplicationInstance may use; empty allows all.
    pub allowed_chart_urls: Vec<String>,
    /// Where Velero objects go (the engines' settings).
    pub velero_namespace: String,
}

/// Binds the listener and serves until `shutdown`; returns the bound address once
/// serving, with the task that runs it.
pub async fn start(
    client: kube::Client,
    config: WebhookConfig,
    shutdown: CancellationToken,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let store = match &config.certs {
        CertSource::Files {
            dir,
            cert_name,
            key_name,
            poll,
        } => {
            let files = certs::Files::new(dir, cert_name, key_name);
            let store = Arc::new(tls::CertStore::new(files.load().with_context(|| {
                format!("loading the webhook certificate from {}", dir.display())
            })?));
            tokio::spawn(files.watch(store.clone(), *poll, shutdown.clone()));
            store
        }
        CertSource::Generate(g) => {
            let rotator = certs::Rotator::new(client.clone(), g.clone())?;
            let store = Arc::new(tls::CertStore::new(rotator.current_key()?));
            // The configuration may not exist yet (installed after the Deployment):
            // the rotator keeps trying, serving meanwhile.
            if let Err(e) = rotator.publish().await {
                tracing::warn!(error = %format!("{e:#}"), "webhook caBundle not published yet; retrying");
            }
            tokio::spawn(rotator.run(store.clone(), shutdown.clone()));
            store
        }
    };
    let state = Arc::new(review::Reviewer::new(client, &config));
    let listener = tokio::net::TcpListener::bind(&config.bind)
        .await
        .with_context(|| format!("binding the webhook listener {}", config.bind))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(tls::serve(listener, store, review::router(state), shutdown));
    Ok((addr, task))
}
