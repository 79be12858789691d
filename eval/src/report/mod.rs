//! `eval report`: Bradley–Terry ratings with bootstrap intervals, pairwise win rates, rater
//! agreement, and the Koala win-rate chart.
//!
//! * [`build`] turns rating rows into a [`Report`]: the system table (Elo-scale Bradley–Terry
//!   ratings averaging 1000, with 95% percentile bootstrap intervals), the pair table (wins, ties
//!   and losses from the name-first system's side, adjusted win rate `(wins + ½·ties) / total`
//!   with its interval from the same bootstrap), Cohen's kappa between people and between people
//!   and the judge, and the system table per eval set.
//! * [`Report::write`] writes `report.json`, `report.md`, `winrates.svg` and `winrates.png`.
//!
//! Every rating row is one battle: a tie or a both-bad verdict is half a win for each side. Rows
//! of people and of the judge (`rater: "judge:…"`) are all counted; pass only the files you want
//! rated together.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rows::{RatingRow, Winner, read_jsonl};

pub mod bt;
pub mod chart;
mod markdown;

use bt::PairCounts;

/// The prefix of the judge's rater name (`judge:MODEL`).
pub const JUDGE_PREFIX: &str = "judge:";

/// Settings of [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    /// Bootstrap rounds over the battles (at least 1; the Chatbot Arena default is 100).
    pub bootstrap: usize,
    /// Seed of the bootstrap: the same seed and rows give the same report.
    pub seed: u64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            bootstrap: 100,
            seed: 0,
        }
    }
}

/// One system's Bradley–Terry rating.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemRow {
    pub name: String,
    /// Elo-scale rating, `400·log10(strength)`, ratings averaging 1000.
    pub rating: f64,
    /// 2.5th percentile of the bootstrap ratings.
    pub ci_low: f64,
    /// 97.5th percentile of the bootstrap ratings.
    pub ci_high: f64,
    /// Battles the system took part in.
    pub battles: u64,
}

/// One pair's tallies, `a < b` in name order, counted from `a`'s side whichever side it was shown on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRow {
    pub a: String,
    pub b: String,
    pub wins_a: u64,
    /// Ties and both-bad verdicts.
    pub ties: u64,
    pub wins_b: u64,
    /// `(wins_a + ½·ties) / total`.
    pub win_rate_a: f64,
    /// 2.5th percentile of the bootstrap win rates.
    pub ci_low: f64,
    /// 97.5th percentile of the bootstrap win rates.
    pub ci_high: f64,
}

impl PairRow {
    /// All battles of the pair.
    pub fn total(&self) -> u64 {
        self.wins_a + self.ties + self.wins_b
    }
}

/// Cohen's kappa over pairs of verdicts on the same item (prompt and system pair), in three
/// categories: first system better, second better, tie (ties and both-bad together).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kappa {
    /// `(p_o − p_e) / (1 − p_e)`; `None` where `p_e = 1` (every verdict in one category).
    pub kappa: Option<f64>,
    /// Observed agreement `p_o`.
    pub observed: f64,
    /// Agreement expected by chance `p_e`, from the two sides' marginals.
    pub expected: f64,
    /// Verdict pairs compared.
    pub comparisons: u64,
    /// Items (prompt, system pair) with at least one comparison.
    pub items: u64,
}

/// Rater agreement; each part is present only when its two kinds of rater rated common items.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Between people: every pair of distinct people on the same item (both orders counted, so
    /// the table is symmetric).
    pub human_human: Option<Kappa>,
    /// People (rows) against the judge (columns), every person–judge pair on the same item.
    pub human_judge: Option<Kappa>,
}

/// The system table of one eval set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetTable {
    pub set: String,
    pub battles: u64,
    pub systems: Vec<SystemRow>,
}

/// The whole report (`report.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Rating rows read (battles).
    pub ratings: u64,
    /// Bootstrap rounds behind the intervals.
    pub bootstrap: usize,
    pub seed: u64,
    /// Best first.
    pub systems: Vec<SystemRow>,
    /// In name order of `(a, b)`.
    pub pairs: Vec<PairRow>,
    pub agreement: Agreement,
    /// The system table per eval set (rows without a set are left out here), in set-name order.
    pub per_set: Vec<SetTable>,
}

/// Reads and concatenates rating files; a bad line is an error naming the file and the line.
pub fn read_ratings(paths: &[PathBuf]) -> Result<Vec<RatingRow>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(read_jsonl::<RatingRow>(p)?);
    }
    Ok(out)
}

/// Fits the report from rating rows.
///
/// ```
/// use koala_eval::report::{ReportOptions, build};
/// use koala_eval::{RatingRow, Side, Winner};
///
/// let row = |a: &str, b: &str, w: Winner| RatingRow {
///     prompt_id: "p".into(),
///     system_a: a.into(),
///     system_b: b.into(),
///     winner: w,
///     rater: "ann".into(),
///     left: Side::A,
///     ts: 0,
///     set: None,
/// };
/// let mut rows = Vec::new();
/// for _ in 0..6 {
///     rows.push(row("koala", "alpaca", Winner::A));
/// }
/// rows.push(row("alpaca", "koala", Winner::A));
/// rows.push(row("koala", "alpaca", Winner::Tie));
/// let report = build(&rows, &ReportOptions::default())?;
/// assert_eq!(report.systems[0].name, "koala");
/// let mean = report.systems.iter().map(|s| s.rating).sum::<f64>() / 2.0;
/// assert!((mean - 1000.0).abs() < 1e-6);
/// // Pairs are in name order and counted from `a`'s side: alpaca won 1, tied 1, lost 6.
/// let p = &report.pairs[0];
/// assert_eq!((p.a.as_str(), p.wins_a, p.ties, p.wins_b), ("alpaca", 1, 1, 6));
/// assert!((p.win_rate_a - 1.5 / 8.0).abs() < 1e-12);
/// # Ok::<(), koala_eval::Error>(())
/// ```
pub fn build(ratings: &[RatingRow], opts: &ReportOptions) -> Result<Report> {
    if opts.bootstrap == 0 {
        return Err(Error::Invalid("bootstrap rounds must be at least 1".into()));
    }
    if ratings.is_empty() {
        return Err(Error::Invalid("no ratings to report on".into()));
    }
    if let Some(r) = ratings.iter().find(|r| r.system_a == r.system_b) {
        return Err(Error::Invalid(format!(
            "a rating of prompt {} compares system {} with itself (rater {})",
            r.prompt_id, r.system_a, r.rater
        )));
    }
    let all: Vec<&RatingRow> = ratings.iter().collect();
    let (systems, pairs) = fit_table(&all, opts, true);
    let sets: BTreeSet<&str> = ratings.iter().filter_map(|r| r.set.as_deref()).collect();
    let per_set = sets
        .into_iter()
        .map(|set| {
            let rows: Vec<&RatingRow> = ratings
                .iter()
                .filter(|r| r.set.as_deref() == Some(set))
                .collect();
            let (systems, _) = fit_table(&rows, opts, false);
            SetTable {
                set: set.to_string(),
                battles: rows.len() as u64,
                systems,
            }
        })
        .collect();
    Ok(Report {
        ratings: ratings.len() as u64,
        bootstrap: opts.bootstrap,
        seed: opts.seed,
        systems,
        pairs,
        agreement: agreement(ratings),
        per_set,
    })
}

/// The system table (best first) and, if `with_pairs`, the pair table of some battles.
fn fit_table(
    rows: &[&RatingRow],
    opts: &ReportOptions,
    with_pairs: bool,
) -> (Vec<SystemRow>, Vec<PairRow>) {
    let names: Vec<&str> = rows
        .iter()
        .flat_map(|r| [r.system_a.as_str(), r.system_b.as_str()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut counts = PairCounts::new(names.len());
    for r in rows {
        counts.add(
            index[r.system_a.as_str()],
            index[r.system_b.as_str()],
            r.winner.score_a(),
        );
    }
    let rating = bt::fit_elo(&counts);
    let rounds = bt::bootstrap(&counts, opts.bootstrap, opts.seed);
    let battles = counts.battles_per_system();
    let mut systems: Vec<SystemRow> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut v: Vec<f64> = rounds.iter().map(|r| r.ratings[i]).collect();
            SystemRow {
                name: n.to_string(),
                rating: rating[i],
                ci_low: bt::percentile(&mut v, 0.025),
                ci_high: bt::percentile(&mut v, 0.975),
                battles: battles[i],
            }
        })
        .collect();
    systems.sort_by(|x, y| y.rating.total_cmp(&x.rating).then(x.name.cmp(&y.name)));
    let mut pairs = Vec::new();
    if with_pairs {
        for (p, (i, j)) in counts.pair_list().into_iter().enumerate() {
            let [w, t, l] = counts.get(p);
            let total = w + t + l;
            if total == 0 {
                continue;
            }
            let mut v: Vec<f64> = rounds.iter().map(|r| r.win_rates[p]).collect();
            pairs.push(PairRow {
                a: names[i].to_string(),
                b: names[j].to_string(),
                wins_a: w,
                ties: t,
                wins_b: l,
                win_rate_a: (w as f64 + 0.5 * t as f64) / total as f64,
                ci_low: bt::percentile(&mut v, 0.025),
                ci_high: bt::percentile(&mut v, 0.975),
            });
        }
    }
    (systems, pairs)
}

/// An item rated: prompt id and the two systems in name order.
type Item<'a> = (&'a str, &'a str, &'a str);

/// The item a verdict is about and its category from the name-first system's side: 0 better,
/// 1 tie (or both bad), 2 worse.
fn category(r: &RatingRow) -> (Item<'_>, usize) {
    let first_is_a = r.system_a <= r.system_b;
    let c = match (r.winner, first_is_a) {
        (Winner::Tie | Winner::BothBad, _) => 1,
        (Winner::A, true) | (Winner::B, false) => 0,
        _ => 2,
    };
    let (lo, hi) = if first_is_a {
        (&r.system_a, &r.system_b)
    } else {
        (&r.system_b, &r.system_a)
    };
    ((r.prompt_id.as_str(), lo.as_str(), hi.as_str()), c)
}

/// Cohen's kappa from a 3×3 contingency table (rows: first rater, columns: second).
fn kappa(table: &[[u64; 3]; 3], items: u64) -> Option<Kappa> {
    let n: u64 = table.iter().flatten().sum();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let observed = (0..3).map(|k| table[k][k]).sum::<u64>() as f64 / nf;
    let expected = (0..3)
        .map(|k| {
            let row: u64 = table[k].iter().sum();
            let col: u64 = (0..3).map(|r| table[r][k]).sum();
            (row as f64 / nf) * (col as f64 / nf)
        })
        .sum::<f64>();
    let kappa = (expected < 1.0 - 1e-12).then(|| (observed - expected) / (1.0 - expected));
    Some(Kappa {
        kappa,
        observed,
        expected,
        comparisons: n,
        items,
    })
}

/// Agreement between people, and between people and the judge, over shared items.
pub fn agreement(ratings: &[RatingRow]) -> Agreement {
    // item → [(rater, category)]
    let mut items: HashMap<Item<'_>, Vec<(&str, usize)>> = HashMap::new();
    for r in ratings {
        let (key, c) = category(r);
        items.entry(key).or_default().push((r.rater.as_str(), c));
    }
    let mut hh = [[0u64; 3]; 3];
    let mut hj = [[0u64; 3]; 3];
    let (mut hh_items, mut hj_items) = (0u64, 0u64);
    for verdicts in items.values() {
        let (mut any_hh, mut any_hj) = (false, false);
        for (x, &(rx, cx)) in verdicts.iter().enumerate() {
            for &(ry, cy) in &verdicts[x + 1..] {
                if rx == ry {
                    continue;
                }
                match (rx.starts_with(JUDGE_PREFIX), ry.starts_with(JUDGE_PREFIX)) {
                    (false, false) => {
                        hh[cx][cy] += 1;
                        hh[cy][cx] += 1;
                        any_hh = true;
                    }
                    (false, true) => {
                        hj[cx][cy] += 1;
                        any_hj = true;
                    }
                    (true, false) => {
                        hj[cy][cx] += 1;
                        any_hj = true;
                    }
                    (true, true) => {}
                }
            }
        }
        hh_items += any_hh as u64;
        hj_items += any_hj as u64;
    }
    Agreement {
        human_human: kappa(&hh, hh_items),
        human_judge: kappa(&hj, hj_items),
    }
}

impl Report {
    /// The report as Markdown tables (`report.md`).
    pub fn to_markdown(&self) -> String {
        markdown::render(self)
    }

    /// Writes `report.json`, `report.md`, `winrates.svg` and `winrates.png` into `dir`
    /// (created if missing); returns the paths written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("{}: {e}", json.display())))?;
        std::fs::write(&json, text + "\n").map_err(|e| Error::io(&json, e))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.to_markdown()).map_err(|e| Error::io(&md, e))?;
        let svg = dir.join("winrates.svg");
        chart::write_svg(&self.pairs, CHART_TITLE, &svg)?;
        let png = dir.join("winrates.png");
        chart::write_png(&self.pairs, CHART_TITLE, &png)?;
        Ok(vec![json, md, svg, png])
    }

    /// The report as HTML for a notebook: the rating table with its intervals, then the
    /// win-rate chart inline (SVG).
    pub fn to_html(&self) -> Result<String> {
        let esc = koala_chart::display::escape;
        let mut h = format!(
            "<div><p>{} ratings, {} bootstrap rounds (seed {})</p><table><tr><th>rank</th>\
             <th>system</th><th>rating</th><th>95% CI</th><th>battles</th></tr>",
            self.ratings, self.bootstrap, self.seed
        );
        for (i, s) in self.systems.iter().enumerate() {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td style=\"text-align:right\">{:.1}</td>\
                 <td>{:.1} – {:.1}</td><td style=\"text-align:right\">{}</td></tr>",
                i + 1,
                esc(&s.name),
                s.rating,
                s.ci_low,
                s.ci_high,
                s.battles
            ));
        }
        h.push_str("</table>");
        h.push_str(&chart::svg_string(&self.pairs, CHART_TITLE)?);
        h.push_str("</div>");
        Ok(h)
    }

    /// evcxr's rich display: the Markdown tables in the REPL, [`Report::to_html`] in Jupyter.
    #[cfg(feature = "evcxr")]
    pub fn evcxr_display(&self) {
        let html = self
            .to_html()
            .unwrap_or_else(|e| format!("<p>{}</p>", koala_chart::display::escape(&e.to_string())));
        koala_chart::display::evcxr_rich(&self.to_markdown(), &html);
    }
}

/// The title of the win-rate chart.
pub const CHART_TITLE: &str = "Pairwise win rates (share of wins, ties and losses)";
