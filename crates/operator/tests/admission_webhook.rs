//! The admission webhook (issue 13, spec §9) on the real kube-apiserver of the light
//! test control plane, which calls the operator's webhook over TLS on loopback
//! (`clientConfig.url: https://127.0.0.1:<port>/...` with our `caBundle`).
//!
//! Every test registers its own ValidatingWebhookConfiguration (unique name) whose
//! namespace selector matches only its own namespace, so a webhook that is down with
//! `failurePolicy: Fail` can never reach another test's objects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use support::eventually;
use testkit::fixtures::{TestNamespace, test_namespace};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::operation::Operation;
use vworkspace_operator::approval;
use vworkspace_operator::controller::{Context, application_instance};
use vworkspace_operator::webhook::registration::{self, Endpoint, Registration};
use vworkspace_operator::webhook::{self, CertSource, WebhookConfig, certs};

const SECRET: &str = "admission-s3cret";
const TEST_LABEL: &str = "admission.vworkspace.io/test";
const WAIT: Duration = Duration::from_secs(30);

/// A CA and serving certificates it signs (the part cert-manager plays in the chart).
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "test-webhook-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// (certificate PEM, key PEM, certificate DER) for 127.0.0.1.
    fn leaf(&self) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A webhook served in this process and registered for one namespace.
struct Hook {
    client: Client,
    ns: String,
    configuration: String,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    cert_dir: Option<PathBuf>,
}

fn config(certs: CertSource, allowed: &[&str]) -> WebhookConfig {
    WebhookConfig {
        bind: "127.0.0.1:0".into(),
        certs,
        approval_secret: SECRET.into(),
        allowed_chart_urls: allowed.iter().map(|s| s.to_string()).collect(),
        velero_namespace: "velero".into(),
    }
}

fn registration(name: &str, ns: &str, addr: SocketAddr, ca: &str) -> Registration {
    Registration {
        name: name.into(),
        endpoint: Endpoint::Url(format!("https://{addr}")),
        ca_bundle: ca.as_bytes().to_vec(),
        namespace_selector: LabelSelector {
            match_labels: Some([(TEST_LABEL.to_string(), ns.to_string())].into()),
            ..Default::default()
        },
        failure_policy: "Fail".into(),
        timeout_seconds: 5,
    }
}

/// A fresh namespace labelled so that only this test's webhook sees it.
async fn labelled_namespace(prefix: &str) -> (Client, String) {
    let TestNamespace { client, ns, .. } = test_namespace(prefix).await.unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {TEST_LABEL: ns}}})),
        )
        .await
        .unwrap();
    (client, ns)
}

impl Hook {
    /// File mode: a CA-signed certificate written to a directory.
    async fn files(prefix: &str, pki: &Pki, allowed: &[&str]) -> Hook {
        let (client, ns) = labelled_namespace(prefix).await;
        let dir = std::env::temp_dir().join(format!("admission-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, _) = pki.leaf();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        let source = CertSource::Files {
            dir: dir.clone(),
            cert_name: "tls.crt".into(),
            key_name: "tls.key".into(),
            poll: Duration::from_millis(200),
        };
        let shutdown = CancellationToken::new();
        let (addr, task) =
            webhook::start(client.clone(), config(source, allowed), shutdown.clone())
                .await
                .unwrap();
        let configuration = format!("vworkspace-test-{ns}");
        let vwc =
            registration::configuration(&registration(&configuration, &ns, addr, &pki.ca_pem));
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &vwc)
            .await
            .unwrap();
        let hook = Hook {
            client,
            ns,
            configuration,
            addr,
            shutdown,
            task: Some(task),
            cert_dir: Some(dir),
        };
        hook.wait_active().await;
        hook
    }

    /// The apiserver picks a new configuration up asynchronously: wait until an Operation
    /// with a missing target is refused by this webhook.
    async fn wait_active(&self) {
        wait_until_called(&self.ops(), &self.ns).await;
    }

    fn ops(&self) -> Api<Operation> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn instances(&self) -> Api<ApplicationInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    async fn cleanup(mut self) {
        self.stop().await;
        let _ = Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .delete(&self.configuration, &DeleteParams::default())
            .await;
        if let Some(dir) = &self.cert_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn operation(
    ns: &str,
    name: &str,
    t: &str,
    engine: &str,
    target: &str,
    params: Value,
) -> Operation {
    serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": target},
                 "type": t, "engine": engine, "parameters": params}
    }))
    .unwrap()
}

fn instance(v: Value) -> ApplicationInstance {
    serde_json::from_value(v).unwrap()
}

/// A JSON merge patch of `name`.
async fn merge<K>(api: &Api<K>, name: &str, patch: Value) -> Result<K, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

/// Until the apiserver calls the webhook registered for `ns`: an Operation with a
/// missing target is refused (the configuration is picked up asynchronously).
async fn wait_until_called(ops: &Api<Operation>, ns: &str) {
    eventually(
        "the webhook to be called",
        Duration::from_secs(60),
        || async {
            let probe = operation(ns, "probe", "Backup", "velero", "absent", json!({}));
            match ops.create(&PostParams::default(), &probe).await {
                Err(kube::Error::Api(s)) if s.message.contains("denied the request") => Some(()),
                Ok(_) => {
                    ops.delete("probe", &DeleteParams::default()).await.unwrap();
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await;
}

/// The webhook's message of a refused request (panics when it was admitted).
fn denied<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            s.message
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

async fn create_target(hook: &Hook, name: &str, annotations: Value) {
    hook.instances()
        .create(
            &PostParams::default(),
            &instance(support::placeholder(&hook.ns, name, annotations)),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn operation_rules_are_enforced_and_conflicts_admitted() {
    let pki = Pki::new();
    let hook = Hook::files("adm-op", &pki, &[]).await;
    let ns = hook.ns.clone();
    let ops = hook.ops();
    let pp = PostParams::default();
    create_target(&hook, "wiki", json!({"ops.vworkspace.io/backup": "velero", "ops.vworkspace.io/restore": "velero", "ops.vworkspace.io/upgrade": "helm"})).await;
    create_target(&hook, "bare", json!({})).await;

    // #5 target exists, #6 capability annotation, #7 parameters against the schema.
    let gone = format!(
        "admission webhook \"voperation.kb.io\" denied the request: spec.targetRef.name: \
         ApplicationInstance \"gone\" not found in namespace \"{ns}\""
    );
    let refused = [
        ("b0", "Backup", "gone", json!({}), vec![gone.as_str()]),
        (
            "b1",
            "Backup",
            "bare",
            json!({}),
            vec!["missing capability", "ops.vworkspace.io/backup: velero"],
        ),
        ("r0", "Restore", "wiki", json!({}), vec!["backupName"]),
        (
            "b2",
            "Backup",
            "wiki",
            json!({"nope": 1}),
            vec!["spec.parameters"],
        ),
    ];
    for (name, t, target, params, fragments) in refused {
        let m = denied(
            ops.create(&pp, &operation(&ns, name, t, "velero", target, params))
                .await,
        );
        for f in fragments {
            assert!(m.contains(f), "{name}: {m}");
        }
    }
    // #8 a present claim must verify.
    let mut bad = operation(
        &ns,
        "r1",
        "Restore",
        "velero",
        "wiki",
        json!({"backupName": "b"}),
    );
    bad.spec.approvals = Some(serde_json::from_value(json!({"claim": "vws1.e30.00"})).unwrap());
    let m = denied(ops.create(&pp, &bad).await);
    assert!(
        m.contains("spec.approvals.claim: invalid approval claim: signature mismatch"),
        "{m}"
    );
    let exp = jiff::Timestamp::now().as_second() + 600;
    let mut good = operation(
        &ns,
        "r1",
        "Restore",
        "velero",
        "wiki",
        json!({"backupName": "b"}),
    );
    good.spec.approvals = Some(
        serde_json::from_value(json!({"claim": approval::issue(SECRET, "r1", "alice", exp)}))
            .unwrap(),
    );
    ops.create(&pp, &good).await.unwrap();
    // A missing claim on an approval-requiring Operation is admitted (it waits Blocked).
    ops.create(
        &pp,
        &operation(
            &ns,
            "r2",
            "Restore",
            "velero",
            "wiki",
            json!({"backupName": "b"}),
        ),
    )
    .await
    .unwrap();
    // Accepted: every rule passes.
    ops.create(
        &pp,
        &operation(&ns, "b3", "Backup", "velero", "wiki", json!({"ttl": "24h"})),
    )
    .await
    .unwrap();
    // Conflicts are admitted (the controller parks them as Blocked/ConflictingOperation):
    // an Upgrade while another Upgrade of the same target is Running.
    ops.create(
        &pp,
        &operation(
            &ns,
            "u1",
            "Upgrade",
            "helm",
            "wiki",
            json!({"targetVersion": "2.0.0"}),
        ),
    )
    .await
    .unwrap();
    testkit::fixtures::write_status_subresource(&ops, "u1", json!({"phase": "Running"}))
        .await
        .unwrap();
    ops.create(
        &pp,
        &operation(
            &ns,
            "u2",
            "Upgrade",
            "helm",
            "wiki",
            json!({"targetVersion": "2.0.0"}),
        ),
    )
    .await
    .unwrap();
    // UPDATE that changes spec is reviewed again: the capability is gone from the target.
    hook.instances()
        .patch(
            "wiki",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"ops.vworkspace.io/backup": null}}})),
        )
        .await
        .unwrap();
    let m = denied(merge(&ops, "b3", json!({"spec": {"parameters": {"ttl": "48h"}}})).await);
    assert!(m.contains("missing capability"), "{m}");
    // ... and a metadata-only UPDATE is not (spec unchanged).
    merge(&ops, "b3", json!({"metadata": {"labels": {"x": "y"}}}))
        .await
        .unwrap();
    hook.cleanup().await;
}

#[tokio::test]
async fn engine_not_installed_is_refused() {
    // Only this test uses VolSync, and this test binary has its own control plane.
    let pki = Pki::new();
    let hook = Hook::files("adm-engine", &pki, &[]).await;
    let ns = hook.ns.clone();
    create_target(
        &hook,
        "data",
        json!({"ops.vworkspace.io/replicate": "volsync", "ops.vworkspace.io/backup": "velero"}),
    )
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(hook.client.clone());
    crds.delete(
        "replicationsources.volsync.backube",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    let client = hook.client.clone();
    eventually("ReplicationSource to leave discovery", WAIT, || async {
        let list = client
            .list_api_group_resources("volsync.backube/v1alpha1")
            .await;
        let gone = match list {
            Ok(l) => !l.resources.iter().any(|r| r.name == "replicationsources"),
            Err(_) => true,
        };
        gone.then_some(())
    })
    .await;
    // A fresh webhook: the discovery cache of the first may predate the deletion.
    let fresh = Hook::files("adm-engine2", &pki, &[]).await;
    let ns2 = fresh.ns.clone();
    create_target(
        &fresh,
        "data",
        json!({"ops.vworkspace.io/replicate": "volsync", "ops.vworkspace.io/backup": "velero"}),
    )
    .await;
    let params = json!({"sourcePVC": "data", "repository": "restic-config"});
    let m = denied(
        fresh
            .ops()
            .create(
                &PostParams::default(),
                &operation(&ns2, "v1", "Backup", "volsync", "data", params),
            )
            .await,
    );
    assert!(m.contains("spec.engine: ReplicationSource (volsync.backube/v1alpha1) is not served by this cluster"), "{m}");
    // Velero's CRDs are installed: the same target takes a Velero backup.
    fresh
        .ops()
        .create(
            &PostParams::default(),
            &operation(&ns2, "b1", "Backup", "velero", "data", json!({})),
        )
        .await
        .unwrap();
    let _ = ns;
    fresh.cleanup().await;
    hook.cleanup().await;
}

#[tokio::test]
async fn instance_rules_are_enforced() {
    let pki = Pki::new();
    let hook = Hook::files("adm-inst", &pki, &["https://charts.example.org"]).await;
    let ns = hook.ns.clone();
    let api = hook.instances();
    let pp = PostParams::default();
    let managed = |name: &str, inline: Value| {
        let mut v = support::managed_instance(&ns, name, "1.0.0");
        v["spec"]["values"]["inline"] = inline;
        v
    };
    // Inline secret material (spec §9.5); the value is never echoed.
    let m = denied(
        api.create(
            &pp,
            &instance(managed("s1", json!({"db": {"password": "hunter2"}}))),
        )
        .await,
    );
    assert!(
        m.contains("admission webhook \"vapplicationinstance.kb.io\" denied the request"),
        "{m}"
    );
    assert!(
        m.contains(
            "inline secret material rejected at \"db.password\": use secretRef or configMapRef"
        ),
        "{m}"
    );
    assert!(!m.contains("hunter2"), "{m}");
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----";
    let m = denied(
        api.create(&pp, &instance(managed("s2", json!({"tls": {"cert": pem}}))))
            .await,
    );
    assert!(m.contains("PEM private key not allowed inline"), "{m}");
    api.create(
        &pp,
        &instance(managed(
            "ok1",
            json!({"db": {"password": "<set via ExternalSecret>", "host": "db"}}),
        )),
    )
    .await
    .unwrap();
    // What a person sees: `kubectl apply` of a refused object prints one actionable line.
    let cp = testkit::ControlPlane::get().await.unwrap();
    let file = std::env::temp_dir().join(format!("admission-{ns}-leaky.yaml"));
    let leaky = managed("k1", json!({"smtp": {"password": "hunter2"}}));
    std::fs::write(&file, serde_yaml::to_string(&leaky).unwrap()).unwrap();
    let out = tokio::process::Command::new(cp.bin_dir.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("Error from server (Forbidden)")
            && stderr.contains("spec.values.inline: inline secret material rejected at \"smtp.password\": use secretRef or configMapRef")
            && !stderr.contains("hunter2"),
        "{stderr}"
    );
    // Chart URL allow-list.
    let mut evil = managed("u1", json!({}));
    evil["spec"]["chart"]["url"] = json!("https://charts.example.org.evil.test");
    let m = denied(api.create(&pp, &instance(evil)).await);
    assert!(
        m.contains(
            "spec.chart.url \"https://charts.example.org.evil.test\" is not an allowed chart source"
        ),
        "{m}"
    );
    let mut below = managed("u2", json!({}));
    below["spec"]["chart"]["url"] = json!("https://charts.example.org/stable");
    api.create(&pp, &instance(below)).await.unwrap();
    // The cluster-id label is checked in `pull_mode_job_with_an_invalid_object_fails_naming_the_rule`
    // (that test owns this control plane's one Cluster).
    api.create(&pp, &instance(managed("c2", json!({}))))
        .await
        .unwrap();
    // An UPDATE that leaves spec alone is not reviewed; one that changes it is.
    merge(&api, "c2", json!({"metadata": {"annotations": {"a": "b"}}}))
        .await
        .unwrap();
    let m = denied(
        merge(
            &api,
            "c2",
            json!({"spec": {"values": {"inline": {"apiKey": "k"}}}}),
        )
        .await,
    );
    assert!(m.contains("\"apiKey\""), "{m}");
    hook.cleanup().await;
}

#[tokio::test]
async fn finalizers_and_deletion_never_wedge_and_a_down_webhook_fails_closed() {
    let pki = Pki::new();
    let mut hook = Hook::files("adm-wedge", &pki, &[]).await;
    let ns = hook.ns.clone();
    let ops = hook.ops();
    let pp = PostParams::default();
    create_target(&hook, "wiki", json!({"ops.vworkspace.io/backup": "velero"})).await;
    for name in ["b0", "b1", "b2"] {
        let mut op = operation(&ns, name, "Backup", "velero", "wiki", json!({}));
        op.metadata.finalizers = Some(vec!["ops.vworkspace.io/finalizer".into()]);
        ops.create(&pp, &op).await.unwrap();
    }
    // The target goes away: the Operations are now invalid for rule #5.
    hook.instances()
        .delete("wiki", &DeleteParams::default())
        .await
        .unwrap();
    // A started Operation's spec changes are not re-checked against lookups.
    testkit::fixtures::write_status_subresource(&ops, "b0", json!({"phase": "Running"}))
        .await
        .unwrap();
    merge(&ops, "b0", json!({"spec": {"timeoutSeconds": 60}}))
        .await
        .unwrap();
    // Finalizer removal of an object being deleted goes through.
    delete_and_release(&ops, "b1").await;

    // The webhook goes down. failurePolicy Fail: creating or changing spec fails ...
    hook.stop().await;
    let m = denied_or_failed(
        ops.create(
            &pp,
            &operation(&ns, "b3", "Backup", "velero", "wiki", json!({})),
        )
        .await,
    );
    assert!(m.contains("failed calling webhook"), "{m}");
    // ... while metadata-only updates, finalizer removal and deletion still go through.
    merge(&ops, "b2", json!({"metadata": {"labels": {"x": "y"}}}))
        .await
        .unwrap();
    // Cancelling is never sent to the webhook either.
    merge(&ops, "b2", json!({"spec": {"cancel": true}}))
        .await
        .unwrap();
    delete_and_release(&ops, "b2").await;
    hook.cleanup().await;
}

/// Deletes Operation `name` and removes its finalizer, as the controller does; waits
/// until it is gone.
async fn delete_and_release(ops: &Api<Operation>, name: &str) {
    ops.delete(name, &DeleteParams::default()).await.unwrap();
    merge(ops, name, json!({"metadata": {"finalizers": null}}))
        .await
        .unwrap();
    eventually(&format!("{name} gone"), WAIT, || async {
        ops.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// The error text of a failed request, whatever its code.
fn denied_or_failed<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Keeps the apiserver calling the webhook (an Operation with a missing target, refused
/// by the webhook every time) and counts calls whose answer did not come from it.
fn call_continuously(
    hook: &Hook,
    stop: CancellationToken,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, JoinHandle<Vec<String>>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (ops, ns) = (hook.ops(), hook.ns.clone());
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut errors = Vec::new();
        while !stop.is_cancelled() {
            let op = operation(&ns, "probe", "Backup", "velero", "absent", json!({}));
            match ops.create(&PostParams::default(), &op).await {
                Err(kube::Error::Api(s)) if s.message.contains("denied the request") => {
                    ok2.fetch_add(1, Ordering::SeqCst);
                }
                other => {
                    failed2.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{other:?}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        errors
    });
    (ok, failed, task)
}

/// The leaf certificate a TLS client sees at `addr`.
async fn served_leaf(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn file_certificate_rotation_drops_no_call() {
    let pki = Pki::new();
    let hook = Hook::files("adm-rotate", &pki, &[]).await;
    let stop = CancellationToken::new();
    let (ok, failed, task) = call_continuously(&hook, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // cert-manager renews: a new key and certificate from the same CA, written in place.
    let (cert, key, der) = pki.leaf();
    let dir = hook.cert_dir.clone().unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    let addr = hook.addr;
    eventually("the new certificate to be served", WAIT, || async {
        (served_leaf(addr, &pki.ca_pem).await == der).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let errors = task.await.unwrap();
    assert!(ok.load(Ordering::SeqCst) > 10, "too few calls");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "{errors:?}");
    hook.cleanup().await;
}

#[tokio::test]
async fn generated_certificate_patches_the_ca_bundle_and_rotates_without_failed_calls() {
    let (client, ns) = labelled_namespace("adm-gen").await;
    let configuration = format!("vworkspace-test-{ns}");
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    // The chart's object as rendered in generated mode: no caBundle yet. The port is
    // known only after binding, so reserve one first.
    let port = support::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let vwc = registration::configuration(&registration(&configuration, &ns, addr, ""));
    let validity = Duration::from_secs(12);
    let mut cfg = config(
        CertSource::Generate(certs::GenerateConfig {
            configuration: configuration.clone(),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            validity,
            propagation: Duration::from_secs(2),
        }),
        &[],
    );
    cfg.bind = addr.to_string();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let (_, task) = webhook::start(client.clone(), cfg, shutdown.clone())
        .await
        .unwrap();
    let bundle = |v: &ValidatingWebhookConfiguration| -> Vec<Vec<u8>> {
        v.webhooks
            .iter()
            .flatten()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .clone()
                    .map(|b| b.0)
                    .unwrap_or_default()
            })
            .collect()
    };
    // The configuration appears after the operator started (Helm's install order):
    // the operator fills its caBundle once it exists.
    vwcs.create(&PostParams::default(), &vwc).await.unwrap();
    let first = eventually("the caBundle to be patched", WAIT, || async {
        let b = bundle(&vwcs.get(&configuration).await.unwrap());
        b.iter()
            .all(|b| String::from_utf8_lossy(b).contains("BEGIN CERTIFICATE"))
            .then_some(b)
    })
    .await;
    let hook = Hook {
        client: client.clone(),
        ns: ns.clone(),
        configuration: configuration.clone(),
        addr,
        shutdown,
        task: Some(task),
        cert_dir: None,
    };
    hook.wait_active().await;
    let stop = CancellationToken::new();
    let (ok, failed, calls) = call_continuously(&hook, stop.clone());
    // Past the rotation at 2/3 of the validity and its two propagation pauses.
    let until = started + validity * 2 / 3 + Duration::from_secs(7);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    stop.cancel();
    let errors = calls.await.unwrap();
    let now = bundle(&vwcs.get(&configuration).await.unwrap());
    assert_ne!(now, first, "the caBundle did not follow the rotation");
    assert!(ok.load(Ordering::SeqCst) > 10, "too few calls");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "{errors:?}");
    hook.cleanup().await;
}

#[tokio::test]
async fn controller_and_webhook_enforce_the_inline_secret_rule_identically() {
    // The controller's namespace is not selected by the webhook, so the instance gets in
    // and the controller is the one to judge it.
    let TestNamespace {
        client, ns: plain, ..
    } = test_namespace("adm-ctl").await.unwrap();
    let pki = Pki::new();
    let hook = Hook::files("adm-same", &pki, &[]).await;
    let secretive = |ns: &str| {
        let mut v = support::managed_instance(ns, "leaky", "1.0.0");
        v["spec"]["values"]["inline"] = json!({"auth": {"clientSecret": "abc"}});
        instance(v)
    };
    let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), &plain);
    api.create(&PostParams::default(), &secretive(&plain))
        .await
        .unwrap();
    let ctx = Arc::new(Context::new(client.clone()));
    let scope = plain.clone();
    let controller =
        tokio::spawn(async move { application_instance::run(ctx, Some(&scope)).await });
    let blocked = eventually("the controller to block the instance", WAIT, || async {
        let inst = api.get("leaky").await.unwrap();
        let status = inst.status?;
        vworkspace_api::conditions::find(&status.conditions, "Blocked")
            .filter(|c| c.status == "True")
            .cloned()
    })
    .await;
    controller.abort();
    assert_eq!(blocked.reason, "ValidationFailed");
    let m = denied(
        hook.instances()
            .create(&PostParams::default(), &secretive(&hook.ns))
            .await,
    );
    assert!(
        m.ends_with(&format!("denied the request: {}", blocked.message)),
        "webhook: {m}\ncontroller: {}",
        blocked.message
    );
    assert!(
        blocked.message.contains("\"auth.clientSecret\""),
        "{}",
        blocked.message
    );
    let _ = api.delete("leaky", &DeleteParams::default()).await;
    let _ = api
        .patch(
            "leaky",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    hook.cleanup().await;
}

#[tokio::test]
async fn shipped_configuration_is_valid_and_matches_the_tested_one() {
    // config/webhook/manifests.yaml is the chart's template rendered; the apiserver
    // validates it (CEL included) on a dry run, and its rules are the ones tested here.
    let TestNamespace { client, .. } = test_namespace("adm-ship").await.unwrap();
    let path = testkit::repo_root().join("config/webhook/manifests.yaml");
    let shipped: ValidatingWebhookConfiguration =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<ValidatingWebhookConfiguration>::all(client)
        .create(&dry, &shipped)
        .await
        .unwrap();
    let tested =
        registration::configuration(&registration("x", "y", "127.0.0.1:1".parse().unwrap(), ""));
    let key = |c: &ValidatingWebhookConfiguration| {
        c.webhooks
            .iter()
            .flatten()
            .map(|w| {
                (
                    w.name.clone(),
                    w.rules.clone(),
                    w.match_conditions.clone(),
                    w.side_effects.clone(),
                    w.failure_policy.clone(),
                    w.client_config
                        .service
                        .as_ref()
                        .and_then(|s| s.path.clone()),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut expected = key(&tested);
    for (w, e) in shipped.webhooks.iter().flatten().zip(expected.iter_mut()) {
        // The tested one reaches the webhook by URL; compare the paths.
        e.5 = tested
            .webhooks
            .iter()
            .flatten()
            .find(|t| t.name == w.name)
            .and_then(|t| t.client_config.url.clone())
            .and_then(|u| u.strip_prefix("https://127.0.0.1:1").map(str::to_string));
    }
    assert_eq!(key(&shipped), expected);
}

#[tokio::test]
async fn pull_mode_job_with_an_invalid_object_fails_naming_the_rule() {
    const CLUSTER_ID: &str = "0c3e1f52-adm1-4b7e-9a55-webhook00001";
    const REG_TOKEN: &str = "vwksp-reg-admission000000000000000000000001";
    let cp = testkit::ControlPlane::get().await.unwrap();
    let (client, apps_ns) = labelled_namespace("adm-pull").await;
    let op_ns = "vworkspace-system";
    testkit::fixtures::create_namespace(&client, op_ns)
        .await
        .unwrap();

    // The chart's objects in generated mode: a configuration without a caBundle, which
    // the operator binary (started with --webhooks-enabled) fills in.
    let port = support::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let configuration = format!("vworkspace-test-{apps_ns}");
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    vwcs.create(
        &PostParams::default(),
        &registration::configuration(&registration(&configuration, &apps_ns, addr, "")),
    )
    .await
    .unwrap();
    // The chart's RBAC plus its generated-mode caBundle rule.
    let mut rules = support::chart_rules("manager-rules.yaml");
    rules.push(
        serde_json::from_value(json!({
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": [configuration],
            "verbs": ["get", "update", "patch"]
        }))
        .unwrap(),
    );
    let kubeconfig = cp
        .kubeconfig_for_service_account(
            op_ns,
            "vworkspace-operator",
            rules,
            support::chart_rules("namespace-rules.yaml"),
        )
        .await
        .unwrap();
    let mock = support::mock(REG_TOKEN, CLUSTER_ID).await;
    let admin = mock.admin();
    let mut operator = support::Operator::start_with(
        kubeconfig,
        op_ns,
        &[
            "--agent-poll-interval=2s",
            "--webhooks-enabled",
            &format!("--webhook-port={port}"),
            &format!("--webhook-configuration-name={configuration}"),
        ],
    );
    let ops: Api<Operation> = Api::namespaced(client.clone(), &apps_ns);
    wait_until_called(&ops, &apps_ns).await;
    let _clusters =
        support::register_cluster(&client, op_ns, &mock.url(), CLUSTER_ID, REG_TOKEN).await;

    // A job whose instance carries a password inline: refused at the door, and the
    // control plane learns why from the job result.
    let mut leaky = support::managed_instance(&apps_ns, "leaky", "1.0.0");
    leaky["spec"]["values"]["inline"] = json!({"admin": {"password": "p4ss"}});
    admin
        .enqueue(
            CLUSTER_ID,
            &support::job("apply-leaky", "apply", "applicationinstance/leaky@1", leaky),
        )
        .await
        .unwrap();
    let r = admin
        .wait_for_result("apply-leaky", Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(r.outcome, "failed", "{r:?}");
    assert!(
        r.error
            .contains("inline secret material rejected at \"admin.password\""),
        "{r:?}"
    );
    assert!(!r.error.contains("p4ss"), "{r:?}");
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), &apps_ns);
    assert!(apps.get_opt("leaky").await.unwrap().is_none());
    // A valid one goes through (the agent stamps the registered cluster id, which matches).
    admin
        .enqueue(
            CLUSTER_ID,
            &support::job(
                "apply-anchor",
                "apply",
                "applicationinstance/anchor@1",
                support::placeholder(
                    &apps_ns,
                    "anchor",
                    json!({"ops.vworkspace.io/runcommand": "job"}),
                ),
            ),
        )
        .await
        .unwrap();
    let r = admin
        .wait_for_result("apply-anchor", Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(r.outcome, "succeeded", "{r:?}");

    // Cluster-id label against the registered Cluster, written directly.
    let pp = PostParams::default();
    let mut other = support::managed_instance(&apps_ns, "c1", "1.0.0");
    other["metadata"]["labels"] = json!({"app.vworkspace.io/cluster-id": "someone-else"});
    let m = denied(apps.create(&pp, &instance(other)).await);
    assert!(m.contains(&format!("metadata.labels[app.vworkspace.io/cluster-id] is \"someone-else\" but this cluster is registered as \"{CLUSTER_ID}\"")), "{m}");
    let mut ours = support::managed_instance(&apps_ns, "c2", "1.0.0");
    ours["metadata"]["labels"] = json!({"app.vworkspace.io/cluster-id": CLUSTER_ID});
    apps.create(&pp, &instance(ours)).await.unwrap();

    operator.kill().await;
    let _ = vwcs.delete(&configuration, &DeleteParams::default()).await;
}
