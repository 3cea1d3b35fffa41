//! PNG line plots with plotters, labelled with the DejaVu Sans font shipped in
//! `sim/assets/` (no system fonts needed; licence beside the font file).

use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

/// The font, compiled in.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register() -> anyhow::Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok =
        *OK.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("the shipped font sim/assets/DejaVuSans.ttf could not be loaded"))
    }
}

/// One line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y); points with y ≤ 0 are left out on a log axis.
    pub points: Vec<(f64, f64)>,
}

/// Writes a line plot with a logarithmic y axis (key rates span decades) to `path`.
/// `log_x` makes the x axis logarithmic too (ONU counts).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> anyhow::Result<()> {
    register()?;
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|p| p.1 > 0.0 && p.1.is_finite());
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        // Nothing positive to show: draw an empty frame with a sane range.
        (x0, x1, y0, y1) = (1.0, 2.0, 1.0, 10.0);
    }
    if x1 <= x0 {
        x1 = x0 * 2.0 + 1.0;
    }
    let (y0, y1) = (y0 / 2.0, y1 * 2.0);
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let colours =
        [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK, &RGBColor(230, 140, 0), &RGBColor(120, 60, 160)];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .label_style(("sans-serif", 16))
                .draw()?;
            for (i, s) in series.iter().enumerate() {
                let c = colours[i % colours.len()];
                let p: Vec<(f64, f64)> =
                    s.points.iter().copied().filter(|p| p.1 > 0.0 && p.1.is_finite()).collect();
                chart
                    .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                chart.draw_series(p.into_iter().map(|q| Circle::new(q, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerLeft)
                .draw()?;
        }};
    }
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 24)).margin(16).x_label_area_size(48).y_label_area_size(80);
    if log_x {
        draw!(builder.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?);
    } else {
        draw!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale())?);
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = std::env::temp_dir().join(format!("qpon-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let s = vec![
            Series { label: "a".into(), points: vec![(8.0, 1e5), (16.0, 4e4), (32.0, 1e4)] },
            Series { label: "b (zero dropped)".into(), points: vec![(8.0, 3e3), (16.0, 0.0)] },
        ];
        line_plot(&path, "t", "ONUs", "bits/s", &s, true).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        line_plot(&dir.join("empty.png"), "t", "x", "y", &[], false).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}
