//! The records of the test: good raw flows and interfaces, every hostile case, and the plan
//! that interleaves them over two partitions.

use super::*;

/// xorshift64*: reproducible random bytes without a dependency.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// Avro `long` as a zig-zag varint.
pub(crate) fn varint(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn header_of(fingerprint: [u8; 8]) -> Vec<u8> {
    let mut m = vec![0xC3, 0x01];
    m.extend_from_slice(&fingerprint);
    m
}

/// Now, in Unix nanoseconds: rows must be within the table's TTL.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub(crate) fn raw_flow(host: &str, n: i64) -> RawFlow {
    let now = now_ns();
    RawFlow {
        host: host.into(),
        ifindex: 100 + (n % 3) as i32,
        direction: Direction::Ingress,
        time_flow_start_ns: now - 2_000_000_000 + n,
        time_flow_end_ns: now - 1_000_000_000 + n,
        time_exported_ns: now + n,
        etype: 0x0800,
        proto: 17,
        src_addr: ip_to_v6("10.1.0.1".parse().unwrap()),
        dst_addr: ip_to_v6("10.1.0.2".parse().unwrap()),
        src_port: n as i32,
        dst_port: 53,
        packets: n + 1,
        bytes: 100 * (n + 1),
        sampling_rate: 1,
        ..Default::default()
    }
}

pub(crate) fn interface(host: &str, ifindex: i32) -> Interface {
    Interface {
        host: host.into(),
        ifindex,
        name: format!("hostile-if{ifindex}"),
        mac: "02:00:00:00:00:07".into(),
        mtu: 1500,
        kind: "veth".into(),
        netns: "pod-ns".into(),
        netns_inode: 4_026_532_000,
        oper_state: "up".into(),
        time_observed_ns: 1,
    }
}

pub(crate) fn encoded<R: AvroRecord + serde::Serialize>(r: &R) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(r, &mut buf).unwrap();
    buf
}

/// A bad record and the dead-letter header values it must come back with.
#[derive(Clone)]
pub(crate) struct Bad {
    pub(crate) name: &'static str,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    /// Text the reason must contain ("" = any non-empty reason).
    pub(crate) reason: String,
}

pub(crate) fn bad(
    name: &'static str,
    key: Option<&[u8]>,
    value: Option<Vec<u8>>,
    reason: &str,
) -> Bad {
    Bad {
        name,
        key: key.map(<[u8]>::to_vec),
        value,
        reason: reason.into(),
    }
}

/// Every hostile case of the issue and more, for a topic whose records are `kind`; `valid` is
/// one good message of that kind (its datum follows a forged fingerprint).
pub(crate) fn hostile_cases(kind: RecordKind, valid: &[u8], rng: &mut Rng) -> Vec<Bad> {
    let fp = kind.fingerprint();
    let huge = |length: i64| {
        let mut m = header_of(fp);
        varint(length, &mut m);
        m.extend_from_slice(b"node-1 and then some bytes");
        m
    };
    let mut unknown = header_of([1, 2, 3, 4, 5, 6, 7, 8]);
    unknown.extend_from_slice(&valid[10..]);
    let mut overlong = header_of(fp);
    overlong.extend_from_slice(&[0xff; 10]);
    overlong.push(0x01);
    let key = Some(&b"hostile-key"[..]);
    vec![
        bad("empty value", key, Some(Vec::new()), ""),
        bad("64 random bytes", None, Some(rng.bytes(64)), ""),
        bad(
            "unknown fingerprint",
            key,
            Some(unknown),
            "0102030405060708",
        ),
        bad(
            "header cut short",
            None,
            Some(header_of(fp)[..5].to_vec()),
            "",
        ),
        bad(
            "header without a body",
            key,
            Some(header_of(fp)),
            "truncated",
        ),
        bad(
            "a JSON object",
            None,
            Some(br#"{"host":"node-1","ifindex":7,"bytes":1500}"#.to_vec()),
            "C3 01",
        ),
        bad(
            "1,000,000 random bytes",
            key,
            Some(rng.bytes(1_000_000)),
            "",
        ),
        bad("300 bytes of 0xff", None, Some(vec![0xff; 300]), ""),
        bad("a null value", Some(&b"hostile-null"[..]), None, ""),
        bad(
            "length 2^62",
            key,
            Some(huge(1 << 62)),
            "4611686018427387904",
        ),
        bad(
            "length 500,000,000",
            None,
            Some(huge(500_000_000)),
            "500000000",
        ),
        bad(
            "length i64::MAX",
            key,
            Some(huge(i64::MAX)),
            "9223372036854775807",
        ),
        bad("an 11-byte varint", None, Some(overlong), ""),
        bad("1 MiB", key, Some(rng.bytes(1 << 20)), ""),
        bad("16 MiB", None, Some(rng.bytes(16 << 20)), ""),
        bad("64 MiB", key, Some(rng.bytes(64 << 20)), ""),
        bad(
            "a 999,000-byte key",
            Some(&rng.bytes(999_000)),
            Some(rng.bytes(64)),
            "",
        ),
    ]
}

/// A topic's records: good and bad interleaved over two partitions.
pub(crate) struct Plan {
    pub(crate) records: Vec<Outgoing>,
    /// Index in `records` of each bad case.
    pub(crate) bad: Vec<(usize, Bad)>,
    /// Offset of each record produced so far (delivery reports), in `records` order.
    pub(crate) offsets: Vec<i64>,
}

impl Plan {
    /// Produces the records `range` of the plan to `topic`, in order.
    pub(crate) async fn produce(
        &mut self,
        p: &FutureProducer,
        topic: &str,
        range: std::ops::Range<usize>,
    ) {
        assert_eq!(range.start, self.offsets.len(), "produced in order");
        let offsets = produce(p, topic, &self.records[range]).await;
        self.offsets.extend(offsets);
    }
}

/// The good records spread evenly around the bad ones (the first and the last one good).
pub(crate) fn interleave(
    good: Vec<Vec<u8>>,
    bad: Vec<Bad>,
    good_key: impl Fn(usize) -> Vec<u8>,
) -> Plan {
    let (g, b) = (good.len(), bad.len());
    // Good record i goes before bad record slot(i) (slot b: after the last bad one).
    let slot = |i: usize| {
        if g <= 1 {
            0
        } else {
            (i * b + (g - 1) / 2) / (g - 1)
        }
    };
    let mut plan = Plan {
        records: Vec::new(),
        bad: Vec::new(),
        offsets: Vec::new(),
    };
    let mut good = good.into_iter().enumerate().peekable();
    let mut bad = bad.into_iter();
    for j in 0..=b {
        while let Some((i, value)) = good.next_if(|(i, _)| slot(*i) == j) {
            let partition = (plan.records.len() % 2) as i32;
            plan.records
                .push((partition, Some(good_key(i)), Some(value)));
        }
        if let Some(case) = bad.next() {
            let partition = (plan.records.len() % 2) as i32;
            plan.records
                .push((partition, case.key.clone(), case.value.clone()));
            plan.bad.push((plan.records.len() - 1, case));
        }
    }
    plan
}
