//! `koala export gguf` checked by llama.cpp itself: llama-cpp-python loads the files we write and
//! decodes greedily, and its tokens must equal those of Hugging Face `transformers` (captured in
//! the fixtures by scripts/gen_engine_fixtures.py and scripts/gen_gguf_fixtures.py) and of our
//! engine. Three f32 models: tiny_hf (byte-level BPE, GQA, untied head), tiny_sp (SentencePiece,
//! tied embeddings) and tiny_hf with the PEFT LoRA adapter tiny_lora merged. llama.cpp also
//! tokenises each prompt text from the file's own vocabulary, which must give transformers' ids.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use koala_model::{Engine, EngineConfig, Request, SampleParams, Weights};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("model/tests/fixtures")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Python with llama-cpp-python, or `None` (a skip, which CI does not allow).
fn python() -> Option<String> {
    let py = std::env::var("KOALA_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import llama_cpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !in_ci(),
            "{py} cannot import llama_cpp in CI (scripts/test.sh installs llama-cpp-python)"
        );
        println!("skipped: {py} cannot import llama_cpp");
        return None;
    }
    Some(py)
}

fn export(model: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_koala"))
        .args(["export", "gguf", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "koala export gguf failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A JSON array of token ids.
fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// llama.cpp's greedy decoding of `prompts` (texts) from `gguf`.
fn llama_cpp(py: &str, gguf: &Path, prompts: &[String], n: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/llama_cpp_greedy.py");
    let req = json!({
        "prompts": prompts.iter().map(|t| json!({"text": t})).collect::<Vec<_>>(),
        "new_tokens": n,
        "threads": 2,
        "n_ctx": 256,
    });
    let mut child = Command::new(py)
        .arg(&script)
        .arg(gguf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "llama.cpp could not run {}: {}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (ids(&r["prompt_ids"]), ids(&r["tokens"])))
        .collect()
}

struct Case {
    prompt: String,
    ids: Vec<u32>,
    greedy: Vec<u32>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("greedy.json")).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            ids: ids(&c["ids"]),
            greedy: ids(&c["greedy"]),
        })
        .collect()
}

/// Our engine's greedy tokens for `ids`.
fn ours(model: &Path, ids: &[u32], n: usize) -> Vec<u32> {
    let engine = Engine::cpu(
        Arc::new(Weights::load(model).unwrap()),
        EngineConfig::default(),
    );
    let req = Request::new(ids.to_vec(), n, SampleParams::greedy());
    engine.generate(req).unwrap().tokens
}

/// Exports `model` (with `extra` flags), runs every fixture case of `reference` through
/// llama.cpp, and checks the prompt ids and greedy tokens against transformers' (and, without an
/// adapter, our engine's).
fn check(py: &str, model: &Path, reference: &Path, extra: &[&str], with_engine: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("model.gguf");
    export(model, &gguf, extra);
    let cases = cases(reference);
    let n = cases[0].greedy.len();
    let prompts: Vec<String> = cases.iter().map(|c| c.prompt.clone()).collect();
    let got = llama_cpp(py, &gguf, &prompts, n);
    for (c, (ids, tokens)) in cases.iter().zip(&got) {
        assert_eq!(
            ids, &c.ids,
            "llama.cpp tokenised {:?} differently",
            c.prompt
        );
        assert_eq!(
            tokens,
            &c.greedy,
            "llama.cpp's greedy tokens differ from transformers' for {:?} ({})",
            c.prompt,
            model.display()
        );
        if with_engine {
            assert_eq!(
                &ours(model, &c.ids, n),
                tokens,
                "our engine differs for {:?}",
                c.prompt
            );
        }
    }
}

#[test]
fn llama_cpp_decodes_a_byte_level_bpe_export_like_transformers() {
    let Some(py) = python() else { return };
    let dir = fixtures().join("tiny_hf");
    check(&py, &dir, &dir, &[], true);
}

#[test]
fn llama_cpp_decodes_a_sentencepiece_export_like_transformers() {
    let Some(py) = python() else { return };
    let dir = fixtures().join("tiny_sp");
    check(&py, &dir, &dir, &[], true);
}

#[test]
fn llama_cpp_decodes_a_merged_lora_adapter_like_peft() {
    let Some(py) = python() else { return };
    let lora = fixtures().join("tiny_lora");
    let adapter = lora.to_str().unwrap();
    check(
        &py,
        &fixtures().join("tiny_hf"),
        &lora,
        &["--adapter", adapter],
        false,
    );
}

/// f16, bf16 and q8_0 exports: every tensor's bytes equal gguf-py's encoding of the f32 export's
/// values (llama.cpp's own Python package: an independent quantizer), and llama.cpp decodes them.
#[test]
fn half_and_eight_bit_exports_match_gguf_py_and_run_in_llama_cpp() {
    let Some(py) = python() else { return };
    let dir = fixtures().join("tiny_hf");
    let cases = cases(&dir);
    let prompts: Vec<String> = cases.iter().map(|c| c.prompt.clone()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let f32_file = tmp.path().join("f32.gguf");
    export(&dir, &f32_file, &[]);
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/gguf_encoding_check.py");
    for (dtype, ty) in [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")] {
        let gguf = tmp.path().join(format!("{dtype}.gguf"));
        export(&dir, &gguf, &["--dtype", dtype]);
        let o = Command::new(&py)
            .arg(&check)
            .arg(&f32_file)
            .arg(&gguf)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{dtype}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        // 2 layers × 7 matrices, the embeddings and the head; 5 norm weights stay f32. With
        // q8_0, ffn_down (rows of 176) cannot be blocked by 32 and is f16.
        let (main, f16) = if dtype == "q8_0" { (14, 2) } else { (16, 0) };
        assert_eq!(v["tensors"][ty], main, "{dtype}: {v}");
        assert_eq!(v["tensors"]["F32"], 5, "{dtype}: {v}");
        if f16 > 0 {
            assert_eq!(v["tensors"]["F16"], f16, "{dtype}: {v}");
        }
        let got = llama_cpp(&py, &gguf, &prompts, 40);
        let mut agree = 0;
        for (c, (ids, tokens)) in cases.iter().zip(&got) {
            assert_eq!(ids, &c.ids);
            assert_eq!(tokens.len(), 40);
            agree += tokens
                .iter()
                .zip(&c.greedy)
                .take_while(|(a, b)| a == b)
                .count();
        }
        println!(
            "{dtype}: {agree} of {} greedy tokens agree with f32 transformers before the first difference",
            40 * cases.len()
        );
    }
}
