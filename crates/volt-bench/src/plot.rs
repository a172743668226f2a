//! PNG line charts for BENCHMARKS.md, where a curve says more than a row. Written by
//! full runs only (not `--quick`), to `docs/bench/` or `$VOLT_BENCH_PLOTS`.

use std::path::PathBuf;

use anyhow::Context;
use plotters::prelude::*;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Where plots go (created if missing).
pub fn out_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("VOLT_BENCH_PLOTS").unwrap_or_else(|_| "docs/bench".to_string()),
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The bitmap backend draws text with a font registered here: DejaVu Sans, which the
/// machines of this workplace have. Without it, plots are skipped (with a message).
fn ensure_font() -> anyhow::Result<()> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a font"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!("no font for plots: {e}"))
}

/// A line chart of `series` into `file` under `out_dir()`; returns its path.
pub fn line_chart(
    file: &str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> anyhow::Result<PathBuf> {
    ensure_font()?;
    let path = out_dir()?.join(file);
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(&path, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    Ok(path)
}
