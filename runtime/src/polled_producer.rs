//! A Kafka producer whose events (delivery reports, errors, logs) are served by a thread of
//! ours polling in long slices, shared by the collector's publisher and the enricher.
//!
//! rdkafka's `ThreadedProducer` polls in 100 ms slices, and each `poll` ends busy-waiting its
//! last fraction of a millisecond (rdkafka 0.39 truncates the remaining time to whole
//! milliseconds for librdkafka and loops until the deadline): 0.9 % of a core with nothing to
//! send, measured. Polling in [`POLL_SLICE`]s makes that ten times less.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::producer::{BaseProducer, ProducerContext};

/// How long one `poll` of the thread lasts (events are served as they come).
pub const POLL_SLICE: Duration = Duration::from_secs(1);

/// A [`BaseProducer`] with context `C` and its polling thread. The thread stops within one
/// slice after this is dropped, and drops the producer last (librdkafka then purges what is
/// still queued: wait for the delivery reports, or `flush`, first).
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    pub fn new(config: &ClientConfig, context: C) -> anyhow::Result<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_SLICE);
                }
            })?;
        Ok(Self { producer, stop })
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use super::*;

    #[test]
    fn the_polling_thread_stops_after_the_producer_is_dropped() {
        let mock = MockCluster::new(1).unwrap();
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", mock.bootstrap_servers());
        let polled = PolledProducer::new(&c, DefaultProducerContext).unwrap();
        let producer = Arc::downgrade(&polled.producer);
        drop(polled);
        let started = Instant::now();
        while producer.upgrade().is_some() {
            assert!(
                started.elapsed() < POLL_SLICE * 5,
                "the polling thread still holds the producer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
