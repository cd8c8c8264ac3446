//! The per-test-process control plane and helpers tests use on it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::AuthInfo;
use kube::{Client, Config};

use crate::cluster::{
    Profile, StartOptions, client_from_kubeconfig, config_from_kubeconfig, start,
};
use crate::full::FullProfile;
use crate::process::{Lifetime, alive};

/// One control plane shared by every test in a test binary.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub bin_dir: PathBuf,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// One full-profile cluster shared by every test in a test binary that asks for it (a
/// separate cluster from [`ControlPlane::get`]'s; tests of one binary use one or the other).
pub struct FullCluster {
    pub control_plane: ControlPlane,
    pub full: FullProfile,
}

impl std::ops::Deref for FullCluster {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.control_plane
    }
}

static SHARED_FULL: OnceLock<Result<FullCluster, String>> = OnceLock::new();

impl FullCluster {
    /// The full-profile cluster of this test process, started on first use.
    pub async fn get() -> Result<&'static FullCluster> {
        SHARED_FULL
            .get_or_init(|| start_shared(Profile::Full))
            .as_ref()
            .map_err(|e| anyhow!("full test cluster failed to start: {e}"))
    }
}

fn base_dir() -> PathBuf {
    std::env::temp_dir().join("vworkspace-testkit")
}

/// Removes directories left by earlier test processes that are gone (their processes
/// died with them through `PR_SET_PDEATHSIG`; only the files remain).
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let pid = name.trim_end_matches("-full").parse::<u32>().ok();
        if pid.is_some_and(|p| !alive(p)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start_shared<T: FromRunning + Send + 'static>(profile: Profile) -> Result<T, String> {
    let base = base_dir();
    sweep_stale(&base);
    let suffix = match profile {
        Profile::Light => "",
        Profile::Full => "-full",
    };
    let dir = base.join(format!("{}{suffix}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (tx, rx) = std::sync::mpsc::channel();
    // The processes are tied to the thread that spawns them, so that thread must live as
    // long as the test process: it reports the result and then parks forever.
    std::thread::Builder::new()
        .name("testkit-control-plane".into())
        .spawn(move || {
            let opts = StartOptions {
                dir,
                lifetime: Lifetime::TiedToProcess,
                install_crds: true,
                profile,
            };
            let result = start(&opts);
            let (msg, children) = match result {
                Ok(mut running) => {
                    let children = std::mem::take(&mut running.children);
                    (T::from_running(running), Some(children))
                }
                Err(e) => (Err(format!("{e:#}")), None),
            };
            let _ = tx.send(msg);
            let _keep = children;
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

trait FromRunning: Sized {
    fn from_running(running: crate::cluster::Running) -> Result<Self, String>;
}

impl FromRunning for ControlPlane {
    fn from_running(running: crate::cluster::Running) -> Result<Self, String> {
        Ok(ControlPlane {
            dir: running.dir,
            kubeconfig: running.kubeconfig,
            server: running.server,
            bin_dir: running.binaries.dir,
        })
    }
}

impl FromRunning for FullCluster {
    fn from_running(mut running: crate::cluster::Running) -> Result<Self, String> {
        let full = running
            .full
            .take()
            .ok_or("the full profile did not start")?;
        Ok(FullCluster {
            control_plane: ControlPlane::from_running(running)?,
            full,
        })
    }
}

impl ControlPlane {
    /// The control plane of this test process, started on first use with all CRDs.
    pub async fn get() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_init(|| start_shared(Profile::Light))
            .as_ref()
            .map_err(|e| anyhow!("test control plane failed to start: {e}"))
    }

    /// A new admin client. Create one per test: a client is tied to the tokio runtime it
    /// was made on, and every `#[tokio::test]` has its own runtime.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    pub async fn admin_config(&self) -> Result<Config> {
        config_from_kubeconfig(&self.kubeconfig).await
    }

    /// A client that authenticates as ServiceAccount `namespace/name`, bound cluster-wide
    /// to exactly `rules` through a ClusterRole of the same name, so tests can check what
    /// a least-privilege identity may and may not do.
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        rules: Vec<PolicyRule>,
    ) -> Result<Client> {
        let token = self
            .service_account_token(namespace, name, rules, None)
            .await?;
        let mut config = self.admin_config().await?;
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        Ok(Client::try_from(config)?)
    }

    /// Like [`Self::client_for_service_account`], plus a Role with `local_rules` in the
    /// ServiceAccount's own namespace, written as a kubeconfig file for a child process
    /// (the operator binary under the chart's RBAC).
    pub async fn kubeconfig_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        cluster_rules: Vec<PolicyRule>,
        local_rules: Vec<PolicyRule>,
    ) -> Result<PathBuf> {
        let token = self
            .service_account_token(namespace, name, cluster_rules, Some(local_rules))
            .await?;
        self.write_token_kubeconfig(namespace, name, token)
    }

    /// A kubeconfig for a child process authenticating as an *existing* ServiceAccount
    /// (e.g. one a `helm install` created), with whatever RBAC is bound to it: a
    /// TokenRequest, no rules of the kit's own.
    pub async fn kubeconfig_for_existing_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let token = request_token(&sas, name).await?;
        self.write_token_kubeconfig(namespace, name, token)
    }

    fn write_token_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        token: String,
    ) -> Result<PathBuf> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let users = doc
            .get_mut("users")
            .and_then(|u| u.as_sequence_mut())
            .context("admin kubeconfig has no users")?;
        for user in users.iter_mut() {
            let mut auth = serde_yaml::Mapping::new();
            auth.insert("token".into(), token.clone().into());
            if let Some(m) = user.as_mapping_mut() {
                m.insert("user".into(), serde_yaml::Value::Mapping(auth));
            }
        }
        let path = self.dir.join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
        Ok(path)
    }

    async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        rules: Vec<PolicyRule>,
        local_rules: Option<Vec<PolicyRule>>,
    ) -> Result<String> {
        let admin = self.client().await?;
        let pp = PostParams::default();
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
        sas.create(&pp, &sa)
            .await
            .context("creating ServiceAccount")?;
        let subject = Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        let role_name = format!("testkit:{namespace}:{name}");
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some(role_name.clone()),
                ..Default::default()
            },
            rules: Some(rules),
            ..Default::default()
        };
        Api::<ClusterRole>::all(admin.clone())
            .create(&pp, &role)
            .await
            .context("creating ClusterRole")?;
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(role_name.clone()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: role_name.clone(),
            },
            subjects: Some(vec![subject.clone()]),
        };
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&pp, &binding)
            .await
            .context("creating ClusterRoleBinding")?;
        if let Some(local_rules) = local_rules {
            let role = Role {
                metadata: ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                rules: Some(local_rules),
            };
            Api::<Role>::namespaced(admin.clone(), namespace)
                .create(&pp, &role)
                .await
                .context("creating Role")?;
            let binding = RoleBinding {
                metadata: ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: role_name,
                },
                subjects: Some(vec![subject]),
            };
            Api::<RoleBinding>::namespaced(admin.clone(), namespace)
                .create(&pp, &binding)
                .await
                .context("creating RoleBinding")?;
        }
        request_token(&sas, name).await
    }
}

/// A one-hour token of ServiceAccount `name` (TokenRequest API).
async fn request_token(sas: &Api<ServiceAccount>, name: &str) -> Result<String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: TokenRequest = sas
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .context("requesting a ServiceAccount token")?;
    token
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("TokenRequest without a token")
}

static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Creates a namespace named `<prefix>-<pid>-<n>` and returns its name.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> Result<String> {
    let n = NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}-{}-{n}", std::process::id());
    crate::fixtures::create_namespace(client, &name).await?;
    Ok(name)
}
