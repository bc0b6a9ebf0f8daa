//! The two stage binaries on one run's topics, groups and ports, their logs and metrics.

use super::*;

/// Topics, groups and ports of one run.
pub(crate) struct Names {
    pub(crate) raw: String,
    pub(crate) interfaces: String,
    pub(crate) enriched: String,
    pub(crate) dead_letter: String,
    pub(crate) enricher_group: String,
    pub(crate) sink_group: String,
    pub(crate) client_id: String,
    pub(crate) host: String,
    pub(crate) enricher_metrics: u16,
    pub(crate) sink_metrics: u16,
}

impl Names {
    pub(crate) fn new() -> Self {
        let name = unique("hostile");
        Self {
            raw: format!("{name}.raw"),
            interfaces: format!("{name}.interfaces"),
            enriched: format!("{name}.enriched"),
            dead_letter: format!("{name}.dlq"),
            enricher_group: format!("{name}-enricher"),
            sink_group: format!("{name}-sink"),
            client_id: name.clone(),
            host: name,
            enricher_metrics: free_port(),
            sink_metrics: free_port(),
        }
    }

    pub(crate) fn kafka(&self, brokers: &str) -> KafkaConfig {
        let mut k = KafkaConfig {
            brokers: vec![brokers.into()],
            partitions: 2,
            ..Default::default()
        };
        k.topics.raw_flows = self.raw.clone();
        k.topics.interfaces = self.interfaces.clone();
        k.topics.enriched_flows = self.enriched.clone();
        k.topics.dead_letter = self.dead_letter.clone();
        k
    }
}

/// The two stage binaries running with one configuration; killed on drop.
pub(crate) struct Stages {
    pub(crate) enricher: ChildGuard,
    pub(crate) sink: ChildGuard,
    pub(crate) enricher_log: PathBuf,
    pub(crate) sink_log: PathBuf,
    pub(crate) enricher_bin: PathBuf,
    pub(crate) enricher_config: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) fn spawn(name: &'static str, bin: &Path, config: &Path, log: &Path) -> ChildGuard {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config).env_remove("RUST_LOG");
    ChildGuard::spawn(name, &mut cmd, log)
}

impl Stages {
    /// `dead_letter` and `kafka_extra` are TOML lines for `[dead_letter]` and `[kafka]`;
    /// `properties` for `[kafka.properties]`.
    pub(crate) fn start(
        names: &Names,
        brokers: &str,
        clickhouse: &str,
        dead_letter: &str,
        kafka_extra: &str,
        properties: &str,
        interfaces_ready_timeout_ms: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kafka = format!(
            r#"[kafka]
brokers = ["{brokers}"]
client_id = "{client}"
partitions = 2
{kafka_extra}
[kafka.topics]
raw_flows = "{raw}"
interfaces = "{interfaces}"
enriched_flows = "{enriched}"
dead_letter = "{dlq}"
[kafka.properties]
{properties}
[dead_letter]
{dead_letter}
"#,
            client = names.client_id,
            raw = names.raw,
            interfaces = names.interfaces,
            enriched = names.enriched,
            dlq = names.dead_letter,
        );
        let enricher_config = dir.path().join("enricher.toml");
        std::fs::write(
            &enricher_config,
            format!(
                r#"[enricher]
group_id = "{group}"
interfaces_ready_timeout_ms = {interfaces_ready_timeout_ms}
[telemetry]
metrics_listen = "127.0.0.1:{port}"
{kafka}"#,
                group = names.enricher_group,
                port = names.enricher_metrics,
            ),
        )
        .unwrap();
        let sink_config = dir.path().join("sink.toml");
        std::fs::write(
            &sink_config,
            format!(
                r#"[clickhouse]
url = "{clickhouse}"
timeout_ms = 30000
[batch]
max_age_ms = 300
[sink]
group_id = "{group}"
retry_initial_ms = 100
retry_max_ms = 1000
[telemetry]
metrics_listen = "127.0.0.1:{port}"
{kafka}"#,
                group = names.sink_group,
                port = names.sink_metrics,
            ),
        )
        .unwrap();
        let enricher_bin = stage_binary("flowlens-enricher", "flowlens-enricher");
        let enricher_log = dir.path().join("enricher.log");
        let sink_log = dir.path().join("sink.log");
        let sink = spawn(
            "flowlens-sink",
            Path::new(env!("CARGO_BIN_EXE_flowlens-sink")),
            &sink_config,
            &sink_log,
        );
        let enricher = spawn(
            "flowlens-enricher",
            &enricher_bin,
            &enricher_config,
            &enricher_log,
        );
        Self {
            enricher,
            sink,
            enricher_log,
            sink_log,
            enricher_bin,
            enricher_config,
            dir,
        }
    }

    /// Stops the enricher (SIGTERM, it must exit by itself) and starts it again with the same
    /// configuration, logging to a new file.
    pub(crate) fn restart_enricher(&mut self) {
        assert!(
            self.enricher
                .stop_with(libc::SIGTERM, Duration::from_secs(60)),
            "the enricher did not stop on SIGTERM\n{}",
            self.logs()
        );
        self.enricher_log = self.dir.path().join("enricher.again.log");
        self.enricher = spawn(
            "flowlens-enricher",
            &self.enricher_bin,
            &self.enricher_config,
            &self.enricher_log,
        );
    }

    pub(crate) fn logs(&self) -> String {
        format!(
            "--- enricher log:\n{}\n--- sink log:\n{}",
            tail(&self.enricher_log),
            tail(&self.sink_log)
        )
    }

    /// Both processes are still running.
    pub(crate) fn assert_up(&mut self) {
        let logs = self.logs();
        assert!(!self.enricher.exited(), "the enricher exited\n{logs}");
        assert!(!self.sink.exited(), "the sink exited\n{logs}");
    }

    /// SIGTERM to both; each must exit by itself.
    pub(crate) fn stop(mut self) {
        let logs = self.logs();
        let enricher = self
            .enricher
            .stop_with(libc::SIGTERM, Duration::from_secs(60));
        let sink = self.sink.stop_with(libc::SIGTERM, Duration::from_secs(60));
        assert!(enricher && sink, "a stage did not stop on SIGTERM\n{logs}");
    }
}

/// The last 200 lines of a log file.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(200)..].join("\n")
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value of the metric line starting with `series` (name and labels) at `port`; 0 if absent.
pub(crate) fn metric(port: u16, series: &str) -> f64 {
    let (_, text) = http(port, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
