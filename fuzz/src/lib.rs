//! What every fuzz target shares: an allocator that makes an input a crash (abort, which
//! libFuzzer records with the input) when decoding it holds more memory than the input's own
//! size justifies. libFuzzer's `-malloc_limit_mb` needs a sanitizer's allocator hooks and takes
//! one limit for every input; this one scales with each input, so a 40-byte record claiming a
//! 500 MB string is caught even though the allocation would succeed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Memory an input may hold beyond what was held before it: a fixed allowance (schemas parsed
/// once, error texts, apache-avro's value tree) plus a multiple of the input's size.
pub const ALLOWANCE: usize = 4 << 20;
pub const PER_INPUT_BYTE: usize = 32;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The system allocator, counting what this thread holds and enforcing [`bounded`]'s limit.
pub struct Bounded;

fn grow(n: usize) {
    let _ = HELD.try_with(|held| {
        let now = held.get().saturating_add(n);
        held.set(now);
        let limit = LIMIT.try_with(Cell::get).unwrap_or(usize::MAX);
        if now > limit {
            let _ = LIMIT.try_with(|l| l.set(usize::MAX));
            eprintln!(
                "flowlens-fuzz: {now} bytes held, over the limit of {limit} for this input \
                 (allocation of {n} bytes)"
            );
            std::process::abort();
        }
    });
}

fn shrink(n: usize) {
    let _ = HELD.try_with(|held| held.set(held.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        } else {
            shrink(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Runs `work` on one input of `input_len` bytes, aborting if it ever holds more than
/// [`ALLOWANCE`] + [`PER_INPUT_BYTE`] × `input_len` bytes beyond what was held before.
pub fn bounded<T>(input_len: usize, work: impl FnOnce() -> T) -> T {
    let base = HELD.with(Cell::get);
    let limit = base
        .saturating_add(ALLOWANCE)
        .saturating_add(PER_INPUT_BYTE.saturating_mul(input_len));
    LIMIT.with(|l| l.set(limit));
    let out = work();
    LIMIT.with(|l| l.set(usize::MAX));
    out
}
