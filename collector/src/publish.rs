//! Publishing to Kafka: flow records (Avro single-object through the hand-written encoder,
//! idempotent lz4 producer, at most `max_in_flight` records queued at a time, every delivery
//! report counted per scan) and interface records on the compacted topic (key `host/ifindex`,
//! tombstone when an interface disappears).
//!
//! [`Publisher::from_config`] owns a producer whose delivery reports are counted, on its own
//! polling thread, into one shared tally per call: nothing is allocated per record beyond
//! librdkafka's own copy, and the thread polls in 1 s slices (rdkafka's `ThreadedProducer`, under
//! `FutureProducer` too, costs ~0.9 % of a core while idle: see [`PolledProducer`]).
//! [`Publisher::new`] takes a `FutureProducer` (one delivery future per record, about twice the
//! CPU per record: bench/results/collector-export.md); both give the same guarantees.

use std::borrow::Borrow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flowlens_schemas::{encode, Interface, RawFlow};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryFuture, DeliveryResult, FutureProducer, FutureRecord,
    Producer, ProducerContext,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::Notify;

use flowlens_runtime::PolledProducer;

use crate::encode::encode_raw_flow;

/// Default for [`Publisher::max_in_flight`]: flow records queued in librdkafka and not yet
/// acknowledged, per `publish_flows` call. Five of the producer's 10,000-message batches: the
/// broker is kept busy while memory stays at a few MB whatever the number of flows.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 50_000;

/// Sends the collector's records to Kafka (see the module documentation).
pub struct Publisher {
    producer: Sender,
    flows_topic: String,
    interfaces_topic: String,
    max_in_flight: usize,
}

enum Sender {
    /// Built by [`Publisher::from_config`]: delivery reports counted into a [`Tally`].
    Counting(PolledProducer<Reports>),
    /// Given to [`Publisher::new`]: one delivery future per record.
    Futures(FutureProducer),
}

/// Outcome of publishing one drain's records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: u64,
    pub failed: u64,
}

/// Delivery reports of the records one call queued, counted by the producer's polling thread.
#[derive(Default)]
struct Tally {
    /// Reports received, delivered or failed.
    reports: AtomicU64,
    failed: AtomicU64,
    first_error: OnceLock<KafkaError>,
    reported: Notify,
}

impl Tally {
    /// Waits until at most `pending` of the `sent` records still wait for their report.
    async fn wait(&self, sent: u64, pending: u64) {
        loop {
            let reported = self.reported.notified();
            if sent - self.reports.load(Ordering::Acquire) <= pending {
                return;
            }
            reported.await;
        }
    }

    fn delivery(&self) -> Delivery {
        let reports = self.reports.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Relaxed);
        Delivery {
            delivered: reports - failed,
            failed,
        }
    }
}

/// Producer context counting each record's delivery report into the tally it was sent with.
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<Tally>;

    fn delivery(&self, result: &DeliveryResult<'_>, tally: Arc<Tally>) {
        if let Err((e, _)) = result {
            let _ = tally.first_error.set(e.clone());
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
        tally.reports.fetch_add(1, Ordering::Release);
        tally.reported.notify_one();
    }
}

impl Publisher {
    /// Creates the producer from `config` (e.g. `KafkaConfig::producer_config()`); the
    /// cheaper of the two constructors.
    pub fn from_config(
        config: &ClientConfig,
        flows_topic: &str,
        interfaces_topic: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self::with_sender(
            Sender::Counting(PolledProducer::new(config, Reports)?),
            flows_topic,
            interfaces_topic,
        ))
    }

    /// Publishes through an existing `FutureProducer` (one delivery future per record).
    pub fn new(producer: FutureProducer, flows_topic: &str, interfaces_topic: &str) -> Self {
        Self::with_sender(Sender::Futures(producer), flows_topic, interfaces_topic)
    }

    fn with_sender(producer: Sender, flows_topic: &str, interfaces_topic: &str) -> Self {
        Self {
            producer,
            flows_topic: flows_topic.into(),
            interfaces_topic: interfaces_topic.into(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Sets how many flow records may be queued and unacknowledged at once (at least 1;
    /// default [`DEFAULT_MAX_IN_FLIGHT`]).
    pub fn with_max_in_flight(mut self, records: usize) -> Self {
        self.max_in_flight = records.max(1);
        self
    }

    /// How many flow records may be queued and unacknowledged at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Encodes and sends every flow, then waits until the broker acknowledged (or refused) each.
    ///
    /// At most [`Publisher::max_in_flight`] records are queued at a time: beyond that, the next
    /// record waits for earlier ones' delivery reports, so memory does not grow with the number
    /// of flows. Failed deliveries are counted in [`Delivery::failed`] (and the first one
    /// logged); an error is returned only when a record cannot be encoded or queued at all,
    /// after the reports of what was already queued came in.
    pub async fn publish_flows(&self, flows: &[RawFlow]) -> anyhow::Result<Delivery> {
        self.publish_flow_iter(flows).await
    }

    /// [`Publisher::publish_flows`] for records made on the fly (e.g. converted from the kernel
    /// table one at a time), so a scan never holds every `RawFlow` at once.
    pub async fn publish_flow_iter<F: Borrow<RawFlow>>(
        &self,
        flows: impl IntoIterator<Item = F>,
    ) -> anyhow::Result<Delivery> {
        let (result, outcome, first_error) = match &self.producer {
            Sender::Counting(producer) => self.flows_counted(producer, flows).await,
            Sender::Futures(producer) => self.flows_with_futures(producer, flows).await,
        };
        metrics::counter!("flowlens_collector_records_produced_total").increment(outcome.delivered);
        metrics::counter!("flowlens_collector_delivery_errors_total").increment(outcome.failed);
        if outcome.failed > 0 {
            tracing::error!(
                topic = %self.flows_topic,
                failed = outcome.failed,
                delivered = outcome.delivered,
                first_error = first_error.as_deref().unwrap_or("delivery report lost"),
                "flow records not delivered"
            );
        }
        result.map(|()| outcome)
    }

    async fn flows_counted<F: Borrow<RawFlow>>(
        &self,
        producer: &BaseProducer<Reports>,
        flows: impl IntoIterator<Item = F>,
    ) -> (anyhow::Result<()>, Delivery, Option<String>) {
        let tally = Arc::new(Tally::default());
        let window = self.max_in_flight as u64;
        let mut sent = 0u64;
        let mut buf = Vec::with_capacity(256);
        let result = async {
            for flow in flows {
                let in_flight = sent - tally.reports.load(Ordering::Acquire);
                if sent.is_multiple_of(1024) {
                    // Queue depth: records handed to librdkafka and not yet acknowledged.
                    metrics::gauge!("flowlens_collector_producer_in_flight").set(in_flight as f64);
                }
                if in_flight >= window {
                    tally.wait(sent, window - 1).await;
                }
                buf.clear();
                encode_raw_flow(flow.borrow(), &mut buf)?;
                let record = BaseRecord::with_opaque_to(&self.flows_topic, tally.clone());
                send_counted(producer, record.payload(&buf)).await?;
                sent += 1;
            }
            anyhow::Ok(())
        }
        .await;
        // Also after an error: what was queued is accounted before returning.
        tally.wait(sent, 0).await;
        metrics::gauge!("flowlens_collector_producer_in_flight").set(0.0);
        let first_error = tally.first_error.get().map(ToString::to_string);
        (result, tally.delivery(), first_error)
    }

    async fn flows_with_futures<F: Borrow<RawFlow>>(
        &self,
        producer: &FutureProducer,
        flows: impl IntoIterator<Item = F>,
    ) -> (anyhow::Result<()>, Delivery, Option<String>) {
        let mut outcome = Delivery::default();
        let mut first_error = None;
        let mut account = |report: <DeliveryFuture as std::future::Future>::Output| match report {
            Ok(Ok(_)) => outcome.delivered += 1,
            Ok(Err((e, _))) => {
                outcome.failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            // The producer dropped the report (it is shutting down): not known to be delivered.
            Err(_) => outcome.failed += 1,
        };
        let mut in_flight = FuturesUnordered::new();
        let mut buf = Vec::with_capacity(256);
        let result = async {
            for flow in flows {
                while in_flight.len() >= self.max_in_flight {
                    if let Some(report) = in_flight.next().await {
                        account(report);
                    }
                }
                buf.clear();
                encode_raw_flow(flow.borrow(), &mut buf)?;
                in_flight.push(send_future(producer, &self.flows_topic, None, Some(&buf)).await?);
            }
            anyhow::Ok(())
        }
        .await;
        while let Some(report) = in_flight.next().await {
            account(report);
        }
        (result, outcome, first_error)
    }

    /// Publishes (and waits for) an interface record.
    pub async fn publish_interface(&self, iface: &Interface) -> anyhow::Result<()> {
        let key = format!("{}/{}", iface.host, iface.ifindex);
        let mut buf = Vec::with_capacity(256);
        encode(iface, &mut buf)?;
        self.send_one(&key, Some(&buf)).await.map_err(|e| {
            anyhow::anyhow!("interface record {key} to {}: {e}", self.interfaces_topic)
        })
    }

    /// Publishes a tombstone for an interface that disappeared.
    pub async fn remove_interface(&self, host: &str, ifindex: u32) -> anyhow::Result<()> {
        let key = format!("{host}/{ifindex}");
        self.send_one(&key, None)
            .await
            .map_err(|e| anyhow::anyhow!("tombstone {key} to {}: {e}", self.interfaces_topic))
    }

    /// Sends one keyed message to the interfaces topic and waits for its delivery report.
    async fn send_one(&self, key: &str, payload: Option<&[u8]>) -> anyhow::Result<()> {
        let topic = &self.interfaces_topic;
        match &self.producer {
            Sender::Counting(producer) => {
                let tally = Arc::new(Tally::default());
                let mut record = BaseRecord::with_opaque_to(topic, tally.clone()).key(key);
                if let Some(p) = payload {
                    record = record.payload(p);
                }
                send_counted(producer, record).await?;
                tally.wait(1, 0).await;
                match tally.first_error.get() {
                    Some(e) => Err(anyhow::anyhow!("{e}")),
                    None => Ok(()),
                }
            }
            Sender::Futures(producer) => {
                let report = send_future(producer, topic, Some(key), payload).await?;
                report.await?.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
                Ok(())
            }
        }
    }

    /// Waits until everything queued has been delivered (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        match &self.producer {
            Sender::Counting(p) => p.flush(timeout)?,
            Sender::Futures(p) => p.flush(timeout)?,
        }
        Ok(())
    }
}

/// Queues one message, waiting for room when librdkafka's queue is full.
async fn send_counted(
    producer: &BaseProducer<Reports>,
    mut record: BaseRecord<'_, str, [u8], Arc<Tally>>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                metrics::counter!("flowlens_collector_queue_full_total").increment(1);
                tokio::time::sleep(Duration::from_millis(5)).await;
                record = back;
            }
            Err((e, back)) => {
                return Err(anyhow::anyhow!("producing to {}: {e}", back.topic));
            }
        }
    }
}

/// Queues one message on a `FutureProducer`, waiting for room when librdkafka's queue is full.
async fn send_future(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: Option<&[u8]>,
) -> anyhow::Result<DeliveryFuture> {
    loop {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        match producer.send_result(record) {
            Ok(fut) => return Ok(fut),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                metrics::counter!("flowlens_collector_queue_full_total").increment(1);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(anyhow::anyhow!("producing to {topic}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use flowlens_schemas::{decode, ip_to_v6};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Message, Offset, TopicPartitionList};

    use super::*;

    const TOPIC: &str = "flows";
    const INTERFACES: &str = "interfaces";

    fn mock() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic(TOPIC, 2, 1).unwrap();
        mock.create_topic(INTERFACES, 1, 1).unwrap();
        mock
    }

    /// Both kinds of publisher: (name, publisher).
    fn publishers(
        brokers: &str,
        extra: &[(&str, &str)],
        max_in_flight: usize,
    ) -> [(&'static str, Publisher); 2] {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        [
            (
                "from_config",
                Publisher::from_config(&c, TOPIC, INTERFACES).unwrap(),
            ),
            (
                "new",
                Publisher::new(c.create().unwrap(), TOPIC, INTERFACES),
            ),
        ]
        .map(|(name, p)| (name, p.with_max_in_flight(max_in_flight)))
    }

    fn in_flight(publisher: &Publisher) -> i32 {
        match &publisher.producer {
            Sender::Counting(p) => p.in_flight_count(),
            Sender::Futures(p) => p.in_flight_count(),
        }
    }

    fn flows(n: u32) -> Vec<RawFlow> {
        (0..n)
            .map(|i| RawFlow {
                host: "node-1".into(),
                ifindex: 2,
                src_addr: ip_to_v6(Ipv4Addr::from(0x0a00_0000 + i).into()),
                dst_addr: ip_to_v6(Ipv4Addr::new(10, 9, 9, 9).into()),
                src_port: (i % 60_000) as i32,
                dst_port: 443,
                proto: 6,
                packets: i64::from(i) + 1,
                bytes: 100 * (i64::from(i) + 1),
                ..RawFlow::default()
            })
            .collect()
    }

    /// The messages of `topic` from `start` on (per partition), as (key, payload).
    fn read_back(
        brokers: &str,
        topic: &str,
        start: &[i64],
        n: usize,
    ) -> Vec<(Option<String>, Option<Vec<u8>>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "read-back")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in start.iter().enumerate() {
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(*offset))
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let started = Instant::now();
        while out.len() < n && started.elapsed() < Duration::from_secs(30) {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                out.push((
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    m.payload().map(<[u8]>::to_vec),
                ));
            }
        }
        out
    }

    fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    }

    /// The flows published since `start`, decoded, sorted by packets.
    fn flows_back(brokers: &str, start: &[i64], n: usize) -> Vec<RawFlow> {
        let mut out: Vec<RawFlow> = read_back(brokers, TOPIC, start, n)
            .into_iter()
            .map(|(_, payload)| decode(&payload.unwrap()).unwrap())
            .collect();
        out.sort_by_key(|f| f.packets);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_every_flow_in_a_bounded_window() {
        let mock = mock();
        let brokers = mock.bootstrap_servers();
        let sent = flows(3_000);
        for (name, publisher) in publishers(&brokers, &[], 16) {
            let start = high_watermarks(&brokers, TOPIC, 2);
            // The broker is down at first: records pile up only to the window's size.
            mock.broker_down(1).unwrap();
            let publish = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                publisher.publish_flows(&sent).await
            };
            let watch = async {
                // Until records are queued, then a while longer; then the broker comes back.
                let started = Instant::now();
                while in_flight(&publisher) == 0 && started.elapsed() < Duration::from_secs(10) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let mut peak = 0;
                for _ in 0..30 {
                    peak = peak.max(in_flight(&publisher));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                mock.broker_up(1).unwrap();
                peak
            };
            let (delivery, peak) = tokio::join!(publish, watch);
            // librdkafka's count (rd_kafka_outq_len) also holds its own protocol requests
            // waiting for the down broker (metadata, the idempotent producer's PID): a few on
            // top of the 16 records, never the 3,000 an unbounded publish would queue.
            assert!(
                (1..=16 + 4).contains(&peak),
                "{name}: {peak} records and requests in flight, window 16"
            );
            assert_eq!(
                delivery.unwrap(),
                Delivery {
                    delivered: 3_000,
                    failed: 0
                },
                "{name}"
            );
            assert_eq!(flows_back(&brokers, &start, sent.len()), sent, "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_for_room_when_the_queue_is_full() {
        let mock = mock();
        let brokers = mock.bootstrap_servers();
        let sent = flows(500);
        // librdkafka holds 10 messages at most; the window would allow 1,000.
        let extra = [("queue.buffering.max.messages", "10")];
        for (name, publisher) in publishers(&brokers, &extra, 1_000) {
            let start = high_watermarks(&brokers, TOPIC, 2);
            let delivery = publisher.publish_flows(&sent).await.unwrap();
            assert_eq!((delivery.delivered, delivery.failed), (500, 0), "{name}");
            assert_eq!(flows_back(&brokers, &start, sent.len()), sent, "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_refused_records_as_failed() {
        let mock = mock();
        let brokers = mock.bootstrap_servers();
        for (name, publisher) in publishers(&brokers, &[("retries", "0")], 8) {
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1_000],
            );
            let delivery = publisher.publish_flows(&flows(50)).await.unwrap();
            assert_eq!((delivery.delivered, delivery.failed), (0, 50), "{name}");
            mock.clear_request_errors(RDKafkaApiKey::Produce);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_that_refuses_records_is_an_error() {
        for variant in 0..2 {
            let mock = mock();
            // librdkafka then refuses to queue more records for the topic.
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1_000],
            );
            let [counting, futures] = publishers(&mock.bootstrap_servers(), &[], 8);
            let (name, publisher) = if variant == 0 { counting } else { futures };
            let err = publisher.publish_flows(&flows(50)).await.unwrap_err();
            assert!(
                format!("{err:#}").contains("authorization"),
                "{name}: {err:#}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_records_made_on_the_fly() {
        let mock = mock();
        let brokers = mock.bootstrap_servers();
        for (name, publisher) in publishers(&brokers, &[], 4) {
            let start = high_watermarks(&brokers, TOPIC, 2);
            let delivery = publisher.publish_flow_iter(flows(100)).await.unwrap();
            assert_eq!((delivery.delivered, delivery.failed), (100, 0), "{name}");
            assert_eq!(flows_back(&brokers, &start, 100), flows(100), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interface_records_and_tombstones_are_keyed() {
        let mock = mock();
        let brokers = mock.bootstrap_servers();
        for (name, publisher) in publishers(&brokers, &[], 4) {
            let start = high_watermarks(&brokers, INTERFACES, 1);
            let iface = Interface {
                host: "node-1".into(),
                ifindex: 7,
                name: "veth7".into(),
                mac: "02:00:00:00:00:07".into(),
                mtu: 1500,
                kind: "veth".into(),
                netns: String::new(),
                netns_inode: 4_026_531_840,
                oper_state: "up".into(),
                time_observed_ns: 1,
            };
            publisher.publish_interface(&iface).await.unwrap();
            publisher.remove_interface("node-1", 7).await.unwrap();
            publisher.flush(Duration::from_secs(5)).unwrap();
            let back = read_back(&brokers, INTERFACES, &start, 2);
            assert_eq!(back.len(), 2, "{name}");
            assert_eq!(back[0].0.as_deref(), Some("node-1/7"), "{name}");
            assert_eq!(
                decode::<Interface>(back[0].1.as_ref().unwrap()).unwrap(),
                iface
            );
            assert_eq!(back[1], (Some("node-1/7".into()), None), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_interface_record_is_an_error() {
        let mock = mock();
        let brokers = mock.bootstrap_servers();
        for (name, publisher) in publishers(&brokers, &[("retries", "0")], 4) {
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10],
            );
            let err = publisher.remove_interface("node-1", 7).await.unwrap_err();
            assert!(
                format!("{err:#}").contains("tombstone node-1/7"),
                "{name}: {err:#}"
            );
            mock.clear_request_errors(RDKafkaApiKey::Produce);
        }
    }
}
