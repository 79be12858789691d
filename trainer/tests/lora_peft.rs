//! LoRA against peft: a peft adapter (model/tests/fixtures/tiny_lora, on tiny_hf) run through our
//! adapter path gives peft's logits, and our backward gives the gradients torch's autograd gives
//! its lora_A / lora_B tensors. The references are written by scripts/gen_lora_fixtures.py into
//! trainer/tests/fixtures/lora_peft.
use std::path::PathBuf;

use koala_kernels::{Backend, CpuBackend};
use koala_trainer::model::{Inputs, Llama};
use koala_trainer::{LlamaConfig, lora, npy, weights};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> PathBuf {
    root().join("trainer/tests/fixtures/lora_peft")
}

fn ids() -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("ids.json")).unwrap())
            .unwrap();
    let rows = |k: &str| -> Vec<Vec<u32>> { serde_json::from_value(j[k].clone()).unwrap() };
    (rows("input_ids"), rows("targets"))
}

fn model(be: &CpuBackend) -> Llama<CpuBackend> {
    let base = root().join("model/tests/fixtures/tiny_hf");
    let cfg = LlamaConfig::from_file(&base.join("config.json")).unwrap();
    let w = weights::load_dir(&base).unwrap();
    let (lc, ad) =
        lora::load_adapter(&root().join("model/tests/fixtures/tiny_lora"), &cfg).unwrap();
    assert_eq!((lc.r, lc.alpha, lc.target_modules.len()), (4, 8.0, 7));
    Llama::with_lora(be, cfg, &w, &lc, &ad).unwrap()
}

/// Worst `|a − b|` relative to the largest `|b|`.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn peft_adapter_logits_and_gradients_match_peft() {
    let be = CpuBackend::new();
    let mut m = model(&be);
    let (x, y) = ids();
    let (b, t) = (x.len(), x[0].len());
    let flat: Vec<u32> = x.concat();
    let inp = Inputs::plain(&be, b, t, &flat).unwrap();
    m.forward(&be, &inp).unwrap();
    let logits = m.logits(&be).unwrap();
    let (shape, want) = npy::read_f32(&fixture().join("logits.npy")).unwrap();
    assert_eq!(shape, vec![b, t, m.cfg.vocab_size]);
    let w = worst(&logits, &want);
    assert!(w < 1e-5, "logits: worst relative diff {w:e}");

    // The mean cross-entropy over all positions, as the script's loss.
    let n = b * t;
    let targets = be.upload_ids(&y.concat()).unwrap();
    m.zero_grads(&be).unwrap();
    let loss = m
        .forward_backward(&be, &inp, &targets, &vec![1.0 / n as f32; n])
        .unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("ids.json")).unwrap())
            .unwrap();
    let want_loss = j["loss"].as_f64().unwrap();
    assert!(
        (loss - want_loss).abs() < 1e-5 * want_loss,
        "{loss} vs {want_loss}"
    );
    let grads = m.grads_to_tensors(&be).unwrap();
    let want = weights::load_file(&fixture().join("grads.safetensors")).unwrap();
    assert_eq!(
        grads.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "our adapter tensors are peft's, by name"
    );
    for (k, g) in &grads {
        let w = worst(&g.data, &want[k].data);
        assert!(w < 1e-4, "{k}: worst relative diff {w:e}");
    }
}
