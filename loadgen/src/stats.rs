//! Measurement: latency histograms (microseconds), per-code result counts, and the per-second
//! intervals a connection fills and the reporter collects. Codes are the protocol's result codes
//! plus two client-side pseudo codes for operations whose reply never came. Each message type
//! (SALE, SESSION_UPDATE, ...) also gets its own latency histogram and counts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pinswitch_protocol::ResultCode;

/// Pseudo code: the connection failed with the frame in flight (outcome unknown).
pub(crate) const CODE_NETWORK_ERROR: u16 = 60_000;
/// Pseudo code: the reply could not be decoded or had the wrong number of results.
pub(crate) const CODE_BAD_REPLY: u16 = 60_001;

/// Largest latency a histogram records (one hour); larger samples saturate.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// A duration in whole nanoseconds, saturating (a u64 holds 584 years of them).
pub(crate) fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Records `count` samples of `value_us`, clamped into the histogram's range.
pub(crate) fn record(histogram: &mut Histogram<u64>, value_us: u64, count: u64) {
    let value_us = value_us.clamp(1, LATENCY_US_MAX);
    let _ = histogram.record_n(value_us, count);
}

/// The name reports use for a code.
pub(crate) fn code_name(code: u16) -> String {
    match code {
        CODE_NETWORK_ERROR => "NETWORK_ERROR".to_owned(),
        CODE_BAD_REPLY => "BAD_REPLY".to_owned(),
        _ => match ResultCode::from_u16(code) {
            Some(known) => known.name().to_owned(),
            None => format!("CODE_{code}"),
        },
    }
}

/// True for codes counted as errors: everything but the success codes 0..=99.
pub(crate) fn is_error(code: u16) -> bool {
    code >= 100
}

/// What one connection measured since the reporter last collected.
#[derive(Debug)]
pub(crate) struct Interval {
    /// Per operation: from the frame's scheduled send to its reply.
    pub latency_us: Histogram<u64>,
    /// Per frame: from its scheduled send to the moment it was handed to the client.
    pub send_lag_us: Histogram<u64>,
    pub ops: u64,
    pub frames: u64,
    pub errors: u64,
    pub by_code: HashMap<u16, u64>,
    pub last_completion: Option<Instant>,
    /// The same per message type (keyed by its name).
    pub by_message: BTreeMap<&'static str, MessageInterval>,
}

/// One message type's share of an interval.
#[derive(Debug)]
pub(crate) struct MessageInterval {
    /// Per operation, as `Interval::latency_us`.
    pub latency_us: Histogram<u64>,
    pub ops: u64,
    /// Answered with a success code (0..=99).
    pub ok: u64,
    pub errors: u64,
}

impl Default for MessageInterval {
    fn default() -> Self {
        MessageInterval { latency_us: new_histogram(), ops: 0, ok: 0, errors: 0 }
    }
}

impl MessageInterval {
    pub(crate) fn merge(&mut self, other: &MessageInterval) {
        let _ = self.latency_us.add(&other.latency_us);
        self.ops += other.ops;
        self.ok += other.ok;
        self.errors += other.errors;
    }
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            latency_us: new_histogram(),
            send_lag_us: new_histogram(),
            ops: 0,
            frames: 0,
            errors: 0,
            by_code: HashMap::new(),
            last_completion: None,
            by_message: BTreeMap::new(),
        }
    }
}

impl Interval {
    pub(crate) fn count_code(&mut self, code: u16, count: u64) {
        *self.by_code.entry(code).or_insert(0) += count;
        if is_error(code) {
            self.errors += count;
        }
    }

    /// Adds another interval's measurements to this one.
    pub(crate) fn merge(&mut self, other: &Interval) {
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.send_lag_us.add(&other.send_lag_us);
        self.ops += other.ops;
        self.frames += other.frames;
        self.errors += other.errors;
        for (code, count) in &other.by_code {
            *self.by_code.entry(*code).or_insert(0) += count;
        }
        self.last_completion = match (self.last_completion, other.last_completion) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (name, message) in &other.by_message {
            self.by_message.entry(name).or_default().merge(message);
        }
    }

    /// Records a frame of `message` answered after `latency_us`: its operations' count, how many
    /// succeeded and how many failed.
    pub(crate) fn record_message(
        &mut self,
        message: &'static str,
        latency_us: u64,
        ops: u64,
        errors: u64,
    ) {
        let entry = self.by_message.entry(message).or_default();
        record(&mut entry.latency_us, latency_us, ops);
        entry.ops += ops;
        entry.errors += errors;
        entry.ok += ops.saturating_sub(errors);
    }

    /// Operations of a message type answered with a success code.
    pub(crate) fn ok_of(&self, message: &str) -> u64 {
        self.by_message.get(message).map_or(0, |entry| entry.ok)
    }

    /// Counts by code name, errors only or all.
    pub(crate) fn counts_by_name(&self, errors_only: bool) -> BTreeMap<String, u64> {
        self.by_code
            .iter()
            .filter(|(code, _)| !errors_only || is_error(**code))
            .map(|(code, count)| (code_name(*code), *count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_count_and_merge() {
        let mut a = Interval::default();
        record(&mut a.latency_us, 100, 3);
        a.ops = 3;
        a.count_code(0, 2);
        a.count_code(110, 1);
        let mut b = Interval::default();
        record(&mut b.latency_us, 0, 1); // clamped to 1
        record(&mut b.latency_us, u64::MAX, 1); // clamped to the maximum
        b.ops = 2;
        b.count_code(CODE_NETWORK_ERROR, 2);
        a.merge(&b);
        assert_eq!(a.ops, 5);
        assert_eq!(a.latency_us.len(), 5);
        assert_eq!(a.errors, 3);
        let errors = a.counts_by_name(true);
        assert_eq!(errors.get("INSUFFICIENT_FUNDS"), Some(&1));
        assert_eq!(errors.get("NETWORK_ERROR"), Some(&2));
        assert_eq!(errors.get("APPROVED"), None);
        assert_eq!(a.counts_by_name(false).get("APPROVED"), Some(&2));
        assert_eq!(code_name(99), "CODE_99");
        let mut c = Interval::default();
        c.record_message("SESSION_START", 100, 10, 1);
        let mut d = Interval::default();
        d.record_message("SESSION_START", 300, 10, 0);
        d.record_message("SESSION_END", 50, 4, 0);
        c.merge(&d);
        assert_eq!(c.ok_of("SESSION_START"), 19);
        assert_eq!(c.ok_of("SESSION_END"), 4);
        assert_eq!(c.ok_of("SALE"), 0);
        assert_eq!(c.by_message["SESSION_START"].latency_us.len(), 20);
    }
}
