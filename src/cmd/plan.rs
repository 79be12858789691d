//! `koala plan --model llama-13b --gpus 8 --gpu-mem 80GB --seq 2048 --micro-batch 1 --zero 3`:
//! memory per GPU (parameters, gradients, optimizer state, activations, workspace), whether it
//! fits, and tokens/s at an assumed MFU, from the buffers our trainer allocates
//! (`koala_trainer::plan`; see docs/scale.md).
use std::io::Write;

use anyhow::Context;
use koala_trainer::plan::{self, Device, Dtype, Lora, Setup};

#[derive(clap::Args)]
pub struct Args {
    /// `llama-7b`, `llama-13b` (LLaMA-1), or a HF config.json (or a folder holding one).
    #[arg(long)]
    model: String,
    /// Data-parallel GPUs (one rank each).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Memory of one GPU: 80GB, 80GiB, 81920MiB (GB means GiB, as GPU makers label memory).
    #[arg(long, default_value = "80GB")]
    gpu_mem: String,
    /// Tokens per row (rows of a micro-batch are padded to the longest).
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Rows per forward/backward on each GPU.
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    /// LoRA: frozen base, trainable adapters.
    #[arg(long)]
    lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = plan::DEFAULT_LORA_R)]
    lora_r: usize,
    /// LoRA target modules, comma-separated (q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    lora_targets: Vec<String>,
    /// LoRA dropout (above 0 the kernels need an [n, in] scratch for the dropped input).
    #[arg(long, default_value_t = plan::DEFAULT_LORA_DROPOUT)]
    lora_dropout: f32,
    /// ZeRO stage: 0 none, 1 optimizer state, 2 + gradients, 3 + parameters (the trainer has 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    zero: u8,
    /// Activation checkpointing: keep each layer's input, recompute one layer at a time.
    #[arg(long)]
    checkpointing: bool,
    /// Weights and activations: bf16 (fp32 master, gradients and AdamW, as the CUDA backend) or
    /// f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Plan for the CPU backend (f32, with this many threads) instead of CUDA.
    #[arg(long)]
    cpu_threads: Option<usize>,
    /// Model-FLOPs utilisation assumed for tokens/s, in (0, 1].
    #[arg(long, default_value_t = 0.4)]
    mfu: f64,
    /// Dense peak TFLOP/s of one GPU at the compute dtype (A100 bf16: 312; H100 SXM: 989).
    #[arg(long, default_value_t = 312.0)]
    gpu_tflops: f64,
    /// Print the plan as JSON (bytes) instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = plan::load_config(&args.model).with_context(|| format!("--model {}", args.model))?;
    let gpu_mem = plan::parse_mem(&args.gpu_mem).context("--gpu-mem")?;
    let mut s = Setup::new(
        args.model.clone(),
        cfg,
        args.gpus,
        args.seq,
        args.micro_batch,
    );
    s.dtype = Dtype::parse(&args.dtype).context("--dtype")?;
    if let Some(threads) = args.cpu_threads {
        s.device = Device::Cpu { threads };
        s.dtype = Dtype::F32;
    }
    s.zero = args.zero;
    s.checkpointing = args.checkpointing;
    s.gpu_mem = Some(gpu_mem);
    s.mfu = args.mfu;
    s.gpu_tflops = args.gpu_tflops;
    if args.lora {
        s.lora = Some(Lora {
            r: args.lora_r,
            targets: args
                .lora_targets
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            dropout: args.lora_dropout,
        });
    }
    let p = plan::plan(&s)?;
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&p)?)
    } else {
        p.to_string()
    };
    // A closed pipe (`koala plan ... | head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the plan"),
    }
}
