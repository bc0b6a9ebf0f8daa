//! Atomic read-modify-write on map memory shared by every CPU. The BPF instructions are written
//! as assembly: the bpfel target compiles for the BPF v1 CPU, which has no compare-and-swap and
//! rejects fetching adds, while the kernel (5.12+) runs them on any CPU version.

use core::arch::asm;

/// `*ptr += value`, atomically (no fetch).
#[inline(always)]
pub unsafe fn add(ptr: *mut u64, value: u64) {
    unsafe {
        asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) ptr, in(reg) value, options(nostack));
    }
}

/// `*ptr |= value`, atomically (no fetch).
#[inline(always)]
pub unsafe fn or(ptr: *mut u64, value: u64) {
    unsafe {
        asm!("lock *(u64 *)({0} + 0) |= {1}", in(reg) ptr, in(reg) value, options(nostack));
    }
}

/// Replaces `*ptr` with `new` if it is `old`; returns what `*ptr` was (so `old` on success). A
/// full barrier: writes before it are visible to whoever sees `new`.
#[inline(always)]
pub unsafe fn compare_exchange(ptr: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    unsafe {
        asm!(
            "r0 = cmpxchg_64({0} + 0, r0, {1})",
            in(reg) ptr,
            in(reg) new,
            inout("r0") r0,
            options(nostack)
        );
    }
    r0
}
