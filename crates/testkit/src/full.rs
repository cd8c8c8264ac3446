//! The full profile's extra processes, started on a control plane that already serves:
//! an OCI registry and a Helm repository with the test charts, kwok with one simulated
//! node, and Flux source-controller and helm-controller.
//!
//! kube-scheduler and the extra kube-controller-manager controllers (deployment,
//! replicaset, job, serviceaccount) are started by [`crate::cluster::start`] itself.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::charts;
use crate::process::{Lifetime, tail};
use crate::tools::{Tools, pinned_module};

/// Name of the simulated node; pods are scheduled onto it and kwok plays its kubelet.
pub const NODE_NAME: &str = "kwok-node-0";
/// The annotation kwok is told to manage nodes by.
const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// kwok's own default stages (in its module), fed to it with `--config`: without them it
/// does nothing ("no stages found").
const KWOK_STAGES: &[&str] = &[
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
];

/// What the full profile adds to a control plane.
#[derive(Clone, Debug)]
pub struct FullProfile {
    pub tools: Tools,
    /// `http://127.0.0.1:<port>`: a Helm repository (`index.yaml`) with the test charts.
    pub helm_repository_url: String,
    /// `127.0.0.1:<port>`: an OCI registry; charts are at `oci://<this>/charts/<name>`.
    pub oci_registry: String,
    /// The simulated node's name.
    pub node: String,
}

impl FullProfile {
    /// The `chart.url` of an instance whose chart comes from the OCI registry.
    pub fn oci_chart_url(&self) -> String {
        format!(
            "oci://{}/{}",
            self.oci_registry,
            charts::OCI_REPOSITORY_PREFIX
        )
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Started<'a> {
    dir: &'a Path,
    lifetime: Lifetime,
    children: &'a mut Vec<Child>,
    /// `(what, child index, log)` to check while waiting.
    watched: Vec<(&'static str, usize, PathBuf)>,
}

impl Started<'_> {
    fn spawn(
        &mut self,
        what: &'static str,
        bin: &Path,
        args: Vec<String>,
        env: &[(&str, &Path)],
    ) -> Result<()> {
        let log = self.dir.join(format!("{what}.log"));
        let child = crate::process::spawn_with_env(bin, &args, env, &log, self.lifetime)?;
        self.children.push(child);
        self.watched.push((what, self.children.len() - 1, log));
        Ok(())
    }

    fn check(&mut self) -> Result<()> {
        for (what, i, log) in &self.watched {
            if let Some(status) = self.children[*i].try_wait()? {
                bail!(
                    "{what} exited with {status}; last log lines:\n{}",
                    tail(log, 30)
                );
            }
        }
        Ok(())
    }

    async fn wait_http(&mut self, what: &str, url: &str) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.check()?;
            if let Ok(r) = http.get(url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what} did not answer {url} within 90s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Starts the full profile's processes and waits until each serves. `children` receives
/// every started process (the caller owns them, as for the control plane).
pub(crate) async fn start(
    client: &Client,
    kubeconfig: &Path,
    dir: &Path,
    lifetime: Lifetime,
    tools: Tools,
    children: &mut Vec<Child>,
) -> Result<FullProfile> {
    let mut s = Started {
        dir,
        lifetime,
        children,
        watched: Vec::new(),
    };

    // Chart sources first: Flux finds them serving when it starts.
    let packages = charts::package_all()?;
    let repo_dir = dir.join("helm-repository");
    charts::write_http_repository(&packages, &repo_dir)?;
    let repo_port = free_port()?;
    s.spawn(
        "helm-repository",
        &tools.chartrepo,
        vec![
            format!("-addr=127.0.0.1:{repo_port}"),
            format!("-dir={}", repo_dir.display()),
        ],
        &[],
    )?;
    let helm_repository_url = format!("http://127.0.0.1:{repo_port}");
    s.wait_http(
        "the Helm repository",
        &format!("{helm_repository_url}/index.yaml"),
    )
    .await?;

    // The registry listens on localhost only; Flux (go-containerregistry) talks plain
    // HTTP to loopback registries without being told to.
    let registry_port = free_port()?;
    s.spawn(
        "oci-registry",
        &tools.registry,
        vec![format!("-port={registry_port}")],
        &[],
    )?;
    let oci_registry = format!("127.0.0.1:{registry_port}");
    s.wait_http("the OCI registry", &format!("http://{oci_registry}/v2/"))
        .await?;
    charts::push_oci(&packages, &oci_registry).await?;

    // kwok and its node.
    let (_, kwok_dir) = pinned_module("sigs.k8s.io/kwok")?;
    let mut stages = String::new();
    for stage in KWOK_STAGES {
        let path = kwok_dir.join(stage);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading kwok stage {}", path.display()))?;
        stages.push_str("---\n");
        stages.push_str(&text);
        stages.push('\n');
    }
    let stages_file = dir.join("kwok-stages.yaml");
    std::fs::write(&stages_file, stages)?;
    s.spawn(
        "kwok",
        &tools.kwok,
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--config={}", stages_file.display()),
            "--manage-all-nodes=false".into(),
            format!(
                "--manage-nodes-with-annotation-selector={}={}",
                KWOK_ANNOTATION.0, KWOK_ANNOTATION.1
            ),
            format!("--server-address=127.0.0.1:{}", free_port()?),
            "--node-ip=127.0.0.1".into(),
            "--cidr=10.244.0.0/16".into(),
        ],
        &[],
    )?;
    create_node(client).await?;

    // Flux.
    let flux_env: [(&str, &Path); 1] = [("KUBECONFIG", kubeconfig)];
    let storage_port = free_port()?;
    let source_health = free_port()?;
    let storage_dir = dir.join("source-controller-storage");
    std::fs::create_dir_all(&storage_dir)?;
    s.spawn(
        "source-controller",
        &tools.source_controller,
        vec![
            "--watch-all-namespaces=true".into(),
            "--enable-leader-election=false".into(),
            format!("--storage-path={}", storage_dir.display()),
            format!("--storage-addr=127.0.0.1:{storage_port}"),
            format!("--storage-adv-addr=127.0.0.1:{storage_port}"),
            format!("--metrics-addr=127.0.0.1:{}", free_port()?),
            format!("--health-addr=127.0.0.1:{source_health}"),
            "--log-level=info".into(),
        ],
        &flux_env,
    )?;
    let helm_health = free_port()?;
    s.spawn(
        "helm-controller",
        &tools.helm_controller,
        vec![
            "--watch-all-namespaces=true".into(),
            "--enable-leader-election=false".into(),
            format!("--metrics-addr=127.0.0.1:{}", free_port()?),
            format!("--health-addr=127.0.0.1:{helm_health}"),
            "--log-level=info".into(),
        ],
        &flux_env,
    )?;
    s.wait_http(
        "source-controller",
        &format!("http://127.0.0.1:{source_health}/readyz"),
    )
    .await?;
    s.wait_http(
        "helm-controller",
        &format!("http://127.0.0.1:{helm_health}/readyz"),
    )
    .await?;
    wait_node_ready(client, &mut s).await?;
    Ok(FullProfile {
        tools,
        helm_repository_url,
        oci_registry,
        node: NODE_NAME.into(),
    })
}

async fn create_node(client: &Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let resources = json!({"cpu": "32", "memory": "256Gi", "pods": "110"});
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {KWOK_ANNOTATION.0: KWOK_ANNOTATION.1},
            "labels": {"type": "kwok", "kubernetes.io/hostname": NODE_NAME,
                       "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        },
        "status": {"capacity": resources, "allocatable": resources}
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .context("creating the kwok node")?;
    // The API server taints every new node `node.kubernetes.io/not-ready:NoSchedule`;
    // the node-lifecycle controller lifts it once the node is Ready, but it does not run
    // here (it would also evict pods from a node without a kubelet lease). The node is
    // ours, so we clear the taint ourselves.
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .context("clearing the not-ready taint of the kwok node")?;
    Ok(())
}

async fn wait_node_ready(client: &Client, s: &mut Started<'_>) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        s.check()?;
        let node = nodes.get(NODE_NAME).await?;
        let ready = node
            .status
            .and_then(|st| st.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("kwok did not make node {NODE_NAME} Ready within 60s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
