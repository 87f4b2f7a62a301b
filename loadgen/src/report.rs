//! The run report: figures computed from the collected histograms and counts, printed as text on
//! stdout and, with `--report FILE.json`, written as JSON. Latency is per operation, measured from
//! the frame's scheduled send time (open loop) or its actual send time (unthrottled), to its reply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One point of the latency-by-percentile curve.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct PercentilePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

/// One second of the run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct TimelinePoint {
    /// Seconds since the start of the run at the end of this interval.
    pub second: f64,
    /// Length of this interval (about one second).
    pub interval_s: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// Calls runs: operations answered with a success code per second, by message type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ok_per_s_by_message: BTreeMap<String, f64>,
    /// Calls runs: sessions known live at the end of this second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_live: Option<i64>,
}

/// One message type's figures over the measured window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct MessageFigures {
    pub ops: u64,
    pub ops_per_s: f64,
    /// Answered with a success code (0..=99), and per second.
    pub ok: u64,
    pub ok_per_s: f64,
    pub errors: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What a `calls` run adds to the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct CallsFigures {
    /// Calls kept in progress (N).
    pub concurrent_calls: u64,
    pub update_interval_s: u32,
    pub call_length: String,
    pub destination: String,
    /// The ramp: STARTs of the first N calls, before the measured window.
    pub ramp_s: f64,
    pub ramp_sessions_started: u64,
    pub ramp_starts_per_s: f64,
    pub ramp_errors_by_code: BTreeMap<String, u64>,
    /// In the measured window: SESSION_START answered APPROVED, SESSION_UPDATE and SESSION_END
    /// answered with a success code (APPROVED, SESSION_USAGE_CAPPED, SESSION_EXPIRED_CHARGED).
    pub sessions_started: u64,
    pub sessions_started_per_s: f64,
    pub updates: u64,
    pub updates_per_s: f64,
    pub ends: u64,
    pub ends_per_s: f64,
    /// Sessions known live at the switch, sampled every second of the window.
    pub live_min: i64,
    pub live_max: i64,
    /// Simulated call time the window covered (mean over connections), and its ratio to wall time.
    pub simulated_s: f64,
    pub time_scale: f64,
    /// ENDs sent after the window to end the calls still in progress, and sessions still live
    /// after that (should be 0).
    pub drained_ends: u64,
    pub left_live: i64,
    /// The tariff ended calls were checked against (`None`: not checked), how many were, and
    /// how many were debited something else.
    pub tariff: Option<String>,
    pub calls_checked: u64,
    pub tariff_mismatches: u64,
    /// SESSION_NOTICE pushes received, by kind.
    pub notices: BTreeMap<String, u64>,
}

/// How the run was configured (echoed in the report).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct RunConfig {
    pub address: String,
    pub workload: String,
    pub dist: String,
    pub cards: u64,
    pub connections: u64,
    pub in_flight: u64,
    pub batch: u64,
    /// 0 = unthrottled (closed loop).
    pub rate_target_ops_per_s: u64,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub seed: u64,
    pub threads: u64,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct Report {
    pub config: RunConfig,
    /// Operations (events) answered in the measured window.
    pub ops: u64,
    pub frames: u64,
    /// Length of the measured window: from the end of the warmup to the end of the schedule (or
    /// the interrupt), or to the last measured reply when that came later.
    pub seconds: f64,
    pub ops_per_s: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    /// The generator's own delay between a frame's scheduled and actual send (part of latency).
    pub send_lag_p99_us: u64,
    pub send_lag_max_us: u64,
    /// Wall time between the two CPU samples: the end of the warmup and the end of the duration
    /// (or the interrupt). `None` (null) when the window never began.
    pub cpu_window_s: Option<f64>,
    /// The generator's own CPU time (user + system, every thread) over that window, and per
    /// operation answered in the window; null where /proc cannot be read.
    pub loadgen_cpu_s: Option<f64>,
    pub loadgen_cpu_us_per_op: Option<f64>,
    /// The same for the switch's process (`--server-pid`); null without it.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_op: Option<f64>,
    /// Operations answered with a non-success code or never answered.
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub results_by_code: BTreeMap<String, u64>,
    /// Frames that were due by the end of the run but never sent (open loop could not keep up).
    pub backlog_frames_at_end: u64,
    pub reconnects: u64,
    /// Operations whose reply was lost, and those still unresolved after INQUIRY.
    pub unknown_ops: u64,
    pub unresolved_ops: u64,
    /// Replies that contradict their request (wrong amount, unexpected REPLAYED flag).
    pub reply_anomalies: u64,
    /// `None` when the run was not validated.
    pub validated: Option<bool>,
    pub mismatched_cards: Option<u64>,
    pub percentiles: Vec<PercentilePoint>,
    pub timeline: Vec<TimelinePoint>,
    /// Throughput and latency per message type (SALE, AUTHORIZE, SESSION_UPDATE, ...).
    pub by_message: BTreeMap<String, MessageFigures>,
    /// `calls` runs only (null otherwise).
    pub calls: Option<CallsFigures>,
}

/// The percentiles the curve and the SVG plot.
pub(crate) const CURVE_PERCENTILES: [f64; 12] =
    [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];

/// Latency figures of a histogram: (mean, p50, p90, p99, p99.9, p99.99, max, curve).
pub(crate) struct LatencyFigures {
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub percentiles: Vec<PercentilePoint>,
}

pub(crate) fn latency_figures(histogram: &Histogram<u64>) -> LatencyFigures {
    let at = |percentile: f64| {
        if histogram.is_empty() { 0 } else { histogram.value_at_percentile(percentile) }
    };
    LatencyFigures {
        mean_us: if histogram.is_empty() { 0.0 } else { histogram.mean() },
        p50_us: at(50.0),
        p90_us: at(90.0),
        p99_us: at(99.0),
        p999_us: at(99.9),
        p9999_us: at(99.99),
        max_us: if histogram.is_empty() { 0 } else { histogram.max() },
        percentiles: CURVE_PERCENTILES
            .iter()
            .map(|&percentile| PercentilePoint { percentile, latency_us: at(percentile) })
            .collect(),
    }
}

/// Per-message figures of a window of `seconds`.
pub(crate) fn message_figures(
    by_message: &BTreeMap<&'static str, crate::stats::MessageInterval>,
    seconds: f64,
) -> BTreeMap<String, MessageFigures> {
    let per_s = |count: u64| {
        if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
    };
    by_message
        .iter()
        .map(|(name, message)| {
            let figures = latency_figures(&message.latency_us);
            (
                (*name).to_owned(),
                MessageFigures {
                    ops: message.ops,
                    ops_per_s: per_s(message.ops),
                    ok: message.ok,
                    ok_per_s: per_s(message.ok),
                    errors: message.errors,
                    mean_us: figures.mean_us,
                    p50_us: figures.p50_us,
                    p90_us: figures.p90_us,
                    p99_us: figures.p99_us,
                    p999_us: figures.p999_us,
                    max_us: figures.max_us,
                },
            )
        })
        .collect()
}

impl Report {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }

    /// The human summary printed at the end of a run.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_run_line(&mut out);
        self.write_throughput(&mut out);
        let _ = writeln!(
            out,
            "send lag us  p99 {}  max {}  (generator delay, included in latency)",
            thousands(self.send_lag_p99_us),
            thousands(self.send_lag_max_us)
        );
        if let Some(cpu) = self.cpu_text() {
            let _ = writeln!(out, "cpu          {cpu}");
        }
        let results = named_counts(&self.results_by_code);
        let _ = writeln!(
            out,
            "results      {}",
            if results.is_empty() { "none".into() } else { results.join("  ") }
        );
        let _ = writeln!(out, "errors       {}", thousands(self.errors));
        if let Some(calls) = &self.calls {
            calls.write_text(&mut out);
        }
        self.write_shortfalls(&mut out);
        let _ = writeln!(out, "validation   {}", self.validation_text());
        out
    }

    /// The first line: what was run, against what, and how.
    fn write_run_line(&self, out: &mut String) {
        let config = &self.config;
        let rate = if config.rate_target_ops_per_s == 0 {
            "unthrottled".to_owned()
        } else {
            format!("{} ops/s open loop", thousands(config.rate_target_ops_per_s))
        };
        let _ = writeln!(
            out,
            "pinswitch-loadgen run against {}: workload {}, dist {}, {} cards, {} connections x {} in flight, batch {}, {rate}, {} s (+{} s warmup), seed {}",
            config.address,
            config.workload,
            config.dist,
            thousands(config.cards),
            config.connections,
            config.in_flight,
            config.batch,
            config.duration_s,
            config.warmup_s,
            config.seed
        );
    }

    /// Operations, their rate and latency, and (with several message types, or calls) the same
    /// per message type.
    fn write_throughput(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "ops          {} in {:.2} s = {} ops/s ({} frames)",
            thousands(self.ops),
            self.seconds,
            thousands_rounded(self.ops_per_s),
            thousands(self.frames)
        );
        let _ = writeln!(
            out,
            "latency us   p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  mean {:.0}",
            thousands(self.p50_us),
            thousands(self.p90_us),
            thousands(self.p99_us),
            thousands(self.p999_us),
            thousands(self.p9999_us),
            thousands(self.max_us),
            self.mean_us
        );
        if self.by_message.len() > 1 || self.calls.is_some() {
            for (name, message) in &self.by_message {
                let _ = writeln!(
                    out,
                    "  {name:<15} {} ops/s ({} ok/s, {} errors)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {} us",
                    thousands_rounded(message.ops_per_s),
                    thousands_rounded(message.ok_per_s),
                    thousands(message.errors),
                    thousands(message.p50_us),
                    thousands(message.p90_us),
                    thousands(message.p99_us),
                    thousands(message.p999_us),
                    thousands(message.max_us)
                );
            }
        }
    }

    /// What went short of the plan, each line only when it happened: a rate not reached, the
    /// network's losses, replies that contradict their request.
    fn write_shortfalls(&self, out: &mut String) {
        if self.backlog_frames_at_end > 0 {
            let _ = writeln!(
                out,
                "behind       {} frames were due but unsent at the end: the target rate was not reached",
                thousands(self.backlog_frames_at_end)
            );
        }
        if self.reconnects > 0 || self.unknown_ops > 0 {
            let _ = writeln!(
                out,
                "network      {} reconnects, {} ops with lost replies, {} unresolved",
                self.reconnects,
                thousands(self.unknown_ops),
                thousands(self.unresolved_ops)
            );
        }
        if self.reply_anomalies > 0 {
            let _ = writeln!(
                out,
                "anomalies    {} replies contradict their request",
                self.reply_anomalies
            );
        }
    }

    /// The validation verdict, with the reasons of a failure.
    fn validation_text(&self) -> String {
        match (self.validated, self.mismatched_cards) {
            (None, _) => "not requested (--validate)".to_owned(),
            (Some(true), _) => format!("OK: all {} cards match", thousands(self.config.cards)),
            (Some(false), None) => "FAILED: the balances could not be read back".to_owned(),
            (Some(false), Some(mismatched)) => {
                let mut reasons = vec![format!("{} mismatching cards", thousands(mismatched))];
                if self.unresolved_ops > 0 {
                    reasons.push(format!(
                        "{} operations unresolved (kept in the cards file for `validate`)",
                        thousands(self.unresolved_ops)
                    ));
                }
                if self.reply_anomalies > 0 {
                    reasons.push(format!("{} reply anomalies", self.reply_anomalies));
                }
                format!("FAILED: {}", reasons.join(", "))
            }
        }
    }

    /// `loadgen 1.23 s (4.1 µs/op, 61 % of one core), switch 1.50 s (...)`; `None` when
    /// nothing was measured.
    fn cpu_text(&self) -> Option<String> {
        let part = |name: &str, cpu_s: Option<f64>, us_per_op: Option<f64>| {
            let cpu_s = cpu_s?;
            let mut figures = Vec::new();
            if let Some(us_per_op) = us_per_op {
                figures.push(format!("{us_per_op:.1} µs/op"));
            }
            if let Some(window_s) = self.cpu_window_s.filter(|window_s| *window_s > 0.0) {
                figures.push(format!("{:.0} % of one core", cpu_s * 100.0 / window_s));
            }
            Some(if figures.is_empty() {
                format!("{name} {cpu_s:.2} s")
            } else {
                format!("{name} {cpu_s:.2} s ({})", figures.join(", "))
            })
        };
        let parts: Vec<String> = [
            part("loadgen", self.loadgen_cpu_s, self.loadgen_cpu_us_per_op),
            part("switch", self.server_cpu_s, self.server_cpu_us_per_op),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

impl CallsFigures {
    fn write_text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "calls        {} concurrent (live {}..{} in the window), a report every {} s, length {}, to {}",
            thousands(self.concurrent_calls),
            thousands(self.live_min.max(0) as u64),
            thousands(self.live_max.max(0) as u64),
            self.update_interval_s,
            self.call_length,
            self.destination
        );
        let _ = writeln!(
            out,
            "sessions     {} started/s  {} updates/s  {} ends/s  ({} started, {} updates, {} ends; {:.0} s of call time at {:.1}x wall time)",
            thousands_rounded(self.sessions_started_per_s),
            thousands_rounded(self.updates_per_s),
            thousands_rounded(self.ends_per_s),
            thousands(self.sessions_started),
            thousands(self.updates),
            thousands(self.ends),
            self.simulated_s,
            self.time_scale
        );
        let ramp_errors = named_counts(&self.ramp_errors_by_code);
        let _ = writeln!(
            out,
            "ramp         {} sessions started in {:.2} s ({}/s){}",
            thousands(self.ramp_sessions_started),
            self.ramp_s,
            thousands_rounded(self.ramp_starts_per_s),
            if ramp_errors.is_empty() {
                String::new()
            } else {
                format!(", declined: {}", ramp_errors.join("  "))
            }
        );
        let _ = writeln!(
            out,
            "end          {} calls ended after the window, {} sessions left live",
            thousands(self.drained_ends),
            self.left_live
        );
        let tariff = match &self.tariff {
            None => "not checked (--tariff)".to_owned(),
            Some(tariff) if self.tariff_mismatches == 0 => format!(
                "{} ended calls debited exactly as the tariff {tariff} prices their seconds",
                thousands(self.calls_checked)
            ),
            Some(tariff) => format!(
                "{} of {} ended calls debited otherwise than the tariff {tariff}",
                thousands(self.tariff_mismatches),
                thousands(self.calls_checked)
            ),
        };
        let _ = writeln!(out, "tariff       {tariff}");
        if !self.notices.is_empty() {
            let _ = writeln!(out, "notices      {}", named_counts(&self.notices).join("  "));
        }
    }
}

/// `NAME 1,234` for each name and its count, in name order.
fn named_counts(counts: &BTreeMap<String, u64>) -> Vec<String> {
    counts.iter().map(|(name, count)| format!("{name} {}", thousands(*count))).collect()
}

/// A figure of a report (a rate, a tick) rounded to a whole number, grouped like `thousands`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "statistics, not money: `as` saturates (negatives and NaN show as 0)"
)]
pub(crate) fn thousands_rounded(value: f64) -> String {
    thousands(value.round() as u64)
}

/// `1234567` -> `1,234,567`.
pub(crate) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::{new_histogram, record};

    pub(crate) fn sample_report() -> Report {
        let mut histogram = new_histogram();
        for value in 1..=1000u64 {
            record(&mut histogram, value * 10, 1);
        }
        let figures = latency_figures(&histogram);
        Report {
            config: RunConfig {
                address: "127.0.0.1:7420".into(),
                workload: "sale".into(),
                dist: "zipf:0.99".into(),
                cards: 10_000,
                connections: 4,
                in_flight: 8,
                batch: 64,
                rate_target_ops_per_s: 0,
                duration_s: 5,
                warmup_s: 0,
                seed: 1,
                threads: 1,
            },
            ops: 1000,
            frames: 16,
            seconds: 5.0,
            ops_per_s: 200.0,
            mean_us: figures.mean_us,
            p50_us: figures.p50_us,
            p90_us: figures.p90_us,
            p99_us: figures.p99_us,
            p999_us: figures.p999_us,
            p9999_us: figures.p9999_us,
            max_us: figures.max_us,
            send_lag_p99_us: 3,
            send_lag_max_us: 9,
            cpu_window_s: None,
            loadgen_cpu_s: None,
            loadgen_cpu_us_per_op: None,
            server_cpu_s: None,
            server_cpu_us_per_op: None,
            errors: 2,
            errors_by_code: BTreeMap::from([("INSUFFICIENT_FUNDS".into(), 2)]),
            results_by_code: BTreeMap::from([
                ("APPROVED".into(), 998),
                ("INSUFFICIENT_FUNDS".into(), 2),
            ]),
            backlog_frames_at_end: 0,
            reconnects: 0,
            unknown_ops: 0,
            unresolved_ops: 0,
            reply_anomalies: 0,
            validated: None,
            mismatched_cards: None,
            percentiles: figures.percentiles,
            timeline: (1..=5)
                .map(|second| TimelinePoint {
                    second: f64::from(second),
                    interval_s: 1.0,
                    ops: 200,
                    ops_per_s: 200.0,
                    p50_us: 5000,
                    p99_us: 9900,
                    max_us: 10_000,
                    errors: 0,
                    ok_per_s_by_message: BTreeMap::new(),
                    calls_live: None,
                })
                .collect(),
            by_message: BTreeMap::new(),
            calls: None,
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let report = sample_report();
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
        for key in [
            "ops",
            "seconds",
            "ops_per_s",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors_by_code",
            "validated",
            "timeline",
            "percentiles",
            "config",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert!(value["validated"].is_null());
        assert_eq!(value["errors_by_code"]["INSUFFICIENT_FUNDS"], 2);
        assert_eq!(value["ops"], 1000);
        let p99 = value["p99_us"].as_u64().expect("number");
        assert!((9_850..=9_950).contains(&p99), "p99 {p99}");
        let validated = Report { validated: Some(true), mismatched_cards: Some(0), ..report };
        let value: serde_json::Value =
            serde_json::from_str(&validated.to_json()).expect("valid JSON");
        assert_eq!(value["validated"], true);
    }

    #[test]
    fn text_summary_names_the_figures() {
        let text = sample_report().to_text();
        assert!(text.contains("ops/s"));
        assert!(text.contains("p99"));
        assert!(text.contains("INSUFFICIENT_FUNDS 2"));
        assert!(text.contains("not requested"));
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn calls_runs_report_their_rates_per_message() {
        let mut interval = crate::stats::Interval::default();
        interval.record_message("SESSION_START", 400, 1_000, 10);
        interval.record_message("SESSION_UPDATE", 800, 3_000, 0);
        interval.record_message("SESSION_END", 600, 990, 0);
        let by_message = message_figures(&interval.by_message, 2.0);
        assert_eq!(by_message["SESSION_START"].ok_per_s, 495.0);
        assert_eq!(by_message["SESSION_UPDATE"].ops_per_s, 1_500.0);
        assert!((795..=805).contains(&by_message["SESSION_UPDATE"].p99_us));
        let report = Report {
            by_message,
            calls: Some(CallsFigures {
                concurrent_calls: 100_000,
                update_interval_s: 60,
                call_length: "exp:120".into(),
                destination: "01012345678".into(),
                ramp_s: 2.0,
                ramp_sessions_started: 100_000,
                ramp_starts_per_s: 50_000.0,
                ramp_errors_by_code: BTreeMap::new(),
                sessions_started: 990,
                sessions_started_per_s: 495.0,
                updates: 3_000,
                updates_per_s: 1_500.0,
                ends: 990,
                ends_per_s: 495.0,
                live_min: 99_990,
                live_max: 100_000,
                simulated_s: 120.0,
                time_scale: 60.0,
                drained_ends: 100_000,
                left_live: 0,
                tariff: Some("10,12,6,0".into()),
                calls_checked: 990,
                tariff_mismatches: 0,
                notices: BTreeMap::new(),
            }),
            ..sample_report()
        };
        let text = report.to_text();
        assert!(text.contains("495 started/s  1,500 updates/s  495 ends/s"), "{text}");
        assert!(text.contains("SESSION_UPDATE"), "{text}");
        assert!(text.contains("debited exactly as the tariff 10,12,6,0"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(value["calls"]["sessions_started_per_s"], 495.0);
        assert_eq!(value["by_message"]["SESSION_END"]["ops"], 990);
        assert!(value["timeline"][0].get("calls_live").is_none());
    }

    #[test]
    fn cpu_figures_are_reported_when_measured() {
        let report = sample_report();
        assert!(!report.to_text().contains("cpu "), "nothing measured, nothing shown");
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        for key in [
            "cpu_window_s",
            "loadgen_cpu_s",
            "loadgen_cpu_us_per_op",
            "server_cpu_s",
            "server_cpu_us_per_op",
        ] {
            assert!(value[key].is_null(), "{key} should be null");
        }
        let measured = Report {
            cpu_window_s: Some(2.02),
            loadgen_cpu_s: Some(1.23),
            loadgen_cpu_us_per_op: Some(4.1),
            ..sample_report()
        };
        let text = measured.to_text();
        assert!(
            text.contains("cpu          loadgen 1.23 s (4.1 µs/op, 61 % of one core)\n"),
            "{text}"
        );
        let with_switch =
            Report { server_cpu_s: Some(1.5), server_cpu_us_per_op: Some(5.0), ..measured };
        let text = with_switch.to_text();
        assert!(
            text.contains(
                "cpu          loadgen 1.23 s (4.1 µs/op, 61 % of one core), switch 1.50 s (5.0 µs/op, 74 % of one core)\n"
            ),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&with_switch.to_json()).expect("json");
        assert_eq!(value["loadgen_cpu_s"], 1.23);
        assert_eq!(value["server_cpu_us_per_op"], 5.0);
        assert_eq!(value["cpu_window_s"], 2.02);
    }

    #[test]
    fn empty_histograms_give_zeros() {
        let figures = latency_figures(&new_histogram());
        assert_eq!((figures.p50_us, figures.max_us), (0, 0));
        assert_eq!(figures.percentiles.len(), CURVE_PERCENTILES.len());
    }
}
