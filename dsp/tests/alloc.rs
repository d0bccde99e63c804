//! `Analyzer::push` and `estimate` allocate nothing once constructed, with the
//! heuristic estimator and with a trained model (the embedded defaults, and
//! the same with a hidden layer).

// A counting global allocator is unsafe by its trait; the workspace denies
// unsafe_code everywhere but here and the one SIMD kernel.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use emonav_dsp::model::{Hidden, FEATURES};
use emonav_dsp::{Analyzer, EmotionEstimator, HeuristicArousal, Model, ModelEstimator};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn ten_seconds_of_audio_without_an_allocation() {
    for rate in [8000u32, 16000] {
        // A voice-like signal with gaps, so that every code path (silence,
        // speech, voiced, unvoiced) runs.
        let signal: Vec<i16> = (0..rate as usize * 10)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let on = (t * 2.0) as u32 % 2 == 0;
                let w = 2.0 * std::f32::consts::PI * (140.0 + 40.0 * (t * 3.0).sin()) * t;
                if on {
                    (8000.0 * (w.sin() + 0.4 * (2.0 * w).sin())) as i16
                } else {
                    ((i * 7919) % 61) as i16 - 30
                }
            })
            .collect();
        let model = if rate == 8000 {
            include_str!("../../models/default.json")
        } else {
            include_str!("../../models/default-16k.json")
        };
        let model = Model::from_json(model).unwrap();
        // The same model with a hidden layer in every task (`--family mlp`
        // and `ensemble` models score through it).
        let mut network = model.clone();
        for l in [&mut network.arousal, &mut network.anger] {
            l.hidden = Some(Hidden {
                inputs: (0..16 * FEATURES).map(|k| (k % 7) as f32 * 0.01).collect(),
                biases: vec![0.1; 16],
                outputs: vec![0.2; 16],
            });
        }
        let estimators: [Box<dyn EmotionEstimator>; 3] = [
            Box::new(HeuristicArousal),
            Box::new(ModelEstimator::new(Arc::new(model))),
            Box::new(ModelEstimator::new(Arc::new(network))),
        ];
        for estimator in estimators {
            let mut a = Analyzer::with_estimator(rate, estimator);
            a.push(&signal[..rate as usize / 10]);
            let before = ALLOCS.load(Ordering::Relaxed);
            for packet in signal.chunks(rate as usize / 50) {
                a.push(packet);
                std::hint::black_box(a.estimate());
            }
            let during = ALLOCS.load(Ordering::Relaxed) - before;
            assert_eq!(during, 0, "{during} allocations at {rate} Hz");
            assert!(a.functionals().speech_ms() > 3000, "speech was analysed");
            assert!(a.estimate().speech_ms > 0, "the estimator ran");
        }
    }
}
