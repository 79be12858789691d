//! `JobSpec` validation. Every failure names the offending field, and the service turns it into
//! INVALID_ARGUMENT.
//!
//! Rules:
//! - paths are relative to the data root (or absolute inside it), without `..` components, and
//!   must still be inside the data root after resolving symlinks;
//! - the base model is a directory with `config.json`, or a `config.json` to initialise from;
//! - the shards directory holds a `manifest.json` whose shard files exist, whose vocabulary fits
//!   the model's `vocab_size`, and whose tokenizer hash matches the model's `tokenizer.json` when
//!   both are known;
//! - `out_dir` does not exist yet or is an empty directory;
//! - `devices` is `cpu`, `auto`, `cuda`, `cuda:N`, `cuda:N,M` or `cuda:A..B`, and `workers` is
//!   0..=256 (CPU workers), or 0 / the number of devices with GPUs (availability of the GPUs is
//!   checked when the job runs: a missing one fails the job with the reason);
//! - `zero` is 0..=3, and 2 or 3 only without `lora` (a preset's stage is capped at 1 there);
//! - numbers are in range and strings size-limited.
use std::path::{Component, Path, PathBuf};

use koala_proto::v1::{Hyperparameters, JobSpec, job_spec::BaseModel};
use sha2::{Digest, Sha256};

use super::devices::DeviceSet;

pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_PRESET_BYTES: usize = 64;
pub const MAX_DEVICES_BYTES: usize = 64;
pub const MAX_CHECKPOINT_EVERY: u64 = 1_000_000_000;
pub const MAX_STEPS: u64 = 1_000_000_000_000;

/// A validation failure: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The base model, resolved inside the data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseModelPath {
    /// A HF-layout directory.
    Dir(PathBuf),
    /// A `config.json` to initialise a model from (seeded).
    InitConfig(PathBuf),
}

/// A spec's paths, resolved (absolute, symlinks followed) inside the data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPaths {
    pub base_model: BaseModelPath,
    pub shards_dir: PathBuf,
    pub out_dir: PathBuf,
}

/// Checks a newly submitted spec against every rule; `data_root` must be canonical.
///
/// ```
/// use koala_trainer::daemon::validate::validate;
/// use koala_proto::v1::JobSpec;
/// let root = tempfile::tempdir().unwrap();
/// let root = root.path().canonicalize().unwrap();
/// let e = validate(&JobSpec::default(), &root).unwrap_err();
/// assert_eq!(e.field, "base_model");
/// ```
pub fn validate(spec: &JobSpec, data_root: &Path) -> Result<ResolvedPaths, FieldError> {
    check_strings(spec)?;
    DeviceSet::parse(&spec.devices).map_err(|e| err("devices", e))?;
    crate::dp::check_devices(&spec.devices, spec.workers as usize).map_err(|e| {
        err(
            if e.field == "workers" {
                "workers"
            } else {
                "devices"
            },
            e.reason,
        )
    })?;
    if spec.checkpoint_every > MAX_CHECKPOINT_EVERY {
        return Err(err(
            "checkpoint_every",
            format!(
                "{} is above the limit {MAX_CHECKPOINT_EVERY}",
                spec.checkpoint_every
            ),
        ));
    }
    if spec.max_steps > MAX_STEPS {
        return Err(err(
            "max_steps",
            format!("{} is above the limit {MAX_STEPS}", spec.max_steps),
        ));
    }
    if spec.val_split.len() > 64
        || !spec
            .val_split
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(err(
            "val_split",
            "a split name is at most 64 letters, digits, `_` or `-`".to_string(),
        ));
    }
    if let Some(h) = &spec.hyperparameters {
        check_hyperparameters(h)?;
    }
    check_zero(spec)?;
    if let Some(l) = &spec.lora {
        crate::daemon::train_runner::lora_config(l)
            .slots()
            .map_err(|e| err("lora", e.to_string()))?;
        if !matches!(spec.base_model, Some(BaseModel::ModelDir(_))) {
            return Err(err(
                "lora",
                "a LoRA adapter needs model_dir (a model with weights to adapt)",
            ));
        }
    }
    let paths = resolve_paths(spec, data_root)?;
    if paths.out_dir.exists() {
        if !paths.out_dir.is_dir() {
            return Err(err("out_dir", "exists and is not a directory"));
        }
        let non_empty = std::fs::read_dir(&paths.out_dir)
            .map_err(|e| err("out_dir", format!("cannot be read: {e}")))?
            .next()
            .is_some();
        if non_empty {
            return Err(err(
                "out_dir",
                "is not empty (a job writes into a new or empty directory)",
            ));
        }
    }
    check_shards(&paths)?;
    Ok(paths)
}

/// Resolves a spec's paths inside the data root (run time, after a restart, uses this too: the
/// output directory may then hold the job's own checkpoints).
pub fn resolve_paths(spec: &JobSpec, data_root: &Path) -> Result<ResolvedPaths, FieldError> {
    let base_model = match &spec.base_model {
        None => {
            return Err(err(
                "base_model",
                "required: set model_dir (a HF-layout directory) or init_config (a config.json)",
            ));
        }
        Some(BaseModel::ModelDir(p)) => {
            let dir = resolve_in_root("model_dir", p, data_root, true)?;
            if !dir.is_dir() {
                return Err(err("model_dir", format!("{p:?} is not a directory")));
            }
            if !dir.join("config.json").is_file() {
                return Err(err("model_dir", format!("{p:?} has no config.json")));
            }
            BaseModelPath::Dir(dir)
        }
        Some(BaseModel::InitConfig(p)) => {
            let file = resolve_in_root("init_config", p, data_root, true)?;
            if !file.is_file() {
                return Err(err("init_config", format!("{p:?} is not a file")));
            }
            BaseModelPath::InitConfig(file)
        }
    };
    let shards_dir = resolve_in_root("shards_dir", &spec.shards_dir, data_root, true)?;
    if !shards_dir.is_dir() {
        return Err(err(
            "shards_dir",
            format!("{:?} is not a directory", spec.shards_dir),
        ));
    }
    let out_dir = resolve_in_root("out_dir", &spec.out_dir, data_root, false)?;
    if out_dir == data_root {
        return Err(err(
            "out_dir",
            "must be a directory below the data root, not the root",
        ));
    }
    Ok(ResolvedPaths {
        base_model,
        shards_dir,
        out_dir,
    })
}

/// Resolves `raw` (relative to `root`, or absolute) and checks that it stays inside `root`
/// (canonical) after following symlinks. A path that need not exist is resolved through its
/// nearest existing ancestor.
pub fn resolve_in_root(
    field: &str,
    raw: &str,
    root: &Path,
    must_exist: bool,
) -> Result<PathBuf, FieldError> {
    if raw.is_empty() {
        return Err(err(field, "required"));
    }
    if raw.contains('\0') {
        return Err(err(field, "contains a NUL byte"));
    }
    let p = Path::new(raw);
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(err(field, format!("{raw:?} contains a `..` component")));
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    let outside = || err(field, format!("{raw:?} resolves outside the data root"));
    // Split into the deepest existing ancestor and the not-yet-existing rest.
    let mut existing = joined.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        if must_exist {
            return Err(err(
                field,
                format!("{raw:?} does not exist under the data root"),
            ));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Err(outside()),
        }
    }
    let canon = existing
        .canonicalize()
        .map_err(|e| err(field, format!("{raw:?} cannot be resolved: {e}")))?;
    if !canon.starts_with(root) {
        return Err(outside());
    }
    let mut out = canon;
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// The ZeRO stage the job will run at (asked for, or its preset's), as the trainer checks it.
fn check_zero(spec: &JobSpec) -> Result<(), FieldError> {
    let asked = spec.zero.map(|z| u8::try_from(z).unwrap_or(u8::MAX));
    let preset = match asked {
        None if !spec.preset.is_empty() => {
            crate::hparams::Parallel::preset(&spec.preset)
                .map_err(|e| err("preset", e.to_string()))?
                .zero
        }
        _ => 0,
    };
    crate::dp::zero_stage(asked, preset, spec.zero1, spec.lora.is_some())
        .map(|_| ())
        .map_err(|r| err("zero", r))
}

fn check_strings(spec: &JobSpec) -> Result<(), FieldError> {
    let limit = |field: &str, s: &str, max: usize| {
        if s.len() > max {
            Err(err(
                field,
                format!("is {} bytes; the limit is {max}", s.len()),
            ))
        } else {
            Ok(())
        }
    };
    limit("name", &spec.name, MAX_NAME_BYTES)?;
    if spec.name.chars().any(|c| c.is_control()) {
        return Err(err("name", "contains control characters"));
    }
    limit("idempotency_key", &spec.idempotency_key, MAX_KEY_BYTES)?;
    if spec
        .idempotency_key
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(err(
            "idempotency_key",
            "contains whitespace or control characters",
        ));
    }
    limit("preset", &spec.preset, MAX_PRESET_BYTES)?;
    if !spec
        .preset
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || spec.preset.starts_with('.')
    {
        return Err(err(
            "preset",
            format!(
                "{:?} is not a preset name (letters, digits, - _ .)",
                spec.preset
            ),
        ));
    }
    if !spec.preset.is_empty() && crate::hparams::preset_text(&spec.preset).is_none() {
        return Err(err(
            "preset",
            format!(
                "{:?} is not a preset (known: {})",
                spec.preset,
                crate::hparams::PRESETS.join(", ")
            ),
        ));
    }
    limit("devices", &spec.devices, MAX_DEVICES_BYTES)?;
    limit("shards_dir", &spec.shards_dir, MAX_PATH_BYTES)?;
    limit("out_dir", &spec.out_dir, MAX_PATH_BYTES)?;
    match &spec.base_model {
        Some(BaseModel::ModelDir(p)) => limit("model_dir", p, MAX_PATH_BYTES)?,
        Some(BaseModel::InitConfig(p)) => limit("init_config", p, MAX_PATH_BYTES)?,
        None => {}
    }
    Ok(())
}

fn check_hyperparameters(h: &Hyperparameters) -> Result<(), FieldError> {
    fn float(
        field: &str,
        v: Option<f64>,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) -> Result<(), FieldError> {
        match v {
            Some(x) if !x.is_finite() || !ok(x) => Err(err(
                &format!("hyperparameters.{field}"),
                format!("{x} is out of range ({range})"),
            )),
            _ => Ok(()),
        }
    }
    fn int(field: &str, v: Option<u64>, lo: u64, hi: u64) -> Result<(), FieldError> {
        match v {
            Some(x) if x < lo || x > hi => Err(err(
                &format!("hyperparameters.{field}"),
                format!("{x} is out of range ({lo}..={hi})"),
            )),
            _ => Ok(()),
        }
    }
    float("lr", h.lr, |x| x > 0.0 && x <= 1.0, "0 < lr <= 1")?;
    int("batch_size", h.batch_size.map(u64::from), 1, 65_536)?;
    int(
        "micro_batch_size",
        h.micro_batch_size.map(u64::from),
        1,
        65_536,
    )?;
    if let (Some(b), Some(m)) = (h.batch_size, h.micro_batch_size)
        && b % m != 0
    {
        return Err(err(
            "hyperparameters.batch_size",
            format!("{b} is not a multiple of micro_batch_size {m}"),
        ));
    }
    int("max_len", h.max_len.map(u64::from), 2, 1 << 20)?;
    int("epochs", h.epochs.map(u64::from), 1, 1000)?;
    float(
        "warmup_ratio",
        h.warmup_ratio,
        |x| (0.0..1.0).contains(&x),
        "0 <= ratio < 1",
    )?;
    int("warmup_steps", h.warmup_steps, 0, MAX_STEPS)?;
    float(
        "weight_decay",
        h.weight_decay,
        |x| (0.0..=10.0).contains(&x),
        "0..=10",
    )?;
    float(
        "grad_clip",
        h.grad_clip,
        |x| (0.0..=1e6).contains(&x),
        "0 (off) ..= 1e6",
    )?;
    float(
        "beta1",
        h.beta1,
        |x| (0.0..1.0).contains(&x),
        "0 <= beta1 < 1",
    )?;
    float(
        "beta2",
        h.beta2,
        |x| (0.0..1.0).contains(&x),
        "0 <= beta2 < 1",
    )?;
    float("eps", h.eps, |x| x > 0.0 && x < 1.0, "0 < eps < 1")?;
    float(
        "min_lr_ratio",
        h.min_lr_ratio,
        |x| (0.0..=1.0).contains(&x),
        "0..=1",
    )?;
    if let Some(l) = &h.loss
        && !["token_mean", "row_mean"].contains(&l.as_str())
    {
        return Err(err(
            "hyperparameters.loss",
            format!("{l:?} is not one of token_mean, row_mean"),
        ));
    }
    if let Some(s) = &h.schedule
        && !["cosine", "linear", "constant"].contains(&s.as_str())
    {
        return Err(err(
            "hyperparameters.schedule",
            format!("{s:?} is not one of cosine, linear, constant"),
        ));
    }
    Ok(())
}

/// Reads a JSON file, or explains why not, under `field`.
fn read_json(field: &str, path: &Path) -> Result<serde_json::Value, FieldError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(field, format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| err(field, format!("{}: {e}", path.display())))
}

/// The manifest's vocabulary size, wherever the manifest keeps it.
fn manifest_vocab(m: &serde_json::Value) -> Option<u64> {
    m.get("vocab_size")
        .or_else(|| m.pointer("/tokenizer/vocab_size"))
        .and_then(|v| v.as_u64())
}

fn manifest_tokenizer_hash(m: &serde_json::Value) -> Option<String> {
    ["tokenizer_hash", "tokenizer_sha256"]
        .iter()
        .find_map(|k| m.get(*k))
        .or_else(|| m.pointer("/tokenizer/sha256"))
        .or_else(|| m.pointer("/tokenizer/hash"))
        .and_then(|v| v.as_str())
        .map(|s| s.trim_start_matches("sha256:").to_ascii_lowercase())
}

fn check_shards(paths: &ResolvedPaths) -> Result<(), FieldError> {
    let manifest_path = paths.shards_dir.join("manifest.json");
    if !manifest_path.is_file() {
        return Err(err(
            "shards_dir",
            "has no manifest.json (run `koala tokenize` first)",
        ));
    }
    let manifest = read_json("shards_dir", &manifest_path)?;
    // Shard files named by the manifest (a top-level `shards`/`files` list, or the
    // `splits.<name>.files` lists `koala tokenize` writes) must exist inside the shards directory.
    let mut lists: Vec<&Vec<serde_json::Value>> = Vec::new();
    if let Some(l) = manifest
        .get("shards")
        .or_else(|| manifest.get("files"))
        .and_then(|v| v.as_array())
    {
        lists.push(l);
    }
    if let Some(splits) = manifest.get("splits").and_then(|v| v.as_object()) {
        lists.extend(
            splits
                .values()
                .filter_map(|s| s.get("files").and_then(|f| f.as_array())),
        );
    }
    let named = lists.iter().map(|l| l.len()).sum::<usize>();
    if !lists.is_empty() && named == 0 {
        return Err(err("shards_dir", "manifest.json lists no shards"));
    }
    for item in lists.into_iter().flatten() {
        let name = item.as_str().or_else(|| {
            ["path", "file", "name"]
                .iter()
                .find_map(|k| item.get(*k).and_then(|v| v.as_str()))
        });
        let Some(name) = name else { continue };
        let shard = resolve_in_root("shards_dir", name, &paths.shards_dir, true).map_err(|e| {
            err(
                "shards_dir",
                format!("manifest.json shard {name:?}: {}", e.reason),
            )
        })?;
        if !shard.is_file() {
            return Err(err("shards_dir", format!("shard {name:?} is not a file")));
        }
    }
    let config_path = match &paths.base_model {
        BaseModelPath::Dir(d) => d.join("config.json"),
        BaseModelPath::InitConfig(f) => f.clone(),
    };
    let field = match &paths.base_model {
        BaseModelPath::Dir(_) => "model_dir",
        BaseModelPath::InitConfig(_) => "init_config",
    };
    let config = read_json(field, &config_path)?;
    let model_vocab = config
        .get("vocab_size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| {
            err(
                field,
                format!("{}: no integer vocab_size", config_path.display()),
            )
        })?;
    if let Some(v) = manifest_vocab(&manifest)
        && v > model_vocab
    {
        return Err(err(
            "shards_dir",
            format!(
                "the shards' tokenizer has {v} tokens but the model's vocab_size is {model_vocab}"
            ),
        ));
    }
    if let BaseModelPath::Dir(d) = &paths.base_model {
        let tok = d.join("tokenizer.json");
        if let (Some(want), true) = (manifest_tokenizer_hash(&manifest), tok.is_file()) {
            let bytes = std::fs::read(&tok)
                .map_err(|e| err("model_dir", format!("tokenizer.json: {e}")))?;
            let got = hex::encode(Sha256::digest(&bytes));
            if got != want {
                return Err(err(
                    "shards_dir",
                    format!(
                        "the shards were made with tokenizer {want}, but the model's \
                         tokenizer.json hashes to {got}"
                    ),
                ));
            }
        }
    }
    Ok(())
}
