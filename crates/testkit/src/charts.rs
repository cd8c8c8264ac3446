//! The test charts of `testdata/charts`: packaged as Helm does (a gzip'd tar of
//! `<name>/…`), indexed for an HTTP Helm repository, and pushed to an OCI registry with
//! Helm's media types.
//!
//! Done here rather than with the `helm` CLI: packaging and the OCI push are a few plain
//! formats, and building `helm` from its Go module would add minutes to a cold start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::binaries::repo_root;

/// Media types Helm and Flux use for a chart in an OCI registry.
pub const HELM_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_LAYER_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The repository path charts are pushed under: `oci://<registry>/charts/<name>:<version>`.
pub const OCI_REPOSITORY_PREFIX: &str = "charts";

/// Which versions of which test chart are published; the first version of each is the
/// directory as committed, later ones rewrite `version` and `appVersion`.
pub const PUBLISHED: &[(&str, &[(&str, &str)])] = &[
    ("webapp", &[("0.1.0", "1.0.0"), ("0.2.0", "2.0.0")]),
    ("broken", &[("0.1.0", "1.0.0"), ("0.2.0", "2.0.0")]),
];

/// One packaged chart version.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// `Chart.yaml` as published (JSON), also the OCI config blob.
    pub metadata: Value,
    pub file_name: String,
    pub bytes: Vec<u8>,
}

impl Package {
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
}

/// Packages every published chart version.
pub fn package_all() -> Result<Vec<Package>> {
    let root = repo_root().join("testdata/charts");
    let mut out = Vec::new();
    for (name, versions) in PUBLISHED {
        for (version, app_version) in *versions {
            out.push(package(&root.join(name), version, app_version)?);
        }
    }
    Ok(out)
}

fn package(dir: &Path, version: &str, app_version: &str) -> Result<Package> {
    let chart_yaml = dir.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml)
        .with_context(|| format!("reading {}", chart_yaml.display()))?;
    let mut meta: Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", chart_yaml.display()))?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .with_context(|| format!("{} has no name", chart_yaml.display()))?
        .to_string();
    meta["version"] = json!(version);
    meta["appVersion"] = json!(app_version);

    let mut files = Vec::new();
    crate::binaries::collect_files(dir, &mut files)?;
    files.sort();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for file in files {
        let rel = file.strip_prefix(dir).unwrap_or(&file);
        let data = if rel == Path::new("Chart.yaml") {
            serde_yaml::to_string(&meta)?.into_bytes()
        } else {
            std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
        };
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        // A fixed time keeps packages (and so their digests) reproducible.
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, PathBuf::from(&name).join(rel), data.as_slice())
            .with_context(|| format!("adding {} to the package", file.display()))?;
    }
    let bytes = tar.into_inner()?.finish()?;
    Ok(Package {
        file_name: format!("{name}-{version}.tgz"),
        name,
        version: version.to_string(),
        metadata: meta,
        bytes,
    })
}

/// Writes the packages and an `index.yaml` (relative URLs) into `dir`.
pub fn write_http_repository(packages: &[Package], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut entries: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let created = "2026-01-01T00:00:00Z";
    for p in packages {
        std::fs::write(dir.join(&p.file_name), &p.bytes)?;
        let mut entry = p.metadata.clone();
        entry["urls"] = json!([p.file_name]);
        entry["digest"] = json!(p.digest());
        entry["created"] = json!(created);
        entries.entry(p.name.clone()).or_default().push(entry);
    }
    let index = json!({"apiVersion": "v1", "entries": entries, "generated": created});
    std::fs::write(dir.join("index.yaml"), serde_yaml::to_string(&index)?)?;
    Ok(())
}

/// Pushes each package to `http://<registry>/charts/<name>:<version>` with the OCI
/// distribution API, as `helm push` lays a chart out.
pub async fn push_oci(packages: &[Package], registry: &str) -> Result<()> {
    let http = reqwest::Client::new();
    for p in packages {
        let repo = format!("{OCI_REPOSITORY_PREFIX}/{}", p.name);
        let config = serde_json::to_vec(&p.metadata)?;
        let config_digest = upload_blob(&http, registry, &repo, config.clone()).await?;
        let layer_digest = upload_blob(&http, registry, &repo, p.bytes.clone()).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": HELM_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": HELM_LAYER_MEDIA_TYPE, "digest": layer_digest, "size": p.bytes.len(),
                        "annotations": {"org.opencontainers.image.title": p.file_name}}],
            "annotations": {"org.opencontainers.image.title": p.name,
                            "org.opencontainers.image.version": p.version}
        });
        let url = format!("http://{registry}/v2/{repo}/manifests/{}", p.version);
        let resp = http
            .put(&url)
            .header("Content-Type", OCI_MANIFEST_MEDIA_TYPE)
            .body(serde_json::to_vec(&manifest)?)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        if !resp.status().is_success() {
            bail!(
                "PUT {url}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn upload_blob(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    data: Vec<u8>,
) -> Result<String> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let start = format!("http://{registry}/v2/{repo}/blobs/uploads/");
    let resp = http
        .post(&start)
        .send()
        .await
        .with_context(|| format!("POST {start}"))?;
    let location = resp
        .headers()
        .get("Location")
        .and_then(|l| l.to_str().ok())
        .with_context(|| format!("POST {start}: {} without a Location", resp.status()))?
        .to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={digest}");
    let resp = http
        .put(&url)
        .header("Content-Type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    if !resp.status().is_success() {
        bail!("uploading a blob to {repo}: {}", resp.status());
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    #[test]
    fn packages_are_reproducible_and_carry_the_published_version() {
        let a = package_all().unwrap();
        let b = package_all().unwrap();
        assert_eq!(
            a.iter().map(Package::digest).collect::<Vec<_>>(),
            b.iter().map(Package::digest).collect::<Vec<_>>()
        );
        let v2 = a
            .iter()
            .find(|p| p.name == "webapp" && p.version == "0.2.0")
            .unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(v2.bytes.as_slice()));
        let mut chart_yaml = String::new();
        let mut paths = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().to_string();
            if path == "webapp/Chart.yaml" {
                entry.read_to_string(&mut chart_yaml).unwrap();
            }
            paths.push(path);
        }
        assert!(paths.contains(&"webapp/templates/deployment.yaml".to_string()));
        let meta: Value = serde_yaml::from_str(&chart_yaml).unwrap();
        assert_eq!(meta["version"], "0.2.0");
        assert_eq!(meta["appVersion"], "2.0.0");
    }

    #[test]
    fn index_lists_every_version_with_its_digest() {
        let packages = package_all().unwrap();
        let dir = std::env::temp_dir().join(format!("testkit-index-{}", std::process::id()));
        write_http_repository(&packages, &dir).unwrap();
        let index: Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("index.yaml")).unwrap())
                .unwrap();
        let webapp = index["entries"]["webapp"].as_array().unwrap();
        assert_eq!(webapp.len(), 2);
        assert_eq!(webapp[1]["urls"][0], "webapp-0.2.0.tgz");
        assert_eq!(
            webapp[1]["digest"],
            hex::encode(Sha256::digest(
                std::fs::read(dir.join("webapp-0.2.0.tgz")).unwrap()
            ))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
