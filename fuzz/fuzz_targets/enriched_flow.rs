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
        .and_then(|f| {
            let has_origin = f.origin.is_some();
            FlowRow::try_from(f).ok().map(|row| (row, has_origin))
        });
    assert_eq!(row.as_ref().ok(), judge.as_ref().map(|(row, _)| row));

    let at = flowlens_sink::decode::Position {
        topic: "t",
        partition: 1,
        offset: 2,
        stream: [7; 16],
        timestamp_ms: 3,
    };
    let mut out = Vec::new();
    let written = flowlens_sink::decode::write_row(data, &at, &mut out);
    assert_eq!(written.is_ok(), row.is_ok());
    if let Some((mut judge, has_origin)) = judge {
        judge.kafka_topic = at.topic.into();
        judge.kafka_partition = at.partition as u16;
        judge.kafka_offset = at.offset as u64;
        judge.kafka_stream = at.stream;
        judge.kafka_timestamp = at.timestamp_ms;
        if !has_origin {
            judge.origin_topic = at.topic.into();
            judge.origin_stream = at.stream;
            judge.origin_partition = at.partition;
            judge.origin_offset = at.offset;
        }
        let mut expected = Vec::new();
        judge.write_row_binary(&mut expected);
        assert_eq!(out, expected);
    } else {
        assert!(out.is_empty(), "nothing written for a rejected record");
    }
}));
