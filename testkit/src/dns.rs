//! Real DNS peers from Debian inside a namespace: unbound as the resolver (a static zone, a
//! refused zone, forward zones), dnsmasq as an authoritative upstream, and dig as the client
//! whose own report (status, id, query time) is the oracle.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ChildGuard;

/// A DNS server process in a namespace, stopped on drop.
pub struct DnsServer {
    _dir: tempfile::TempDir,
    _child: ChildGuard,
    pub log: PathBuf,
}

/// Ports unbound listens on (the second for tests of DNS on another port).
pub const UNBOUND_PORTS: [u16; 2] = [53, 5353];

/// What unbound serves, on [`UNBOUND_PORTS`]: `known.flowlens.test` (A 10.9.9.9) and NXDOMAIN for every other name
/// under `flowlens.test`, REFUSED for `refused.test`, and each `(zone, upstream)` forwarded.
pub fn unbound(ns: &str, listen: Ipv4Addr, forwards: &[(&str, Ipv4Addr)]) -> DnsServer {
    let dir = tempfile::tempdir().unwrap();
    let mut conf = format!(
        "server:
  interface: {listen}@53
  interface: {listen}@5353
  do-daemonize: no
  username: \"\"
  chroot: \"\"
  directory: \"{dir}\"
  pidfile: \"\"
  use-syslog: no
  logfile: \"\"
  verbosity: 1
  access-control: 0.0.0.0/0 allow
  do-not-query-localhost: no
  module-config: \"iterator\"
  auto-trust-anchor-file: \"\"
  local-zone: \"test.\" nodefault
  local-zone: \"flowlens.test.\" static
  local-data: \"known.flowlens.test. 60 IN A 10.9.9.9\"
  local-zone: \"refused.test.\" refuse
",
        dir = dir.path().display()
    );
    for (zone, upstream) in forwards {
        conf.push_str(&format!(
            "  local-zone: \"{zone}.\" nodefault\nforward-zone:\n  name: \"{zone}.\"\n  forward-addr: {upstream}\nserver:\n"
        ));
    }
    let path = dir.path().join("unbound.conf");
    std::fs::write(&path, conf).unwrap();
    let log = dir.path().join("unbound.log");
    let child = ChildGuard::spawn(
        "unbound",
        Command::new("ip")
            .args(["netns", "exec", ns, "unbound", "-d", "-c"])
            .arg(&path),
        &log,
    );
    wait_answering(ns, listen, "known.flowlens.test");
    DnsServer {
        _dir: dir,
        _child: child,
        log,
    }
}

/// dnsmasq answering every name under `zone` with A 10.9.9.8 (and nothing else).
pub fn dnsmasq(ns: &str, listen: Ipv4Addr, zone: &str) -> DnsServer {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dnsmasq.log");
    let child = ChildGuard::spawn(
        "dnsmasq",
        Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={listen}"),
                &format!("--address=/{zone}/10.9.9.8"),
                "--cache-size=0",
                &format!("--pid-file={}", dir.path().join("pid").display()),
            ]),
        &log,
    );
    wait_answering(ns, listen, &format!("probe.{zone}"));
    DnsServer {
        _dir: dir,
        _child: child,
        log,
    }
}

fn wait_answering(ns: &str, server: Ipv4Addr, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "dig", "+tries=1", "+timeout=1"])
            .arg(format!("@{server}"))
            .arg(name)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("status:") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "DNS server on {server} not answering"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What dig reported for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dig {
    /// "NOERROR", "NXDOMAIN", ...
    pub status: String,
    pub id: u16,
    /// dig's "Query time", milliseconds.
    pub query_ms: u64,
}

/// One query for `name` (type A) from namespace `ns`, source `from`, to `server` (address,
/// port); `tcp` for DNS over TCP. One try, so one query and one response on the wire.
pub fn dig(ns: &str, from: (Ipv4Addr, u16), server: (Ipv4Addr, u16), name: &str, tcp: bool) -> Dig {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dig", "+tries=1", "+timeout=10"])
        .arg(if tcp { "+tcp" } else { "+notcp" })
        .arg(format!("-b{}#{}", from.0, from.1))
        .arg(format!("-p{}", server.1))
        .arg(format!("@{}", server.0))
        .arg(name)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text
        .lines()
        .find(|l| l.contains("->>HEADER<<-"))
        .unwrap_or_else(|| panic!("dig {name}: no answer\n{text}"));
    let field = |after: &str| {
        let at = header.find(after).unwrap() + after.len();
        header[at..].split(',').next().unwrap().trim().to_string()
    };
    let query_ms = text
        .lines()
        .find_map(|l| l.strip_prefix(";; Query time: "))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("dig {name}: no query time\n{text}"));
    Dig {
        status: field("status: "),
        id: field("id: ").parse().unwrap(),
        query_ms,
    }
}
