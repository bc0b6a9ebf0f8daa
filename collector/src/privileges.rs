//! What the collector needs from the kernel, checked before anything is loaded so a missing
//! capability or feature gives an error naming it: CAP_BPF (maps, programs), CAP_PERFMON (the
//! verifier allows the packet-parsing programs only with it), CAP_NET_ADMIN (TC/TCX attach),
//! CAP_SYS_ADMIN only to enter another network namespace (CAP_SYS_ADMIN also stands in for
//! CAP_BPF and CAP_PERFMON on their own); and a kernel with batched and atomic per-key map reads.

use anyhow::bail;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Oldest kernel with everything used: BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps (5.14).
const MIN_KERNEL: (u32, u32) = (5, 14);

/// Fails with the names of the missing capabilities, or the kernel feature that is missing.
pub fn check(enters_netns: bool) -> anyhow::Result<()> {
    let kernel = kernel_version()?;
    if kernel < MIN_KERNEL {
        bail!(
            "kernel {}.{} is too old: flowlens needs {}.{} or newer (batched map reads and \
             BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps)",
            kernel.0,
            kernel.1,
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    let effective = effective_capabilities()?;
    let missing = missing(effective, enters_netns);
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {} (the collector needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; \
             CAP_SYS_ADMIN as well when collector.netns names another network namespace)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn has(set: u64, cap: u32) -> bool {
    set & (1 << cap) != 0
}

fn missing(effective: u64, enters_netns: bool) -> Vec<&'static str> {
    let admin = has(effective, CAP_SYS_ADMIN);
    let mut out = Vec::new();
    if !has(effective, CAP_BPF) && !admin {
        out.push("CAP_BPF");
    }
    if !has(effective, CAP_PERFMON) && !admin {
        out.push("CAP_PERFMON");
    }
    if !has(effective, CAP_NET_ADMIN) && !admin {
        out.push("CAP_NET_ADMIN");
    }
    if enters_netns && !admin {
        out.push("CAP_SYS_ADMIN");
    }
    out
}

fn effective_capabilities() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))?;
    Ok(u64::from_str_radix(hex, 16)?)
}

fn kernel_version() -> anyhow::Result<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().unwrap_or("0").parse().unwrap_or(0);
    let minor = parts.next().unwrap_or("0").parse().unwrap_or(0);
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let all = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert!(missing(all, false).is_empty());
        assert_eq!(missing(all, true), vec!["CAP_SYS_ADMIN"]);
        assert_eq!(
            missing(1 << CAP_NET_ADMIN, false),
            vec!["CAP_BPF", "CAP_PERFMON"]
        );
        assert!(missing(1 << CAP_SYS_ADMIN, true).is_empty());
        assert_eq!(missing(0, false).len(), 3);
    }

    #[test]
    fn this_kernel_is_recent_enough() {
        assert!(kernel_version().unwrap() >= MIN_KERNEL);
    }
}
