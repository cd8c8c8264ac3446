//! Starting one control plane: etcd, kube-apiserver, kube-controller-manager, and in the
//! full profile kube-scheduler and the processes of [`crate::full`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::binaries::{Binaries, ensure_binaries};
use crate::crds::{flux_crd_files, install_crds, our_crd_files, third_party_crd_files};
use crate::full::FullProfile;
use crate::pki;
use crate::process::{Lifetime, spawn, tail};

/// Which processes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// etcd, kube-apiserver and kube-controller-manager with the garbage collector and
    /// namespace controllers: an API, nothing that runs pods or installs charts.
    Light,
    /// Light plus kube-scheduler; the deployment, replicaset, job and serviceaccount
    /// controllers; kwok with one simulated node; Flux source- and helm-controller with all
    /// their CRDs; an HTTP Helm repository and an OCI registry serving the test charts.
    Full,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Directory for data, certificates, logs and the kubeconfig; created if missing.
    pub dir: PathBuf,
    pub lifetime: Lifetime,
    /// Install our CRDs and the third-party CRDs.
    pub install_crds: bool,
    pub profile: Profile,
}

/// A started control plane.
pub struct Running {
    pub dir: PathBuf,
    pub binaries: Binaries,
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    pub server: String,
    /// etcd, kube-apiserver, kube-controller-manager, then the full profile's, in start
    /// order.
    pub children: Vec<Child>,
    /// What the full profile added; `None` for [`Profile::Light`].
    pub full: Option<FullProfile>,
}

impl Running {
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

fn free_port() -> Result<(TcpListener, u16)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

fn kubeconfig_yaml(server: &str, pki: &pki::Pki) -> String {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testkit\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: testkit\n  context:\n    cluster: testkit\n    user: admin\n    namespace: default\ncurrent-context: testkit\n",
        b64(&pki.ca_pem),
        b64(&pki.admin_cert_pem),
        b64(&pki.admin_key_pem),
    )
}

/// An admin client for a kubeconfig written by [`start`].
pub(crate) async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let config = config_from_kubeconfig(path).await?;
    Ok(Client::try_from(config)?)
}

pub(crate) async fn config_from_kubeconfig(path: &Path) -> Result<Config> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

fn check_alive(child: &mut Child, what: &str, log: &Path) -> Result<()> {
    if let Some(status) = child.try_wait()? {
        bail!(
            "{what} exited with {status}; last log lines:\n{}",
            tail(log, 30)
        );
    }
    Ok(())
}

/// Starts a control plane and waits until it serves and (optionally) has the CRDs.
///
/// Blocking: it runs its own small tokio runtime for the readiness checks, so it can be
/// called from a plain thread (tests spawn from a dedicated long-lived thread, see
/// [`Lifetime::TiedToProcess`]).
pub fn start(opts: &StartOptions) -> Result<Running> {
    let binaries = ensure_binaries()?;
    let full_profile = opts.profile == Profile::Full;
    let tools = if full_profile {
        Some(crate::tools::ensure_tools()?)
    } else {
        None
    };
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = pki::generate(dir)?;

    let (l1, etcd_client) = free_port()?;
    let (l2, etcd_peer) = free_port()?;
    let (l3, api_port) = free_port()?;
    drop((l1, l2, l3));

    let mut children = Vec::new();
    let etcd_log = dir.join("etcd.log");
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let etcd_args = vec![
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ];
    children.push(spawn(
        &binaries.path("etcd"),
        &etcd_args,
        &etcd_log,
        opts.lifetime,
    )?);

    let api_log = dir.join("kube-apiserver.log");
    let server = format!("https://127.0.0.1:{api_port}");
    let api_args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", pki.sa_pub.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--service-cluster-ip-range=10.96.0.0/24".into(),
        "--authorization-mode=RBAC".into(),
        "--allow-privileged=true".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        "--v=1".into(),
    ];
    children.push(spawn(
        &binaries.path("kube-apiserver"),
        &api_args,
        &api_log,
        opts.lifetime,
    )?);

    let kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let client = client_from_kubeconfig(&kubeconfig).await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            check_alive(&mut children[0], "etcd", &etcd_log)?;
            check_alive(&mut children[1], "kube-apiserver", &api_log)?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(body) = client.request_text(req).await
                && body.trim() == "ok"
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready after 90s; last log lines:\n{}",
                    tail(&api_log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let kcm_log = dir.join("kube-controller-manager.log");
        let controllers = if full_profile {
            // What Deployments and Jobs need to get pods, and PodDisruptionBudget status
            // (the chart's PDB); no node-lifecycle controller (see full::create_node).
            "garbage-collector-controller,namespace-controller,deployment-controller,\
             replicaset-controller,job-controller,serviceaccount-controller,\
             disruption-controller"
        } else {
            "garbage-collector-controller,namespace-controller"
        };
        let kcm_args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--controllers={controllers}"),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ];
        children.push(spawn(
            &binaries.path("kube-controller-manager"),
            &kcm_args,
            &kcm_log,
            opts.lifetime,
        )?);

        let scheduler_log = dir.join("kube-scheduler.log");
        if full_profile {
            let args = vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                "--v=1".into(),
            ];
            children.push(spawn(
                &binaries.path("kube-scheduler"),
                &args,
                &scheduler_log,
                opts.lifetime,
            )?);
        }

        if opts.install_crds || full_profile {
            let mut files = our_crd_files()?;
            files.extend(third_party_crd_files()?);
            if full_profile {
                files.extend(flux_crd_files()?);
            }
            install_crds(&client, &files).await?;
        }
        check_alive(&mut children[2], "kube-controller-manager", &kcm_log)?;
        let full = match tools {
            Some(tools) => {
                check_alive(&mut children[3], "kube-scheduler", &scheduler_log)?;
                Some(
                    crate::full::start(
                        &client,
                        &kubeconfig,
                        dir,
                        opts.lifetime,
                        tools,
                        &mut children,
                    )
                    .await?,
                )
            }
            None => None,
        };
        Ok(full)
    });
    let full = match result {
        Ok(full) => full,
        Err(err) => {
            for child in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(err);
        }
    };
    Ok(Running {
        dir: dir.clone(),
        binaries,
        kubeconfig,
        server,
        children,
        full,
    })
}
