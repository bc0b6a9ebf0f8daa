//! DNS and HTTP/1.x visibility: the kernel's L7 tap (collector-ebpf/src/l7.rs) read from its
//! ring buffer, each payload parsed by the protocol of its port (`dns`, `http`) and counted on
//! its conversation (`dns_counts`, `http_counts`) until the conversation's record takes the
//! counts.

pub mod dns;
pub mod dns_counts;
pub mod http;
pub mod http_counts;
pub mod ledger;

use aya::maps::{MapData, RingBuf};
use flowlens_common::l7::{L7Event, L7Ports, L7_CAPTURE, L7_DNS, L7_HTTP, L7_MAX_PORTS};
use flowlens_common::FlowKey;
use flowlens_schemas::{Dns, Http};

use self::dns::Refused;
use self::dns_counts::DnsCounts;
use self::http_counts::HttpCounts;

const IPPROTO_TCP: u8 = 6;

/// The tap's ring buffer and the counts of every conversation not yet exported.
pub struct L7Tap {
    ring: RingBuf<MapData>,
    dns_ports: Vec<u16>,
    http_ports: Vec<u16>,
    dns: DnsCounts,
    http: HttpCounts,
}

/// Messages read in one drain (for the metrics).
#[derive(Default)]
struct Read {
    events: u64,
    dns_queries: u64,
    dns_responses: u64,
    http_requests: u64,
    http_responses: u64,
    http_other: u64,
}

impl L7Tap {
    /// Reads `ring`; packets of `dns_ports` are DNS, every other tapped packet (of
    /// `http_ports`) HTTP.
    pub fn new(ring: RingBuf<MapData>, dns_ports: &[u16], http_ports: &[u16]) -> Self {
        Self {
            ring,
            dns_ports: dns_ports.to_vec(),
            http_ports: http_ports.to_vec(),
            dns: DnsCounts::default(),
            http: HttpCounts::default(),
        }
    }

    /// Reads every event in the ring buffer now; returns how many.
    pub fn drain(&mut self) -> u64 {
        let mut read = Read::default();
        while let Some(item) = self.ring.next() {
            read.events += 1;
            let Some(event) = event(&item) else {
                metrics::counter!("flowlens_collector_l7_events_malformed_total").increment(1);
                continue;
            };
            drop(item);
            let key = &event.key;
            let data = &event.data[..(event.captured as usize).min(L7_CAPTURE)];
            if on(key, &self.dns_ports) {
                let tcp = key.proto == IPPROTO_TCP;
                match dns::parse(data, event.payload_len as usize, tcp) {
                    Ok(m) => {
                        if m.response {
                            read.dns_responses += 1;
                        } else {
                            read.dns_queries += 1;
                        }
                        self.dns.add(key, event.ktime_ns, &m);
                    }
                    Err(why) => refused(why),
                }
                continue;
            }
            match http::parse(data) {
                Some(m) => {
                    if matches!(m, http::Message::Request { .. }) {
                        read.http_requests += 1;
                    } else {
                        read.http_responses += 1;
                    }
                    self.http.add(key, event.ktime_ns, &m);
                }
                None => read.http_other += 1,
            }
        }
        if read.events > 0 {
            metrics::counter!("flowlens_collector_l7_events_total").increment(read.events);
            for (name, kind, n) in [
                (
                    "flowlens_collector_dns_messages_total",
                    "query",
                    read.dns_queries,
                ),
                (
                    "flowlens_collector_dns_messages_total",
                    "response",
                    read.dns_responses,
                ),
                (
                    "flowlens_collector_http_messages_total",
                    "request",
                    read.http_requests,
                ),
                (
                    "flowlens_collector_http_messages_total",
                    "response",
                    read.http_responses,
                ),
                (
                    "flowlens_collector_http_messages_total",
                    "other",
                    read.http_other,
                ),
            ] {
                metrics::counter!(name, "kind" => kind).increment(n);
            }
        }
        read.events
    }

    /// The DNS and HTTP counts of the conversation of flow `key` since its last record
    /// (taken). A flow of no watched port has none: no lookup.
    pub fn take(&mut self, key: &FlowKey) -> (Option<Dns>, Option<Http>) {
        if on(key, &self.dns_ports) {
            (self.dns.take(key), None)
        } else if on(key, &self.http_ports) {
            (None, self.http.take(key))
        } else {
            (None, None)
        }
    }

    /// Forgets what is older than `idle_ns` at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) {
        let d = self.dns.expire(now_ns, idle_ns);
        let h = self.http.expire(now_ns, idle_ns);
        for (protocol, unclaimed, unanswered, untimed, pending) in [
            (
                "dns",
                d.unclaimed,
                d.unanswered,
                d.untimed,
                self.dns.pending(),
            ),
            (
                "http",
                h.unclaimed,
                h.unanswered,
                h.untimed,
                self.http.pending(),
            ),
        ] {
            metrics::counter!("flowlens_collector_l7_unclaimed_total", "protocol" => protocol)
                .increment(unclaimed);
            metrics::counter!("flowlens_collector_l7_unanswered_total", "protocol" => protocol)
                .increment(unanswered);
            metrics::counter!("flowlens_collector_l7_untimed_total", "protocol" => protocol)
                .increment(untimed);
            metrics::gauge!("flowlens_collector_l7_pending", "protocol" => protocol)
                .set(pending as f64);
            if unclaimed > 0 {
                tracing::debug!(
                    protocol,
                    conversations = unclaimed,
                    "L7 counts whose conversation had no record within the idle timeout were dropped"
                );
            }
        }
    }
}

/// The kernel's watched ports: `dns` then `http`; an error when they are more than
/// `L7_MAX_PORTS` together, repeat a port or hold 0.
pub fn ports(dns: &[u16], http: &[u16]) -> anyhow::Result<L7Ports> {
    let all: Vec<(u16, u8)> = dns
        .iter()
        .map(|p| (*p, L7_DNS))
        .chain(http.iter().map(|p| (*p, L7_HTTP)))
        .collect();
    let mut distinct: Vec<u16> = all.iter().map(|(p, _)| *p).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if all.len() > L7_MAX_PORTS || distinct.len() < all.len() || distinct.contains(&0) {
        anyhow::bail!(
            "DNS ports {dns:?} and HTTP ports {http:?}: at most {L7_MAX_PORTS} together, each once, none of them 0"
        );
    }
    let mut l7 = L7Ports::default();
    for (i, (port, kind)) in all.into_iter().enumerate() {
        l7.ports[i] = port;
        l7.kinds[i] = kind;
    }
    Ok(l7)
}

/// Whether flow `key` is to or from one of `ports`.
fn on(key: &FlowKey, ports: &[u16]) -> bool {
    ports.contains(&key.src_port) || ports.contains(&key.dst_port)
}

fn refused(why: Refused) {
    let reason = match why {
        Refused::Short => "short",
        Refused::NotAQuery => "not_a_query",
        Refused::BadName => "bad_name",
        Refused::BadLength => "bad_length",
    };
    metrics::counter!("flowlens_collector_dns_refused_total", "reason" => reason).increment(1);
}

/// The event in a ring buffer record (`None` if the record is not one).
fn event(bytes: &[u8]) -> Option<L7Event> {
    if bytes.len() < std::mem::size_of::<L7Event>() {
        return None;
    }
    // SAFETY: the length is checked; L7Event is plain old data (repr(C), integers and arrays).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const L7Event) })
}
