//! LoRA training on the CPU: the adapter's gradients are the chain rule of the full model's
//! (merged weights `W + s·B·A`), only adapter tensors are trained and saved, a resumed run is
//! bit-identical to a straight one (dropout masks included), and two workers train the same
//! adapter as one.
mod train_common;

use std::path::{Path, PathBuf};

use koala_kernels::{Backend, CpuBackend};
use koala_trainer::lora::{self, LoraConfig};
use koala_trainer::model::{Inputs, Llama};
use koala_trainer::weights::{self, Tensors};
use koala_trainer::{LlamaConfig, Observer, RunOutcome, TrainConfig, TrainEvent, run};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use train_common::tiny_config;

fn gqa_config() -> LlamaConfig {
    LlamaConfig::from_json_str(
        r#"{"vocab_size": 50, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5}"#,
    )
    .unwrap()
}

/// `[rows, cols]` row-major product helpers in f64.
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|x| a[i * k + x] as f64 * b[x * n + j] as f64)
                .sum();
        }
    }
    out
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = a[i * cols + j];
        }
    }
    out
}

fn assert_close(name: &str, got: &[f32], want: &[f64], rel: f64) {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= rel * scale,
            "{name}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn adapter_gradients_are_the_chain_rule_of_the_merged_models() {
    let be = CpuBackend::new();
    let cfg = gqa_config();
    let base = weights::init_weights(&cfg, 5, 0.05);
    let lc = LoraConfig {
        r: 3,
        alpha: 6.0,
        dropout: 0.0,
        target_modules: lora::MODULES.iter().map(|m| m.0.to_string()).collect(),
    };
    // A non-zero B, so that the adapter changes the model and every term is exercised.
    let mut adapter = lora::init_adapter(&cfg, &lc, 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (name, t) in adapter.iter_mut() {
        if name.contains("lora_B") {
            t.data
                .iter_mut()
                .for_each(|x| *x = rng.random_range(-0.2..0.2));
        }
    }
    let s = lc.scale();
    // The merged model: W' = W + s·B·A.
    let mut merged = base.clone();
    for t in lora::targets(&cfg, &lc).unwrap() {
        let (a, b) = (&adapter[&t.a.name].data, &adapter[&t.b.name].data);
        let ba = matmul(b, a, t.oc, lc.r, t.ic);
        let name =
            t.a.name
                .trim_start_matches("base_model.model.")
                .replace(".lora_A", "");
        let w = merged.get_mut(&name).unwrap();
        for (w, d) in w.data.iter_mut().zip(&ba) {
            *w += (s as f64 * d) as f32;
        }
    }
    let (b, t) = (2, 7);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..50)).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..50)).collect();
    let wts = vec![1.0 / (b * t) as f32; b * t];

    let mut full = Llama::from_tensors(&be, cfg.clone(), &merged).unwrap();
    let inp = Inputs::plain(&be, b, t, &ids).unwrap();
    let tg = be.upload_ids(&targets).unwrap();
    let loss_full = full.forward_backward(&be, &inp, &tg, &wts).unwrap();
    let g_full = full.grads_to_tensors(&be).unwrap();

    let mut ad = Llama::with_lora(&be, cfg.clone(), &base, &lc, &adapter).unwrap();
    assert_eq!(
        ad.n_trainable(),
        ad.specs.iter().map(|s| s.numel()).sum::<usize>()
    );
    assert!(ad.n_trainable() < ad.n_params() / 4);
    let loss_ad = ad.forward_backward(&be, &inp, &tg, &wts).unwrap();
    assert!(
        (loss_full - loss_ad).abs() < 1e-5 * loss_full.abs(),
        "loss {loss_full} vs {loss_ad}"
    );
    let g_ad = ad.grads_to_tensors(&be).unwrap();
    assert_eq!(
        g_ad.len(),
        2 * 7 * 2,
        "one gradient per adapter tensor only"
    );
    for tg in lora::targets(&cfg, &lc).unwrap() {
        let name =
            tg.a.name
                .trim_start_matches("base_model.model.")
                .replace(".lora_A", "");
        let gw = &g_full[&name].data; // [oc, ic]
        let (a, bm) = (&adapter[&tg.a.name].data, &adapter[&tg.b.name].data);
        // dL/dA = s·Bᵀ·dW  ([r, oc]·[oc, ic]),  dL/dB = s·dW·Aᵀ  ([oc, ic]·[ic, r]).
        let want_a: Vec<f64> = matmul(&transpose(bm, tg.oc, lc.r), gw, lc.r, tg.oc, tg.ic)
            .iter()
            .map(|x| x * s as f64)
            .collect();
        let want_b: Vec<f64> = matmul(gw, &transpose(a, lc.r, tg.ic), tg.oc, tg.ic, lc.r)
            .iter()
            .map(|x| x * s as f64)
            .collect();
        assert_close(&tg.a.name, &g_ad[&tg.a.name].data, &want_a, 2e-4);
        assert_close(&tg.b.name, &g_ad[&tg.b.name].data, &want_b, 2e-4);
    }
}

/// Writes a randomly initialised model with weights to `dir/base` (LoRA needs weights).
fn base_model(dir: &Path) -> PathBuf {
    let cfg_path = dir.join("config.json");
    train_common::make_data(dir);
    let cfg = LlamaConfig::from_file(&cfg_path).unwrap();
    let w = weights::init_weights(&cfg, 3, 0.02);
    let out = dir.join("base");
    weights::save_dir(&out, &cfg, &w, 1 << 30).unwrap();
    out
}

fn lora_config(dir: &Path, out: &str, max_steps: Option<u64>, workers: usize) -> TrainConfig {
    let base = base_model(dir);
    let mut cfg = tiny_config(
        dir,
        out,
        "[lora]\nr = 4\nalpha = 8\ndropout = 0.1\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]",
        "batch_size = 4",
    );
    cfg.model = base;
    cfg.max_steps = max_steps;
    cfg.workers = workers;
    cfg
}

#[derive(Default)]
struct Recorder(Vec<TrainEvent>);

impl Observer for Recorder {
    fn event(&mut self, ev: &TrainEvent) {
        self.0.push(ev.clone());
    }
}

fn losses(ev: &[TrainEvent]) -> Vec<u32> {
    ev.iter()
        .filter_map(|e| match e {
            TrainEvent::Step { loss, .. } => Some(loss.to_bits()),
            _ => None,
        })
        .collect()
}

fn adapter(dir: &Path) -> Tensors {
    weights::load_file(&dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn lora_training_saves_peft_adapters_and_resumes_bit_identically() {
    let d = tempfile::tempdir().unwrap();
    let straight = lora_config(d.path(), "straight", None, 0);
    let mut a = Recorder::default();
    assert_eq!(run(&straight, &mut a).unwrap(), RunOutcome::Finished);
    let la = losses(&a.0);
    assert_eq!(la.len(), 10);
    assert!(
        f32::from_bits(la[9]) < f32::from_bits(la[0]),
        "loss did not go down: {la:?}"
    );
    // The final model is the adapter alone, in peft's layout and names.
    let fin = d.path().join("straight/final");
    assert!(!fin.join("model.safetensors").exists());
    let cfgj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfgj["peft_type"], "LORA");
    assert_eq!(cfgj["r"], 4);
    assert_eq!(cfgj["lora_alpha"], 8.0);
    let ad = adapter(&fin);
    assert_eq!(ad.len(), 2 * 3 * 2);
    assert!(ad.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert!(
        ad.values()
            .filter(|_| true)
            .any(|t| t.data.iter().any(|&x| x != 0.0))
    );
    // Checkpoints: the adapter and its moments only; the base is not copied.
    let ck = d.path().join("straight/checkpoints/step-00000002");
    assert!(ck.join("adapter_model.safetensors").exists());
    assert!(!ck.join("model.safetensors").exists());
    let opt = weights::load_file(&ck.join("optimizer.safetensors")).unwrap();
    assert_eq!(opt.len(), 2 * ad.len());
    assert!(opt.keys().all(|k| k.contains(".lora_")));

    // Interrupted after 7 steps, then resumed: same losses, same adapter bits.
    let part = lora_config(d.path(), "resumed", Some(7), 0);
    let mut b1 = Recorder::default();
    run(&part, &mut b1).unwrap();
    let mut b2 = Recorder::default();
    run(&lora_config(d.path(), "resumed", None, 0), &mut b2).unwrap();
    assert!(matches!(
        b2.0[0],
        TrainEvent::Started {
            resumed_from: Some(7),
            ..
        }
    ));
    let mut lb = losses(&b1.0);
    lb.extend(losses(&b2.0));
    assert_eq!(la, lb, "losses differ after resume");
    let fa = std::fs::read(fin.join("adapter_model.safetensors")).unwrap();
    let fb = std::fs::read(d.path().join("resumed/final/adapter_model.safetensors")).unwrap();
    assert!(fa == fb, "adapters are not bit-identical after resume");

    // A full fine-tuning run may not resume a LoRA run's out_dir.
    let mut mixed = lora_config(d.path(), "resumed", None, 0);
    mixed.lora = None;
    let e = run(&mixed, &mut Recorder::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("do not mix") || e.contains("other hyperparameters"),
        "{e}"
    );
}

#[test]
fn two_workers_train_the_same_adapter_as_one() {
    // Dropout on: the ranks draw the masks one worker draws (by global micro-batch).
    let d = tempfile::tempdir().unwrap();
    run(
        &lora_config(d.path(), "one", Some(3), 0),
        &mut Recorder::default(),
    )
    .unwrap();
    run(
        &lora_config(d.path(), "two", Some(3), 2),
        &mut Recorder::default(),
    )
    .unwrap();
    let (a, b) = (
        adapter(&d.path().join("one/final")),
        adapter(&d.path().join("two/final")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, ta) in &a {
        let tb = &b[k];
        let worst = ta
            .data
            .iter()
            .zip(&tb.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        // Two workers sum their gradients in another order: equal to rounding.
        assert!(worst < 1e-5, "{k}: worst |diff| {worst}");
    }
}

#[test]
fn lora_without_base_weights_or_with_bad_settings_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = lora_config(d.path(), "x", Some(1), 0);
    cfg.model = d.path().join("config.json");
    let e = run(&cfg, &mut Recorder::default()).unwrap_err().to_string();
    assert!(e.contains("[lora] needs a model with weights"), "{e}");
    let mut cfg = lora_config(d.path(), "y", Some(1), 0);
    cfg.lora.as_mut().unwrap().target_modules = vec!["lm_head".into()];
    let e = run(&cfg, &mut Recorder::default()).unwrap_err().to_string();
    assert!(e.contains("unknown module \"lm_head\""), "{e}");
}
