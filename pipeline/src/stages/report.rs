//! `report.json`, `report.md` and `composition.svg`: the funnel per source and stage
//! ("sharegpt 60000 → dedup 33000 → language 30000") and the composition of the final mixture.
use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::StageStats;
use super::config::CurateConfig;
use super::export::ExportCounts;
use super::mixture::MIX_SPLIT;
use super::run::CurateOutput;
use crate::error::{Error, Result};
use crate::schema::col;

/// The machine-readable report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: String,
    pub seed: u64,
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_dropped: u64,
    /// Holds when written: `rows_in = rows_kept + rows_dropped`.
    pub invariant_holds: bool,
    pub stages: Vec<StageStats>,
    /// Per source: rows in, then rows left after each stage.
    pub funnel: BTreeMap<String, Vec<(String, u64)>>,
    /// Per source: train and eval rows of the final mixture.
    pub mixture: BTreeMap<String, BTreeMap<String, u64>>,
    pub stage_seconds: Vec<(String, f64)>,
    pub export: Option<ExportCounts>,
}

/// The report as Markdown (the text of `report.md`): the funnel per source, the drops by
/// stage and reason, the mixture.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_markdown())
    }
}

impl Report {
    /// Builds the report of a run.
    pub fn build(
        cfg: &CurateConfig,
        out: &CurateOutput,
        export: Option<ExportCounts>,
    ) -> Result<Self> {
        let mut funnel: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        if let Some(first) = out.stats.first() {
            for (src, n) in &first.total_by_source {
                funnel.insert(src.clone(), vec![("input".into(), *n)]);
            }
        }
        for s in &out.stats {
            for (src, steps) in funnel.iter_mut() {
                steps.push((
                    s.stage.clone(),
                    s.kept_by_source.get(src).copied().unwrap_or(0),
                ));
            }
        }
        let mut mixture: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let srcs = out.kept.column(col::SOURCE)?.str()?;
        let splits = out.kept.column(MIX_SPLIT)?.str()?;
        for (s, sp) in srcs.iter().zip(splits.iter()) {
            *mixture
                .entry(s.unwrap_or("").into())
                .or_default()
                .entry(sp.unwrap_or("").into())
                .or_default() += 1;
        }
        let kept = out.kept.height() as u64;
        let dropped = out.dropped.height() as u64;
        Ok(Report {
            config: cfg.name.clone(),
            seed: cfg.seed,
            rows_in: out.rows_in,
            rows_kept: kept,
            rows_dropped: dropped,
            invariant_holds: out.rows_in == kept + dropped,
            stages: out.stats.clone(),
            funnel,
            mixture,
            stage_seconds: out
                .timings
                .iter()
                .map(|(n, d)| (n.clone(), d.as_secs_f64()))
                .collect(),
            export,
        })
    }

    /// The preset's name, or `(unnamed)`.
    fn title(&self) -> &str {
        if self.config.is_empty() {
            "(unnamed)"
        } else {
            &self.config
        }
    }

    /// The run's totals in one line: seed, rows in, kept, dropped, and the invariant.
    fn totals(&self) -> String {
        format!(
            "seed {} · {} rows in → {} kept + {} dropped (invariant {})",
            self.seed,
            self.rows_in,
            self.rows_kept,
            self.rows_dropped,
            if self.invariant_holds {
                "holds"
            } else {
                "BROKEN"
            }
        )
    }

    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Curation report: {}\n\n{}\n\n",
            self.title(),
            self.totals()
        );
        s.push_str("## Funnel per source\n\n| source |");
        let stages: Vec<&str> = self
            .funnel
            .values()
            .next()
            .map_or(Vec::new(), |v| v.iter().map(|x| x.0.as_str()).collect());
        for st in &stages {
            s.push_str(&format!(" {st} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(stages.len()));
        s.push('\n');
        for (src, steps) in &self.funnel {
            s.push_str(&format!("| {src} |"));
            for (_, n) in steps {
                s.push_str(&format!(" {n} |"));
            }
            s.push('\n');
        }
        s.push_str("\n## Stages\n\n| stage | in | kept | dropped (reason: rows) | seconds |\n|---|---:|---:|---|---:|\n");
        for (st, (_, secs)) in self.stages.iter().zip(&self.stage_seconds) {
            let reasons: Vec<String> = st
                .dropped
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.3} |\n",
                st.stage,
                st.total,
                st.kept,
                if reasons.is_empty() {
                    "—".into()
                } else {
                    reasons.join(", ")
                },
                secs
            ));
        }
        s.push_str("\n## Final mixture\n\n| source | train | eval |\n|---|---:|---:|\n");
        for (src, m) in &self.mixture {
            s.push_str(&format!(
                "| {src} | {} | {} |\n",
                m.get("train").copied().unwrap_or(0),
                m.get("eval").copied().unwrap_or(0)
            ));
        }
        if let Some(e) = &self.export {
            s.push_str(&format!(
                "\nExported {} train and {} eval examples (Koala/EasyLM JSONL), {} eval prompts.\n",
                e.train, e.eval, e.eval_prompts
            ));
        }
        s.push_str("\n![composition](composition.svg)\n");
        s
    }

    /// The report as HTML for a notebook: the run's totals, the funnel per source, the drops per
    /// stage and reason, and the composition chart inline (SVG).
    pub fn to_html(&self) -> String {
        use crate::notebook::escape;
        let mut h = format!(
            "<div><h3>Curation report: {}</h3><p>{}</p>",
            escape(self.title()),
            self.totals()
        );
        h.push_str("<h4>Funnel per source</h4><table><tr><th>source</th>");
        if let Some(steps) = self.funnel.values().next() {
            for (st, _) in steps {
                h.push_str(&format!("<th>{}</th>", escape(st)));
            }
        }
        h.push_str("</tr>");
        for (src, steps) in &self.funnel {
            h.push_str(&format!("<tr><td>{}</td>", escape(src)));
            for (_, n) in steps {
                h.push_str(&format!("<td style=\"text-align:right\">{n}</td>"));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table><h4>Dropped, by stage and reason</h4><table><tr><th>stage</th><th>in</th><th>kept</th><th>reason</th><th>rows</th></tr>");
        for st in &self.stages {
            let reasons: Vec<(&String, &u64)> =
                st.dropped.iter().filter(|(_, n)| **n > 0).collect();
            if reasons.is_empty() {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>—</td><td>0</td></tr>",
                    escape(&st.stage),
                    st.total,
                    st.kept
                ));
            }
            for (r, n) in reasons {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{n}</td></tr>",
                    escape(&st.stage),
                    st.total,
                    st.kept,
                    escape(r)
                ));
            }
        }
        h.push_str("</table>");
        match self.chart_svg() {
            Ok(svg) => h.push_str(&svg),
            Err(e) => h.push_str(&format!("<p>(no chart: {})</p>", escape(&e.to_string()))),
        }
        h.push_str("</div>");
        h
    }

    /// evcxr's rich display: [`Report::to_html`].
    #[cfg(feature = "evcxr")]
    pub fn evcxr_display(&self) {
        crate::notebook::evcxr_rich(&self.to_markdown(), &self.to_html());
    }

    /// Writes `report.json`, `report.md` and `composition.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .map_err(|e| Error::io(&json, e))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.to_markdown()).map_err(|e| Error::io(&md, e))?;
        self.chart(&dir.join("composition.svg"))
    }

    /// Writes [`Report::chart_svg`] to `path`.
    pub fn chart(&self, path: &Path) -> Result<()> {
        let svg = self
            .chart_svg()
            .map_err(|e| Error::Invariant(format!("{}: {e}", path.display())))?;
        std::fs::write(path, svg).map_err(|e| Error::io(path, e))
    }

    /// A stacked horizontal bar chart (train / eval) of the final mixture per source, as SVG text.
    pub fn chart_svg(&self) -> Result<String> {
        let mut svg = String::new();
        self.draw_chart(&mut svg)?;
        Ok(svg)
    }

    fn draw_chart(&self, svg: &mut String) -> Result<()> {
        let rows: Vec<(&str, u64, u64)> = self
            .mixture
            .iter()
            .map(|(s, m)| {
                (
                    s.as_str(),
                    m.get("train").copied().unwrap_or(0),
                    m.get("eval").copied().unwrap_or(0),
                )
            })
            .collect();
        let max = rows.iter().map(|r| r.1 + r.2).max().unwrap_or(1).max(1);
        let height = 80 + 40 * rows.len().max(1) as u32;
        let err = |e: String| Error::Invariant(format!("composition chart: {e}"));
        let root = SVGBackend::with_string(svg, (800, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let n = rows.len().max(1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Final mixture per source: conversations in train and eval",
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(110)
            .build_cartesian_2d(0u64..max + max / 10 + 1, (0u32..n).into_segmented())
            .map_err(|e| err(e.to_string()))?;
        let names: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len().max(1))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("conversations")
            .y_desc("source")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let train = RGBColor(31, 119, 180);
        let eval = RGBColor(255, 127, 14);
        // One series per split, so that each gets its legend entry.
        for (label, color, is_eval) in [("train", train, false), ("eval", eval, true)] {
            chart
                .draw_series(rows.iter().enumerate().map(|(i, r)| {
                    let i = i as u32;
                    let (x0, x1) = if is_eval { (r.1, r.1 + r.2) } else { (0, r.1) };
                    Rectangle::new(
                        [
                            (x0, SegmentValue::Exact(i)),
                            (x1, SegmentValue::Exact(i + 1)),
                        ],
                        color.filled(),
                    )
                }))
                .map_err(|e| err(e.to_string()))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}
