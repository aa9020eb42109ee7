//! SVG line charts (plotters, SVG backend only): `warpfs bench --plot` draws throughput
//! curves and latency CDFs with it, `warpfs graph bfs` BFS time against cache size.
//! Costs one small file write per chart.

use crate::error::CliError;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

/// One named line: points `(x, y)` drawn in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// Line colours, in series order (colour-blind safe: Okabe–Ito).
const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Writes an SVG line chart of `series` to `path` (900 × 560 px): a legend with the series
/// names, axis labels, a logarithmic x axis if `log_x` (points with x ≤ 0 are then left out).
/// Non-finite points are left out; it is an error if no point is left.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[Series],
) -> Result<(), CliError> {
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_x || x > 0.0);
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(keep)
    };
    let Some((mut x0, mut x1, mut y0, mut y1)) = pts().fold(None, |acc, (x, y)| {
        let (a, b, c, d) = acc.unwrap_or((x, x, y, y));
        Some((a.min(x), b.max(x), c.min(y), d.max(y)))
    }) else {
        return Err(CliError(format!(
            "nothing to plot in {}: no finite points",
            path.display()
        )));
    };
    if x0 == x1 {
        (x0, x1) = if log_x {
            (x0 / 2.0, x1 * 2.0)
        } else {
            (x0 - 1.0, x1 + 1.0)
        };
    }
    // Charts of amounts start at 0; a little headroom above the top point.
    y0 = y0.min(0.0);
    y1 = if y1 > y0 {
        y1 + (y1 - y0) * 0.08
    } else {
        y0 + 1.0
    };
    let err = |e: &dyn std::fmt::Display| CliError(format!("drawing {}: {e}", path.display()));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(80);
    if log_x {
        let chart = b
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(|e| err(&e))?;
        draw(chart, x_label, y_label, series, keep).map_err(|e| err(&e))?;
    } else {
        let chart = b.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| err(&e))?;
        draw(chart, x_label, y_label, series, keep).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Mesh, lines and legend on a chart with any f64 x axis.
fn draw<'a, X>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    keep: impl Fn(&(f64, f64)) -> bool,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(&keep).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// A short tick label: `3`, `2.5`, `0.25`, `16384`, `2.1e6`.
fn short(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.1e}")
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_well_formed_svg_with_every_series() {
        let d = std::env::temp_dir().join(format!("warpfs-plot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for log_x in [false, true] {
            let p = d.join(format!("c{log_x}.svg"));
            let s = [
                Series {
                    name: "warpfs".into(),
                    points: vec![(1.0, 2.0), (2.0, 4.0), (4.0, 7.5), (f64::NAN, 1.0)],
                },
                Series {
                    name: "pread baseline".into(),
                    points: vec![(0.0, 1.0), (1.0, 1.0), (4.0, 3.0)],
                },
            ];
            line_chart(&p, "title here", "threads", "IOPS", log_x, &s).unwrap();
            let svg = std::fs::read_to_string(&p).unwrap();
            assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
            assert!(svg.trim_end().ends_with("</svg>"));
            for needle in ["warpfs", "pread baseline", "title here", "threads", "IOPS"] {
                assert!(svg.contains(needle), "{needle} missing");
            }
            assert!(svg.matches("<polyline").count() >= 2);
        }
        let p = d.join("one.svg");
        line_chart(
            &p,
            "t",
            "x",
            "y",
            true,
            &[Series {
                name: "a".into(),
                points: vec![(5.0, 0.0)],
            }],
        )
        .unwrap();
        assert!(line_chart(&p, "t", "x", "y", true, &[]).is_err());
        assert!(line_chart(
            &p,
            "t",
            "x",
            "y",
            true,
            &[Series {
                name: "a".into(),
                points: vec![(0.0, 1.0)]
            }]
        )
        .is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn short_labels() {
        assert_eq!(short(3.0), "3");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(16384.0), "16384");
        assert_eq!(short(2.1e6), "2.1e6");
    }
}
