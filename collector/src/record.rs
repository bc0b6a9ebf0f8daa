//! Turning a drained kernel entry (`FlowKey`, merged `FlowStats`) into an Avro `RawFlow`, with
//! kernel monotonic timestamps converted to unix time.

use std::net::Ipv6Addr;

use flowlens_common::{FlowKey, FlowStats, DIRECTION_INGRESS};
use flowlens_schemas::{Direction, RawFlow};

/// Converts CLOCK_MONOTONIC (what `bpf_ktime_get_ns` returns) to unix time, sampled at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    realtime_ns: i64,
    offset_ns: i64,
}

impl Clock {
    pub fn now() -> Self {
        let mono = read_clock(libc::CLOCK_MONOTONIC);
        let real = read_clock(libc::CLOCK_REALTIME);
        Self {
            realtime_ns: real,
            offset_ns: real - mono,
        }
    }

    pub fn to_unix_ns(self, monotonic_ns: u64) -> i64 {
        monotonic_ns as i64 + self.offset_ns
    }

    pub fn unix_now_ns(self) -> i64 {
        self.realtime_ns
    }

    /// The sampled instant on CLOCK_MONOTONIC (the kernel programs' clock).
    pub fn monotonic_ns(self) -> u64 {
        (self.realtime_ns - self.offset_ns) as u64
    }
}

fn read_clock(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Builds the Avro record for one flow counted under 1:`sampling` sampling.
pub fn raw_flow(
    host: &str,
    key: &FlowKey,
    stats: &FlowStats,
    clock: Clock,
    sampling: u32,
) -> RawFlow {
    RawFlow {
        host: host.to_string(),
        ifindex: key.ifindex as i32,
        direction: if key.direction == DIRECTION_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        time_flow_start_ns: clock.to_unix_ns(stats.first_seen_ns),
        time_flow_end_ns: clock.to_unix_ns(stats.last_seen_ns),
        time_exported_ns: clock.unix_now_ns(),
        etype: key.etype.into(),
        vlan_id: key.vlan_id.into(),
        proto: key.proto.into(),
        src_addr: Ipv6Addr::from(key.src_addr),
        dst_addr: Ipv6Addr::from(key.dst_addr),
        src_port: key.src_port.into(),
        dst_port: key.dst_port.into(),
        icmp_type: key.icmp_type.into(),
        icmp_code: key.icmp_code.into(),
        tcp_flags: stats.tcp_flags.into(),
        packets: stats.packets as i64,
        bytes: stats.bytes as i64,
        sampling_rate: sampling.max(1) as i32,
        ..RawFlow::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_key_and_times() {
        let key = FlowKey {
            src_addr: std::net::Ipv4Addr::new(10, 0, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            dst_addr: Ipv6Addr::LOCALHOST.octets(),
            ifindex: 7,
            src_port: 1234,
            dst_port: 53,
            etype: 0x0800,
            proto: 17,
            direction: 1,
            ..Default::default()
        };
        let stats = FlowStats {
            packets: 3,
            bytes: 300,
            first_seen_ns: 1_000,
            last_seen_ns: 2_000,
            ..Default::default()
        };
        let clock = Clock {
            realtime_ns: 10_000,
            offset_ns: 5_000,
        };
        let r = raw_flow("h", &key, &stats, clock, 1);
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(r.src_ip().to_string(), "10.0.0.1");
        assert_eq!((r.time_flow_start_ns, r.time_flow_end_ns), (6_000, 7_000));
        assert_eq!((r.packets, r.bytes, r.dst_port, r.ifindex), (3, 300, 53, 7));
    }

    #[test]
    fn clock_is_consistent() {
        let c = Clock::now();
        let unix = c.to_unix_ns(read_clock(libc::CLOCK_MONOTONIC) as u64);
        assert!((unix - c.unix_now_ns()).abs() < 1_000_000_000);
    }
}
