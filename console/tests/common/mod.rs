//! What the console's tests share: the chdb front with the schema applied by
//! `flowlens-sink migrate`, rows inserted with plain SQL, `flowlens-console` started from a
//! configuration file and environment, and HTTP requests to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flowlens_testkit::{free_port, http_to, require, stage_binary, Chdb, ChildGuard, VENV_PYTHON};

pub const CONSOLE: &str = env!("CARGO_BIN_EXE_flowlens-console");

/// `true` when the chdb front is not installed and FLOWLENS_SKIP_CHDB=1 asks to skip.
pub fn skip() -> bool {
    require(VENV_PYTHON, "CHDB")
}

/// Applies every migration to `database` with `flowlens-sink migrate`.
pub fn migrate(chdb: &Chdb, database: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\n",
            chdb.url()
        ),
    )
    .unwrap();
    let out = clean(Command::new(stage_binary("flowlens-sink", "flowlens-sink")))
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(out.status.success(), "sink migrate: {}", text(&out));
}

/// Runs `sql` on the front in `database`; the answer's text (500 on an error).
pub fn sql(chdb: &Chdb, database: &str, query: &str) -> String {
    let (status, body) = http_to(
        &format!("127.0.0.1:{}", chdb.port),
        "POST",
        &format!("/?database={database}"),
        query,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status, 200, "{query}\n=> {body}");
    body
}

/// The numbers of one TabSeparated row.
pub fn numbers(text: &str) -> Vec<f64> {
    text.trim()
        .split('\t')
        .map(|v| {
            if v == "\\N" || v == "nan" {
                f64::NAN
            } else {
                v.parse().unwrap()
            }
        })
        .collect()
}

/// `cmd` without the caller's FLOWLENS_* and RUST_LOG variables.
fn clean(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("FLOWLENS_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn command(config: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = clean(Command::new(CONSOLE));
    cmd.arg("--config").arg(config).envs(env.iter().copied());
    cmd
}

/// Everything the binary printed.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `flowlens-console`.
pub struct Console {
    pub port: u16,
    pub log: PathBuf,
    guard: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Console {
    /// Starts the binary with `listen = 127.0.0.1:<free port>` under `[console]` added to
    /// `toml`, and `env`; waits until it listens.
    pub fn start(toml: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let listen = format!("[console]\nlisten = \"127.0.0.1:{port}\"\n");
        let toml = if toml.contains("[console]\n") {
            toml.replacen("[console]\n", &listen, 1)
        } else {
            format!("{listen}{toml}")
        };
        Self::start_on(&toml, env, port)
    }

    /// Starts the binary with `toml` as it is and `env`; waits until it listens on `port`.
    pub fn start_on(toml: &str, env: &[(&str, &str)], port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("console.toml");
        std::fs::write(&config, toml).unwrap();
        let log = dir.path().join("console.log");
        let mut guard = ChildGuard::spawn("flowlens-console", &mut command(&config, env), &log);
        flowlens_testkit::wait_port(port, &mut guard, &log, Duration::from_secs(30));
        Self {
            port,
            log,
            guard,
            _dir: dir,
        }
    }

    /// `GET path` with an optional bearer token: (status, body).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        get(self.port, path, token)
    }

    /// `GET path` answered 200, its JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path, None);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// Sends SIGTERM; whether the binary exited by itself within 5 s.
    pub fn stop(&mut self) -> bool {
        self.guard.stop_with(libc::SIGTERM, Duration::from_secs(5))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs the binary with `toml` and `env` to its end (a configuration it refuses).
pub fn run_to_end(toml: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("console.toml");
    std::fs::write(&config, toml).unwrap();
    let mut child = command(&config, env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the console did not stop: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One HTTP/1.0 GET to 127.0.0.1:`port`, with `Authorization: Bearer <token>` when given.
pub fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    flowlens_testkit::http_with_headers(
        &format!("127.0.0.1:{port}"),
        "GET",
        path,
        &auth,
        "",
        Duration::from_secs(30),
    )
    .unwrap()
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
