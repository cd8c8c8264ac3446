//! `cargo xtask test`: the one command that runs every test.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

pub fn run(cargo_args: &[String]) -> Result<()> {
    let started = Instant::now();
    // Build (or reuse) the control plane first so its build time is visible on its own
    // and test binaries starting in parallel never race to build it.
    let bins = testkit::ensure_binaries()?;
    println!(
        "control plane binaries ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        bins.dir.display()
    );
    // The full profile's programs (Flux, kwok, registry) for the real_* tests. Cold, the two
    // Flux controllers dominate: 5-15 minutes each on 2 cores; warm it is a cache lookup.
    let tools_started = std::time::Instant::now();
    let tools = testkit::ensure_tools()?;
    println!(
        "full-profile tools ready in {:.1}s (source-controller, helm-controller, kwok, registry, chartrepo, helm)",
        tools_started.elapsed().as_secs_f64()
    );
    crate::crdgen::run(true)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--workspace", "--all-targets"])
        .args(cargo_args)
        .env("VWORKSPACE_CONTROL_PLANE_BIN", &bins.dir)
        .envs(tools.env())
        .status()?;
    println!(
        "whole test run took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}
