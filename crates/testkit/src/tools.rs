//! Building and caching the third-party programs of the full test cluster: Flux
//! source-controller and helm-controller, kwok, an OCI registry, our small Helm
//! repository file server, and the Helm CLI the install tests run.
//!
//! Versions are pinned in `tools/controllers/go.mod` (checked against its `go.sum` by `go
//! mod download`); each program is cached under `~/.cache/vworkspace-operator/tools/`
//! keyed by its version and the Go version, so a pin bump rebuilds only that program.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::binaries::{cache_root, repo_root};

/// One program of the full profile.
#[derive(Clone, Copy, Debug)]
struct Tool {
    /// Binary name, also the cache directory prefix.
    name: &'static str,
    /// Environment variable naming an existing binary to use instead.
    env: &'static str,
    how: How,
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// Copy the pinned module out of the module cache, drop its `replace <module>/api =>
    /// ./api` line (the published `api` module of the same version is used instead), and
    /// `go build` its root package.
    FluxModule(&'static str),
    /// `go install <package>@<pinned version of module>`.
    Install {
        module: &'static str,
        package: &'static str,
    },
    /// `go build` a command of one of our own wrapper modules under `tools/`.
    Ours { module_dir: &'static str },
}

const SOURCE_CONTROLLER: Tool = Tool {
    name: "source-controller",
    env: "VWORKSPACE_SOURCE_CONTROLLER",
    how: How::FluxModule("github.com/fluxcd/source-controller"),
};
const HELM_CONTROLLER: Tool = Tool {
    name: "helm-controller",
    env: "VWORKSPACE_HELM_CONTROLLER",
    how: How::FluxModule("github.com/fluxcd/helm-controller"),
};
const KWOK: Tool = Tool {
    name: "kwok",
    env: "VWORKSPACE_KWOK",
    how: How::Install {
        module: "sigs.k8s.io/kwok",
        package: "sigs.k8s.io/kwok/cmd/kwok",
    },
};
const REGISTRY: Tool = Tool {
    name: "registry",
    env: "VWORKSPACE_OCI_REGISTRY",
    how: How::Install {
        module: "github.com/google/go-containerregistry",
        package: "github.com/google/go-containerregistry/cmd/registry",
    },
};
const CHARTREPO: Tool = Tool {
    name: "chartrepo",
    env: "VWORKSPACE_CHARTREPO",
    how: How::Ours {
        module_dir: "tools/chartrepo",
    },
};

const HELM: Tool = Tool {
    name: "helm",
    env: "VWORKSPACE_HELM",
    // Our wrapper module pins helm.sh/helm/v4 (see tools/helm/go.mod).
    how: How::Ours {
        module_dir: "tools/helm",
    },
};

/// Paths of the full profile's programs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub source_controller: PathBuf,
    pub helm_controller: PathBuf,
    pub kwok: PathBuf,
    pub registry: PathBuf,
    pub chartrepo: PathBuf,
    /// The Helm CLI (not a cluster process; `tests/install_*.rs` run it).
    pub helm: PathBuf,
}

impl Tools {
    /// `(variable, path)` pairs that make a child process (another test binary) reuse
    /// these binaries without looking at the cache again.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            (SOURCE_CONTROLLER.env, self.source_controller.clone()),
            (HELM_CONTROLLER.env, self.helm_controller.clone()),
            (KWOK.env, self.kwok.clone()),
            (REGISTRY.env, self.registry.clone()),
            (CHARTREPO.env, self.chartrepo.clone()),
            (HELM.env, self.helm.clone()),
        ]
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ModuleInfo {
    pub(crate) version: Option<String>,
    pub(crate) dir: Option<String>,
    error: Option<String>,
}

/// `go mod download -json <module>` in `tools/controllers`: the pinned version and its
/// directory in the module cache.
pub(crate) fn pinned_module(module: &str) -> Result<(String, PathBuf)> {
    let out = go()
        .args(["mod", "download", "-json", module])
        .current_dir(repo_root().join("tools/controllers"))
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .context("running `go mod download` (is Go installed?)")?;
    let info: ModuleInfo = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`go mod download -json {module}`: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = info.error {
        bail!("downloading {module}: {err}");
    }
    match (info.version, info.dir) {
        (Some(v), Some(d)) => Ok((v, PathBuf::from(d))),
        _ => bail!("`go mod download` gave no version or directory for {module}"),
    }
}

fn go() -> Command {
    let mut cmd = Command::new("go");
    cmd.env("GOTOOLCHAIN", "local");
    cmd
}

fn go_version() -> Result<String> {
    let out = go()
        .args(["env", "GOVERSION"])
        .output()
        .context("running `go env GOVERSION` (is Go installed?)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version a tool is built at (ours: a digest of its wrapper module).
fn tool_version(tool: &Tool) -> Result<String> {
    match tool.how {
        How::FluxModule(module) | How::Install { module, .. } => Ok(pinned_module(module)?.0),
        How::Ours { module_dir } => {
            use sha2::{Digest, Sha256};
            let root = repo_root();
            let mut files = Vec::new();
            crate::binaries::collect_files(&root.join(module_dir), &mut files)?;
            files.sort();
            let mut hasher = Sha256::new();
            for f in files {
                let rel = f.strip_prefix(&root).unwrap_or(&f);
                hasher.update(rel.to_string_lossy().as_bytes());
                hasher.update(fs::read(&f)?);
            }
            Ok(hex::encode(hasher.finalize())[..12].to_string())
        }
    }
}

/// Returns every program of the full profile, building what the cache lacks.
pub fn ensure_tools() -> Result<Tools> {
    Ok(Tools {
        source_controller: ensure(&SOURCE_CONTROLLER)?,
        helm_controller: ensure(&HELM_CONTROLLER)?,
        kwok: ensure(&KWOK)?,
        registry: ensure(&REGISTRY)?,
        chartrepo: ensure(&CHARTREPO)?,
        helm: ensure(&HELM)?,
    })
}

/// The Helm CLI alone (a cache lookup once built; `VWORKSPACE_HELM` overrides).
pub fn ensure_helm() -> Result<PathBuf> {
    ensure(&HELM)
}

fn ensure(tool: &Tool) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(tool.env).map(PathBuf::from) {
        if path.is_file() {
            return Ok(path);
        }
        bail!("{}={} is not a file", tool.env, path.display());
    }
    let started = Instant::now();
    let version = tool_version(tool)?;
    let base = cache_root().join("tools");
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let dir = base.join(format!("{}-{version}-{}", tool.name, go_version()?));
    let bin = dir.join(tool.name);
    if bin.is_file() {
        return Ok(bin);
    }
    // One build at a time per machine: test binaries start in parallel.
    let lock = File::create(base.join(".build.lock"))?;
    lock.lock().context("locking the tools build")?;
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "testkit: building {} {version} (cold: up to 15 minutes on 2 cores for a Flux controller; cached afterwards)...",
        tool.name
    );
    let staging = base.join(format!(".staging-{}-{}", tool.name, std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let result = build(tool, &version, &staging);
    if let Err(err) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(err);
    }
    fs::rename(&staging, &dir).with_context(|| format!("moving {} into the cache", tool.name))?;
    eprintln!(
        "testkit: built {} {version} in {:.1}s into {}",
        tool.name,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(bin)
}

fn build(tool: &Tool, version: &str, staging: &Path) -> Result<()> {
    let out = staging.join(tool.name);
    // The same flags everywhere (also in CI's cache warm-up) so the Go build cache hits.
    let mut cmd = go();
    cmd.env("GOFLAGS", "-buildvcs=false");
    match tool.how {
        How::FluxModule(module) => {
            let (_, src) = pinned_module(module)?;
            let work = staging.join("src");
            copy_tree(&src, &work)?;
            let gomod = work.join("go.mod");
            let text = fs::read_to_string(&gomod)?;
            let api_replace = format!("replace {module}/api => ./api");
            let kept: Vec<&str> = text.lines().filter(|l| l.trim() != api_replace).collect();
            if kept.len() == text.lines().count() {
                bail!("{module} {version}: go.mod has no `{api_replace}` line to drop");
            }
            fs::write(&gomod, kept.join("\n") + "\n")?;
            cmd.args(["build", "-trimpath", "-mod=mod", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&work);
        }
        How::Install { package, .. } => {
            cmd.args(["install", "-trimpath", &format!("{package}@{version}")])
                .env("GOBIN", staging);
        }
        How::Ours { module_dir } => {
            cmd.args(["build", "-trimpath", "-o"])
                .arg(&out)
                .arg(format!("./cmd/{}", tool.name))
                .current_dir(repo_root().join(module_dir));
        }
    }
    let status = cmd
        .status()
        .with_context(|| format!("running go for {}", tool.name))?;
    if !status.success() {
        bail!("building {} {version} failed with {status}", tool.name);
    }
    if !out.is_file() {
        bail!("building {} produced no {}", tool.name, out.display());
    }
    let _ = fs::remove_dir_all(staging.join("src"));
    Ok(())
}

/// Copies a module out of the (read-only) module cache, writable.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
            let mode = fs::metadata(&target)?.permissions().mode();
            fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o200))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    fn requires(go_mod: &str) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(crate::repo_root().join(go_mod)).unwrap();
        text.lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (m, v) = (parts.next()?, parts.next()?);
                m.starts_with("github.com/fluxcd/")
                    .then(|| (m.to_string(), v.to_string()))
            })
            .collect()
    }

    /// `module version` pairs of a go.mod's require and replace lines under `prefix`
    /// (for a replace, the right-hand side).
    fn pins(go_mod: &str, prefix: &str) -> std::collections::BTreeMap<String, String> {
        let text = std::fs::read_to_string(crate::repo_root().join(go_mod)).unwrap();
        text.lines()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("require ");
                let parts: Vec<&str> = l.split_whitespace().collect();
                match parts.as_slice() {
                    [m, "=>", _, v, ..] | [m, v, ..] if m.starts_with(prefix) => {
                        Some((m.to_string(), v.to_string()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Helm is built against the same Kubernetes libraries as our kubectl, so Go's build
    /// cache shares their compiled packages (a cold Helm build is minutes otherwise).
    #[test]
    fn helm_uses_the_kubernetes_libraries_of_the_control_plane_build() {
        let helm = pins("tools/helm/go.mod", "k8s.io/");
        let kube = pins("tools/kube/go.mod", "k8s.io/");
        assert!(helm.contains_key("k8s.io/client-go"), "{helm:?}");
        for (module, version) in &helm {
            if let Some(theirs) = kube.get(module).filter(|v| v.as_str() != "v0.0.0") {
                assert_eq!(version, theirs, "{module}: tools/helm vs tools/kube");
            }
        }
    }

    /// The controllers must run the same version as the CRDs the cluster installs.
    #[test]
    fn flux_pins_agree_with_the_crd_pins() {
        let built = requires("tools/controllers/go.mod");
        assert_eq!(built.len(), 2, "{built:?}");
        assert_eq!(built, requires("tools/crds/go.mod"));
    }
}
