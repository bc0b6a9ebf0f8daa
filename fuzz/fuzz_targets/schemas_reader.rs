//! The schemas crate's readers on any bytes: the single-object decoder (`decode_any`, every
//! writer version, resolved to other readers too), the fast paths' `binary::Reader`, and the
//! bound check run before apache-avro (`binary::length_past_end`). No panic, hang or unbounded
//! allocation, and the bound check is never stricter than apache-avro itself: a length it
//! refuses makes apache-avro fail too, and a datum the strict reader reads whole passes it.
#![no_main]

use flowlens_schemas::apache_avro::{self, Schema};
use flowlens_schemas::binary::{kind, length_past_end, Reader};
use flowlens_schemas::{decode_any, decode_with_reader, RecordKind};
use libfuzzer_sys::fuzz_target;

/// Largest claimed length handed straight to apache-avro as a cross-check. apache-avro
/// allocates it: as bytes for a string, as that many `Value`s (about 50 bytes each) for an
/// array's item count, which must stay under the harness's 4 MiB.
const CROSS_CHECK_MAX: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| flowlens_fuzz::bounded(data.len(), || {
    // Whole messages, as the stages decode them.
    let _ = decode_any(data);
    if let Some(&first) = data.first() {
        let kinds = RecordKind::ALL;
        let reader = kinds[usize::from(first) % kinds.len()].schema();
        let _ = decode_with_reader::<serde_json::Value>(data, reader);
    }

    // A datum (after a selector byte) against one writer's layout.
    let Some((&selector, datum)) = data.split_first() else {
        return;
    };
    let writers: Vec<(RecordKind, u32, [u8; 8], &'static Schema)> =
        RecordKind::known_writers().collect();
    let (_, _, _, schema) = writers[usize::from(selector) % writers.len()];
    let layout = kind(schema, &mut Vec::new()).expect("every known writer has a layout");

    let mut strict = Reader::new(datum);
    let read_whole = strict.skip(&layout).is_some() && strict.rest().is_empty();
    let past_end = length_past_end(&layout, datum);
    if read_whole {
        assert_eq!(
            past_end, None,
            "a datum the strict reader reads is within bounds"
        );
    }
    match past_end {
        // Checked: apache-avro allocates at most the datum's size.
        None => {
            let _ = apache_avro::from_avro_datum(schema, &mut &datum[..], None);
        }
        Some(found) if found.claimed <= CROSS_CHECK_MAX => {
            let apache = apache_avro::from_avro_datum(schema, &mut &datum[..], None);
            // apache-avro 0.21 may turn an EOF inside a string into null; it must not succeed
            // having read the bytes that are not there.
            if let Ok(value) = apache {
                let text = format!("{value:?}");
                assert!(
                    text.contains("Null"),
                    "apache-avro decoded past a length the check refused: {found:?}"
                );
            }
        }
        Some(_) => {}
    }
}));
