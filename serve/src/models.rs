//! The models a server serves: each an engine, its tokenizer, its chat format and its EOS ids,
//! and the code that turns a request (chat messages or a prompt) into prompt tokens.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use koala_format::{ChatTemplateFormat, Format, KoalaFormat, Piece, Special, Turn};
use koala_model::text::Tokenizer;
use koala_model::{Engine, EngineConfig, WeightDtype, Weights};

use crate::api::ApiError;

/// Which prompt format renders chat messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatName {
    /// Koala/EasyLM: `BEGINNING OF CONVERSATION: USER: … GPT:` (what our checkpoints are trained on).
    Koala,
    /// Stanford Alpaca's instruction template.
    Alpaca,
    /// The `chat_template` of the model's `tokenizer_config.json`.
    ChatTemplate,
}

/// One served model.
pub struct Served {
    /// The name clients send as `model`.
    pub name: String,
    pub dir: PathBuf,
    pub engine: Arc<Engine>,
    pub tokenizer: Arc<Tokenizer>,
    pub format: Format,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// Unix seconds when it was loaded (`created` in `/v1/models`).
    pub created: u64,
}

/// Errors while loading a model directory (at startup: the server refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] koala_model::Error),
    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
}

impl Served {
    /// Loads `dir` (config.json, safetensors, tokenizer.json, and tokenizer_config.json for
    /// `chat-template`) and starts its engine on `device`.
    pub fn load(
        name: &str,
        dir: &Path,
        format: FormatName,
        device: &str,
        limits: EngineConfig,
    ) -> Result<Self, LoadError> {
        Self::load_as(name, dir, format, device, limits, WeightDtype::F32)
    }

    /// [`Served::load`], keeping the projection weights as `dtype` (`bf16` halves the bytes read
    /// per decoded token; see `koala_model::weights`).
    pub fn load_as(
        name: &str,
        dir: &Path,
        format: FormatName,
        device: &str,
        limits: EngineConfig,
        dtype: WeightDtype,
    ) -> Result<Self, LoadError> {
        Self::load_with_adapter(name, dir, format, device, limits, dtype, None)
    }

    /// [`Served::load_as`] with a LoRA adapter directory (ours or peft's) merged into the
    /// weights at load time, as peft's `merge_and_unload`.
    pub fn load_with_adapter(
        name: &str,
        dir: &Path,
        format: FormatName,
        device: &str,
        limits: EngineConfig,
        dtype: WeightDtype,
        adapter: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let adapter = adapter.map(koala_model::lora::Adapter::load).transpose()?;
        let w = Arc::new(Weights::load_with_adapter(dir, dtype, adapter.as_ref())?);
        let tk_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tk_path).map_err(|e| LoadError::Tokenizer {
            path: tk_path.clone(),
            msg: e.to_string(),
        })?;
        let format = match format {
            FormatName::Koala => Format::Koala(KoalaFormat::default()),
            FormatName::Alpaca => Format::Alpaca(Default::default()),
            FormatName::ChatTemplate => {
                let p = dir.join("tokenizer_config.json");
                let f = ChatTemplateFormat::from_tokenizer_config(&p).map_err(|e| {
                    LoadError::Format {
                        path: p.clone(),
                        msg: e.to_string(),
                    }
                })?;
                Format::ChatTemplate(Box::new(f))
            }
        };
        let bos = w.cfg.bos_token_id.or_else(|| tokenizer.token_to_id("<s>"));
        let mut eos = w.cfg.eos_ids();
        if eos.is_empty()
            && let Some(e) = tokenizer.token_to_id("</s>")
        {
            eos.push(e);
        }
        let engine = Arc::new(Engine::on_device(w, device, limits)?);
        Ok(Served {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            engine,
            tokenizer: Arc::new(tokenizer),
            format,
            bos,
            eos,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// Prompt tokens of chat turns, rendered by the model's format (BOS and EOS pieces become
    /// the tokenizer's ids; each text piece is encoded on its own, as training does).
    pub fn chat_prompt(&self, turns: &[Turn]) -> Result<Vec<u32>, ApiError> {
        let pieces = self.format.generation_prompt(turns).map_err(|e| {
            ApiError::invalid("messages", format!("cannot render the messages: {e}"))
        })?;
        let mut ids = Vec::new();
        for p in pieces {
            match p {
                Piece::Text { text, .. } => ids.extend(self.encode(&text, false)?),
                Piece::Special { token, .. } => match token {
                    Special::Bos => ids.extend(self.bos),
                    Special::Eos => ids.extend(self.eos.first().copied()),
                    Special::Id(i) => ids.push(i),
                },
            }
        }
        Ok(ids)
    }

    /// Prompt tokens of a completion prompt: BOS (when the model has one), then the text.
    pub fn text_prompt(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        let body = self.encode(text, false)?;
        if body.first().is_some_and(|&t| Some(t) == self.bos) {
            ids.clear();
        }
        ids.extend(body);
        Ok(ids)
    }

    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ApiError::internal(format!("tokenizing the prompt: {e}")))
    }
}

/// Fits a prompt and a completion into the context of `ctx` positions.
///
/// `max_tokens` defaults to what is left of the context after the prompt (at least a quarter of
/// it); it must be below `ctx`. The prompt is then left-truncated to `ctx − max_tokens` tokens,
/// keeping a leading BOS. Returns the tokens and the `max_tokens` to use.
pub fn fit(
    mut prompt: Vec<u32>,
    max_tokens: Option<usize>,
    ctx: usize,
    bos: Option<u32>,
) -> Result<(Vec<u32>, usize), ApiError> {
    let max_tokens = match max_tokens {
        Some(m) if m >= ctx => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens ({m}) must be below the model's context length ({ctx})"),
            ));
        }
        Some(m) => m,
        None => ctx.saturating_sub(prompt.len()).max(ctx / 4).min(ctx - 1),
    };
    let keep = ctx - max_tokens;
    if prompt.len() > keep {
        let had_bos = bos.is_some() && prompt.first().copied() == bos;
        let cut = prompt.len() - keep + usize::from(had_bos);
        prompt.drain(..cut);
        if had_bos && let Some(b) = bos {
            prompt.insert(0, b);
        }
    }
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    Ok((prompt, max_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_left_truncated_keeping_bos() {
        let p: Vec<u32> = std::iter::once(1).chain(10..30).collect();
        let (t, m) = fit(p.clone(), Some(10), 16, Some(1)).unwrap();
        assert_eq!(m, 10);
        assert_eq!(t, vec![1, 25, 26, 27, 28, 29]);
        let (t, m) = fit(p.clone(), None, 64, Some(1)).unwrap();
        assert_eq!((t.len(), m), (21, 43));
        assert!(fit(p, Some(64), 64, Some(1)).is_err());
    }
}
