//! latency: how long one dependent random memory read takes on this machine, in a region of
//! the given sizes backed by 4 KiB pages (as the kernel's BPF maps are): the floor of any flow
//! table that touches per-flow state for every packet. A pointer chase over a random cycle of
//! 64-byte lines. Standalone (std only):
//!     rustc -O --edition 2021 bench/collector/latency.rs -o target/latency
//! `target/latency 16 128 256` prints `<MiB> MiB: <ns> ns per dependent read` per size.

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
}

const MADV_NOHUGEPAGE: i32 = 15;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes in MiB"))
        .collect();
    for mib in if sizes.is_empty() { vec![16, 128, 256] } else { sizes } {
        let len = mib << 20;
        // SAFETY: a fresh private anonymous mapping, checked; 4 KiB pages asked for.
        let base = unsafe { mmap(std::ptr::null_mut(), len, 3, 0x22, -1, 0) };
        assert!(!base.is_null() && base as isize != -1, "mmap {mib} MiB");
        unsafe { madvise(base, len, MADV_NOHUGEPAGE) };
        let lines = len / 64;
        let line = |i: usize| unsafe { base.add(i * 64) as *mut usize };
        // A random cycle through every line (xorshift-driven Fisher-Yates).
        let mut order: Vec<usize> = (0..lines).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..lines).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for w in 0..lines {
            // SAFETY: both lines lie in the mapping.
            unsafe { *line(order[w]) = order[(w + 1) % lines] };
        }
        let steps = 5_000_000;
        let mut at = order[0];
        let started = std::time::Instant::now();
        for _ in 0..steps {
            // SAFETY: every stored index is a line of the mapping.
            at = unsafe { std::ptr::read_volatile(line(at)) };
        }
        let ns = started.elapsed().as_nanos() as f64 / steps as f64;
        println!("{mib} MiB: {ns:.0} ns per dependent read ({at})");
    }
}
