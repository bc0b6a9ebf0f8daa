//! `flowlens-consume`: an example downstream consumer in Rust, the twin of
//! `consumers/python/flowlens_consume.py` (same arguments, same output).
//!
//! It reads every partition of a flowlens topic from the beginning to its end without a consumer
//! group (partitions assigned, nothing committed; a service would subscribe with a group and
//! commit after its own work), and for each message:
//! takes the writer schema's fingerprint from the single-object header, finds that version among
//! the schemas the `flowlens-schemas` crate embeds (schemas/avro, history included), decodes the
//! datum resolved to the current version of its record, and prints one JSON line
//! `{"partition", "offset", "writer": {"record", "file", "fingerprint"}, "record": {...}}`.
//! A message that does not decode is reported on stderr with its position; the exit code is then 3.
//! Typed access is one call away: `flowlens_schemas::decode::<EnrichedFlow>(payload)`.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flowlens_schemas::{decode_value, json, peek_fingerprint, RecordKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Parser)]
#[command(about = "Reads a flowlens topic and prints every record as one JSON line")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "flowlens.flows.enriched")]
    topic: String,
}

/// One message as the JSON line printed for it.
fn line(payload: &[u8], partition: i32, offset: i64) -> anyhow::Result<serde_json::Value> {
    let fingerprint = peek_fingerprint(payload)?;
    let (kind, version) = RecordKind::known_writers()
        .find(|(_, _, fp, _)| *fp == fingerprint)
        .map(|(kind, version, _, _)| (kind, version))
        .with_context(|| {
            let hex: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
            format!("unknown writer schema fingerprint {hex}: fetch the newer .avsc")
        })?;
    let (_, value) = decode_value(payload)?;
    Ok(serde_json::json!({
        "partition": partition,
        "offset": offset,
        "writer": {
            "record": kind.full_name(),
            "file": kind.avsc_file(version),
            "fingerprint": fingerprint.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        },
        "record": json::to_json(kind, &value),
    }))
}

fn run(args: &Args) -> anyhow::Result<usize> {
    // assign() needs a group id; it is never joined and nothing is committed.
    let group = format!("flowlens-consume-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .with_context(|| format!("brokers {}", args.brokers))?;
    let partitions: BTreeSet<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == args.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(
        !partitions.is_empty(),
        "topic {} not found at {}",
        args.topic,
        args.brokers
    );
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&args.topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut open = partitions;
    let mut bad = 0;
    while !open.is_empty() {
        match consumer.poll(Duration::from_secs(1)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => match line(m.payload().unwrap_or_default(), m.partition(), m.offset()) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    bad += 1;
                    eprintln!(
                        "flowlens-consume: {}/{}@{}: {e:#}",
                        args.topic,
                        m.partition(),
                        m.offset()
                    );
                }
            },
        }
    }
    Ok(bad)
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("flowlens-consume: {e:#}");
            ExitCode::FAILURE
        }
    }
}
