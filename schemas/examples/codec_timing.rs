//! Rough encode/decode cost per record: `cargo run --release -p flowlens-schemas --example codec_timing`.

use std::hint::black_box;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;

use flowlens_schemas::{decode, encode, EnrichedFlow};

fn main() {
    let raw = common::raw_v4();
    let mut enriched = EnrichedFlow::from_raw(raw.clone());
    enriched.if_name = "veth3f2a9c1".into();
    enriched.src_pod = Some("web-7d9f-abcde".into());
    enriched.src_namespace = Some("shop".into());

    time("RawFlow", &raw, 200_000);
    time("EnrichedFlow", &enriched, 200_000);
}

fn time<R>(name: &str, record: &R, n: u32)
where
    R: flowlens_schemas::AvroRecord + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = Vec::with_capacity(256);
    encode(record, &mut buf).unwrap();
    let len = buf.len();

    let start = Instant::now();
    for _ in 0..n {
        buf.clear();
        encode(black_box(record), &mut buf).unwrap();
    }
    let enc = start.elapsed() / n;

    let start = Instant::now();
    for _ in 0..n {
        black_box(decode::<R>(black_box(&buf)).unwrap());
    }
    let dec = start.elapsed() / n;
    println!("{name}: {len} bytes/message, encode {enc:?}/record, decode {dec:?}/record");
}
