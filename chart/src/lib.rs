//! What the toolkit's charts share, so that every PNG has real text without a system font:
//!
//! * [`FONT`], Liberation Sans Regular, shipped in `chart/fonts/` under the SIL Open Font
//!   License 1.1;
//! * [`Text`], which measures a line of text in that font and draws it into any plotters drawing
//!   area (glyphs rasterised with `ab_glyph`, anti-aliased). plotters' own `ab_glyph` feature
//!   would do the same, but features unify across the workspace and that one makes every chart
//!   without a registered font fail, so the glyphs are drawn here;
//! * [`ticks`], round tick values for an axis;
//! * [`display`], showing a chart or table in a notebook (HTML escaping, evcxr's rich output).
//!
//! ```
//! use koala_chart::{Align, Text, ticks};
//! use plotters::prelude::*;
//! let mut buf = vec![255u8; 200 * 40 * 3];
//! {
//!     let area = BitMapBackend::with_buffer(&mut buf, (200, 40)).into_drawing_area();
//!     let text = Text::new().unwrap();
//!     assert!(text.width(14.0, "step") > 20.0);
//!     text.draw(&area, "step 100", (100, 20), 14.0, &BLACK, Align::Center).unwrap();
//! }
//! assert!(buf.iter().any(|&b| b < 128), "the text left dark pixels");
//! assert_eq!(ticks(0.0, 1.0, 6), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
//! ```
use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::coord::Shift;
use plotters::prelude::*;

pub mod display;

/// Liberation Sans Regular (SIL Open Font License 1.1; see `chart/fonts/LICENSE-LiberationSans.txt`).
pub static FONT: &[u8] = include_bytes!("../fonts/LiberationSans-Regular.ttf");

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shipped font did not parse (a broken build, not bad input).
    #[error("the shipped font: {0}")]
    Font(String),
    /// The drawing backend failed (for example, writing the file).
    #[error("drawing: {0}")]
    Draw(String),
}

/// Where a line of text sits horizontally relative to its x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Center,
    Right,
}

/// Text in the shipped font: measured, and drawn into plotters drawing areas.
pub struct Text {
    font: FontRef<'static>,
}

impl Text {
    /// The shipped font, parsed.
    pub fn new() -> Result<Text, Error> {
        FontRef::try_from_slice(FONT)
            .map(|font| Text { font })
            .map_err(|e| Error::Font(e.to_string()))
    }

    /// Width in pixels of `s` at `px` pixels a line.
    pub fn width(&self, px: f32, s: &str) -> f32 {
        let sf = self.font.as_scaled(PxScale::from(px));
        let mut w = 0.0;
        let mut prev = None;
        for c in s.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                w += sf.kern(p, id);
            }
            w += sf.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Draws one line of `s` with its capitals' height centred on `(x, cy)`, aligned at `x`.
    pub fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        s: &str,
        (x, cy): (i32, i32),
        px: f32,
        color: &RGBColor,
        align: Align,
    ) -> Result<(), Error> {
        let scale = PxScale::from(px);
        let sf = self.font.as_scaled(scale);
        let w = self.width(px, s);
        let mut pen = match align {
            Align::Left => x as f32,
            Align::Center => x as f32 - w / 2.0,
            Align::Right => x as f32 - w,
        };
        let cap = sf.ascent() * 0.72;
        let baseline = cy as f32 + cap / 2.0;
        let mut prev = None;
        for c in s.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                pen += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(pen, baseline));
            pen += sf.h_advance(id);
            prev = Some(id);
            let Some(outline) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let bb = outline.px_bounds();
            let mut failed = None;
            outline.draw(|gx, gy, cov| {
                if cov <= 0.0 || failed.is_some() {
                    return;
                }
                let p = (bb.min.x as i32 + gx as i32, bb.min.y as i32 + gy as i32);
                if let Err(e) = area.draw_pixel(p, &color.mix(cov.min(1.0) as f64)) {
                    failed = Some(e.to_string());
                }
            });
            if let Some(e) = failed {
                return Err(Error::Draw(e));
            }
        }
        Ok(())
    }
}

/// Round tick values (steps of 1, 2 or 5 times a power of ten) inside `lo..=hi`, at most about
/// `max_ticks` of them. Empty when the range is empty or not finite.
pub fn ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || max_ticks < 2 {
        return Vec::new();
    }
    let raw = (hi - lo) / (max_ticks - 1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last)
        .map(|k| {
            // Round away the float noise of k × step (0.30000000000000004).
            let v = k as f64 * step;
            let digits = (-step.log10().floor()).max(0.0) as i32 + 1;
            let f = 10f64.powi(digits);
            (v * f).round() / f
        })
        .collect()
}

/// A tick value as a label: no more decimals than the step between ticks needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step < 1.0 {
        (-step.log10().floor()) as usize
    } else {
        0
    };
    format!("{v:.decimals$}")
}

/// Counts the dark pixels (mean of R, G, B under 110) in the rectangle `x` × `y` of a PNG file,
/// and returns them with the image's size: how tests check that a chart's text areas are drawn.
pub fn dark_pixels(
    path: &std::path::Path,
    x: std::ops::Range<u32>,
    y: std::ops::Range<u32>,
) -> Result<(usize, (u32, u32)), Error> {
    let bad = |e: &dyn std::fmt::Display| Error::Draw(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let mut reader = png::Decoder::new(file).read_info().map_err(|e| bad(&e))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    let ch = info.color_type.samples();
    if ch < 3 || x.end > info.width || y.end > info.height {
        return Err(bad(&format!(
            "want RGB and {x:?} × {y:?} inside {}×{}",
            info.width, info.height
        )));
    }
    let mut n = 0;
    for yy in y {
        for xx in x.clone() {
            let i = (yy as usize * info.width as usize + xx as usize) * ch;
            let lum = (buf[i] as u32 + buf[i + 1] as u32 + buf[i + 2] as u32) / 3;
            n += (lum < 110) as usize;
        }
    }
    Ok((n, (info.width, info.height)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(
            ticks(0.0, 100.0, 6),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(ticks(1.0, 100.0, 6), vec![20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(ticks(2.31, 2.78, 6), vec![2.4, 2.5, 2.6, 2.7]);
        assert_eq!(ticks(6.93, 7.01, 5), vec![6.94, 6.96, 6.98, 7.0]);
        assert!(ticks(1.0, 1.0, 5).is_empty());
        assert!(ticks(f64::NAN, 1.0, 5).is_empty());
        for t in ticks(0.0, 1234.0, 8) {
            assert!((0.0..=1234.0).contains(&t));
        }
        assert!(ticks(0.0, 1234.0, 8).len() <= 8);
    }

    #[test]
    fn labels_have_the_decimals_of_the_step() {
        assert_eq!(tick_label(2.4, 0.1), "2.4");
        assert_eq!(tick_label(7.0, 0.02), "7.00");
        assert_eq!(tick_label(200.0, 50.0), "200");
    }

    #[test]
    fn width_grows_with_text_and_size() {
        let t = Text::new().unwrap();
        assert!(t.width(14.0, "loss") < t.width(14.0, "validation loss"));
        assert!(t.width(14.0, "loss") < t.width(28.0, "loss"));
        assert_eq!(t.width(14.0, ""), 0.0);
    }
}
