//! A self-contained SVG of a run (no scripts, no external fonts or styles): latency by
//! percentile (the HdrHistogram-style curve, x on a log scale of 1/(1-p) so the tail gets room),
//! throughput per second, and p50/p99 per second.

use std::fmt::Write as _;

use crate::report::{Report, thousands, thousands_rounded};

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 260.0;
const PANEL_GAP: f64 = 60.0;
const TOP: f64 = 70.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
/// The curve's x position of the maximum, right of 99.999%.
const X_MAX_POSITION: f64 = 5.5;

/// Escapes text for SVG content and attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(ch),
        }
    }
    out
}

/// A round axis maximum at or above `max` and its tick step (1, 2 or 5 times a power of ten).
pub(crate) fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let rough_step = max / 5.0;
    let magnitude = 10f64.powf(rough_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= rough_step)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

struct Series {
    label: String,
    color: &'static str,
    /// (x in 0..=1, y in data units)
    points: Vec<(f64, f64)>,
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    y_label: &'a str,
    /// (x in 0..=1, label)
    x_ticks: Vec<(f64, String)>,
    x_label: &'a str,
    series: Vec<Series>,
}

fn draw_panel(out: &mut String, panel: &Panel<'_>) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let bottom = panel.top + PANEL_HEIGHT;
    let y_data_max = panel
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(|point| point.1))
        .fold(0.0, f64::max);
    let (y_max, y_step) = nice_axis(y_data_max);
    let x_of = |fraction: f64| LEFT + fraction.clamp(0.0, 1.0) * plot_width;
    let y_of = |value: f64| bottom - (value / y_max).clamp(0.0, 1.0) * PANEL_HEIGHT;

    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
        panel.top - 12.0,
        escape(panel.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{:.1}" width="{plot_width:.1}" height="{PANEL_HEIGHT:.1}" fill="#fafafa" stroke="#999"/>"##,
        panel.top
    );
    let mut tick = 0.0;
    while tick <= y_max + y_step / 2.0 {
        let y = y_of(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            thousands_rounded(tick)
        );
        tick += y_step;
    }
    for (fraction, label) in &panel.x_ticks {
        let x = x_of(*fraction);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            panel.top,
            bottom + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        bottom + 34.0,
        escape(panel.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        LEFT - 60.0,
        panel.top + PANEL_HEIGHT / 2.0,
        escape(panel.y_label)
    );
    for (index, series) in panel.series.iter().enumerate() {
        if !series.points.is_empty() {
            let points: Vec<String> = series
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                series.color,
                points.join(" ")
            );
        }
        let legend_x = LEFT + plot_width - 160.0;
        let legend_y = panel.top + 18.0 + index as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{legend_y:.1}" font-size="12">{}</text>"#,
            legend_y - 4.0,
            legend_x + 20.0,
            legend_y - 4.0,
            series.color,
            legend_x + 26.0,
            escape(&series.label)
        );
    }
}

/// The x position of a percentile on the curve: -log10(1 - p/100), the maximum at the far right.
fn percentile_position(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        return X_MAX_POSITION;
    }
    (-(1.0 - percentile / 100.0).log10()).clamp(0.0, X_MAX_POSITION)
}

/// Renders the report's charts.
pub(crate) fn render(report: &Report) -> String {
    let height = TOP + 3.0 * (PANEL_HEIGHT + PANEL_GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#);
    write_heading(&mut out, report);
    draw_panel(&mut out, &percentile_panel(report));
    draw_timeline_panels(&mut out, report);
    out.push_str("</svg>\n");
    out
}

/// The title (what was run) and the subtitle (what it achieved).
fn write_heading(out: &mut String, report: &Report) {
    let config = &report.config;
    let rate = if config.rate_target_ops_per_s == 0 {
        "unthrottled".to_owned()
    } else {
        format!("{} ops/s target", thousands(config.rate_target_ops_per_s))
    };
    let title = format!(
        "pinswitch-loadgen: {} / {}, {} conn x {} in flight, batch {}, {rate}",
        config.workload, config.dist, config.connections, config.in_flight, config.batch
    );
    let subtitle = format!(
        "{} ops in {:.1} s = {} ops/s; p50 {} us, p99 {} us, p99.9 {} us, max {} us; errors {}",
        thousands(report.ops),
        report.seconds,
        thousands_rounded(report.ops_per_s),
        thousands(report.p50_us),
        thousands(report.p99_us),
        thousands(report.p999_us),
        thousands(report.max_us),
        thousands(report.errors)
    );
    let _ = writeln!(
        out,
        r#"<text x="20" y="26" font-size="17" font-weight="bold">{}</text>"#,
        escape(&title)
    );
    let _ = writeln!(out, r#"<text x="20" y="46" font-size="13">{}</text>"#, escape(&subtitle));
}

/// The first panel: the latency curve by percentile.
fn percentile_panel(report: &Report) -> Panel<'static> {
    let curve = Series {
        label: "latency".into(),
        color: "#1f77b4",
        points: report
            .percentiles
            .iter()
            .map(|point| {
                (percentile_position(point.percentile) / X_MAX_POSITION, point.latency_us as f64)
            })
            .collect(),
    };
    let percentile_ticks = [
        (0.0, "0%"),
        (50.0, "50%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
        (99.999, "99.999%"),
        (100.0, "max"),
    ]
    .iter()
    .map(|(percentile, label)| {
        (percentile_position(*percentile) / X_MAX_POSITION, (*label).to_owned())
    })
    .collect();
    Panel {
        top: TOP + 20.0,
        title: "Latency by percentile",
        y_label: "latency (us)",
        x_ticks: percentile_ticks,
        x_label: "percentile",
        series: vec![curve],
    }
}

/// The second and third panels, over the run's seconds: throughput (and errors), then p50 and
/// p99.
fn draw_timeline_panels(out: &mut String, report: &Report) {
    let last_second = report.timeline.last().map_or(1.0, |point| point.second.max(1.0));
    let time_ticks: Vec<(f64, String)> = {
        let (axis_max, step) = nice_axis(last_second);
        let mut ticks = Vec::new();
        let mut second = 0.0;
        while second <= last_second.min(axis_max) + 1e-9 {
            ticks.push((second / last_second, format!("{second:.0}")));
            second += step.max(1.0);
        }
        ticks
    };
    let over_time = |value: &dyn Fn(&crate::report::TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        report.timeline.iter().map(|point| (point.second / last_second, value(point))).collect()
    };
    let top = TOP + 20.0 + PANEL_HEIGHT + PANEL_GAP;
    draw_panel(
        out,
        &Panel {
            top,
            title: "Throughput per second",
            y_label: "ops/s",
            x_ticks: time_ticks.clone(),
            x_label: "seconds since start",
            series: vec![
                Series {
                    label: "ops/s".into(),
                    color: "#2ca02c",
                    points: over_time(&|point| point.ops_per_s),
                },
                Series {
                    label: "errors/s".into(),
                    color: "#d62728",
                    points: over_time(&|point| point.errors as f64 / point.interval_s.max(1e-6)),
                },
            ],
        },
    );
    draw_panel(
        out,
        &Panel {
            top: top + PANEL_HEIGHT + PANEL_GAP,
            title: "Latency per second",
            y_label: "latency (us)",
            x_ticks: time_ticks,
            x_label: "seconds since start",
            series: vec![
                Series {
                    label: "p50".into(),
                    color: "#1f77b4",
                    points: over_time(&|point| point.p50_us as f64),
                },
                Series {
                    label: "p99".into(),
                    color: "#ff7f0e",
                    points: over_time(&|point| point.p99_us as f64),
                },
            ],
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    /// A minimal well-formedness check: every tag closes in order, attributes are quoted,
    /// and no raw `&` or `<` appears in text.
    fn check_well_formed(svg: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            if text.contains('>') {
                return Err(format!("stray '>' in text {text:?}"));
            }
            if let Some(amp) = text.find('&') {
                let entity = &text[amp..];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|known| entity.starts_with(known))
                {
                    return Err(format!("raw '&' in {text:?}"));
                }
            }
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            if tag.matches('"').count() % 2 != 0 {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open_name) if open_name == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().ok_or("empty tag")?;
                stack.push(name.to_owned());
            }
            rest = &rest[close + 1..];
        }
        if stack.is_empty() { Ok(()) } else { Err(format!("unclosed {stack:?}")) }
    }

    #[test]
    fn svg_is_well_formed_and_has_both_charts() {
        let mut report = sample_report();
        report.config.workload = "mix:sale=8,gateway=1 <&>".into();
        let svg = render(&report);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        check_well_formed(&svg).expect("well-formed");
        assert!(svg.contains("Latency by percentile"));
        assert!(svg.contains("Throughput per second"));
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(svg.contains("&lt;&amp;&gt;"));
        assert!(check_well_formed("<svg><g></svg>").is_err());
    }

    #[test]
    fn empty_runs_still_render() {
        let mut report = sample_report();
        report.timeline.clear();
        report.percentiles.clear();
        check_well_formed(&render(&report)).expect("well-formed");
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(9_300.0), (10_000.0, 2_000.0));
        assert_eq!(nice_axis(1.0), (1.0, 0.2));
        let (max, step) = nice_axis(123_456.0);
        assert!(max >= 123_456.0 && step > 0.0);
        assert!((percentile_position(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(percentile_position(100.0), X_MAX_POSITION);
    }
}
