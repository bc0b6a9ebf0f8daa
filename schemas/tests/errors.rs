//! Foreign, truncated and corrupted messages give a clear error, never a panic.

mod common;

use flowlens_schemas::{
    decode, decode_any, encode, peek_fingerprint, AvroRecord, EnrichedFlow, Interface, RawFlow,
    SchemaError,
};

/// A cut-off message: the datum ends early, or a length in it runs past the end.
fn truncated(err: &SchemaError) -> bool {
    matches!(
        err,
        SchemaError::Truncated { .. } | SchemaError::LengthPastEnd { .. }
    )
}

fn raw_msg() -> Vec<u8> {
    let mut buf = Vec::new();
    encode(&common::raw_v4(), &mut buf).unwrap();
    buf
}

#[test]
fn no_magic() {
    for msg in [
        &b"{\"host\":\"x\"}"[..],
        &[0x00, 0x00, 0x00, 0x00, 0x01, 0x02][..], // Confluent wire format, schema id 1
        &[0xC3, 0x02, 0, 0, 0, 0, 0, 0, 0, 0][..],
        &[0x01][..],
    ] {
        let err = decode::<RawFlow>(msg).unwrap_err();
        assert!(matches!(err, SchemaError::NotSingleObject { .. }), "{err}");
        assert!(decode_any(msg).is_err());
    }
    let err = decode::<RawFlow>(b"{\"host\":\"x\"}").unwrap_err();
    assert_eq!(
        err.to_string(),
        "not an Avro single-object message: expected marker C3 01, found 7b22"
    );
}

#[test]
fn unknown_fingerprint() {
    let mut msg = raw_msg();
    msg[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let err = decode::<RawFlow>(&msg).unwrap_err();
    match &err {
        SchemaError::UnknownFingerprint { found } => assert_eq!(found, "0102030405060708"),
        other => panic!("{other}"),
    }
    assert!(matches!(
        decode_any(&msg),
        Err(SchemaError::UnknownFingerprint { .. })
    ));
    println!("{err}");
}

#[test]
fn wrong_record() {
    let msg = raw_msg();
    let err = decode::<Interface>(&msg).unwrap_err();
    match err {
        SchemaError::WrongRecord { expected, found } => {
            assert_eq!(expected, "io.flowlens.Interface");
            assert_eq!(found, "io.flowlens.RawFlow");
        }
        other => panic!("{other}"),
    }
    // Same layout prefix, still refused: EnrichedFlow is not a RawFlow.
    let mut buf = Vec::new();
    encode(&EnrichedFlow::from_raw(common::raw_v4()), &mut buf).unwrap();
    assert!(matches!(
        decode::<RawFlow>(&buf),
        Err(SchemaError::WrongRecord { .. })
    ));
    // A RawFlow datum under an EnrichedFlow header is caught as truncated.
    let mut forged = msg.clone();
    forged[2..10].copy_from_slice(&EnrichedFlow::fingerprint());
    let err = decode::<EnrichedFlow>(&forged).unwrap_err();
    assert!(truncated(&err), "{err}");
}

#[test]
fn every_prefix_is_truncated() {
    let mut checked = 0;
    for (name, msg) in common::messages() {
        for len in 0..msg.len() {
            let prefix = &msg[..len];
            let err = decode_any(prefix).unwrap_err();
            assert!(truncated(&err), "{name} prefix {len}/{}: {err}", msg.len());
            checked += 1;
        }
        assert!(decode_any(&msg).is_ok());
    }
    assert!(checked > 100);
    // Specific typed decode too.
    let msg = raw_msg();
    for len in 0..msg.len() {
        assert!(truncated(&decode::<RawFlow>(&msg[..len]).unwrap_err()));
    }
    assert!(matches!(
        peek_fingerprint(&msg[..9]),
        Err(SchemaError::Truncated { part: "header", .. })
    ));
}

#[test]
fn trailing_bytes() {
    let mut msg = raw_msg();
    msg.push(0);
    let err = decode::<RawFlow>(&msg).unwrap_err();
    assert!(
        matches!(err, SchemaError::TrailingBytes { count: 1, .. }),
        "{err}"
    );
    // Two messages back to back are not one message.
    let mut two = raw_msg();
    encode(&common::raw_v4(), &mut two).unwrap();
    assert!(decode::<RawFlow>(&two).is_err());
}

/// Deterministic corruption: every single-byte change of every datum byte, plus random junk
/// after valid headers. Any result is fine except a panic.
#[test]
fn corrupted_datum_never_panics() {
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut outcomes = [0usize; 2];
    for (_, msg) in common::messages() {
        for i in 10..msg.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff, (next() & 0xff) as u8] {
                let mut m = msg.clone();
                m[i] = v;
                outcomes[decode_any(&m).is_ok() as usize] += 1;
            }
        }
        for _ in 0..2000 {
            let mut m = msg[..10].to_vec();
            let n = (next() % 200) as usize;
            m.extend((0..n).map(|_| (next() & 0xff) as u8));
            outcomes[decode_any(&m).is_ok() as usize] += 1;
        }
    }
    println!(
        "corrupted: {} rejected, {} decoded",
        outcomes[0], outcomes[1]
    );
}

/// Encoding errors leave the output buffer untouched.
#[test]
fn encode_failure_leaves_buffer() {
    #[derive(serde::Serialize)]
    struct NotRaw {
        host: u64,
    }
    impl AvroRecord for NotRaw {
        fn schema() -> &'static apache_avro::Schema {
            RawFlow::schema()
        }
        fn fingerprint() -> [u8; 8] {
            RawFlow::fingerprint()
        }
    }
    let mut buf = vec![1, 2, 3];
    let err = encode(&NotRaw { host: 5 }, &mut buf).unwrap_err();
    assert!(matches!(err, SchemaError::Datum(_)), "{err}");
    assert_eq!(buf, [1, 2, 3]);
}

/// Documents the apache-avro 0.21 behaviour `decode` guards against: its generic reader
/// turns an EOF at a boolean (or a union index) into `null`, so a cut-off EnrichedFlow "decodes".
#[test]
fn apache_avro_generic_reader_accepts_truncation() {
    let mut msg = Vec::new();
    encode(&common::enriched(common::raw_conversation_v2()), &mut msg).unwrap();
    // The last field, a null `http`, is one byte (the union index): drop it.
    let cut = &msg[..msg.len() - 1];
    let reader =
        apache_avro::GenericSingleObjectReader::new(EnrichedFlow::schema().clone()).unwrap();
    let lenient = reader.read_value(&mut &cut[..]);
    assert!(lenient.is_ok(), "apache-avro changed: {lenient:?}");
    assert!(matches!(
        decode::<EnrichedFlow>(cut),
        Err(SchemaError::Truncated { .. })
    ));
}
