//! Schema evolution of `EnrichedFlow`: version 2 (current) only appended defaulted fields to
//! version 1 (`avro/history/enriched_flow.v1.avsc`). Newer readers read older records, older
//! readers read newer records, both through Avro schema resolution by writer fingerprint.

mod common;

use std::net::Ipv6Addr;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectWriter, Schema};
use flowlens_schemas::{
    decode, decode_any, decode_with_reader, encode, AnyRecord, AvroRecord, Direction, EnrichedFlow,
    RecordKind, SchemaError, ENRICHED_FLOW_AVSC, ENRICHED_FLOW_V1_AVSC,
};
use serde::{Deserialize, Serialize};

/// What a consumer compiled against version 1 has: the version 1 struct (field for field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EnrichedFlowV1 {
    host: String,
    ifindex: i32,
    direction: Direction,
    time_flow_start_ns: i64,
    time_flow_end_ns: i64,
    time_exported_ns: i64,
    etype: i32,
    vlan_id: i32,
    proto: i32,
    #[serde(with = "fixed16")]
    src_addr: Ipv6Addr,
    #[serde(with = "fixed16")]
    dst_addr: Ipv6Addr,
    src_port: i32,
    dst_port: i32,
    icmp_type: i32,
    icmp_code: i32,
    tcp_flags: i32,
    packets: i64,
    bytes: i64,
    sampling_rate: i32,
    if_name: String,
    if_mac: String,
    if_kind: String,
    if_netns: String,
    src_pod: Option<String>,
    src_namespace: Option<String>,
    src_workload: Option<String>,
    src_workload_kind: Option<String>,
    src_node: Option<String>,
    src_service: Option<String>,
    dst_pod: Option<String>,
    dst_namespace: Option<String>,
    dst_workload: Option<String>,
    dst_workload_kind: Option<String>,
    dst_node: Option<String>,
    dst_service: Option<String>,
}

mod fixed16 {
    use std::net::Ipv6Addr;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Ipv6Addr, s: S) -> Result<S::Ok, S::Error> {
        apache_avro::serde_avro_fixed::serialize(&a.octets(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv6Addr, D::Error> {
        let o: [u8; 16] = apache_avro::serde_avro_fixed::deserialize(d)?;
        Ok(Ipv6Addr::from(o))
    }
}

/// The version 1 projection of a record: every field but those version 2 added.
impl From<&EnrichedFlow> for EnrichedFlowV1 {
    fn from(e: &EnrichedFlow) -> Self {
        EnrichedFlowV1 {
            host: e.host.clone(),
            ifindex: e.ifindex,
            direction: e.direction,
            time_flow_start_ns: e.time_flow_start_ns,
            time_flow_end_ns: e.time_flow_end_ns,
            time_exported_ns: e.time_exported_ns,
            etype: e.etype,
            vlan_id: e.vlan_id,
            proto: e.proto,
            src_addr: e.src_addr,
            dst_addr: e.dst_addr,
            src_port: e.src_port,
            dst_port: e.dst_port,
            icmp_type: e.icmp_type,
            icmp_code: e.icmp_code,
            tcp_flags: e.tcp_flags,
            packets: e.packets,
            bytes: e.bytes,
            sampling_rate: e.sampling_rate,
            if_name: e.if_name.clone(),
            if_mac: e.if_mac.clone(),
            if_kind: e.if_kind.clone(),
            if_netns: e.if_netns.clone(),
            src_pod: e.src_pod.clone(),
            src_namespace: e.src_namespace.clone(),
            src_workload: e.src_workload.clone(),
            src_workload_kind: e.src_workload_kind.clone(),
            src_node: e.src_node.clone(),
            src_service: e.src_service.clone(),
            dst_pod: e.dst_pod.clone(),
            dst_namespace: e.dst_namespace.clone(),
            dst_workload: e.dst_workload.clone(),
            dst_workload_kind: e.dst_workload_kind.clone(),
            dst_node: e.dst_node.clone(),
            dst_service: e.dst_service.clone(),
        }
    }
}

fn v1_schema() -> Schema {
    Schema::parse_str(ENRICHED_FLOW_V1_AVSC).unwrap()
}

fn v2_schema() -> Schema {
    Schema::parse_str(ENRICHED_FLOW_AVSC).unwrap()
}

/// A message exactly as a version 1 producer wrote it (apache-avro's generic writer, v1 schema).
fn v1_message(record: &EnrichedFlowV1) -> Vec<u8> {
    let schema = v1_schema();
    let mut w = GenericSingleObjectWriter::new_with_capacity(&schema, 256).unwrap();
    let mut out = Vec::new();
    w.write_value(apache_avro::to_value(record).unwrap(), &mut out)
        .unwrap();
    out
}

#[test]
fn history_is_frozen_and_known() {
    // Version 1's fingerprint is what every v1 producer wrote into its headers: never changes.
    let v1: [u8; 8] = v1_schema()
        .fingerprint::<apache_avro::rabin::Rabin>()
        .bytes
        .try_into()
        .unwrap();
    assert_eq!(v1, [0xe4, 0xb6, 0x8f, 0x54, 0xf8, 0xef, 0x41, 0xe3]);
    assert_eq!(RecordKind::EnrichedFlow.history(), &[ENRICHED_FLOW_V1_AVSC]);
    assert_eq!(
        RecordKind::of_any_version(v1),
        Some(RecordKind::EnrichedFlow)
    );
    assert_eq!(
        RecordKind::from_fingerprint(v1),
        None,
        "not the current one"
    );
    let writers: Vec<_> = RecordKind::known_writers()
        .filter(|w| w.0 == RecordKind::EnrichedFlow)
        .map(|w| (w.1, w.2))
        .collect();
    assert_eq!(writers, vec![(1, v1), (2, EnrichedFlow::fingerprint())]);
}

/// The evolution rule, checked on the files: a newer version keeps every field of the older one
/// (same name, type, order) and only appends fields that have a default.
#[test]
fn versions_only_append_defaulted_fields() {
    let texts: Vec<&str> = RecordKind::EnrichedFlow
        .history()
        .iter()
        .copied()
        .chain([ENRICHED_FLOW_AVSC])
        .collect();
    for pair in texts.windows(2) {
        let old: serde_json::Value = serde_json::from_str(pair[0]).unwrap();
        let new: serde_json::Value = serde_json::from_str(pair[1]).unwrap();
        let (old, new) = (
            old["fields"].as_array().unwrap(),
            new["fields"].as_array().unwrap(),
        );
        assert!(new.len() > old.len());
        for (o, n) in old.iter().zip(new) {
            assert_eq!(o["name"], n["name"]);
            assert_eq!(o["type"], n["type"], "{}", o["name"]);
            assert_eq!(o.get("default"), n.get("default"), "{}", o["name"]);
        }
        for added in &new[old.len()..] {
            assert!(
                added.get("default").is_some(),
                "{} has no default",
                added["name"]
            );
        }
    }
    let (v1, v2) = (v1_schema(), v2_schema());
    assert!(
        SchemaCompatibility::can_read(&v1, &v2).is_ok(),
        "v2 reads v1"
    );
    assert!(
        SchemaCompatibility::can_read(&v2, &v1).is_ok(),
        "v1 reads v2"
    );
}

/// Newer reader, older record: today's `decode::<EnrichedFlow>` reads a version 1 message; the
/// fields version 2 added are `None`.
#[test]
fn newer_reader_reads_older_records() {
    let full = common::enriched_full();
    let old = EnrichedFlowV1::from(&full);
    let msg = v1_message(&old);
    assert_eq!(
        &msg[2..10],
        &[0xe4, 0xb6, 0x8f, 0x54, 0xf8, 0xef, 0x41, 0xe3]
    );

    let read: EnrichedFlow = decode(&msg).unwrap();
    let mut expected = full.clone();
    expected.src_pod_uid = None;
    expected.dst_pod_uid = None;
    expected.src_role = None;
    expected.dst_role = None;
    expected.locality = None;
    expected.if_pod = None;
    expected.if_namespace = None;
    assert_eq!(read, expected);
    assert_eq!(
        decode_any(&msg).unwrap(),
        AnyRecord::EnrichedFlow(expected.clone())
    );
    // A bare record too (nulls everywhere, extreme values).
    let bare = common::enriched_bare();
    let read: EnrichedFlow = decode(&v1_message(&EnrichedFlowV1::from(&bare))).unwrap();
    assert_eq!(read, bare);

    // Truncation and trailing bytes are still caught on the resolution path.
    for cut in 10..msg.len() {
        assert!(decode::<EnrichedFlow>(&msg[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = msg.clone();
    long.push(0);
    assert!(matches!(
        decode::<EnrichedFlow>(&long),
        Err(SchemaError::TrailingBytes { count: 1, .. })
    ));
}

/// Older reader, newer record: a consumer that only has the version 1 schema and struct reads
/// a version 2 message (it must know the v2 writer schema: deploy consumers first), through the
/// crate's `decode_with_reader` and through apache-avro's generic resolution alone.
#[test]
fn older_reader_reads_newer_records() {
    let full = common::enriched_full();
    let mut msg = Vec::new();
    encode(&full, &mut msg).unwrap();
    assert_eq!(&msg[2..10], &EnrichedFlow::fingerprint());

    let old: EnrichedFlowV1 = decode_with_reader(&msg, &v1_schema()).unwrap();
    assert_eq!(old, EnrichedFlowV1::from(&full));

    // Without this crate: writer v2 (looked up by fingerprint), reader v1.
    let value =
        apache_avro::from_avro_datum(&v2_schema(), &mut &msg[10..], Some(&v1_schema())).unwrap();
    let Value::Record(fields) = &value else {
        panic!("{value:?}")
    };
    assert_eq!(fields.len(), 35, "exactly the v1 fields");
    assert!(fields.iter().all(|(n, _)| n != "locality"));
    let from_generic: EnrichedFlowV1 = apache_avro::from_value(&value).unwrap();
    assert_eq!(from_generic, old);

    // And the current reader through the same API gets everything.
    let now: EnrichedFlow = decode_with_reader(&msg, &v2_schema()).unwrap();
    assert_eq!(now, full);
}

#[test]
fn unknown_versions_are_still_rejected() {
    let mut msg = Vec::new();
    encode(&common::enriched_full(), &mut msg).unwrap();
    msg[9] ^= 0xff;
    assert!(matches!(
        decode::<EnrichedFlow>(&msg),
        Err(SchemaError::UnknownFingerprint { .. })
    ));
    assert!(matches!(
        decode_with_reader::<EnrichedFlowV1>(&msg, &v1_schema()),
        Err(SchemaError::UnknownFingerprint { .. })
    ));
}
