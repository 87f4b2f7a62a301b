//! The switch's figures for operators: counters, gauges and histograms each shard keeps as it
//! serves, rendered in the Prometheus text format at `/metrics` (`http.rs`). Every counter of a
//! shard is written by that shard's thread alone, so an update is a plain load and store of a
//! relaxed atomic (no locked instruction, no lock, nothing shared between shards); the HTTP
//! thread only reads. A reading may be a moment old, never torn.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pinswitch_protocol::{MsgType, ResultCode};

/// Wire message types are below this (the highest is 46).
const MSG_TYPES_MAX: usize = 64;
/// Result codes 0..=199 count in their own slot, 900..=955 in 200 + (code - 900), any other in
/// the last slot.
const CODE_SLOTS: usize = 256;
/// Histogram buckets: bucket `i` counts values up to 2^i (microseconds, or events), the last
/// one everything above.
const BUCKETS: usize = 26;

fn code_slot(code: u16) -> usize {
    match code {
        0..=199 => usize::from(code),
        900..=955 => 200 + usize::from(code - 900),
        _ => CODE_SLOTS - 1,
    }
}

fn slot_code(slot: usize) -> Option<u16> {
    let slot = u16::try_from(slot).ok()?;
    match slot {
        0..=199 => Some(slot),
        200..=255 => Some(900 + slot - 200),
        _ => None,
    }
}

/// A counter or gauge with one writer.
#[derive(Debug, Default)]
pub(crate) struct Cell(AtomicU64);

impl Cell {
    /// Adds `n` (only ever called by the one thread that owns the figure).
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    pub(crate) fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of powers of two, with one writer.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [Cell; BUCKETS],
    sum: Cell,
    count: Cell,
}

impl Histogram {
    pub(crate) fn record(&self, value: u64) {
        let bucket = (u64::BITS - value.saturating_sub(1).leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].add(1);
        self.sum.add(value);
        self.count.add(1);
    }

    /// Renders the histogram as `name` with `labels`; `scale` divides the bounds and the sum
    /// (1e6 turns microseconds into the seconds Prometheus expects).
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let mut cumulative = 0u64;
        for (bucket, cell) in self.buckets.iter().enumerate() {
            cumulative += cell.get();
            let bound = if bucket + 1 == BUCKETS {
                "+Inf".to_string()
            } else {
                // A label, not an amount: the bound printed as Prometheus reads it.
                let upper = (1u64 << bucket) as f64 / scale;
                format!("{upper}")
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.sum.get() as f64 / scale;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count.get());
    }
}

/// Storage as a shard sees it (`pinswitch_shard_storage_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageState {
    /// The next segment's space is taken.
    Ready = 0,
    /// No space for the next segment: writing into the current one.
    Short = 1,
    /// The current segment is full too: writes get STORAGE_FULL.
    Full = 2,
}

/// One shard's figures; written by the shard's thread (and its snapshot thread for the
/// snapshot figures), read by the HTTP thread.
#[derive(Debug)]
pub(crate) struct ShardMetrics {
    /// Events answered, by message type and result code (reads included).
    events: Box<[Cell]>,
    /// Events in one group (one loop turn, one commit at most).
    pub group_events: Histogram,
    /// Journal records one commit made durable.
    pub commit_records: Histogram,
    /// A commit's sync (fdatasync), microseconds.
    pub commit_us: Histogram,
    /// From a batch reaching the shard's queue to its answers' release: queue wait, apply and
    /// the commit they waited for, microseconds.
    pub answer_us: Histogram,
    pub cards: Cell,
    pub op_records: Cell,
    pub sessions_live: Cell,
    pub balances_won: Cell,
    pub held_won: Cell,
    pub journal_last_seq: Cell,
    pub journal_durable_seq: Cell,
    pub segment_room_bytes: Cell,
    pub storage_state: Cell,
    pub storage_refused: Cell,
    pub snapshots_written: Cell,
    pub snapshots_failed: Cell,
    pub snapshot_last_ms: Cell,
    /// When the newest snapshot was written (Unix ms; 0 before the first of this run).
    pub snapshot_last_unix_ms: Cell,
    /// Wall-clock readings held in quarantine (too far ahead), and by how much the last was.
    pub clock_quarantined: Cell,
    pub clock_ahead_ms: Cell,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            events: (0..MSG_TYPES_MAX * CODE_SLOTS).map(|_| Cell::default()).collect(),
            group_events: Histogram::default(),
            commit_records: Histogram::default(),
            commit_us: Histogram::default(),
            answer_us: Histogram::default(),
            cards: Cell::default(),
            op_records: Cell::default(),
            sessions_live: Cell::default(),
            balances_won: Cell::default(),
            held_won: Cell::default(),
            journal_last_seq: Cell::default(),
            journal_durable_seq: Cell::default(),
            segment_room_bytes: Cell::default(),
            storage_state: Cell::default(),
            storage_refused: Cell::default(),
            snapshots_written: Cell::default(),
            snapshots_failed: Cell::default(),
            snapshot_last_ms: Cell::default(),
            snapshot_last_unix_ms: Cell::default(),
            clock_quarantined: Cell::default(),
            clock_ahead_ms: Cell::default(),
        }
    }
}

impl ShardMetrics {
    /// Counts one answered event.
    pub(crate) fn event(&self, msg_type: MsgType, code: u16) {
        let row = (msg_type as usize).min(MSG_TYPES_MAX - 1);
        self.events[row * CODE_SLOTS + code_slot(code)].add(1);
    }

    pub(crate) fn storage(&self) -> StorageState {
        match self.storage_state.get() {
            0 => StorageState::Ready,
            1 => StorageState::Short,
            _ => StorageState::Full,
        }
    }
}

/// Every shard's figures and the switch's own.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub shards: Vec<Arc<ShardMetrics>>,
    started_unix_ms: u64,
}

impl Metrics {
    pub(crate) fn new(shard_count: u16, started_unix_ms: u64) -> Metrics {
        Metrics {
            shards: (0..shard_count).map(|_| Arc::new(ShardMetrics::default())).collect(),
            started_unix_ms,
        }
    }

    /// The shards whose storage is full (writes refused).
    pub(crate) fn full_shards(&self) -> Vec<usize> {
        (0..self.shards.len())
            .filter(|shard| self.shards[*shard].storage() == StorageState::Full)
            .collect()
    }

    /// The Prometheus text exposition (format 0.0.4) of every figure; `connections` is the open
    /// connection count per shard.
    pub(crate) fn render(&self, connections: &[u32], now_unix_ms: u64) -> String {
        let mut out = String::with_capacity(16 << 10);
        let uptime_s = now_unix_ms.saturating_sub(self.started_unix_ms) / 1000;
        help(&mut out, "pinswitch_uptime_seconds", "gauge", "Seconds since the switch started.");
        let _ = writeln!(out, "pinswitch_uptime_seconds {uptime_s}");
        help(&mut out, "pinswitch_connections_open", "gauge", "Open connections, by shard.");
        for (shard, open) in connections.iter().enumerate() {
            let _ = writeln!(out, "pinswitch_connections_open{{shard=\"{shard}\"}} {open}");
        }
        self.render_events(&mut out);
        let gauges: [Figure<Cell>; 12] = [
            ("pinswitch_cards", "Cards the shard holds.", |m| &m.cards),
            ("pinswitch_op_records", "Op-id records kept (the idempotency window).", |m| {
                &m.op_records
            }),
            ("pinswitch_sessions_live", "Live call sessions.", |m| &m.sessions_live),
            ("pinswitch_balances_won", "Sum of card balances: the liability, won.", |m| {
                &m.balances_won
            }),
            ("pinswitch_held_won", "Sum of open holds, won.", |m| &m.held_won),
            ("pinswitch_journal_last_seq", "Last journal record appended.", |m| {
                &m.journal_last_seq
            }),
            ("pinswitch_journal_durable_seq", "Last journal record durable.", |m| {
                &m.journal_durable_seq
            }),
            ("pinswitch_journal_segment_room_bytes", "Bytes left in the active segment.", |m| {
                &m.segment_room_bytes
            }),
            (
                "pinswitch_storage_state",
                "0 ready, 1 short (no space for the next segment), 2 full (STORAGE_FULL).",
                |m| &m.storage_state,
            ),
            ("pinswitch_snapshot_last_ms", "The newest snapshot's serialize and write, ms.", |m| {
                &m.snapshot_last_ms
            }),
            (
                "pinswitch_snapshot_last_unix_ms",
                "When the newest snapshot of this run was written (Unix ms; 0: none yet).",
                |m| &m.snapshot_last_unix_ms,
            ),
            ("pinswitch_clock_ahead_ms", "How far ahead the last quarantined reading was.", |m| {
                &m.clock_ahead_ms
            }),
        ];
        let counters: [Figure<Cell>; 4] = [
            ("pinswitch_snapshots_written", "Snapshots written since the start.", |m| {
                &m.snapshots_written
            }),
            ("pinswitch_snapshots_failed", "Snapshots that failed (retried later).", |m| {
                &m.snapshots_failed
            }),
            (
                "pinswitch_clock_quarantined",
                "Wall-clock readings too far ahead, not given to the engine.",
                |m| &m.clock_quarantined,
            ),
            ("pinswitch_storage_refused_total", "Events answered STORAGE_FULL.", |m| {
                &m.storage_refused
            }),
        ];
        let figures = gauges.iter().map(|figure| ("gauge", figure));
        for (kind, (name, text, cell)) in figures.chain(counters.iter().map(|f| ("counter", f))) {
            help(&mut out, name, kind, text);
            for (shard, metrics) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", cell(metrics).get());
            }
        }
        let histograms: [(&str, &str, f64, Pick<Histogram>); 4] = [
            ("pinswitch_group_events", "Events applied in one loop turn.", 1.0, |m| {
                &m.group_events
            }),
            ("pinswitch_commit_records", "Journal records one commit made durable.", 1.0, |m| {
                &m.commit_records
            }),
            ("pinswitch_commit_seconds", "A journal commit's fdatasync.", 1e6, |m| &m.commit_us),
            (
                "pinswitch_answer_seconds",
                "A batch from the shard's queue to its released answers (queue, apply, commit).",
                1e6,
                |m| &m.answer_us,
            ),
        ];
        for (name, text, scale, histogram) in histograms {
            help(&mut out, name, "histogram", text);
            for (shard, metrics) in self.shards.iter().enumerate() {
                histogram(metrics).render(&mut out, name, &format!("shard=\"{shard}\""), scale);
            }
        }
        out
    }

    fn render_events(&self, out: &mut String) {
        help(
            out,
            "pinswitch_events_total",
            "counter",
            "Events answered by the shards, by message type and result code.",
        );
        for (shard, metrics) in self.shards.iter().enumerate() {
            for (index, cell) in metrics.events.iter().enumerate() {
                let count = cell.get();
                if count == 0 {
                    continue;
                }
                let msg_type = u16::try_from(index / CODE_SLOTS).ok().and_then(MsgType::from_u16);
                let code = slot_code(index % CODE_SLOTS);
                let type_name = msg_type.map_or("OTHER", MsgType::name);
                let code_name =
                    code.and_then(ResultCode::from_u16).map_or("OTHER", ResultCode::name);
                let labels = format!("shard=\"{shard}\",type=\"{type_name}\",code=\"{code_name}\"");
                let _ = writeln!(out, "pinswitch_events_total{{{labels}}} {count}");
            }
        }
    }
}

/// Which of a shard's figures to render.
type Pick<T> = fn(&ShardMetrics) -> &T;
/// A figure's name, help text and where it lives.
type Figure<T> = (&'static str, &'static str, Pick<T>);

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_histograms_land_where_they_should() {
        for code in ResultCode::ALL {
            assert_eq!(slot_code(code_slot(code.as_u16())), Some(code.as_u16()), "{code:?}");
        }
        let histogram = Histogram::default();
        for value in [0, 1, 2, 3, 4, 5, 1 << 30] {
            histogram.record(value);
        }
        let counts: Vec<u64> = histogram.buckets.iter().map(Cell::get).collect();
        // <=1: 0 and 1; <=2: 2; <=4: 3 and 4; <=8: 5; the last bucket: 2^30.
        assert_eq!(&counts[..4], &[2, 1, 2, 1]);
        assert_eq!(counts[BUCKETS - 1], 1);
        let metrics = Metrics::new(1, 0);
        metrics.shards[0].event(MsgType::Sale, ResultCode::StorageFull.as_u16());
        let text = metrics.render(&[3], 5_000);
        assert!(
            text.contains(
                "pinswitch_events_total{shard=\"0\",type=\"SALE\",code=\"STORAGE_FULL\"} 1"
            )
        );
        assert!(text.contains("pinswitch_connections_open{shard=\"0\"} 3"));
        assert!(text.contains("pinswitch_uptime_seconds 5"));
    }
}
