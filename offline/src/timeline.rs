//! `emonav analyze --plot`: what the call heard and thought over time —
//! loudness, pitch and P(high arousal) every 20 ms packet, with the instant
//! the call decided — as one SVG (plotters), three panels on one time axis.

use plotters::prelude::*;

use crate::analyze::TracePoint;

/// The plot of `trace` as an SVG document; `decision_ms` is drawn as a
/// vertical line on every panel.
pub fn svg(title: &str, trace: &[TracePoint], decision_ms: u64) -> Result<String, String> {
    let mut out = String::new();
    draw(&mut out, title, trace, decision_ms).map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw(
    out: &mut String,
    title: &str,
    trace: &[TracePoint],
    decision_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let end_s = trace
        .last()
        .map_or(1.0, |p| p.ms as f64 / 1000.0)
        .max(decision_ms as f64 / 1000.0);
    let decided_s = decision_ms as f64 / 1000.0;
    let root = SVGBackend::with_string(out, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let panels = root.split_evenly((3, 1));
    let max_loud = trace
        .iter()
        .map(|p| p.loudness)
        .fold(0.0f32, f32::max)
        .max(1e-3) as f64;
    let (f0_lo, f0_hi) = trace
        .iter()
        .filter_map(|p| p.f0_hz)
        .fold((f32::MAX, 0.0f32), |(lo, hi), f| (lo.min(f), hi.max(f)));
    let (f0_lo, f0_hi) = if f0_hi > 0.0 {
        ((f0_lo as f64 * 0.9).max(0.0), f0_hi as f64 * 1.1)
    } else {
        (50.0, 500.0)
    };
    let series: [(&str, (f64, f64), RGBColor); 3] = [
        ("loudness", (0.0, max_loud * 1.1), RGBColor(66, 133, 244)),
        ("F0 (Hz)", (f0_lo, f0_hi), RGBColor(15, 157, 88)),
        ("P(high arousal)", (0.0, 1.0), RGBColor(219, 68, 55)),
    ];
    for (i, (area, (name, (lo, hi), color))) in panels.iter().zip(series).enumerate() {
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(if i == 2 { 35 } else { 20 })
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end_s, lo..hi)?;
        let mut mesh = chart.configure_mesh();
        mesh.y_desc(name).disable_x_mesh();
        if i == 2 {
            mesh.x_desc("seconds of audio");
        }
        mesh.draw()?;
        let t = |p: &TracePoint| p.ms as f64 / 1000.0;
        match i {
            0 => {
                chart.draw_series(LineSeries::new(
                    trace.iter().map(|p| (t(p), p.loudness as f64)),
                    color,
                ))?;
            }
            1 => {
                chart.draw_series(trace.iter().filter_map(|p| {
                    p.f0_hz
                        .map(|f| Circle::new((t(p), f as f64), 1, color.filled()))
                }))?;
            }
            _ => {
                chart.draw_series(LineSeries::new(
                    trace.iter().map(|p| (t(p), p.arousal as f64)),
                    color,
                ))?;
                chart.draw_series(LineSeries::new([(0.0, 0.5), (end_s, 0.5)], BLACK.mix(0.3)))?;
            }
        }
        chart
            .draw_series(LineSeries::new(
                [(decided_s, lo), (decided_s, hi)],
                BLACK.stroke_width(2),
            ))?
            .label(format!("decision at {decided_s:.2} s"));
        if i == 0 {
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
