//! `--plot FILE.svg`: the latency distribution by percentile (the usual HDR
//! plot, percentiles spread as "nines") above deliveries and sends per second
//! over time.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 760;

/// The percentile axis ends at 99.999 % (five nines).
const MAX_NINES: f64 = 5.0;

pub fn draw(path: &Path, report: &Report, latency: &Histogram<u64>) -> Result<(), String> {
    let load = report.load.as_ref().ok_or("--plot needs a load run, not --idle")?;
    let error = |e: &dyn std::fmt::Display| format!("--plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let c = &report.config;
    let title = format!(
        "{} connections, groups of {}, {} msg/s, {} chars, {}",
        c.connections, c.group_size, c.rate, c.length, c.protocol
    );

    // Latency by percentile: x is -log10(1 - q).
    let points: Vec<(f64, f64)> = (0..=500)
        .map(|i| {
            let nines = MAX_NINES * f64::from(i) / 500.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, latency.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("Latency by percentile — {title}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..MAX_NINES + 0.2, 0f64..y_max)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|x| percentile_label(*x))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| error(&e))?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| error(&e))?;

    // Deliveries and sends per second.
    let seconds = load.timeline.len().max(1) as f64;
    let top_rate =
        load.timeline.iter().map(|p| p.delivered.max(p.sent)).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Per second (the grey line ends the warm-up)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, 0f64..top_rate * 1.1)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since sending started")
        .y_desc("per second")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| error(&e))?;
    // Where the warm-up ends and the measured window starts.
    let warmup = report.config.warmup_s;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(warmup, 0.0), (warmup, top_rate * 1.1)],
            BLACK.mix(0.4),
        )))
        .map_err(|e| error(&e))?;
    let delivered = load.timeline.iter().map(|p| (p.second as f64 + 0.5, p.delivered as f64));
    chart
        .draw_series(LineSeries::new(delivered, RED.stroke_width(2)))
        .map_err(|e| error(&e))?
        .label("deliveries/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    let sent = load.timeline.iter().map(|p| (p.second as f64 + 0.5, p.sent as f64));
    chart
        .draw_series(LineSeries::new(sent, GREEN.stroke_width(2)))
        .map_err(|e| error(&e))?
        .label("sends/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))
}

/// `0` → `0%`, `1` → `90%`, `2` → `99%`, `3` → `99.9%`.
fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.ceil() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_read_as_nines() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }
}
