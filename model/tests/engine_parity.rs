//! The engine against Hugging Face `transformers`: greedy tokens and last-position logits of a
//! tiny LLaMA, from `model/tests/fixtures/tiny_hf` (made by `scripts/gen_engine_fixtures.py`).
use std::path::PathBuf;
use std::sync::Arc;

use koala_model::forward::{Model, Slice};
use koala_model::kv::KvCache;
use koala_model::{Engine, EngineConfig, Event, FinishReason, Request, SampleParams, Weights};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf")
}

struct Case {
    ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
    stop_token: u32,
    greedy_until_stop: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture().join("greedy.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    };
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            ids: ids(&c["ids"]),
            last_logits: c["last_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
            greedy: ids(&c["greedy"]),
            stop_token: c["stop_token"].as_u64().unwrap() as u32,
            greedy_until_stop: ids(&c["greedy_until_stop"]),
        })
        .collect()
}

fn weights() -> Arc<Weights> {
    Arc::new(Weights::load(&fixture()).unwrap())
}

#[test]
fn weights_are_read_in_place_from_the_memory_map() {
    let w = weights();
    assert!(w.embed.is_mapped());
    assert!(
        w.layers
            .iter()
            .all(|l| l.q.is_mapped() && l.down.is_mapped())
    );
    assert!(w.lm_head.as_ref().unwrap().is_mapped());
}

#[test]
fn last_position_logits_match_transformers() {
    let w = weights();
    let mut model = Model::cpu(w.clone());
    for c in cases() {
        let mut cache = KvCache::new(&w.cfg, c.ids.len());
        let out = model
            .step(&mut [Slice {
                cache: &mut cache,
                tokens: &c.ids,
                logits: true,
            }])
            .unwrap();
        let worst = out[0]
            .iter()
            .zip(&c.last_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "max |Δlogit| = {worst}");
    }
}

#[test]
fn greedy_tokens_equal_transformers_generate() {
    let engine = Engine::cpu(weights(), EngineConfig::default());
    for c in cases() {
        let out = engine
            .generate(Request::new(
                c.ids.clone(),
                c.greedy.len(),
                SampleParams::greedy(),
            ))
            .unwrap();
        assert_eq!(out.tokens, c.greedy);
        assert_eq!(out.finish, FinishReason::Length);
        // HF keeps the EOS in its output; the engine ends the sequence without sending it.
        let mut req = Request::new(c.ids.clone(), 40, SampleParams::greedy());
        req.stop_tokens = vec![c.stop_token];
        let out = engine.generate(req).unwrap();
        assert_eq!(out.finish, FinishReason::Stop);
        assert_eq!(
            out.tokens[..],
            c.greedy_until_stop[..c.greedy_until_stop.len() - 1]
        );
    }
}

#[test]
fn concurrent_requests_decode_as_if_alone() {
    // Small prefill chunks force prompts to interleave with other sequences' decoding.
    let limits = EngineConfig {
        max_batch: 3,
        prefill_chunk: 5,
        ..EngineConfig::default()
    };
    let engine = Engine::cpu(weights(), limits);
    let cs = cases();
    let mut streams: Vec<_> = cs
        .iter()
        .flat_map(|c| [c, c])
        .map(|c| {
            engine
                .submit(Request::new(
                    c.ids.clone(),
                    c.greedy.len(),
                    SampleParams::greedy(),
                ))
                .unwrap()
        })
        .collect();
    for (i, s) in streams.iter_mut().enumerate() {
        let mut toks = Vec::new();
        loop {
            match s.blocking_next().unwrap() {
                Event::Token(t) => toks.push(t),
                Event::Done {
                    completion_tokens,
                    prompt_tokens,
                    ..
                } => {
                    assert_eq!(completion_tokens, toks.len());
                    assert_eq!(prompt_tokens, cs[i / 2].ids.len());
                    break;
                }
                Event::Failed(m) => panic!("{m}"),
            }
        }
        assert_eq!(toks, cs[i / 2].greedy, "stream {i}");
    }
}

#[test]
fn a_dropped_stream_is_cancelled_and_others_go_on() {
    let engine = Engine::cpu(weights(), EngineConfig::default());
    let c = &cases()[0];
    let mut keep = engine
        .submit(Request::new(
            c.ids.clone(),
            c.greedy.len(),
            SampleParams::greedy(),
        ))
        .unwrap();
    let mut gone = engine
        .submit(Request::new(c.ids.clone(), 200, SampleParams::greedy()))
        .unwrap();
    assert!(matches!(gone.blocking_next(), Some(Event::Token(_))));
    drop(gone);
    let mut toks = Vec::new();
    while let Some(Event::Token(t)) = keep.blocking_next() {
        toks.push(t);
    }
    assert_eq!(toks, c.greedy);
    // The cancelled sequence left the batch: nothing is active once the kept one ended.
    for _ in 0..200 {
        if engine
            .gauges()
            .active
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the cancelled sequence is still active");
}

#[test]
fn bad_requests_and_a_full_queue_are_errors() {
    let limits = EngineConfig {
        max_batch: 1,
        queue_capacity: 2,
        prefill_chunk: 64,
    };
    let engine = Engine::cpu(weights(), limits);
    let e = engine
        .submit(Request::new(vec![], 4, SampleParams::greedy()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("prompt"), "{e}");
    let e = engine
        .submit(Request::new(vec![1, 9999], 4, SampleParams::greedy()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("vocab_size"), "{e}");
    let e = engine
        .submit(Request::new(vec![1; 256], 4, SampleParams::greedy()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("context"), "{e}");
    // One runs, two wait, the fourth is refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match engine.submit(Request::new(vec![1, 5, 6], 200, SampleParams::greedy())) {
            Ok(s) => held.push(s),
            Err(koala_model::Error::QueueFull(2)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 2, "{refused} refused, {} accepted", held.len());
    assert!(held.len() <= 4);
}

/// The CUDA path (projections through cuBLAS) gives transformers' greedy tokens too. Run by
/// `scripts/gpu-check.sh` (with `--ignored`) on a machine with a GPU, where a GPU that cannot be
/// opened fails it with the reason.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cuda_engine_greedy_tokens_equal_transformers() {
    let engine = Engine::on_device(weights(), "cuda:0", EngineConfig::default())
        .unwrap_or_else(|e| panic!("needs an NVIDIA GPU: the engine could not open cuda:0: {e}"));
    assert!(engine.device().starts_with("cuda"), "{}", engine.device());
    for c in cases() {
        let out = engine
            .generate(Request::new(
                c.ids.clone(),
                c.greedy.len(),
                SampleParams::greedy(),
            ))
            .unwrap();
        assert_eq!(out.tokens, c.greedy);
    }
}
