//! `koala generate --model DIR --prompt TEXT`: one prompt through the inference engine
//! (koala-model), with temperature, top-k, top-p, stop strings and an optional watermark.
//! Standard error ends with `decode: N tokens in S s = X tokens/s`, timed from the first
//! generated token to the last, so that scripts can compare runs.
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use koala_model::text::{TextStream, Tokenizer};
use koala_model::{
    Engine, EngineConfig, Event, Request, SampleParams, Watermark, WeightDtype, Weights,
};

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (`config.json` + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (ours or peft's) to merge into the weights at load.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Prompt text (needs a tokenizer).
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids (no tokenizer needed; prints ids).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// `tokenizer.json`; defaults to the one in the model directory.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// 0 = no top-k filter (EasyLM serves with 50).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// End the output before the first occurrence of this string (repeatable; EasyLM cuts at `</s>`).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `cpu`, `cuda:N` or `auto` (CUDA when a GPU is usable).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How the projection weights are held: `f32` (transformers' numbers) or `bf16` (half the
    /// bytes read per token, accumulated in f32).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Watermark the output with this key (see docs/watermark.md).
    #[arg(long)]
    watermark_key: Option<String>,
    #[arg(long, default_value_t = 0.25)]
    watermark_gamma: f32,
    #[arg(long, default_value_t = 2.0)]
    watermark_delta: f32,
}

/// `--dtype` of `generate` and `serve-model`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

impl From<DtypeArg> for WeightDtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => WeightDtype::F32,
            DtypeArg::Bf16 => WeightDtype::Bf16,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let adapter = args
        .adapter
        .as_deref()
        .map(koala_model::lora::Adapter::load)
        .transpose()?;
    let w = Arc::new(Weights::load_with_adapter(
        &args.model,
        args.dtype.into(),
        adapter.as_ref(),
    )?);
    let stop_tokens = w.cfg.eos_ids();
    let engine = Engine::on_device(w, &args.device, EngineConfig::default())?;
    let params = SampleParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: Some(args.seed),
    };
    let watermark = args
        .watermark_key
        .as_deref()
        .map(|k| Watermark::new(k, args.watermark_gamma, args.watermark_delta))
        .transpose()?;
    let request = |prompt: Vec<u32>| Request {
        prompt,
        max_tokens: args.max_new_tokens,
        params: params.clone(),
        stop_tokens: stop_tokens.clone(),
        watermark: watermark.clone(),
    };
    let mut rate = DecodeRate::default();
    match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => {
            if ids.is_empty() {
                bail!("--prompt-ids is empty");
            }
            let mut stream = engine.submit(request(ids.clone()))?;
            let mut tokens = Vec::new();
            while let Some(ev) = stream.blocking_next() {
                match ev {
                    Event::Token(t) => {
                        rate.token();
                        tokens.push(t.to_string());
                    }
                    Event::Done { .. } => break,
                    Event::Failed(m) => bail!("generation failed: {m}"),
                }
            }
            println!("{}", tokens.join(","));
        }
        (Some(prompt), None) => {
            let tk_path = args
                .tokenizer
                .clone()
                .unwrap_or_else(|| args.model.join("tokenizer.json"));
            let tk = Tokenizer::from_file(&tk_path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", tk_path.display()))?;
            let enc = tk
                .encode(prompt.as_str(), true)
                .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
            let ids = enc.get_ids().to_vec();
            if ids.is_empty() {
                bail!("the prompt tokenizes to no tokens");
            }
            let mut stream = engine.submit(request(ids))?;
            let mut text = TextStream::new(&tk, args.stop.clone());
            let mut out = std::io::stdout().lock();
            while let Some(ev) = stream.blocking_next() {
                match ev {
                    Event::Token(t) => {
                        rate.token();
                        let d = text.push(t)?;
                        write!(out, "{}", d.text)?;
                        out.flush()?;
                        if d.stopped {
                            break;
                        }
                    }
                    Event::Done { .. } => {
                        write!(out, "{}", text.finish())?;
                        break;
                    }
                    Event::Failed(m) => bail!("generation failed: {m}"),
                }
            }
            writeln!(out).context("writing the output")?;
        }
        (None, None) => bail!("give --prompt TEXT or --prompt-ids 1,2,3"),
    }
    eprintln!("{}", rate.line());
    Ok(())
}

/// The decode rate, from the first generated token to the last: the prompt's prefill (which
/// ends with the first token) is left out, as llama.cpp's `eval time` leaves it out.
#[derive(Default)]
struct DecodeRate {
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: usize,
}

impl DecodeRate {
    fn token(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens += 1;
    }

    /// `decode: N tokens in S s = X tokens/s`, where N counts the tokens after the first.
    fn line(&self) -> String {
        let n = self.tokens.saturating_sub(1);
        let s = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let rate = if s > 0.0 { n as f64 / s } else { 0.0 };
        format!("decode: {n} tokens in {s:.3} s = {rate:.1} tokens/s")
    }
}
