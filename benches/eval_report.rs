//! `eval report` at scale: 1,000,000 synthetic ratings among 20 systems, 100 bootstrap rounds.
//!
//! `cargo bench --bench eval_report` (release). A seeded generator draws battles between random
//! pairs of 20 systems with true Elo ratings 800..1200, outcomes from the Bradley–Terry model with
//! 15% ties or both-bad (the decided battles skewed so that A's expected score, a tie as ½, is the
//! model's probability). Timed separately: [`build`] (tally, fit, bootstrap, kappa, per-set
//! tables; the target is under 5 s on 2 cores) and writing the four files. The fitted ratings are
//! checked against the true ones (within 5 Elo points at this size).
//!
//! Environment: `KOALA_BENCH_RATINGS` (default 1000000), `KOALA_BENCH_SYSTEMS` (20),
//! `KOALA_BENCH_BOOTSTRAP` (100).
use std::time::Instant;

use koala_eval::report::{ReportOptions, build};
use koala_eval::{RatingRow, Side, Winner};

/// SplitMix64, for the synthetic battles.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("KOALA_BENCH_RATINGS", 1_000_000);
    let k = env("KOALA_BENCH_SYSTEMS", 20).max(2);
    let rounds = env("KOALA_BENCH_BOOTSTRAP", 100);
    let truth: Vec<f64> = (0..k)
        .map(|i| 800.0 + 400.0 * i as f64 / (k - 1) as f64)
        .collect();
    let names: Vec<String> = (0..k).map(|i| format!("system-{i:02}")).collect();
    let mut rng = Rng(42);
    let t = Instant::now();
    let rows: Vec<RatingRow> = (0..n)
        .map(|j| {
            let a = rng.below(k);
            let b = (a + 1 + rng.below(k - 1)) % k;
            // A's expected score is the Bradley–Terry probability p: a tie (15%) scores ½, so the
            // decided battles go to A with (p − 0.075) / 0.85.
            let p = 1.0 / (1.0 + 10f64.powf((truth[b] - truth[a]) / 400.0));
            let p_decided = ((p - 0.075) / 0.85).clamp(0.0, 1.0);
            let winner = if rng.f64() < 0.15 {
                if rng.f64() < 0.7 {
                    Winner::Tie
                } else {
                    Winner::BothBad
                }
            } else if rng.f64() < p_decided {
                Winner::A
            } else {
                Winner::B
            };
            RatingRow {
                prompt_id: format!("p{}", j % 360),
                system_a: names[a].clone(),
                system_b: names[b].clone(),
                winner,
                rater: format!("rater{}", j % 100),
                left: if j % 2 == 0 { Side::A } else { Side::B },
                ts: j as i64,
                set: Some(if j % 2 == 0 { "koala" } else { "self-instruct" }.to_string()),
            }
        })
        .collect();
    println!(
        "eval report bench: {n} ratings, {k} systems, {rounds} bootstrap rounds, {} threads (generated in {:.2}s)",
        rayon::current_num_threads(),
        t.elapsed().as_secs_f64()
    );
    let opts = ReportOptions {
        bootstrap: rounds,
        seed: 0,
    };
    let t = Instant::now();
    let report = match build(&rows, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("eval report bench: {e}");
            std::process::exit(1);
        }
    };
    let built = t.elapsed().as_secs_f64();
    let dir = std::env::temp_dir().join(format!("koala-eval-report-bench-{}", std::process::id()));
    let t = Instant::now();
    if let Err(e) = report.write(&dir) {
        eprintln!("eval report bench: {e}");
        std::process::exit(1);
    }
    let wrote = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let mean_truth = truth.iter().sum::<f64>() / k as f64;
    let worst = report
        .systems
        .iter()
        .map(|s| {
            let i: usize = s.name["system-".len()..].parse().unwrap_or(0);
            (s.rating - (truth[i] - mean_truth + 1000.0)).abs()
        })
        .fold(0.0, f64::max);
    let width = report
        .systems
        .iter()
        .map(|s| s.ci_high - s.ci_low)
        .sum::<f64>()
        / k as f64;
    println!(
        "build (tally + BT fit + {rounds} bootstraps + kappa + {} per-set tables): {built:.3} s  [target < 5 s]",
        report.per_set.len()
    );
    println!("write (json, md, svg, png): {wrote:.3} s");
    println!(
        "largest |fitted − true| rating: {worst:.2} Elo; mean 95% CI width {width:.2} Elo; {} pairs",
        report.pairs.len()
    );
    if n >= 100_000 && worst > 5.0 {
        eprintln!("eval report bench: fitted ratings are off by {worst:.2} Elo");
        std::process::exit(1);
    }
}
