//! `koala eval rate|status|export`: the blind pairwise rating web app and its database (see
//! [`koala_eval::rate`]).
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use koala_eval::judge::Pairs;
use koala_eval::rate::{RateApp, RateConfig, build_items, db};
use koala_eval::rows::{ResponseRow, read_jsonl, write_jsonl_row};

#[derive(clap::Args, Debug)]
pub struct RateArgs {
    /// Responses JSONL from `koala eval generate` (two or more systems).
    #[arg(long)]
    pub responses: PathBuf,
    /// The rating database (SQLite); created if missing, resumed if not.
    #[arg(long)]
    pub db: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Which pairs of systems to rate: `all`, or `vs:NAME` (every system against NAME).
    #[arg(long, default_value = "all")]
    pub pairs: String,
    /// Pairs per rater (0: all). Raters take successive blocks of one shuffled order, so the
    /// items are covered evenly.
    #[arg(long, default_value_t = 0)]
    pub per_rater: u64,
    /// A file holding the admin page's token. Without it, a random token is made and printed.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Seed of the raters' orders (default: random for a new database, then stored in it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// After each vote, show the rater which system wrote which answer (off: fully blind).
    #[arg(long)]
    pub reveal: bool,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The rating database.
    #[arg(long)]
    pub db: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The rating database.
    #[arg(long)]
    pub db: PathBuf,
    /// Ratings JSONL to write (for `koala eval report`).
    #[arg(long)]
    pub out: PathBuf,
}

fn read_token(args: &RateArgs) -> Result<(String, bool)> {
    match &args.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading --token-file {}", p.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("--token-file {} is empty", p.display());
            }
            Ok((t, false))
        }
        None => Ok((koala_eval::rate::random_token(), true)),
    }
}

pub fn rate(args: RateArgs) -> Result<()> {
    let pairs: Pairs = args.pairs.parse()?;
    let rows: Vec<ResponseRow> = read_jsonl(&args.responses)?;
    let (items, stats) =
        build_items(&rows, &pairs).with_context(|| format!("{}", args.responses.display()))?;
    if stats.missing_answer > 0 {
        tracing::warn!(
            "{} (prompt, pair) left out: one of the two systems has no answer",
            stats.missing_answer
        );
    }
    if stats.duplicate_rows > 0 {
        tracing::warn!(
            "{} duplicate (prompt, system) rows: the first of each is rated",
            stats.duplicate_rows
        );
    }
    let (token, generated) = read_token(&args)?;
    let mut config = RateConfig::new(args.db.clone(), token.clone());
    config.pairs = pairs;
    config.per_rater = args.per_rater;
    config.seed = args.seed;
    config.reveal = args.reveal;
    let app = RateApp::open(&config, &items)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        {
            // The first line is the address (tests and scripts read it).
            let mut out = std::io::stdout().lock();
            writeln!(out, "koala eval rate: listening on http://{addr}")?;
            if generated {
                writeln!(out, "admin page: http://{addr}/admin#token={token}")?;
            } else {
                writeln!(
                    out,
                    "admin page: http://{addr}/admin (token from {})",
                    args.token_file
                        .as_deref()
                        .unwrap_or_else(|| "".as_ref())
                        .display()
                )?;
            }
            out.flush()?;
        }
        eprintln!(
            "{} pairs to rate ({} prompts, {} systems), {} per rater, {} raters so far; \
             database {} (seed {}). Raters open http://{addr}/?rater=NAME",
            app.items(),
            stats.prompts,
            stats.systems,
            app.per_rater(),
            app.raters(),
            args.db.display(),
            app.seed()
        );
        app.serve_with_shutdown(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        anyhow::Ok(())
    })
}

pub fn status(args: StatusArgs) -> Result<()> {
    let conn = db::open_read_only(&args.db)?;
    let p = db::progress(&args.db, &conn)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    println!(
        "{}: {} votes from {} raters on {} pairs",
        args.db.display(),
        p.votes,
        p.raters.len(),
        p.items
    );
    println!(
        "{:<24} {:>7} {:>7} {:>7} {:>7}  last vote (UTC)",
        "rater", "done", "of", "%", "undone"
    );
    for r in &p.raters {
        let pct = 100.0 * r.done as f64 / r.total.max(1) as f64;
        println!(
            "{:<24} {:>7} {:>7} {:>6.1}% {:>7}  {}",
            r.name,
            r.done,
            r.total,
            pct,
            r.undone,
            format_ts(r.last_vote_ts)
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` of Unix ms, or `-`.
fn format_ts(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn export(args: ExportArgs) -> Result<()> {
    let conn = db::open_read_only(&args.db)?;
    let rows = db::export(&args.db, &conn)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = args.out.with_extension("jsonl.tmp");
    {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        for r in &rows {
            write_jsonl_row(&mut w, r)?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    println!("{} ratings written to {}", rows.len(), args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::format_ts;

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(format_ts(0), "-");
        assert_eq!(format_ts(1_000), "1970-01-01 00:00:01");
        // 2026-12-05 19:30:00 UTC
        assert_eq!(format_ts(1_796_499_000_000), "2026-12-05 19:30:00");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00:00");
    }
}
