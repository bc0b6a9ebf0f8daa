//! Schema evolution: every version only appended defaulted fields to the one before
//! (`avro/history/*.avsc`): `RawFlow` v1 → v2 → v3 → v4 (current), `EnrichedFlow` v1 → v2 → v3
//! → v4 → v5 (current).
//! Newer readers read older records, older readers read newer records, both through Avro
//! schema resolution by writer fingerprint, with this crate and with apache-avro's generic API.

mod common;

use std::fmt::Debug;
use std::net::Ipv6Addr;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectWriter, Schema};
use flowlens_schemas::{
    decode, decode_any, decode_with_reader, encode, AnyRecord, AvroRecord, Direction, EnrichedFlow,
    RawFlow, RecordKind, SchemaError, ENRICHED_FLOW_V1_AVSC, ENRICHED_FLOW_V2_AVSC,
    ENRICHED_FLOW_V3_AVSC, ENRICHED_FLOW_V4_AVSC, RAW_FLOW_V1_AVSC, RAW_FLOW_V2_AVSC,
    RAW_FLOW_V3_AVSC,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a consumer compiled against RawFlow version 1 has: the version 1 struct.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct RawFlowV1 {
    host: String,
    ifindex: i32,
    direction: Direction,
    time_flow_start_ns: i64,
    time_flow_end_ns: i64,
    time_exported_ns: i64,
    etype: i32,
    vlan_id: i32,
    proto: i32,
    #[serde(deserialize_with = "fixed16")]
    src_addr: Ipv6Addr,
    #[serde(deserialize_with = "fixed16")]
    dst_addr: Ipv6Addr,
    src_port: i32,
    dst_port: i32,
    icmp_type: i32,
    icmp_code: i32,
    tcp_flags: i32,
    packets: i64,
    bytes: i64,
    sampling_rate: i32,
}

/// What a consumer compiled against EnrichedFlow version 1 has: the RawFlow v1 fields, then
/// the interface and Kubernetes fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct EnrichedFlowV1 {
    #[serde(flatten)]
    raw: RawFlowV1,
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

/// What a consumer compiled against EnrichedFlow version 2 has.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct EnrichedFlowV2 {
    #[serde(flatten)]
    v1: EnrichedFlowV1,
    src_pod_uid: Option<String>,
    dst_pod_uid: Option<String>,
    src_role: Option<String>,
    dst_role: Option<String>,
    locality: Option<String>,
    if_pod: Option<String>,
    if_namespace: Option<String>,
}

fn fixed16<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Ipv6Addr, D::Error> {
    let o: [u8; 16] = apache_avro::serde_avro_fixed::deserialize(d)?;
    Ok(Ipv6Addr::from(o))
}

fn schema(avsc: &str) -> Schema {
    Schema::parse_str(avsc).unwrap()
}

fn fingerprint(avsc: &str) -> [u8; 8] {
    schema(avsc)
        .fingerprint::<apache_avro::rabin::Rabin>()
        .bytes
        .try_into()
        .unwrap()
}

/// The projection of `record` onto an older version: the fields that version has, as a value
/// of that schema (built from apache-avro's serde `to_value`, no binary decoding involved).
fn projection(record: &impl Serialize, old: &Schema) -> Value {
    let Schema::Record(r) = old else {
        panic!("not a record")
    };
    let Value::Record(fields) = apache_avro::to_value(record).unwrap() else {
        panic!("not a record");
    };
    let fields = fields
        .into_iter()
        .filter(|(name, _)| r.lookup.contains_key(name))
        .collect();
    Value::Record(fields).resolve(old).unwrap()
}

/// A message exactly as a producer of the older version wrote it (apache-avro's generic
/// writer, that version's schema): `record`'s projection.
fn old_message(record: &impl Serialize, old_avsc: &str) -> Vec<u8> {
    let old = schema(old_avsc);
    let mut w = GenericSingleObjectWriter::new_with_capacity(&old, 256).unwrap();
    let mut out = Vec::new();
    w.write_value(projection(record, &old), &mut out).unwrap();
    out
}

/// Every historic version: (kind, version, text, fingerprint in header byte order). The
/// fingerprints are what every producer of that version wrote into its headers: never change.
const HISTORY: [(RecordKind, u32, &str, &str); 7] = [
    (RecordKind::RawFlow, 1, RAW_FLOW_V1_AVSC, "909dc005034a79f3"),
    (RecordKind::RawFlow, 2, RAW_FLOW_V2_AVSC, "ac958de73512cd5c"),
    (RecordKind::RawFlow, 3, RAW_FLOW_V3_AVSC, "337ee20ca5e49dfb"),
    (
        RecordKind::EnrichedFlow,
        1,
        ENRICHED_FLOW_V1_AVSC,
        "e4b68f54f8ef41e3",
    ),
    (
        RecordKind::EnrichedFlow,
        2,
        ENRICHED_FLOW_V2_AVSC,
        "0150e744fe486736",
    ),
    (
        RecordKind::EnrichedFlow,
        3,
        ENRICHED_FLOW_V3_AVSC,
        "f4f3d2708b134f11",
    ),
    (
        RecordKind::EnrichedFlow,
        4,
        ENRICHED_FLOW_V4_AVSC,
        "e8818b81999eb897",
    ),
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn history_is_frozen_and_known() {
    for (kind, version, text, fp) in HISTORY {
        let found = fingerprint(text);
        assert_eq!(hex(&found), fp, "{kind:?} v{version}");
        assert_eq!(kind.history()[version as usize - 1], text);
        assert_eq!(RecordKind::of_any_version(found), Some(kind));
        assert_eq!(
            RecordKind::from_fingerprint(found),
            None,
            "not the current one"
        );
    }
    for kind in RecordKind::ALL {
        let writers: Vec<_> = RecordKind::known_writers()
            .filter(|w| w.0 == kind)
            .map(|w| (w.1, w.2))
            .collect();
        let mut expected: Vec<_> = HISTORY
            .iter()
            .filter(|h| h.0 == kind)
            .map(|h| (h.1, fingerprint(h.2)))
            .collect();
        expected.push((expected.len() as u32 + 1, kind.fingerprint()));
        assert_eq!(writers, expected, "{kind:?}");
    }
    assert_eq!(RecordKind::RawFlow.history().len(), 3);
    assert_eq!(RecordKind::EnrichedFlow.history().len(), 4);
    assert_eq!(RecordKind::Interface.history().len(), 0);
}

/// The evolution rule, checked on the files: a newer version keeps every field of the older one
/// (same name, type, default, order) and only appends fields that have a default; each reads
/// the other.
#[test]
fn versions_only_append_defaulted_fields() {
    for kind in RecordKind::ALL {
        let texts: Vec<&str> = kind
            .history()
            .iter()
            .copied()
            .chain([kind.avsc()])
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
                assert_eq!(o["name"], n["name"], "{kind:?}");
                assert_eq!(o["type"], n["type"], "{kind:?} {}", o["name"]);
                assert_eq!(o.get("default"), n.get("default"), "{kind:?} {}", o["name"]);
            }
            for added in &new[old.len()..] {
                assert!(
                    added.get("default").is_some(),
                    "{kind:?}: {} has no default",
                    added["name"]
                );
            }
            let (old, new) = (schema(pair[0]), schema(pair[1]));
            assert!(
                SchemaCompatibility::can_read(&old, &new).is_ok(),
                "{kind:?}: new reads old"
            );
            assert!(
                SchemaCompatibility::can_read(&new, &old).is_ok(),
                "{kind:?}: old reads new"
            );
        }
    }
}

/// Newer reader, older record: `full` written by a producer of the older version decodes with
/// today's `decode` into `expected` (the fields added since at their defaults), through
/// `decode_any` too; truncation and trailing bytes are still caught on the resolution path.
fn newer_reader_reads<R>(full: &R, old_avsc: &str, expected: &R, any: fn(R) -> AnyRecord)
where
    R: AvroRecord + Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let msg = old_message(full, old_avsc);
    assert_eq!(&msg[2..10], &fingerprint(old_avsc));
    assert_eq!(&decode::<R>(&msg).unwrap(), expected);
    assert_eq!(decode_any(&msg).unwrap(), any(expected.clone()));
    for cut in 10..msg.len() {
        assert!(decode::<R>(&msg[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = msg.clone();
    long.push(0);
    assert!(matches!(
        decode::<R>(&long),
        Err(SchemaError::TrailingBytes { count: 1, .. })
    ));
}

#[test]
fn newer_reader_reads_older_records() {
    // RawFlow v1 -> v2: a v1 record has no reverse counters, processes, ...: their defaults.
    // raw_conversation() is raw_v4() plus every field v2 added.
    let any_raw: fn(RawFlow) -> AnyRecord = AnyRecord::RawFlow;
    newer_reader_reads(
        &common::raw_conversation(),
        RAW_FLOW_V1_AVSC,
        &common::raw_v4(),
        any_raw,
    );
    newer_reader_reads(
        &common::raw_v6(),
        RAW_FLOW_V1_AVSC,
        &common::raw_v6(),
        any_raw,
    );
    // RawFlow v3 -> v4: a v3 record has no dns and no http.
    newer_reader_reads(
        &common::raw_conversation(),
        RAW_FLOW_V3_AVSC,
        &common::raw_conversation_v3(),
        any_raw,
    );
    // RawFlow v2 -> v4: a v2 record has no origin either.
    newer_reader_reads(
        &common::raw_conversation(),
        RAW_FLOW_V2_AVSC,
        &common::raw_conversation_v2(),
        any_raw,
    );

    // EnrichedFlow v4 -> v5: no dns, no http.
    let any_enriched: fn(EnrichedFlow) -> AnyRecord = AnyRecord::EnrichedFlow;
    let full = common::enriched_full();
    let v4_part = common::enriched(common::raw_conversation_v3());
    newer_reader_reads(&full, ENRICHED_FLOW_V4_AVSC, &v4_part, any_enriched);

    // EnrichedFlow v3 -> v5: no origin either.
    let v3_part = common::enriched(common::raw_conversation_v2());
    newer_reader_reads(&full, ENRICHED_FLOW_V3_AVSC, &v3_part, any_enriched);

    // EnrichedFlow v2 -> v5: the same for the RawFlow v2 fields EnrichedFlow v3 carries.
    let v2_part = common::enriched(common::raw_v4());
    newer_reader_reads(&full, ENRICHED_FLOW_V2_AVSC, &v2_part, any_enriched);

    // EnrichedFlow v1 -> v5: the fields version 2 added are `None` too.
    let mut v1_part = v2_part.clone();
    v1_part.src_pod_uid = None;
    v1_part.dst_pod_uid = None;
    v1_part.src_role = None;
    v1_part.dst_role = None;
    v1_part.locality = None;
    v1_part.if_pod = None;
    v1_part.if_namespace = None;
    newer_reader_reads(&full, ENRICHED_FLOW_V1_AVSC, &v1_part, any_enriched);

    // Bare records (nulls everywhere, extreme values) have nothing the older versions lack.
    let bare = common::enriched_bare();
    for old in [
        ENRICHED_FLOW_V1_AVSC,
        ENRICHED_FLOW_V2_AVSC,
        ENRICHED_FLOW_V3_AVSC,
        ENRICHED_FLOW_V4_AVSC,
    ] {
        newer_reader_reads(&bare, old, &bare, any_enriched);
    }
}

/// Older reader, newer record: a consumer that only has the older schema and struct `Old`
/// reads a message of the current version (it must know the current writer schema: deploy
/// consumers first), through the crate's `decode_with_reader` and through apache-avro's
/// generic resolution alone, and gets exactly the fields its version has.
fn older_reader_reads<R, Old>(record: &R, old_avsc: &str)
where
    R: AvroRecord + Serialize + DeserializeOwned + PartialEq + Debug,
    Old: DeserializeOwned + PartialEq + Debug,
{
    let mut msg = Vec::new();
    encode(record, &mut msg).unwrap();
    assert_eq!(&msg[2..10], &R::fingerprint());
    let old = schema(old_avsc);
    let expected = projection(record, &old);
    let expected_typed: Old = apache_avro::from_value(&expected).unwrap();

    let read: Old = decode_with_reader(&msg, &old).unwrap();
    assert_eq!(read, expected_typed);

    // Without this crate: writer = the current schema (looked up by fingerprint), reader = old.
    let value = apache_avro::from_avro_datum(R::schema(), &mut &msg[10..], Some(&old)).unwrap();
    assert_eq!(value, expected);
    let from_generic: Old = apache_avro::from_value(&value).unwrap();
    assert_eq!(from_generic, expected_typed);

    // And the current reader through the same API gets everything.
    let now: R = decode_with_reader(&msg, R::schema()).unwrap();
    assert_eq!(&now, record);
}

#[test]
fn older_reader_reads_newer_records() {
    for raw in [common::raw_conversation(), common::raw_v6()] {
        older_reader_reads::<_, RawFlowV1>(&raw, RAW_FLOW_V1_AVSC);
    }
    for e in [common::enriched_full(), common::enriched_bare()] {
        older_reader_reads::<_, EnrichedFlowV1>(&e, ENRICHED_FLOW_V1_AVSC);
        older_reader_reads::<_, EnrichedFlowV2>(&e, ENRICHED_FLOW_V2_AVSC);
    }
    // The projections are what each version has, field for field.
    let full = common::enriched_full();
    let mut msg = Vec::new();
    encode(&full, &mut msg).unwrap();
    for (old, fields) in [
        (ENRICHED_FLOW_V1_AVSC, 35),
        (ENRICHED_FLOW_V2_AVSC, 42),
        (ENRICHED_FLOW_V3_AVSC, 58),
        (ENRICHED_FLOW_V4_AVSC, 59),
    ] {
        let value = apache_avro::from_avro_datum(
            EnrichedFlow::schema(),
            &mut &msg[10..],
            Some(&schema(old)),
        )
        .unwrap();
        let Value::Record(f) = &value else {
            panic!("{value:?}")
        };
        assert_eq!(f.len(), fields);
        assert!(f.iter().all(|(n, _)| n != "dns" && n != "http"));
        if fields < 59 {
            assert!(f.iter().all(|(n, _)| n != "origin"));
        }
        if fields < 58 {
            assert!(f
                .iter()
                .all(|(n, _)| n != "reverse_bytes" && n != "duplicate"));
        }
    }
    // A RawFlow version 2 reader gets the 35 fields it has, without the origin.
    let mut raw = Vec::new();
    encode(&common::raw_conversation(), &mut raw).unwrap();
    let value = apache_avro::from_avro_datum(
        RawFlow::schema(),
        &mut &raw[10..],
        Some(&schema(RAW_FLOW_V2_AVSC)),
    )
    .unwrap();
    let Value::Record(f) = &value else {
        panic!("{value:?}")
    };
    assert_eq!(f.len(), 35);
    assert!(f.iter().all(|(n, _)| n != "origin"));
    // A RawFlow version 3 reader gets its 36 fields, without dns and http.
    let value = apache_avro::from_avro_datum(
        RawFlow::schema(),
        &mut &raw[10..],
        Some(&schema(RAW_FLOW_V3_AVSC)),
    )
    .unwrap();
    let Value::Record(f) = &value else {
        panic!("{value:?}")
    };
    assert_eq!(f.len(), 36);
    assert_eq!(f[35].0, "origin");
    let v1: RawFlowV1 = decode_with_reader(
        &{
            let mut m = Vec::new();
            encode(&common::raw_conversation(), &mut m).unwrap();
            m
        },
        &schema(RAW_FLOW_V1_AVSC),
    )
    .unwrap();
    assert_eq!((v1.packets, v1.bytes, v1.tcp_flags), (12, 1_514 * 12, 0x13));
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
        decode_with_reader::<EnrichedFlowV1>(&msg, &schema(ENRICHED_FLOW_V1_AVSC)),
        Err(SchemaError::UnknownFingerprint { .. })
    ));
    // A RawFlow message is not an EnrichedFlow of any version.
    let mut raw = Vec::new();
    encode(&common::raw_conversation(), &mut raw).unwrap();
    assert!(matches!(
        decode::<EnrichedFlow>(&raw),
        Err(SchemaError::WrongRecord { .. })
    ));
    let v1_raw = old_message(&common::raw_conversation(), RAW_FLOW_V1_AVSC);
    assert!(matches!(
        decode::<EnrichedFlow>(&v1_raw),
        Err(SchemaError::WrongRecord { .. })
    ));
}
