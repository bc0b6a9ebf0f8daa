//! The sink's EnrichedFlow → RowBinary decoder (per-version fast path, generic fallback) on any
//! bytes: no panic, hang or unbounded allocation; the row is the one the generic path (apache-avro
//! through the schemas crate, then the table's range checks) makes, and the RowBinary written
//! for it is the same either way.
#![no_main]

use flowlens_schemas::EnrichedFlow;
use flowlens_sink::FlowRow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowlens_fuzz::bounded(data.len(), || {
    let row = flowlens_sink::decode::flow_row(data);
    let judge = flowlens_schemas::decode::<EnrichedFlow>(data)
        .ok()
        .and_then(|f| FlowRow::try_from(f).ok());
    assert_eq!(row.as_ref().ok(), judge.as_ref());

    let mut out = Vec::new();
    let written = flowlens_sink::decode::write_row(data, "t", 1, 2, &mut out);
    assert_eq!(written.is_ok(), row.is_ok());
    if let Some(mut judge) = judge {
        judge.kafka_topic = "t".into();
        judge.kafka_partition = 1;
        judge.kafka_offset = 2;
        let mut expected = Vec::new();
        judge.write_row_binary(&mut expected);
        assert_eq!(out, expected);
    } else {
        assert!(out.is_empty(), "nothing written for a rejected record");
    }
}));
