//! Pure desired-state builders for the Flux objects of a managed ApplicationInstance.
//!
//! No client in scope: the controller observes, calls [`desired_children`], and applies
//! the result with server-side apply.
//!
//! OCI charts use `OCIRepository` + `HelmRelease.spec.chartRef`: Flux's recommended form
//! for OCI Helm charts (HelmRepository `type: oci` is the legacy path and cannot report
//! artifact readiness). The repository URL is `<chart.url>/<chart.name>` with the `oci://`
//! prefix Flux requires, the tag is the chart version, and the layer selector picks the
//! Helm chart layer.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube_core::{Resource, ResourceExt};
use vworkspace_api::application_instance::{ApplicationInstance, SourceType, ValuesSource};
use vworkspace_api::keys;
use vworkspace_api::validation::validate_application_instance;

use crate::kinds::flux::*;

pub mod endpoints;
pub mod status;

pub const HELM_RELEASE_INTERVAL: &str = "5m0s";
pub const SOURCE_INTERVAL: &str = "1m0s";
pub const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// Helm release history kept by Flux.
pub const MAX_HISTORY: i32 = 10;
/// Install/upgrade attempts before Flux gives up (then remediates).
pub const REMEDIATION_RETRIES: i64 = 3;

/// The chart source of an instance.
#[derive(Clone, Debug)]
pub enum ChartSource {
    Helm(HelmRepository),
    Oci(OCIRepository),
}

impl ChartSource {
    pub fn name(&self) -> String {
        match self {
            ChartSource::Helm(s) => s.name_any(),
            ChartSource::Oci(s) => s.name_any(),
        }
    }
}

/// Everything Flux needs for one managed instance.
#[derive(Clone, Debug)]
pub struct FluxChildren {
    pub source: ChartSource,
    pub helm_release: HelmRelease,
}

/// Name of the chart-source object for a release.
pub fn source_name(release: &str) -> String {
    format!("{release}-source")
}

/// Labels for children: the instance's `managed-by` (else ours), the instance name, and
/// the cluster id when the instance carries one. Merged into live labels by SSA, so
/// labels other actors add survive.
pub fn child_labels(instance: &ApplicationInstance) -> BTreeMap<String, String> {
    let own = instance.labels();
    let mut labels = BTreeMap::new();
    labels.insert(
        keys::LABEL_MANAGED_BY.to_string(),
        own.get(keys::LABEL_MANAGED_BY)
            .cloned()
            .unwrap_or_else(|| keys::MANAGED_BY_OPERATOR.into()),
    );
    labels.insert(
        keys::LABEL_APPLICATION_INSTANCE.to_string(),
        instance.name_any(),
    );
    if let Some(id) = own.get(keys::LABEL_CLUSTER_ID) {
        labels.insert(keys::LABEL_CLUSTER_ID.to_string(), id.clone());
    }
    labels
}

fn oci_url(base: &str, chart: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    let base = base.strip_prefix("oci://").unwrap_or(base);
    format!("oci://{base}/{chart}")
}

/// Builds the desired Flux objects, or says why the spec cannot be delivered.
pub fn desired_children(instance: &ApplicationInstance) -> Result<FluxChildren, String> {
    let namespace = instance.namespace().unwrap_or_default();
    validate_application_instance(&instance.spec, &namespace)?;
    let (Some(chart), Some(release), Some(values)) = (
        &instance.spec.chart,
        &instance.spec.release,
        &instance.spec.values,
    ) else {
        return Err("spec.chart, spec.release and spec.values are required in managed mode".into());
    };
    let owner: OwnerReference = instance
        .controller_owner_ref(&())
        .ok_or("the instance has no uid yet; it will be retried")?;
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.clone()),
        labels: Some(child_labels(instance)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let src_name = source_name(&release.name);
    let (source, chart_template, chart_ref) = match chart.source_type {
        SourceType::Helm => (
            ChartSource::Helm(HelmRepository {
                metadata: meta(src_name.clone()),
                spec: HelmRepositorySpec {
                    url: chart.url.trim().to_string(),
                    interval: SOURCE_INTERVAL.into(),
                },
                status: None,
            }),
            Some(HelmChartTemplate {
                spec: HelmChartTemplateSpec {
                    chart: chart.name.clone(),
                    version: Some(chart.version.clone()),
                    source_ref: CrossNamespaceObjectReference {
                        api_version: None,
                        kind: "HelmRepository".into(),
                        name: src_name.clone(),
                    },
                },
            }),
            None,
        ),
        SourceType::Oci => (
            ChartSource::Oci(OCIRepository {
                metadata: meta(src_name.clone()),
                spec: OCIRepositorySpec {
                    url: oci_url(&chart.url, &chart.name),
                    interval: SOURCE_INTERVAL.into(),
                    r#ref: Some(OCIRepositoryRef {
                        tag: Some(chart.version.clone()),
                    }),
                    layer_selector: Some(OCILayerSelector {
                        media_type: HELM_CHART_LAYER.into(),
                        operation: "copy".into(),
                    }),
                },
                status: None,
            }),
            None,
            Some(CrossNamespaceSourceReference {
                api_version: None,
                kind: "OCIRepository".into(),
                name: src_name.clone(),
            }),
        ),
    };
    let reference = |kind: &str, r: &Option<vworkspace_api::application_instance::KeyRef>| {
        r.as_ref().map(|r| {
            vec![ValuesReference {
                kind: kind.into(),
                name: r.name.clone(),
                values_key: Some(r.key.clone()),
            }]
        })
    };
    let (inline, values_from) = match values.source {
        ValuesSource::Inline => (values.inline.clone(), None),
        ValuesSource::SecretRef => (None, reference("Secret", &values.secret_ref)),
        ValuesSource::ConfigMapRef => (None, reference("ConfigMap", &values.config_map_ref)),
    };
    let helm_release = HelmRelease {
        metadata: meta(release.name.clone()),
        spec: HelmReleaseSpec {
            interval: HELM_RELEASE_INTERVAL.into(),
            release_name: None,
            chart: chart_template,
            chart_ref,
            values: inline,
            values_from,
            install: Some(Install {
                remediation: Some(InstallRemediation {
                    retries: Some(REMEDIATION_RETRIES),
                }),
            }),
            upgrade: Some(Upgrade {
                remediation: Some(UpgradeRemediation {
                    retries: Some(REMEDIATION_RETRIES),
                    remediate_last_failure: Some(true),
                    strategy: Some("rollback".into()),
                }),
                cleanup_on_fail: Some(true),
            }),
            rollback: Some(Rollback {
                timeout: Some("5m0s".into()),
                cleanup_on_fail: Some(true),
            }),
            max_history: Some(MAX_HISTORY),
            suspend: None,
        },
        status: None,
    };
    Ok(FluxChildren {
        source,
        helm_release,
    })
}

#[cfg(test)]
mod tests;
