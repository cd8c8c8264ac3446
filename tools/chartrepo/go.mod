// A static file server for the test Helm repository (index.yaml and chart packages),
// standard library only. A separate process rather than a thread of the caller so that a
// detached dev cluster keeps serving after `cargo xtask dev-cluster up` returns.
module vworkspace.io/tools/chartrepo

go 1.26
