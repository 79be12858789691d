//! `koala weights diff --base B --tuned T --out D` and `koala weights recover --base B --diff D
//! --out R`: release fine-tuned weights as an exact diff against their base, as Koala did against
//! LLaMA, and rebuild them bit for bit (see docs/weights.md and `koala_model::weight_diff`).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use koala_model::weight_diff::{self, Progress};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: WeightsCommand,
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Write a fine-tuned checkpoint as an exact diff against its base (sha256-checked).
    Diff(DiffArgs),
    /// Rebuild the fine-tuned checkpoint from the base and a diff, checked bit for bit.
    Recover(RecoverArgs),
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The base checkpoint folder (config.json, model.safetensors or shards with an index).
    #[arg(long)]
    pub base: PathBuf,
    /// The fine-tuned checkpoint folder.
    #[arg(long)]
    pub tuned: PathBuf,
    /// The diff folder to write (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RecoverArgs {
    /// The base checkpoint folder the diff was made against.
    #[arg(long)]
    pub base: PathBuf,
    /// The diff folder (`koala weights diff`'s output).
    #[arg(long)]
    pub diff: PathBuf,
    /// The checkpoint folder to write (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        WeightsCommand::Diff(a) => diff(a),
        WeightsCommand::Recover(a) => recover(a),
    }
}

fn bar(prefix: &'static str) -> Result<ProgressBar> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
        )?
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    Ok(bar)
}

fn tick(bar: &ProgressBar, p: &Progress<'_>) {
    bar.set_length(p.bytes_total);
    bar.set_position(p.bytes_done);
    bar.set_message(format!(
        "{}/{} {}",
        p.tensors_done, p.tensors_total, p.tensor
    ));
}

fn diff(a: DiffArgs) -> Result<()> {
    let pb = bar("diff")?;
    let r = weight_diff::diff(&a.base, &a.tuned, &a.out, |p| tick(&pb, p));
    pb.finish_and_clear();
    let r =
        r.with_context(|| format!("diffing {} against {}", a.tuned.display(), a.base.display()))?;
    println!(
        "wrote {}: {} tensors in {} files ({:.1} MB): {} deltas, {} whole; copied {}",
        r.out.display(),
        r.tensors,
        r.shards,
        r.bytes as f64 / 1e6,
        r.delta,
        r.whole.len(),
        list(&r.files)
    );
    for (name, why) in &r.whole {
        println!("  whole: {name} ({why})");
    }
    if !r.base_only.is_empty() {
        println!("  only in the base (left out): {}", r.base_only.join(", "));
    }
    println!(
        "recover with: koala weights recover --base {} --diff {} --out DIR",
        a.base.display(),
        a.out.display()
    );
    Ok(())
}

fn recover(a: RecoverArgs) -> Result<()> {
    let pb = bar("recover")?;
    let r = weight_diff::recover(&a.base, &a.diff, &a.out, |p| tick(&pb, p));
    pb.finish_and_clear();
    let r = r.with_context(|| {
        format!(
            "recovering {} with base {}",
            a.diff.display(),
            a.base.display()
        )
    })?;
    println!(
        "wrote {}: {} tensors in {} files ({:.1} MB), every one matching its recorded sha256; copied {}",
        r.out.display(),
        r.tensors,
        r.shards,
        r.bytes as f64 / 1e6,
        list(&r.files)
    );
    Ok(())
}

fn list(files: &[String]) -> String {
    if files.is_empty() {
        "no other files".into()
    } else {
        files.join(", ")
    }
}
