//! Hand-written Avro single-object encoder for `RawFlow`: the same bytes as
//! `flowlens_schemas::encode`, about ten times cheaper.
//!
//! apache-avro's generic writer walks the schema and serde per field (~0.5 µs per record); at
//! 1M flows per scan that was most of the collector's CPU (bench/results/collector.md). This
//! module writes the datum directly: zig-zag varints for int/long/enum index/union index,
//! length-prefixed UTF-8 for strings, raw bytes for the `IPv6Address` fixed, one byte for the
//! boolean, arrays as one block (count, items, 0), fields in schema order. It allocates nothing (it only appends to `out`).
//!
//! Safety net against schema drift:
//! * the writer destructures `RawFlow` without `..`, so a field added to the struct does not
//!   compile here until it is written;
//! * the hand-written path is used only while the embedded `raw_flow.avsc` has the fingerprint
//!   it was written for ([`WRITTEN_FOR`]); any other schema makes [`encode_raw_flow`] fall back to
//!   the generic encoder (correct, slower) and the test `written_for_the_current_schema` fail;
//! * tests compare the bytes with the generic encoder for random records and for one with every
//!   field non-default, and decode them with `flowlens_schemas::decode`.

use std::sync::LazyLock;

use flowlens_schemas::writer::{self, address, int, long, process, string};
use flowlens_schemas::{Direction, Dns, Http, Process, RawFlow, RecordKind, SchemaError};

/// Fingerprint (single-object header byte order) of the `raw_flow.avsc` this encoder writes:
/// RawFlow version 4. Change it only together with [`write_datum`].
pub const WRITTEN_FOR: [u8; 8] = [0x4e, 0x1f, 0xfa, 0x0c, 0x8a, 0xd1, 0x13, 0x4a];

/// The 10-byte single-object header, when the embedded schema is the one this encoder writes.
static HEADER: LazyLock<Option<[u8; 10]>> = LazyLock::new(|| {
    let header = writer::fast_header(RecordKind::RawFlow, WRITTEN_FOR);
    if header.is_none() {
        tracing::warn!(
            "raw_flow.avsc is not the version collector/src/encode.rs was written for: \
             using the generic (slower) Avro encoder"
        );
    }
    header
});

/// Whether [`encode_raw_flow`] takes the hand-written path (the embedded schema is [`WRITTEN_FOR`]).
pub fn is_fast() -> bool {
    HEADER.is_some()
}

/// Appends one single-object message for `flow` to `out`, byte-identical to
/// `flowlens_schemas::encode(flow, out)`. On error (generic fallback only) `out` is unchanged.
pub fn encode_raw_flow(flow: &RawFlow, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    match &*HEADER {
        Some(header) => {
            out.extend_from_slice(header);
            write_datum(flow, out);
            Ok(())
        }
        None => flowlens_schemas::encode(flow, out),
    }
}

/// Writes the Avro binary datum of `flow` (RawFlow v4, fields in schema order).
fn write_datum(flow: &RawFlow, out: &mut Vec<u8>) {
    // No `..`: a field added to RawFlow must be written here before this compiles.
    let RawFlow {
        host,
        ifindex,
        direction,
        time_flow_start_ns,
        time_flow_end_ns,
        time_exported_ns,
        etype,
        vlan_id,
        proto,
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        icmp_type,
        icmp_code,
        tcp_flags,
        packets,
        bytes,
        sampling_rate,
        reverse_packets,
        reverse_bytes,
        reverse_tcp_flags,
        end_reason,
        rtt_ns,
        retransmits,
        drops,
        drop_bytes,
        drop_reason,
        src_process,
        dst_process,
        tunnel,
        tunnel_id,
        outer_src_addr,
        outer_dst_addr,
        duplicate,
        origin,
        dns,
        http,
    } = flow;
    // At most 80 varints of at most 10 bytes, 4 addresses, the boolean, the strings' bytes and
    // the DNS and HTTP latencies.
    let comm_len = |p: &Option<Process>| p.as_ref().map_or(0, |p| p.comm.len());
    let dns_len = |d: &Option<Dns>| {
        d.as_ref().map_or(0, |d| {
            10 * d.latencies_us.len() + d.last_query.as_ref().map_or(0, String::len)
        })
    };
    let http_len = |h: &Option<Http>| {
        h.as_ref().map_or(0, |h| {
            10 * h.latencies_us.len()
                + h.last_method.as_ref().map_or(0, String::len)
                + h.last_path.as_ref().map_or(0, String::len)
        })
    };
    out.reserve(
        80 * 10
            + 4 * 16
            + 1
            + host.len()
            + end_reason.len()
            + drop_reason.len()
            + tunnel.len()
            + comm_len(src_process)
            + comm_len(dst_process)
            + dns_len(dns)
            + http_len(http),
    );
    string(out, host);
    int(out, *ifindex);
    int(
        out,
        match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        },
    );
    long(out, *time_flow_start_ns);
    long(out, *time_flow_end_ns);
    long(out, *time_exported_ns);
    int(out, *etype);
    int(out, *vlan_id);
    int(out, *proto);
    out.extend_from_slice(&src_addr.octets());
    out.extend_from_slice(&dst_addr.octets());
    int(out, *src_port);
    int(out, *dst_port);
    int(out, *icmp_type);
    int(out, *icmp_code);
    int(out, *tcp_flags);
    long(out, *packets);
    long(out, *bytes);
    int(out, *sampling_rate);
    long(out, *reverse_packets);
    long(out, *reverse_bytes);
    int(out, *reverse_tcp_flags);
    string(out, end_reason);
    long(out, *rtt_ns);
    long(out, *retransmits);
    long(out, *drops);
    long(out, *drop_bytes);
    string(out, drop_reason);
    process(out, src_process.as_ref());
    process(out, dst_process.as_ref());
    string(out, tunnel);
    long(out, *tunnel_id);
    for addr in [outer_src_addr, outer_dst_addr] {
        address(out, *addr);
    }
    out.push(u8::from(*duplicate));
    writer::origin(out, origin.as_ref());
    writer::dns(out, dns.as_ref());
    writer::http(out, http.as_ref());
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use flowlens_schemas::apache_avro::Schema;
    use flowlens_schemas::{decode, encode};

    use super::*;

    /// Hand-written message (header from the pinned fingerprint, whatever the schema says).
    fn fast(flow: &RawFlow) -> Vec<u8> {
        let mut out = vec![0xC3, 0x01];
        out.extend_from_slice(&WRITTEN_FOR);
        write_datum(flow, &mut out);
        out
    }

    fn generic(flow: &RawFlow) -> Vec<u8> {
        let mut out = Vec::new();
        encode(flow, &mut out).expect("generic encoder");
        out
    }

    fn assert_same(flow: &RawFlow) {
        let bytes = fast(flow);
        assert_eq!(
            bytes,
            generic(flow),
            "hand-written vs generic bytes for {flow:?}"
        );
        let back: RawFlow = decode(&bytes).expect("decodes");
        assert_eq!(&back, flow);
        let mut via_api = Vec::new();
        encode_raw_flow(flow, &mut via_api).unwrap();
        assert_eq!(via_api, bytes);
    }

    /// Every field set to something other than its default (and than zero), strings and
    /// optionals present: a schema change that the generic encoder sees but this one does not
    /// makes the bytes differ here.
    fn every_field_set() -> RawFlow {
        RawFlow {
            host: "nœud-1.example".into(),
            ifindex: 7,
            direction: Direction::Egress,
            time_flow_start_ns: 1_700_000_000_123_456_789,
            time_flow_end_ns: 1_700_000_001_123_456_789,
            time_exported_ns: 1_700_000_002_123_456_789,
            etype: 0x86DD,
            vlan_id: 100,
            proto: 6,
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            src_port: 43_210,
            dst_port: 443,
            icmp_type: 3,
            icmp_code: 4,
            tcp_flags: 0x1b,
            packets: 12,
            bytes: 3_456,
            sampling_rate: 10,
            reverse_packets: 9,
            reverse_bytes: 7_890,
            reverse_tcp_flags: 0x12,
            end_reason: "fin".into(),
            rtt_ns: 250_000,
            retransmits: 2,
            drops: 1,
            drop_bytes: 1_500,
            drop_reason: "NETFILTER_DROP".into(),
            src_process: Some(Process {
                pid: 4242,
                comm: "curl".into(),
                cgroup_id: 987_654,
            }),
            dst_process: Some(Process {
                pid: 77,
                comm: "nginx: wörker".into(),
                cgroup_id: 12,
            }),
            tunnel: "vxlan".into(),
            tunnel_id: 4_096,
            outer_src_addr: Some("::ffff:10.0.0.1".parse().unwrap()),
            outer_dst_addr: Some("::ffff:10.0.0.2".parse().unwrap()),
            duplicate: true,
            origin: Some(flowlens_schemas::Origin {
                topic: "flowlens.flows.raw".into(),
                stream: [0xab; 16],
                partition: 3,
                offset: 1 << 40,
            }),
            dns: Some(every_dns_field_set()),
            http: Some(every_http_field_set()),
        }
    }

    /// DNS statistics with every field non-default, latencies across varint lengths.
    fn every_dns_field_set() -> Dns {
        Dns {
            queries: 12,
            responses: 11,
            noerror: 6,
            nxdomain: 2,
            servfail: 1,
            refused: 1,
            other_rcode: 1,
            answered: 10,
            latency_sum_ns: 123_456_789,
            latency_max_ns: 98_765_432,
            latencies_us: vec![1, 63, 64, 8_191, 8_192, 98_765, 1 << 40, -1],
            last_query: Some("api.shop.svc.cluster.local".into()),
            last_query_type: 28,
        }
    }

    /// HTTP/1.x statistics with every field non-default, latencies across varint lengths.
    fn every_http_field_set() -> Http {
        Http {
            requests: 9,
            responses: 8,
            status_2xx: 4,
            status_3xx: 1,
            status_4xx: 1,
            status_5xx: 1,
            status_other: 1,
            answered: 7,
            latency_sum_ns: 234_567_891,
            latency_max_ns: 87_654_321,
            latencies_us: vec![1, 63, 64, 8_191, 8_192, 87_654, 1 << 40, -1],
            last_method: Some("POST".into()),
            last_path: Some("/api/v1/caf%C3%A9".into()),
            last_status: 503,
        }
    }

    #[test]
    fn written_for_the_current_schema() {
        assert_eq!(
            RecordKind::RawFlow.fingerprint(),
            WRITTEN_FOR,
            "schemas/avro/raw_flow.avsc changed: update collector/src/encode.rs (write_datum, \
             FIELDS, WRITTEN_FOR) to the new schema; until then the collector uses the generic encoder"
        );
        assert!(is_fast());
    }

    /// The fields `write_datum` writes, in order, with the Avro type it writes them as.
    const FIELDS: [(&str, &str); 38] = [
        ("host", "string"),
        ("ifindex", "int"),
        ("direction", "enum[INGRESS,EGRESS]"),
        ("time_flow_start_ns", "long"),
        ("time_flow_end_ns", "long"),
        ("time_exported_ns", "long"),
        ("etype", "int"),
        ("vlan_id", "int"),
        ("proto", "int"),
        ("src_addr", "fixed16"),
        ("dst_addr", "fixed16"),
        ("src_port", "int"),
        ("dst_port", "int"),
        ("icmp_type", "int"),
        ("icmp_code", "int"),
        ("tcp_flags", "int"),
        ("packets", "long"),
        ("bytes", "long"),
        ("sampling_rate", "int"),
        ("reverse_packets", "long"),
        ("reverse_bytes", "long"),
        ("reverse_tcp_flags", "int"),
        ("end_reason", "string"),
        ("rtt_ns", "long"),
        ("retransmits", "long"),
        ("drops", "long"),
        ("drop_bytes", "long"),
        ("drop_reason", "string"),
        (
            "src_process",
            "null|record{pid:int,comm:string,cgroup_id:long}",
        ),
        (
            "dst_process",
            "null|record{pid:int,comm:string,cgroup_id:long}",
        ),
        ("tunnel", "string"),
        ("tunnel_id", "long"),
        ("outer_src_addr", "null|fixed16"),
        ("outer_dst_addr", "null|fixed16"),
        ("duplicate", "boolean"),
        (
            "origin",
            "null|record{topic:string,stream:fixed16,partition:int,offset:long}",
        ),
        (
            "dns",
            "null|record{queries:long,responses:long,noerror:long,nxdomain:long,servfail:long,\
             refused:long,other_rcode:long,answered:long,latency_sum_ns:long,latency_max_ns:long,\
             latencies_us:array[long],last_query:null|string,last_query_type:int}",
        ),
        (
            "http",
            "null|record{requests:long,responses:long,status_2xx:long,status_3xx:long,\
             status_4xx:long,status_5xx:long,status_other:long,answered:long,latency_sum_ns:long,\
             latency_max_ns:long,latencies_us:array[long],last_method:null|string,\
             last_path:null|string,last_status:int}",
        ),
    ];

    /// A short type description of `s`, resolving references to named types defined earlier.
    fn describe(s: &Schema, named: &mut Vec<(String, String)>) -> String {
        match s {
            Schema::Null => "null".into(),
            Schema::Boolean => "boolean".into(),
            Schema::Int => "int".into(),
            Schema::Long => "long".into(),
            Schema::String => "string".into(),
            Schema::Enum(e) => {
                let d = format!("enum[{}]", e.symbols.join(","));
                named.push((e.name.fullname(None), d.clone()));
                d
            }
            Schema::Fixed(f) => {
                let d = format!("fixed{}", f.size);
                named.push((f.name.fullname(None), d.clone()));
                d
            }
            Schema::Record(r) => {
                let fields: Vec<String> = r
                    .fields
                    .iter()
                    .map(|f| format!("{}:{}", f.name, describe(&f.schema, named)))
                    .collect();
                let d = format!("record{{{}}}", fields.join(","));
                named.push((r.name.fullname(None), d.clone()));
                d
            }
            Schema::Array(a) => format!("array[{}]", describe(&a.items, named)),
            Schema::Union(u) => u
                .variants()
                .iter()
                .map(|v| describe(v, named))
                .collect::<Vec<_>>()
                .join("|"),
            Schema::Ref { name } => {
                let full = name.fullname(None);
                named
                    .iter()
                    .find(|(n, _)| *n == full)
                    .map_or_else(|| format!("unresolved {full}"), |(_, d)| d.clone())
            }
            other => format!("{other:?}"),
        }
    }

    /// Names the first field where the schema and this encoder part ways (a clearer message
    /// than differing bytes).
    #[test]
    fn fields_match_schema() {
        let Schema::Record(record) = RecordKind::RawFlow.schema() else {
            panic!("RawFlow is a record");
        };
        let mut named = Vec::new();
        let schema: Vec<(String, String)> = record
            .fields
            .iter()
            .map(|f| (f.name.clone(), describe(&f.schema, &mut named)))
            .collect();
        let written: Vec<(String, String)> = FIELDS
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(
            written, schema,
            "encode.rs writes these fields; raw_flow.avsc has those"
        );
    }

    #[test]
    fn every_field_set_matches_generic() {
        let flow = every_field_set();
        assert_same(&flow);
        // Each field really is non-default (so each one is compared).
        let d = RawFlow::default();
        let differs = [
            flow.host != d.host,
            flow.ifindex != d.ifindex,
            flow.direction != d.direction,
            flow.time_flow_start_ns != d.time_flow_start_ns,
            flow.time_flow_end_ns != d.time_flow_end_ns,
            flow.time_exported_ns != d.time_exported_ns,
            flow.etype != d.etype,
            flow.vlan_id != d.vlan_id,
            flow.proto != d.proto,
            flow.src_addr != d.src_addr,
            flow.dst_addr != d.dst_addr,
            flow.src_port != d.src_port,
            flow.dst_port != d.dst_port,
            flow.icmp_type != d.icmp_type,
            flow.icmp_code != d.icmp_code,
            flow.tcp_flags != d.tcp_flags,
            flow.packets != d.packets,
            flow.bytes != d.bytes,
            flow.sampling_rate != d.sampling_rate,
            flow.reverse_packets != d.reverse_packets,
            flow.reverse_bytes != d.reverse_bytes,
            flow.reverse_tcp_flags != d.reverse_tcp_flags,
            flow.end_reason != d.end_reason,
            flow.rtt_ns != d.rtt_ns,
            flow.retransmits != d.retransmits,
            flow.drops != d.drops,
            flow.drop_bytes != d.drop_bytes,
            flow.drop_reason != d.drop_reason,
            flow.src_process != d.src_process,
            flow.dst_process != d.dst_process,
            flow.tunnel != d.tunnel,
            flow.tunnel_id != d.tunnel_id,
            flow.outer_src_addr != d.outer_src_addr,
            flow.outer_dst_addr != d.outer_dst_addr,
            flow.duplicate != d.duplicate,
            flow.origin != d.origin,
            flow.dns != d.dns,
            flow.http != d.http,
        ];
        assert_eq!(differs.len(), FIELDS.len());
        assert!(differs.iter().all(|d| *d), "{differs:?}");
    }

    #[test]
    fn defaults_and_extremes_match_generic() {
        assert_same(&RawFlow::default());
        let mut f = every_field_set();
        for (i32v, i64v) in [
            (i32::MIN, i64::MIN),
            (i32::MAX, i64::MAX),
            (-1, -1),
            (0, 0),
            (63, 63),
            (-64, -64),
            (64, 64),
            (-65, -65),
        ] {
            f.ifindex = i32v;
            f.etype = i32v;
            f.sampling_rate = i32v;
            f.reverse_tcp_flags = i32v;
            f.packets = i64v;
            f.time_flow_start_ns = i64v;
            f.tunnel_id = i64v;
            f.src_process.as_mut().unwrap().pid = i32v;
            f.dst_process.as_mut().unwrap().cgroup_id = i64v;
            assert_same(&f);
        }
        let dns = f.dns.as_mut().unwrap();
        dns.queries = i64::MIN;
        dns.latency_max_ns = i64::MAX;
        dns.last_query_type = i32::MIN;
        assert_same(&f);
        let http = f.http.as_mut().unwrap();
        http.requests = i64::MIN;
        http.latency_max_ns = i64::MAX;
        http.last_status = i32::MIN;
        assert_same(&f);
        f.host = "x".repeat(300); // length varint of two bytes
        f.src_addr = Ipv6Addr::from([0xff; 16]);
        f.src_process = None;
        f.outer_dst_addr = None;
        assert_same(&f);
    }

    /// `dns` null, present with every field set, present and empty (no latencies: the array is
    /// its closing 0 alone; no query name), with a full array of 64 latencies and a 253-byte
    /// name: the same bytes as apache-avro's writer each time.
    #[test]
    fn dns_none_and_some_match_generic() {
        let mut f = every_field_set();
        f.dns = None;
        f.http = None;
        assert_same(&f);
        // Null is the union index 0 alone: dns's and http's, the datum's last two bytes.
        assert_eq!(fast(&f)[fast(&f).len() - 2..], [0, 0]);
        f.dns = Some(every_dns_field_set());
        assert_same(&f);
        f.dns = Some(Dns::default());
        assert_same(&f);
        f.dns = Some(Dns {
            latencies_us: (0..64).map(|i| i * 997).collect(),
            last_query: Some(format!("{}.example", "a".repeat(245))),
            ..every_dns_field_set()
        });
        assert_eq!(
            f.dns.as_ref().unwrap().last_query.as_ref().unwrap().len(),
            253
        );
        assert_same(&f);
        assert_same(&RawFlow {
            dns: Some(every_dns_field_set()),
            ..RawFlow::default()
        });
    }

    /// `http` null, present with every field set, present and empty, with a full array of 64
    /// latencies and a 128-byte path, and with dns beside it: the same bytes as apache-avro's
    /// writer each time.
    #[test]
    fn http_none_and_some_match_generic() {
        let mut f = every_field_set();
        f.http = None;
        assert_same(&f);
        assert_eq!(fast(&f).last(), Some(&0));
        f.http = Some(Http::default());
        assert_same(&f);
        f.http = Some(Http {
            latencies_us: (0..64).map(|i| i * 997).collect(),
            last_path: Some(format!("/{}", "p".repeat(127))),
            ..every_http_field_set()
        });
        assert_same(&f);
        f.dns = None;
        assert_same(&f);
        assert_same(&RawFlow {
            http: Some(every_http_field_set()),
            ..RawFlow::default()
        });
    }

    /// splitmix64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Any i64, biased towards the varint length boundaries and small magnitudes.
        fn i64(&mut self) -> i64 {
            let v = self.next() as i64;
            match self.next() % 4 {
                0 => v,
                1 => v >> (self.next() % 64),
                2 => (v % 200) - 100,
                _ => [i64::MIN, i64::MAX, 0, -1, 1 << 62, -(1 << 62)][(self.next() % 6) as usize],
            }
        }

        fn i32(&mut self) -> i32 {
            match self.next() % 3 {
                0 => self.next() as i32,
                1 => (self.next() as i32) >> (self.next() % 32),
                _ => [i32::MIN, i32::MAX, 0, -1, 64, -65][(self.next() % 6) as usize],
            }
        }

        fn bool(&mut self) -> bool {
            self.next() & 1 == 1
        }

        fn string(&mut self) -> String {
            const PIECES: [&str; 10] = [
                "",
                "a",
                "node-7",
                "ü",
                "节点",
                "🦀",
                "\u{0}",
                "NETFILTER_DROP",
                "é\u{301}",
                "x y",
            ];
            let n = (self.next() % 6) as usize;
            let mut s: String = (0..n)
                .map(|_| PIECES[(self.next() % PIECES.len() as u64) as usize])
                .collect();
            if self.next().is_multiple_of(16) {
                s.push_str(&"long".repeat(50)); // 200+ bytes: two-byte length
            }
            s
        }

        fn addr(&mut self) -> Ipv6Addr {
            let raw = (u128::from(self.next()) << 64) | u128::from(self.next());
            if self.bool() {
                Ipv6Addr::from(raw)
            } else {
                std::net::Ipv4Addr::from(raw as u32).to_ipv6_mapped()
            }
        }

        fn process(&mut self) -> Option<Process> {
            self.bool().then(|| Process {
                pid: self.i32(),
                comm: self.string(),
                cgroup_id: self.i64(),
            })
        }

        fn flow(&mut self) -> RawFlow {
            RawFlow {
                host: self.string(),
                ifindex: self.i32(),
                direction: if self.bool() {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                time_flow_start_ns: self.i64(),
                time_flow_end_ns: self.i64(),
                time_exported_ns: self.i64(),
                etype: self.i32(),
                vlan_id: self.i32(),
                proto: self.i32(),
                src_addr: self.addr(),
                dst_addr: self.addr(),
                src_port: self.i32(),
                dst_port: self.i32(),
                icmp_type: self.i32(),
                icmp_code: self.i32(),
                tcp_flags: self.i32(),
                packets: self.i64(),
                bytes: self.i64(),
                sampling_rate: self.i32(),
                reverse_packets: self.i64(),
                reverse_bytes: self.i64(),
                reverse_tcp_flags: self.i32(),
                end_reason: self.string(),
                rtt_ns: self.i64(),
                retransmits: self.i64(),
                drops: self.i64(),
                drop_bytes: self.i64(),
                drop_reason: self.string(),
                src_process: self.process(),
                dst_process: self.process(),
                tunnel: self.string(),
                tunnel_id: self.i64(),
                outer_src_addr: self.bool().then(|| self.addr()),
                outer_dst_addr: self.bool().then(|| self.addr()),
                duplicate: self.bool(),
                origin: self.bool().then(|| flowlens_schemas::Origin {
                    topic: self.string(),
                    stream: [self.i32() as u8; 16],
                    partition: self.i32(),
                    offset: self.i64(),
                }),
                dns: self.bool().then(|| self.dns()),
                http: self.bool().then(|| self.http()),
            }
        }

        fn dns(&mut self) -> Dns {
            let latencies = (self.next() % 66) as usize;
            Dns {
                queries: self.i64(),
                responses: self.i64(),
                noerror: self.i64(),
                nxdomain: self.i64(),
                servfail: self.i64(),
                refused: self.i64(),
                other_rcode: self.i64(),
                answered: self.i64(),
                latency_sum_ns: self.i64(),
                latency_max_ns: self.i64(),
                latencies_us: (0..latencies).map(|_| self.i64()).collect(),
                last_query: self.bool().then(|| self.string()),
                last_query_type: self.i32(),
            }
        }

        fn http(&mut self) -> Http {
            let latencies = (self.next() % 66) as usize;
            Http {
                requests: self.i64(),
                responses: self.i64(),
                status_2xx: self.i64(),
                status_3xx: self.i64(),
                status_4xx: self.i64(),
                status_5xx: self.i64(),
                status_other: self.i64(),
                answered: self.i64(),
                latency_sum_ns: self.i64(),
                latency_max_ns: self.i64(),
                latencies_us: (0..latencies).map(|_| self.i64()).collect(),
                last_method: self.bool().then(|| self.string()),
                last_path: self.bool().then(|| self.string()),
                last_status: self.i32(),
            }
        }
    }

    #[test]
    fn random_records_match_generic() {
        let mut rng = Rng(0x5eed_f10e);
        for _ in 0..5_000 {
            assert_same(&rng.flow());
        }
    }

    #[test]
    fn appends_after_existing_bytes() {
        let flow = every_field_set();
        let mut out = b"prefix".to_vec();
        encode_raw_flow(&flow, &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out[6..], generic(&flow));
    }
}
