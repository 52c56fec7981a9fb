//! Small line charts as SVG, for the reports of `shears demo` and `cargo xtask`.

use std::fmt::Write;

/// One named line of `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The name shown in the legend.
    pub name: String,
    /// The points, joined in order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/// `range` as an axis can draw it: low to high and wider than a point (see
/// [`line_chart`]).
fn axis((a, b): (f64, f64)) -> (f64, f64) {
    if !(a.is_finite() && b.is_finite()) {
        (0.0, 1.0)
    } else if a == b {
        (a - 0.5, b + 0.5)
    } else {
        (a.min(b), a.max(b))
    }
}

/// Text for SVG: `&`, `<`, `>` and quotes escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG chart with axes from `x_range` and `y_range`, labelled, with a legend. Every
/// text is escaped, so names may hold any character. Points are clamped to `y_range`. A
/// range given high bound first is read low to high, one of a single value is widened by
/// 0.5 either side, and one with a bound that is not finite becomes `(0, 1)`.
///
/// ```
/// use shears_io::chart::{Series, line_chart};
/// let svg = line_chart("a < b", "x", "y", (0.0, 1.0), (0.0, 1.0),
///     &[Series { name: "s".into(), points: vec![(0.0, 0.5), (1.0, 1.0)] }]);
/// assert!(svg.starts_with("<svg") && svg.contains("a &lt; b"));
/// ```
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    y_range: (f64, f64),
    series: &[Series],
) -> String {
    let (title, x_label, y_label) = (escape(title), escape(x_label), escape(y_label));
    let (x_range, y_range) = (axis(x_range), axis(y_range));
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 70.0, 180.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |x: f64| left + (x - x_range.0) / (x_range.1 - x_range.0) * pw;
    let sy = |y: f64| top + ph - (y - y_range.0) / (y_range.1 - y_range.0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{title}</text>"#,
        left + pw / 2.0
    );
    for i in 0..=5 {
        let fx = x_range.0 + (x_range.1 - x_range.0) * f64::from(i) / 5.0;
        let fy = y_range.0 + (y_range.1 - y_range.0) * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4:.2}</text>"##,
            sx(fx),
            top,
            top + ph,
            top + ph + 18.0,
            fx
        );
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/><text x="{3}" y="{4}" text-anchor="end">{5:.3}</text>"##,
            left,
            sy(fy),
            left + pw,
            left - 6.0,
            sy(fy) + 4.0,
            fy
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{y_label}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, line) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y.max(y_range.0).min(y_range.1))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{2}" y="{3}">{4}</text>"#,
            left + pw + 12.0,
            left + pw + 32.0,
            left + pw + 38.0,
            ly + 4.0,
            escape(&line.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_an_axis_cannot_draw_are_made_drawable() {
        assert_eq!(axis((1.0, 0.0)), (0.0, 1.0));
        assert_eq!(axis((2.0, 2.0)), (1.5, 2.5));
        assert_eq!(axis((f64::NAN, 1.0)), (0.0, 1.0));
        assert_eq!(axis((0.0, f64::INFINITY)), (0.0, 1.0));
        assert_eq!(axis((-1.0, 3.0)), (-1.0, 3.0));
        // Every one draws without a NaN coordinate, a point of NaN included.
        let series = [Series { name: "s".into(), points: vec![(0.5, 0.5), (0.7, f64::NAN)] }];
        for range in [(1.0, 0.0), (0.0, 0.0), (f64::NAN, f64::NAN)] {
            let svg = line_chart("t", "x", "y", range, range, &series);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{range:?}: {svg}");
        }
    }
}
