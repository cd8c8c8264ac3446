//! The webhook's serving certificate, two ways.
//!
//! - [`Files`]: PEM files in a directory (the Secret cert-manager writes, mounted). They
//!   are re-read on a short poll and swapped in when they change; a half-written or
//!   mismatched pair is ignored until it is whole.
//! - [`Rotator`]: generated here. A fresh CA and serving certificate (rcgen) are made at
//!   start-up; the CA is added to the `caBundle` of our ValidatingWebhookConfiguration.
//!   At two thirds of the validity a new pair is made, its CA added to the bundle first,
//!   and the serving certificate switched only after the apiserver had time to see the
//!   new bundle, so no call fails; the old CA leaves the bundle afterwards. CAs of other
//!   replicas found in the bundle are kept until they expire.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::tls::{CertStore, certified_key};

/// PEM files in a directory.
#[derive(Clone, Debug)]
pub struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    pub fn new(dir: &Path, cert_name: &str, key_name: &str) -> Self {
        Files {
            cert: dir.join(cert_name),
            key: dir.join(key_name),
        }
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let cert = std::fs::read(&self.cert)
            .with_context(|| format!("reading {}", self.cert.display()))?;
        let key =
            std::fs::read(&self.key).with_context(|| format!("reading {}", self.key.display()))?;
        Ok((cert, key))
    }

    pub fn load(&self) -> Result<CertifiedKey> {
        let (cert, key) = self.read()?;
        certified_key(&cert, &key)
    }

    /// Swaps the files into `store` whenever their content changes.
    pub async fn watch(self, store: Arc<CertStore>, poll: Duration, shutdown: CancellationToken) {
        let mut seen = self.read().ok();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            let Ok(now) = self.read() else { continue };
            if seen.as_ref() == Some(&now) {
                continue;
            }
            match certified_key(&now.0, &now.1) {
                Ok(key) => {
                    store.replace(key);
                    tracing::info!(path = %self.cert.display(), "webhook certificate reloaded");
                    seen = Some(now);
                }
                // Mid-update (one file new, one old): try again on the next poll.
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "webhook certificate not loadable yet")
                }
            }
        }
    }
}

/// Settings of the generated mode.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// The ValidatingWebhookConfiguration whose `caBundle` is ours to patch.
    pub configuration: String,
    /// DNS names (and IPs) the serving certificate is for.
    pub hosts: Vec<String>,
    /// Lifetime of each CA and serving certificate; rotated at two thirds.
    pub validity: Duration,
    /// How long the apiserver is given to see a new `caBundle` before the serving
    /// certificate switches to it.
    pub propagation: Duration,
}

/// One generated CA and the serving certificate it signed.
#[derive(Clone)]
struct Pair {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    issued: SystemTime,
}

fn generate(cfg: &GenerateConfig) -> Result<Pair> {
    let now = SystemTime::now();
    let not_before = now - Duration::from_secs(60);
    let not_after = now + cfg.validity;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "vworkspace-operator-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before.into();
    ca.not_after = not_after.into();
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    for host in &cfg.hosts {
        leaf.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.as_str().try_into()?),
        });
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "vworkspace-operator-webhook");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before.into();
    leaf.not_after = not_after.into();
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Pair {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issued: now,
    })
}

struct State {
    current: Pair,
    /// Made, published, not yet served.
    next: Option<Pair>,
    /// Our CAs no longer used, to drop from the bundle.
    retired: Vec<String>,
}

/// The generated-certificate mode.
pub struct Rotator {
    client: kube::Client,
    cfg: GenerateConfig,
    state: Mutex<State>,
}

impl Rotator {
    pub fn new(client: kube::Client, cfg: GenerateConfig) -> Result<Self> {
        let current = generate(&cfg).context("generating the webhook CA and certificate")?;
        Ok(Rotator {
            client,
            cfg,
            state: Mutex::new(State {
                current,
                next: None,
                retired: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_key(&self) -> Result<CertifiedKey> {
        let s = self.state();
        certified_key(s.current.cert_pem.as_bytes(), s.current.key_pem.as_bytes())
    }

    /// PEM of the CA currently signing the serving certificate.
    pub fn current_ca(&self) -> String {
        self.state().current.ca_pem.clone()
    }

    /// Makes the `caBundle` of every webhook in our configuration hold our CAs (current
    /// and next), keeping other still-valid CAs and dropping our retired ones.
    pub async fn publish(&self) -> Result<()> {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let (ours, retired) = {
            let s = self.state();
            let mut ours = vec![s.current.ca_pem.clone()];
            ours.extend(s.next.as_ref().map(|n| n.ca_pem.clone()));
            (ours, s.retired.clone())
        };
        let mut vwc = api.get(&self.cfg.configuration).await.with_context(|| {
            format!(
                "reading ValidatingWebhookConfiguration {}",
                self.cfg.configuration
            )
        })?;
        let mut changed = false;
        for wh in vwc.webhooks.iter_mut().flatten() {
            let old = wh
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let new = merge_bundle(&old, &ours, &retired, SystemTime::now());
            if new != old {
                wh.client_config.ca_bundle = Some(k8s_openapi::ByteString(new));
                changed = true;
            }
        }
        if changed {
            api.replace(&self.cfg.configuration, &PostParams::default(), &vwc)
                .await
                .context("updating the caBundle")?;
            tracing::info!(configuration = %self.cfg.configuration, "webhook caBundle updated");
        }
        Ok(())
    }

    /// Publishes, then rotates before expiry, until `shutdown`.
    pub async fn run(self, store: Arc<CertStore>, shutdown: CancellationToken) {
        // Heals a bundle reset by a `helm upgrade`; a failed publish is retried sooner.
        const RECHECK: Duration = Duration::from_secs(30);
        const RETRY: Duration = Duration::from_secs(3);
        let mut published = false;
        loop {
            let due = {
                let s = self.state();
                s.current.issued + self.cfg.validity * 2 / 3
            };
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(if published { RECHECK } else { RETRY });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if SystemTime::now() >= due
                && let Err(e) = self.rotate(&store, &shutdown).await
            {
                tracing::warn!(error = %format!("{e:#}"), "webhook certificate rotation");
            }
            published = match self.publish().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "webhook caBundle");
                    false
                }
            };
        }
    }

    async fn rotate(&self, store: &CertStore, shutdown: &CancellationToken) -> Result<()> {
        let next = match self.state().next.clone() {
            Some(n) => n,
            None => generate(&self.cfg)?,
        };
        self.state().next = Some(next.clone());
        self.publish().await?;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(self.cfg.propagation) => {}
        }
        store.replace(certified_key(
            next.cert_pem.as_bytes(),
            next.key_pem.as_bytes(),
        )?);
        {
            let mut s = self.state();
            let old = std::mem::replace(&mut s.current, next);
            s.next = None;
            s.retired.push(old.ca_pem);
        }
        tracing::info!("webhook serving certificate rotated");
        // Connections already open keep the old certificate; new ones get the new one.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(self.cfg.propagation) => {}
        }
        self.publish().await
    }
}

/// The certificates of a PEM bundle, each as its own PEM block.
fn split_pem(bundle: &[u8]) -> Vec<(String, Option<i64>)> {
    x509_parser::pem::Pem::iter_from_buffer(bundle)
        .filter_map(Result::ok)
        .map(|pem| {
            let not_after = pem
                .parse_x509()
                .ok()
                .map(|c| c.validity().not_after.timestamp());
            let text = pem_text(&pem.contents);
            (text, not_after)
        })
        .collect()
}

/// One certificate as PEM, the same text for the same DER whatever the input's line
/// breaks: bundles are compared entry by entry.
fn pem_text(der: &[u8]) -> String {
    use base64::Engine as _;
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in der.chunks(48) {
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn normalize(pem: &str) -> Option<String> {
    split_pem(pem.as_bytes()).into_iter().next().map(|(t, _)| t)
}

/// The new bundle: entries of `old` that are still valid and not `retired`, then every
/// one of `ours` not already there.
fn merge_bundle(old: &[u8], ours: &[String], retired: &[String], now: SystemTime) -> Vec<u8> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let retired: Vec<String> = retired.iter().filter_map(|r| normalize(r)).collect();
    let ours: Vec<String> = ours.iter().filter_map(|o| normalize(o)).collect();
    let mut out: Vec<String> = split_pem(old)
        .into_iter()
        .filter(|(pem, not_after)| !retired.contains(pem) && not_after.is_some_and(|t| t > now))
        .map(|(pem, _)| pem)
        .collect();
    for o in ours {
        if !out.contains(&o) {
            out.push(o);
        }
    }
    out.concat().into_bytes()
}

/// The serving hosts of the chart's Service, plus loopback.
pub fn service_hosts(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(validity: Duration) -> GenerateConfig {
        GenerateConfig {
            configuration: "x".into(),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            validity,
            propagation: Duration::ZERO,
        }
    }

    #[test]
    fn bundle_keeps_valid_foreign_cas_and_drops_retired_and_expired() {
        let a = generate(&cfg(Duration::from_secs(3600))).unwrap();
        let b = generate(&cfg(Duration::from_secs(3600))).unwrap();
        let old = generate(&cfg(Duration::from_secs(3600))).unwrap();
        let expired = generate(&cfg(Duration::from_secs(1))).unwrap();
        let bundle = format!("{}{}{}", a.ca_pem, old.ca_pem, expired.ca_pem);
        let later = SystemTime::now() + Duration::from_secs(120);
        let merged = merge_bundle(
            bundle.as_bytes(),
            std::slice::from_ref(&b.ca_pem),
            std::slice::from_ref(&old.ca_pem),
            later,
        );
        let merged = String::from_utf8(merged).unwrap();
        let entries = split_pem(merged.as_bytes());
        assert_eq!(entries.len(), 2, "{merged}");
        assert_eq!(Some(entries[0].0.clone()), normalize(&a.ca_pem));
        assert_eq!(Some(entries[1].0.clone()), normalize(&b.ca_pem));
        // Idempotent.
        let again = merge_bundle(
            merged.as_bytes(),
            std::slice::from_ref(&b.ca_pem),
            &[],
            later,
        );
        assert_eq!(again, merged.into_bytes());
    }

    #[test]
    fn generated_pair_loads() {
        let p = generate(&cfg(Duration::from_secs(60))).unwrap();
        certified_key(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).unwrap();
        assert_eq!(split_pem(p.ca_pem.as_bytes()).len(), 1);
    }
}
