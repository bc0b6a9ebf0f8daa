//! The kernel programs' clock (CLOCK_MONOTONIC, what `bpf_ktime_get_ns` returns) and its
//! conversion to unix time.

/// Converts CLOCK_MONOTONIC to unix time, sampled at one instant.
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

/// Now on CLOCK_MONOTONIC, in nanoseconds (comparable with the kernel programs' timestamps).
pub fn monotonic_now_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC) as u64
}

/// The time on `clock`, in nanoseconds.
fn read_clock(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A clock at a chosen instant: unix time `realtime_ns`, monotonic = unix - `offset_ns`.
    pub(crate) fn clock_at(realtime_ns: i64, offset_ns: i64) -> Clock {
        Clock {
            realtime_ns,
            offset_ns,
        }
    }

    #[test]
    fn clock_is_consistent() {
        let c = Clock::now();
        let unix = c.to_unix_ns(monotonic_now_ns());
        assert!((unix - c.unix_now_ns()).abs() < 1_000_000_000);
    }
}
