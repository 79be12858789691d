//! Parity with PyTorch + HF `transformers` (fixtures from scripts/gen_llama_fixtures.py):
//! logits within 1e-4 absolute, gradients within 1e-4 of each tensor's largest element, the
//! losses of 10 AdamW steps within 1e-5. Plus packed-row masking and the KV-cache path.
use std::path::PathBuf;

use koala_kernels::Backend;
use koala_kernels::cpu::CpuBackend;
use koala_trainer::data::{Batch, Row};
use koala_trainer::model::{Inputs, Llama};
use koala_trainer::optim::AdamW;
use koala_trainer::train::{loss_weights, train_step};
use koala_trainer::weights::{self, Tensors};
use koala_trainer::{Hyper, LlamaConfig, LossMode};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_llama")
}

struct Fx {
    cfg: LlamaConfig,
    w: Tensors,
    expected: Tensors,
    meta: serde_json::Value,
}

fn fixture() -> Fx {
    let d = dir();
    let cfg = LlamaConfig::from_file(&d.join("config.json")).unwrap();
    let w = weights::load_dir(&d).unwrap();
    weights::check_against(&cfg, &w, &d).unwrap();
    let expected = weights::load_file(&d.join("expected.safetensors")).unwrap();
    let meta =
        serde_json::from_str(&std::fs::read_to_string(d.join("fixture.json")).unwrap()).unwrap();
    Fx {
        cfg,
        w,
        expected,
        meta,
    }
}

fn rows(meta: &serde_json::Value) -> Vec<Row> {
    let ids = meta["input_ids"].as_array().unwrap();
    let mask = meta["loss_mask"].as_array().unwrap();
    ids.iter()
        .zip(mask)
        .map(|(i, m)| {
            let tokens: Vec<u32> = i
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let loss_mask = m
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect();
            let n = tokens.len();
            Row {
                tokens,
                loss_mask,
                segment_ids: vec![0; n],
            }
        })
        .collect()
}

/// Largest |a - b|, and the largest |b|.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    (d, m)
}

#[test]
fn config_reads_transformers_5_rope_parameters() {
    let fx = fixture();
    assert_eq!(fx.cfg.rope_theta, 10000.0);
    assert_eq!(
        (
            fx.cfg.n_kv_heads(),
            fx.cfg.head_dim(),
            fx.cfg.tie_word_embeddings
        ),
        (2, 16, false)
    );
}

#[test]
fn logits_match_hf() {
    let fx = fixture();
    let be = CpuBackend::new();
    let mut model = Llama::from_tensors(&be, fx.cfg.clone(), &fx.w).unwrap();
    let rows = rows(&fx.meta);
    let ids: Vec<u32> = rows.iter().flat_map(|r| r.tokens.clone()).collect();
    let (b, t) = (rows.len(), rows[0].tokens.len());
    model
        .forward(&be, &Inputs::plain(&be, b, t, &ids).unwrap())
        .unwrap();
    let (d, m) = max_diff(&model.logits(&be).unwrap(), &fx.expected["logits"].data);
    println!("logits: max abs diff {d:e} (max |logit| {m})");
    assert!(d <= 1e-4, "logits differ by {d}");
    for l in 0..fx.cfg.num_hidden_layers {
        let (d, _) = max_diff(
            &model.hidden_state(&be, l).unwrap(),
            &fx.expected[&format!("hidden.{l}")].data,
        );
        println!("input of layer {l}: max abs diff {d:e}");
        assert!(d <= 1e-5, "hidden state {l} differs by {d}");
    }
}

#[test]
fn loss_and_grads_match_hf() {
    let fx = fixture();
    let be = CpuBackend::new();
    let mut model = Llama::from_tensors(&be, fx.cfg.clone(), &fx.w).unwrap();
    let rows = rows(&fx.meta);
    let refs: Vec<&Row> = rows.iter().collect();
    let batch = Batch::from_rows(&refs, 1024);
    for mode in [LossMode::RowMean, LossMode::TokenMean] {
        let w = &loss_weights(std::slice::from_ref(&batch), mode)[0];
        let inp = Inputs::upload(
            &be,
            batch.b,
            batch.t,
            &batch.inputs,
            &batch.positions,
            &batch.segment_ids,
        )
        .unwrap();
        let targets = be.upload_ids(&batch.targets).unwrap();
        model.zero_grads(&be).unwrap();
        let loss = model.forward_backward(&be, &inp, &targets, w).unwrap();
        let want = fx.meta[if mode == LossMode::TokenMean {
            "loss"
        } else {
            "row_mean_loss"
        }]
        .as_f64()
        .unwrap();
        println!("{mode:?}: loss {loss} vs {want}");
        assert!(
            (loss - want).abs() <= 1e-5,
            "{mode:?} loss {loss} vs {want}"
        );
    }
    // Gradients of the token mean (the last mode above).
    let grads = model.grads_to_tensors(&be).unwrap();
    let mut worst = (0.0f32, String::new());
    for (name, g) in &grads {
        let r = &fx.expected[&format!("grad.{name}")];
        assert_eq!(g.shape, r.shape, "{name}");
        let (d, m) = max_diff(&g.data, &r.data);
        let rel = d / m.max(1e-30);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        assert!(
            rel <= 1e-4,
            "grad {name}: max diff {d:e}, max |ref| {m:e}, relative {rel:e}"
        );
    }
    println!("gradients: worst relative diff {:e} ({})", worst.0, worst.1);
}

#[test]
fn ten_adamw_steps_match_torch() {
    let fx = fixture();
    let be = CpuBackend::new();
    let mut model = Llama::from_tensors(&be, fx.cfg.clone(), &fx.w).unwrap();
    let a = &fx.meta["adamw"];
    let f = |k: &str| a[k].as_f64().unwrap() as f32;
    let betas = a["betas"].as_array().unwrap();
    let hyper = Hyper {
        batch_size: 2,
        micro_batch_size: 1, // exercises gradient accumulation too
        max_len: 1024,
        beta1: betas[0].as_f64().unwrap() as f32,
        beta2: betas[1].as_f64().unwrap() as f32,
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        grad_clip: f("clip"),
        ..Hyper::default()
    };
    let mut opt = AdamW::new(
        &be,
        &model,
        hyper.beta1,
        hyper.beta2,
        hyper.eps,
        hyper.weight_decay,
        hyper.grad_clip,
    )
    .unwrap();
    let rows = rows(&fx.meta);
    let refs: Vec<&Row> = rows.iter().collect();
    let lrs = a["lrs"].as_array().unwrap();
    let want = a["losses"].as_array().unwrap();
    let norms = a["grad_norms"].as_array().unwrap();
    for step in 0..10 {
        let lr = lrs[step].as_f64().unwrap() as f32;
        let (loss, norm, _) = train_step(&be, &mut model, &mut opt, &refs, &hyper, lr).unwrap();
        let (wl, wn) = (want[step].as_f64().unwrap(), norms[step].as_f64().unwrap());
        println!("step {step}: loss {loss} vs {wl}, grad norm {norm} vs {wn}");
        assert!(
            (loss as f64 - wl).abs() <= 1e-5,
            "step {step}: loss {loss} vs {wl}"
        );
        assert!(
            (norm - wn).abs() <= 1e-4 * wn,
            "step {step}: grad norm {norm} vs {wn}"
        );
    }
}

#[test]
fn sharded_and_half_precision_files_load() {
    let fx = fixture();
    let d = dir();
    assert_eq!(weights::load_dir(&d.join("sharded")).unwrap(), fx.w);
    for (sub, rel) in [("bf16", 1.0 / 256.0), ("f16", 1.0 / 2048.0)] {
        let h = weights::load_dir(&d.join(sub)).unwrap();
        assert_eq!(h.len(), fx.w.len());
        for (name, t) in &fx.w {
            for (a, b) in t.data.iter().zip(&h[name].data) {
                assert!(
                    (a - b).abs() <= rel * a.abs() + 1e-7,
                    "{sub} {name}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn packed_row_logits_equal_each_example_alone() {
    let fx = fixture();
    let be = CpuBackend::new();
    let mut model = Llama::from_tensors(&be, fx.cfg.clone(), &fx.w).unwrap();
    let a: Vec<u32> = vec![5, 17, 99, 3, 64, 2, 8];
    let b: Vec<u32> = vec![1, 44, 120, 7, 7, 30, 31, 90, 11];
    let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
    let segs: Vec<u32> = a.iter().map(|_| 0).chain(b.iter().map(|_| 1)).collect();
    let pos: Vec<u32> = (0..a.len() as u32).chain(0..b.len() as u32).collect();
    let v = fx.cfg.vocab_size;
    let n = packed.len();
    model
        .forward(
            &be,
            &Inputs::upload(&be, 1, n, &packed, &pos, &segs).unwrap(),
        )
        .unwrap();
    let lp = model.logits(&be).unwrap();
    model
        .forward(&be, &Inputs::plain(&be, 1, a.len(), &a).unwrap())
        .unwrap();
    let la = model.logits(&be).unwrap();
    model
        .forward(&be, &Inputs::plain(&be, 1, b.len(), &b).unwrap())
        .unwrap();
    let lb = model.logits(&be).unwrap();
    let (da, _) = max_diff(&lp[..a.len() * v], &la);
    let (db, _) = max_diff(&lp[a.len() * v..], &lb);
    println!("packed vs alone: {da:e}, {db:e}");
    assert!(da <= 1e-5 && db <= 1e-5, "packed logits differ: {da}, {db}");
    // Without the segment mask the second example would see the first: make sure that matters.
    let plain_pos: Vec<u32> = (0..n as u32).collect();
    model
        .forward(
            &be,
            &Inputs::upload(&be, 1, n, &packed, &plain_pos, &vec![0; n]).unwrap(),
        )
        .unwrap();
    let (dc, _) = max_diff(&model.logits(&be).unwrap()[a.len() * v..], &lb);
    assert!(dc > 1e-3, "the test would not catch a missing mask ({dc})");
}

/// The inference engine's KV-cached forward (koala-model, fed in chunks as continuous batching
/// does) against the training forward of the same checkpoint.
#[test]
fn kv_cache_logits_equal_full_forward() {
    use koala_model::forward::{Model, Slice};
    use koala_model::kv::KvCache;
    let fx = fixture();
    let be = CpuBackend::new();
    let mut model = Llama::from_tensors(&be, fx.cfg.clone(), &fx.w).unwrap();
    let ids: Vec<u32> = vec![3, 9, 27, 81, 115, 2, 6, 18, 54, 34];
    let v = fx.cfg.vocab_size;
    model
        .forward(&be, &Inputs::plain(&be, 1, ids.len(), &ids).unwrap())
        .unwrap();
    let full = model.logits(&be).unwrap();
    let w = std::sync::Arc::new(koala_model::Weights::load(&dir()).unwrap());
    let mut engine = Model::cpu(w.clone());
    let mut cache = KvCache::new(&w.cfg, ids.len());
    let mut feed = |toks: &[u32]| {
        let slice = Slice {
            cache: &mut cache,
            tokens: toks,
            logits: true,
        };
        engine.step(&mut [slice]).unwrap().remove(0)
    };
    let mut got = vec![feed(&ids[..4])];
    for &t in &ids[4..] {
        got.push(feed(&[t]));
    }
    for (k, l) in got.iter().enumerate() {
        let pos = 3 + k;
        let (d, _) = max_diff(l, &full[pos * v..(pos + 1) * v]);
        assert!(d <= 1e-4, "position {pos}: cached logits differ by {d}");
    }
}

/// Our saved checkpoint loads in HF `transformers` as-is and gives our logits. Needs Python with
/// torch + transformers (`$KOALA_PYTHON`, else `python3`); skips with a message otherwise.
#[test]
fn transformers_loads_our_checkpoint() {
    let py = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&py)
        .args(["-c", "import torch, transformers"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("skipped: {py} cannot import torch and transformers");
        return;
    }
    let fx = fixture();
    let be = CpuBackend::new();
    let mut model = Llama::from_tensors(&be, fx.cfg.clone(), &fx.w).unwrap();
    // Change the weights with one training step so the check is not a copy of the input file.
    let rows = rows(&fx.meta);
    let refs: Vec<&Row> = rows.iter().collect();
    let hyper = Hyper {
        batch_size: 2,
        micro_batch_size: 2,
        max_len: 64,
        ..Hyper::default()
    };
    let mut opt = AdamW::new(&be, &model, 0.9, 0.999, 1e-8, 0.0, 1.0).unwrap();
    train_step(&be, &mut model, &mut opt, &refs, &hyper, 1e-2).unwrap();
    let d = tempfile::tempdir().unwrap();
    let mdir = d.path().join("model");
    weights::save_dir(&mdir, &model.cfg, &model.to_tensors(&be).unwrap(), 200_000).unwrap();
    let ids: Vec<u32> = rows.iter().flat_map(|r| r.tokens.clone()).collect();
    model
        .forward(&be, &Inputs::plain(&be, 2, 16, &ids).unwrap())
        .unwrap();
    let ours = model.logits(&be).unwrap();
    let out = d.path().join("hf.npy");
    let code = format!(
        "import json, numpy, torch\nfrom transformers import LlamaForCausalLM\n\
         m = LlamaForCausalLM.from_pretrained({mdir:?}, attn_implementation='eager').float().eval()\n\
         ids = torch.tensor({ids})\n\
         with torch.no_grad(): l = m(input_ids=ids).logits\n\
         numpy.save({out:?}, l.numpy().astype('float32'))\n",
        mdir = mdir.to_string_lossy(),
        ids = serde_json::to_string(&fx.meta["input_ids"]).unwrap(),
        out = out.to_string_lossy(),
    );
    let o = std::process::Command::new(&py)
        .args(["-c", &code])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "transformers failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (shape, hf) = koala_trainer::npy::read_f32(&out).unwrap();
    assert_eq!(shape, vec![2, 16, 128]);
    let (diff, _) = max_diff(&ours, &hf);
    println!("transformers on our sharded checkpoint: max logit diff {diff:e}");
    assert!(diff <= 1e-4, "{diff}");
}
