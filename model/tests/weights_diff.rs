//! `weight_diff::{diff, recover}` on small checkpoints built here: f32, bf16, f16 and other
//! dtypes, NaN payloads, infinities and `-0.0`, a base in three shards against a tuned checkpoint
//! in two, a resized embedding, a dtype change, tensors only one side has. The recovered tensors
//! (and files) must equal the tuned ones byte for byte; a base one ulp off, a corrupted diff and
//! malformed inputs must fail with errors that name the file and the tensor.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use koala_model::Error;
use koala_model::weight_diff::{self, Kind, MANIFEST};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A tensor to write: dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug)]
struct T {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

type Tensors = BTreeMap<String, T>;

/// Bit patterns that a float subtraction would not give back.
const F32_SPECIAL: [u32; 10] = [
    0x7fc0_0000, // NaN
    0x7fc0_1234, // NaN with a payload
    0x7f80_0001, // signalling NaN
    0xffc0_0000, // negative NaN
    0x7f80_0000, // inf
    0xff80_0000, // -inf
    0x8000_0000, // -0.0
    0x0000_0001, // smallest subnormal
    0x7f7f_ffff, // f32::MAX
    0x3f80_0000, // 1.0
];
const H16_SPECIAL: [u16; 8] = [
    0x7fc1, 0xffc0, 0x7f80, 0xff80, 0x8000, 0x0001, 0x7f7f, 0x3f80,
];

fn f32s(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0).to_bits())
        .collect();
    for (x, s) in v.iter_mut().zip(F32_SPECIAL) {
        *x = s;
    }
    v
}

fn t_f32(shape: &[usize], bits: &[u32]) -> T {
    T {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
    }
}

fn t_h16(dtype: Dtype, shape: &[usize], bits: &[u16]) -> T {
    T {
        dtype,
        shape: shape.to_vec(),
        bytes: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
    }
}

fn bf16s(rng: &mut ChaCha8Rng, n: usize) -> Vec<u16> {
    let mut v: Vec<u16> = (0..n)
        .map(|_| bf16::from_f32(rng.random::<f32>() - 0.5).to_bits())
        .collect();
    for (x, s) in v.iter_mut().zip(H16_SPECIAL) {
        *x = s;
    }
    v
}

fn f16s(rng: &mut ChaCha8Rng, n: usize) -> Vec<u16> {
    let mut v: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.random::<f32>() - 0.5).to_bits())
        .collect();
    // f16 NaN, -NaN, inf, -inf, -0.0, subnormal, max.
    for (x, s) in v
        .iter_mut()
        .zip([0x7e01u16, 0xfe00, 0x7c00, 0xfc00, 0x8000, 0x0001, 0x7bff])
    {
        *x = s;
    }
    v
}

/// "Fine-tunes" bit patterns: small float steps for most, swaps between special values for some.
fn tune32(bits: &[u32], rng: &mut ChaCha8Rng) -> Vec<u32> {
    let mut v: Vec<u32> = bits
        .iter()
        .map(|&b| (f32::from_bits(b) + (rng.random::<f32>() - 0.5) * 1e-3).to_bits())
        .collect();
    v.rotate_left(3);
    for (x, s) in v.iter_mut().zip(F32_SPECIAL.iter().rev()) {
        *x = *s;
    }
    v
}

fn tune16(bits: &[u16], rng: &mut ChaCha8Rng) -> Vec<u16> {
    let mut v: Vec<u16> = bits
        .iter()
        .map(|&b| b.wrapping_add(rng.random_range(0..7u16)).wrapping_sub(3))
        .collect();
    v.rotate_left(2);
    v
}

/// The base and tuned checkpoints' tensors.
fn tensors() -> (Tensors, Tensors) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut base = Tensors::new();
    let mut tuned = Tensors::new();
    let mut both = |name: &str, b: T, t: T| {
        base.insert(name.to_string(), b);
        tuned.insert(name.to_string(), t);
    };
    // bf16 projections, f16 MLP, f32 norms.
    for l in 0..2 {
        let q = bf16s(&mut rng, 64);
        both(
            &format!("model.layers.{l}.self_attn.q_proj.weight"),
            t_h16(Dtype::BF16, &[8, 8], &q),
            t_h16(Dtype::BF16, &[8, 8], &tune16(&q, &mut rng)),
        );
        let up = f16s(&mut rng, 96);
        both(
            &format!("model.layers.{l}.mlp.up_proj.weight"),
            t_h16(Dtype::F16, &[12, 8], &up),
            t_h16(Dtype::F16, &[12, 8], &tune16(&up, &mut rng)),
        );
        let norm = f32s(&mut rng, 8);
        both(
            &format!("model.layers.{l}.input_layernorm.weight"),
            t_f32(&[8], &norm),
            t_f32(&[8], &tune32(&norm, &mut rng)),
        );
    }
    let norm = f32s(&mut rng, 8);
    both(
        "model.norm.weight",
        t_f32(&[8], &norm),
        t_f32(&[8], &norm), // unchanged: an all-zero delta
    );
    // A dtype change: f32 in the base, bf16 tuned.
    let k = f32s(&mut rng, 32);
    let k16: Vec<u16> = k
        .iter()
        .map(|&b| bf16::from_f32(f32::from_bits(b)).to_bits())
        .collect();
    both(
        "model.layers.0.self_attn.k_proj.weight",
        t_f32(&[4, 8], &k),
        t_h16(Dtype::BF16, &[4, 8], &k16),
    );
    // Other dtypes go through the same integer lanes: i64, f64, a byte type and a sub-byte one.
    let ints: Vec<u8> = [i64::MIN, -1, 0, i64::MAX]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let ints_t: Vec<u8> = [i64::MAX, 1, -7, i64::MIN]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    both(
        "extra.counts",
        T {
            dtype: Dtype::I64,
            shape: vec![4],
            bytes: ints,
        },
        T {
            dtype: Dtype::I64,
            shape: vec![4],
            bytes: ints_t,
        },
    );
    let f64s = |xs: [f64; 3]| -> Vec<u8> { xs.iter().flat_map(|x| x.to_le_bytes()).collect() };
    both(
        "extra.scale",
        T {
            dtype: Dtype::F64,
            shape: vec![3],
            bytes: f64s([f64::NAN, -0.0, 1e-310]),
        },
        T {
            dtype: Dtype::F64,
            shape: vec![3],
            bytes: f64s([f64::INFINITY, 0.0, -f64::NAN]),
        },
    );
    both(
        "extra.fp8",
        T {
            dtype: Dtype::F8_E4M3,
            shape: vec![5],
            bytes: vec![0x00, 0x7f, 0x80, 0xff, 0x38],
        },
        T {
            dtype: Dtype::F8_E4M3,
            shape: vec![5],
            bytes: vec![0xff, 0x00, 0x81, 0x7e, 0x38],
        },
    );
    both(
        "extra.fp4",
        T {
            dtype: Dtype::F4,
            shape: vec![6],
            bytes: vec![0x12, 0xf0, 0x7a],
        },
        T {
            dtype: Dtype::F4,
            shape: vec![6],
            bytes: vec![0x21, 0x0f, 0x7b],
        },
    );
    // The embedding, resized for a pad token: stored whole.
    let e = bf16s(&mut rng, 40);
    let mut e_t = tune16(&e, &mut rng);
    e_t.extend(bf16s(&mut rng, 8));
    base.insert(
        "model.embed_tokens.weight".into(),
        t_h16(Dtype::BF16, &[5, 8], &e),
    );
    tuned.insert(
        "model.embed_tokens.weight".into(),
        t_h16(Dtype::BF16, &[6, 8], &e_t),
    );
    // Only tuned: an untied head. Only base: a rotary buffer.
    tuned.insert(
        "lm_head.weight".into(),
        t_h16(Dtype::BF16, &[6, 8], &bf16s(&mut rng, 48)),
    );
    base.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        t_f32(&[4], &f32s(&mut rng, 4)),
    );
    (base, tuned)
}

fn write_st(path: &Path, tensors: &[(&String, &T)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Writes a HF checkpoint folder: `model.safetensors` for one shard, else numbered shards and an
/// index; the tensors go to shards round-robin in name order.
fn write_ckpt(dir: &Path, tensors: &Tensors, shards: usize, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let all: Vec<(&String, &T)> = tensors.iter().collect();
    if shards == 1 {
        write_st(&dir.join("model.safetensors"), &all);
        return;
    }
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let fname = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: Vec<(&String, &T)> = all.iter().skip(s).step_by(shards).copied().collect();
        for (n, _) in &part {
            weight_map.insert(n.to_string(), fname.clone().into());
        }
        write_st(&dir.join(&fname), &part);
    }
    let total: usize = tensors.values().map(|t| t.bytes.len()).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

const FILES: &[(&str, &str)] = &[
    (
        "config.json",
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 6}"#,
    ),
    ("generation_config.json", r#"{"bos_token_id": 1}"#),
    ("tokenizer.json", r#"{"model": {"type": "BPE"}}"#),
    ("tokenizer_config.json", r#"{"pad_token": "<pad>"}"#),
];

/// Base in `base_shards` files, tuned in `tuned_shards` with its side files (and a stray
/// `pytorch_model.bin` and a subfolder that must not be copied).
fn setup(root: &Path, base_shards: usize, tuned_shards: usize) -> (PathBuf, PathBuf, Tensors) {
    let (base, tuned) = tensors();
    let (b, t) = (root.join("base"), root.join("tuned"));
    write_ckpt(&b, &base, base_shards, &[("config.json", "{}")]);
    write_ckpt(&t, &tuned, tuned_shards, FILES);
    std::fs::write(t.join("pytorch_model.bin"), b"tuned weights, whole").unwrap();
    std::fs::create_dir(t.join("runs")).unwrap();
    std::fs::write(t.join("runs/events"), b"x").unwrap();
    (b, t, tuned)
}

/// Every tensor of the checkpoint folder `dir`: dtype, shape, bytes.
fn read_all(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (n, v) in st.tensors() {
                let prev = out.insert(n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()));
                assert!(prev.is_none());
            }
        }
    }
    out
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Flips a byte inside tensor `name`'s data in the safetensors file `path`.
fn flip_byte_of(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let (n, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let info = meta.info(name).unwrap();
    bytes[8 + n + info.data_offsets.0] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// The file of `dir` whose header lists tensor `name`.
fn file_with(dir: &Path, name: &str) -> PathBuf {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            if SafeTensors::read_metadata(&bytes)
                .unwrap()
                .1
                .info(name)
                .is_some()
            {
                return p;
            }
        }
    }
    panic!("no file of {} holds {name}", dir.display());
}

#[test]
fn sharded_round_trip_is_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let (b, t, tuned) = setup(d.path(), 3, 2);
    let (diff_dir, rec) = (d.path().join("diff"), d.path().join("out/recovered"));
    let mut calls = 0;
    let rep = weight_diff::diff(&b, &t, &diff_dir, |p| {
        calls += 1;
        assert!(p.bytes_done <= p.bytes_total && p.tensors_done <= p.tensors_total);
    })
    .unwrap();
    assert_eq!(calls, tuned.len());
    assert_eq!(rep.tensors, tuned.len());
    assert_eq!(rep.shards, 2);
    let whole: Vec<&str> = rep.whole.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        whole
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.k_proj.weight"
        ]
        .into_iter()
        .collect(),
        "{:?}",
        rep.whole
    );
    assert_eq!(rep.delta, tuned.len() - 3);
    assert_eq!(
        rep.base_only,
        vec!["model.layers.0.self_attn.rotary_emb.inv_freq".to_string()]
    );
    // Side files copied, weight files and folders not.
    assert_eq!(
        file_names(&diff_dir),
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "weight_diff-00001-of-00002.safetensors",
            "weight_diff-00002-of-00002.safetensors",
            MANIFEST,
        ]
    );
    // The manifest says what is stored how.
    let m = weight_diff::read_manifest(&diff_dir).unwrap();
    let entries: HashMap<&str, &weight_diff::TensorEntry> = m
        .shards
        .iter()
        .flat_map(|s| &s.tensors)
        .map(|e| (e.name.as_str(), e))
        .collect();
    let emb = entries["model.embed_tokens.weight"];
    assert_eq!(emb.kind, Kind::Whole);
    assert!(emb.reason.as_deref().unwrap().contains("shape"), "{emb:?}");
    let k = entries["model.layers.0.self_attn.k_proj.weight"];
    assert!(k.reason.as_deref().unwrap().contains("dtype"), "{k:?}");
    let q = entries["model.layers.1.self_attn.q_proj.weight"];
    assert_eq!(q.kind, Kind::Delta);
    assert_eq!(q.base.as_ref().unwrap().dtype, Dtype::BF16);
    // The deltas are unsigned integers of the lane width, with the tensor's shape (bytes for F4).
    let stored = read_all(&diff_dir);
    assert_eq!(
        stored["model.layers.1.self_attn.q_proj.weight"].0,
        Dtype::U16
    );
    assert_eq!(stored["model.layers.1.mlp.up_proj.weight"].0, Dtype::U16);
    assert_eq!(stored["model.norm.weight"].0, Dtype::U32);
    assert!(stored["model.norm.weight"].2.iter().all(|&x| x == 0));
    assert_eq!(stored["extra.counts"].0, Dtype::U64);
    assert_eq!(stored["extra.fp8"].0, Dtype::U8);
    assert_eq!(stored["extra.fp4"].0, Dtype::U8);
    assert_eq!(stored["extra.fp4"].1, vec![3]);
    assert_eq!(stored["model.embed_tokens.weight"].0, Dtype::BF16);
    // The diff files are not a model: format is ours.
    let bytes = std::fs::read(diff_dir.join("weight_diff-00001-of-00002.safetensors")).unwrap();
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1;
    assert_eq!(
        meta.metadata().as_ref().unwrap()["format"],
        "koala-weight-diff"
    );

    let rr = weight_diff::recover(&b, &diff_dir, &rec, |_| {}).unwrap();
    assert_eq!(rr.tensors, tuned.len());
    assert_eq!(rr.shards, 2);
    // Every tensor: same dtype, shape and bytes as tuned.
    let got = read_all(&rec);
    assert_eq!(got.len(), tuned.len());
    for (n, t) in &tuned {
        let (dt, shape, bytes) = &got[n];
        assert_eq!((dt, shape), (&t.dtype, &t.shape), "{n}");
        assert!(bytes == &t.bytes, "{n}: bytes differ");
    }
    // And the files themselves, byte for byte: shards, index, side files; nothing else.
    let mut want = file_names(&t);
    want.retain(|f| f != "pytorch_model.bin" && f != "runs");
    assert_eq!(file_names(&rec), want);
    for f in &want {
        assert_eq!(
            std::fs::read(rec.join(f)).unwrap(),
            std::fs::read(t.join(f)).unwrap(),
            "{f}"
        );
    }
    // No partial folders left beside the outputs.
    assert_eq!(file_names(&d.path().join("out")), ["recovered"]);
}

#[test]
fn single_file_round_trip_and_sha256_agrees_with_sha256sum() {
    let d = tempfile::tempdir().unwrap();
    let (b, t, tuned) = setup(d.path(), 1, 1);
    let (diff_dir, rec) = (d.path().join("diff"), d.path().join("rec"));
    weight_diff::diff(&b, &t, &diff_dir, |_| {}).unwrap();
    assert!(diff_dir.join("weight_diff.safetensors").exists());
    weight_diff::recover(&b, &diff_dir, &rec, |_| {}).unwrap();
    assert_eq!(
        file_names(&rec),
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(
        std::fs::read(rec.join("model.safetensors")).unwrap(),
        std::fs::read(t.join("model.safetensors")).unwrap()
    );
    // The recorded checksum is the plain sha256 of the tensor's bytes (coreutils as a referee).
    let m = weight_diff::read_manifest(&diff_dir).unwrap();
    let e = &m.shards[0]
        .tensors
        .iter()
        .find(|e| e.name == "model.norm.weight")
        .unwrap();
    let raw = d.path().join("norm.bin");
    std::fs::write(&raw, &tuned["model.norm.weight"].bytes).unwrap();
    match std::process::Command::new("sha256sum").arg(&raw).output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            assert_eq!(out.split_whitespace().next().unwrap(), e.tuned_sha256);
        }
        _ => println!("skipped the sha256sum cross-check: no sha256sum"),
    }
    assert_eq!(
        weight_diff::sha256_hex(&tuned["model.norm.weight"].bytes),
        e.tuned_sha256
    );
}

#[test]
fn a_base_one_ulp_off_is_named() {
    let d = tempfile::tempdir().unwrap();
    let (b, t, _) = setup(d.path(), 3, 2);
    let diff_dir = d.path().join("diff");
    weight_diff::diff(&b, &t, &diff_dir, |_| {}).unwrap();
    // Another base: one f16 element of one tensor one ulp up.
    let (mut base, _) = tensors();
    let name = "model.layers.1.mlp.up_proj.weight";
    let x = base.get_mut(name).unwrap();
    let bits = u16::from_le_bytes([x.bytes[20], x.bytes[21]]) + 1;
    x.bytes[20..22].copy_from_slice(&bits.to_le_bytes());
    let wrong = d.path().join("wrong-base");
    write_ckpt(&wrong, &base, 3, &[]);
    let rec = d.path().join("rec");
    let err = weight_diff::recover(&wrong, &diff_dir, &rec, |_| {}).unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::Checksum {
            tensor,
            path,
            manifest,
            ..
        } => {
            assert_eq!(tensor, name);
            assert_eq!(path, &file_with(&wrong, name));
            assert_eq!(manifest, &diff_dir.join(MANIFEST));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert!(msg.contains(name) && msg.contains("wrong base"), "{msg}");
    assert!(msg.contains("weight_diff.json"), "{msg}");
    assert!(!rec.exists(), "a failed recovery left {}", rec.display());
    assert_eq!(
        file_names(d.path()),
        ["base", "diff", "tuned", "wrong-base"]
    );

    // A base without one of the tensors, or with another shape: named too.
    let (mut base, _) = tensors();
    base.remove("model.norm.weight");
    let short = d.path().join("short-base");
    write_ckpt(&short, &base, 1, &[]);
    let msg = weight_diff::recover(&short, &diff_dir, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model.norm.weight") && msg.contains("missing"),
        "{msg}"
    );
    let (mut base, _) = tensors();
    base.get_mut("model.norm.weight").unwrap().shape = vec![2, 4];
    let reshaped = d.path().join("reshaped-base");
    write_ckpt(&reshaped, &base, 1, &[]);
    let msg = weight_diff::recover(&reshaped, &diff_dir, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model.norm.weight") && msg.contains("[2, 4]"),
        "{msg}"
    );
}

#[test]
fn a_corrupted_diff_is_named() {
    let d = tempfile::tempdir().unwrap();
    let (b, t, _) = setup(d.path(), 2, 2);
    let good = d.path().join("diff");
    weight_diff::diff(&b, &t, &good, |_| {}).unwrap();
    let copy = |name: &str| {
        let dst = d.path().join(name);
        std::fs::create_dir(&dst).unwrap();
        for f in file_names(&good) {
            std::fs::copy(good.join(&f), dst.join(&f)).unwrap();
        }
        dst
    };
    let rec = d.path().join("rec");

    // One flipped bit in a delta, and in a whole tensor.
    for name in ["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"] {
        let bad = copy(&format!("flip-{name}"));
        let file = file_with(&bad, name);
        flip_byte_of(&file, name);
        let err = weight_diff::recover(&b, &bad, &rec, |_| {}).unwrap_err();
        match &err {
            Error::Checksum { tensor, path, .. } => {
                assert_eq!(tensor, name);
                assert_eq!(path, &file);
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        assert!(err.to_string().contains("corrupted"), "{err}");
        assert!(!rec.exists());
    }

    // A truncated diff file.
    let bad = copy("truncated");
    let file = bad.join("weight_diff-00002-of-00002.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let msg = weight_diff::recover(&b, &bad, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("weight_diff-00002-of-00002.safetensors"),
        "{msg}"
    );

    // A manifest that is not JSON, or of another version.
    let bad = copy("manifest");
    std::fs::write(bad.join(MANIFEST), "{\"format\": ").unwrap();
    let msg = weight_diff::recover(&b, &bad, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains(MANIFEST), "{msg}");
    let text = std::fs::read_to_string(good.join(MANIFEST)).unwrap();
    std::fs::write(
        bad.join(MANIFEST),
        text.replace("\"version\": 1", "\"version\": 9"),
    )
    .unwrap();
    let msg = weight_diff::recover(&b, &bad, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("version 9"), "{msg}");
    // A manifest that points outside the folder.
    std::fs::write(
        bad.join(MANIFEST),
        text.replace(
            "\"diff_file\": \"weight_diff-00001-of-00002.safetensors\"",
            "\"diff_file\": \"../x.safetensors\"",
        ),
    )
    .unwrap();
    let msg = weight_diff::recover(&b, &bad, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("plain file name"), "{msg}");

    // An edited copied file.
    let bad = copy("config");
    std::fs::write(bad.join("config.json"), "{}").unwrap();
    let msg = weight_diff::recover(&b, &bad, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("config.json") && msg.contains("corrupted"),
        "{msg}"
    );

    // A missing diff file.
    let bad = copy("missing");
    std::fs::remove_file(bad.join("weight_diff-00001-of-00002.safetensors")).unwrap();
    let msg = weight_diff::recover(&b, &bad, &rec, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("weight_diff-00001-of-00002.safetensors"),
        "{msg}"
    );
    assert!(!rec.exists());
}

#[test]
fn bad_inputs_and_outputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (b, t, _) = setup(d.path(), 2, 1);
    // Not a checkpoint.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let msg = weight_diff::diff(&empty, &t, &d.path().join("x"), |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no model.safetensors"), "{msg}");
    // A shard that is not safetensors.
    let junk = d.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("model.safetensors"), b"not a safetensors file").unwrap();
    let msg = weight_diff::diff(&b, &junk, &d.path().join("x"), |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("junk/model.safetensors"), "{msg}");
    // An index that lists a tensor its shard lacks.
    let text = std::fs::read_to_string(b.join("model.safetensors.index.json")).unwrap();
    std::fs::write(
        b.join("model.safetensors.index.json"),
        text.replacen(
            "\"weight_map\": {",
            "\"weight_map\": {\"ghost.weight\": \"model-00001-of-00002.safetensors\",",
            1,
        ),
    )
    .unwrap();
    let msg = weight_diff::diff(&b, &t, &d.path().join("x"), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("ghost.weight") && msg.contains("model-00001-of-00002"),
        "{msg}"
    );
    std::fs::write(b.join("model.safetensors.index.json"), text).unwrap();
    // An output folder that is not empty is never written into.
    let busy = d.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let msg = weight_diff::diff(&b, &t, &busy, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("busy") && msg.contains("not empty"), "{msg}");
    assert_eq!(file_names(&busy), ["keep.txt"]);
    // An empty one is fine.
    let fresh = d.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    weight_diff::diff(&b, &t, &fresh, |_| {}).unwrap();
    assert!(fresh.join(MANIFEST).exists());
}
