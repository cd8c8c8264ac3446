// Pins the third-party controllers and tools the full test cluster runs as local
// processes. Nothing here is compiled as a module: testkit reads each pinned version and
// module directory with `go mod download -json <module>` (checked against go.sum) and
//   - builds the Flux controllers from a copy of their module (their go.mod carries
//     replace directives, so `go install` refuses them and a wrapper cannot import their
//     root `package main`),
//   - `go install`s kwok and the OCI registry at the pinned version,
//   - reads kwok's default Stage manifests from its module.
// Keep the Flux versions equal to the CRD pins in ../crds/go.mod (a testkit test checks).
module vworkspace.io/tools/controllers

go 1.26

require (
	github.com/fluxcd/helm-controller v1.4.3
	github.com/fluxcd/source-controller v1.9.0
	github.com/google/go-containerregistry v0.22.1
	sigs.k8s.io/kwok v0.8.0
)
