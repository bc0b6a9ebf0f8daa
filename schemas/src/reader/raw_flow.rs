//! RawFlow decoding for the pipeline: a hand-written reader for the known writer versions, with
//! `crate::decode` (apache-avro) as the fallback and the judge.
//!
//! apache-avro builds a `Value` tree and then deserializes it: ~5 µs per RawFlow, most of the
//! enricher's CPU per record (bench/results/enricher.md). This reader goes straight from the
//! datum to a `RawFlow` (one allocation, the host name, plus any non-empty newer string or
//! array). It knows RawFlow versions 1 (19 fields), 2 (35), 3 (36) and 4 (38) and takes a writer
//! whose field names and kinds are exactly the current schema's first 19, 35, 36 or 38 (checked
//! once per writer
//! fingerprint, [`super::WriterPlans`]); fields a version lacks keep `RawFlow::default()`,
//! which are the schema defaults (checked too). Anything it does not accept exactly — an
//! unknown fingerprint, truncation, trailing bytes, invalid UTF-8, an int or enum index out of
//! range — goes to apache-avro, which decodes or words the error for the dead-letter header.
//! `fast_path_matches_apache_avro` checks both give the same record on random records of every
//! version and that the fast path declines whatever apache-avro rejects.

use std::sync::OnceLock;

use super::{dns, field_kinds, http, WriterPlans};
use crate::binary::{Kind, Reader};
use crate::{Direction, Origin, Process, RawFlow, RecordKind, SchemaError};

/// Fields of RawFlow version 1; version 2 has `V2_FIELDS`, version 3 `V3_FIELDS`, version 4
/// `V4_FIELDS`.
const V1_FIELDS: usize = 19;
const V2_FIELDS: usize = 35;
const V3_FIELDS: usize = 36;
const V4_FIELDS: usize = 38;

/// Decodes one Kafka payload holding a RawFlow of any known version.
pub fn raw_flow(payload: &[u8]) -> Result<RawFlow, SchemaError> {
    match fast(payload) {
        Some(flow) => Ok(flow),
        None => crate::decode::<RawFlow>(payload),
    }
}

/// How many fields the payload's writer has, and its datum, if the fast path reads it.
fn datum(payload: &[u8]) -> Option<(usize, &[u8])> {
    static WRITERS: OnceLock<WriterPlans<usize>> = OnceLock::new();
    let writers = WRITERS.get_or_init(|| {
        WriterPlans::new(RecordKind::RawFlow, |writer, current| {
            readable(&field_kinds(writer), &field_kinds(current))
        })
    });
    writers
        .datum(payload)
        .map(|(fields, datum)| (*fields, datum))
}

/// The writer's field count if the fast path can read it: the current schema has the layout
/// `fast` reads (38 fields whose defaults past the 19th are zero values), and the writer's
/// fields are its first 19, 35, 36 or 38, same names and kinds.
fn readable(writer: &[(String, Kind, bool)], current: &[(String, Kind, bool)]) -> Option<usize> {
    let layout_known = current.len() == V4_FIELDS && current[V1_FIELDS..].iter().all(|f| f.2);
    let prefix = writer.len() <= current.len()
        && writer
            .iter()
            .zip(current)
            .all(|(w, c)| w.0 == c.0 && w.1 == c.1);
    let versions = [V1_FIELDS, V2_FIELDS, V3_FIELDS, V4_FIELDS];
    (layout_known && prefix && versions.contains(&writer.len())).then_some(writer.len())
}

fn process(r: &mut Reader<'_>) -> Option<Option<Process>> {
    Some(if r.present()? {
        Some(Process {
            pid: r.int()?,
            comm: r.str()?.to_owned(),
            cgroup_id: r.long()?,
        })
    } else {
        None
    })
}

fn address(r: &mut Reader<'_>) -> Option<Option<std::net::Ipv6Addr>> {
    Some(if r.present()? { Some(r.addr()?) } else { None })
}

fn origin(r: &mut Reader<'_>) -> Option<Option<Origin>> {
    Some(if r.present()? {
        Some(Origin {
            topic: r.str()?.to_owned(),
            stream: r.bytes(16)?.try_into().ok()?,
            partition: r.int()?,
            offset: r.long()?,
        })
    } else {
        None
    })
}

/// The fast path: `None` for anything it does not read exactly (see the module docs).
fn fast(payload: &[u8]) -> Option<RawFlow> {
    let (fields, datum) = datum(payload)?;
    let mut r = Reader::new(datum);
    // Field by field in schema order (struct expressions evaluate in source order).
    let mut flow = RawFlow {
        host: r.str()?.to_owned(),
        ifindex: r.int()?,
        direction: match r.long()? {
            0 => Direction::Ingress,
            1 => Direction::Egress,
            _ => return None,
        },
        time_flow_start_ns: r.long()?,
        time_flow_end_ns: r.long()?,
        time_exported_ns: r.long()?,
        etype: r.int()?,
        vlan_id: r.int()?,
        proto: r.int()?,
        src_addr: r.addr()?,
        dst_addr: r.addr()?,
        src_port: r.int()?,
        dst_port: r.int()?,
        icmp_type: r.int()?,
        icmp_code: r.int()?,
        tcp_flags: r.int()?,
        packets: r.long()?,
        bytes: r.long()?,
        sampling_rate: r.int()?,
        ..RawFlow::default()
    };
    if fields >= V2_FIELDS {
        flow.reverse_packets = r.long()?;
        flow.reverse_bytes = r.long()?;
        flow.reverse_tcp_flags = r.int()?;
        flow.end_reason = r.str()?.to_owned();
        flow.rtt_ns = r.long()?;
        flow.retransmits = r.long()?;
        flow.drops = r.long()?;
        flow.drop_bytes = r.long()?;
        flow.drop_reason = r.str()?.to_owned();
        flow.src_process = process(&mut r)?;
        flow.dst_process = process(&mut r)?;
        flow.tunnel = r.str()?.to_owned();
        flow.tunnel_id = r.long()?;
        flow.outer_src_addr = address(&mut r)?;
        flow.outer_dst_addr = address(&mut r)?;
        flow.duplicate = r.bool()?;
    }
    if fields >= V3_FIELDS {
        flow.origin = origin(&mut r)?;
    }
    if fields >= V4_FIELDS {
        flow.dns = dns(&mut r)?;
        flow.http = http(&mut r)?;
    }
    // One message is exactly one datum.
    r.rest().is_empty().then_some(flow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apache_avro::{types::Value, GenericSingleObjectWriter, Schema};
    use crate::{
        ip_to_v6, Dns, Http, HEADER_LEN, RAW_FLOW_V1_AVSC, RAW_FLOW_V2_AVSC, RAW_FLOW_V3_AVSC,
    };

    /// xorshift64*: reproducible random records without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Small, boundary or any value, equally often.
        fn long(&mut self) -> i64 {
            match self.next() % 3 {
                0 => (self.next() % 300) as i64 - 150,
                1 => [0, 1, -1, 63, 64, 127, 128, i64::MAX, i64::MIN][(self.next() % 9) as usize],
                _ => self.next() as i64,
            }
        }

        fn coin(&mut self) -> bool {
            self.next() >> 63 == 0
        }

        fn int(&mut self) -> i32 {
            self.long() as i32
        }

        fn string(&mut self) -> String {
            let words = [
                "",
                "node-1",
                "ünï",
                "fin",
                "NETFILTER_DROP",
                "vxlan",
                "x".repeat(200).leak(),
            ];
            words[(self.next() % words.len() as u64) as usize].to_owned()
        }

        fn addr(&mut self) -> std::net::Ipv6Addr {
            if self.coin() {
                ip_to_v6(std::net::Ipv4Addr::from(self.next() as u32).into())
            } else {
                std::net::Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next()))
            }
        }

        fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            self.coin().then(|| f(self))
        }

        fn raw(&mut self) -> RawFlow {
            RawFlow {
                host: self.string(),
                ifindex: self.int(),
                direction: if self.coin() {
                    Direction::Ingress
                } else {
                    Direction::Egress
                },
                time_flow_start_ns: self.long(),
                time_flow_end_ns: self.long(),
                time_exported_ns: self.long(),
                etype: self.int(),
                vlan_id: self.int(),
                proto: self.int(),
                src_addr: self.addr(),
                dst_addr: self.addr(),
                src_port: self.int(),
                dst_port: self.int(),
                icmp_type: self.int(),
                icmp_code: self.int(),
                tcp_flags: self.int(),
                packets: self.long(),
                bytes: self.long(),
                sampling_rate: self.int(),
                reverse_packets: self.long(),
                reverse_bytes: self.long(),
                reverse_tcp_flags: self.int(),
                end_reason: self.string(),
                rtt_ns: self.long(),
                retransmits: self.long(),
                drops: self.long(),
                drop_bytes: self.long(),
                drop_reason: self.string(),
                src_process: self.maybe(|r| Process {
                    pid: r.int(),
                    comm: r.string(),
                    cgroup_id: r.long(),
                }),
                dst_process: self.maybe(|r| Process {
                    pid: r.int(),
                    comm: r.string(),
                    cgroup_id: r.long(),
                }),
                tunnel: self.string(),
                tunnel_id: self.long(),
                outer_src_addr: self.maybe(Rng::addr),
                outer_dst_addr: self.maybe(Rng::addr),
                duplicate: self.coin(),
                origin: self.maybe(|r| Origin {
                    topic: r.string(),
                    stream: std::array::from_fn(|_| r.next() as u8),
                    partition: r.int(),
                    offset: r.long(),
                }),
                dns: self.maybe(Rng::dns),
                http: self.maybe(Rng::http),
            }
        }

        fn dns(&mut self) -> Dns {
            let answered = self.next() % 70;
            Dns {
                queries: self.long(),
                responses: self.long(),
                noerror: self.long(),
                nxdomain: self.long(),
                servfail: self.long(),
                refused: self.long(),
                other_rcode: self.long(),
                answered: answered as i64,
                latency_sum_ns: self.long(),
                latency_max_ns: self.long(),
                latencies_us: (0..answered.min(64)).map(|_| self.long()).collect(),
                last_query: self.maybe(Rng::string),
                last_query_type: self.int(),
            }
        }

        fn http(&mut self) -> Http {
            let answered = self.next() % 70;
            Http {
                requests: self.long(),
                responses: self.long(),
                status_2xx: self.long(),
                status_3xx: self.long(),
                status_4xx: self.long(),
                status_5xx: self.long(),
                status_other: self.long(),
                answered: answered as i64,
                latency_sum_ns: self.long(),
                latency_max_ns: self.long(),
                latencies_us: (0..answered.min(64)).map(|_| self.long()).collect(),
                last_method: self.maybe(Rng::string),
                last_path: self.maybe(Rng::string),
                last_status: self.int(),
            }
        }
    }

    /// `f` as a version 1 producer wrote it (apache-avro's generic writer, v1 schema: the
    /// fields version 1 has).
    fn v1(f: &RawFlow) -> Vec<u8> {
        older(f, RAW_FLOW_V1_AVSC)
    }

    /// `f` as a producer of the version with schema `avsc` wrote it.
    fn older(f: &RawFlow, avsc: &str) -> Vec<u8> {
        let v1 = Schema::parse_str(avsc).unwrap();
        let Schema::Record(record) = &v1 else {
            panic!("not a record")
        };
        let Value::Record(fields) = crate::apache_avro::to_value(f).unwrap() else {
            panic!("not a record")
        };
        let fields = fields
            .into_iter()
            .filter(|(n, _)| record.lookup.contains_key(n))
            .collect();
        let mut w = GenericSingleObjectWriter::new_with_capacity(&v1, 128).unwrap();
        let mut out = Vec::new();
        w.write_value(Value::Record(fields).resolve(&v1).unwrap(), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn fast_path_matches_apache_avro() {
        let header = [&crate::MAGIC[..], &RecordKind::RawFlow.fingerprint()].concat();
        assert_eq!(datum(&header).map(|d| d.0), Some(V4_FIELDS));
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for i in 0..3_000 {
            let f = rng.raw();
            let mut v4 = Vec::new();
            crate::encode(&f, &mut v4).unwrap();
            let v3 = older(&f, RAW_FLOW_V3_AVSC);
            assert_eq!(datum(&v3).map(|d| d.0), Some(V3_FIELDS));
            let v2 = older(&f, RAW_FLOW_V2_AVSC);
            assert_eq!(datum(&v2).map(|d| d.0), Some(V2_FIELDS));
            let v1 = v1(&f);
            assert_eq!(datum(&v1).map(|d| d.0), Some(V1_FIELDS));
            for (msg, version) in [(&v4, 4), (&v3, 3), (&v2, 2), (&v1, 1)] {
                // apache-avro is the judge (schemas/tests/evolution.rs checks what it makes of
                // an older record: the fields added since at their defaults).
                let generic: RawFlow = crate::decode(msg).unwrap();
                if version == 4 {
                    assert_eq!(generic, f, "record {i}");
                } else if version == 3 {
                    let without = RawFlow {
                        dns: None,
                        http: None,
                        ..f.clone()
                    };
                    assert_eq!(generic, without, "record {i}");
                } else if version == 2 {
                    let without = RawFlow {
                        origin: None,
                        dns: None,
                        http: None,
                        ..f.clone()
                    };
                    assert_eq!(generic, without, "record {i}");
                } else {
                    assert_eq!(
                        (generic.host.as_str(), generic.bytes),
                        (f.host.as_str(), f.bytes)
                    );
                    assert_eq!((generic.reverse_bytes, &generic.src_process), (0, &None));
                }
                assert_eq!(fast(msg).as_ref(), Some(&generic), "record {i} v{version}");
                assert_eq!(raw_flow(msg).unwrap(), generic);
                // Cut anywhere, or with a byte more: both decline.
                let cut = (rng.next() as usize) % msg.len();
                assert!(fast(&msg[..cut]).is_none(), "record {i} cut at {cut}");
                assert!(raw_flow(&msg[..cut]).is_err());
                let mut long = msg.clone();
                long.push(0);
                assert!(fast(&long).is_none());
                assert!(raw_flow(&long).is_err());
            }
        }
    }

    /// Corrupted messages: whatever apache-avro rejects, the fast path declines too; whatever
    /// the fast path accepts, apache-avro reads the same.
    #[test]
    fn corrupt_input_is_never_accepted_differently() {
        let mut rng = Rng(7);
        for _ in 0..3_000 {
            let mut msg = Vec::new();
            crate::encode(&rng.raw(), &mut msg).unwrap();
            let at = HEADER_LEN + (rng.next() as usize) % (msg.len() - HEADER_LEN);
            msg[at] = rng.next() as u8;
            let generic = crate::decode::<RawFlow>(&msg);
            match fast(&msg) {
                Some(f) => assert_eq!(generic.as_ref().ok(), Some(&f)),
                None => assert_eq!(raw_flow(&msg).ok(), generic.ok()),
            }
        }
        // Another record type, an unknown fingerprint, garbage: the fallback's errors.
        let mut other = Vec::new();
        crate::encode(&rng.raw(), &mut other).unwrap();
        other[5] ^= 0xff;
        assert!(fast(&other).is_none());
        assert!(matches!(
            raw_flow(&other),
            Err(SchemaError::UnknownFingerprint { .. })
        ));
        assert!(raw_flow(b"\xC3\x01garbage").is_err());
        assert!(raw_flow(b"").is_err());
    }
}
