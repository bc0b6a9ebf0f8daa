//! Rough encode/decode cost per record: `cargo run --release -p flowlens-schemas --example codec_timing`.

use std::hint::black_box;
use std::time::Instant;

use flowlens_schemas::{decode, encode, ip_to_v6, Direction, EnrichedFlow, RawFlow};

fn main() {
    let raw = RawFlow {
        host: "node-a.example".into(),
        ifindex: 7,
        direction: Direction::Egress,
        time_flow_start_ns: 1_700_000_000_000_000_000,
        time_flow_end_ns: 1_700_000_000_900_000_000,
        time_exported_ns: 1_700_000_001_000_000_000,
        etype: 0x0800,
        vlan_id: 0,
        proto: 6,
        src_addr: ip_to_v6("10.244.1.17".parse().unwrap()),
        dst_addr: ip_to_v6("10.96.0.10".parse().unwrap()),
        src_port: 43_512,
        dst_port: 443,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0x1b,
        packets: 12,
        bytes: 18_168,
        sampling_rate: 1,
    };
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
