//! The run's topics: names unique to the run, created on the broker at the start with the
//! interface metadata published before any flow (so the enricher's join has something to
//! find), and deleted again from an existing cluster at the end.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flowlens_runtime::kafka::KafkaConfig;
use rdkafka::producer::Producer;

use crate::gen::Generator;
use crate::produce::{self, Deliveries};
use crate::progress::Progress;

/// The pipeline's topics (in `kafka`), one topic per repetition of the broker baseline and the
/// relay's output (`crate::relay`).
pub struct Topics {
    pub kafka: KafkaConfig,
    pub baseline: Vec<String>,
    pub relay: String,
}

impl Topics {
    /// Creates `<run_id>_{raw,interfaces,enriched,dlq}`, `<run_id>_baseline<i>` and
    /// `<run_id>_relay` with `partitions` partitions each.
    pub fn create(
        run_id: &str,
        brokers: &str,
        partitions: i32,
        baseline_repeats: u32,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let mut kafka = KafkaConfig {
            brokers: brokers.split(',').map(|b| b.trim().to_string()).collect(),
            partitions,
            client_id: "flowlens-bench".into(),
            ..Default::default()
        };
        kafka.topics.raw_flows = format!("{run_id}_raw");
        kafka.topics.interfaces = format!("{run_id}_interfaces");
        kafka.topics.enriched_flows = format!("{run_id}_enriched");
        kafka.topics.dead_letter = format!("{run_id}_dlq");
        let baseline: Vec<String> = (0..baseline_repeats.max(1))
            .map(|i| format!("{run_id}_baseline{i}"))
            .collect();
        let relay = format!("{run_id}_relay");
        rt.block_on(kafka.ensure_topics(&[
            (kafka.topics.raw_flows.as_str(), false),
            (kafka.topics.interfaces.as_str(), true),
            (kafka.topics.enriched_flows.as_str(), false),
            (kafka.topics.dead_letter.as_str(), false),
        ]))?;
        rt.block_on(
            kafka.ensure_topics(
                &baseline
                    .iter()
                    .chain([&relay])
                    .map(|t| (t.as_str(), false))
                    .collect::<Vec<_>>(),
            ),
        )?;
        Ok(Self {
            kafka,
            baseline,
            relay,
        })
    }

    /// Publishes the interface record of every host `generator` makes flows for.
    pub fn publish_interfaces(&self, generator: &Generator, now_ns: i64) -> anyhow::Result<()> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = produce::producer(&self.kafka, deliveries.clone())?;
        let mut buf = Vec::new();
        for iface in generator.interfaces(now_ns) {
            buf.clear();
            flowlens_schemas::encode(&iface, &mut buf)?;
            let key = format!("{}/{}", iface.host, iface.ifindex);
            producer
                .send(
                    rdkafka::producer::BaseRecord::to(&self.kafka.topics.interfaces)
                        .key(&key)
                        .payload(&buf),
                )
                .map_err(|(e, _)| anyhow::anyhow!("interface record {key}: {e}"))?;
        }
        producer.flush(Duration::from_secs(30))?;
        anyhow::ensure!(
            deliveries.failed.load(Ordering::Relaxed) == 0,
            "interface records not delivered"
        );
        Ok(())
    }

    /// Deletes every topic of the run (best effort: a failure is said, not an error), so an
    /// existing cluster keeps no trace of the run.
    pub fn delete(&self, rt: &tokio::runtime::Runtime, progress: &Progress) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            self.kafka.producer_config().create()?;
        let mut topics = vec![
            self.kafka.topics.raw_flows.as_str(),
            self.kafka.topics.interfaces.as_str(),
            self.kafka.topics.enriched_flows.as_str(),
            self.kafka.topics.dead_letter.as_str(),
        ];
        topics.extend(self.baseline.iter().map(String::as_str));
        topics.push(&self.relay);
        if let Err(e) = rt.block_on(admin.delete_topics(&topics, &AdminOptions::new())) {
            progress.say(format!("could not delete the run's topics {topics:?}: {e}"));
        }
        Ok(())
    }
}
