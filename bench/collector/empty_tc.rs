//! empty_tc: attaches an empty TC program (returns at once; `empty_program.rs`) with TCX to an
//! interface's ingress and egress, the way flowlens attaches its programs, and keeps it there
//! until killed: the benchmark's floor. Standalone (std only):
//!     rustc -O --edition 2021 bench/collector/empty_tc.rs -o target/empty_tc
//! `empty_tc IFNAME` prints `attached` once both links exist. The program is named
//! `flowlens_empty` (for bpf_stats).

#[path = "empty_program.rs"]
mod empty_program;

extern "C" {
    fn if_nametoindex(name: *const i8) -> u32;
}

fn main() -> std::io::Result<()> {
    let ifname = std::env::args().nth(1).expect("usage: empty_tc IFNAME");
    let name = std::ffi::CString::new(ifname.as_str()).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {ifname}");
    let prog = empty_program::load("flowlens_empty")?;
    let _links = [
        empty_program::attach(&prog, ifindex, empty_program::TCX_INGRESS)?,
        empty_program::attach(&prog, ifindex, empty_program::TCX_EGRESS)?,
    ];
    println!("attached");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
