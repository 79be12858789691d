//! Whole-pipeline bench: the Koala-scale synthetic corpus (`koala synth --scale koala`) through
//! the full `koala-all` preset (no leakage filter), time per stage and rows/s, peak RSS; plus a
//! baseline on the same input: a straightforward row-by-row dedup (HashSet of normalised
//! queries) and language filter on one thread, both as the issue states it (whatlang on the
//! joined user turns) and with the stage's own rule (`LanguageFilter::judge`: short and
//! unreliable text judged in context), and the pipeline's speed as a ratio to each.
//!
//! `cargo bench --bench curate` (set `KOALA_BENCH_DATA=DIR` to reuse a corpus; it is generated
//! with the built `koala` binary otherwise). Goal: < 30 s and < 6 GB peak RSS on 2 cores.
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

#[path = "common/corpus.rs"]
mod corpus;

use koala_pipeline::schema::from_dataframe;
use koala_pipeline::sources::{LoadOptions, load_dir};
use koala_pipeline::stages::config::CurateConfig;
use koala_pipeline::stages::dedup::normalize_query;
use koala_pipeline::stages::language::LanguageFilter;
use koala_pipeline::stages::run::{curate, write_outputs};

/// The same allocator as the `koala` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = corpus::koala_corpus(env!("CARGO_BIN_EXE_koala").as_ref())?;
    let mut cfg = CurateConfig::load(&root.join("pipeline/presets/koala-all.toml"))?;
    cfg.leakage.enabled = false;

    let t_load = Instant::now();
    let table = load_dir(&data, &LoadOptions::default())?.table;
    let load_s = t_load.elapsed().as_secs_f64();
    let rows = table.height();
    println!(
        "input: {rows} conversations from {} (load {load_s:.2} s)",
        data.display()
    );

    // Pipeline.
    let t = Instant::now();
    let mut out = curate(&cfg, table.clone(), None)?;
    let stages_s = t.elapsed().as_secs_f64();
    let out_dir = std::env::temp_dir().join("koala-bench-curate-out");
    let t_w = Instant::now();
    let report = write_outputs(&cfg, &mut out, &out_dir)?;
    let write_s = t_w.elapsed().as_secs_f64();
    println!(
        "\n{:<10} {:>9} {:>9} {:>12}",
        "stage", "seconds", "kept", "rows/s"
    );
    for ((name, d), st) in out.timings.iter().zip(&out.stats) {
        let s = d.as_secs_f64();
        println!(
            "{name:<10} {s:>9.3} {:>9} {:>12.0}",
            st.kept,
            st.total as f64 / s.max(1e-9)
        );
    }
    println!("{:<10} {write_s:>9.3}", "write");
    let total = load_s + stages_s + write_s;
    println!(
        "pipeline: load {load_s:.2} s + stages {stages_s:.2} s + write {write_s:.2} s = {total:.2} s, \
         {:.0} rows/s end to end; {} kept, {} dropped",
        rows as f64 / total,
        report.rows_kept,
        report.rows_dropped
    );

    // Baseline: row by row, same input, same scope as the preset (ShareGPT only for both).
    let t_b = Instant::now();
    let convs = from_dataframe(&table)?;
    let convert_s = t_b.elapsed().as_secs_f64();
    let lang = LanguageFilter::new(cfg.language.clone())?;
    let ours: f64 = out
        .timings
        .iter()
        .filter(|(n, _)| n == "dedup" || n == "language")
        .map(|(_, d)| d.as_secs_f64())
        .sum();
    println!("\npipeline dedup + language stages: {ours:.3} s");
    // Two row-by-row baselines, one thread, ShareGPT only (the preset's scope for both stages):
    // the (HashSet + whatlang on the joined user turns), and the same with the stage's
    // full language rule (short and unreliable text judged in context).
    for same_rule in [false, true] {
        let t_b2 = Instant::now();
        let mut seen: HashSet<String> = HashSet::new();
        let (mut dup, mut non_en) = (0usize, 0usize);
        for c in &convs {
            if c.source != "sharegpt" {
                continue;
            }
            if let Some(q) = c.turns.iter().find(|t| t.role.as_str() == "user")
                && !seen.insert(normalize_query(&q.text))
            {
                dup += 1;
                continue;
            }
            let dropped = if same_rule {
                let turns = c.turns.iter().map(|t| (t.role.as_str(), t.text.as_str()));
                lang.judge(turns).0.is_some()
            } else {
                let users: Vec<&str> = c
                    .turns
                    .iter()
                    .filter(|t| t.role.as_str() == "user")
                    .map(|t| t.text.as_str())
                    .collect();
                whatlang::detect(&users.join("\n")).is_some_and(|i| i.lang() != whatlang::Lang::Eng)
            };
            non_en += usize::from(dropped);
        }
        let base_s = t_b2.elapsed().as_secs_f64();
        let name = if same_rule {
            "HashSet + the stage's language rule per row"
        } else {
            "HashSet + per-row whatlang on the user turns"
        };
        println!(
            "baseline ({name}): {base_s:.3} s (+ {convert_s:.3} s to read the table into Rust \
             values); {dup} duplicates, {non_en} non-English → pipeline speed ratio {:.2}× \
             ({:.2}× counting the table read)",
            base_s / ours.max(1e-9),
            (base_s + convert_s) / ours.max(1e-9)
        );
    }
    println!(
        "peak RSS: {:.0} MiB; goal: < 30 s and < 6144 MiB → {}",
        peak_rss_mib(),
        if total < 30.0 && peak_rss_mib() < 6144.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
