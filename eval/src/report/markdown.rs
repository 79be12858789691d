//! `report.md`: the report's tables in Markdown.
use std::fmt::Write;

use super::{Kappa, Report, SystemRow};

fn systems_table(out: &mut String, systems: &[SystemRow]) {
    out.push_str("| rank | system | rating | 95% CI | battles |\n|---:|---|---:|---|---:|\n");
    for (k, s) in systems.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} – {:.1} | {} |",
            k + 1,
            cell(&s.name),
            s.rating,
            s.ci_low,
            s.ci_high,
            s.battles
        );
    }
}

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn kappa_line(out: &mut String, what: &str, k: &Option<Kappa>) {
    match k {
        Some(k) => {
            let v = k
                .kappa
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "undefined (one category only)".into());
            let _ = writeln!(
                out,
                "- {what}: κ = {v} (observed agreement {:.1}%, chance {:.1}%; {} verdict pairs on {} items)",
                100.0 * k.observed,
                100.0 * k.expected,
                k.comparisons,
                k.items
            );
        }
        None => {
            let _ = writeln!(out, "- {what}: no items rated by both");
        }
    }
}

/// Renders the whole report.
pub(super) fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Evaluation report\n\n{} ratings; Bradley–Terry ratings on the Elo scale (mean 1000), 95% intervals from {} bootstrap rounds (seed {}). A tie or both-bad verdict counts as half a win for each side.\n",
        r.ratings, r.bootstrap, r.seed
    );
    out.push_str("## Systems\n\n");
    systems_table(&mut out, &r.systems);
    out.push_str("\n## Pairs\n\nCounted from the first system's side, whichever side it was shown on; ties include both-bad. Win rate = (wins + ½·ties) / total.\n\n");
    out.push_str(
        "| a | b | wins a | ties | wins b | win rate a | 95% CI |\n|---|---|---:|---:|---:|---:|---|\n",
    );
    for p in &r.pairs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1}% | {:.1}% – {:.1}% |",
            cell(&p.a),
            cell(&p.b),
            p.wins_a,
            p.ties,
            p.wins_b,
            100.0 * p.win_rate_a,
            100.0 * p.ci_low,
            100.0 * p.ci_high
        );
    }
    out.push_str(
        "\n## Agreement (Cohen's kappa; categories: first better, second better, tie)\n\n",
    );
    kappa_line(&mut out, "people vs people", &r.agreement.human_human);
    kappa_line(&mut out, "people vs judge", &r.agreement.human_judge);
    for s in &r.per_set {
        let _ = writeln!(out, "\n## Eval set `{}` ({} ratings)\n", s.set, s.battles);
        systems_table(&mut out, &s.systems);
    }
    out
}
