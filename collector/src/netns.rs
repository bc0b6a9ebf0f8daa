//! Network namespaces: run a piece of work with the calling thread inside another namespace
//! (attach programs, read interfaces) and come back. File descriptors opened inside (TCX links,
//! sockets) stay bound to that namespace after the thread returns.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::Context;

/// `name` → /var/run/netns/name; anything containing '/' is taken as a path.
pub fn resolve(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        PathBuf::from("/var/run/netns").join(netns)
    }
}

/// Inode of a namespace file (what `ip netns identify` and /proc/PID/ns/net compare).
pub fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

/// Runs `work` with the calling thread in namespace `netns` (empty: the current one), then
/// restores the thread's original namespace, even if `work` fails.
pub fn within<T>(netns: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if netns.is_empty() {
        return work();
    }
    let target_path = resolve(netns);
    let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
    let target = File::open(&target_path)
        .with_context(|| format!("opening network namespace {}", target_path.display()))?;
    setns(&target).with_context(|| format!("entering network namespace {netns}"))?;
    let result = work();
    setns(&original).context("returning to the original network namespace")?;
    result
}

fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
