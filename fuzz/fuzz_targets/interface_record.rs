//! The enricher's interfaces-topic decoder on any record: `InterfaceCache::apply` with any key
//! (or none) and any payload (or a tombstone), and the `host/ifindex` key parser. No panic, hang
//! or unbounded allocation; a record that is refused leaves the cache as it was.
#![no_main]

use flowlens_enricher::interfaces::{parse_key, InterfaceCache};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowlens_fuzz::bounded(data.len(), || {
    // [flags][key length][key][payload]: flags bit 0 = a key, bit 1 = a payload (else tombstone).
    let [flags, key_len, rest @ ..] = data else {
        return;
    };
    let (key, payload) = rest.split_at(usize::from(*key_len).min(rest.len()));
    let key = (flags & 1 == 1).then_some(key);
    let payload = (flags & 2 == 2).then_some(payload);
    if let Some(key) = key {
        let _ = parse_key(key);
    }

    let mut cache = InterfaceCache::default();
    let seed = flowlens_schemas::Interface {
        host: "h".into(),
        ifindex: 1,
        name: "eth0".into(),
        mac: String::new(),
        mtu: 1500,
        kind: "device".into(),
        netns: String::new(),
        netns_inode: 1,
        oper_state: "up".into(),
        time_observed_ns: 1,
    };
    cache.upsert(seed.clone());
    match cache.apply(key, payload) {
        Ok(()) => assert!(cache.len() <= 2),
        Err(_) => {
            assert_eq!(cache.len(), 1);
            assert_eq!(cache.get("h", 1), Some(&seed));
        }
    }
}));
