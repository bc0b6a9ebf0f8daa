//! The stages under test, each in a process of its own (this binary's hidden `stage`
//! subcommand, which runs `flowlens_enricher::run` / `flowlens_sink::run` with their default
//! settings): configured through FLOWLENS_<STAGE>__* variables for the run's topics, groups and
//! ClickHouse, checked while the run goes on, stopped cleanly at its end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_testkit as testkit;

use crate::probe::{self, metric_sum};

/// A stage (enricher or sink) in its own process. Unlike the test kit's child guard, its
/// failures are errors of the run (with the stage's log), and [`StageProcess::stop`] checks its
/// exit status: the sink must flush and commit on SIGTERM.
pub struct StageProcess {
    name: &'static str,
    child: Child,
    pub metrics_port: u16,
    log: PathBuf,
}

impl StageProcess {
    fn spawn(name: &'static str, env: Vec<(String, String)>, dir: &Path) -> anyhow::Result<Self> {
        let metrics_port = testkit::free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let prefix = format!("FLOWLENS_{}", name.to_uppercase());
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["stage", name])
            .env(
                format!("{prefix}__TELEMETRY__METRICS_LISTEN"),
                format!("127.0.0.1:{metrics_port}"),
            )
            .env(format!("{prefix}__TELEMETRY__LOG_LEVEL"), "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(format!("{prefix}__{k}"), v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Self {
            name,
            child,
            metrics_port,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            anyhow::bail!("{} exited ({status}):\n{text}", self.name);
        }
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "{} stopped with {status}: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                anyhow::bail!("{} did not stop within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the stages of a run are given besides the topics of `kafka`.
pub struct StageSettings<'a> {
    pub brokers: &'a str,
    pub partitions: i32,
    pub enricher_group: &'a str,
    pub sink_group: &'a str,
    /// The sink's CLICKHOUSE__* (and, where needed, SINK__*) variables.
    pub sink_clickhouse: Vec<(String, String)>,
    /// The sink's `batch.max_age_ms`; `None` keeps its default.
    pub sink_batch_age_ms: Option<u64>,
}

/// The enricher and the sink of a run.
pub struct Stages {
    pub enricher: StageProcess,
    pub sink: StageProcess,
}

impl Stages {
    /// Starts both stages on the run's topics; their logs go to `dir`.
    pub fn spawn(
        kafka: &KafkaConfig,
        settings: StageSettings<'_>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let common = |group: &str| {
            vec![
                ("KAFKA__BROKERS".to_string(), settings.brokers.to_string()),
                ("KAFKA__PARTITIONS".into(), settings.partitions.to_string()),
                (
                    "KAFKA__TOPICS__RAW_FLOWS".into(),
                    kafka.topics.raw_flows.clone(),
                ),
                (
                    "KAFKA__TOPICS__INTERFACES".into(),
                    kafka.topics.interfaces.clone(),
                ),
                (
                    "KAFKA__TOPICS__ENRICHED_FLOWS".into(),
                    kafka.topics.enriched_flows.clone(),
                ),
                (
                    "KAFKA__TOPICS__DEAD_LETTER".into(),
                    kafka.topics.dead_letter.clone(),
                ),
                ("KAFKA__CLIENT_ID".into(), group.to_string()),
            ]
        };
        let mut env = common(settings.enricher_group);
        env.push((
            "ENRICHER__GROUP_ID".into(),
            settings.enricher_group.to_string(),
        ));
        let enricher = StageProcess::spawn("enricher", env, dir)?;
        let mut env = common(settings.sink_group);
        env.push(("SINK__GROUP_ID".into(), settings.sink_group.to_string()));
        env.extend(settings.sink_clickhouse);
        if let Some(age) = settings.sink_batch_age_ms {
            env.push(("BATCH__MAX_AGE_MS".into(), age.to_string()));
        }
        let sink = StageProcess::spawn("sink", env, dir)?;
        Ok(Self { enricher, sink })
    }

    /// An error with the stage's log when either has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.enricher.check_running()?;
        self.sink.check_running()
    }

    /// Records both stages sent to the dead-letter topic.
    pub fn dead_lettered(&self) -> f64 {
        [self.enricher.metrics_port, self.sink.metrics_port]
            .into_iter()
            .map(|port| metric_sum(&probe::scrape(port), "flowlens_dead_letter_records_total"))
            .sum()
    }

    /// SIGTERM to both (the sink flushes and commits); an error if either fails to stop
    /// cleanly.
    pub fn stop(self) -> anyhow::Result<()> {
        self.enricher.stop()?;
        self.sink.stop()
    }
}
