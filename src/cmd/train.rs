//! `koala train --config train.toml`: local training with a progress bar; Ctrl-C checkpoints and
//! stops at the next step boundary (run it again to resume).
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use koala_trainer::{Observer, RunOutcome, TrainConfig, TrainEvent};

#[derive(clap::Args)]
pub struct Args {
    /// The run's `train.toml` (see docs/training.md).
    #[arg(long)]
    config: PathBuf,
    /// Stop after this many optimizer steps (overrides `max_steps` in the file).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Devices: cpu, auto, cuda:N, cuda:0,1 or cuda:A..B (overrides `device` in the file).
    #[arg(long)]
    device: Option<String>,
    /// CPU data-parallel worker threads (overrides `workers` in the file).
    #[arg(long)]
    workers: Option<usize>,
    /// Shard the optimizer state across data-parallel workers (ZeRO-1; sets `zero1 = true`).
    #[arg(long)]
    zero1: bool,
    /// ZeRO stage 0 to 3 across the workers (overrides `zero`): 1 shards the optimizer state,
    /// 2 the gradients too, 3 the parameters too.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
    zero: Option<u8>,
    /// Activation checkpointing: recompute each layer's forward in the backward.
    #[arg(long)]
    checkpointing: bool,
}

struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl Observer for Progress {
    fn event(&mut self, ev: &TrainEvent) {
        match ev {
            TrainEvent::Started {
                total_steps,
                resumed_from,
            } => {
                self.bar.set_length(*total_steps);
                if let Some(s) = resumed_from {
                    self.bar.set_position(*s);
                    self.bar.println(format!("resumed from step {s}"));
                }
            }
            TrainEvent::Step {
                step,
                loss,
                lr,
                tokens_per_s,
                eta_s,
                val_loss,
                ..
            } => {
                if let Some(v) = val_loss {
                    self.bar.println(format!(
                        "step {step}: validation loss {v:.4} (perplexity {:.2})",
                        (*v as f64).exp()
                    ));
                }
                self.bar.set_position(*step);
                self.bar.set_message(format!(
                    "loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s  ETA {}",
                    fmt_secs(*eta_s)
                ));
            }
            TrainEvent::Checkpoint { step, path } => {
                self.bar
                    .println(format!("checkpoint at step {step}: {}", path.display()));
            }
            TrainEvent::Finished { step, final_loss } => {
                self.bar
                    .finish_with_message(format!("done at step {step}, loss {final_loss:.4}"));
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::from_file(&args.config)?;
    if let Some(d) = args.device {
        cfg.device = d;
    }
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    if args.zero1 {
        cfg.zero1 = true;
    }
    if args.zero.is_some() {
        cfg.zero = args.zero;
    }
    if args.checkpointing {
        cfg.checkpointing = Some(true);
    }
    if args.max_steps.is_some() {
        cfg.max_steps = args.max_steps;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            && rt.block_on(tokio::signal::ctrl_c()).is_ok()
        {
            eprintln!(
                "\ninterrupt: checkpointing at the next step boundary (Ctrl-C again to abort)"
            );
            flag.store(true, Ordering::Relaxed);
            let _ = rt.block_on(tokio::signal::ctrl_c());
            std::process::exit(130);
        }
    });
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    let mut obs = Progress { bar, stop };
    let outcome = koala_trainer::run(&cfg, &mut obs)
        .with_context(|| format!("training with {}", args.config.display()))?;
    let out = &cfg.out_dir;
    match outcome {
        RunOutcome::Finished => println!(
            "model: {}\nmetrics: {}\nloss curve: {}\nreport: {}",
            out.join("final").display(),
            out.join("metrics.jsonl").display(),
            out.join("loss_curve.png").display(),
            out.join("report.json").display()
        ),
        RunOutcome::Cancelled { step } => {
            println!("stopped at step {step}; run the same command again to resume")
        }
    }
    Ok(())
}
