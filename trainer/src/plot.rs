//! The loss curve as a PNG (plotters' bitmap backend).
//!
//! The picture carries no text: rendering text needs a font, and we ship none (no system font
//! lookup, no `ttf` feature). The axis ranges go into the returned summary, which `run` puts in
//! `report.json`. Blue is the per-step loss, orange its moving average over 20 steps.
use std::path::Path;

use plotters::prelude::*;

use crate::train::MetricRecord;
use crate::{Error, Result};

/// Draws `history` into `path`; returns the axis ranges drawn.
pub fn loss_curve(path: &Path, history: &[MetricRecord]) -> Result<serde_json::Value> {
    let pts: Vec<(f64, f64)> = history
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss as f64))
        .collect();
    if pts.is_empty() {
        return Ok(serde_json::json!(null));
    }
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (y0, y1) = (lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3));
    let err = |e: String| Error::format(path, format!("plot: {e}"));
    {
        let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let area = root.margin(20, 20, 20, 20);
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), &BLUE))
            .map_err(|e| err(e.to_string()))?;
        let w = 20usize;
        let smooth: Vec<(f64, f64)> = (0..pts.len())
            .map(|i| {
                let s = i.saturating_sub(w - 1);
                let m = pts[s..=i].iter().map(|p| p.1).sum::<f64>() / (i - s + 1) as f64;
                (pts[i].0, m)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                smooth,
                ShapeStyle::from(&RGBColor(255, 140, 0)).stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(serde_json::json!({"path": path, "x_steps": [x0, x1], "y_loss": [y0, y1]}))
}
