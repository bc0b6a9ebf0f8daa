//! The enricher's Kubernetes snapshot parser (`kubectl get ... -o json` text) on any text, and
//! the store it feeds: no panic, hang or unbounded allocation whatever the document holds.
#![no_main]

use flowlens_enricher::kubernetes::history::Limits;
use flowlens_enricher::kubernetes::snapshot::{parse, replace_all};
use flowlens_enricher::kubernetes::store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowlens_fuzz::bounded(data.len(), || {
    // The file is read as UTF-8 text (std::fs::read_to_string) before it is parsed.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = parse(text) else {
        return;
    };
    let mut store = Store::new(Limits::default());
    store.apply_all(replace_all(objects), 1_000);
    store.mark_synced();
    let _ = store.stats();
    let _ = store.lookup(&std::net::Ipv6Addr::UNSPECIFIED, 1_000);
}));
