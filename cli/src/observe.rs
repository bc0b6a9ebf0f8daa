//! `flowlens observe`: reads enriched flows straight from Kafka without joining a consumer group
//! (partitions assigned, nothing committed: the stages' offsets are untouched), filters and prints
//! them; history (`--last`, `--since`) in flow-end order, then new records as they arrive (`-f`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use flowlens_schemas::{decode_value, EnrichedFlow, RecordKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::filter::Filters;
use crate::flows::{Decoded, Format, Printer};

/// Where the records are.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma separated host:port.
    #[arg(
        long,
        env = "FLOWLENS_BROKERS",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT,..."
    )]
    pub brokers: String,
    /// The enriched flows topic.
    #[arg(
        long,
        env = "FLOWLENS_TOPIC",
        default_value = "flowlens.flows.enriched"
    )]
    pub topic: String,
    /// A librdkafka property for the connection (TLS, SASL, ...), e.g. -X security.protocol=SASL_SSL;
    /// repeat for several.
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE", value_parser = key_value)]
    pub properties: Vec<(String, String)>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Records of flows that ended within this window before now, e.g. 5m, 2h.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, conflicts_with = "last", help_heading = "What to show")]
    since: Option<Duration>,
    /// The last N matching records [default: 20 unless --since or --follow].
    #[arg(long, value_name = "N", help_heading = "What to show")]
    last: Option<usize>,
    /// After the history, print new records as they arrive until Ctrl-C; alone: new records only.
    #[arg(short, long, help_heading = "What to show")]
    follow: bool,
    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "table",
        help_heading = "What to show"
    )]
    output: Format,
    #[command(flatten)]
    filters: Filters,
}

/// Set by SIGINT/SIGTERM: every loop below checks it and ends cleanly.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// How long to wait for the brokers' metadata before naming them in an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &Args) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let reader = Reader::connect(&args.kafka)?;
    let mut printer = Printer::new(args.output, std::io::stdout().lock());
    let history = match (args.since, args.last, args.follow) {
        (Some(since), _, _) => reader.since(since, &args.filters)?,
        (None, Some(n), _) => reader.last(n, &args.filters)?,
        (None, None, false) => reader.last(20, &args.filters)?,
        (None, None, true) => Vec::new(),
    };
    for d in &history {
        crate::quiet_on_broken_pipe(printer.print(d))?;
    }
    if args.follow && !stopping() {
        reader.follow(&args.filters, |d| printer.print(d))?;
    }
    Ok(())
}

struct Reader {
    consumer: BaseConsumer,
    topic: String,
    brokers: String,
    /// (partition, low, high) when the command started.
    partitions: Vec<(i32, i64, i64)>,
}

impl Reader {
    fn connect(args: &KafkaArgs) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("client.id", "flowlens-observe")
            // librdkafka's assign() needs a group id; with assigned partitions and no commits
            // the client never joins it, so the broker never holds it (tests/observe.rs).
            .set(
                "group.id",
                format!("flowlens-observe-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &args.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config
            .create()
            .with_context(|| format!("Kafka client for {}", args.brokers))?;
        let metadata = consumer
            .fetch_metadata(Some(&args.topic), CONNECT_TIMEOUT)
            .with_context(|| {
                format!(
                    "cannot reach the Kafka brokers {} within {CONNECT_TIMEOUT:?}",
                    args.brokers
                )
            })?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == args.topic)
            .with_context(|| format!("brokers {} know no topic {}", args.brokers, args.topic))?;
        if let Some(e) = topic.error() {
            bail!("topic {} at {}: {e:?}", args.topic, args.brokers);
        }
        if topic.partitions().is_empty() {
            bail!("topic {} at {} has no partitions", args.topic, args.brokers);
        }
        let mut partitions = Vec::new();
        for p in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&args.topic, p.id(), CONNECT_TIMEOUT)
                .with_context(|| {
                    format!("offsets of {}/{} at {}", args.topic, p.id(), args.brokers)
                })?;
            partitions.push((p.id(), low, high));
        }
        partitions.sort();
        Ok(Self {
            consumer,
            topic: args.topic.clone(),
            brokers: args.brokers.clone(),
            partitions,
        })
    }

    /// Reads `[from, to)` of each given partition (all at once); calls `each` per record.
    fn read_ranges(
        &self,
        ranges: &[(i32, i64, i64)],
        mut each: impl FnMut(Decoded),
    ) -> anyhow::Result<()> {
        let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for &(p, from, to) in ranges {
            if from < to {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(from))?;
                pending.insert(p, to);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        self.consumer.assign(&tpl)?;
        while !pending.is_empty() && !stopping() {
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => return Err(self.failed(e)),
                Some(Ok(m)) => {
                    let Some(&to) = pending.get(&m.partition()) else {
                        continue;
                    };
                    if m.offset() < to {
                        if let Some(d) = self.decode(&m) {
                            each(d);
                        }
                    }
                    if m.offset() + 1 >= to {
                        pending.remove(&m.partition());
                    }
                }
            }
        }
        Ok(())
    }

    /// Records whose flow ended at most `since` ago: each partition from the first record the
    /// broker stamped at or after that time (a record is produced after its flow ended), up to
    /// where it ended when the command started; sorted by flow end.
    fn since(&self, since: Duration, filters: &Filters) -> anyhow::Result<Vec<Decoded>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let cutoff = now.saturating_sub(since);
        let mut query = TopicPartitionList::new();
        for &(p, _, _) in &self.partitions {
            query.add_partition_offset(
                &self.topic,
                p,
                Offset::Offset(cutoff.as_millis() as i64),
            )?;
        }
        let found = self
            .consumer
            .offsets_for_times(query, CONNECT_TIMEOUT)
            .map_err(|e| self.failed(e))?;
        let ranges: Vec<(i32, i64, i64)> = self
            .partitions
            .iter()
            .map(|&(p, low, high)| {
                let start = found
                    .find_partition(&self.topic, p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        Offset::End => Some(high),
                        _ => None,
                    })
                    .unwrap_or(low);
                (p, start.max(low), high)
            })
            .collect();
        let cutoff_ns = cutoff.as_nanos() as i128;
        let mut out = Vec::new();
        self.read_ranges(&ranges, |d| {
            if i128::from(d.flow.time_flow_end_ns) >= cutoff_ns && filters.matches(&d.flow) {
                out.push(d);
            }
        })?;
        sort(&mut out);
        Ok(out)
    }

    /// The last `n` matching records (by flow end): each partition read backwards in growing
    /// chunks until it gave `n` matches or its beginning was reached.
    fn last(&self, n: usize, filters: &Filters) -> anyhow::Result<Vec<Decoded>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // Per partition: (where the next chunk ends, matches so far, newest first by position).
        let mut state: BTreeMap<i32, (i64, Vec<Decoded>)> = self
            .partitions
            .iter()
            .map(|&(p, _, high)| (p, (high, Vec::new())))
            .collect();
        let mut chunk = (n as i64).max(500);
        loop {
            let ranges: Vec<(i32, i64, i64)> = self
                .partitions
                .iter()
                .filter_map(|&(p, low, _)| {
                    let (end, found) = &state[&p];
                    (found.len() < n && *end > low).then(|| (p, (*end - chunk).max(low), *end))
                })
                .collect();
            if ranges.is_empty() || stopping() {
                break;
            }
            let mut got: BTreeMap<i32, Vec<Decoded>> = BTreeMap::new();
            self.read_ranges(&ranges, |d| {
                if filters.matches(&d.flow) {
                    got.entry(d.partition).or_default().push(d);
                }
            })?;
            for &(p, from, _) in &ranges {
                let (end, found) = state.get_mut(&p).expect("known partition");
                *end = from;
                // This chunk is older than everything found so far in the partition.
                let mut older = got.remove(&p).unwrap_or_default();
                older.append(found);
                *found = older;
            }
            chunk = chunk.saturating_mul(2);
        }
        let mut out: Vec<Decoded> = state
            .into_values()
            .flat_map(|(_, mut found)| {
                let keep = found.len().saturating_sub(n);
                found.split_off(keep)
            })
            .collect();
        sort(&mut out);
        let keep = out.len().saturating_sub(n);
        Ok(out.split_off(keep))
    }

    /// New records from where each partition ended when the command started, until Ctrl-C.
    fn follow(
        &self,
        filters: &Filters,
        mut print: impl FnMut(&Decoded) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for &(p, _, high) in &self.partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(high))?;
        }
        self.consumer.assign(&tpl)?;
        while !stopping() {
            match self.consumer.poll(Duration::from_millis(100)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(self.failed(e)),
                Some(Ok(m)) => {
                    if let Some(d) = self.decode(&m).filter(|d| filters.matches(&d.flow)) {
                        if let Err(e) = print(&d) {
                            return crate::quiet_on_broken_pipe(Err(e));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The record in `m`, or a warning on stderr naming where the undecodable one is.
    fn decode(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Decoded> {
        let at = || format!("{}/{}@{}", self.topic, m.partition(), m.offset());
        let Some(payload) = m.payload() else {
            eprintln!("flowlens observe: skipping {}: no value", at());
            return None;
        };
        let decoded = decode_value(payload).and_then(|(kind, value)| {
            if kind != RecordKind::EnrichedFlow {
                return Err(flowlens_schemas::SchemaError::WrongRecord {
                    expected: RecordKind::EnrichedFlow.full_name(),
                    found: kind.full_name(),
                });
            }
            let flow: EnrichedFlow = flowlens_schemas::apache_avro::from_value(&value)
                .map_err(|e| flowlens_schemas::SchemaError::Datum(e.to_string()))?;
            Ok((flow, value))
        });
        match decoded {
            Ok((flow, value)) => Some(Decoded {
                flow,
                value,
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err(e) => {
                eprintln!("flowlens observe: skipping {}: {e}", at());
                None
            }
        }
    }

    fn failed(&self, e: KafkaError) -> anyhow::Error {
        anyhow::anyhow!("reading {} from {}: {e}", self.topic, self.brokers)
    }
}

/// Flow-end order; ties by partition and offset.
fn sort(records: &mut [Decoded]) {
    records.sort_by_key(|d| (d.flow.time_flow_end_ns, d.partition, d.offset));
}
