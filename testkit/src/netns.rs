//! Network namespaces joined by veth pairs, and running code inside one.

use std::process::Command;

/// Two network namespaces joined by a veth pair (`a` side 10.N.0.1/24 + fd00:N::1/64, `b` side
/// .2 / ::2), both up with loopback; deleted on drop. N is chosen from the process id so parallel
/// test binaries do not collide.
pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    pub ip_a: std::net::Ipv4Addr,
    pub ip_b: std::net::Ipv4Addr,
    pub ip6_a: std::net::Ipv6Addr,
    pub ip6_b: std::net::Ipv6Addr,
}

impl NetnsPair {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU8, Ordering};
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let net = 100 + ((std::process::id() as u8).wrapping_mul(7).wrapping_add(n) % 150);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let me = Self {
            ns_a: format!("fl{tag}a{id}"),
            ns_b: format!("fl{tag}b{id}"),
            if_a: format!("fla{id}"),
            if_b: format!("flb{id}"),
            ip_a: std::net::Ipv4Addr::new(10, net, 0, 1),
            ip_b: std::net::Ipv4Addr::new(10, net, 0, 2),
            ip6_a: format!("fd00:{net}::1").parse().unwrap(),
            ip6_b: format!("fd00:{net}::2").parse().unwrap(),
        };
        let (a, b) = (&me.ns_a, &me.ns_b);
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "link", "add", &me.if_a, "netns", a, "type", "veth", "peer", "name", &me.if_b, "netns",
            b,
        ]);
        for (ns, ifname, v4, v6) in [
            (a, &me.if_a, me.ip_a, me.ip6_a),
            (b, &me.if_b, me.ip_b, me.ip6_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // No SACK blocks: every TCP header after the handshake is the same size, so tests
            // can compute exact wire bytes even if a starved CPU causes retransmissions.
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_sack=0"])
                .output()
                .expect("sysctl");
            assert!(out.status.success(), "net.ipv4.tcp_sack=0 in {ns}");
        }
        me
    }

    /// Runs a command inside namespace `ns` and returns its stdout; panics if it fails.
    pub fn exec(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns exec {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `work` with the calling thread inside network namespace `ns`; sockets created there stay
/// in that namespace.
pub fn in_netns<T>(ns: &str, work: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let original = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let target = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    assert_eq!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {ns}"
    );
    let out = work();
    assert_eq!(
        unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns back"
    );
    out
}
