//! Which CRDs a control plane gets, and installing them.
//!
//! Ours come from `config/crd/bases/` (kept identical to the generator's output by a
//! test). Third-party CRDs are read from the pinned upstream modules of `tools/crds` in the
//! Go module cache; nothing third-party is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Deserialize;

use crate::binaries::repo_root;

/// Upstream module and the CRD files (relative to the module root) taken from it.
const THIRD_PARTY: &[(&str, &[&str])] = &[
    (
        "github.com/fluxcd/helm-controller",
        &["config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml"],
    ),
    (
        "github.com/fluxcd/source-controller",
        &[
            "config/crd/bases/source.toolkit.fluxcd.io_helmrepositories.yaml",
            "config/crd/bases/source.toolkit.fluxcd.io_ocirepositories.yaml",
        ],
    ),
    (
        "github.com/vmware-tanzu/velero",
        &[
            "config/crd/v1/bases/velero.io_backups.yaml",
            "config/crd/v1/bases/velero.io_restores.yaml",
        ],
    ),
    (
        "github.com/argoproj/argo-workflows/v3",
        &[
            "manifests/base/crds/full/argoproj.io_workflows.yaml",
            "manifests/base/crds/full/argoproj.io_workflowtemplates.yaml",
        ],
    ),
    (
        "github.com/kubernetes-csi/external-snapshotter/client/v8",
        &[
            "config/crd/snapshot.storage.k8s.io_volumesnapshots.yaml",
            "config/crd/snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
        ],
    ),
    (
        "github.com/backube/volsync",
        &[
            "config/crd/bases/volsync.backube_replicationsources.yaml",
            "config/crd/bases/volsync.backube_replicationdestinations.yaml",
        ],
    ),
];

/// The committed CRD manifests of this project.
pub fn our_crd_files() -> Result<Vec<PathBuf>> {
    let dir = repo_root().join("config/crd/bases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModuleDownload {
    dir: Option<String>,
    error: Option<String>,
}

fn module_dir(module: &str) -> Result<PathBuf> {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(repo_root().join("tools/crds"))
        .env("GOFLAGS", "-mod=readonly")
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running `go mod download` (is Go installed?)")?;
    let parsed: ModuleDownload = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`go mod download -json {module}`: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = parsed.error {
        bail!("downloading {module}: {err}");
    }
    parsed
        .dir
        .map(PathBuf::from)
        .with_context(|| format!("`go mod download` gave no directory for {module}"))
}

/// Paths of the third-party CRD manifests in the Go module cache (downloaded if needed).
pub fn third_party_crd_files() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (module, paths) in THIRD_PARTY {
        let dir = module_dir(module)?;
        for p in *paths {
            let path = dir.join(p);
            if !path.is_file() {
                bail!("{module} has no {p}");
            }
            files.push(path);
        }
    }
    Ok(files)
}

/// Every CRD of Flux source-controller and helm-controller (the full profile runs them:
/// helm-controller creates a `HelmChart` per `spec.chart`, and source-controller watches
/// `GitRepository`, `Bucket` and `ExternalArtifact` too).
pub fn flux_crd_files() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for module in [
        "github.com/fluxcd/source-controller",
        "github.com/fluxcd/helm-controller",
    ] {
        let dir = module_dir(module)?.join("config/crd/bases");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        if found.is_empty() {
            bail!("{module} has no CRDs in config/crd/bases");
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn read_crds(path: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut crds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml::from_value(value)
            .with_context(|| format!("parsing a CRD in {}", path.display()))?;
        crds.push(crd);
    }
    Ok(crds)
}

/// Server-side applies every CRD in `files` and waits until all are Established.
pub async fn install_crds(client: &Client, files: &[PathBuf]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("testkit").force();
    let mut names = Vec::new();
    for file in files {
        for crd in read_crds(file)? {
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            api.patch(&name, &pp, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name} from {}", file.display()))?;
            names.push(name);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in names {
        loop {
            let crd = api.get(&name).await?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("CRD {name} did not become Established within 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
