//! The engine's idle hook (`engine::set_idle_hook`), which `koala serve-model` uses to hand
//! freed memory back to the OS: it runs once each time the worker runs out of work after having
//! decoded, never while requests are in flight, and not at all before the first request.
//!
//! Its own test binary: the hook is process-wide (the first `set_idle_hook` wins).
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use koala_model::{Engine, EngineConfig, Request, SampleParams, Weights, engine};

static CALLS: AtomicUsize = AtomicUsize::new(0);

fn count() {
    CALLS.fetch_add(1, Ordering::SeqCst);
}

/// Waits up to 10 s for the hook count to reach `n`, then checks that it stays there.
fn settles_at(n: usize) {
    let t0 = Instant::now();
    while CALLS.load(Ordering::SeqCst) < n && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(CALLS.load(Ordering::SeqCst), n, "idle hook calls");
}

#[test]
fn the_idle_hook_runs_once_per_burst_of_work() {
    engine::set_idle_hook(count);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf");
    let weights = Arc::new(Weights::load(&dir).unwrap());
    let eng = Engine::cpu(weights, EngineConfig::default());
    // Started and waiting, nothing decoded yet: not idle in the hook's sense.
    settles_at(0);
    let out = eng
        .generate(Request::new(vec![1, 2, 3], 4, SampleParams::greedy()))
        .unwrap();
    assert_eq!(out.tokens.len(), 4);
    settles_at(1);
    // A burst: four requests submitted together (each decodes 30 tokens, so they overlap),
    // then drained: one more call once they are all done.
    let mut streams: Vec<_> = (0..4u32)
        .map(|k| {
            eng.submit(Request::new(vec![5 + k, 6, 7], 30, SampleParams::greedy()))
                .unwrap()
        })
        .collect();
    for s in &mut streams {
        while s.blocking_next().is_some() {}
    }
    settles_at(2);
}
