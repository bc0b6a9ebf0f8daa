//! The load generator's producer: the collector's producer settings (idempotent, lz4, acks=all),
//! optional rate limiting, and delivery accounting through the producer context.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_schemas::encode;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::gen::Generator;

/// Delivery counters shared between the producer's context and the harness.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub acked: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone)]
pub struct Counting(pub Arc<Deliveries>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

pub type CountingProducer = ThreadedProducer<Counting>;

pub fn producer(
    kafka: &KafkaConfig,
    deliveries: Arc<Deliveries>,
) -> anyhow::Result<CountingProducer> {
    kafka
        .producer_config()
        .create_with_context(Counting(deliveries))
        .context("creating the load generator's producer")
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// What one `produce` call did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Produced {
    pub sent: u64,
    pub seconds: f64,
    pub queue_full_waits: u64,
}

/// Sends records `first_seq .. first_seq + count` to `topic`, at `rate` records/s (0 = as fast
/// as the producer takes them), then flushes. `progress` is advanced as records are queued.
pub fn produce(
    producer: &CountingProducer,
    generator: &mut Generator,
    topic: &str,
    first_seq: u64,
    count: u64,
    rate: f64,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Produced> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(256);
    let mut sent = 0u64;
    let mut queue_full_waits = 0u64;
    while sent < count {
        let allowed = if rate > 0.0 {
            ((start.elapsed().as_secs_f64() * rate) as u64).min(count)
        } else {
            count
        };
        if allowed <= sent {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        let end = allowed.min(sent + 4096);
        while sent < end {
            buf.clear();
            let record = generator.record(first_seq + sent, now_ns());
            encode(&record, &mut buf)?;
            loop {
                match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(&buf)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        queue_full_waits += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => anyhow::bail!("producing to {topic}: {e}"),
                }
            }
            sent += 1;
        }
        progress.set_position(sent);
    }
    producer
        .flush(Duration::from_secs(120))
        .with_context(|| format!("flushing {topic}"))?;
    Ok(Produced {
        sent,
        seconds: start.elapsed().as_secs_f64(),
        queue_full_waits,
    })
}
