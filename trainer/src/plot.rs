//! The loss curve as a PNG (plotters' bitmap backend), with real text: a title, labelled axes
//! with round tick values, and a legend, drawn in the shipped font by `koala-chart` (no system
//! font needed).
//!
//! Blue is the per-step training loss, orange its moving average over 20 steps, green (with a
//! dot per measurement) the validation loss when the run measured one. The axis ranges also go
//! into the returned summary, which `run` puts in `report.json`.
use std::path::Path;

use koala_chart::{Align, Text, tick_label, ticks};
use plotters::prelude::*;

use crate::train::MetricRecord;
use crate::{Error, Result};

/// Image size in pixels.
pub const SIZE: (u32, u32) = (900, 540);
/// The plot area's edges in the image: left, top, right, bottom. Tick labels sit left of and
/// under it, the axis titles beyond them, the title and legend above it.
pub const PLOT: (i32, i32, i32, i32) = (86, 64, 880, 470);
/// Steps in the moving average.
const SMOOTH: usize = 20;

const INK: RGBColor = RGBColor(20, 20, 20);
const GRID: RGBColor = RGBColor(228, 228, 228);
const RAW: RGBColor = RGBColor(46, 110, 184);
const AVG: RGBColor = RGBColor(240, 130, 20);
const VAL: RGBColor = RGBColor(30, 150, 60);
const TITLE_PX: f32 = 20.0;
const LABEL_PX: f32 = 15.0;
const TICK_PX: f32 = 13.0;

/// Draws `history` into `path`; returns the axis ranges drawn (`null` when there is no finite
/// loss to draw).
pub fn loss_curve(path: &Path, history: &[MetricRecord]) -> Result<serde_json::Value> {
    let Some(series) = Series::of(history) else {
        return Ok(serde_json::json!(null));
    };
    draw(BitMapBackend::new(path, SIZE).into_drawing_area(), &series)
        .map_err(|e| Error::format(path, format!("plot: {e}")))?;
    let (x, y) = (series.x, series.y);
    Ok(serde_json::json!({"path": path, "x_steps": [x.0, x.1], "y_loss": [y.0, y.1]}))
}

/// The same chart as SVG text, for notebooks and web pages (`None` when there is no finite loss
/// to draw).
pub fn loss_curve_svg(history: &[MetricRecord]) -> Result<Option<String>> {
    let Some(series) = Series::of(history) else {
        return Ok(None);
    };
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
        &series,
    )
    .map_err(|e| Error::Invalid(format!("loss chart: {e}")))?;
    Ok(Some(svg))
}

/// What the chart draws: the loss per step, its moving average, the validation losses, and the
/// axis ranges.
struct Series {
    pts: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
    x: (f64, f64),
    y: (f64, f64),
}

impl Series {
    fn of(history: &[MetricRecord]) -> Option<Series> {
        let pts: Vec<(f64, f64)> = history
            .iter()
            .filter(|r| r.loss.is_finite())
            .map(|r| (r.step as f64, r.loss as f64))
            .collect();
        if pts.is_empty() {
            return None;
        }
        let val: Vec<(f64, f64)> = history
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64)))
            .filter(|p| p.1.is_finite())
            .collect();
        let x = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
        let lo = pts
            .iter()
            .chain(&val)
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min);
        let hi = pts
            .iter()
            .chain(&val)
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let y = (lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3));
        let smooth: Vec<(f64, f64)> = (0..pts.len())
            .map(|i| {
                let s = i.saturating_sub(SMOOTH - 1);
                let m = pts[s..=i].iter().map(|p| p.1).sum::<f64>() / (i - s + 1) as f64;
                (pts[i].0, m)
            })
            .collect();
        Some(Series {
            pts,
            smooth,
            val,
            x,
            y,
        })
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &Series,
) -> std::result::Result<(), String> {
    let Series {
        pts,
        smooth,
        val,
        x: (x0, x1),
        y: (y0, y1),
    } = series;
    let (x0, x1, y0, y1) = (*x0, *x1, *y0, *y1);
    let text = Text::new().map_err(|e| e.to_string())?;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, top, right, bottom) = PLOT;
    let plot = root
        .clone()
        .shrink((left, top), ((right - left) as u32, (bottom - top) as u32));
    let mut chart = ChartBuilder::on(&plot)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    let to_px = |x: f64, y: f64| chart.backend_coord(&(x, y));

    // Grid and tick labels.
    let xt = ticks(x0, x1, 9);
    let yt = ticks(y0, y1, 9);
    let step = |t: &[f64]| if t.len() > 1 { t[1] - t[0] } else { 1.0 };
    let (xs, ys) = (step(&xt), step(&yt));
    for &v in &xt {
        let (px, _) = to_px(v, y0);
        root.draw(&PathElement::new([(px, top), (px, bottom)], GRID))
            .map_err(|x| e(&x))?;
        root.draw(&PathElement::new([(px, bottom), (px, bottom + 5)], INK))
            .map_err(|x| e(&x))?;
        let label = tick_label(v, xs);
        text.draw(
            &root,
            &label,
            (px, bottom + 16),
            TICK_PX,
            &INK,
            Align::Center,
        )
        .map_err(|x| e(&x))?;
    }
    for &v in &yt {
        let (_, py) = to_px(x0, v);
        root.draw(&PathElement::new([(left, py), (right, py)], GRID))
            .map_err(|x| e(&x))?;
        root.draw(&PathElement::new([(left - 5, py), (left, py)], INK))
            .map_err(|x| e(&x))?;
        let label = tick_label(v, ys);
        text.draw(&root, &label, (left - 9, py), TICK_PX, &INK, Align::Right)
            .map_err(|x| e(&x))?;
    }
    root.draw(&Rectangle::new([(left, top), (right, bottom)], INK))
        .map_err(|x| e(&x))?;

    chart
        .draw_series(LineSeries::new(pts.iter().copied(), RAW))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            smooth.iter().copied(),
            ShapeStyle::from(&AVG).stroke_width(2),
        ))
        .map_err(|x| e(&x))?;
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(
                val.iter().copied(),
                ShapeStyle::from(&VAL).stroke_width(2),
            ))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                val.iter()
                    .map(|&p| Circle::new(p, 4, ShapeStyle::from(&VAL).filled())),
            )
            .map_err(|x| e(&x))?;
    }

    // Titles: the chart's, the x axis' under its tick labels, the y axis' above its ticks.
    let title = if val.is_empty() {
        "Training loss"
    } else {
        "Training and validation loss"
    };
    text.draw(&root, title, (left, 22), TITLE_PX, &INK, Align::Left)
        .map_err(|x| e(&x))?;
    text.draw(
        &root,
        "step",
        ((left + right) / 2, bottom + 44),
        LABEL_PX,
        &INK,
        Align::Center,
    )
    .map_err(|x| e(&x))?;
    text.draw(
        &root,
        "loss",
        (left - 9, top - 16),
        LABEL_PX,
        &INK,
        Align::Right,
    )
    .map_err(|x| e(&x))?;

    // Legend, top right above the plot.
    let mut entries = vec![
        ("loss per step", RAW, 1),
        ("moving average (20 steps)", AVG, 2),
    ];
    if !val.is_empty() {
        entries.push(("validation loss", VAL, 2));
    }
    let mut x = right;
    for (label, color, width) in entries.iter().rev() {
        let w = text.width(LABEL_PX, label).ceil() as i32;
        x -= w;
        text.draw(&root, label, (x, 22), LABEL_PX, &INK, Align::Left)
            .map_err(|x| e(&x))?;
        root.draw(&PathElement::new(
            [(x - 34, 22), (x - 8, 22)],
            ShapeStyle::from(color).stroke_width(*width + 1),
        ))
        .map_err(|x| e(&x))?;
        x -= 34 + 22;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dark pixels in a rectangle of the PNG, and the image size.
    fn dark_pixels(
        path: &Path,
        x: std::ops::Range<i32>,
        y: std::ops::Range<i32>,
    ) -> (usize, (u32, u32)) {
        let r = |r: std::ops::Range<i32>| r.start as u32..r.end as u32;
        koala_chart::dark_pixels(path, r(x), r(y)).unwrap()
    }

    fn history(n: u64) -> Vec<MetricRecord> {
        (1..=n)
            .map(|step| MetricRecord {
                step,
                loss: 7.0 / (1.0 + step as f32 / 30.0) + 0.05 * ((step % 7) as f32),
                lr: 1e-3,
                grad_norm: 1.0,
                tokens: 1024,
                tokens_per_s: 1000.0,
                elapsed_s: step as f64,
                val_loss: (step % 50 == 0).then_some(7.3 / (1.0 + step as f32 / 40.0)),
            })
            .collect()
    }

    #[test]
    fn the_text_around_the_plot_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("loss_curve.png");
        let summary = loss_curve(&png, &history(300)).unwrap();
        assert_eq!(summary["x_steps"], serde_json::json!([1.0, 300.0]));
        // KOALA_PLOT_KEEP=FILE keeps a copy, to look at.
        if let Ok(keep) = std::env::var("KOALA_PLOT_KEEP") {
            std::fs::copy(&png, keep).unwrap();
        }
        let (left, top, right, bottom) = PLOT;
        let (_, size) = dark_pixels(&png, 0..1, 0..1);
        assert_eq!(size, SIZE);
        // Nothing but text is drawn outside the plot's frame (tick marks are 5 px long).
        let (n, _) = dark_pixels(&png, left..right, bottom + 7..bottom + 30);
        assert!(n > 150, "x tick labels: {n} dark pixels");
        let (n, _) = dark_pixels(&png, left..right, bottom + 34..bottom + 56);
        assert!(n > 20, "x axis title: {n} dark pixels");
        let (n, _) = dark_pixels(&png, 0..left - 7, top..bottom);
        assert!(n > 40, "y tick labels: {n} dark pixels");
        let (n, _) = dark_pixels(&png, 0..left + 200, 8..36);
        assert!(n > 80, "title: {n} dark pixels");
        let (n, _) = dark_pixels(&png, right - 300..right, 8..36);
        assert!(n > 80, "legend: {n} dark pixels");
        let (n, _) = dark_pixels(&png, 0..left, 38..top - 4);
        assert!(n > 10, "y axis title: {n} dark pixels");
    }

    #[test]
    fn nothing_to_draw_is_null() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("loss_curve.png");
        let mut h = history(3);
        for r in &mut h {
            r.loss = f32::NAN;
        }
        assert_eq!(loss_curve(&png, &h).unwrap(), serde_json::Value::Null);
        assert!(!png.exists());
    }
}
