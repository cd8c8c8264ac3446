//! Spawning control-plane processes so that none outlives its owner by accident.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// How long a spawned process may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel (`PR_SET_PDEATHSIG`) when the spawning thread dies; tests spawn
    /// from a thread that lives as long as the test process, so a panicking or killed test
    /// binary leaves no orphans behind.
    TiedToProcess,
    /// Started in its own session and left running (`cargo xtask dev-cluster up`); stopped
    /// explicitly by pid.
    Detached,
}

pub(crate) fn spawn(bin: &Path, args: &[String], log: &Path, lifetime: Lifetime) -> Result<Child> {
    spawn_with_env(bin, args, &[], log, lifetime)
}

pub(crate) fn spawn_with_env(
    bin: &Path,
    args: &[String],
    env: &[(&str, &Path)],
    log: &Path,
    lifetime: Lifetime,
) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: the closures only call async-signal-safe libc functions between fork and exec.
    unsafe {
        match lifetime {
            Lifetime::TiedToProcess => cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }),
            Lifetime::Detached => cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }),
        };
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Whether a process with this pid exists.
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Component flag dumps drown the one line that says what went wrong.
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("FLAG: --")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
