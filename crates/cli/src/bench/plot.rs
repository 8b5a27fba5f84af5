//! `bench --sweep`: the throughput-latency curve as an SVG file.

use std::path::Path;

use plotters::prelude::*;

use super::report::RunResult;

/// Plot p50 and p99 latency against throughput, one point per run (labelled with its client
/// count), into `path`.
pub fn throughput_latency_svg(path: &Path, title: &str, runs: &[RunResult]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let points = |f: fn(&RunResult) -> f64| -> Vec<(f64, f64)> {
        runs.iter().map(|r| (r.throughput_ops_s, f(r))).collect()
    };
    let p50 = points(|r| r.latency.p50_ms);
    let p99 = points(|r| r.latency.p99_ms);
    let x_max = runs.iter().map(|r| r.throughput_ops_s).fold(1.0, f64::max) * 1.15;
    let y_max = runs.iter().map(|r| r.latency.p99_ms).fold(1.0, f64::max) * 1.15;

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("throughput (operations/s)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("latency at the client (ms)")
        .draw()
        .map_err(|e| err(&e))?;
    for (name, series, color) in [("p50", &p50, BLUE), ("p99", &p99, RED)] {
        chart
            .draw_series(LineSeries::new(
                series.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                series
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    // Client counts next to the p99 points.
    chart
        .draw_series(runs.iter().zip(&p99).map(|(r, &(x, y))| {
            EmptyElement::at((x, y))
                + Text::new(
                    format!("{} cl", r.clients),
                    (6, -18),
                    ("sans-serif", 13).into_font().color(&BLACK),
                )
        }))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{Latency, RunResult};

    #[test]
    fn writes_an_svg() {
        let run = |clients, tput, p50, p99| RunResult {
            clients,
            repeat: 1,
            depth: 1,
            rate_ops_s: None,
            duration_s: 1.0,
            ops: 10,
            reads: 0,
            writes: 10,
            errors: 0,
            throughput_ops_s: tput,
            latency: Latency {
                mean_ms: p50,
                p50_ms: p50,
                p90_ms: p99,
                p99_ms: p99,
                max_ms: p99,
            },
            batch_size_mean: None,
            cpu: vec![],
            first_error: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        throughput_latency_svg(
            &path,
            "test",
            &[run(1, 100.0, 2.0, 4.0), run(2, 180.0, 3.0, 7.0)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("2 cl") && svg.contains("p99"));
    }
}
