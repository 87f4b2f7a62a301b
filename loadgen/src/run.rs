//! The run: one task per connection, each with its own generator, schedule and pipeline of up to
//! `in_flight` frames (a `FutureSet` polled inside the connection's task: no task per frame),
//! plus a pacer thread and a once-a-second collector.
//!
//! Open loop (`--rate` > 0): connection c sends its k-th frame at `start + offset_c + k * interval`
//! whatever happened to earlier frames, and latency is measured from that scheduled time, so a
//! stalled switch shows up as latency instead of being hidden by a generator that waits
//! (no coordinated omission). Tokio timers tick in milliseconds, too coarse for frames a few
//! hundred microseconds apart, so a dedicated pacer thread sleeps to each due time and wakes the
//! connection; the remaining generator delay is measured and reported as send lag. A connection
//! that is behind (all its slots busy, or reconnecting) sends its overdue frames as soon as it
//! can, still timed from their schedule. Unthrottled (`--rate 0`): each connection keeps
//! `in_flight` frames outstanding and latency runs from the actual send.
//!
//! After the measured window, in-flight frames finish, queued gateway follow-ups are sent
//! (unmeasured) so no hold is left pending, lost replies are resolved by INQUIRY, and with
//! `--validate` every card is read back and compared with the model.
//!
//! The `calls` workload adds a ramp before the window (every connection STARTs its share of the
//! calls, unmeasured) and, after it, ENDs every call still in progress (unmeasured), so no
//! session keeps money reserved; each connection also listens for SESSION_NOTICE pushes.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use pinswitch_protocol::{Client, ClientError, ClientOptions, HelloReply, OpResult, SessionNotice};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::calls::{CallCounters, CallGen, CallParams, Grant};
use crate::cards::{self, CardRecord, CardsFile};
use crate::cpu::{CpuFigures, CpuWindow};
use crate::dist::{CardPicker, DistSpec};
use crate::future_set::FutureSet;
use crate::model::{Model, Op};
use crate::pool::Pool;
use crate::report::{
    CallsFigures, Report, RunConfig, TimelinePoint, latency_figures, message_figures, thousands,
    thousands_rounded,
};
use crate::stats::{
    CODE_BAD_REPLY, CODE_NETWORK_ERROR, Interval, duration_ns, duration_us, is_error, record,
};
use crate::validate::{self, MISMATCHES_SHOWN_MAX, Resolution};
use crate::workload::{Events, Frame, Generator, WorkloadParams, WorkloadSpec};

/// Everything a run needs besides the cards.
#[derive(Clone, Debug)]
pub(crate) struct RunSpec {
    pub address: String,
    pub workload: WorkloadSpec,
    pub dist: DistSpec,
    pub connections: usize,
    pub in_flight: usize,
    pub batch: usize,
    pub rate_ops_per_s: u64,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub seed: u64,
    pub validate: bool,
    pub threads: usize,
    /// The switch's process id, whose CPU time the report gives beside the generator's.
    pub server_pid: Option<u32>,
    pub sale_min_won: u64,
    pub sale_max_won: u64,
    pub load_amount_won: u64,
    pub balance_cap_won: u64,
    pub write_back: bool,
    /// The calls (used by the `calls` workload only).
    pub calls: CallParams,
}

/// Where the optional outputs go.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunOutputs {
    pub report_json: Option<std::path::PathBuf>,
    pub hdr_log: Option<std::path::PathBuf>,
    pub svg: Option<std::path::PathBuf>,
}

/// How long unmeasured follow-ups may take after the run.
const DRAIN_TIME_MAX: Duration = Duration::from_secs(5);
/// How long ending the calls still in progress may take after a calls run.
const CALLS_DRAIN_TIME_MAX: Duration = Duration::from_secs(120);
/// How long a calls run's ramp may take.
const RAMP_TIME_MAX: Duration = Duration::from_secs(600);
/// How long in-flight frames may take to answer after the run before they are given up.
const FINAL_WAIT_MAX: Duration = Duration::from_secs(30);
/// The pacer never sleeps less than this; shorter gaps are covered by sending due frames together.
const PACER_SLEEP_MIN: Duration = Duration::from_micros(20);

fn lock(interval: &Mutex<Interval>) -> MutexGuard<'_, Interval> {
    interval.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection's frame times: frame k is due `offset_ns + k * interval_ns` after the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub offset_ns: u64,
    pub interval_ns: u64,
}

impl Schedule {
    /// Schedules for `connections` connections sharing `rate_ops_per_s` in frames of `batch`,
    /// staggered so the connections' frames interleave evenly.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "pacing, not money: whole nanoseconds, `as` rounding and saturating"
    )]
    pub(crate) fn for_rate(rate_ops_per_s: u64, batch: usize, connections: usize) -> Vec<Schedule> {
        let connections = connections.max(1) as u64;
        let frames_per_s = rate_ops_per_s as f64 / batch.max(1) as f64;
        let global_interval_ns = (1e9 / frames_per_s.max(1e-9)).max(1.0);
        let interval_ns = (global_interval_ns * connections as f64).round().max(1.0) as u64;
        (0..connections)
            .map(|index| Schedule {
                offset_ns: (global_interval_ns * index as f64).round() as u64,
                interval_ns,
            })
            .collect()
    }

    pub(crate) fn due_ns(&self, frame: u64) -> u64 {
        self.offset_ns.saturating_add(frame.saturating_mul(self.interval_ns))
    }

    /// How many frames are due at or before `elapsed_ns`.
    pub(crate) fn frames_due_by(&self, elapsed_ns: u64) -> u64 {
        if elapsed_ns < self.offset_ns {
            0
        } else {
            (elapsed_ns - self.offset_ns) / self.interval_ns.max(1) + 1
        }
    }
}

/// Sleeps to each connection's next due time and wakes it; ends at `run_ns` or on stop.
fn pace(
    start: Instant,
    run_ns: u64,
    schedules: Vec<Schedule>,
    wakes: Vec<Arc<Notify>>,
    stop: Arc<AtomicBool>,
) {
    let mut next: Vec<u64> = vec![0; schedules.len()];
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let elapsed_ns = duration_ns(start.elapsed());
        if elapsed_ns >= run_ns {
            break;
        }
        let mut soonest_ns = run_ns;
        for (index, schedule) in schedules.iter().enumerate() {
            if schedule.due_ns(next[index]) <= elapsed_ns {
                wakes[index].notify_one();
                next[index] = schedule.frames_due_by(elapsed_ns);
            }
            soonest_ns = soonest_ns.min(schedule.due_ns(next[index]));
        }
        let sleep =
            Duration::from_nanos(soonest_ns.saturating_sub(elapsed_ns)).max(PACER_SLEEP_MIN);
        std::thread::sleep(sleep);
    }
    for wake in &wakes {
        wake.notify_one();
    }
}

/// What a frame in flight comes back with.
struct FrameOutput {
    sent_at: Instant,
    completed_at: Instant,
    outcome: Result<Replies, ClientError>,
    /// The events sent, handed back to the generator to reuse their buffers.
    events: Events,
}

/// The replies to a frame: one result per event, and for session events their grants.
struct Replies {
    results: Vec<OpResult>,
    grants: Vec<Grant>,
}

impl From<Vec<OpResult>> for Replies {
    fn from(results: Vec<OpResult>) -> Replies {
        Replies { results, grants: Vec::new() }
    }
}

/// Which statistics a frame counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// The measured window.
    Window,
    /// A calls run's ramp (its own figures).
    Ramp,
    /// Warm-up follow-ups and the drain after the window: not counted.
    No,
}

/// What the connection keeps about a frame in flight.
struct InFlight {
    ops: Vec<Op>,
    message: &'static str,
    scheduled_at: Instant,
    measure: Measure,
    generation: u64,
}

/// Sends a frame and waits for its reply: the future a connection keeps per frame in flight.
async fn send_frame(client: Client, events: Events) -> FrameOutput {
    let sent_at = Instant::now();
    let outcome = send_events(&client, &events).await;
    FrameOutput { sent_at, completed_at: Instant::now(), outcome, events }
}

async fn send_events(client: &Client, events: &Events) -> Result<Replies, ClientError> {
    let sessions = |results: Vec<pinswitch_protocol::SessionResult>| Replies {
        grants: results.iter().map(Grant::of).collect(),
        results: results.into_iter().map(|result| result.result).collect(),
    };
    match events {
        Events::Load(events) => client.card_load(events).await.map(Replies::from),
        Events::Sale(events) => client.sale(events).await.map(Replies::from),
        Events::Authorize(events) => client.authorize(events).await.map(Replies::from),
        Events::Capture(events) => client.capture(events).await.map(Replies::from),
        Events::Void(events) => client.void(events).await.map(Replies::from),
        Events::Reverse(events) => client.reverse(events).await.map(Replies::from),
        Events::Refund(events) => client.refund(events).await.map(Replies::from),
        Events::SessionStart(events) => client.session_start(events).await.map(sessions),
        Events::SessionUpdate(events) => client.session_update(events).await.map(sessions),
        Events::SessionEnd(events) => client.session_end(events).await.map(sessions),
    }
}

/// What a connection reports when it is done.
#[derive(Debug, Default)]
struct ConnSummary {
    backlog_frames: u64,
    reconnects: u64,
    drained_ops: u64,
    /// Holds whose settling follow-up could not be sent: to be voided.
    leftover_holds: Vec<Op>,
    /// Calls runs: the ramp's figures, the calls' counters, simulated seconds of the window,
    /// calls not ended after the drain.
    ramp: Interval,
    calls: CallCounters,
    simulated_s: f64,
    calls_left_open: u64,
}

/// One connection's task state. `F` is the future of a frame in flight: what `send_frame`
/// returns, named by a type parameter because an async fn's future has no name of its own.
struct Connection<F: Future<Output = FrameOutput>> {
    address: String,
    options: ClientOptions,
    client: Option<Client>,
    /// Bumped on every reconnect, so a late failure of an old client does not drop a new one.
    generation: u64,
    generator: Generator,
    cards: Arc<Vec<CardRecord>>,
    model: Arc<Model>,
    stats: Arc<Mutex<Interval>>,
    schedule: Option<Schedule>,
    start: Instant,
    end: Instant,
    measure_from: Instant,
    /// The calls' simulated second when the window began.
    sim_from_s: Option<i64>,
    /// SESSION_NOTICE pushes (calls runs).
    notices: Option<mpsc::Receiver<SessionNotice>>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    /// Connections currently without a working client (shown on the progress line).
    down: Arc<AtomicUsize>,
    /// Connections past their window (draining): live calls are no longer sampled.
    draining: Arc<AtomicUsize>,
    in_flight_max: usize,
    /// `send_frame`, which makes the frames' futures.
    send: fn(Client, Events) -> F,
    tasks: FutureSet<F>,
    /// What each slot of `tasks` in use is sending.
    in_flight: Vec<Option<InFlight>>,
    /// Reused for each answered frame's result codes.
    codes: Vec<(u16, u64)>,
    summary: ConnSummary,
}

impl<F: Future<Output = FrameOutput> + Send + 'static> Connection<F> {
    async fn run(mut self) -> ConnSummary {
        let run_ns = duration_ns(self.end.duration_since(self.start));
        let mut next_frame: u64 = 0;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            while let Some(joined) = self.tasks.try_join_next() {
                self.on_joined(joined);
            }
            self.take_notices();
            if self.client.is_none() {
                if !self.reconnect(self.end).await {
                    break;
                }
                continue;
            }
            let now = Instant::now();
            let scheduled_at = match self.schedule {
                Some(schedule) => {
                    let due_ns = schedule.due_ns(next_frame);
                    if due_ns >= run_ns {
                        break;
                    }
                    let due = self.start + Duration::from_nanos(due_ns);
                    if due > now {
                        self.wait(due).await;
                        continue;
                    }
                    due
                }
                None => {
                    if now >= self.end {
                        break;
                    }
                    now
                }
            };
            if self.tasks.len() >= self.in_flight_max {
                if let Some(joined) = self.tasks.join_next().await {
                    self.on_joined(joined);
                }
                continue;
            }
            if self.sim_from_s.is_none() && now >= self.measure_from {
                self.sim_from_s = self.generator.calls().map(CallGen::clock_s);
            }
            let Some(frame) = self.generator.next_frame(now, &self.cards, &self.model) else {
                // Every call waits for a reply: the frame goes out when one comes.
                if let Some(joined) = self.tasks.join_next().await {
                    self.on_joined(joined);
                }
                continue;
            };
            let measure = if now >= self.measure_from { Measure::Window } else { Measure::No };
            self.spawn(frame, scheduled_at, measure);
            next_frame += 1;
        }
        if let (Some(calls), Some(from_s)) = (self.generator.calls(), self.sim_from_s) {
            self.summary.simulated_s = (calls.clock_s() - from_s) as f64;
        }
        if let Some(schedule) = self.schedule {
            let elapsed_ns = duration_ns(self.start.elapsed()).min(run_ns);
            self.summary.backlog_frames =
                schedule.frames_due_by(elapsed_ns.saturating_sub(1)).saturating_sub(next_frame);
        }
        self.finish_in_flight(Instant::now().max(self.end) + FINAL_WAIT_MAX).await;
        self.drain().await;
        if let Some(calls) = self.generator.calls() {
            self.summary.calls = calls.counters;
            self.summary.calls_left_open = calls.open_calls() as u64;
        }
        self.summary
    }

    /// A calls run's ramp: sends every call's START (unmeasured, counted in the ramp's figures)
    /// and waits for all replies. Fails when the switch goes away meanwhile.
    async fn ramp(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RAMP_TIME_MAX;
        loop {
            while let Some(joined) = self.tasks.try_join_next() {
                self.on_joined(joined);
            }
            self.take_notices();
            if self.client.is_none() {
                bail!("the connection to {} failed during the ramp", self.address);
            }
            if Instant::now() >= deadline {
                bail!("the ramp took longer than {} s", RAMP_TIME_MAX.as_secs());
            }
            if self.tasks.len() < self.in_flight_max {
                let now = Instant::now();
                if let Some(frame) = self.generator.next_frame(now, &self.cards, &self.model) {
                    self.spawn(frame, now, Measure::Ramp);
                    continue;
                }
            }
            match self.tasks.join_next().await {
                Some(joined) => self.on_joined(joined),
                None => break,
            }
        }
        if let Some(calls) = self.generator.calls_mut() {
            calls.begin_run();
        }
        Ok(())
    }

    /// Hands the SESSION_NOTICE pushes received so far to the calls.
    fn take_notices(&mut self) {
        let Some(notices) = &mut self.notices else {
            return;
        };
        while let Ok(notice) = notices.try_recv() {
            self.generator.on_notice(&notice, &self.model);
        }
    }

    /// Waits for the pacer's wake-up (or a reply, or a fallback timer).
    async fn wait(&mut self, due: Instant) {
        let wake = self.wake.clone();
        let fallback = tokio::time::sleep_until((due + Duration::from_millis(2)).into());
        tokio::select! {
            _ = wake.notified() => {}
            Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => self.on_joined(joined),
            _ = fallback => {}
        }
    }

    /// Starts sending a frame: it goes out when the connection next polls its frames in flight
    /// (at once: every path that starts frames then waits on them or checks them).
    fn spawn(&mut self, frame: Frame, scheduled_at: Instant, measure: Measure) {
        let Some(client) = self.client.clone() else {
            // No connection: the frame is not sent; follow-ups stay queued.
            for op in &frame.ops {
                self.generator.on_not_executed(op, Instant::now());
            }
            self.generator.recycle(Some(frame.events), frame.ops);
            return;
        };
        let Frame { events, ops } = frame;
        let message = events.name();
        let slot = self.tasks.push((self.send)(client, events));
        if self.in_flight.len() <= slot {
            self.in_flight.resize_with(slot + 1, || None);
        }
        self.in_flight[slot] =
            Some(InFlight { ops, message, scheduled_at, measure, generation: self.generation });
    }

    fn on_joined(&mut self, (slot, output): (usize, FrameOutput)) {
        if let Some(frame) = self.in_flight[slot].take() {
            self.complete(frame, Some(output));
        }
    }

    /// Gives up the frames still in flight (outcome unknown).
    fn abandon_in_flight(&mut self) {
        for slot in self.tasks.abort_all() {
            if let Some(frame) = self.in_flight[slot].take() {
                self.complete(frame, None);
            }
        }
    }

    /// Applies a frame's outcome to the model, the generator and the statistics.
    fn complete(&mut self, frame: InFlight, output: Option<FrameOutput>) {
        // An answered frame was completed just now: its time saves reading the clock again.
        let now = output.as_ref().map_or_else(Instant::now, |output| output.completed_at);
        let count = frame.ops.len() as u64;
        let mut codes = std::mem::take(&mut self.codes);
        codes.clear();
        match output.as_ref().map(|output| &output.outcome) {
            Some(Ok(replies)) => {
                for (index, (op, result)) in frame.ops.iter().zip(&replies.results).enumerate() {
                    self.model.apply_reply(op, result);
                    self.generator.on_reply(
                        op,
                        result,
                        replies.grants.get(index),
                        now,
                        &self.model,
                    );
                    codes.push((result.code, 1));
                }
            }
            Some(Err(ClientError::Rejected(code))) => {
                for op in &frame.ops {
                    self.generator.on_not_executed(op, now);
                }
                codes.push((code.as_u16(), count));
            }
            Some(Err(error @ (ClientError::Decode(_) | ClientError::ResultCount { .. }))) => {
                self.model
                    .record_anomaly(format!("bad reply to a frame of {count} operations: {error}"));
                self.model.add_unknown(&frame.ops);
                self.generator.on_lost(&frame.ops, &self.model);
                codes.push((CODE_BAD_REPLY, count));
            }
            Some(Err(_)) | None => {
                // The connection failed (or the task was abandoned) with the frame in flight.
                self.model.add_unknown(&frame.ops);
                self.generator.on_lost(&frame.ops, &self.model);
                codes.push((CODE_NETWORK_ERROR, count));
                if frame.generation == self.generation && self.client.take().is_some() {
                    self.down.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let completed_at = output.as_ref().map_or(now, |output| output.completed_at);
        let sent_at = output.as_ref().map_or(frame.scheduled_at, |output| output.sent_at);
        match frame.measure {
            Measure::No => {}
            Measure::Ramp => {
                count_frame(&mut self.summary.ramp, &frame, sent_at, completed_at, &codes)
            }
            Measure::Window => {
                count_frame(&mut lock(&self.stats), &frame, sent_at, completed_at, &codes);
            }
        }
        self.codes = codes;
        self.generator.recycle(output.map(|output| output.events), frame.ops);
    }

    /// Collects every in-flight frame; past `deadline` the rest are abandoned (outcome unknown).
    async fn finish_in_flight(&mut self, deadline: Instant) {
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline.into(), self.tasks.join_next()).await {
                Ok(Some(joined)) => self.on_joined(joined),
                Ok(None) => break,
                Err(_) => {
                    // Replies already in still count; the rest are given up.
                    while let Some(joined) = self.tasks.try_join_next() {
                        self.on_joined(joined);
                    }
                    self.abandon_in_flight();
                }
            }
        }
    }

    /// Sends the queued follow-ups (unmeasured) so no hold is left pending; in a calls run,
    /// ends every call still in progress.
    async fn drain(&mut self) {
        let calls = self.generator.calls().is_some();
        let deadline = Instant::now() + if calls { CALLS_DRAIN_TIME_MAX } else { DRAIN_TIME_MAX };
        self.draining.fetch_add(1, Ordering::Relaxed);
        self.generator.begin_drain(&self.model);
        loop {
            if self.client.is_none() && !self.reconnect(deadline).await {
                break;
            }
            let mut spawned = false;
            while self.tasks.len() < self.in_flight_max && self.client.is_some() {
                let Some(frame) = self.generator.drain_frame(Instant::now(), &self.cards) else {
                    break;
                };
                self.summary.drained_ops += frame.ops.len() as u64;
                self.spawn(frame, Instant::now(), Measure::No);
                spawned = true;
            }
            if self.tasks.is_empty() {
                let stuck = !spawned && self.client.is_some();
                if self.generator.follow_ups_pending() == 0 || Instant::now() >= deadline || stuck {
                    break;
                }
                continue;
            }
            match tokio::time::timeout_at(deadline.into(), self.tasks.join_next()).await {
                Ok(Some(joined)) => self.on_joined(joined),
                Ok(None) => {}
                Err(_) => {
                    self.finish_in_flight(Instant::now()).await;
                    break;
                }
            }
        }
        if calls {
            return;
        }
        let now = Instant::now();
        while let Some(frame) = self.generator.drain_frame(now, &self.cards) {
            self.summary.leftover_holds.extend(
                frame.ops.iter().filter(|op| op.kind.settles_hold()).map(|op| Op {
                    kind: crate::model::OpKind::Void,
                    captured_won: 0,
                    op_id: 0,
                    ..*op
                }),
            );
        }
    }

    /// Reconnects with backoff until `deadline` or stop; false when it gave up.
    async fn reconnect(&mut self, deadline: Instant) -> bool {
        // Frames of the dead connection fail by themselves; account for them first.
        self.finish_in_flight(deadline.max(Instant::now()) + Duration::from_secs(1)).await;
        let mut backoff = Duration::from_millis(50);
        loop {
            let now = Instant::now();
            if self.stop.load(Ordering::Relaxed) || now >= deadline {
                return false;
            }
            match crate::pool::open(&self.address, self.options).await {
                Ok(client) => {
                    if self.notices.is_some() {
                        self.notices = Some(client.notices());
                    }
                    self.client = Some(client);
                    self.down.fetch_sub(1, Ordering::Relaxed);
                    self.generation += 1;
                    self.summary.reconnects += 1;
                    return true;
                }
                Err(_) => {
                    tokio::time::sleep(backoff.min(deadline.saturating_duration_since(now))).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Counts an answered (or failed) frame in `stats`: latency per operation from its schedule,
/// send lag, result codes, and its message type's share.
fn count_frame(
    stats: &mut Interval,
    frame: &InFlight,
    sent_at: Instant,
    completed_at: Instant,
    codes: &[(u16, u64)],
) {
    let count = frame.ops.len() as u64;
    let latency_us = duration_us(completed_at.saturating_duration_since(frame.scheduled_at));
    let lag_us = duration_us(sent_at.saturating_duration_since(frame.scheduled_at));
    record(&mut stats.latency_us, latency_us, count);
    record(&mut stats.send_lag_us, lag_us, 1);
    stats.ops += count;
    stats.frames += 1;
    let errors = codes.iter().filter(|(code, _)| is_error(*code)).map(|(_, count)| count).sum();
    stats.record_message(frame.message, latency_us, count, errors);
    for &(code, count) in codes {
        stats.count_code(code, count);
    }
    stats.last_completion =
        Some(stats.last_completion.map_or(completed_at, |last| last.max(completed_at)));
}

/// Gathers the connections' intervals once a second: progress line, timeline, totals, HDR log.
struct Collector {
    start: Instant,
    end: Instant,
    measure_from: Instant,
    last_at: Instant,
    totals: Interval,
    timeline: Vec<TimelinePoint>,
    /// (offset from start, length, V2+deflate histogram) of each measured interval.
    hdr_intervals: Option<Vec<(Duration, Duration, Vec<u8>)>>,
    serializer: V2DeflateSerializer,
    down: Arc<AtomicUsize>,
    draining: Arc<AtomicUsize>,
    connections: usize,
    /// Calls runs: the model, for the sessions live; their least and most in the window.
    calls_model: Option<Arc<Model>>,
    live_range: Option<(i64, i64)>,
}

/// The session messages' success rates of an interval (empty when it had none).
fn session_rates(interval: &Interval, length_s: f64) -> std::collections::BTreeMap<String, f64> {
    ["SESSION_START", "SESSION_UPDATE", "SESSION_END"]
        .into_iter()
        .filter(|name| interval.by_message.contains_key(name))
        .map(|name| (name.to_owned(), interval.ok_of(name) as f64 / length_s))
        .collect()
}

impl Collector {
    /// A collector for the run's window; it keeps the intervals' histograms for the HdrHistogram
    /// log when `hdr_log`, and follows the sessions live in a calls run (`calls_model`).
    fn new(
        window: &Window,
        shared: &Shared,
        connections: usize,
        hdr_log: bool,
        calls_model: Option<Arc<Model>>,
    ) -> Collector {
        Collector {
            start: window.start,
            end: window.end,
            measure_from: window.measure_from,
            last_at: window.start,
            totals: Interval::default(),
            timeline: Vec::new(),
            hdr_intervals: hdr_log.then(Vec::new),
            serializer: V2DeflateSerializer::new(),
            down: shared.down.clone(),
            draining: shared.draining.clone(),
            connections,
            calls_model,
            live_range: None,
        }
    }

    fn collect(&mut self, stats: &[Arc<Mutex<Interval>>], now: Instant) {
        let mut merged = Interval::default();
        for interval in stats {
            let taken = std::mem::take(&mut *lock(interval));
            merged.merge(&taken);
        }
        let length = now.saturating_duration_since(self.last_at);
        let length_s = length.as_secs_f64().max(1e-6);
        let figures = latency_figures(&merged.latency_us);
        let point = TimelinePoint {
            second: now.saturating_duration_since(self.start).as_secs_f64(),
            interval_s: length_s,
            ops: merged.ops,
            ops_per_s: merged.ops as f64 / length_s,
            p50_us: figures.p50_us,
            p99_us: figures.p99_us,
            max_us: figures.max_us,
            errors: merged.errors,
            ok_per_s_by_message: session_rates(&merged, length_s),
            calls_live: self.calls_model.as_ref().map(|model| model.calls_live()),
        };
        let measured = self.last_at + Duration::from_millis(100) >= self.measure_from;
        // The last, partial interval counts in the totals but is too short for a rate.
        let shown = length >= Duration::from_millis(250);
        let down = self.down.load(Ordering::Relaxed);
        let down = if down > 0 {
            format!("  [{down} of {} connections down, reconnecting]", self.connections)
        } else {
            String::new()
        };
        let phase = if now > self.end + Duration::from_millis(100) {
            " (finishing)"
        } else if !measured {
            " (warmup)"
        } else {
            ""
        };
        let calls = match point.calls_live {
            Some(live) => {
                let rate = |name: &str| {
                    thousands_rounded(point.ok_per_s_by_message.get(name).copied().unwrap_or(0.0))
                };
                format!(
                    "  starts {}/s updates {}/s ends {}/s live {}",
                    rate("SESSION_START"),
                    rate("SESSION_UPDATE"),
                    rate("SESSION_END"),
                    thousands(live.max(0) as u64)
                )
            }
            None => String::new(),
        };
        if shown {
            eprintln!(
                "[{:6.1} s] {:>10} ops/s  p50 {:>7} us  p99 {:>7} us  max {:>7} us  errors {}{calls}{phase}{down}",
                point.second,
                thousands_rounded(point.ops_per_s),
                thousands(point.p50_us),
                thousands(point.p99_us),
                thousands(point.max_us),
                thousands(point.errors)
            );
        }
        if measured && (merged.ops > 0 || now <= self.end) {
            if let Some(intervals) = &mut self.hdr_intervals {
                let mut bytes = Vec::new();
                if self.serializer.serialize(&merged.latency_us, &mut bytes).is_ok() {
                    intervals.push((
                        self.last_at.saturating_duration_since(self.start),
                        length,
                        bytes,
                    ));
                }
            }
            self.totals.merge(&merged);
            let in_window = now <= self.end && self.draining.load(Ordering::Relaxed) == 0;
            if let Some(live) = point.calls_live.filter(|_| in_window) {
                self.live_range = Some(match self.live_range {
                    Some((low, high)) => (low.min(live), high.max(live)),
                    None => (live, live),
                });
            }
            if shown {
                self.timeline.push(point);
            }
        }
        self.last_at = now;
    }
}

/// Writes an HdrHistogram interval log (V2, deflate-compressed, base64) of the intervals.
fn write_hdr_log(
    path: &Path,
    start_time: SystemTime,
    intervals: &[(Duration, Duration, Vec<u8>)],
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment("pinswitch-loadgen latency log: one histogram per second, values in microseconds per operation")
            .with_start_time(start_time)
            .with_base_time(start_time)
            .begin_log_with(&mut out, &mut serializer)
            .context("starting the HdrHistogram log")?;
        let mut deserializer = Deserializer::new();
        for (offset, length, bytes) in intervals {
            let histogram: Histogram<u64> = deserializer
                .deserialize(&mut bytes.as_slice())
                .map_err(|error| anyhow::anyhow!("re-reading an interval histogram: {error:?}"))?;
            writer
                .write_histogram(&histogram, *offset, *length, None)
                .map_err(|error| anyhow::anyhow!("writing the HdrHistogram log: {error:?}"))?;
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// A calls run's ramp: every connection STARTs its share of the calls at once; returns the
/// connections in their order.
async fn ramp<F: Future<Output = FrameOutput> + Send + 'static>(
    connections: Vec<Connection<F>>,
) -> anyhow::Result<Vec<Connection<F>>> {
    let calls: u64 =
        connections.iter().map(|connection| connection.generator.follow_ups_pending() as u64).sum();
    eprintln!("run: ramp: starting {} calls", thousands(calls));
    let mut tasks = JoinSet::new();
    for (index, mut connection) in connections.into_iter().enumerate() {
        tasks.spawn(async move {
            let outcome = connection.ramp().await;
            (index, connection, outcome)
        });
    }
    let mut ramped: Vec<(usize, Connection<F>)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, connection, outcome) =
            joined.map_err(|error| anyhow::anyhow!("a ramp task failed: {error}"))?;
        outcome?;
        ramped.push((index, connection));
    }
    ramped.sort_by_key(|(index, _)| *index);
    let started: u64 =
        ramped.iter().map(|(_, connection)| connection.summary.ramp.ok_of("SESSION_START")).sum();
    if started == 0 {
        let mut ramp = Interval::default();
        for (_, connection) in &ramped {
            ramp.merge(&connection.summary.ramp);
        }
        bail!(
            "the switch started none of the calls: {:?} (check its tariffs for the category and destination, and its session limits)",
            ramp.counts_by_name(true)
        );
    }
    Ok(ramped.into_iter().map(|(_, connection)| connection).collect())
}

/// Runs the workload against the cards in `cards_path`. Returns whether the run passed (always
/// true without `--validate`).
pub(crate) async fn run(
    spec: &RunSpec,
    cards_path: &Path,
    outputs: &RunOutputs,
) -> anyhow::Result<bool> {
    check_spec(spec)?;
    let mut cpu = CpuWindow::new(spec.server_pid)
        .map_err(|error| anyhow::anyhow!("--server-pid: {error}"))?;
    let mut file: CardsFile = cards::read(cards_path)?;
    if file.cards.is_empty() {
        bail!("{} holds no cards", cards_path.display());
    }
    let cards = Arc::new(std::mem::take(&mut file.cards));
    let model = Arc::new(Model::new(cards.iter().map(|card| card.expected_balance_won)));
    let pending = std::mem::take(&mut file.pending);
    let (hello, mut uncertain_ops, inherited_holds) =
        settle_before(spec, cards_path, &cards, &model, pending).await?;

    // Connecting, and a calls run's ramp.
    let shape = Shape::negotiate(spec, &hello, cards.len());
    let shared = Shared::new(spec, &shape, &cards, &model);
    let clients = connect_clients(spec, &shape).await?;
    let mut connection_list = connections(spec, &shape, &shared, clients);
    let calls = spec.workload.is_calls();
    let ramp_s = if calls {
        let ramped_at = Instant::now();
        connection_list = ramp(connection_list).await?;
        ramped_at.elapsed().as_secs_f64()
    } else {
        0.0
    };

    // The warm-up and the measured window (in open loop, paced by the pacer thread).
    let window = Window::from_now(spec);
    let tasks = start_connections(connection_list, &window);
    let pacer = start_pacer(&shared, &window)?;
    let mut collector = Collector::new(
        &window,
        &shared,
        shape.connections,
        outputs.hdr_log.is_some(),
        calls.then(|| model.clone()),
    );
    let (summaries, stopped_at) =
        await_connections(tasks, &mut collector, &shared, &window, &mut cpu).await?;
    // Every connection ended before the window did (not normally: they run to its end).
    cpu.finish();
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    let mut measured = Measured { window, ramp_s, collector, summaries, stopped_at };

    // Settle lost replies and leftover holds, then validate.
    let settled = settle_after(spec, &cards, &model, &mut measured.summaries).await;
    uncertain_ops.extend(settled.resolution.unresolved.iter().copied());
    let (validated, mismatched_cards) = if spec.validate {
        validate_after(&cards, &model, settled.pool.as_ref(), &uncertain_ops, &inherited_holds)
            .await
    } else {
        (None, None)
    };
    if spec.write_back {
        write_back(cards_path, file, &cards, &model, &uncertain_ops)?;
    }

    // Collecting the report.
    let report = build_report(
        spec,
        &shape,
        &measured,
        &settled,
        (validated, mismatched_cards),
        &model,
        cpu.figures(),
    );
    write_outputs(&report, outputs, &measured)?;
    Ok(validated.unwrap_or(true))
}

/// Refuses a spec that cannot make a run.
fn check_spec(spec: &RunSpec) -> anyhow::Result<()> {
    if spec.sale_min_won == 0 || spec.sale_max_won < spec.sale_min_won {
        bail!("--sale-min-won must be positive and at most --sale-max-won");
    }
    if spec.duration_s == 0 {
        bail!("--duration must be at least 1 second");
    }
    if spec.workload.is_calls() {
        let calls = &spec.calls;
        if calls.calls == 0 || calls.update_interval_s == 0 || calls.calls_per_card_max == 0 {
            bail!("--calls, --update-interval-s and --calls-per-card-max must be positive");
        }
        if !(1..=15).contains(&calls.destination.len())
            || !calls.destination.iter().all(u8::is_ascii_digit)
        {
            bail!("--call-destination must be 1 to 15 digits");
        }
    }
    Ok(())
}

/// Settles what the file left open (operations with unknown outcomes, by INQUIRY) and, when
/// validating, checks the starting point: every card as the file says, and the model given the
/// holds the switch has. Returns the switch's HELLO, the operations still uncertain, and which
/// cards had holds when the run began (from an earlier run: the run knows neither their ids nor
/// their expiry, so those cards' held amounts are not compared at the end, only their balances,
/// which an expiry does not change; a kill loop's run within a hold TTL of an interrupted one
/// reported false "held" mismatches before).
async fn settle_before(
    spec: &RunSpec,
    cards_path: &Path,
    cards: &[CardRecord],
    model: &Model,
    pending: Vec<Op>,
) -> anyhow::Result<(HelloReply, Vec<Op>, Vec<bool>)> {
    let control = Pool::connect(&spec.address, 2, 4).await?;
    let hello = control.hello.clone();
    let mut uncertain_ops: Vec<Op> = Vec::new();
    let mut inherited_holds = Vec::new();
    if !pending.is_empty() {
        let resolution = validate::resolve(&control, cards, model, pending).await?;
        eprintln!(
            "run: the cards file listed operations with unknown outcomes: {} executed, {} not executed, {} unresolved",
            resolution.executed,
            resolution.not_executed,
            resolution.unresolved.len()
        );
        uncertain_ops = resolution.unresolved;
    }
    if spec.validate {
        let skip = validate::uncertain_cards(cards.len(), &uncertain_ops);
        let observed = validate::read_balances(&control, cards).await?;
        let mismatches =
            validate::compare(cards, &observed, &skip, |card| (model.balance_won(card), None));
        if !mismatches.is_empty() {
            validate::print_mismatches(&mismatches, MISMATCHES_SHOWN_MAX);
            bail!(
                "{} cards already differ from {} before the run; prepare a fresh cards file",
                mismatches.len(),
                cards_path.display()
            );
        }
        for (index, seen) in observed.iter().enumerate() {
            let held_won = i64::try_from(seen.held_won).unwrap_or(i64::MAX);
            model.set_held_won(cards::card_index(index), held_won);
        }
        inherited_holds = observed.iter().map(|seen| seen.held_won > 0).collect();
    }
    Ok((hello, uncertain_ops, inherited_holds))
}

/// The run's shape: the spec's batch, frames in flight and connections within what the switch
/// allows, and what every connection's generator is made from.
struct Shape {
    cards: usize,
    batch: usize,
    in_flight: usize,
    connections: usize,
    params: WorkloadParams,
    picker: CardPicker,
    options: ClientOptions,
}

/// The TTL of the run's holds: the run and five minutes, at least a minute, never past what the
/// switch allows (a switch that allows less than a minute gets its maximum, not a panic).
fn hold_ttl_for(run_s: u64, hold_ttl_max_s: u32) -> u32 {
    let max_s = hold_ttl_max_s.max(1);
    let wanted_s = run_s.saturating_add(300).clamp(60, u64::from(u32::MAX));
    u32::try_from(wanted_s).map_or(max_s, |wanted_s| wanted_s.min(max_s))
}

impl Shape {
    fn negotiate(spec: &RunSpec, hello: &HelloReply, cards: usize) -> Shape {
        let batch = spec.batch.clamp(1, (hello.batch_events_max as usize).max(1));
        let in_flight =
            spec.in_flight.clamp(1, (hello.in_flight_per_connection_max as usize).max(1));
        let connections = spec.connections.max(1);
        let hold_ttl_s = hold_ttl_for(spec.warmup_s + spec.duration_s, hello.hold_ttl_max_s);
        let params = WorkloadParams {
            batch,
            sale_min_won: spec.sale_min_won,
            sale_max_won: spec.sale_max_won,
            load_amount_won: spec.load_amount_won,
            balance_cap_won: spec.balance_cap_won,
            hold_ttl_s,
        };
        let picker = CardPicker::new(spec.dist, cards::card_index(cards));
        let options = ClientOptions { in_flight_max: in_flight, ..ClientOptions::default() };
        Shape { cards, batch, in_flight, connections, params, picker, options }
    }
}

/// What the connections share with each other, the pacer and the collector: the cards and the
/// model, the stop flag, the counts of connections down and draining, and per connection its
/// schedule (open loop), its wake-up and its interval's statistics.
struct Shared {
    cards: Arc<Vec<CardRecord>>,
    model: Arc<Model>,
    stop: Arc<AtomicBool>,
    down: Arc<AtomicUsize>,
    draining: Arc<AtomicUsize>,
    schedules: Option<Vec<Schedule>>,
    wakes: Vec<Arc<Notify>>,
    stats: Vec<Arc<Mutex<Interval>>>,
}

impl Shared {
    fn new(
        spec: &RunSpec,
        shape: &Shape,
        cards: &Arc<Vec<CardRecord>>,
        model: &Arc<Model>,
    ) -> Shared {
        let connections = shape.connections;
        Shared {
            cards: cards.clone(),
            model: model.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            down: Arc::new(AtomicUsize::new(0)),
            draining: Arc::new(AtomicUsize::new(0)),
            schedules: (spec.rate_ops_per_s > 0)
                .then(|| Schedule::for_rate(spec.rate_ops_per_s, shape.batch, connections)),
            wakes: (0..connections).map(|_| Arc::new(Notify::new())).collect(),
            stats: (0..connections).map(|_| Arc::new(Mutex::new(Interval::default()))).collect(),
        }
    }
}

/// One client per connection, each allowed the shape's frames in flight.
async fn connect_clients(spec: &RunSpec, shape: &Shape) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(shape.connections);
    for _ in 0..shape.connections {
        clients.push(
            crate::pool::open(&spec.address, shape.options)
                .await
                .with_context(|| format!("connecting to {}", spec.address))?,
        );
    }
    Ok(clients)
}

/// A connection per client, each with its own generator (a calls run's also listens for
/// SESSION_NOTICE pushes); their times are set when the run starts.
fn connections(
    spec: &RunSpec,
    shape: &Shape,
    shared: &Shared,
    clients: Vec<Client>,
) -> Vec<Connection<impl Future<Output = FrameOutput> + Send + 'static>> {
    let calls = spec.workload.is_calls();
    let call_params = Arc::new(spec.calls.clone());
    let mut connection_list = Vec::with_capacity(shape.connections);
    for (index, client) in clients.into_iter().enumerate() {
        let generator = if calls {
            Generator::for_calls(
                shape.params,
                CallGen::new(
                    call_params.clone(),
                    shape.batch,
                    shape.picker.clone(),
                    spec.seed,
                    index as u64,
                    shape.connections as u64,
                    &shared.model,
                ),
            )
        } else {
            Generator::new(
                &spec.workload,
                shape.params,
                shape.picker.clone(),
                spec.seed,
                index as u64,
            )
        };
        let notices = calls.then(|| client.notices());
        connection_list.push(Connection {
            address: spec.address.clone(),
            options: shape.options,
            client: Some(client),
            generation: 0,
            generator,
            cards: shared.cards.clone(),
            model: shared.model.clone(),
            stats: shared.stats[index].clone(),
            schedule: shared.schedules.as_ref().map(|schedules| schedules[index]),
            // Set by `start_connections`, after the ramp.
            start: Instant::now(),
            end: Instant::now(),
            measure_from: Instant::now(),
            sim_from_s: None,
            notices,
            wake: shared.wakes[index].clone(),
            stop: shared.stop.clone(),
            down: shared.down.clone(),
            draining: shared.draining.clone(),
            in_flight_max: shape.in_flight,
            send: send_frame,
            tasks: FutureSet::default(),
            in_flight: Vec::new(),
            codes: Vec::new(),
            summary: ConnSummary::default(),
        });
    }
    connection_list
}

/// The run's times: the connections start at `start`, the warm-up ends at `measure_from`, the
/// measured window at `end`.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    /// `start` on the wall clock, for the HdrHistogram log.
    start_time: SystemTime,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    /// The connections start 20 ms from now, the warm-up and the duration follow.
    fn from_now(spec: &RunSpec) -> Window {
        let start = Instant::now() + Duration::from_millis(20);
        let start_time = SystemTime::now() + Duration::from_millis(20);
        let measure_from = start + Duration::from_secs(spec.warmup_s);
        let end = measure_from + Duration::from_secs(spec.duration_s);
        Window { start, start_time, measure_from, end }
    }
}

/// One task per connection, each starting at the window's start.
fn start_connections<F: Future<Output = FrameOutput> + Send + 'static>(
    connection_list: Vec<Connection<F>>,
    window: &Window,
) -> JoinSet<ConnSummary> {
    let Window { start, measure_from, end, .. } = *window;
    let mut tasks = JoinSet::new();
    for mut connection in connection_list {
        connection.start = start;
        connection.end = end;
        connection.measure_from = measure_from;
        tasks.spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            connection.run().await
        });
    }
    tasks
}

/// The open-loop pacer's thread (`None` unthrottled): wakes each connection at its due times.
fn start_pacer(
    shared: &Shared,
    window: &Window,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let pacer = shared.schedules.clone().map(|schedules| {
        let wakes = shared.wakes.clone();
        let stop = shared.stop.clone();
        let start = window.start;
        let run_ns = duration_ns(window.end.duration_since(start));
        std::thread::Builder::new()
            .name("loadgen-pacer".into())
            .spawn(move || pace(start, run_ns, schedules, wakes, stop))
    });
    Ok(match pacer {
        Some(spawned) => Some(spawned.context("starting the pacer thread")?),
        None => None,
    })
}

/// Waits out the warm-up and the measured window until every connection has ended: collects
/// once a second, samples CPU time at the window's two ends, and on Ctrl-C stops the run.
/// Returns the connections' summaries and when an interrupt stopped the run.
async fn await_connections(
    mut tasks: JoinSet<ConnSummary>,
    collector: &mut Collector,
    shared: &Shared,
    window: &Window,
    cpu: &mut CpuWindow,
) -> anyhow::Result<(Vec<ConnSummary>, Option<Instant>)> {
    let mut ticker = tokio::time::interval_at(
        (window.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // CPU time is sampled at the two ends of the measured window: the end of the warmup and the
    // end of the duration (or the interrupt), so neither the warmup nor the drain counts.
    let cpu_from = tokio::time::sleep_until(window.measure_from.into());
    let cpu_to = tokio::time::sleep_until(window.end.into());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c, cpu_from, cpu_to);
    let mut stopping = false;
    let mut stopped_at: Option<Instant> = None;
    let mut summaries: Vec<ConnSummary> = Vec::new();
    while !tasks.is_empty() {
        tokio::select! {
            _ = ticker.tick() => collector.collect(&shared.stats, Instant::now()),
            _ = &mut cpu_from, if !cpu.started() && !stopping => cpu.start(),
            _ = &mut cpu_to, if cpu.started() && !cpu.finished() => cpu.finish(),
            joined = tasks.join_next() => match joined {
                Some(Ok(summary)) => summaries.push(summary),
                Some(Err(error)) => bail!("a connection task failed: {error}"),
                None => {}
            },
            _ = &mut ctrl_c, if !stopping => {
                stopping = true;
                stopped_at = Some(Instant::now());
                interrupt(shared, cpu);
            }
        }
    }
    collector.collect(&shared.stats, Instant::now());
    Ok((summaries, stopped_at))
}

/// The first Ctrl-C: the CPU window ends, the pacer and the connections stop (the frames in
/// flight finish), and a second Ctrl-C quits at once.
fn interrupt(shared: &Shared, cpu: &mut CpuWindow) {
    cpu.finish();
    shared.stop.store(true, Ordering::Relaxed);
    for wake in &shared.wakes {
        wake.notify_one();
    }
    eprintln!(
        "run: interrupted; finishing frames in flight and reporting (Ctrl-C again quits at once)"
    );
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("run: interrupted again; quitting without a report or cards file update");
            std::process::exit(130);
        }
    });
}

/// What the run measured: its times, the ramp's length, the collected figures, each
/// connection's summary, and when an interrupt stopped it.
struct Measured {
    window: Window,
    ramp_s: f64,
    collector: Collector,
    summaries: Vec<ConnSummary>,
    stopped_at: Option<Instant>,
}

/// What settling after the window found.
struct Settled {
    /// Operations whose reply was lost.
    unknown_count: u64,
    resolution: Resolution,
    /// Connected to the switch after the run; `None` when it is unreachable.
    pool: Option<Pool>,
}

/// Resolves the operations whose reply was lost (INQUIRY) and voids the holds left pending
/// (those the connections could not settle, and those the lost replies left).
async fn settle_after(
    spec: &RunSpec,
    cards: &[CardRecord],
    model: &Model,
    summaries: &mut [ConnSummary],
) -> Settled {
    let unknown = model.take_unknown();
    let unknown_count = unknown.len() as u64;
    let mut leftover_holds: Vec<Op> = summaries
        .iter_mut()
        .flat_map(|summary| std::mem::take(&mut summary.leftover_holds))
        .collect();
    let (resolution, pool) = resolve_lost(spec, cards, model, unknown).await;
    if unknown_count > 0 {
        eprintln!(
            "run: {unknown_count} operations lost their reply: {} executed, {} not executed, {} unresolved",
            resolution.executed,
            resolution.not_executed,
            resolution.unresolved.len()
        );
    }
    leftover_holds.extend(resolution.holds_pending.iter().copied());
    if let Some(pool) = &pool
        && !leftover_holds.is_empty()
    {
        match validate::void_holds(pool, cards, model, leftover_holds).await {
            Ok(voided) => eprintln!("run: voided {voided} holds left pending"),
            Err(error) => eprintln!("run: could not void holds left pending: {error:#}"),
        }
    }
    Settled { unknown_count, resolution, pool }
}

/// How long a run keeps trying to reach the switch after its window, to settle.
const SETTLE_RECONNECT_S: u64 = 30;

/// Reconnects (retrying for `SETTLE_RECONNECT_S`) and resolves `unknown` by INQUIRY; when
/// either fails, all of it stays unresolved and no pool is returned.
async fn resolve_lost(
    spec: &RunSpec,
    cards: &[CardRecord],
    model: &Model,
    unknown: Vec<Op>,
) -> (Resolution, Option<Pool>) {
    let unresolved = |unknown: Vec<Op>| Resolution { unresolved: unknown, ..Resolution::default() };
    // The switch may be restarting (a kill loop's second kill lands in its recovery): the
    // connection is tried again with backoff for a while. Only the connection: a resolution
    // moves the model as it goes, so a failed one is not repeated (its ops stay unresolved,
    // written back for the next run or `validate`).
    let deadline = Instant::now() + Duration::from_secs(SETTLE_RECONNECT_S);
    let mut backoff = Duration::from_millis(50);
    let pool = loop {
        match Pool::connect(&spec.address, 2, 4).await {
            Ok(pool) => break pool,
            Err(error) if Instant::now() + backoff < deadline => {
                eprintln!("run: reconnecting after the run: {error:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(error) => {
                eprintln!("run: could not reconnect after the run: {error:#}");
                return (unresolved(unknown), None);
            }
        }
    };
    match validate::resolve(&pool, cards, model, unknown.clone()).await {
        Ok(resolution) => (resolution, Some(pool)),
        Err(error) => {
            eprintln!("run: could not resolve lost replies: {error:#}");
            (unresolved(unknown), None)
        }
    }
}

/// `--validate` after the run: every card read back and compared with the model (balance and
/// held amount), cards with uncertain operations aside. Returns (validated, mismatched cards).
async fn validate_after(
    cards: &[CardRecord],
    model: &Model,
    pool: Option<&Pool>,
    uncertain_ops: &[Op],
    inherited_holds: &[bool],
) -> (Option<bool>, Option<u64>) {
    let outcome = match pool {
        Some(pool) => validate::read_balances(pool, cards).await,
        None => Err(anyhow::anyhow!("the switch is unreachable")),
    };
    match outcome {
        Ok(observed) => {
            let skip = validate::uncertain_cards(cards.len(), uncertain_ops);
            let mismatches = validate::compare(cards, &observed, &skip, |card| {
                let inherited = inherited_holds.get(card as usize).copied().unwrap_or(false);
                (model.balance_won(card), (!inherited).then(|| model.held_won(card)))
            });
            validate::print_mismatches(&mismatches, MISMATCHES_SHOWN_MAX);
            for anomaly in model.anomaly_examples() {
                eprintln!("ANOMALY {anomaly}");
            }
            let validated =
                mismatches.is_empty() && uncertain_ops.is_empty() && model.anomalies() == 0;
            (Some(validated), Some(mismatches.len() as u64))
        }
        Err(error) => {
            eprintln!("run: could not read balances back: {error:#}");
            (Some(false), None)
        }
    }
}

/// Writes the cards file back with the model's balances and the operations still uncertain.
fn write_back(
    cards_path: &Path,
    mut file: CardsFile,
    cards: &[CardRecord],
    model: &Model,
    uncertain_ops: &[Op],
) -> anyhow::Result<()> {
    file.cards = cards
        .iter()
        .enumerate()
        .map(|(index, card)| CardRecord {
            expected_balance_won: model.balance_won(cards::card_index(index)),
            ..*card
        })
        .collect();
    file.pending = uncertain_ops.to_vec();
    cards::write(cards_path, &file)
}

/// The report of the run: figures over the measured window, and what settling and validating
/// found.
fn build_report(
    spec: &RunSpec,
    shape: &Shape,
    measured: &Measured,
    settled: &Settled,
    (validated, mismatched_cards): (Option<bool>, Option<u64>),
    model: &Model,
    cpu: CpuFigures,
) -> Report {
    let totals = &measured.collector.totals;
    let summaries = &measured.summaries;
    let seconds = window_seconds(measured);
    let figures = latency_figures(&totals.latency_us);
    let lag = latency_figures(&totals.send_lag_us);
    let calls_figures =
        spec.workload.is_calls().then(|| calls_figures(spec, measured, seconds, model));
    Report {
        config: run_config(spec, shape),
        ops: totals.ops,
        frames: totals.frames,
        seconds,
        ops_per_s: if seconds > 0.0 { totals.ops as f64 / seconds } else { 0.0 },
        mean_us: figures.mean_us,
        p50_us: figures.p50_us,
        p90_us: figures.p90_us,
        p99_us: figures.p99_us,
        p999_us: figures.p999_us,
        p9999_us: figures.p9999_us,
        max_us: figures.max_us,
        send_lag_p99_us: lag.p99_us,
        send_lag_max_us: lag.max_us,
        cpu_window_s: cpu.window_s,
        loadgen_cpu_s: cpu.loadgen_cpu_s,
        loadgen_cpu_us_per_op: CpuFigures::us_per_op(cpu.loadgen_cpu_s, totals.ops),
        server_cpu_s: cpu.server_cpu_s,
        server_cpu_us_per_op: CpuFigures::us_per_op(cpu.server_cpu_s, totals.ops),
        errors: totals.errors,
        errors_by_code: totals.counts_by_name(true),
        results_by_code: totals.counts_by_name(false),
        backlog_frames_at_end: summaries.iter().map(|summary| summary.backlog_frames).sum(),
        reconnects: summaries.iter().map(|summary| summary.reconnects).sum(),
        unknown_ops: settled.unknown_count,
        unresolved_ops: settled.resolution.unresolved.len() as u64,
        reply_anomalies: model.anomalies(),
        validated,
        mismatched_cards,
        percentiles: figures.percentiles,
        timeline: measured.collector.timeline.clone(),
        by_message: message_figures(&totals.by_message, seconds),
        calls: calls_figures,
    }
}

/// The length of the measured window, in seconds.
fn window_seconds(measured: &Measured) -> f64 {
    let Window { measure_from, end, .. } = measured.window;
    // The measured window runs to the end of the schedule (or the interrupt), or to the last
    // measured reply if that came later; a switch that stopped answering does not shorten it.
    let window_end = measured.stopped_at.unwrap_or(end).min(end);
    let window_end =
        measured.collector.totals.last_completion.map_or(window_end, |last| last.max(window_end));
    window_end.saturating_duration_since(measure_from).as_secs_f64()
}

/// The run as the report describes it: the spec, with the shape the switch allowed.
fn run_config(spec: &RunSpec, shape: &Shape) -> RunConfig {
    RunConfig {
        address: spec.address.clone(),
        workload: spec.workload.to_string(),
        dist: spec.dist.to_string(),
        cards: shape.cards as u64,
        connections: shape.connections as u64,
        in_flight: shape.in_flight as u64,
        batch: shape.batch as u64,
        rate_target_ops_per_s: spec.rate_ops_per_s,
        duration_s: spec.duration_s,
        warmup_s: spec.warmup_s,
        seed: spec.seed,
        threads: spec.threads as u64,
    }
}

/// A calls run's figures: the ramp, the sessions' rates over the window, the calls left after
/// it, and the tariff check.
fn calls_figures(spec: &RunSpec, measured: &Measured, seconds: f64, model: &Model) -> CallsFigures {
    let totals = &measured.collector.totals;
    let summaries = &measured.summaries;
    let ramp_s = measured.ramp_s;
    let per_s = |count: u64| {
        if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
    };
    let mut ramp = Interval::default();
    let mut counters = CallCounters::default();
    for summary in summaries {
        ramp.merge(&summary.ramp);
        counters.merge(&summary.calls);
    }
    let ramp_started = ramp.ok_of("SESSION_START");
    let simulated_s = summaries.iter().map(|summary| summary.simulated_s).sum::<f64>()
        / summaries.len().max(1) as f64;
    let (live_min, live_max) = measured.collector.live_range.unwrap_or((0, 0));
    let notice_names = ["OTHER", "REAUTHORIZE", "ABORT", "LOW_BALANCE", "EXPIRED"];
    CallsFigures {
        concurrent_calls: spec.calls.calls,
        update_interval_s: spec.calls.update_interval_s,
        call_length: spec.calls.length.to_string(),
        destination: String::from_utf8_lossy(&spec.calls.destination).into_owned(),
        ramp_s,
        ramp_sessions_started: ramp_started,
        ramp_starts_per_s: ramp_started as f64 / ramp_s.max(1e-9),
        ramp_errors_by_code: ramp.counts_by_name(true),
        sessions_started: totals.ok_of("SESSION_START"),
        sessions_started_per_s: per_s(totals.ok_of("SESSION_START")),
        updates: totals.ok_of("SESSION_UPDATE"),
        updates_per_s: per_s(totals.ok_of("SESSION_UPDATE")),
        ends: totals.ok_of("SESSION_END"),
        ends_per_s: per_s(totals.ok_of("SESSION_END")),
        live_min,
        live_max,
        simulated_s,
        time_scale: simulated_s / seconds.max(1e-9),
        drained_ends: summaries.iter().map(|summary| summary.drained_ops).sum(),
        left_live: model.calls_live(),
        tariff: spec.calls.tariff.map(|tariff| tariff.to_string()),
        calls_checked: counters.tariff_checked,
        tariff_mismatches: counters.tariff_mismatches,
        notices: notice_names
            .iter()
            .zip(counters.notices)
            .filter(|(_, count)| *count > 0)
            .map(|(name, count)| ((*name).to_owned(), count))
            .collect(),
    }
}

/// Prints the report and writes the outputs asked for: JSON, the HdrHistogram log, the SVG.
fn write_outputs(report: &Report, outputs: &RunOutputs, measured: &Measured) -> anyhow::Result<()> {
    print!("{}", report.to_text());
    if let Some(path) = &outputs.report_json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(intervals)) = (&outputs.hdr_log, &measured.collector.hdr_intervals) {
        write_hdr_log(path, measured.window.start_time, intervals)?;
    }
    if let Some(path) = &outputs.svg {
        std::fs::write(path, crate::svg::render(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hold_ttls_fit_what_the_switch_allows() {
        use super::hold_ttl_for;
        assert_eq!(hold_ttl_for(10, 604_800), 310);
        assert_eq!(hold_ttl_for(10, 30), 30, "a switch allowing less than a minute");
        assert_eq!(hold_ttl_for(10, 0), 1);
        assert_eq!(hold_ttl_for(u64::MAX, 604_800), 604_800);
    }

    use super::*;

    #[test]
    fn schedules_share_the_rate_and_interleave() {
        // 100,000 ops/s in frames of 100 = 1,000 frames/s; 4 connections = 250 frames/s each.
        let schedules = Schedule::for_rate(100_000, 100, 4);
        assert_eq!(schedules.len(), 4);
        assert!(schedules.iter().all(|schedule| schedule.interval_ns == 4_000_000));
        let offsets: Vec<u64> = schedules.iter().map(|schedule| schedule.offset_ns).collect();
        assert_eq!(offsets, vec![0, 1_000_000, 2_000_000, 3_000_000]);
        // Over one second, all together schedule 1,000 frames.
        let frames: u64 =
            schedules.iter().map(|schedule| schedule.frames_due_by(999_999_999)).sum();
        assert_eq!(frames, 1_000);
        let schedule = schedules[1];
        assert_eq!(schedule.frames_due_by(999_999), 0);
        assert_eq!(schedule.frames_due_by(1_000_000), 1);
        assert_eq!(schedule.due_ns(2), 9_000_000);
        // Absurd rates still give a positive interval.
        assert!(Schedule::for_rate(u64::MAX, 1, 1)[0].interval_ns >= 1);
        assert!(Schedule::for_rate(1, 8000, 1)[0].interval_ns > 0);
    }

    #[test]
    fn hdr_logs_are_written_and_read_back() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.hlog");
        let mut serializer = V2DeflateSerializer::new();
        let mut intervals = Vec::new();
        for second in 0..3u64 {
            let mut histogram = crate::stats::new_histogram();
            record(&mut histogram, 100 * (second + 1), 10);
            let mut bytes = Vec::new();
            serializer.serialize(&histogram, &mut bytes).expect("serializes");
            intervals.push((Duration::from_secs(second), Duration::from_secs(1), bytes));
        }
        write_hdr_log(&path, SystemTime::now(), &intervals).expect("writes");
        let bytes = std::fs::read(&path).expect("reads");
        let histograms = IntervalLogIterator::new(&bytes)
            .filter_map(|entry| match entry {
                Ok(LogEntry::Interval(interval)) => Some(interval),
                _ => None,
            })
            .count();
        assert_eq!(histograms, 3);
    }
}
