//! The empty TC program of the collector benchmark's floor: loaded and attached with raw
//! `bpf()` calls (std and libc-free declarations only, so the standalone tools can include it).
//! It returns TC_ACT_UNSPEC at once: what a packet pays for the hook alone.

use std::os::fd::{FromRawFd, OwnedFd};

extern "C" {
    fn syscall(number: i64, ...) -> i64;
}

const SYS_BPF: i64 = 321;
const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `enum bpf_attach_type`: BPF_TCX_INGRESS, BPF_TCX_EGRESS.
pub const TCX_INGRESS: u32 = 46;
pub const TCX_EGRESS: u32 = 47;

/// The leading members of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The leading members of `union bpf_attr` for BPF_LINK_CREATE, zero-padded to the size of the
/// union's tcx part.
#[repr(C)]
#[derive(Default)]
struct LinkAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

fn bpf<A>(cmd: i64, attr: &A) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is the matching member of union bpf_attr and outlives the call.
    let fd = unsafe { syscall(SYS_BPF, cmd, attr as *const A, std::mem::size_of::<A>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh file descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads a sched_cls program named `name` (at most 15 bytes) that only returns TC_ACT_UNSPEC.
pub fn load(name: &str) -> std::io::Result<OwnedFd> {
    // r0 = -1 (TC_ACT_UNSPEC); exit
    let insns: [u64; 2] = [0xffff_ffff_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let n = name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    bpf(BPF_PROG_LOAD, &attr)
}

/// Attaches `prog` with TCX to interface `ifindex` (`TCX_INGRESS` or `TCX_EGRESS`); detached
/// when the returned link is closed.
pub fn attach(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let attr = LinkAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &attr)
}
