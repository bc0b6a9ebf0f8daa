//! The Kafka side: tansu brokers, and reading, producing, offsets and lag of topics.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{free_port, http_get, in_netns, unique, wait_port, ChildGuard, Relay, TANSU};

/// The partition count of `topic`, from the brokers' metadata.
pub fn topic_partitions(brokers: &str, topic: &str) -> usize {
    partition_count(&reader(brokers, &unique("metadata")), topic) as usize
}

/// tansu (Kafka protocol, memory storage) on a free port.
pub struct Tansu {
    pub port: u16,
    _dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Tansu {
    pub fn start() -> Self {
        Self::spawn(
            None,
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            None,
            &[],
        )
    }

    /// tansu inside network namespace `netns`, listening on `ip` (for clients in other
    /// namespaces reaching it over a veth).
    pub fn start_in_netns(netns: &str, ip: std::net::IpAddr) -> Self {
        Self::spawn(Some(netns), ip, None, &[])
    }

    /// tansu on 127.0.0.1 advertising 127.0.0.1:`advertised` to its clients (a TLS relay in
    /// front of it), with `extra` broker arguments (e.g. `--authentication`).
    pub fn start_advertising(advertised: u16, extra: &[&str]) -> Self {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        Self::spawn(None, ip, Some(advertised), extra)
    }

    /// tansu behind a [`Relay`] it advertises: every request of its clients (bootstrap, then
    /// the advertised address) passes the relay, which keeps them. Clients use
    /// [`Relay::address`] as their broker.
    pub fn start_behind_relay() -> (Self, Relay) {
        let port = free_port();
        let tansu = Self::start_advertising(port, &[]);
        let relay = Relay::start_on(port, tansu.port);
        (tansu, relay)
    }

    fn spawn(
        netns: Option<&str>,
        ip: std::net::IpAddr,
        advertised: Option<u16>,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://{ip}:{port}");
        let advertised = advertised.map_or_else(|| url.clone(), |p| format!("tcp://{ip}:{p}"));
        let log = dir.path().join("tansu.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TANSU]);
                c
            }
            None => Command::new(TANSU),
        };
        broker_args(&mut cmd, &url, &advertised, extra);
        let mut guard = ChildGuard::spawn("tansu", &mut cmd, &log);
        let listening = || match netns {
            Some(ns) => in_netns(ns, || TcpStream::connect((ip, port)).is_ok()),
            None => TcpStream::connect((ip, port)).is_ok(),
        };
        let start = Instant::now();
        while !listening() {
            guard.assert_running(&log);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu not listening on {ip}:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            _dir: dir,
            _guard: guard,
        }
    }

    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory of the broker's logs (`tansu.log`, after a restart `tansu.again.log`).
    pub fn log_dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }

    /// Stops this broker and starts a new one on the same port: memory storage, so every topic,
    /// record and committed offset is gone (what a broker restarted with fresh topics, or a new
    /// cluster under the same address, looks like to clients).
    pub fn restart_empty(&mut self) {
        // Killed if it does not stop by itself: nothing of it is kept either way.
        self._guard
            .stop_with(libc::SIGTERM, Duration::from_secs(10));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(20), "port still open");
            std::thread::sleep(Duration::from_millis(50));
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = self._dir.path().join("tansu.again.log");
        let mut cmd = Command::new(TANSU);
        broker_args(&mut cmd, &url, &url, &[]);
        self._guard = ChildGuard::spawn("tansu", &mut cmd, &log);
        wait_port(self.port, &mut self._guard, &log, Duration::from_secs(20));
    }
}

/// tansu's broker arguments: listening on `url`, advertising `advertised`, memory storage, then
/// `extra`.
fn broker_args(cmd: &mut Command, url: &str, advertised: &str, extra: &[&str]) {
    cmd.args([
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        advertised,
        "--storage-engine",
        "memory://tansu/",
    ]);
    cmd.args(extra);
}

/// Deletes `topics` through the admin API (waits for the broker's answer).
pub async fn delete_topics(brokers: &str, topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.delete_topics(topics, &opts).await.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("deleting topic {t}: {e}"));
    }
}

/// Reads `topic` (all partitions, from the beginning, no consumer group) until at least `min`
/// messages have arrived and every partition is read up to its high watermark, or `timeout`
/// passes; returns (key, payload) pairs in partition order.
pub fn read_topic(brokers: &str, topic: &str, min: usize, timeout: Duration) -> Vec<OwnedMessage> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer = reader(brokers, &unique("reader"));
    let start = Instant::now();
    let partitions: Vec<i32> = loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            })
            .unwrap_or_default();
        if !found.is_empty() {
            break found;
        }
        assert!(start.elapsed() < timeout, "topic {topic} has no partitions");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // tansu can under-report high watermarks, so "caught up" also needs a quiet period.
    let quiet = Duration::from_millis(1500);
    let mut next: std::collections::HashMap<i32, i64> =
        partitions.iter().map(|p| (*p, 0)).collect();
    let mut out = Vec::new();
    let mut last_message = Instant::now();
    while start.elapsed() < timeout {
        if out.len() >= min && last_message.elapsed() >= quiet {
            let caught_up = partitions.iter().all(|p| {
                let high = consumer
                    .fetch_watermarks(topic, *p, Duration::from_secs(5))
                    .map(|(_, h)| h)
                    .unwrap_or(i64::MAX);
                next[p] >= high
            });
            if caught_up {
                break;
            }
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last_message = Instant::now();
            next.insert(m.partition(), m.offset() + 1);
            out.push(m.detach());
        }
    }
    out
}

fn reader(brokers: &str, group: &str) -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn partition_count(consumer: &BaseConsumer, topic: &str) -> i32 {
    use rdkafka::consumer::Consumer;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len() as i32
}

/// A plain producer for test input.
pub fn producer(brokers: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces one record to `partition` and waits for the acknowledgement; returns its offset.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: Option<&[u8]>,
) -> i64 {
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key(key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"))
        .offset
}

/// High watermark of each partition of `topic`. Exact on librdkafka's mock cluster; tansu may
/// under-report it (it has been seen counting batches), so tests on tansu take end offsets from
/// delivery reports instead.
pub fn end_offsets(brokers: &str, topic: &str) -> Vec<i64> {
    use rdkafka::consumer::Consumer;
    let consumer = reader(brokers, &unique("watermarks"));
    (0..partition_count(&consumer, topic))
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// The group's committed offset of each partition of `topic` (`None`: nothing committed).
pub fn committed(brokers: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer = reader(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partition_count(&consumer, topic) {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// Per partition, the lag of `group` on `topic` as the broker tells it: high watermark minus
/// the committed offset (nothing committed: from offset 0, these tests' topics keep every
/// record). Read with the test's own clients, not the stages' lag code. On tansu the high
/// watermark is exact only for records produced one per batch (see [`end_offsets`]).
pub fn broker_lag(brokers: &str, group: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let ends = end_offsets(brokers, topic);
    let committed = committed(brokers, group, topic);
    ends.iter()
        .zip(committed)
        .enumerate()
        .map(|(p, (end, c))| (p as i32, end - c.unwrap_or(0)))
        .collect()
}

/// Per partition, `flowlens_consumer_lag_records{stage, topic}` as served on `/metrics` at
/// `port` (empty while nothing listens there or no value is exported yet).
pub fn scraped_lag(port: u16, stage: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let Some((200, text)) = http_get(port, "/metrics") else {
        return Default::default();
    };
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("flowlens_consumer_lag_records{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        if label("stage").as_deref() != Some(stage) || label("topic").as_deref() != Some(topic) {
            continue;
        }
        if let (Some(p), Ok(v)) = (
            label("partition").and_then(|p| p.parse().ok()),
            value.trim().parse::<f64>(),
        ) {
            out.insert(p, v as i64);
        }
    }
    out
}

/// Polls the lag a stage serves at `port` until it is `want` for every partition and the
/// broker's own view ([`broker_lag`] of `group`) is the same, at most `timeout`; panics with
/// both last readings.
pub fn wait_lag(
    brokers: &str,
    group: &str,
    topic: &str,
    (port, stage): (u16, &str),
    want: &std::collections::BTreeMap<i32, i64>,
    timeout: Duration,
) {
    let start = Instant::now();
    let (mut scraped, mut broker) = Default::default();
    while start.elapsed() < timeout {
        scraped = scraped_lag(port, stage, topic);
        if &scraped == want {
            broker = broker_lag(brokers, group, topic);
            if &broker == want {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "{stage} lag on {topic} never became {want:?} in {timeout:?}: /metrics says {scraped:?}, \
         the broker {broker:?}"
    );
}

/// Value of header `name` of `message`, as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// One record for [`send_tracking_ends`]: partition, key, payload.
pub type Outgoing = (i32, String, Vec<u8>);

/// Sends `records` concurrently (queued in order, so each partition keeps their order) and
/// raises `ends` to the end offset (last delivered offset + 1) of every partition written,
/// taken from the delivery reports: tansu's watermarks are not record counts.
pub async fn send_tracking_ends(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<Outgoing>,
    ends: &mut std::collections::BTreeMap<i32, i64>,
) {
    let sends = records.iter().map(|(partition, key, payload)| {
        producer.send(
            FutureRecord::<str, [u8]>::to(topic)
                .key(key)
                .payload(payload)
                .partition(*partition),
            Duration::from_secs(30),
        )
    });
    for delivered in futures::future::join_all(sends).await {
        let d = delivered.unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        let end = ends.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    }
}
