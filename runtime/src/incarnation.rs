//! Topic incarnations: the 16-byte *stream id* naming one life of a Kafka topic partition, so
//! that a position (stream, partition, offset) never names two records, whatever happens to the
//! topic (deleted and created again, a memory broker restarted, a new cluster under the same
//! names).
//!
//! * **Topic id** (KIP-516): the broker's UUID of the topic, new for every creation. Read with
//!   librdkafka's `rd_kafka_DescribeTopics` (not wrapped by the rdkafka crate: [`topic_ids`] is
//!   the one unsafe wrapper).
//! * **Fallback** when the broker gives no topic id (all zeros): [`fallback_id`], an xxh3-128 of
//!   the topic name, the partition and the partition's earliest record (its broker timestamp and
//!   value), read once per assignment ([`Probe::stream_id`]). It tells apart incarnations whose
//!   first records differ (any real re-creation: the first record's timestamp is in ms); it
//!   cannot tell apart two incarnations whose first records have the same timestamp and bytes,
//!   and it changes when retention deletes the partition's first records (the same life then
//!   looks new: nothing is skipped, see ARCHITECTURE.md).
//! * [`successor`]: a fresh id derived from an id found to name a new life (the check on
//!   assignment found another record where a stored one was), deterministic so that every
//!   restart derives the same one.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::kafka::KafkaConfig;

/// 16 bytes naming one incarnation of a stream (a topic's id, or a derived id).
pub type StreamId = [u8; 16];

/// Lower-case hex of an id, for logs and commit metadata.
pub fn hex(id: &StreamId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses [`hex`] back.
pub fn parse_hex(text: &str) -> Option<StreamId> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

fn xxh3_128(parts: &[&[u8]]) -> StreamId {
    let mut h = twox_hash::xxhash3_128::Hasher::new();
    for p in parts {
        h.write(&(p.len() as u64).to_le_bytes());
        h.write(p);
    }
    h.finish_128().to_be_bytes()
}

/// The stream id of a partition whose broker gives no topic id: from its earliest record.
pub fn fallback_id(topic: &str, partition: i32, timestamp_ms: i64, value: &[u8]) -> StreamId {
    xxh3_128(&[
        b"flowlens-stream",
        topic.as_bytes(),
        &partition.to_le_bytes(),
        &timestamp_ms.to_le_bytes(),
        value,
    ])
}

/// A fresh id for a new life found under `id` (deterministic: every process derives the same
/// chain `id`, `successor(id)`, `successor(successor(id))`, ... and walks it to the first id
/// whose stored records the log still holds).
pub fn successor(id: &StreamId) -> StreamId {
    xxh3_128(&[b"flowlens-successor", id])
}

/// The topic id of each of `topics` (`None`: the broker gives none, all zeros) through
/// `rd_kafka_DescribeTopics` on `client`'s handle, sent to the broker that answers the
/// metadata request (not the controller: librdkafka's mock cluster has none, and any broker
/// answers). Blocks up to about twice `timeout`. A topic the broker does not know, or no
/// answer, is an error: never a reason to guess another id.
pub fn topic_ids<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Option<StreamId>>> {
    use rdkafka::bindings as rd;
    let names: Vec<CString> = topics
        .iter()
        .map(|t| CString::new(*t).context("topic name with a NUL byte"))
        .collect::<anyhow::Result<_>>()?;
    let mut pointers: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let metadata = client
        .fetch_metadata(topics.first().copied(), timeout)
        .context("reading metadata")?;
    let broker = match metadata.orig_broker_id() {
        id if id >= 0 => id,
        _ => metadata
            .brokers()
            .first()
            .map(|b| b.id())
            .context("the metadata names no broker")?,
    };
    let rk = client.native_ptr();
    // SAFETY: every object created here is destroyed before returning (guards below); the
    // strings read from the result are copied before the event is destroyed; `rk` outlives the
    // call (borrowed from `client`).
    unsafe {
        struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));
        impl<T> Drop for Guard<T> {
            fn drop(&mut self) {
                if !self.0.is_null() {
                    unsafe { (self.1)(self.0) }
                }
            }
        }
        let queue = Guard(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        let collection = Guard(
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len()),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let options = Guard(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut err = [0 as std::os::raw::c_char; 256];
        let code = rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            err.as_mut_ptr(),
            err.len(),
        );
        anyhow::ensure!(
            code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "DescribeTopics options: {}",
            CStr::from_ptr(err.as_ptr()).to_string_lossy()
        );
        let code =
            rd::rd_kafka_AdminOptions_set_broker(options.0, broker, err.as_mut_ptr(), err.len());
        anyhow::ensure!(
            code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "DescribeTopics options: {}",
            CStr::from_ptr(err.as_ptr()).to_string_lossy()
        );
        rd::rd_kafka_DescribeTopics(rk, collection.0, options.0, queue.0);
        let event = Guard(
            rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000)),
            rd::rd_kafka_event_destroy,
        );
        anyhow::ensure!(
            !event.0.is_null(),
            "DescribeTopics {topics:?}: no answer within {timeout:?}"
        );
        anyhow::ensure!(
            rd::rd_kafka_event_type(event.0) == rd::RD_KAFKA_EVENT_DESCRIBETOPICS_RESULT,
            "DescribeTopics {topics:?}: unexpected event type"
        );
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            let text = CStr::from_ptr(rd::rd_kafka_event_error_string(event.0));
            anyhow::bail!("DescribeTopics {topics:?}: {}", text.to_string_lossy());
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
        let mut count = 0usize;
        let described = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        let mut out = BTreeMap::new();
        for i in 0..count {
            let desc = *described.add(i);
            let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(desc))
                .to_string_lossy()
                .into_owned();
            let error = rd::rd_kafka_TopicDescription_error(desc);
            if !error.is_null()
                && rd::rd_kafka_error_code(error)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                let text = CStr::from_ptr(rd::rd_kafka_error_string(error));
                anyhow::bail!("describing topic `{name}`: {}", text.to_string_lossy());
            }
            let uuid = rd::rd_kafka_TopicDescription_topic_id(desc);
            let id = if uuid.is_null() {
                None
            } else {
                let msb = rd::rd_kafka_Uuid_most_significant_bits(uuid) as u64;
                let lsb = rd::rd_kafka_Uuid_least_significant_bits(uuid) as u64;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&msb.to_be_bytes());
                id[8..].copy_from_slice(&lsb.to_be_bytes());
                (id != [0; 16]).then_some(id)
            };
            out.insert(name, id);
        }
        Ok(out)
    }
}

/// How long [`Probe::record_at`] looks for a record at or past the end the broker reports.
const PAST_END_WAIT: Duration = Duration::from_secs(2);

/// One record as the broker holds it: offset, broker timestamp (ms), value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub value: Vec<u8>,
}

/// A consumer without a group that reads single records by position and describes topics: the
/// stages' way to name the incarnation of the partitions they are given and to check it.
pub struct Probe {
    consumer: BaseConsumer,
    timeout: Duration,
}

impl Probe {
    /// A probe on `kafka`'s brokers; each call waits at most `timeout` for the broker.
    pub fn new(kafka: &KafkaConfig, timeout: Duration) -> anyhow::Result<Self> {
        let mut config = kafka.reader_config();
        config
            .set("group.id", format!("{}-probe", kafka.client_id))
            .set("auto.offset.reset", "error")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = config.create().context("creating the Kafka probe")?;
        Ok(Self { consumer, timeout })
    }

    /// The topic id of `topic` (`None`: the broker gives none).
    pub fn topic_id(&self, topic: &str) -> anyhow::Result<Option<StreamId>> {
        let ids = topic_ids(self.consumer.client(), &[topic], self.timeout)?;
        Ok(ids.get(topic).copied().flatten())
    }

    /// The record at `offset` of `topic`/`partition`, or `None` when the log does not hold it
    /// (below the earliest record, at or past the end, or removed by compaction).
    pub fn record_at(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Option<Stored>> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("watermarks of {topic}/{partition}"))?;
        if offset < low || (high <= offset && high == low) {
            return Ok(None);
        }
        // At or past the reported end: a broker may under-report it (tansu counts batches), so
        // look, briefly; nothing there in that time means the log does not reach `offset`.
        let past_end = high <= offset;
        let wait = if past_end {
            PAST_END_WAIT
        } else {
            self.timeout
        };
        self.read_from(topic, partition, Offset::Offset(offset), wait, past_end)
            .map(|r| r.filter(|r| r.offset == offset))
    }

    /// The (low, high) watermarks of `topic`/`partition`.
    pub fn watermarks(&self, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("watermarks of {topic}/{partition}"))
    }

    /// The earliest record of `topic`/`partition` (`None`: the partition is empty).
    pub fn earliest(&self, topic: &str, partition: i32) -> anyhow::Result<Option<Stored>> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("watermarks of {topic}/{partition}"))?;
        if high <= low {
            return Ok(None);
        }
        self.read_from(topic, partition, Offset::Offset(low), self.timeout, false)
    }

    /// The first record at or after `from`; `None` when the broker says the log does not reach
    /// `from` (offset out of range), or, with `quiet_is_none`, when nothing came within `wait`.
    /// Otherwise no answer within `wait` is an error: never evidence that a record is gone.
    fn read_from(
        &self,
        topic: &str,
        partition: i32,
        from: Offset,
        wait: Duration,
        quiet_is_none: bool,
    ) -> anyhow::Result<Option<Stored>> {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, from)?;
        self.consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + wait;
        let mut last_error = None;
        let found = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.consumer.unassign()?;
                if quiet_is_none && last_error.is_none() {
                    return Ok(None);
                }
                anyhow::bail!(
                    "no record of {topic}/{partition} from {from:?} within {wait:?} (last error: {last_error:?})"
                );
            }
            match self.consumer.poll(left.min(Duration::from_millis(200))) {
                Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                    break Some(Stored {
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Ok(_)) => {}
                // Out of range (auto.offset.reset = error): the log does not reach `from`.
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ))) => break None,
                // Anything else (a broker connection that was down, ...) may pass: wait.
                Some(Err(e)) => {
                    tracing::debug!(topic, partition, error = %e, "probe read");
                    last_error = Some(e);
                }
                None => {}
            }
        };
        self.consumer.unassign()?;
        Ok(found)
    }

    /// The stream id of `topic`/`partition`: the topic id, or else [`fallback_id`] of its
    /// earliest record (`None`: no topic id and an empty partition).
    pub fn stream_id(&self, topic: &str, partition: i32) -> anyhow::Result<Option<StreamId>> {
        Ok(self.name(topic, partition)?.map(|(id, _)| id))
    }

    /// [`Probe::stream_id`] and whether it is the topic id (which [`topic_ids`] can watch).
    pub fn name(&self, topic: &str, partition: i32) -> anyhow::Result<Option<(StreamId, bool)>> {
        if let Some(id) = self.topic_id(topic)? {
            return Ok(Some((id, true)));
        }
        Ok(self.earliest(topic, partition)?.map(|r| {
            (
                fallback_id(topic, partition, r.timestamp_ms, &r.value),
                false,
            )
        }))
    }
}

/// The incarnation the group's committed position of `topic`/`partition` was stored under
/// (its commit metadata); `None` if nothing is committed, the metadata is not one, or the
/// broker did not answer within `timeout`.
pub fn committed_under<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Option<StreamId> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer.committed_offsets(tpl, timeout).ok()?;
    let entry = got.find_partition(topic, partition)?;
    parse_hex(entry.metadata())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id: StreamId = std::array::from_fn(|i| (i * 17) as u8);
        assert_eq!(hex(&id).len(), 32);
        assert_eq!(parse_hex(&hex(&id)), Some(id));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"g".repeat(32)), None);
    }

    #[test]
    fn fallback_ids_tell_apart_what_differs() {
        let a = fallback_id("t", 0, 1_000, b"x");
        assert_eq!(a, fallback_id("t", 0, 1_000, b"x"));
        for other in [
            fallback_id("u", 0, 1_000, b"x"),
            fallback_id("t", 1, 1_000, b"x"),
            fallback_id("t", 0, 1_001, b"x"),
            fallback_id("t", 0, 1_000, b"y"),
            // Length-prefixed parts: moving a byte between parts changes the id.
            fallback_id("tx", 0, 1_000, b""),
        ] {
            assert_ne!(a, other);
        }
        let s = successor(&a);
        assert_ne!(s, a);
        assert_eq!(s, successor(&a));
        assert_ne!(successor(&s), s);
    }
}
