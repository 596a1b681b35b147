//! `--plot DIR`: the report's figures as SVG charts (plotters' SVG backend, no fonts linked:
//! the viewer lays the text out).
//!
//! - `w-<workload>.svg` for each throughput workload: one horizontal bar per system, ns per
//!   event, in table order, coloured by kind (ringbus, peer, baseline without a queue).
//! - `w-latency.svg`: each system's latency against the percentile, HdrHistogram style: the x
//!   axis is `log10(1 / (1 - p))`, so 90%, 99%, 99.9% and 99.99% are evenly spaced and the right
//!   end is the tail; the y axis is ns on a log scale.

use std::error::Error;
use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A chart's error; drawing into a string fails only on a bug, writing the file on the disk.
type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1000;

/// The file name for a workload: `W-tick` -> `w-tick.svg`.
pub fn file_name(workload: &str) -> String {
    format!("{}.svg", workload.to_ascii_lowercase())
}

/// Renders an SVG of `size` with `draw` and writes it to `path`.
fn write_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result,
) -> Result {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

/// A linear axis with its ticks (bold: labelled, light: grid lines only) exactly where given.
/// (plotters' own `with_key_points` loses the label formatting of an `f64` axis.)
struct Ticked {
    range: RangedCoordf64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, bold: Vec<f64>, light: Vec<f64>) -> Self {
        Self {
            range: range.into(),
            bold,
            light,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.range()
    }
}

/// Bar colour and legend entry of a system.
fn kind(system: &str) -> (&'static str, RGBColor) {
    if system.starts_with("ringbus") {
        ("ringbus", RGBColor(31, 119, 180))
    } else if matches!(system, "base" | "direct" | "rayon") {
        ("baseline (no queue)", RGBColor(150, 150, 150))
    } else {
        ("peer", RGBColor(255, 127, 14))
    }
}

/// `rows` (system, ns per event, in table order) as horizontal bars, first row on top.
pub fn bars(path: &Path, workload: &str, rows: &[(&str, f64)]) -> Result {
    let n = rows.len();
    let legend_h = 36;
    let height = 120 + 30 * n as u32 + legend_h;
    let longest = rows.iter().map(|(s, _)| s.len()).max().unwrap_or(0) as u32;
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    write_svg(path, (WIDTH, height), |root| {
        let (top, bottom) = root.split_vertically(height - legend_h);
        // Room right of the longest bar for its value.
        let x_max = if max > 0.0 { max * 1.15 } else { 1.0 };
        // System k sits at y = n - 1 - k, so that the table's first row is the top bar.
        let y = |k: usize| (n - 1 - k) as f64;
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!("{workload}: ns per event, lower is better"),
                (FONT, 22),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(50 + 8 * longest)
            .build_cartesian_2d(
                0.0..x_max,
                Ticked::new(-0.5..n as f64 - 0.5, (0..n).map(y).collect(), Vec::new()),
            )?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .max_light_lines(4)
            .x_label_formatter(&|x| plain(*x))
            .x_desc("ns per event (median of the repetitions)")
            .y_desc("system")
            .y_label_formatter(&|v| {
                let k = n as f64 - 1.0 - v.round();
                rows.get(k as usize)
                    .map_or(String::new(), |r| r.0.to_string())
            })
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()?;
        chart.draw_series(rows.iter().enumerate().map(|(k, &(system, ns))| {
            Rectangle::new(
                [(0.0, y(k) - 0.35), (ns, y(k) + 0.35)],
                kind(system).1.filled(),
            )
        }))?;
        let value = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(rows.iter().enumerate().map(|(k, &(_, ns))| {
            EmptyElement::at((ns, y(k))) + Text::new(format!("{ns:.1}"), (5, 0), value.clone())
        }))?;

        // The colour key, below the x axis.
        let mut kinds: Vec<(&str, RGBColor)> = Vec::new();
        for (system, _) in rows {
            let k = kind(system);
            if !kinds.iter().any(|(name, _)| *name == k.0) {
                kinds.push(k);
            }
        }
        let label = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let mut x = 60;
        for (name, color) in kinds {
            bottom.draw(
                &(EmptyElement::at((x, legend_h as i32 / 2))
                    + Rectangle::new([(0, -6), (12, 6)], color.filled())
                    + Text::new(name, (18, 0), label.clone())),
            )?;
            x += 50 + 8 * name.len() as i32;
        }
        Ok(())
    })
}

/// Line colours for the latency chart, one per system (tableau 10).
const LINES: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The x coordinate of percentile `p` (0..1): `log10(1 / (1 - p))`, 0 at p = 0, 2 at 99%.
fn x_of(p: f64) -> f64 {
    -(1.0 - p).log10()
}

/// The percentile label of x: 0%, 50%, 90%, 99.9%, ...
fn percent_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    // Enough decimals to tell 99.9% from 99.99%, none for 50%.
    let decimals = (x.round() as i32 - 2).max(0) as usize;
    format!("{p:.decimals$}%")
}

/// `v` with at most two decimals and no trailing zeros: 50 -> "50", 2.5 -> "2.5".
fn plain(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `v`'s tick label, with thousands separated: 2000 -> "2,000".
fn ns_label(v: f64) -> String {
    let digits = format!("{:.0}", v.round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The values `m * 10^k` between `lo` and `hi` for each mantissa `m`.
fn log_ticks(lo: f64, hi: f64, mantissas: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in mantissas {
            let v = m * decade;
            if (lo..=hi).contains(&v) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// The corner of the latency chart with the fewest points under where the legend would sit
/// (usually the upper left: the lines start low and rise to the right).
fn legend_corner(
    curves: &[(&str, Vec<(f64, f64)>)],
    x_max: f64,
    y: Range<f64>,
) -> SeriesLabelPosition {
    // The legend's share of the plot: about 18 px a line in a plot about 480 px high and 900
    // wide, with a margin.
    let h = ((curves.len() as f64 * 18.0 + 40.0) / 480.0).min(0.9);
    let w = 0.25;
    let (ln_lo, ln_hi) = (y.start.ln(), y.end.ln());
    let under = |left: bool, top: bool| {
        let points = curves.iter().flat_map(|c| c.1.iter());
        points
            .filter(|&&(p, ns)| {
                let fx = x_of(p) / x_max;
                let fy = (ns.max(1.0).ln() - ln_lo) / (ln_hi - ln_lo);
                (if left { fx <= w } else { fx >= 1.0 - w })
                    && (if top { fy >= 1.0 - h } else { fy <= h })
            })
            .count()
    };
    [
        (SeriesLabelPosition::UpperLeft, true, true),
        (SeriesLabelPosition::LowerRight, false, false),
        (SeriesLabelPosition::UpperRight, false, true),
        (SeriesLabelPosition::LowerLeft, true, false),
    ]
    .into_iter()
    .min_by_key(|&(_, left, top)| under(left, top))
    .map_or(SeriesLabelPosition::UpperLeft, |c| c.0)
}

/// Each system's latency (ns) at percentiles `p` (0..1), as lines on log-log axes.
pub fn latency(path: &Path, workload: &str, curves: &[(&str, Vec<(f64, f64)>)]) -> Result {
    let height = 640;
    // Latencies are whole ns; a 0 would sit at minus infinity on the log axis.
    let values = || {
        curves
            .iter()
            .flat_map(|c| c.1.iter().map(|pt| pt.1.max(1.0)))
    };
    let lo = values().fold(f64::INFINITY, f64::min) / 1.2;
    let hi = values().fold(0.0, f64::max) * 1.2;
    let x_max = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|pt| x_of(pt.0)))
        .fold(1.0, f64::max);
    // 99.99% is x = 4 give or take a rounding error: no empty decade after it.
    let x_max = (x_max - 1e-9).ceil();
    let decades = (hi / lo).log10();
    let mantissas: &[f64] = if decades > 4.0 {
        &[1.0]
    } else if decades > 1.5 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    };
    let y_ticks = log_ticks(lo, hi, mantissas);
    let y_light = log_ticks(lo, hi, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    // Bold ticks at 0%, 50%, 90%, 99%, ...; light lines at 60%, 70%, 80%, 95%, 98%, ...
    let mut x_ticks = vec![0.0, x_of(0.5)];
    x_ticks.extend((1..=x_max as i32).map(f64::from));
    let x_light: Vec<f64> = (0..x_max as i32)
        .flat_map(|d| (2..=9).map(move |k| f64::from(d + 1) - f64::from(k).log10()))
        .collect();
    write_svg(path, (WIDTH, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{workload}: latency by percentile, lower is better"),
                (FONT, 22),
            )
            .margin(16)
            // Room for the last percentile label, centred on the right edge.
            .margin_right(40)
            .x_label_area_size(52)
            .y_label_area_size(90)
            .build_cartesian_2d(
                Ticked::new(0.0..x_max, x_ticks, x_light),
                (lo..hi)
                    .log_scale()
                    .with_key_points(y_ticks)
                    .with_light_points(y_light),
            )?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale of 1 / (1 - p); the right end is the tail)")
            .y_desc("latency, ns (log scale)")
            .x_label_formatter(&|x| percent_label(*x))
            .y_label_formatter(&|y| ns_label(*y))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()?;
        for (i, (system, points)) in curves.iter().enumerate() {
            let color = LINES[i % LINES.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(p, ns)| (x_of(p), ns.max(1.0))),
                    color.stroke_width(2),
                ))?
                .label(*system)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(legend_corner(curves, x_max, lo..hi))
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        let labels: Vec<String> = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999]
            .iter()
            .map(|&p| percent_label(x_of(p)))
            .collect();
        assert_eq!(labels, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"]);
    }

    #[test]
    fn thousands() {
        assert_eq!(ns_label(950.0), "950");
        assert_eq!(ns_label(2000.0), "2,000");
        assert_eq!(ns_label(1_500_000.0), "1,500,000");
    }
}
