//! `cargo xtask demo`: the main job on an embedded default, with real controllers.
//!
//! Starts the full test cluster (control plane, kube-scheduler, kwok with a simulated
//! node, Flux source- and helm-controller, a local Helm repository), the mock control
//! plane and the operator binary; registers the cluster through a `Cluster` object and a
//! one-time token; enqueues an `ensure-application-instance` job for the `webapp` test
//! chart; and prints what the real controllers do until the control plane holds a
//! `succeeded` result. Then two day-2 Operations run for real: a RunCommand Job and a
//! chart upgrade. Nothing here writes another controller's status. Everything it started
//! is stopped on exit or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::batch::v1::Job as BatchJob;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use mock_control_plane::AdminClient;
use serde_json::json;
use testkit::{FullProfile, Lifetime, Profile, StartOptions};
use tokio::process::{Child, Command};
use vworkspace_api::operation::Phase;
use vworkspace_api::{ApplicationInstance, Cluster, Operation};
use vworkspace_protocol::Job;

const OPERATOR_NAMESPACE: &str = "vworkspace-system";
const APP_NAMESPACE: &str = "demo";
const CLUSTER_ID: &str = "8c9e2f4a-demo-4b1e-9d3c-0a7f5e6b2c11";
const ADMIN_TOKEN: &str = "demo-admin";

struct Timeline(Instant);

impl Timeline {
    fn say(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>6.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

pub fn run(hold: bool) -> Result<()> {
    let t = Timeline(Instant::now());
    println!(
        "vworkspace demo: an application delivered through Pull mode, installed by real Flux\n"
    );
    let root = testkit::repo_root();
    t.say("building the operator and the mock control plane (cargo build)");
    let bins = build_binaries(&root)?;

    t.say("building or reusing the cluster's programs (Kubernetes, Flux, kwok, registry) from their pinned Go modules");
    let build_started = Instant::now();
    testkit::ensure_binaries()?;
    testkit::ensure_tools()?;
    let build = build_started.elapsed();
    if build > Duration::from_secs(20) {
        t.say(format!(
            "built them in {:.0}s — a one-time cost: they are cached under ~/.cache/vworkspace-operator, later runs start at once",
            build.as_secs_f64()
        ));
    } else {
        t.say(format!(
            "all cached ({:.1}s); the first run on a machine builds them (up to about 40 minutes cold on 2 busy cores, mostly the two Flux controllers)",
            build.as_secs_f64()
        ));
    }

    t.say("starting the cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (one simulated node), Flux source-controller and helm-controller, a Helm repository with test charts");
    let dir = std::env::temp_dir().join(format!("vworkspace-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Blocking and runtime-free: must run before our own runtime starts.
    let mut cluster = testkit::start(&StartOptions {
        dir: dir.join("cluster"),
        lifetime: Lifetime::TiedToProcess,
        install_crds: true,
        profile: Profile::Full,
    })?;
    let full = cluster
        .full
        .clone()
        .context("the full cluster profile did not start")?;
    t.say(format!(
        "cluster up at {} (Kubernetes {}); node {} Ready (kwok); Flux serving; Helm repository at {}",
        cluster.server,
        testkit::KUBERNETES_VERSION,
        full.node,
        full.helm_repository_url
    ));

    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = drive(&t, &bins, &cluster.kubeconfig, &cluster.binaries.dir, &dir, &full, hold) => r,
            _ = tokio::signal::ctrl_c() => {
                println!();
                t.say("interrupted");
                Ok(())
            }
        }
    });
    // Children of `drive` are killed on drop; then the control plane.
    drop(runtime);
    for child in cluster.children.iter_mut().rev() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    t.say("stopped the operator, the mock control plane, Flux, kwok and the Kubernetes control plane; removed their data");
    outcome
}

struct Binaries {
    operator: PathBuf,
    mock: PathBuf,
}

fn build_binaries(root: &Path) -> Result<Binaries> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--quiet",
            "-p",
            "vworkspace-operator",
            "-p",
            "mock-control-plane",
            "--bins",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(Binaries {
        operator: target.join("debug/vworkspace-operator"),
        mock: target.join("debug/mock-control-plane"),
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    Ok(Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
    )?)
}

fn spawn_logged(bin: &Path, args: &[String], envs: &[(&str, String)], log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn registration_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "vwksp-reg-{:032x}",
        nanos ^ (u128::from(std::process::id()) << 64)
    )
}

async fn drive(
    t: &Timeline,
    bins: &Binaries,
    kubeconfig: &Path,
    kubectl_dir: &Path,
    dir: &Path,
    full: &FullProfile,
    hold: bool,
) -> Result<()> {
    let kube = client(kubeconfig).await?;

    // The mock control plane, with durable state in a file.
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let token = registration_token();
    let mock_log = dir.join("mock-control-plane.log");
    let _mock = spawn_logged(
        &bins.mock,
        &[
            format!("--addr=127.0.0.1:{port}"),
            format!("--registration-token={token}"),
            format!("--cluster-id={CLUSTER_ID}"),
            format!("--admin-token={ADMIN_TOKEN}"),
            format!("--db={}", dir.join("mock.db").display()),
        ],
        &[],
        &mock_log,
    )?;
    let http = reqwest::Client::new();
    wait_for(
        "the mock control plane",
        Duration::from_secs(20),
        || async {
            Ok(http
                .get(format!("{url}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ()))
        },
    )
    .await?;
    t.say(format!(
        "mock control plane listening on {url} (state in {})",
        dir.join("mock.db").display()
    ));
    let admin = AdminClient::new(url.clone(), Some(ADMIN_TOKEN.to_string()));

    // The operator, in its own namespace.
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    for ns in [OPERATOR_NAMESPACE, APP_NAMESPACE] {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                labels: Some([("managed-by".to_string(), "vworkspace".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &obj).await?;
    }
    let operator_log = dir.join("operator.log");
    let probe_port = free_port()?;
    let mut operator = spawn_logged(
        &bins.operator,
        &[
            "run".into(),
            "--agent-poll-interval=5s".into(),
            format!("--health-probe-bind-address=127.0.0.1:{probe_port}"),
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAMESPACE", OPERATOR_NAMESPACE.into()),
            ("RUST_LOG", "info,kube=warn".into()),
        ],
        &operator_log,
    )?;
    t.say(format!(
        "operator started (pid {}, log {})",
        operator.id().unwrap_or_default(),
        operator_log.display()
    ));

    // Registration: a token Secret and the Cluster object, as an installer would apply them.
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), OPERATOR_NAMESPACE);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("vworkspace-registration".into()),
            ..Default::default()
        },
        string_data: Some([("registrationToken".to_string(), token.clone())].into()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    let clusters: Api<Cluster> = Api::all(kube.clone());
    clusters
        .patch(
            "this-cluster",
            &PatchParams::apply("vworkspace-demo"),
            &Patch::Apply(json!({
                "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": "this-cluster"},
                "spec": {"controlPlaneEndpoint": url, "clusterId": CLUSTER_ID,
                         "registrationTokenSecretRef": {"name": "vworkspace-registration"}}
            })),
        )
        .await?;
    t.say("applied Cluster this-cluster with a one-time registration token Secret");

    let deadline = Instant::now() + Duration::from_secs(60);
    let registered = loop {
        if let Some(status) = operator.try_wait()? {
            bail!(
                "the operator exited with {status}; see {}",
                operator_log.display()
            );
        }
        let c = clusters.get("this-cluster").await?;
        let consumed = c.status.filter(|s| {
            s.credential_status
                .as_ref()
                .and_then(|c| c.registration_token_consumed)
                .unwrap_or(false)
        });
        if let Some(status) = consumed {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not register within 60s; see {}",
                operator_log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secret_ref = registered
        .credentials_secret_ref
        .as_ref()
        .map(|r| {
            format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or(OPERATOR_NAMESPACE),
                r.name
            )
        })
        .unwrap_or_default();
    t.say(format!(
        "registered: token exchanged, cluster id {CLUSTER_ID}, credentials in Secret {secret_ref}"
    ));
    wait_for("Connected=True", Duration::from_secs(90), || async {
        let c = clusters.get("this-cluster").await?;
        Ok(c.status.and_then(|s| {
            vworkspace_api::conditions::find(&s.conditions, "Connected")
                .filter(|c| c.status == "True")
                .map(|c| c.reason.clone())
        }))
    })
    .await
    .map(|reason| t.say(format!("Cluster this-cluster Connected=True ({reason})")))?;

    // The job the control plane would send for "deploy notes here".
    let job_id = "job-demo-notes-1";
    let caps = json!({"ops.vworkspace.io/runcommand": "job", "ops.vworkspace.io/upgrade": "helm"});
    let instance = json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "notes", "namespace": APP_NAMESPACE, "annotations": caps},
        "spec": {"appRef": {"catalogId": "webapp"},
                 "chart": {"sourceType": "helm", "url": full.helm_repository_url, "name": "webapp", "version": "0.1.0"},
                 "release": {"name": "notes", "namespace": APP_NAMESPACE},
                 "values": {"source": "inline", "inline": {"replicaCount": 2, "greeting": "hello from the demo"}}}
    });
    let job: Job = serde_json::from_value(json!({
        "id": job_id, "kind": "intent",
        "payload": {"intent": "ensure-application-instance", "applicationInstance": instance},
        "idempotencyKey": "applicationinstance/demo/notes@1",
        "createdAt": jiff::Timestamp::now().to_string(),
    }))?;
    let enqueued = Instant::now();
    admin.enqueue(CLUSTER_ID, &job).await?;
    t.say(format!("control plane enqueued job {job_id}: intent ensure-application-instance demo/notes (chart webapp 0.1.0 from {})", full.helm_repository_url));

    wait_for("the ack", Duration::from_secs(60), || async {
        Ok(admin.was_acked(job_id).await?.then_some(()))
    })
    .await?;
    t.say("operator acknowledged the job");
    let apps: Api<ApplicationInstance> = Api::namespaced(kube.clone(), APP_NAMESPACE);
    let app = wait_for(
        "the ApplicationInstance",
        Duration::from_secs(30),
        || async { Ok(apps.get_opt("notes").await?) },
    )
    .await?;
    let labels = app.metadata.labels.clone().unwrap_or_default();
    t.say(format!(
        "ApplicationInstance demo/notes created by field manager vworkspace-agent (labels managed-by={}, cluster-id={})",
        labels.get("app.vworkspace.io/managed-by").map(String::as_str).unwrap_or("?"),
        labels.get("app.vworkspace.io/cluster-id").map(String::as_str).unwrap_or("?"),
    ));
    let hrs: Api<vworkspace_operator::kinds::flux::HelmRelease> =
        Api::namespaced(kube.clone(), APP_NAMESPACE);
    wait_for("the HelmRelease", Duration::from_secs(30), || async {
        Ok(hrs.get_opt("notes").await?)
    })
    .await?;
    t.say("HelmRelease demo/notes and HelmRepository demo/notes-source created by the operator");
    let update = wait_for("an interim status", Duration::from_secs(30), || async {
        Ok(admin.status_updates(job_id).await?.into_iter().next())
    })
    .await?;
    t.say(format!(
        "operator reported interim job status to the control plane: phase {}{}",
        update.phase,
        if update.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", update.message)
        }
    ));

    // Flux does the rest; the demo only watches.
    let flux_ready = wait_for(
        "Flux to install the release",
        Duration::from_secs(300),
        || async {
            let hr = hrs.get("notes").await?;
            Ok(hr.status.and_then(|s| s.conditions).and_then(|cs| {
                cs.into_iter()
                    .find(|c| c.type_ == "Ready" && c.status == "True")
                    .map(|c| format!("{}: {}", c.reason, c.message))
            }))
        },
    )
    .await?;
    t.say(format!(
        "helm-controller: HelmRelease demo/notes Ready=True ({flux_ready})"
    ));
    let pods: Api<Pod> = Api::namespaced(kube.clone(), APP_NAMESPACE);
    let running = wait_for("the chart's pods", Duration::from_secs(60), || async {
        let list = pods
            .list(
                &ListParams::default()
                    .labels("app.kubernetes.io/instance=notes,app.kubernetes.io/name=webapp"),
            )
            .await?;
        let running: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(|p| {
                format!(
                    "{} on {}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default()
                )
            })
            .collect();
        Ok((running.len() == 2).then_some(running))
    })
    .await?;
    t.say(format!(
        "pods Running (scheduled by kube-scheduler, run by kwok): {}",
        running.join(", ")
    ));
    let config: Api<ConfigMap> = Api::namespaced(kube.clone(), APP_NAMESPACE);
    let greeting = config
        .get("notes-config")
        .await?
        .data
        .and_then(|d| d.get("greeting").cloned())
        .unwrap_or_default();
    t.say(format!(
        "ConfigMap demo/notes-config rendered from the values: greeting={greeting:?}"
    ));
    wait_for("Ready=True", Duration::from_secs(60), || async {
        let a = apps.get("notes").await?;
        Ok(a.status
            .filter(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
            .map(|_| ()))
    })
    .await?;
    t.say("ApplicationInstance demo/notes Ready=True (HelmReleaseReady)");

    let result = admin
        .wait_for_result(job_id, Duration::from_secs(120))
        .await?;
    let latency = enqueued.elapsed();
    let applied = result
        .applied_ref
        .as_ref()
        .map(|r| format!("{}/{} {}/{}", r.api_version, r.kind, r.namespace, r.name))
        .unwrap_or_default();
    t.say(format!(
        "control plane received the result: {} ({applied}); enqueue → result {:.1}s",
        result.outcome,
        latency.as_secs_f64()
    ));
    if result.outcome != "succeeded" {
        bail!("the job did not succeed: {}", result.error);
    }
    let events = wait_for("the Ready event", Duration::from_secs(30), || async {
        let events = admin
            .events(CLUSTER_ID, None, Some(APP_NAMESPACE), Some("notes"))
            .await?;
        Ok(events
            .iter()
            .any(|e| {
                e.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .then_some(events))
    })
    .await?;
    t.say(format!(
        "control plane received {} condition events for demo/notes, the last: {}",
        events.len(),
        events
            .last()
            .map(|e| e
                .conditions
                .iter()
                .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    ));

    day_two(t, &kube, &admin).await?;

    let kubectl = kubectl_dir.join("kubectl");
    for args in [
        &[
            "get",
            "cluster,appinst,operations,helmrepository,helmchart,helmrelease",
            "-A",
        ][..],
        &["-n", APP_NAMESPACE, "get", "deploy,pods,jobs", "-o", "wide"][..],
    ] {
        let out = std::process::Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()?;
        println!("\n$ kubectl {}", args.join(" "));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!("\nLook around (while the demo holds with --hold):");
    println!(
        "  export KUBECONFIG={} PATH={}:$PATH",
        kubeconfig.display(),
        kubectl_dir.display()
    );
    println!("  kubectl get cluster this-cluster -o yaml");
    println!("  kubectl -n demo get appinst notes -o yaml");
    println!("  kubectl -n demo get helmrelease,helmchart,operations -o yaml");
    println!("  kubectl -n demo get events");
    println!(
        "  curl -s -H 'X-Mock-Control-Plane-Admin-Token: {ADMIN_TOKEN}' '{url}/api/admin/events?cluster={CLUSTER_ID}'"
    );
    println!(
        "  logs: {}, {}, and Flux/kwok/Kubernetes in {}",
        operator_log.display(),
        mock_log.display(),
        dir.join("cluster").display()
    );
    if hold {
        println!("\nHolding; press Ctrl-C to stop everything.");
        std::future::pending::<()>().await;
    }
    println!();
    Ok(())
}

/// Sends one Operation through the control plane and waits for its result.
async fn operation(
    t: &Timeline,
    kube: &Client,
    admin: &AdminClient,
    name: &str,
    spec: serde_json::Value,
) -> Result<Operation> {
    let op = json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": name, "namespace": APP_NAMESPACE},
        "spec": spec
    });
    let job_id = format!("job-demo-{name}");
    let job: Job = serde_json::from_value(json!({
        "id": job_id, "kind": "intent",
        "payload": {"intent": "request-operation", "operation": op},
        "idempotencyKey": format!("operation/demo/{name}@1"),
        "createdAt": jiff::Timestamp::now().to_string(),
    }))?;
    let enqueued = Instant::now();
    admin.enqueue(CLUSTER_ID, &job).await?;
    let ops: Api<Operation> = Api::namespaced(kube.clone(), APP_NAMESPACE);
    let result = admin
        .wait_for_result(&job_id, Duration::from_secs(300))
        .await?;
    let op = ops.get(name).await?;
    let phase = op.status.as_ref().and_then(|s| s.phase);
    t.say(format!(
        "control plane received the result: {}; Operation demo/{name} {}; enqueue → result {:.1}s",
        result.outcome,
        phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "without a phase".into()),
        enqueued.elapsed().as_secs_f64()
    ));
    if result.outcome != "succeeded" || phase != Some(Phase::Succeeded) {
        bail!(
            "Operation {name} did not succeed: {} {:?}",
            result.error,
            op.status
        );
    }
    Ok(op)
}

/// Day 2: a RunCommand Job, then a chart upgrade through the helm engine.
async fn day_two(t: &Timeline, kube: &Client, admin: &AdminClient) -> Result<()> {
    t.say("day 2: the control plane requests Operation demo/report (RunCommand, engine job)");
    let target = json!({"apiVersion": "apps.vworkspace.io/v1alpha1",
                        "kind": "ApplicationInstance", "name": "notes"});
    let op = operation(
        t,
        kube,
        admin,
        "report",
        json!({"targetRef": target, "type": "RunCommand", "engine": "job",
               "parameters": {"image": "busybox", "command": ["sh", "-c", "du -sh /data"]}}),
    )
    .await?;
    let job_name = op
        .status
        .and_then(|s| s.outputs)
        .and_then(|o| o.get("jobName").cloned())
        .unwrap_or_default();
    let jobs: Api<BatchJob> = Api::namespaced(kube.clone(), APP_NAMESPACE);
    let job = jobs.get(&job_name).await?;
    let succeeded = job.status.and_then(|s| s.succeeded).unwrap_or_default();
    t.say(format!(
        "Job demo/{job_name} Complete (job controller; its pod was scheduled onto the kwok node and completed by kwok; succeeded={succeeded})"
    ));

    t.say("day 2: the control plane requests Operation demo/upgrade (Upgrade to chart 0.2.0, engine helm)");
    let op = operation(
        t,
        kube,
        admin,
        "upgrade",
        json!({"targetRef": target, "type": "Upgrade", "engine": "helm",
               "parameters": {"targetVersion": "0.2.0"}}),
    )
    .await?;
    let outputs = op.status.and_then(|s| s.outputs).unwrap_or_default();
    let config: Api<ConfigMap> = Api::namespaced(kube.clone(), APP_NAMESPACE);
    let version = config
        .get("notes-config")
        .await?
        .data
        .and_then(|d| d.get("chartVersion").cloned())
        .unwrap_or_default();
    t.say(format!(
        "Flux upgraded release demo/notes {} → {}; the chart's ConfigMap now says chartVersion={version:?}",
        outputs.get("previousVersion").map(String::as_str).unwrap_or("?"),
        outputs.get("version").map(String::as_str).unwrap_or("?"),
    ));
    Ok(())
}
