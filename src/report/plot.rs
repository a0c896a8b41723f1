//! SVG charts drawn with plotters' SVG backend: line charts over iterations
//! or steps (linear or log y), and the per-phase pass-rate bars with SEM
//! error bars.
//!
//! Owns: axis ranges (padding, a degenerate range widened, the log axis's
//! floor for zeros), colors, legends and number formatting on the axes.
//! Does not own which series a chart shows (mod.rs) nor reading files.
//! Text reaches the SVG through plotters, which escapes it. No fonts are
//! needed: the SVG backend writes `<text>` elements and the browser lays
//! them out.

use super::data::{PhaseResult, Series};
use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;

const SIZE: (u32, u32) = (720, 400);
/// Where a zero or negative value sits on a log axis.
pub const LOG_FLOOR: f64 = 1e-12;

/// How the y axis maps values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Linear, from zero (or below, if the data goes below).
    FromZero,
    /// Linear over the data's own range.
    Fit,
    /// Logarithmic; values at or below zero are drawn at [`LOG_FLOOR`].
    Log,
}

/// A line chart: one line per series, a legend, axis labels.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub scale: Scale,
    pub series: Vec<Series>,
}

impl LineChart {
    pub fn has_data(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
    C[i % C.len()]
}

fn plot_err<E: std::fmt::Display>(title: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing the chart {title:?}: {e}")
}

/// A number for an axis tick: four significant digits at most, trailing
/// zeros dropped, and scientific notation when very large or small.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !v.is_finite() {
        return if a == 0.0 { "0".into() } else { format!("{v}") };
    }
    if !(1e-4..1e6).contains(&a) {
        return format!("{v:.1e}").replace(".0e", "e");
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// The share of the plot's height kept free above the data for a legend of
/// `rows` entries in the upper corner.
pub fn headroom(rows: usize) -> f64 {
    ((rows as f64 * 17.0 + 24.0) / 300.0).min(0.5)
}

/// `range` with its top raised so the data fill only the lower `1 - room`.
fn with_headroom(r: Range<f64>, room: f64) -> Range<f64> {
    r.start..r.start + (r.end - r.start) / (1.0 - room)
}

/// `range` (of positive values) with its top raised so the data fill only
/// the lower `1 - room` of a log axis.
fn with_log_headroom(r: Range<f64>, room: f64) -> Range<f64> {
    let (lo, hi) = (r.start.log10(), r.end.log10());
    r.start..10f64.powf(lo + (hi - lo) / (1.0 - room))
}

/// The range [lo, hi] padded by 5% on each side, widened when it is a
/// single value.
pub fn linear_range(lo: f64, hi: f64) -> Range<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - lo.abs().max(1.0) * 0.5, hi + hi.abs().max(1.0) * 0.5) };
    let pad = (hi - lo) * 0.05;
    (lo - pad)..(hi + pad)
}

/// The log axis's range over positive values in [lo, hi]: a little beyond
/// the data, and at least a factor of 10 wide.
pub fn log_range(lo: f64, hi: f64) -> Range<f64> {
    let lo = lo.max(LOG_FLOOR);
    let hi = hi.max(lo);
    if hi / lo < 10.0 {
        let mid = (lo * hi).sqrt();
        (mid / 10f64.sqrt()).min(lo / 1.2)..(mid * 10f64.sqrt()).max(hi * 1.2)
    } else {
        (lo / 1.5)..(hi * 1.5)
    }
}

fn bounds(points: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    points.fold(None, |acc, v| Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v)))))
}

/// Render a line chart as an SVG document; `None` when it has no points.
pub fn line_chart(c: &LineChart) -> Result<Option<String>> {
    let all = || c.series.iter().flat_map(|s| s.points.iter().copied());
    let (Some((x0, x1)), Some((y0, y1))) = (bounds(all().map(|p| p.0)), bounds(all().map(|p| p.1))) else { return Ok(None) };
    let xr = linear_range(x0, x1);
    let spans = [xr.end - xr.start, y1 - y0];
    if spans.iter().any(|v| !v.is_finite()) {
        anyhow::bail!("chart {:?}: values too large to plot (x from {x0} to {x1}, y from {y0} to {y1})", c.title);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(&c.title))?;
        let room = headroom(c.series.iter().filter(|s| !s.points.is_empty()).count());
        match c.scale {
            // all zero (or negative) data has no log scale: draw it linear
            Scale::Log if y1 > 0.0 => {
                let floored = all().any(|p| p.1 <= 0.0);
                let ylo = if floored { LOG_FLOOR } else { all().map(|p| p.1).filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min) };
                let clamp = |s: &Series| Series { label: s.label.clone(), points: s.points.iter().map(|&(x, y)| (x, y.max(LOG_FLOOR))).collect() };
                let series: Vec<Series> = c.series.iter().map(clamp).collect();
                draw_lines(&root, c, &series, xr, with_log_headroom(log_range(ylo, y1), room).log_scale())?;
            }
            Scale::Log => {
                let linear = LineChart { y_label: format!("{} (all zero or below: linear)", c.y_label), ..c.clone() };
                draw_lines(&root, &linear, &c.series, xr, with_headroom(linear_range(y0, y1), room))?
            }
            Scale::FromZero => draw_lines(&root, c, &c.series, xr, with_headroom(linear_range(y0.min(0.0), y1.max(0.0)), room))?,
            Scale::Fit => draw_lines(&root, c, &c.series, xr, with_headroom(linear_range(y0, y1), room))?,
        }
        root.present().map_err(plot_err(&c.title))?;
    }
    Ok(Some(svg))
}

fn draw_lines<Y>(root: &DrawingArea<SVGBackend<'_>, Shift>, c: &LineChart, series: &[Series], xr: Range<f64>, yr: Y) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = || plot_err(&c.title);
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(xr, yr)
        .map_err(e())?;
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_num(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e())?;
    for (i, s) in series.iter().enumerate().filter(|(_, s)| !s.points.is_empty()) {
        let col = color(i);
        let style = col.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(e())?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        // marks make short series (one point) visible
        if s.points.len() <= 60 {
            chart.draw_series(PointSeries::of_element(s.points.iter().copied(), 3, col.filled(), &|p, size, st| EmptyElement::at(p) + Circle::new((0, 0), size, st))).map_err(e())?;
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.4)).position(SeriesLabelPosition::UpperRight).draw().map_err(e())?;
    Ok(())
}

/// Pass rate per phase as bars with ± SEM error bars; `None` without phases.
pub fn phase_chart(title: &str, phases: &[PhaseResult]) -> Result<Option<String>> {
    if phases.is_empty() {
        return Ok(None);
    }
    let e = || plot_err(title);
    let n = phases.len();
    let top = phases.iter().map(|p| p.pass_rate + p.sem.unwrap_or(0.0)).fold(1.0f64, f64::max);
    let bottom = phases.iter().map(|p| p.pass_rate - p.sem.unwrap_or(0.0)).fold(0.0f64, f64::min);
    // room above the bars for their value labels and the legend
    let yr = with_headroom(bottom..top, headroom(2));
    // one unit per phase, its bar centred on the integer; with at most n
    // ticks over a width of n, the ticks are the integers
    let xr = -0.5..n as f64 - 0.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(e())?;
        let mut chart = ChartBuilder::on(&root).caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(44).y_label_area_size(64).build_cartesian_2d(xr, yr).map_err(e())?;
        let name = |v: &f64| {
            let i = v.round();
            let p = if (v - i).abs() < 1e-6 && i >= 0.0 { phases.get(i as usize) } else { None };
            p.map(|p| p.phase.clone()).unwrap_or_default()
        };
        chart
            .configure_mesh()
            .x_desc("phase")
            .y_desc("held-out pass rate")
            .x_labels(n)
            .x_label_formatter(&name)
            .y_label_formatter(&|v| fmt_num(*v))
            .disable_x_mesh()
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e())?;
        let bar = color(0).mix(0.7).filled();
        let half = 0.32;
        chart
            .draw_series(phases.iter().enumerate().map(|(i, p)| Rectangle::new([(i as f64 - half, 0.0), (i as f64 + half, p.pass_rate)], bar)))
            .map_err(e())?
            .label("pass rate")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], bar));
        let err = BLACK.stroke_width(2);
        let with_sem: Vec<(f64, f64, f64)> = phases.iter().enumerate().filter_map(|(i, p)| Some((i as f64, p.pass_rate - p.sem?, p.pass_rate + p.sem?))).collect();
        chart
            .draw_series(with_sem.iter().map(|&(x, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], err)))
            .map_err(e())?
            .label("± SEM")
            .legend(move |(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], err));
        let caps = with_sem.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
        chart.draw_series(caps.map(|at| EmptyElement::at(at) + PathElement::new(vec![(-8, 0), (8, 0)], err))).map_err(e())?;
        let above = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(phases.iter().enumerate().map(|(i, p)| {
                let label = match p.sem {
                    Some(s) => format!("{:.3} ± {:.3}", p.pass_rate, s),
                    None => format!("{:.3}", p.pass_rate),
                };
                EmptyElement::at((i as f64, p.pass_rate + p.sem.unwrap_or(0.0))) + Text::new(label, (0, -6), above.clone())
            }))
            .map_err(e())?;
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.4)).position(SeriesLabelPosition::UpperRight).draw().map_err(e())?;
        root.present().map_err(e())?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(scale: Scale, series: Vec<Series>) -> LineChart {
        LineChart { title: "T <1>".into(), x_label: "iteration".into(), y_label: "value".into(), scale, series }
    }

    fn s(label: &str, points: &[(f64, f64)]) -> Series {
        Series { label: label.into(), points: points.to_vec() }
    }

    #[test]
    fn tick_numbers_are_short_and_distinct() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.0015), "0.0015");
        assert_eq!(fmt_num(0.0025), "0.0025");
        assert_eq!(fmt_num(0.30000000000000004), "0.3");
        assert_eq!(fmt_num(12000.0), "12000");
        assert_eq!(fmt_num(1.5), "1.5");
        assert_eq!(fmt_num(-2.0), "-2");
        assert_eq!(fmt_num(1e-12), "1e-12");
        assert_eq!(fmt_num(2.5e7), "2.5e7");
    }

    #[test]
    fn ranges_are_never_empty() {
        let r = linear_range(3.0, 3.0);
        assert!(r.start < 3.0 && r.end > 3.0);
        let r = linear_range(0.0, 0.0);
        assert!(r.start < 0.0 && r.end > 0.0);
        let r = log_range(1e-7, 1e-7);
        assert!(r.start > 0.0 && r.end / r.start >= 10.0 && r.start < 1e-7 && r.end > 1e-7);
        let r = log_range(0.0, 0.0);
        assert!(r.start > 0.0 && r.end > r.start);
        let r = with_headroom(0.0..1.0, 0.25);
        assert!((r.end - 4.0 / 3.0).abs() < 1e-12);
        let r = with_log_headroom(1e-6..1e-2, 0.5);
        assert!((r.end.log10() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_chart_without_points_is_none() {
        assert!(line_chart(&chart(Scale::FromZero, vec![])).unwrap().is_none());
        assert!(line_chart(&chart(Scale::Log, vec![s("a", &[])])).unwrap().is_none());
        assert!(phase_chart("p", &[]).unwrap().is_none());
    }

    #[test]
    fn a_line_chart_has_labels_a_legend_and_escaped_text() {
        let svg = line_chart(&chart(Scale::FromZero, vec![s("gen <fast>", &[(1.0, 5.0), (2.0, 7.0)]), s("train", &[(1.0, 2.0)])])).unwrap().unwrap();
        assert!(svg.contains("<svg"));
        for t in ["T &lt;1&gt;", "iteration", "value", "gen &lt;fast&gt;", "train"] {
            assert!(svg.contains(t), "{t} missing");
        }
        assert!(!svg.contains("<fast>") && !svg.contains("NaN"));
    }

    #[test]
    fn a_log_chart_draws_zeros_at_the_floor_and_all_zeros_linear() {
        let svg = line_chart(&chart(Scale::Log, vec![s("max", &[(1.0, 0.0), (2.0, 1e-6)])])).unwrap().unwrap();
        assert!(svg.contains("1e-12"), "zero not at the floor");
        assert!(!svg.contains("(all zero"));
        let svg = line_chart(&chart(Scale::Log, vec![s("max", &[(1.0, 0.0), (2.0, 0.0)])])).unwrap().unwrap();
        assert!(svg.contains("(all zero or below: linear)"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn the_phase_chart_names_each_phase_once() {
        let p = |phase: &str, pass_rate, sem| PhaseResult { phase: phase.into(), pass_rate, sem, episodes: None, solved: None };
        for phases in [vec![p("initial", 0.25, Some(0.05))], vec![p("initial", 0.1, None), p("a<b", 0.2, Some(0.01)), p("dapo", 1.0, Some(0.0))]] {
            let svg = phase_chart("pass", &phases).unwrap().unwrap();
            for ph in &phases {
                let name = ph.phase.replace('<', "&lt;");
                assert_eq!(svg.matches(&format!(">\n{name}\n</text>")).count(), 1, "{name} in:\n{svg}");
            }
            let first = &phases[0];
            assert!(svg.contains(&format!(">\n{:.3}", first.pass_rate)), "value label missing");
        }
    }
}
