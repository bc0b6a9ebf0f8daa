//! ClickHouse servers (the chdb HTTP front, Debian's 18.16) and the dashboards' queries.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http_to, repo_root, wait_port, ChildGuard, VENV_PYTHON};

/// The chdb ClickHouse-HTTP front on a free port with a temporary data directory.
pub struct Chdb {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Chdb {
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`Chdb::start`], but every request must authenticate as `user` / `password`.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_with_args(&["--user", user, "--password", password])
    }

    fn start_with_args(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let guard = spawn_front(dir.path(), port, args, "chdb.log");
        Self {
            port,
            dir,
            _guard: guard,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chdb.log")).unwrap_or_default()
    }
}

/// Debian's clickhouse-server 18.16 through scripts/stack/clickhouse18.sh, in a temporary stack
/// directory on free ports; stopped on drop.
pub struct ClickHouse18 {
    pub http_port: u16,
    pub tcp_port: u16,
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
        let me = Self::unstarted();
        me.start_again();
        me
    }

    /// Free ports and a stack directory, not started yet (see [`ClickHouse18::add_config`]).
    pub fn unstarted() -> Self {
        Self {
            http_port: free_port(),
            tcp_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `xml` as `config.d/<name>.xml`, which the server merges into the generated
    /// config.xml when it starts.
    pub fn add_config(&self, name: &str, xml: &str) {
        let dir = self.dir.path().join("clickhouse18/config.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.xml")), xml).unwrap();
    }

    /// Starts the server (again, after [`ClickHouse18::kill`]: same ports and data) and waits
    /// until it answers.
    pub fn start_again(&self) {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "clickhouse18.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: the server dies without any shutdown work, as in a crash.
    pub fn kill(&self) {
        let pidfile = self.dir.path().join("clickhouse18/clickhouse-server.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the server's pid file")
            .trim()
            .parse()
            .unwrap();
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "pid {pid} alive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's process id, from the script's pid file (the server is not a child of this
    /// process); `None` while there is none.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("clickhouse18/clickhouse-server.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The last `lines` lines of the server's error log.
    pub fn error_log(&self, lines: usize) -> String {
        let log = self
            .dir
            .path()
            .join("clickhouse18/log/clickhouse-server.err.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ClickHouse18 {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

impl Chdb {
    /// Stops the front (SIGTERM: the chdb session is closed cleanly) and waits until its port
    /// is free; the data directory is kept for [`Chdb::start_again`].
    pub fn stop(&mut self) {
        assert!(
            self._guard
                .stop_with(libc::SIGTERM, Duration::from_secs(20)),
            "chdb front did not stop on SIGTERM"
        );
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(20), "port still open");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the front again on the same port and data directory (after [`Chdb::stop`]).
    pub fn start_again(&mut self) {
        self._guard = spawn_front(self.dir.path(), self.port, &[], "chdb.again.log");
    }
}

/// Starts scripts/stack/chdb_http.py on `port` with its data under `dir` and waits for /ping.
fn spawn_front(dir: &Path, port: u16, args: &[&str], log_name: &str) -> ChildGuard {
    let log = dir.join(log_name);
    let mut guard = ChildGuard::spawn(
        "chdb_http.py",
        Command::new(VENV_PYTHON)
            .arg("-u")
            .arg(repo_root().join("scripts/stack/chdb_http.py"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args),
        &log,
    );
    // Starting the front (it loads chdb's ~0.5 GB engine) took over 30 s once in CI, with other
    // services starting on the same 2 cores: a readiness wait, not a timing; a failure prints
    // the front's log.
    wait_port(port, &mut guard, &log, Duration::from_secs(120));
    // The port can be open before the front answers: a reset connection is retried too.
    let start = Instant::now();
    let addr = format!("127.0.0.1:{port}");
    let pong = || http_to(&addr, "GET", "/ping", "", Duration::from_secs(20));
    while !matches!(pong(), Ok((_, body)) if body == "Ok.\n") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chdb front not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// One ClickHouse query of a Grafana dashboard (deploy/grafana/dashboards/*.json).
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The dashboard file, relative to the repository.
    pub dashboard: String,
    pub panel: String,
    /// The panel's SQL with the data source's macros replaced (the last hour, 60 s intervals).
    pub sql: String,
}

/// Every ClickHouse query of the Grafana dashboards, in dashboard and panel order, as
/// `deploy/grafana/check_dashboards.py --emit-sql` makes them runnable.
pub fn dashboard_queries() -> Vec<PanelQuery> {
    let out = Command::new(VENV_PYTHON)
        .arg(repo_root().join("deploy/grafana/check_dashboards.py"))
        .arg("--emit-sql")
        .output()
        .expect("running check_dashboards.py");
    assert!(
        out.status.success(),
        "check_dashboards.py --emit-sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let targets: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("check_dashboards.py --emit-sql: JSON");
    let text = |t: &serde_json::Value, key: &str| t[key].as_str().unwrap_or_default().to_string();
    targets
        .iter()
        .map(|t| PanelQuery {
            dashboard: text(t, "dashboard"),
            panel: text(t, "panel"),
            sql: text(t, "sql"),
        })
        .collect()
}
