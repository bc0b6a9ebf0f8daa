//! The interface cache: a task reads the whole compacted interfaces topic (every partition from
//! the beginning, no consumer group) and keeps the latest `Interface` per (host, ifindex); a
//! tombstone removes one. At start the pipeline waits, for a bounded time, until the cache has
//! caught up with the topic's high watermarks.
//!
//! A record that cannot be applied is left out of the cache and dead-lettered (in order, under
//! the `[dead_letter]` policy); the offset after it is then committed for the reader's group
//! (`<client_id>-reader`), which does not otherwise commit: when the topic is read again from
//! the beginning (a restart, another replica) records before that offset are known to be
//! dead-lettered already and are not copied again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::{health, DeadLetter, Shutdown};
use flowlens_schemas::Interface;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Readiness condition: the cache caught up with the interfaces topic.
pub const CONDITION: &str = "interfaces";

/// Registers [`CONDITION`] as not met (reading `topic` from the beginning).
pub fn register_condition(topic: &str) {
    health::condition(CONDITION).set_failing(format!("reading topic {topic} from the beginning"));
}

/// Latest metadata per (host, ifindex). Nested maps so a lookup by `&str` does not allocate.
#[derive(Debug, Default)]
pub struct InterfaceCache {
    by_host: foldhash::HashMap<String, foldhash::HashMap<i32, Interface>>,
    len: usize,
}

impl InterfaceCache {
    pub fn get(&self, host: &str, ifindex: i32) -> Option<&Interface> {
        self.by_host.get(host)?.get(&ifindex)
    }

    /// Inserts or replaces the entry for (`interface.host`, `interface.ifindex`).
    pub fn upsert(&mut self, interface: Interface) {
        let previous = self
            .by_host
            .entry(interface.host.clone())
            .or_default()
            .insert(interface.ifindex, interface);
        if previous.is_none() {
            self.len += 1;
        }
    }

    /// Forgets (host, ifindex); returns whether it was known.
    pub fn remove(&mut self, host: &str, ifindex: i32) -> bool {
        let Some(per_host) = self.by_host.get_mut(host) else {
            return false;
        };
        let removed = per_host.remove(&ifindex).is_some();
        if per_host.is_empty() {
            self.by_host.remove(host);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Applies one record of the interfaces topic: a payload upserts, a null payload (tombstone)
    /// removes the key `host/ifindex`. Errors describe a record that could not be applied.
    pub fn apply(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(), String> {
        match payload {
            Some(bytes) => {
                let interface: Interface = flowlens_schemas::decode(bytes)
                    .map_err(|e| format!("decoding Interface: {e}"))?;
                self.upsert(interface);
                Ok(())
            }
            None => {
                let key = key.ok_or("tombstone without a key")?;
                let (host, ifindex) = parse_key(key).ok_or_else(|| {
                    format!(
                        "tombstone key {:?} is not host/ifindex",
                        String::from_utf8_lossy(key)
                    )
                })?;
                self.remove(host, ifindex);
                Ok(())
            }
        }
    }
}

/// Parses a `host/ifindex` key (the host may itself contain `/`; the last one separates).
pub fn parse_key(key: &[u8]) -> Option<(&str, i32)> {
    let (host, ifindex) = std::str::from_utf8(key).ok()?.rsplit_once('/')?;
    Some((host, ifindex.parse().ok()?))
}

/// The cache shared between the reader task (writer) and the join (readers).
pub type SharedCache = Arc<RwLock<InterfaceCache>>;

/// Handle on the running reader task.
pub struct InterfaceReader {
    pub cache: SharedCache,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl InterfaceReader {
    /// Starts reading `kafka.topics.interfaces` into a new cache; bad records go to `dead_letter`.
    pub fn start(
        kafka: &KafkaConfig,
        dead_letter: DeadLetter,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka.reader_config().create()?;
        let cache = SharedCache::default();
        let (ready_tx, ready) = watch::channel(false);
        let task = tokio::spawn(follow(
            Arc::new(consumer),
            kafka.topics.interfaces.clone(),
            cache.clone(),
            ready_tx,
            dead_letter,
            shutdown,
        ));
        Ok(Self { cache, ready, task })
    }

    /// Waits until the cache has caught up with the topic, at most `timeout`; returns whether it did.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.ready.wait_for(|ready| *ready)).await,
            Ok(Ok(_))
        )
    }

    /// Stops the reader task.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Per partition of `topic`, the offset before which bad records were dead-lettered already
/// (what the reader's group committed); nothing for a partition without a commit.
fn dead_lettered_before(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
) -> HashMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    match consumer.committed_offsets(tpl, METADATA_TIMEOUT) {
        Ok(committed) => committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(topic, error = %e,
                "cannot read which interface records were dead-lettered before; bad ones may be copied again");
            HashMap::new()
        }
    }
}

/// High watermark per partition of `topic`, leaving out empty partitions (nothing to wait for).
fn catch_up_targets(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow::anyhow!("topic {topic} not in metadata"))?;
    if let Some(err) = t.error() {
        anyhow::bail!(
            "topic {topic}: {}",
            rdkafka::types::RDKafkaErrorCode::from(err)
        );
    }
    if t.partitions().is_empty() {
        anyhow::bail!("topic {topic} has no partitions");
    }
    let mut targets = HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)?;
        targets.insert(p.id(), if high > low { high } else { -1 });
    }
    Ok(targets)
}

async fn follow(
    consumer: Arc<StreamConsumer>,
    topic: String,
    cache: SharedCache,
    ready: watch::Sender<bool>,
    dead_letter: DeadLetter,
    shutdown: Shutdown,
) {
    // Partitions and their high watermarks, and what was dead-lettered before (blocking calls:
    // off the async workers).
    let (mut targets, mut dead_lettered) = loop {
        let c = consumer.clone();
        let t = topic.clone();
        let read = tokio::task::spawn_blocking(move || {
            let targets = catch_up_targets(&c, &t)?;
            let partitions: Vec<i32> = targets.keys().copied().collect();
            anyhow::Ok((targets, dead_lettered_before(&c, &t, &partitions)))
        });
        match read.await {
            Ok(Ok(found)) => break found,
            Ok(Err(e)) => {
                tracing::warn!(topic, error = %e, "interfaces topic not readable yet, retrying")
            }
            Err(e) => tracing::error!(error = %e, "interfaces metadata task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let mut tpl = TopicPartitionList::new();
    for &partition in targets.keys() {
        if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Beginning) {
            tracing::error!(topic, partition, error = %e, "cannot assign interfaces partition");
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(topic, error = %e, "cannot assign interfaces topic; joins will miss");
        return;
    }
    targets.retain(|_, high| *high > 0);
    let partitions = tpl.count();
    tracing::info!(topic, partitions, "reading interfaces topic");
    let mut caught_up = false;
    loop {
        if !caught_up && targets.is_empty() {
            caught_up = true;
            let entries = cache.read().map(|c| c.len()).unwrap_or_default();
            tracing::info!(topic, entries, "interface cache caught up");
            health::condition(CONDITION).set_ok();
            metrics::gauge!("flowlens_enricher_interface_cache_entries").set(entries as f64);
            let _ = ready.send(true);
        }
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(topic, error = %e, "interfaces topic read error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        let (applied, entries) = {
            let mut cache = cache
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let applied = cache.apply(message.key(), message.payload());
            (applied, cache.len())
        };
        metrics::gauge!("flowlens_enricher_interface_cache_entries").set(entries as f64);
        if let Err(reason) = applied {
            metrics::counter!("flowlens_enricher_interfaces_invalid_total").increment(1);
            if dead_lettered
                .get(&partition)
                .is_some_and(|&before| offset < before)
            {
                tracing::info!(topic, partition, offset, %reason,
                    "bad interface record left out (dead-lettered before)");
            } else {
                tracing::warn!(topic, partition, offset, %reason, "bad interface record left out");
                if let Err(e) = dead_letter.send(&message, &reason).await {
                    tracing::warn!(topic, partition, offset, error = %e, "interfaces reader stopping");
                    return;
                }
                dead_lettered.insert(partition, offset + 1);
                let mut tpl = TopicPartitionList::new();
                let mark = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1));
                if let Err(e) = mark.and_then(|()| consumer.commit(&tpl, CommitMode::Async)) {
                    tracing::warn!(topic, partition, offset, error = %e,
                        "cannot record that the bad interface record was dead-lettered; it may be copied again");
                }
            }
        }
        if targets
            .get(&partition)
            .is_some_and(|&high| offset + 1 >= high)
        {
            targets.remove(&partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(host: &str, ifindex: i32, name: &str) -> Interface {
        Interface {
            host: host.into(),
            ifindex,
            name: name.into(),
            mac: String::new(),
            mtu: 1500,
            kind: "device".into(),
            netns: String::new(),
            netns_inode: 1,
            oper_state: "up".into(),
            time_observed_ns: 1,
        }
    }

    fn encoded(i: &Interface) -> Vec<u8> {
        let mut buf = Vec::new();
        flowlens_schemas::encode(i, &mut buf).unwrap();
        buf
    }

    #[test]
    fn keys_split_on_the_last_slash() {
        assert_eq!(parse_key(b"node-1/3"), Some(("node-1", 3)));
        assert_eq!(parse_key(b"a/b/12"), Some(("a/b", 12)));
        assert_eq!(parse_key(b"node-1"), None);
        assert_eq!(parse_key(b"node-1/x"), None);
    }

    #[test]
    fn records_upsert_and_tombstones_remove() {
        let mut cache = InterfaceCache::default();
        cache
            .apply(Some(b"n/1"), Some(&encoded(&iface("n", 1, "eth0"))))
            .unwrap();
        cache
            .apply(Some(b"n/2"), Some(&encoded(&iface("n", 2, "eth1"))))
            .unwrap();
        cache
            .apply(Some(b"n/1"), Some(&encoded(&iface("n", 1, "eth9"))))
            .unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("n", 1).unwrap().name, "eth9");
        cache.apply(Some(b"n/1"), None).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(cache.get("n", 1).is_none());
        // Tombstone for an unknown key: nothing to do, not an error.
        cache.apply(Some(b"m/1"), None).unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn bad_records_are_reported_and_change_nothing() {
        let mut cache = InterfaceCache::default();
        assert!(cache.apply(Some(b"n/1"), Some(b"garbage")).is_err());
        assert!(cache.apply(Some(b"n"), None).is_err());
        assert!(cache.apply(None, None).is_err());
        assert!(cache.is_empty());
    }
}
