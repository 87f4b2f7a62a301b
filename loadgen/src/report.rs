//! The run report: figures computed from the collected histograms and counts, printed as text on
//! stdout and, with `--report FILE.json`, written as JSON. Latency is per operation, measured from
//! the frame's scheduled send time (open loop) or its actual send time (unthrottled), to its reply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One point of the latency-by-percentile curve.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

/// One second of the run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimelinePoint {
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
}

/// How the run was configured (echoed in the report).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunConfig {
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
pub struct Report {
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
}

/// The percentiles the curve and the SVG plot.
pub const CURVE_PERCENTILES: [f64; 12] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Latency figures of a histogram: (mean, p50, p90, p99, p99.9, p99.99, max, curve).
pub struct LatencyFigures {
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub percentiles: Vec<PercentilePoint>,
}

pub fn latency_figures(histogram: &Histogram<u64>) -> LatencyFigures {
    let at = |percentile: f64| {
        if histogram.is_empty() {
            0
        } else {
            histogram.value_at_percentile(percentile)
        }
    };
    LatencyFigures {
        mean_us: if histogram.is_empty() {
            0.0
        } else {
            histogram.mean()
        },
        p50_us: at(50.0),
        p90_us: at(90.0),
        p99_us: at(99.0),
        p999_us: at(99.9),
        p9999_us: at(99.99),
        max_us: if histogram.is_empty() {
            0
        } else {
            histogram.max()
        },
        percentiles: CURVE_PERCENTILES
            .iter()
            .map(|&percentile| PercentilePoint {
                percentile,
                latency_us: at(percentile),
            })
            .collect(),
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }

    /// The human summary printed at the end of a run.
    pub fn to_text(&self) -> String {
        let config = &self.config;
        let mut out = String::new();
        let rate = if config.rate_target_ops_per_s == 0 {
            "unthrottled".to_owned()
        } else {
            format!(
                "{} ops/s open loop",
                thousands(config.rate_target_ops_per_s)
            )
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
        let _ = writeln!(
            out,
            "ops          {} in {:.2} s = {} ops/s ({} frames)",
            thousands(self.ops),
            self.seconds,
            thousands(self.ops_per_s.round() as u64),
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
        let _ = writeln!(
            out,
            "send lag us  p99 {}  max {}  (generator delay, included in latency)",
            thousands(self.send_lag_p99_us),
            thousands(self.send_lag_max_us)
        );
        let results: Vec<String> = self
            .results_by_code
            .iter()
            .map(|(name, count)| format!("{name} {}", thousands(*count)))
            .collect();
        let _ = writeln!(
            out,
            "results      {}",
            if results.is_empty() {
                "none".into()
            } else {
                results.join("  ")
            }
        );
        let _ = writeln!(out, "errors       {}", thousands(self.errors));
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
        let validation = match (self.validated, self.mismatched_cards) {
            (None, _) => "not requested (--validate)".to_owned(),
            (Some(true), _) => format!("OK: all {} cards match", thousands(config.cards)),
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
        };
        let _ = writeln!(out, "validation   {validation}");
        out
    }
}

/// `1234567` -> `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::stats::{new_histogram, record};

    pub fn sample_report() -> Report {
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
                })
                .collect(),
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
        let validated = Report {
            validated: Some(true),
            mismatched_cards: Some(0),
            ..report
        };
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
    fn empty_histograms_give_zeros() {
        let figures = latency_figures(&new_histogram());
        assert_eq!((figures.p50_us, figures.max_us), (0, 0));
        assert_eq!(figures.percentiles.len(), CURVE_PERCENTILES.len());
    }
}
