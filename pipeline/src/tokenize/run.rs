//! The tokenize stage end to end: conversation table → rendered pieces → tokens with loss masks
//! → truncated → packed or padded rows → shards, `manifest.json`, `tokenizer.json`, `report.json`.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::pack::{Mode, plan, push_row};
use super::shards::{FORMAT_VERSION, Manifest, SplitInfo, write_rows_with};
use super::{Encoded, Side, Tok, train, truncate};
use crate::error::{Error, Result};
use crate::format::{AlpacaFormat, ChatTemplateFormat, Format, KoalaFormat, Piece};
use crate::schema::Conversation;

/// Which prompt format to render with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    #[default]
    Koala,
    Alpaca,
    ChatTemplate,
}

impl std::str::FromStr for FormatName {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "koala" => Ok(FormatName::Koala),
            "alpaca" => Ok(FormatName::Alpaca),
            "chat-template" => Ok(FormatName::ChatTemplate),
            o => Err(format!(
                "format must be koala, alpaca or chat-template, not {o:?}"
            )),
        }
    }
}

/// Configuration of the stage (a TOML table; every key optional, unknown keys rejected).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizeConfig {
    pub format: FormatName,
    /// Options of the Koala format.
    pub koala: KoalaFormat,
    /// Options of the Alpaca format.
    pub alpaca: AlpacaFormat,
    /// The `tokenizer_config.json` whose `chat_template` the `chat-template` format renders;
    /// defaults to the one beside `tokenizer`.
    pub chat_template_config: Option<PathBuf>,
    /// A `tokenizer.json` to use; when absent, a byte-level BPE is trained on the input.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of a trained tokenizer.
    pub vocab_size: usize,
    /// Row length; defaults to 512 for Alpaca (its `model_max_length`), 2048 otherwise.
    pub seq_len: Option<usize>,
    /// Examples longer than this are truncated; defaults to `seq_len` (and may not exceed it).
    pub max_len: Option<usize>,
    pub truncation_side: Side,
    pub mode: Mode,
    pub rows_per_shard: usize,
    pub batch_rows: usize,
    /// Seed of the row shuffle.
    pub shuffle_seed: u64,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        TokenizeConfig {
            format: FormatName::Koala,
            koala: KoalaFormat::default(),
            alpaca: AlpacaFormat::default(),
            chat_template_config: None,
            tokenizer: None,
            vocab_size: 32000,
            seq_len: None,
            max_len: None,
            truncation_side: Side::Right,
            mode: Mode::Pack,
            rows_per_shard: 8192,
            batch_rows: 1024,
            shuffle_seed: 0,
        }
    }
}

impl TokenizeConfig {
    /// The row length after defaults.
    pub fn seq_len(&self) -> usize {
        self.seq_len.unwrap_or(match self.format {
            FormatName::Alpaca => 512,
            _ => 2048,
        })
    }

    /// The truncation length after defaults.
    pub fn max_len(&self) -> usize {
        self.max_len.unwrap_or_else(|| self.seq_len())
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        let (s, m) = (self.seq_len(), self.max_len());
        if s == 0 || m == 0 {
            return Err(Error::Config("seq_len and max_len must be positive".into()));
        }
        if m > s {
            return Err(Error::Config(format!(
                "max_len {m} exceeds seq_len {s}: an example must fit in a row"
            )));
        }
        if self.rows_per_shard == 0 || self.batch_rows == 0 {
            return Err(Error::Config(
                "rows_per_shard and batch_rows must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Builds the format. `tokenizer_dir` is where a default `tokenizer_config.json` is looked for.
    pub fn build_format(&self) -> Result<Format> {
        Ok(match self.format {
            FormatName::Koala => Format::Koala(self.koala.clone()),
            FormatName::Alpaca => Format::Alpaca(self.alpaca.clone()),
            FormatName::ChatTemplate => {
                let path = match (&self.chat_template_config, &self.tokenizer) {
                    (Some(p), _) => p.clone(),
                    (None, Some(t)) => t.with_file_name("tokenizer_config.json"),
                    (None, None) => {
                        return Err(Error::Config(
                            "the chat-template format needs chat_template_config or a tokenizer \
                             with a tokenizer_config.json beside it"
                                .into(),
                        ));
                    }
                };
                Format::ChatTemplate(Box::new(ChatTemplateFormat::from_tokenizer_config(&path)?))
            }
        })
    }

    fn format_options(&self, format: &Format) -> serde_json::Value {
        match format {
            Format::Koala(k) => serde_json::to_value(k).unwrap_or_default(),
            Format::Alpaca(a) => serde_json::to_value(a).unwrap_or_default(),
            Format::ChatTemplate(c) => serde_json::json!({
                "template_sha256": hex::encode(Sha256::digest(c.source.as_bytes())),
                "bos_token": c.bos_token,
                "eos_token": c.eos_token,
            }),
        }
    }
}

/// Counts for one source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    pub examples: usize,
    pub tokens: usize,
    pub loss_tokens: usize,
}

/// What the stage did (`report.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub conversations: usize,
    pub examples: usize,
    /// Conversations with no rendering, by reason.
    pub skipped: BTreeMap<String, usize>,
    pub truncated_examples: usize,
    pub truncated_tokens: usize,
    pub max_truncated_tokens: usize,
    pub per_source: BTreeMap<String, SourceStats>,
    pub tokens: usize,
    pub loss_tokens: usize,
    /// loss_tokens / tokens.
    pub loss_token_share: f64,
    pub rows: usize,
    pub pad_tokens: usize,
    /// Non-pad tokens / all row tokens.
    pub packing_efficiency: f64,
    pub tokenizer_trained: bool,
    pub encode_seconds: f64,
    pub tokens_per_second: f64,
}

/// One encoded example with where it came from.
#[derive(Clone, Debug)]
pub struct Example {
    pub source: String,
    pub split: String,
    pub enc: Encoded,
}

/// Renders every conversation (in parallel). Unrenderable ones are counted by reason.
pub fn render_all(
    convs: &[Conversation],
    format: &Format,
) -> (Vec<Option<Vec<Piece>>>, BTreeMap<String, usize>) {
    let rendered: Vec<std::result::Result<Vec<Piece>, &'static str>> = convs
        .par_iter()
        .map(|c| format.render(c).map_err(|e| e.reason))
        .collect();
    let mut skipped = BTreeMap::new();
    let out = rendered
        .into_iter()
        .map(|r| match r {
            Ok(p) => Some(p),
            Err(reason) => {
                *skipped.entry(reason.to_string()).or_insert(0) += 1;
                None
            }
        })
        .collect();
    (out, skipped)
}

/// Encodes rendered examples in parallel (chunks of 1024, advancing `progress`), truncates them,
/// and fills the counting part of the report. Examples left with no loss token are dropped.
pub fn encode_all(
    convs: &[Conversation],
    rendered: &[Option<Vec<Piece>>],
    tok: &Tok,
    max_len: usize,
    side: Side,
    progress: Option<&ProgressBar>,
    report: &mut Report,
) -> Result<Vec<Example>> {
    let started = Instant::now();
    let mut out = Vec::with_capacity(convs.len());
    for (cs, rs) in convs.chunks(1024).zip(rendered.chunks(1024)) {
        let chunk: Vec<Option<Encoded>> = cs
            .par_iter()
            .zip(rs.par_iter())
            .map(|(c, r)| match r {
                Some(p) => tok.encode_pieces(p).map(Some).map_err(|e| Error::Record {
                    file: c.src_file.clone(),
                    line: c.src_record,
                    field: "turns".into(),
                    message: format!("conversation {}: {e}", c.id),
                }),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        for (c, e) in cs.iter().zip(chunk) {
            let Some(mut enc) = e else { continue };
            let cut = truncate(&mut enc, max_len, side);
            if cut > 0 {
                report.truncated_examples += 1;
                report.truncated_tokens += cut;
                report.max_truncated_tokens = report.max_truncated_tokens.max(cut);
            }
            let loss = enc.loss_tokens();
            if loss == 0 {
                *report
                    .skipped
                    .entry("truncated_no_target".into())
                    .or_insert(0) += 1;
                continue;
            }
            let s = report.per_source.entry(c.source.clone()).or_default();
            s.examples += 1;
            s.tokens += enc.tokens.len();
            s.loss_tokens += loss;
            report.tokens += enc.tokens.len();
            report.loss_tokens += loss;
            out.push(Example {
                source: c.source.clone(),
                split: c.split.clone(),
                enc,
            });
        }
        if let Some(p) = progress {
            p.inc(cs.len() as u64);
        }
    }
    report.examples = out.len();
    report.encode_seconds = started.elapsed().as_secs_f64();
    let pre_trunc = report.tokens + report.truncated_tokens;
    report.tokens_per_second = pre_trunc as f64 / report.encode_seconds.max(1e-9);
    report.loss_token_share = report.loss_tokens as f64 / report.tokens.max(1) as f64;
    Ok(out)
}

/// The order in which the rows `0..n` are written: a seeded shuffle (ChaCha8), so that a batch
/// mixes sources and lengths.
pub fn shuffled_order(n: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    perm
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads a conversation table: a Parquet file, or a folder holding `kept.parquet`.
pub fn read_conversations(input: &Path) -> Result<(PathBuf, Vec<Conversation>)> {
    use polars::prelude::{ParquetReader, SerReader};
    let path = if input.is_dir() {
        input.join("kept.parquet")
    } else {
        input.to_path_buf()
    };
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let df = ParquetReader::new(f).finish().map_err(|e| Error::Record {
        file: path.display().to_string(),
        line: 0,
        field: "(parquet)".into(),
        message: e.to_string(),
    })?;
    let convs = crate::schema::from_dataframe(&df).map_err(|e| match e {
        Error::Invariant(m) => Error::Record {
            file: path.display().to_string(),
            line: 0,
            field: "(schema)".into(),
            message: m,
        },
        e => e,
    })?;
    let convs = apply_mix_split(&df, convs).map_err(|m| Error::Record {
        file: path.display().to_string(),
        line: 0,
        field: crate::stages::mixture::MIX_SPLIT.into(),
        message: m,
    })?;
    Ok((path, convs))
}

/// A curated table (`koala curate`'s `kept.parquet`) carries the mixture's train/eval decision in
/// `mix_split`; that decision, not the dataset's own `split`, says which shard split a row goes to.
fn apply_mix_split(
    df: &polars::prelude::DataFrame,
    mut convs: Vec<Conversation>,
) -> std::result::Result<Vec<Conversation>, String> {
    let Ok(column) = df.column(crate::stages::mixture::MIX_SPLIT) else {
        return Ok(convs);
    };
    let splits = column.str().map_err(|e| e.to_string())?;
    for (i, conv) in convs.iter_mut().enumerate() {
        conv.split = splits
            .get(i)
            .ok_or_else(|| format!("row {}: null", i + 1))?
            .to_string();
    }
    Ok(convs)
}

/// Loads the configured tokenizer, or trains a byte-level BPE on the rendered text.
pub fn load_or_train_tokenizer(
    cfg: &TokenizeConfig,
    rendered: &[Option<Vec<Piece>>],
) -> Result<(Tok, bool)> {
    if let Some(p) = &cfg.tokenizer {
        return Ok((Tok::from_file(p, None)?, false));
    }
    let texts = rendered.iter().flatten().flatten().filter_map(|p| match p {
        Piece::Text { text, .. } => Some(text.as_str()),
        Piece::Special { .. } => None,
    });
    let t = train::train_byte_level_bpe(texts, cfg.vocab_size)?;
    Ok((Tok::new(t, None)?, true))
}

/// Lays out, shuffles and writes every split; returns the manifest (not yet written) and fills the
/// row counts of the report.
pub fn write_splits(
    examples: Vec<Example>,
    out: &Path,
    cfg: &TokenizeConfig,
    tok: &Tok,
    report: &mut Report,
) -> Result<BTreeMap<String, SplitInfo>> {
    let mut by_split: BTreeMap<String, Vec<Encoded>> = BTreeMap::new();
    for e in examples {
        by_split.entry(e.split).or_default().push(e.enc);
    }
    let seq_len = cfg.seq_len();
    let mut splits = BTreeMap::new();
    for (split, exs) in by_split {
        if split.is_empty() || split.contains(['/', '\\']) || split.starts_with('.') {
            return Err(Error::Config(format!(
                "split name {split:?} cannot name a folder"
            )));
        }
        // Rows are laid out batch by batch as they are written, in shuffled order: memory holds
        // the encoded examples and one record batch, never the padded rows of the whole split.
        let lengths: Vec<usize> = exs.iter().map(|e| e.tokens.len()).collect();
        let groups = plan(&lengths, seq_len, cfg.mode);
        let order = shuffled_order(groups.len(), cfg.shuffle_seed);
        let files = write_rows_with(
            groups.len(),
            seq_len,
            &out.join(&split),
            out,
            cfg.rows_per_shard,
            cfg.batch_rows,
            |r, batch| push_row(batch, &exs, &groups[order[r]], tok.pad_id),
        )?;
        let real: usize = lengths.iter().sum();
        let info = SplitInfo {
            files,
            rows: groups.len(),
            examples: exs.len(),
            tokens: real,
            loss_tokens: exs.iter().map(Encoded::loss_tokens).sum(),
            pad_tokens: groups.len() * seq_len - real,
        };
        report.rows += info.rows;
        report.pad_tokens += info.pad_tokens;
        splits.insert(split, info);
    }
    let total = report.rows * seq_len;
    report.packing_efficiency = if total == 0 {
        0.0
    } else {
        (total - report.pad_tokens) as f64 / total as f64
    };
    Ok(splits)
}

/// Runs the stage: reads `input`, writes shards and the manifest into `out`.
pub fn run(
    input: &Path,
    out: &Path,
    cfg: &TokenizeConfig,
    progress: Option<&ProgressBar>,
) -> Result<(Manifest, Report)> {
    cfg.validate()?;
    let format = cfg.build_format()?;
    let (source_path, convs) = read_conversations(input)?;
    let source_sha256 = sha256_file(&source_path)?;
    tracing::info!(rows = convs.len(), file = %source_path.display(), "read conversations");
    let (rendered, skipped) = render_all(&convs, &format);
    let (tok, trained) = load_or_train_tokenizer(cfg, &rendered)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let tok_path = out.join("tokenizer.json");
    tok.save(&tok_path)?;
    let mut report = Report {
        conversations: convs.len(),
        skipped,
        tokenizer_trained: trained,
        ..Report::default()
    };
    if let Some(p) = progress {
        p.set_length(convs.len() as u64);
    }
    let examples = encode_all(
        &convs,
        &rendered,
        &tok,
        cfg.max_len(),
        cfg.truncation_side,
        progress,
        &mut report,
    )?;
    drop(rendered);
    let source_rows = convs.len();
    drop(convs);
    let splits = write_splits(examples, out, cfg, &tok, &mut report)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        mode: cfg.mode,
        seq_len: cfg.seq_len(),
        max_len: cfg.max_len(),
        truncation_side: cfg.truncation_side,
        format: format.name().into(),
        format_options: cfg.format_options(&format),
        tokenizer_file: "tokenizer.json".into(),
        tokenizer_sha256: tok.sha256.clone(),
        vocab_size: tok.vocab_size,
        bos_id: tok.bos_id,
        eos_id: tok.eos_id,
        pad_id: tok.pad_id,
        source_path: source_path.display().to_string(),
        source_sha256,
        source_rows,
        shuffle_seed: cfg.shuffle_seed,
        splits,
    };
    manifest.write(&out.join("manifest.json"))?;
    let rp = out.join("report.json");
    std::fs::write(&rp, serde_json::to_string_pretty(&report)? + "\n")
        .map_err(|e| Error::io(&rp, e))?;
    Ok((manifest, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Turn, to_dataframe};
    use polars::prelude::*;

    fn conv(id: &str, split: &str) -> Conversation {
        Conversation {
            id: id.into(),
            source: "alpaca".into(),
            split: split.into(),
            turns: vec![Turn::user("q"), Turn::assistant("a")],
            src_file: "f".into(),
            src_record: 1,
            meta: "{}".into(),
        }
    }

    #[test]
    fn the_mixture_split_decides_the_shard_split() {
        let convs = vec![conv("a", "unsplit"), conv("b", "unsplit")];
        let mut df = to_dataframe(&convs).unwrap();
        let plain = apply_mix_split(&df, convs.clone()).unwrap();
        assert_eq!(
            plain[0].split, "unsplit",
            "no mix_split column: the table's split stays"
        );
        df.with_column(Column::new(
            crate::stages::mixture::MIX_SPLIT.into(),
            ["train", "eval"],
        ))
        .unwrap();
        let mixed = apply_mix_split(&df, convs).unwrap();
        assert_eq!(
            mixed.iter().map(|c| c.split.as_str()).collect::<Vec<_>>(),
            ["train", "eval"]
        );
    }
}
