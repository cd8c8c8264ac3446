//! `vworkspace-operator`: the cluster-side half of vWorkspace.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{ArgAction, Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use vworkspace_decide::cluster::ConnectivityMode;
use vworkspace_operator::agent::scope::KindRule;
use vworkspace_operator::agent::signing::SigningMode;
use vworkspace_operator::agent::{Agent, AgentConfig, run_agent};
use vworkspace_operator::controller::operation::{self, OperationConfig};
use vworkspace_operator::controller::{Context, application_instance, cluster};
use vworkspace_operator::leader::{self, LeaderConfig};
use vworkspace_operator::logging::{self, Encoder};
use vworkspace_operator::metrics::Metrics;
use vworkspace_operator::metrics_auth;
use vworkspace_operator::probes::{self, Readiness};
use vworkspace_operator::webhook;

/// jemalloc instead of glibc's malloc: see docs/benchmarks.md (memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background thread returns freed pages to
/// the kernel after a second instead of on the next allocation's time.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "vworkspace-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of `run`, also accepted without the subcommand (`/manager --leader-elect`).
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers and the Pull-mode agent (default).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crd,
    /// Break-glass registration: write the token Secret and the `Cluster`, then wait until
    /// the running operator has exchanged the token.
    Register(RegisterArgs),
}

#[derive(Args, Clone, Debug)]
struct RegisterArgs {
    /// One-time registration token issued by the control plane.
    #[arg(long, hide_env_values = true)]
    token: String,
    /// Control-plane base URL as reachable from the operator pod.
    #[arg(long, env = "CONTROL_PLANE_BASE_URL")]
    control_plane_endpoint: String,
    /// Name of the `Cluster` object.
    #[arg(long, default_value = "cluster-local")]
    cluster_name: String,
    /// Server-issued cluster id, when the token is bound to a known cluster.
    #[arg(long, env = "VWORKSPACE_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Operator namespace, where the token Secret is written.
    #[arg(long, env = "POD_NAMESPACE", default_value = "vworkspace-system")]
    namespace: String,
    /// How long to wait for the exchange.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
}

/// Boolean flags accept `--flag`, `--flag=true` and `--flag=false`, as the original
/// manager's flags did (charts render `--leader-elect=true`).
#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Reconcile only ApplicationInstances/Operations matching this label selector, e.g.
    /// `app.vworkspace.io/managed-by in (control-plane,odoo)`. Empty reconciles all.
    #[arg(long, env = "RECONCILE_SELECTOR", default_value = "")]
    reconcile_selector: String,
    /// Metrics listener (`:8443`, `127.0.0.1:9090`); `0` turns metrics off.
    #[arg(long, default_value = "0")]
    metrics_bind_address: String,
    /// Serve metrics over HTTPS, readable only by callers allowed to `get` the
    /// non-resource URL `/metrics` (TokenReview + SubjectAccessReview). `false` serves
    /// plain HTTP to anyone who reaches the port.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value = "true", default_missing_value = "true")]
    metrics_secure: bool,
    /// Liveness (`/healthz`) and readiness (`/readyz`) listener.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// Elect a leader through a Lease so only one replica polls the control plane.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    leader_elect: bool,
    /// Accepted for compatibility; servers speak HTTP/1.1.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    enable_http2: bool,
    /// Serve the validating admission webhooks (spec §9) over TLS on `--webhook-port`.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    webhooks_enabled: bool,
    #[command(flatten)]
    webhook: WebhookArgs,
    /// Directory of the metrics serving certificate; empty → self-signed at start-up.
    #[arg(long)]
    metrics_cert_path: Option<String>,
    /// Certificate file name in `--metrics-cert-path`.
    #[arg(long, default_value = "tls.crt")]
    metrics_cert_name: String,
    /// Private key file name in `--metrics-cert-path`.
    #[arg(long, default_value = "tls.key")]
    metrics_cert_key: String,
    /// Long-poll `wait` for jobs (`30s`, `1m`, or bare seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    agent_poll_interval: Duration,
    /// Name of the credentials Secret in the operator namespace.
    #[arg(long, default_value = "vworkspace-agent-credentials")]
    agent_credentials_secret: String,
    /// Operator namespace (credentials, idempotency store, leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "vworkspace-system")]
    agent_credentials_namespace: String,
    /// HMAC secret for `vws1` approval claims; empty makes every claim invalid.
    #[arg(
        long,
        env = "VWORKSPACE_APPROVAL_CLAIM_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    approval_claim_secret: String,
    /// Namespace where Velero Backup/Restore objects are created.
    #[arg(long, env = "VELERO_NAMESPACE", default_value = "velero")]
    velero_namespace: String,
    /// SeaweedFS support is not part of this operator; accepted and ignored.
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    seaweed_watches_enabled: bool,
    /// How intent reaches the cluster: `pull` (poll the control plane for jobs), `push`
    /// (the control plane writes our objects; events and heartbeats only) or `gitops`
    /// (Flux applies them from Git; no Disconnected condition).
    #[arg(long, env = "VWORKSPACE_CONNECTIVITY_MODE", default_value = "pull", value_parser = parse_mode)]
    connectivity_mode: ConnectivityMode,
    /// Log level: `debug`, `info`, `warn`, `error`, or a zap integer (`-1`..`2`).
    #[arg(long, default_value = "info", value_parser = parse_log_level)]
    zap_log_level: String,
    /// Log encoding: `json` (default) or `console`.
    #[arg(long, default_value = "json", value_parser = parse_encoder)]
    zap_encoder: Encoder,
    /// File holding the log level (e.g. a mounted ConfigMap key). Re-read on SIGHUP and
    /// every 10 s; its level replaces `--zap-log-level` while the process runs.
    #[arg(long, env = "VWORKSPACE_LOG_LEVEL_FILE")]
    log_level_file: Option<std::path::PathBuf>,
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    zap_devel: Option<bool>,
    #[arg(long, hide = true)]
    zap_stacktrace_level: Option<String>,
    #[arg(long, hide = true)]
    zap_time_encoding: Option<String>,
    /// Extra kinds Pull jobs may write or delete, comma-separated `group/Kind` (core:
    /// `/Kind`), added to our two CRDs. Cluster-scoped and RBAC kinds need an exact rule.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind_rule)]
    agent_allowed_kinds: Vec<KindRule>,
    /// When set, Pull jobs may only write to these namespaces (comma-separated).
    #[arg(long, value_delimiter = ',')]
    agent_allowed_namespaces: Vec<String>,
    /// Namespaces Pull jobs may never write, added to kube-system, kube-public,
    /// kube-node-lease and the operator namespace.
    #[arg(long, value_delimiter = ',')]
    agent_denied_namespaces: Vec<String>,
    /// Job payload signatures: `off`, `warn` (verify when signed, admit unsigned) or
    /// `required`.
    #[arg(long, default_value = "off", value_parser = parse_signing_mode)]
    agent_signing: SigningMode,
    /// The control plane's Ed25519 public key for this cluster (base64 or hex).
    #[arg(long, env = "VWORKSPACE_SIGNING_PUBLIC_KEY")]
    agent_signing_public_key: Option<String>,
    /// How long a job waits for its object to report Ready before answering `failed`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    agent_ready_timeout: Duration,
    /// Scheduled credential rotation period (`0` disables).
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    agent_rotation_period: Duration,
    #[command(flatten)]
    legacy: LegacyAgentArgs,
}

/// Flags of the admission webhook.
#[derive(Args, Clone, Debug)]
struct WebhookArgs {
    /// Webhook listener port (HTTPS).
    #[arg(long, default_value_t = 9443)]
    webhook_port: u16,
    /// Directory holding the serving certificate (a mounted cert-manager Secret); the
    /// files are reloaded when they change. Without it a certificate is generated.
    #[arg(long, alias = "webhook-cert-path")]
    webhook_cert_dir: Option<String>,
    #[arg(long, default_value = "tls.crt")]
    webhook_cert_name: String,
    #[arg(long, default_value = "tls.key")]
    webhook_cert_key: String,
    /// ValidatingWebhookConfiguration whose caBundle a generated certificate patches.
    #[arg(long, default_value = "vworkspace-operator-validating")]
    webhook_configuration_name: String,
    /// Service in front of the webhook (names in a generated certificate).
    #[arg(long, default_value = "vworkspace-operator-webhook")]
    webhook_service_name: String,
    /// Lifetime of a generated certificate; it is rotated at two thirds.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    webhook_cert_validity: Duration,
    /// Chart URL prefixes ApplicationInstances may use (comma-separated); empty allows all.
    #[arg(long, value_delimiter = ',')]
    webhook_allowed_chart_urls: Vec<String>,
}

fn webhook_config(args: &RunArgs) -> webhook::WebhookConfig {
    let w = &args.webhook;
    let certs = match w.webhook_cert_dir.as_deref().filter(|d| !d.is_empty()) {
        Some(dir) => webhook::CertSource::Files {
            dir: dir.into(),
            cert_name: w.webhook_cert_name.clone(),
            key_name: w.webhook_cert_key.clone(),
            poll: Duration::from_secs(10),
        },
        None => webhook::CertSource::Generate(webhook::certs::GenerateConfig {
            configuration: w.webhook_configuration_name.clone(),
            hosts: webhook::certs::service_hosts(
                &w.webhook_service_name,
                &args.agent_credentials_namespace,
            ),
            validity: w.webhook_cert_validity,
            propagation: Duration::from_secs(10),
        }),
    };
    webhook::WebhookConfig {
        bind: format!("0.0.0.0:{}", w.webhook_port),
        certs,
        approval_secret: args.approval_claim_secret.clone(),
        allowed_chart_urls: w.webhook_allowed_chart_urls.clone(),
        velero_namespace: args.velero_namespace.clone(),
    }
}

fn parse_kind_rule(s: &str) -> Result<KindRule, String> {
    s.parse()
}

fn parse_signing_mode(s: &str) -> Result<SigningMode, String> {
    s.parse()
}

fn parse_mode(s: &str) -> Result<ConnectivityMode, String> {
    s.parse()
}

fn parse_encoder(s: &str) -> Result<Encoder, String> {
    s.parse()
}

fn parse_log_level(s: &str) -> Result<String, String> {
    logging::parse_level(s).map(|_| s.to_string())
}

/// Flags of older charts and scripts. Accepted so their pods do not crash-loop, and
/// ignored with a warning: connectivity comes from the Cluster and its Secret.
#[derive(Args, Clone, Debug)]
struct LegacyAgentArgs {
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    agent_enabled: Option<bool>,
    #[arg(long, hide = true, env = "CONTROL_PLANE_BASE_URL")]
    control_plane_base_url: Option<String>,
    #[arg(long, hide = true, env = "ODOO_BASE_URL")]
    odoo_base_url: Option<String>,
    #[arg(long, hide = true, env = "VWORKSPACE_CLUSTER_ID")]
    cluster_id: Option<String>,
    #[arg(
        long,
        hide = true,
        env = "VWORKSPACE_AGENT_TOKEN",
        hide_env_values = true
    )]
    agent_token: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 2m or 30"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            std::io::stdout().write_all(vworkspace_api::crd_yaml().as_bytes())?;
            Ok(())
        }
        Some(Command::Run(args)) => run(*args).await,
        Some(Command::Register(args)) => {
            if let Err(e) = register(args).await {
                eprintln!("register failed: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        None => run(cli.run).await,
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let log_control = logging::init(&args.zap_log_level, args.zap_encoder)
        .map_err(anyhow::Error::msg)
        .context("installing the logger")?;
    let legacy = &args.legacy;
    if legacy.control_plane_base_url.is_some()
        || legacy.odoo_base_url.is_some()
        || legacy.cluster_id.is_some()
        || legacy.agent_token.is_some()
    {
        tracing::warn!(
            "--control-plane-base-url/--odoo-base-url/--cluster-id/--agent-token are deprecated and \
             ignored: connectivity comes from the Cluster object and its credentials Secret"
        );
    }
    if args.legacy.agent_enabled.is_some() {
        tracing::warn!("--agent-enabled is obsolete and ignored: the agent always runs");
    }
    if !args.metrics_secure && args.metrics_bind_address != "0" {
        tracing::warn!(
            "--metrics-secure=false: metrics are served over plain HTTP to anyone who reaches \
             the port; restrict it with a NetworkPolicy"
        );
    }

    let client = vworkspace_operator::kube_client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let shutdown = CancellationToken::new();
    let readiness = Arc::new(Readiness::default());
    if let Some(file) = args.log_level_file.clone() {
        tokio::spawn(logging::watch_level(
            log_control,
            file,
            Duration::from_secs(10),
            shutdown.clone(),
        ));
    }

    let probe_addr = probes::serve(
        &args.health_probe_bind_address,
        probes::probe_router(readiness.clone()),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding {}", args.health_probe_bind_address))?;
    tokio::spawn(probes::watch_api(
        readiness.clone(),
        client.clone(),
        shutdown.clone(),
    ));

    if args.webhooks_enabled {
        let (addr, _) = webhook::start(client.clone(), webhook_config(&args), shutdown.clone())
            .await
            .context("starting the admission webhook")?;
        tracing::info!(address = %addr, "serving admission webhooks");
    }

    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let leader_config = args
        .leader_elect
        .then(|| LeaderConfig::new(&args.agent_credentials_namespace, identity.clone()));
    let leadership = leader::spawn(client.clone(), leader_config, shutdown.clone());

    let metrics = Arc::new(Metrics::new());
    metrics.set_mode(args.connectivity_mode);
    if args.metrics_bind_address != "0" && !args.metrics_bind_address.is_empty() {
        let m = metrics.clone();
        let router = probes::metrics_router(Arc::new(move || m.encode()));
        let addr = if args.metrics_secure {
            let cert = metrics_auth::CertSource::from_flags(
                args.metrics_cert_path.as_deref(),
                &args.metrics_cert_name,
                &args.metrics_cert_key,
            );
            let auth = Arc::new(metrics_auth::Authorizer::new(client.clone()));
            metrics_auth::serve(
                &args.metrics_bind_address,
                router,
                auth,
                &cert,
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("serving secure metrics on {}", args.metrics_bind_address))?
        } else {
            probes::serve(&args.metrics_bind_address, router, shutdown.clone())
                .await
                .with_context(|| format!("binding {}", args.metrics_bind_address))?
        };
        tracing::info!(address = %addr, secure = args.metrics_secure, "serving metrics");
    }

    let agent = Agent::new(client.clone(), agent_config(&args), metrics.clone())
        .map_err(anyhow::Error::msg)
        .context("--agent-signing-public-key")?;
    {
        let (agent, readiness, shutdown) = (agent.clone(), readiness.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                readiness.set_agent(agent.probe_state());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }

    tracing::info!(
        operator_version = env!("CARGO_PKG_VERSION"),
        probes = %probe_addr,
        namespace = %args.agent_credentials_namespace,
        leader_elect = args.leader_elect,
        connectivity_mode = %args.connectivity_mode,
        "starting controllers"
    );
    let ctx = Arc::new(
        Context::new(client.clone())
            .with_metrics(metrics.clone())
            .with_selector(Some(args.reconcile_selector.clone())),
    );
    let watch_namespace = args.watch_namespace.clone();
    let agent_task = tokio::spawn(run_agent(
        agent.clone(),
        leadership.clone(),
        shutdown.clone(),
    ));
    let cluster_task = tokio::spawn(cluster::run(
        client.clone(),
        agent.clone(),
        leadership.clone(),
        shutdown.clone(),
    ));
    // Settings without a flag keep their documented defaults.
    #[allow(clippy::needless_update)]
    let op_config = OperationConfig {
        approval_secret: args.approval_claim_secret.clone(),
        velero_namespace: args.velero_namespace.clone(),
        ..OperationConfig::default()
    };
    let controllers = async move {
        tokio::join!(
            application_instance::run(ctx.clone(), watch_namespace.as_deref()),
            operation::run(ctx, op_config, watch_namespace.as_deref()),
        );
    };

    tokio::select! {
        _ = controllers => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    shutdown.cancel();
    // The agent flushes queued events once more; the elector releases its lease.
    let drain = async {
        let _ = agent_task.await;
        let _ = cluster_task.await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    Ok(())
}

/// Writes the token into a Secret (never into the Cluster spec: the inline field is
/// deprecated) and the Cluster pointing at it, then waits for the operator to exchange it.
async fn register(args: RegisterArgs) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    use vworkspace_api::Cluster;

    if !(args.control_plane_endpoint.starts_with("https://")
        || args.control_plane_endpoint.starts_with("http://"))
    {
        anyhow::bail!(
            "--control-plane-endpoint must start with https:// or http://, got {:?}",
            args.control_plane_endpoint
        );
    }
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let pp = PatchParams::apply("vworkspace-cli").force();
    let secret_name = format!("{}-registration", args.cluster_name);
    Api::<Secret>::namespaced(client.clone(), &args.namespace)
        .patch(
            &secret_name,
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret_name},
                "type": "Opaque",
                "stringData": {"registrationToken": args.token.trim()}
            })),
        )
        .await
        .with_context(|| format!("writing Secret {}/{secret_name}", args.namespace))?;
    let mut spec = serde_json::json!({
        "controlPlaneEndpoint": args.control_plane_endpoint,
        "registrationTokenSecretRef": {"name": secret_name, "key": "registrationToken"},
    });
    if let Some(id) = args.cluster_id.as_deref().filter(|s| !s.is_empty()) {
        spec["clusterId"] = id.into();
    }
    let clusters: Api<Cluster> = Api::all(client);
    clusters
        .patch(
            &args.cluster_name,
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": args.cluster_name},
                "spec": spec
            })),
        )
        .await
        .with_context(|| format!("writing Cluster {}", args.cluster_name))?;
    println!(
        "Cluster {} written; waiting for the operator to exchange the token",
        args.cluster_name
    );
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let status = clusters.get(&args.cluster_name).await?.status;
        if let Some(status) = status.filter(|s| {
            s.credential_status
                .as_ref()
                .and_then(|c| c.registration_token_consumed)
                .unwrap_or(false)
        }) {
            let secret = status
                .credentials_secret_ref
                .as_ref()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.namespace.as_deref().unwrap_or(&args.namespace),
                        r.name
                    )
                })
                .unwrap_or_default();
            println!("registration token exchanged; credentials in Secret {secret}");
            if let Some(c) = vworkspace_api::conditions::find(&status.conditions, "Connected")
                .filter(|c| c.status == "True")
            {
                println!("Connected=True ({})", c.reason);
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let why = status_summary(&clusters, &args.cluster_name).await;
            anyhow::bail!(
                "the token was not exchanged within {}s{why}; is the operator running?",
                args.timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn status_summary(clusters: &kube::Api<vworkspace_api::Cluster>, name: &str) -> String {
    let Ok(c) = clusters.get(name).await else {
        return String::new();
    };
    c.status
        .and_then(|s| {
            vworkspace_api::conditions::find(&s.conditions, "Authenticated")
                .map(|c| format!(" (Authenticated={}/{}: {})", c.status, c.reason, c.message))
        })
        .unwrap_or_default()
}

fn agent_config(args: &RunArgs) -> AgentConfig {
    let mut cfg = AgentConfig::new(&args.agent_credentials_namespace);
    cfg.credentials_secret = args.agent_credentials_secret.clone();
    cfg.poll_interval = args.agent_poll_interval;
    cfg.watch_namespace = args.watch_namespace.clone();
    cfg.scope
        .allowed_kinds
        .extend(args.agent_allowed_kinds.iter().cloned());
    if !args.agent_allowed_namespaces.is_empty() {
        cfg.scope.allowed_namespaces = Some(args.agent_allowed_namespaces.clone());
    }
    cfg.scope
        .denied_namespaces
        .extend(args.agent_denied_namespaces.iter().cloned());
    cfg.signing_mode = args.agent_signing;
    cfg.signing_public_key = args.agent_signing_public_key.clone();
    cfg.ready_timeout = args.agent_ready_timeout;
    cfg.rotation_period = args.agent_rotation_period;
    cfg.mode = args.connectivity_mode;
    cfg
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "vworkspace-operator".into())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn old_chart_arguments_parse() {
        let cli = Cli::try_parse_from([
            "manager",
            "--leader-elect=true",
            "--health-probe-bind-address=:8081",
            "--metrics-bind-address=0",
            "--agent-poll-interval=5s",
            "--agent-credentials-secret=vworkspace-agent-credentials",
            "--agent-enabled",
            "--zap-log-level=debug",
        ])
        .unwrap();
        assert!(cli.run.leader_elect);
        assert_eq!(cli.run.agent_poll_interval, Duration::from_secs(5));
        let cli = Cli::try_parse_from([
            "manager",
            "--webhooks-enabled",
            "--webhook-cert-path=/tmp/k8s-webhook-server/serving-certs",
            "--webhook-allowed-chart-urls=https://a.example,oci://b.example/apps",
        ])
        .unwrap();
        assert!(cli.run.webhooks_enabled);
        let cfg = webhook_config(&cli.run);
        assert_eq!(cfg.bind, "0.0.0.0:9443");
        assert_eq!(cfg.allowed_chart_urls.len(), 2);
        assert!(matches!(cfg.certs, webhook::CertSource::Files { .. }));
        let cli = Cli::try_parse_from(["manager", "run", "--leader-elect"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Run(a)) if a.leader_elect));
    }
}
