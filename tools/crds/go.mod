// Pins the upstream modules whose CRD manifests the test control plane installs.
// Nothing here is compiled: testkit runs `go mod download -json <module>` and reads
// the YAML files from the Go module cache.
module vworkspace.io/tools/crds

go 1.26

require (
	github.com/argoproj/argo-workflows/v3 v3.7.12
	github.com/backube/volsync v0.14.0
	github.com/fluxcd/helm-controller v1.4.3
	github.com/fluxcd/source-controller v1.9.0
	github.com/kubernetes-csi/external-snapshotter/client/v8 v8.7.0
	github.com/vmware-tanzu/velero v1.18.3
)
