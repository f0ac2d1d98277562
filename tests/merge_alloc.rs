//! What allocates on the hot path, watched by a counting global allocator on a shipped family
//! (~0.9 M parameters): the in-place merge allocates nothing per `α`; deploying a merge into the
//! native runtime allocates nothing; a native step allocates nothing (its matrix products pack
//! nothing), so a rollout allocates no more for 20 steps than for 2.
//!
//! The counters are per thread: each test counts only what its own thread allocates.

// A global allocator is an `unsafe impl`; this one forwards to the system allocator unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use ccm_twin::ccm::Line;
use ccm_twin::models::FamilyModels;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static CALLS: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if ARMED.with(|a| a.get()) {
        CALLS.with(|c| c.set(c.get() + 1));
        BYTES.with(|b| b.set(b.get() + size));
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
    CALLS.with(|c| c.set(0));
    BYTES.with(|b| b.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, CALLS.with(Cell::get), BYTES.with(Cell::get))
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

/// Deploying a merge into the native runtime allocates nothing, a warm step allocates nothing,
/// and a roll allocates only its window, once, whatever its length.
#[test]
fn the_native_runtime_deploys_without_allocating_and_steps_in_flat_memory() {
    use ccm_twin::infer::{Backend, NativeBackend};
    let bundle = FamilyModels::load(Path::new("models/dam_break")).unwrap();
    let mut native = NativeBackend::new(&bundle.anchor).unwrap();
    native.deploy(&bundle.anchor.weights).unwrap();
    let fl = native.shape().frame_len();
    let line =
        Line::through_endpoints(bundle.low.weights.clone(), bundle.high.weights.clone()).unwrap();
    let mut merged = line.buffer();
    let ((), calls, bytes) = counted(|| {
        for a in [-1.5f32, 0.5, 2.5] {
            line.merge_into(a, &mut merged).unwrap();
            native.deploy(&merged).unwrap();
        }
    });
    assert_eq!((calls, bytes), (0, 0), "3 merges + deploys allocated");

    let state: Vec<f32> = (0..fl).map(|i| 0.1 + 0.001 * (i % 97) as f32).collect();
    let mut out = vec![0.0; fl];
    native.step(&state, &mut out).unwrap(); // warm
    let per_step: Vec<(usize, usize)> = (0..4)
        .map(|_| {
            let (_, calls, bytes) = counted(|| native.step(&state, &mut out).unwrap());
            (calls, bytes)
        })
        .collect();
    eprintln!("native step: {per_step:?} (allocations, bytes) per step");
    assert!(
        per_step.iter().all(|s| *s == (0, 0)),
        "a warm step allocated: {per_step:?}"
    );
    let mut rolled = vec![0.0; 20 * fl];
    let (_, two, two_bytes) = counted(|| native.roll(&state, 2, &mut rolled).unwrap());
    let (_, twenty, twenty_bytes) = counted(|| native.roll(&state, 20, &mut rolled).unwrap());
    eprintln!(
        "native roll: 2 steps {two} allocations ({two_bytes} bytes), 20 steps {twenty} ({twenty_bytes} bytes)"
    );
    assert_eq!(
        (twenty, twenty_bytes),
        (two, two_bytes),
        "18 more steps allocated more"
    );
}
