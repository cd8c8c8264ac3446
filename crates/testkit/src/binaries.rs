//! Building and caching the control-plane binaries from the Go wrapper modules in `tools/`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The Kubernetes release the test control plane runs; it matches the `v1_36` feature of
/// k8s-openapi that the workspace compiles against.
pub const KUBERNETES_VERSION: &str = "v1.36.3";
/// etcd release built from `go.etcd.io/etcd/server/v3`.
pub const ETCD_VERSION: &str = "v3.6.16";

const BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// A directory holding `etcd`, `kube-apiserver`, `kube-controller-manager`,
/// `kube-scheduler` and `kubectl`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    here.canonicalize().unwrap_or(here)
}

pub(crate) fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("vworkspace-operator")
}

fn has_all(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Cache key: versions plus a digest of every wrapper module file, so a changed pin or
/// `go.sum` builds afresh and an unchanged one never rebuilds.
fn cache_key(root: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    for module in ["tools/kube", "tools/etcd"] {
        let mut files = Vec::new();
        collect_files(&root.join(module), &mut files)?;
        files.sort();
        for f in files {
            hasher.update(
                f.strip_prefix(root)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .as_bytes(),
            );
            hasher.update(fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
        }
    }
    let digest = hex::encode(hasher.finalize());
    Ok(format!(
        "k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-{}",
        &digest[..12]
    ))
}

pub(crate) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Returns the control-plane binaries, building them with `go build` on first use.
///
/// `VWORKSPACE_CONTROL_PLANE_BIN` or `KUBEBUILDER_ASSETS` may point at a directory that
/// already holds all five binaries. Concurrent callers (several test binaries) serialise
/// on a lock file so only one builds.
pub fn ensure_binaries() -> Result<Binaries> {
    for var in ["VWORKSPACE_CONTROL_PLANE_BIN", "KUBEBUILDER_ASSETS"] {
        if let Some(dir) = std::env::var_os(var).map(PathBuf::from) {
            if has_all(&dir) {
                return Ok(Binaries { dir });
            }
            bail!(
                "{var}={} does not contain all of {BINARIES:?}",
                dir.display()
            );
        }
    }
    let root = repo_root();
    let base = cache_root().join("controlplane");
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let dir = base.join(cache_key(&root)?);
    if has_all(&dir) {
        return Ok(Binaries { dir });
    }
    let lock = File::create(base.join(".build.lock"))?;
    lock.lock().context("locking the control-plane build")?;
    if has_all(&dir) {
        return Ok(Binaries { dir });
    }
    let started = Instant::now();
    let staging = base.join(format!(".staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    // Stamp the Kubernetes version into the binaries; without it they report
    // v0.0.0-master and clients warn about version skew.
    let minor = KUBERNETES_VERSION.split('.').nth(1).unwrap_or_default();
    let kube_ldflags = format!(
        "-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION} \
         -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION} \
         -X k8s.io/client-go/pkg/version.gitMajor=1 \
         -X k8s.io/client-go/pkg/version.gitMinor={minor}"
    );
    for (module, ldflags) in [("tools/etcd", String::new()), ("tools/kube", kube_ldflags)] {
        eprintln!("testkit: building {module} (cold builds take several minutes)...");
        let status = Command::new("go")
            .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
            .arg(&staging)
            .arg("./cmd/...")
            .current_dir(root.join(module))
            .env("GOFLAGS", "-mod=readonly -buildvcs=false")
            .env("GOTOOLCHAIN", "local")
            .status()
            .context("running `go build` (is Go installed?)")?;
        if !status.success() {
            bail!("`go build ./cmd/...` in {module} failed with {status}");
        }
    }
    if !has_all(&staging) {
        bail!(
            "go build did not produce all of {BINARIES:?} in {}",
            staging.display()
        );
    }
    fs::rename(&staging, &dir).with_context(|| format!("moving binaries to {}", dir.display()))?;
    eprintln!(
        "testkit: built the test control plane ({KUBERNETES_VERSION}, etcd {ETCD_VERSION}) in {:.1}s into {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(Binaries { dir })
}
