//! The Koala-style win-rate chart: one stacked horizontal bar per system pair, the shares of the
//! first system's wins, ties and the second system's wins, with a title, a legend and the
//! percentages in the bars.
//!
//! Drawn with plotters into SVG (text as `<text>` elements, laid out with the shipped font's
//! metrics) and PNG. The PNG's text is drawn by `koala-chart` from the shipped Liberation Sans
//! (SIL OFL 1.1, `chart/fonts/`), so it needs no system font.
use std::path::Path;

use koala_chart::Text;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::PairRow;
use crate::error::{Error, Result};

pub use koala_chart::FONT;

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

fn font() -> Result<Text> {
    Text::new().map_err(|e| Error::Invalid(e.to_string()))
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
        .map(|p| f.width(LABEL_PX, &row_label(p)))
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

use koala_chart::Align;

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
    font: Text,
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
        self.font
            .draw(&self.area, s, (x, cy), px, &color, align)
            .map_err(draw_err)
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
        .map(|(_, s)| f.width(SMALL_PX, s).ceil() as i32 + 16 + 26)
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
            if (x1 - x0) as f32 > f.width(SMALL_PX, &label) + 8.0 {
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
    let svg = svg_string(pairs, title)?;
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

/// The chart as SVG text (what [`write_svg`] writes; a notebook shows it inline).
pub fn svg_string(pairs: &[PairRow], title: &str) -> Result<String> {
    let l = layout(pairs)?;
    let mut out = String::new();
    {
        let area = SVGBackend::with_string(&mut out, l.size).into_drawing_area();
        let mut c = Svg { area };
        draw(&mut c, pairs, title, &l)?;
        c.area.present().map_err(draw_err)?;
    }
    Ok(out)
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
