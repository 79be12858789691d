//! A training run's losses in a notebook: the loss chart as inline SVG with a table of the
//! validation measurements (feature `evcxr`), or as text in a plain REPL.
//!
//! ```no_run
//! use koala_trainer::notebook::LossHistory;
//! let run = LossHistory::read("out/run/metrics.jsonl".as_ref()).unwrap();
//! println!("{run}"); // in evcxr, `run` on its own line shows the chart
//! ```
use std::fmt;
use std::path::Path;

use koala_chart::display::escape;
use koala_proto::v1::MetricPoint;

use crate::train::MetricRecord;
use crate::{Result, plot};

/// The per-step metrics of one run, in step order.
#[derive(Debug, Clone, Default)]
pub struct LossHistory {
    pub records: Vec<MetricRecord>,
}

impl LossHistory {
    /// From the daemon's `GetMetrics` answer.
    pub fn from_points(points: &[MetricPoint]) -> LossHistory {
        let records = points
            .iter()
            .map(|p| MetricRecord {
                step: p.step,
                loss: p.loss,
                lr: p.lr,
                grad_norm: f64::NAN,
                tokens: 0,
                tokens_per_s: p.tokens_per_s,
                elapsed_s: p.time_ms as f64 / 1e3,
                val_loss: p.val_loss,
            })
            .collect();
        LossHistory { records }
    }

    /// From a run's `metrics.jsonl`; a bad line is an error naming the file and the line.
    pub fn read(path: &Path) -> Result<LossHistory> {
        let records = crate::train::parse_metrics(path)?;
        Ok(LossHistory { records })
    }

    /// The validation measurements: (step, loss).
    pub fn validation(&self) -> Vec<(u64, f32)> {
        self.records
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step, v)))
            .collect()
    }

    /// The loss chart (the same as `loss_curve.png`) as SVG; `None` without a finite loss.
    pub fn svg(&self) -> Result<Option<String>> {
        plot::loss_curve_svg(&self.records)
    }

    /// The chart and a table of the validation measurements, as one HTML fragment.
    pub fn to_html(&self) -> String {
        let mut h = match self.svg() {
            Ok(Some(svg)) => svg,
            Ok(None) => "<p>No finite loss to draw.</p>".to_owned(),
            Err(e) => format!("<p>The chart failed: {}</p>", escape(&e.to_string())),
        };
        let val = self.validation();
        if !val.is_empty() {
            h.push_str(
                "<table><thead><tr><th>step</th><th>validation loss</th>\
                 <th>perplexity</th></tr></thead><tbody>",
            );
            for (step, v) in val {
                h.push_str(&format!(
                    "<tr><td>{step}</td><td>{v:.4}</td><td>{:.2}</td></tr>",
                    (v as f64).exp()
                ));
            }
            h.push_str("</tbody></table>");
        }
        h
    }

    /// evcxr's rich display: [`LossHistory::to_html`], and the text form for the REPL.
    #[cfg(feature = "evcxr")]
    pub fn evcxr_display(&self) {
        koala_chart::display::evcxr_rich(&self.to_string(), &self.to_html());
    }
}

impl fmt::Display for LossHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(first), Some(last)) = (self.records.first(), self.records.last()) else {
            return write!(f, "no steps");
        };
        write!(
            f,
            "{} steps: loss {:.4} at step {} → {:.4} at step {}",
            self.records.len(),
            first.loss,
            first.step,
            last.loss,
            last.step
        )?;
        for (step, v) in self.validation() {
            write!(
                f,
                "\n  step {step}: validation loss {v:.4} (perplexity {:.2})",
                (v as f64).exp()
            )?;
        }
        Ok(())
    }
}

/// Runs a future to completion on a runtime made for this call, and returns its output.
///
/// For the daemon client in a notebook: `block_on(async { connect(&opts).await?… })`. evcxr links
/// each cell's dependencies into that cell, tokio included, so a runtime made in one cell is driven
/// by that cell's copy of tokio, and a `block_on` from a later cell waits on a copy that never
/// wakes: the cell hangs. A runtime per call (and a client per call: a connection belongs to the
/// runtime that opened it) has no such state to carry across cells.
///
/// ```no_run
/// use koala_trainer::prelude::*;
/// let opts = ClientOptions { addr: "http://127.0.0.1:50051".into(), ..Default::default() };
/// let job: Job = block_on(async {
///     let mut c = connect(&opts).await?;
///     Ok::<_, ClientError>(c.get_job(GetJobRequest { id: 1 }).await?.into_inner())
/// })??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn block_on<F: std::future::Future>(fut: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u64, loss: f32, val: Option<f32>) -> MetricPoint {
        MetricPoint {
            step,
            loss,
            lr: 1e-3,
            tokens_per_s: 10.0,
            time_ms: step as i64 * 100,
            val_loss: val,
        }
    }

    #[test]
    fn html_has_the_chart_and_the_validation_table() {
        let h = LossHistory::from_points(&[
            point(1, 5.0, None),
            point(2, 4.0, Some(4.5)),
            point(3, 3.5, Some(4.25)),
        ]);
        assert_eq!(h.validation(), vec![(2, 4.5), (3, 4.25)]);
        let html = h.to_html();
        assert!(html.starts_with("<svg"), "{}", &html[..40.min(html.len())]);
        assert!(html.contains("<td>4.2500</td><td>70.11</td>"), "{html}");
        let text = h.to_string();
        assert!(text.starts_with("3 steps: loss 5.0000 at step 1 → 3.5000 at step 3"));
        assert!(text.contains("step 3: validation loss 4.2500 (perplexity 70.11)"));
    }

    #[test]
    fn a_bad_metrics_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\nnot json\n").unwrap();
        let e = LossHistory::read(&p).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 1"), "{e}");
    }
}
