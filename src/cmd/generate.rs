//! `koala generate --model DIR --prompt TEXT`: KV-cached sampling with temperature, top-k,
//! top-p and a stop string.
use std::path::PathBuf;

use anyhow::{Context, bail};
use koala_kernels::cpu::CpuBackend;
use koala_trainer::generate::{Generator, SampleParams};
use koala_trainer::infer;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (`config.json` + safetensors).
    #[arg(long)]
    model: PathBuf,
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
    /// Cut the output at the first occurrence of this string (EasyLM cuts at `</s>`).
    #[arg(long)]
    stop: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let be = CpuBackend::new();
    let model = infer::load_model(&be, &args.model)?;
    let mut stop_tokens: Vec<u32> = Vec::new();
    match &model.cfg.eos_token_id {
        Some(serde_json::Value::Number(n)) => stop_tokens.extend(n.as_u64().map(|x| x as u32)),
        Some(serde_json::Value::Array(a)) => {
            stop_tokens.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
        }
        _ => {}
    }
    let sp = SampleParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        stop_tokens,
        seed: args.seed,
    };
    let mut g = Generator::new(&model);
    match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => {
            if ids.is_empty() {
                bail!("--prompt-ids is empty");
            }
            let out = g.generate(&be, &model, ids, &sp, |_| true)?;
            println!(
                "{}",
                out.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            );
        }
        (Some(prompt), None) => {
            let tk_path = args
                .tokenizer
                .clone()
                .unwrap_or_else(|| args.model.join("tokenizer.json"));
            let tk = tokenizers::Tokenizer::from_file(&tk_path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", tk_path.display()))?;
            let enc = tk
                .encode(prompt.as_str(), true)
                .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
            let ids = enc.get_ids().to_vec();
            if ids.is_empty() {
                bail!("the prompt tokenizes to no tokens");
            }
            let mut produced: Vec<u32> = Vec::new();
            let mut text = String::new();
            let stop = args.stop.clone();
            g.generate(&be, &model, &ids, &sp, |t| {
                produced.push(t);
                text = tk.decode(&produced, true).unwrap_or_default();
                !stop.as_ref().is_some_and(|s| text.contains(s.as_str()))
            })
            .context("generating")?;
            if let Some(s) = &args.stop
                && let Some(i) = text.find(s.as_str())
            {
                text.truncate(i);
            }
            println!("{text}");
        }
        (None, None) => bail!("give --prompt TEXT or --prompt-ids 1,2,3"),
    }
    Ok(())
}
