//! The enricher's RawFlow decoder (hand-written fast path, apache-avro fallback) on any bytes:
//! no panic, hang or unbounded allocation, and apache-avro (through the schemas crate) is the
//! judge: the fast path never accepts a message differently.
#![no_main]

use flowlens_schemas::RawFlow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowlens_fuzz::bounded(data.len(), || {
    let decoded = flowlens_schemas::reader::raw_flow(data);
    let judge = flowlens_schemas::decode::<RawFlow>(data);
    assert_eq!(decoded.ok(), judge.ok());
}));
