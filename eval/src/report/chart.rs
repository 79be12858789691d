//! The Koala-style win-rate chart: one stacked horizontal bar per system pair, the shares of the
//! first system's wins, ties and the second system's wins, with a title, a legend and the
//! percentages in the bars.
//!
//! Drawn with plotters into SVG (text as `<text>` elements, laid out with the shipped font's
//! metrics) and PNG. The PNG's text is rasterised with `ab_glyph` from the shipped Liberation Sans
//! (SIL OFL 1.1, `eval/fonts/`), so it needs no system font. (plotters' own `ab_glyph` feature
//! would do the same, but features unify across the workspace and it would make every other
//! plotters chart fail without a registered font, so the PNG's glyphs are drawn here.)
use std::path::Path;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::PairRow;
use crate::error::{Error, Result};

/// Liberation Sans Regular (SIL Open Font License 1.1; see `eval/fonts/LICENSE-LiberationSans.txt`).
pub static FONT: &[u8] = include_bytes!("../../fonts/LiberationSans-Regular.ttf");

/// The first system's wins.
pub const WIN: RGBColor = RGBColor(46, 110, 184);
/// Ties and both-bad verdicts.
pub const TIE: RGBColor = RGBColor(190, 190, 190);
/// The second system's wins.
pub const LOSS: RGBColor = RGBColor(226, 106, 44);
const INK: RGBColor = RGBColor(20, 20, 20);
const GRID: RGBColor = RGBColor(225, 225, 225);

const WIDTH: i32 = 1000;
const TITLE_PX: f32 = 22.0;
const LABEL_PX: f32 = 15.0;
const SMALL_PX: f32 = 13.0;
const ROW: i32 = 40;
const BAR: i32 = 26;
const TOP: i32 = 92;
const BOTTOM: i32 = 46;
const MARGIN: i32 = 20;

/// Where the label area ends and the bars start, per the longest row label; also the PNG height.
pub struct Layout {
    /// Left edge of the bars, in pixels.
    pub bar_x0: i32,
    /// Right edge of the bars.
    pub bar_x1: i32,
    /// Top of the first row, in pixels.
    pub rows_y0: i32,
    /// Height of a row (one pair).
    pub row_height: i32,
    /// Image size.
    pub size: (u32, u32),
}

fn font() -> Result<FontRef<'static>> {
    FontRef::try_from_slice(FONT).map_err(|e| Error::Invalid(format!("shipped font: {e}")))
}

/// Width in pixels of `text` at `px` in the shipped font.
fn text_width(font: &FontRef<'_>, px: f32, text: &str) -> f32 {
    let sf = font.as_scaled(PxScale::from(px));
    let mut w = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            w += sf.kern(p, id);
        }
        w += sf.h_advance(id);
        prev = Some(id);
    }
    w
}

/// The row label of a pair.
pub fn row_label(p: &PairRow) -> String {
    format!("{} vs {} (n={})", p.a, p.b, p.total())
}

/// The chart's geometry for these pairs.
pub fn layout(pairs: &[PairRow]) -> Result<Layout> {
    let f = font()?;
    let widest = pairs
        .iter()
        .map(|p| text_width(&f, LABEL_PX, &row_label(p)))
        .fold(120.0f32, f32::max);
    let bar_x0 = (MARGIN as f32 + widest + 14.0)
        .min(WIDTH as f32 * 0.55)
        .ceil() as i32;
    let rows = pairs.len().max(1) as i32;
    Ok(Layout {
        bar_x0,
        bar_x1: WIDTH - MARGIN - 10,
        rows_y0: TOP,
        row_height: ROW,
        size: (WIDTH as u32, (TOP + rows * ROW + BOTTOM) as u32),
    })
}

/// Horizontal alignment of a text at its x.
#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

/// What the two outputs share: filled rectangles and one line of text vertically centred at `cy`.
trait Canvas {
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, color: RGBColor) -> Result<()>;
    fn text(
        &mut self,
        s: &str,
        x: i32,
        cy: i32,
        px: f32,
        color: RGBColor,
        align: Align,
    ) -> Result<()>;
}

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("chart: {e}"))
}

fn fill_rect<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x0, y0, x1, y1): (i32, i32, i32, i32),
    color: RGBColor,
) -> Result<()> {
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], color.filled()))
        .map_err(draw_err)
}

struct Svg<'a> {
    area: DrawingArea<SVGBackend<'a>, Shift>,
}

impl Canvas for Svg<'_> {
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, color: RGBColor) -> Result<()> {
        fill_rect(&self.area, (x0, y0, x1, y1), color)
    }

    fn text(
        &mut self,
        s: &str,
        x: i32,
        cy: i32,
        px: f32,
        color: RGBColor,
        align: Align,
    ) -> Result<()> {
        let h = match align {
            Align::Left => HPos::Left,
            Align::Center => HPos::Center,
            Align::Right => HPos::Right,
        };
        // plotters writes font-size = size / 1.24.
        let style = TextStyle::from(
            (
                "Liberation Sans, Arial, Helvetica, sans-serif",
                px as f64 * 1.24,
            )
                .into_font(),
        )
        .color(&color)
        .pos(Pos::new(h, VPos::Center));
        self.area.draw_text(s, &style, (x, cy)).map_err(draw_err)
    }
}

struct Png<'a> {
    area: DrawingArea<BitMapBackend<'a>, Shift>,
    font: FontRef<'static>,
}

impl Canvas for Png<'_> {
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, color: RGBColor) -> Result<()> {
        fill_rect(&self.area, (x0, y0, x1, y1), color)
    }

    fn text(
        &mut self,
        s: &str,
        x: i32,
        cy: i32,
        px: f32,
        color: RGBColor,
        align: Align,
    ) -> Result<()> {
        let scale = PxScale::from(px);
        let sf = self.font.as_scaled(scale);
        let w = text_width(&self.font, px, s);
        let mut pen = match align {
            Align::Left => x as f32,
            Align::Center => x as f32 - w / 2.0,
            Align::Right => x as f32 - w,
        };
        // Centre the digits' and capitals' height on cy.
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
                let c = color.mix(cov.min(1.0) as f64);
                if let Err(e) = self.area.draw_pixel(p, &c) {
                    failed = Some(e.to_string());
                }
            });
            if let Some(e) = failed {
                return Err(draw_err(e));
            }
        }
        Ok(())
    }
}

fn percent(share: f64) -> String {
    format!("{:.0}%", 100.0 * share)
}

/// Draws the chart on any canvas.
fn draw(c: &mut dyn Canvas, pairs: &[PairRow], title: &str, l: &Layout) -> Result<()> {
    let (w, h) = (l.size.0 as i32, l.size.1 as i32);
    c.rect(0, 0, w, h, WHITE)?;
    c.text(title, w / 2, 24, TITLE_PX, INK, Align::Center)?;
    // Legend.
    let items = [
        (WIN, "first system wins"),
        (TIE, "tie (or both bad)"),
        (LOSS, "second system wins"),
    ];
    let f = font()?;
    let widths: Vec<i32> = items
        .iter()
        .map(|(_, s)| text_width(&f, SMALL_PX, s).ceil() as i32 + 16 + 26)
        .collect();
    let mut x = (w - widths.iter().sum::<i32>()) / 2;
    for ((color, s), dx) in items.iter().zip(&widths) {
        c.rect(x, 50, x + 14, 64, *color)?;
        c.text(s, x + 20, 57, SMALL_PX, INK, Align::Left)?;
        x += dx;
    }
    let span = (l.bar_x1 - l.bar_x0) as f64;
    let xs = |share: f64| l.bar_x0 + (share * span).round() as i32;
    let y_end = TOP + pairs.len().max(1) as i32 * ROW;
    for k in 0..=4 {
        let x = xs(k as f64 / 4.0);
        c.rect(x, TOP - 6, x + 1, y_end, GRID)?;
        c.text(
            &percent(k as f64 / 4.0),
            x,
            y_end + 14,
            SMALL_PX,
            INK,
            Align::Center,
        )?;
    }
    if pairs.is_empty() {
        c.text(
            "no rated pairs",
            w / 2,
            TOP + ROW / 2,
            LABEL_PX,
            INK,
            Align::Center,
        )?;
    }
    for (r, p) in pairs.iter().enumerate() {
        let cy = TOP + r as i32 * ROW + ROW / 2;
        c.text(
            &row_label(p),
            l.bar_x0 - 10,
            cy,
            LABEL_PX,
            INK,
            Align::Right,
        )?;
        let total = p.total().max(1) as f64;
        let shares = [
            (p.wins_a as f64 / total, WIN, WHITE),
            (p.ties as f64 / total, TIE, INK),
            (p.wins_b as f64 / total, LOSS, WHITE),
        ];
        let mut acc = 0.0;
        for (share, fill, ink) in shares {
            let (x0, x1) = (xs(acc), xs(acc + share));
            acc += share;
            if x1 <= x0 {
                continue;
            }
            c.rect(x0, cy - BAR / 2, x1, cy + BAR / 2, fill)?;
            let label = percent(share);
            if (x1 - x0) as f32 > text_width(&f, SMALL_PX, &label) + 8.0 {
                c.text(&label, (x0 + x1) / 2, cy, SMALL_PX, ink, Align::Center)?;
            }
        }
    }
    c.text(
        "share of rated battles",
        (l.bar_x0 + l.bar_x1) / 2,
        y_end + 34,
        SMALL_PX,
        INK,
        Align::Center,
    )
}

/// Writes the chart as SVG.
pub fn write_svg(pairs: &[PairRow], title: &str, path: &Path) -> Result<()> {
    let l = layout(pairs)?;
    let area = SVGBackend::new(path, l.size).into_drawing_area();
    let mut c = Svg { area };
    draw(&mut c, pairs, title, &l)?;
    c.area
        .present()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Writes the chart as PNG.
pub fn write_png(pairs: &[PairRow], title: &str, path: &Path) -> Result<()> {
    let l = layout(pairs)?;
    let area = BitMapBackend::new(path, l.size).into_drawing_area();
    let mut c = Png {
        area,
        font: font()?,
    };
    draw(&mut c, pairs, title, &l)?;
    c.area
        .present()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}
