//! The services of a run: the broker (a local tansu, or an existing cluster) and ClickHouse
//! (the local chdb front, clickhouse-server 18.16 with its settings filter, or an existing
//! server), started through the test kit on free ports and stopped when the run ends; and which
//! of their processes the run measures.

use std::path::Path;

use anyhow::Context;
use flowlens_testkit::{self as testkit, Chdb, ClickHouse18, Tansu};

use crate::probe::{self, ClickHouse};
use crate::progress::Progress;
use crate::run::Options;
use crate::server18::{self, FilterProcess};

/// Where Debian's package puts clickhouse-server 18.16.
const SERVER18: &str = "/usr/sbin/clickhouse-server";

/// Which ClickHouse engine the sink writes to, started on this machine for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engine {
    /// The ClickHouse 26.9 engine (PyPI chdb-core) behind scripts/stack/chdb_http.py: the
    /// project's schema (sql/migrations, rollups fed by materialized views). With
    /// `--clickhouse-url`: that (modern) server instead.
    #[default]
    Chdb,
    /// Debian's genuine clickhouse-server 18.16 (native): the byte-compatible `flows` table of
    /// sql/clickhouse18/flows_minimal.sql, no rollups (see `server18`).
    Server18,
}

impl Engine {
    /// SQL for "the `time_flow_start` value of id `ns`" (DateTime64(9) on modern servers,
    /// Int64 nanoseconds in the 18.16 table).
    pub(crate) fn id(self, ns: i64) -> String {
        match self {
            Engine::Chdb => format!("fromUnixTimestamp64Nano(toInt64({ns}))"),
            Engine::Server18 => format!("toInt64({ns})"),
        }
    }

    /// SQL for `time_exported` in nanoseconds.
    pub(crate) fn exported_ns(self) -> &'static str {
        match self {
            Engine::Chdb => "toUnixTimestamp64Nano(time_exported)",
            Engine::Server18 => "time_exported",
        }
    }

    /// SQL for the latency of a row in ms: row written (server clock) − record exported (load
    /// generator, same clock). 18.16's `time_inserted` is `now()` in whole seconds (no now64
    /// there): its midpoint is taken, so each value is ± 500 ms.
    pub(crate) fn latency_ms(self) -> &'static str {
        match self {
            Engine::Chdb => {
                "(toUnixTimestamp64Milli(time_inserted) - intDiv(toUnixTimestamp64Nano(time_exported), 1000000))"
            }
            Engine::Server18 => "(time_inserted + 500 - intDiv(time_exported, 1000000))",
        }
    }
}

/// A ClickHouse server reached over HTTP.
#[derive(Debug, Clone)]
pub struct ClickHouseTarget {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

/// The run's broker and ClickHouse; the local ones are stopped on drop.
pub struct Services {
    // Stopped in this order: the filter before the server behind it, the broker last.
    filter: Option<FilterProcess>,
    ch18: Option<ClickHouse18>,
    chdb: Option<Chdb>,
    tansu: Option<Tansu>,
    /// Bootstrap servers of the broker.
    pub brokers: String,
    /// The ClickHouse the loss check and the latency queries read.
    pub target: ClickHouseTarget,
    /// The engine whose SQL types the queries use (an existing server is a modern one).
    pub engine: Engine,
    /// Caveats of these services, printed under the report's header.
    pub notes: Vec<String>,
}

impl Services {
    /// Whether what the local services of `opts` need is installed, and the options agree.
    pub fn check(opts: &Options) -> anyhow::Result<()> {
        anyhow::ensure!(
            opts.brokers.is_some() || Path::new(testkit::TANSU).exists(),
            "{} is missing: run scripts/setup.sh (or give --brokers)",
            testkit::TANSU
        );
        anyhow::ensure!(
            opts.clickhouse.is_some()
                || opts.engine != Engine::Chdb
                || Path::new(testkit::VENV_PYTHON).exists(),
            "{} is missing: run scripts/setup.sh (or give --clickhouse-url)",
            testkit::VENV_PYTHON
        );
        anyhow::ensure!(
            opts.engine == Engine::Chdb || opts.clickhouse.is_none(),
            "--clickhouse server18 starts a local clickhouse-server 18.16; --clickhouse-url is for \
             an existing (modern) ClickHouse"
        );
        Ok(())
    }

    /// Starts the local services `opts` asks for (logs of the processes the run spawns go to
    /// `work`).
    pub fn start(opts: &Options, progress: &Progress, work: &Path) -> anyhow::Result<Self> {
        let tansu = opts.brokers.is_none().then(|| {
            progress.say("starting tansu (local Kafka-protocol broker)".into());
            Tansu::start()
        });
        let chdb = (opts.clickhouse.is_none() && opts.engine == Engine::Chdb).then(|| {
            progress.say("starting the chdb ClickHouse front".into());
            Chdb::start()
        });
        let ch18 = match opts.engine {
            Engine::Server18 => {
                progress.say(
                    "starting Debian's clickhouse-server 18.16 (scripts/stack/clickhouse18.sh)"
                        .into(),
                );
                anyhow::ensure!(
                    Path::new(SERVER18).exists(),
                    "{SERVER18} is missing: run scripts/setup.sh (Debian's clickhouse-server)"
                );
                Some(ClickHouse18::start())
            }
            Engine::Chdb => None,
        };
        let brokers = match (&opts.brokers, &tansu) {
            (Some(b), _) => b.clone(),
            (None, Some(t)) => t.broker(),
            (None, None) => unreachable!("tansu started when no brokers are given"),
        };
        let local = |url: String| ClickHouseTarget {
            url,
            database: "default".into(),
            user: String::new(),
            password: String::new(),
        };
        let target = match (&opts.clickhouse, &chdb, &ch18) {
            (Some(c), _, _) => c.clone(),
            (None, Some(c), _) => local(c.url()),
            (None, None, Some(s)) => local(s.url()),
            (None, None, None) => unreachable!("a local ClickHouse started when none is given"),
        };
        let mut me = Self {
            filter: None,
            ch18,
            chdb,
            tansu,
            brokers,
            target,
            engine: if opts.clickhouse.is_some() {
                Engine::Chdb
            } else {
                opts.engine
            },
            notes: Vec::new(),
        };
        // 18.16: the minimal table, migrations recorded, and the filter in front for the sink.
        if let Some(server) = &me.ch18 {
            server18::prepare(&me.clickhouse()?)?;
            me.notes = server18::notes();
            me.filter = Some(FilterProcess::spawn(
                &format!("127.0.0.1:{}", server.http_port),
                work,
            ));
        }
        Ok(me)
    }

    /// A client of the run's ClickHouse.
    pub fn clickhouse(&self) -> anyhow::Result<ClickHouse> {
        let t = &self.target;
        ClickHouse::new(&t.url, &t.database, &t.user, &t.password)
    }

    /// Whether the broker is a local tansu (an existing cluster gets its topics deleted at the
    /// end instead).
    pub fn local_broker(&self) -> bool {
        self.tansu.is_some()
    }

    /// The services as the report names them.
    pub fn description(&self) -> String {
        format!(
            "broker: {}; ClickHouse: {}",
            if self.tansu.is_some() {
                "tansu (memory storage) on this machine".to_string()
            } else {
                format!("Kafka at {}", self.brokers)
            },
            if self.chdb.is_some() {
                "the chdb 26.9 engine behind scripts/stack/chdb_http.py on this machine".to_string()
            } else if self.ch18.is_some() {
                "Debian's clickhouse-server 18.16 (native server) on this machine, table \
                 sql/clickhouse18/flows_minimal.sql (no rollups), the sink's INSERTs through the \
                 bench's settings filter"
                    .to_string()
            } else {
                format!("{} (database {})", self.target.url, self.target.database)
            }
        )
    }

    /// The report's name for the ClickHouse: `chdb`, `server18` or `existing server`.
    pub fn engine_name(&self) -> String {
        if self.chdb.is_some() {
            "chdb".into()
        } else if self.ch18.is_some() {
            "server18".into()
        } else {
            "existing server".into()
        }
    }

    /// The sink's ClickHouse settings: through the settings filter with 18.16, else straight
    /// to the target.
    pub fn sink_clickhouse_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        match &self.filter {
            Some(f) => {
                env.push(("CLICKHOUSE__URL".into(), f.url()));
                env.push(("CLICKHOUSE__VALIDATION".into(), "false".into()));
                env.push(("SINK__MIGRATE_ON_START".into(), "false".into()));
            }
            None => env.push(("CLICKHOUSE__URL".into(), self.target.url.clone())),
        }
        env.push(("CLICKHOUSE__DATABASE".into(), self.target.database.clone()));
        if !self.target.user.is_empty() {
            env.push(("CLICKHOUSE__USER".into(), self.target.user.clone()));
            env.push(("CLICKHOUSE__PASSWORD".into(), self.target.password.clone()));
        }
        env
    }

    /// The broker's processes, named for the report (none for an existing cluster).
    pub fn broker_processes(&self) -> Vec<(String, u32)> {
        probe::child_pids("tansu")
            .into_iter()
            .map(|p| ("broker (tansu)".to_string(), p))
            .collect()
    }

    /// ClickHouse's processes and the settings filter's, named for the report (none for an
    /// existing server).
    pub fn clickhouse_processes(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let mut pids = Vec::new();
        if self.chdb.is_some() {
            pids.extend(
                probe::child_pids("python")
                    .into_iter()
                    .map(|p| ("ClickHouse (chdb front)".to_string(), p)),
            );
        }
        if let Some(server) = &self.ch18 {
            let pid = server
                .pid()
                .context("clickhouse-server 18.16 wrote no pid file")?;
            pids.push(("ClickHouse (server 18.16)".to_string(), pid));
        }
        if let Some(f) = &self.filter {
            pids.push(("settings filter (bench, 18.16 only)".to_string(), f.pid()));
        }
        Ok(pids)
    }
}
