//! The in-place merge allocates nothing per `α`: a counting global allocator watches
//! `Line::merge_into` on a shipped family (~0.9 M parameters) across the readout interval.
//!
//! This test binary holds one test only, so nothing else runs while the counter is armed; the
//! counter also counts only on the thread that armed it.

// A global allocator is an `unsafe impl`; this one forwards to the system allocator unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ccm_twin::ccm::Line;
use ccm_twin::models::FamilyModels;

struct Counting;

static CALLS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if ARMED.with(|a| a.get()) {
        CALLS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with the counter armed; returns (allocations, bytes) it made on this thread.
fn counted<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    CALLS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (
        r,
        CALLS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

#[test]
fn in_place_merge_allocates_nothing_per_alpha() {
    let bundle = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let line =
        Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone()).unwrap();
    let mut buffer = line.buffer();
    let model_bytes = buffer.len() * 4;
    assert!(buffer.len() > 500_000, "a shipped-size model");

    // the counter sees a whole-model copy (so a zero below means something)
    let (copy, calls, bytes) = counted(|| buffer.clone());
    assert!(
        calls >= 1 && bytes >= model_bytes,
        "counter is live: {calls} calls, {bytes} B"
    );
    drop(copy);

    let alphas: Vec<f32> = (0..=40).map(|i| -2.0 + 0.1 * i as f32).collect();
    let ((), calls, bytes) = counted(|| {
        for &a in &alphas {
            line.merge_into(a, &mut buffer).unwrap();
        }
    });
    assert_eq!(
        (calls, bytes),
        (0, 0),
        "merge_into allocated {bytes} B in {calls} calls over {} merges",
        alphas.len()
    );
    // and the buffer holds the last merge, θ(2) = −½·θ_L + 3/2·θ_H
    let (l, h) = (bundle.low.weights.data(), bundle.high.weights.data());
    for i in (0..buffer.len()).step_by(9973) {
        let want = -0.5 * l[i] + 1.5 * h[i];
        assert!((buffer.data()[i] - want).abs() <= 1e-6 * want.abs().max(1.0));
    }
}
