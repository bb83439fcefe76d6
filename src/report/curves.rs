//! Training curves as SVG line charts: one small chart per metric of a stage's `metrics`
//! table (loss, reward, `frac_reward_zero_std`, kl, …), x the optimizer step, one point per
//! row.

use std::fmt::Write;

use super::html::{clip, escape};

const W: f64 = 300.0;
const H: f64 = 150.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 26.0;
const RIGHT: f64 = 10.0;

/// One metric over the steps of one run.
#[derive(Clone, Debug)]
pub struct Series {
    /// The metric's column name.
    pub metric: String,
    /// `(step, value)`, one per metrics row with a finite value.
    pub points: Vec<(f64, f64)>,
}

/// The metrics worth a chart, in the order shown (the trainers' names; others are skipped).
pub const METRICS: &[&str] = &[
    "loss",
    "reward",
    "reward_correctness",
    "frac_reward_zero_std",
    "kl",
    "entropy",
    "completion_length",
    "grad_norm",
    "lr",
    "accuracy",
];

/// A chart of one series, as an inline `<svg>` whose polyline has one vertex per point.
pub fn svg(series: &Series) -> String {
    overlay(&series.metric, &[Line { label: String::new(), points: &series.points }])
}

/// One line of an overlaid chart: a run (or a stage) and its points.
#[derive(Clone, Debug)]
pub struct Line<'a> {
    /// What the line is (shown in the legend; empty for a lone line).
    pub label: String,
    /// `(step, value)`.
    pub points: &'a [(f64, f64)],
}

/// Line colours, in order (distinguishable, and readable in grey).
const PALETTE: &[&str] = &["#2a6fb0", "#d9534f", "#3c9a4a", "#8e5ab5", "#e08a1e", "#444444", "#1fa2a8", "#b5487e"];

/// Several lines of one metric on shared axes: one `<polyline data-run data-points>` each.
/// The `<svg>` carries `data-points` too when it has a single line.
pub fn overlay(metric: &str, lines: &[Line<'_>]) -> String {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (x0, x1) = bounds(xs);
    let (mut y0, mut y1) = bounds(ys);
    if (y1 - y0).abs() < f64::EPSILON {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let labelled = lines.iter().filter(|l| !l.label.is_empty()).count();
    let legend_h = if labelled > 0 { 14.0 * labelled.div_ceil(2) as f64 } else { 0.0 };
    let h = H + legend_h;
    let top = TOP + legend_h;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(f64::EPSILON) * (W - LEFT - RIGHT);
    let sy = |y: f64| h - BOTTOM - (y - y0) / (y1 - y0) * (h - BOTTOM - top);
    let mut s = String::new();
    let points_attr = match lines {
        [one] => format!(r#" data-points="{}""#, one.points.len()),
        _ => String::new(),
    };
    let _ = write!(
        s,
        r#"<svg class="curve" data-metric="{m}"{points_attr} data-lines="{nl}" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="{m}"><text x="{LEFT}" y="12" class="title">{m}</text>"#,
        m = escape(metric),
        nl = lines.len(),
    );
    for (k, line) in lines.iter().filter(|l| !l.label.is_empty()).enumerate() {
        let (lx, ly) = (8.0 + (k % 2) as f64 * 146.0, 26.0 + (k / 2) as f64 * 14.0);
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{ry}" width="10" height="3" fill="{c}"/><text x="{tx}" y="{ly}" class="key">{l}</text>"#,
            ry = ly - 5.0,
            c = PALETTE[k % PALETTE.len()],
            tx = lx + 13.0,
            l = escape(&clip(&line.label, 21)),
        );
    }
    for (v, label) in [(y0, fmt(y0)), (y1, fmt(y1))] {
        let y = sy(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            x2 = W - RIGHT,
            tx = LEFT - 4.0,
            ty = y + 4.0,
        );
    }
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="{yb}">{a}</text><text x="{xr}" y="{yb}" text-anchor="end">step {b}</text>"#,
        yb = h - 6.0,
        a = fmt(x0),
        xr = W - RIGHT,
        b = fmt(x1),
    );
    for (k, line) in lines.iter().enumerate() {
        let pts: Vec<String> = line.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(
            s,
            r#"<polyline data-run="{l}" data-points="{n}" fill="none" stroke="{c}" stroke-width="1.3" points="{p}"><title>{l}</title></polyline>"#,
            l = escape(&line.label),
            n = line.points.len(),
            c = PALETTE[k % PALETTE.len()],
            p = pts.join(" "),
        );
    }
    s.push_str("</svg>");
    s
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// A short label: 3 significant digits, exponent notation for very small or large values.
fn fmt(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vertex_per_point_and_flat_series_still_draw() {
        let s = Series { metric: "kl".into(), points: vec![(1.0, 0.5), (2.0, 0.5), (3.0, 0.5)] };
        let svg = svg(&s);
        assert!(svg.contains(r#"data-points="3""#), "{svg}");
        let poly = svg.split(" points=\"").nth(1).and_then(|p| p.split('"').next()).unwrap_or_default();
        assert_eq!(poly.split(' ').count(), 3, "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn overlaid_lines_share_the_axes_and_each_keeps_its_points() {
        let a = [(0.0, 1.0), (1.0, 0.5)];
        let b = [(0.0, 2.0), (1.0, 1.0), (2.0, 0.25)];
        let svg =
            overlay("loss", &[Line { label: "run 1".into(), points: &a }, Line { label: "run 2".into(), points: &b }]);
        assert!(svg.contains(r#"data-lines="2""#) && !svg.contains(r#"data-lines="2" data-points"#), "{svg}");
        assert!(svg.contains(r#"data-run="run 1" data-points="2""#), "{svg}");
        assert!(svg.contains(r#"data-run="run 2" data-points="3""#), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(fmt(0.000_02), "2.00e-5");
        assert_eq!(fmt(0.1234567), "0.123");
        assert_eq!(fmt(600.0), "600");
    }
}
