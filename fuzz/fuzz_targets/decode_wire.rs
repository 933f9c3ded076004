//! Arbitrary bytes as a TCP stream read with driver_tokio::wire::read_frame
//! (the async reader over raft-wire's frames) and raft_wire::FrameDecoder.
//! The property is in tests/fuzz_props.rs (shared with the corpus replay
//! test); this target adds a counting allocator so that the property can
//! check that an oversized frame is refused before its buffer is allocated.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_props.rs"]
mod props;

/// The system allocator, recording the largest single request while armed.
struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns the largest allocation it made.
fn metered(f: &mut dyn FnMut()) -> Option<usize> {
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    f();
    ARMED.store(false, Ordering::Relaxed);
    Some(LARGEST.load(Ordering::Relaxed))
}

fuzz_target!(|data: &[u8]| props::decode_wire(data, metered));
