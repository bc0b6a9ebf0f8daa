//! DNS visibility: the kernel's L7 tap (collector-ebpf/src/l7.rs) read from its ring buffer,
//! each payload parsed as a DNS message (`dns`) and counted on its conversation (`ledger`)
//! until the conversation's record takes the counts.

pub mod dns;
pub mod ledger;

use aya::maps::{MapData, RingBuf};
use flowlens_common::l7::{L7Event, L7_CAPTURE};
use flowlens_common::FlowKey;
use flowlens_schemas::Dns;

use self::dns::Refused;
use self::ledger::DnsLedger;

const IPPROTO_TCP: u8 = 6;

/// The tap's ring buffer and the DNS counts of every conversation not yet exported.
pub struct L7Tap {
    ring: RingBuf<MapData>,
    ledger: DnsLedger,
}

impl L7Tap {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            ledger: DnsLedger::default(),
        }
    }

    /// Reads every event in the ring buffer now; returns how many.
    pub fn drain(&mut self) -> u64 {
        let (mut events, mut queries, mut responses) = (0u64, 0u64, 0u64);
        while let Some(item) = self.ring.next() {
            events += 1;
            let Some(event) = event(&item) else {
                metrics::counter!("flowlens_collector_l7_events_malformed_total").increment(1);
                continue;
            };
            let data = &event.data[..(event.captured as usize).min(L7_CAPTURE)];
            let tcp = event.key.proto == IPPROTO_TCP;
            match dns::parse(data, event.payload_len as usize, tcp) {
                Ok(m) => {
                    if m.response {
                        responses += 1;
                    } else {
                        queries += 1;
                    }
                    self.ledger.add(&event.key, event.ktime_ns, &m);
                }
                Err(why) => {
                    let reason = match why {
                        Refused::Short => "short",
                        Refused::NotAQuery => "not_a_query",
                        Refused::BadName => "bad_name",
                        Refused::BadLength => "bad_length",
                    };
                    metrics::counter!("flowlens_collector_dns_refused_total", "reason" => reason)
                        .increment(1);
                }
            }
        }
        if events > 0 {
            metrics::counter!("flowlens_collector_l7_events_total").increment(events);
            metrics::counter!("flowlens_collector_dns_messages_total", "kind" => "query")
                .increment(queries);
            metrics::counter!("flowlens_collector_dns_messages_total", "kind" => "response")
                .increment(responses);
        }
        events
    }

    /// The DNS counts of the conversation of flow `key` since its last record (taken).
    pub fn take(&mut self, key: &FlowKey) -> Option<Dns> {
        self.ledger.take(key)
    }

    /// Forgets what is older than `idle_ns` at `now_ns` (see [`DnsLedger::expire`]).
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) {
        let o = self.ledger.expire(now_ns, idle_ns);
        metrics::counter!("flowlens_collector_dns_unclaimed_total").increment(o.unclaimed);
        metrics::counter!("flowlens_collector_dns_unanswered_total").increment(o.unanswered);
        metrics::counter!("flowlens_collector_dns_untimed_total").increment(o.untimed);
        metrics::gauge!("flowlens_collector_dns_pending").set(self.ledger.pending() as f64);
        if o.unclaimed > 0 {
            tracing::debug!(
                conversations = o.unclaimed,
                "DNS counts whose conversation had no record within the idle timeout were dropped"
            );
        }
    }
}

/// The event in a ring buffer record (`None` if the record is not one).
fn event(bytes: &[u8]) -> Option<L7Event> {
    if bytes.len() < std::mem::size_of::<L7Event>() {
        return None;
    }
    // SAFETY: the length is checked; L7Event is plain old data (repr(C), integers and arrays).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const L7Event) })
}
