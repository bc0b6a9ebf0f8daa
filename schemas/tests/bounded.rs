//! Hostile lengths: a string length (or array item count) anywhere up to 2^62 in an otherwise valid message (known
//! fingerprint, every writer version) ends as a clean error, and decoding it never holds more
//! memory than a small multiple of the message's size. The oracle is the allocator itself: this
//! test binary counts every byte the decoding thread holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flowlens_schemas::apache_avro::Schema;
use flowlens_schemas::{
    decode_any, decode_with_reader, encode, Dns, RawFlow, RecordKind, SchemaError, HEADER_LEN,
};

/// The system allocator, counting the bytes each thread holds and their peak.
struct Counting;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = HELD.try_with(|h| {
        let now = h.get() + n;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn sub(n: usize) {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size);
        sub(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak of the bytes held while `work` runs, above what was held before it.
fn peak_during<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = work();
    (out, PEAK.with(Cell::get) - base)
}

/// Avro `long` as a zig-zag varint.
fn varint(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A message of writer `fingerprint` whose first field (`host`, a string in every version)
/// claims `length` bytes, followed by `tail` bytes.
fn claiming(fingerprint: [u8; 8], length: i64, tail: usize) -> Vec<u8> {
    let mut m = vec![0xC3, 0x01];
    m.extend_from_slice(&fingerprint);
    varint(length, &mut m);
    m.extend(std::iter::repeat_n(b'a', tail));
    m
}

/// Lengths just below, at and far above apache-avro's own 512 MiB allocation cap.
const LENGTHS: [i64; 7] = [
    1 << 62,
    i64::MAX,
    (512 << 20) + 1,
    512 << 20,
    500_000_000,
    16 << 20,
    100_000,
];

#[test]
fn huge_lengths_are_clean_errors_within_the_message_size() {
    let mut checked = 0;
    // A warm-up decode builds the schemas' caches (allocated once per process, not per record).
    for (kind, _, fingerprint, _) in RecordKind::known_writers() {
        let _ = decode_any(&claiming(fingerprint, 1, 1));
        let _ =
            decode_with_reader::<serde_json::Value>(&claiming(fingerprint, 1, 1), kind.schema());
    }
    for (kind, version, fingerprint, _) in RecordKind::known_writers() {
        for length in LENGTHS {
            for tail in [0, 40] {
                let message = claiming(fingerprint, length, tail);
                // Memory held while decoding: a few KiB of schema walking and error text, and
                // never more than the message itself could justify.
                let bound = 16 * 1024 + 8 * message.len();
                let (result, peak) = peak_during(|| decode_any(&message));
                let err = result.expect_err("a length past the end cannot decode");
                assert!(
                    matches!(err, SchemaError::LengthPastEnd { .. }),
                    "{kind:?} v{version} length {length}: {err}"
                );
                assert!(
                    err.to_string().contains(&length.to_string()),
                    "the error names the length: {err}"
                );
                assert!(
                    peak <= bound,
                    "{kind:?} v{version} length {length}: {peak} bytes held decoding a {}-byte message",
                    message.len()
                );
                let (result, peak) = peak_during(|| {
                    decode_with_reader::<serde_json::Value>(&message, kind.schema())
                });
                assert!(result.is_err());
                assert!(peak <= bound, "{kind:?} v{version} resolved: {peak} bytes");
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        RecordKind::known_writers().count() * LENGTHS.len() * 2
    );
}

/// The same for an array's item count (`dns.latencies_us`, RawFlow version 4): apache-avro
/// reserves room for a block's items before reading them, so a count past the end is refused
/// first, written as a plain count or as a negative one followed by the block's byte size.
#[test]
fn huge_array_counts_are_clean_errors_within_the_message_size() {
    let flow = RawFlow {
        dns: Some(Dns::default()),
        ..RawFlow::default()
    };
    let mut valid = Vec::new();
    encode(&flow, &mut valid).unwrap();
    // The datum ends with the empty array (0), the null last_query (0), last_query_type (0)
    // and the null http (0).
    assert_eq!(valid[valid.len() - 4..], [0, 0, 0, 0]);
    let _ = decode_any(&valid);
    for length in LENGTHS {
        for negative in [false, true] {
            let mut message = valid[..valid.len() - 4].to_vec();
            if negative {
                varint(-length, &mut message);
                varint(8, &mut message);
            } else {
                varint(length, &mut message);
            }
            message.extend(std::iter::repeat_n(2u8, 40));
            let bound = 16 * 1024 + 8 * message.len();
            let (result, peak) = peak_during(|| decode_any(&message));
            let err = result.expect_err("a count past the end cannot decode");
            assert!(
                matches!(err, SchemaError::LengthPastEnd { claimed, .. } if claimed == length as u64),
                "count {length} (negative: {negative}): {err}"
            );
            assert!(peak <= bound, "count {length}: {peak} bytes held");
        }
    }
    // A count within the bytes left decodes (4000 latencies of 1 µs): apache-avro holds a
    // `Value` per item, tens of bytes for each byte of the message, still a fixed multiple.
    let mut message = valid[..valid.len() - 4].to_vec();
    varint(4_000, &mut message);
    message.extend(std::iter::repeat_n(2u8, 4_000));
    message.extend([0, 0, 0, 0]);
    let (result, peak) = peak_during(|| decode_any(&message));
    assert!(result.is_ok(), "{result:?}");
    assert!(
        peak <= 16 * 1024 + 64 * message.len(),
        "{peak} bytes held for a {}-byte message",
        message.len()
    );
}

/// A varint longer than 64 bits as the length: an error, not a wrap-around to a small length.
#[test]
fn overlong_length_varint_is_an_error() {
    let fingerprint = RecordKind::RawFlow.fingerprint();
    let mut message = vec![0xC3, 0x01];
    message.extend_from_slice(&fingerprint);
    message.extend_from_slice(&[0xff; 11]);
    message.push(0x01);
    assert_eq!(message.len(), HEADER_LEN + 12);
    let err = decode_any(&message).unwrap_err();
    assert!(matches!(err, SchemaError::Datum(_)), "{err}");
}

/// The writer layouts the bound check walks cover every known writer schema (a schema with a
/// type the check cannot walk would be decoded unchecked).
#[test]
fn every_known_writer_is_walkable() {
    for (kind, version, _, schema) in RecordKind::known_writers() {
        assert!(
            flowlens_schemas::binary::kind(schema, &mut Vec::new()).is_some(),
            "{kind:?} v{version}"
        );
        assert!(matches!(schema, Schema::Record(_)));
    }
}
