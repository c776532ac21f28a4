//! Time series of a phase and the SVG chart: throughput over time (top), holds granted
//! over time (middle), latency over time (bottom), one colour per target. Where the
//! server's own counters were read (`/metrics`), thin lines of the same colour show its
//! view beside the client's.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::load::Sample;
use crate::server_view::{self, Reading};

/// One time bucket of a phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    /// Bucket end, seconds since the phase started.
    pub(crate) t_s: f64,
    /// Reserve attempts answered per second in this bucket.
    pub(crate) rps: f64,
    /// Holds granted per second, as the client was answered.
    pub(crate) reserved_per_s: f64,
    /// Reservation answers and holds per second as the server counted them.
    pub(crate) server_rps: Option<f64>,
    pub(crate) server_reserved_per_s: Option<f64>,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Buckets of about 1/100 of the run (at least 1 ms), reserve answers only; with the
/// server's `readings` (taken from `start`, when the first attempt was due), its
/// counters' rates over the same buckets.
pub(crate) fn series(
    samples: &[Sample],
    duration_s: f64,
    server: Option<(&[Reading], tokio::time::Instant)>,
) -> Vec<Point> {
    let bucket_us = ((duration_s * 1e6 / 100.0) as u64).max(1_000);
    let bucket_s = bucket_us as f64 / 1e6;
    let mut out = Vec::new();
    let mut lat: Vec<u32> = Vec::new();
    let mut won = 0u64;
    let mut edge = bucket_us;
    let server_rates = |edge: u64| {
        let (readings, start) = server?;
        let t = edge as f64 / 1e6;
        let (r1, a1) = server_view::at(readings, start, t)?;
        let (r0, a0) = server_view::at(readings, start, t - bucket_s)?;
        Some(((a1 - a0) / bucket_s, (r1 - r0) / bucket_s))
    };
    let flush = |edge: u64, lat: &mut Vec<u32>, won: &mut u64, out: &mut Vec<Point>| {
        let (p50, p99, max) = if lat.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            lat.sort_unstable();
            let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize] as f64 / 1000.0;
            (q(0.5), q(0.99), q(1.0))
        };
        let server = server_rates(edge);
        out.push(Point {
            t_s: edge as f64 / 1e6,
            rps: lat.len() as f64 / bucket_s,
            reserved_per_s: *won as f64 / bucket_s,
            server_rps: server.map(|s| s.0),
            server_reserved_per_s: server.map(|s| s.1),
            p50_ms: p50,
            p99_ms: p99,
            max_ms: max,
        });
        lat.clear();
        *won = 0;
    };
    for s in samples.iter().filter(|s| !s.pay) {
        while s.end_us >= edge {
            flush(edge, &mut lat, &mut won, &mut out);
            edge += bucket_us;
        }
        lat.push(s.latency_us);
        won += u64::from(s.reserved);
    }
    if !lat.is_empty() {
        flush(edge, &mut lat, &mut won, &mut out);
    }
    out
}

const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Draws the chart of several phases (name, series) into an SVG file.
pub(crate) fn draw(
    path: &Path,
    title: &str,
    phases: &[(String, Vec<Point>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 1180)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, rest) = root.split_vertically(400);
    let (middle, bottom) = rest.split_vertically(360);

    let t_max = phases
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.t_s))
        .fold(0.01f64, f64::max);
    let rps_max = phases
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.rps))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "throughput over time (reserve attempts answered per second)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rps_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("req/s")
        .draw()?;
    for (i, (name, s)) in phases.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|p| (p.t_s, p.rps)),
                c.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    server_lines(&mut chart, phases, |p| p.server_rps)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;

    let won_max = phases
        .iter()
        .flat_map(|(_, s)| {
            s.iter()
                .map(|p| p.reserved_per_s.max(p.server_reserved_per_s.unwrap_or(0.0)))
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&middle)
        .caption(
            "holds granted per second: client's answers (thick), server's counter (thin)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..won_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("holds/s")
        .draw()?;
    for (i, (name, s)) in phases.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|p| (p.t_s, p.reserved_per_s)),
                c.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    server_lines(&mut chart, phases, |p| p.server_reserved_per_s)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;

    let lat_max = phases
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.p99_ms))
        .fold(1.0f64, f64::max)
        * 1.5;
    let lat_min = phases
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.p50_ms))
        .filter(|&v| v > 0.0)
        .fold(lat_max, f64::min)
        .clamp(0.001, 0.1);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "latency over time: p99 (thick) and p50 (thin) per bucket, ms, log scale",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (lat_min..lat_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("ms")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (i, (name, s)) in phases.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|p| (p.t_s, p.p99_ms)),
                c.stroke_width(2),
            ))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(LineSeries::new(
            s.iter().map(|p| (p.t_s, p.p50_ms)),
            c.mix(0.6).stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The server's view of each phase that has one, as a thin line of the phase's colour.
fn server_lines<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    phases: &[(String, Vec<Point>)],
    value: impl Fn(&Point) -> Option<f64>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    for (i, (name, s)) in phases.iter().enumerate() {
        let line: Vec<(f64, f64)> = s
            .iter()
            .filter_map(|p| value(p).map(|v| (p.t_s, v)))
            .collect();
        if line.is_empty() {
            continue;
        }
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(line, c.mix(0.9).stroke_width(1)))
            .map_err(|e| anyhow::anyhow!("drawing the server's view: {e}"))?
            .label(format!("{name}, server's counters"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_and_rank() {
        let samples: Vec<Sample> = (0..1000u64)
            .map(|i| Sample {
                end_us: i * 1000,
                latency_us: (i % 100) as u32 * 10 + 10,
                pay: false,
                reserved: i % 10 == 0,
            })
            .collect();
        let start = tokio::time::Instant::now();
        // The server counted 1000 answers (100 holds) in the second, evenly.
        let readings: Vec<Reading> = (0..=10u32)
            .map(|k| Reading {
                at: start + std::time::Duration::from_millis(u64::from(k) * 100),
                reserved: f64::from(k * 10),
                answered: f64::from(k * 100),
            })
            .collect();
        let s = series(&samples, 1.0, Some((&readings, start)));
        assert_eq!(s.len(), 100);
        // 10 answers per 10 ms bucket = 1000/s, one of them a hold.
        assert!((s[0].rps - 1000.0).abs() < 1e-6);
        assert!((s[0].reserved_per_s - 100.0).abs() < 1e-6);
        let server = s[50].server_rps.unwrap();
        assert!((server - 1000.0).abs() < 1e-6, "{server}");
        assert!((s[50].server_reserved_per_s.unwrap() - 100.0).abs() < 1e-6);
        assert!(s[0].p99_ms >= s[0].p50_ms);
    }

    #[test]
    fn draws_an_svg() {
        let dir = std::env::temp_dir().join(format!("fsb-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let pts = vec![
            Point {
                t_s: 0.1,
                rps: 10.0,
                reserved_per_s: 2.0,
                server_rps: Some(10.0),
                server_reserved_per_s: Some(2.0),
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
            },
            Point {
                t_s: 0.2,
                reserved_per_s: 1.0,
                server_rps: None,
                server_reserved_per_s: None,
                rps: 20.0,
                p50_ms: 1.5,
                p99_ms: 2.5,
                max_ms: 3.0,
            },
        ];
        draw(&path, "test", &[("a".into(), pts)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
