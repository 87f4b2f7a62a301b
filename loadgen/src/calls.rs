//! The `calls` workload: what a call switch sends while it carries N concurrent prepaid calls.
//! Every call is a charging session: SESSION_START (seq 0), then a SESSION_UPDATE with the
//! cumulative seconds used every `update_interval_s` of the call (seq 1, 2, ...), then SESSION_END
//! with the final use when the call's length (drawn from `--call-length`) is reached, or earlier
//! when the switch grants the last seconds (final unit). The moment a call is set to end, a new
//! call starts on a freshly drawn card, so N calls are always in progress.
//!
//! Time is simulated. Each connection keeps its calls' next events in due order on a virtual
//! clock of whole seconds and sends them as fast as the run allows (unthrottled: as fast as the
//! switch answers; `--rate`: that many events a second): the clock jumps to the due time of the
//! events it sends, so a second of call time may take a millisecond of wall time and the figures
//! measure the switch, not the clock. What a call reports never depends on timing: its length,
//! its reports and their seconds follow from the seed and the replies. A call's next event waits
//! for the reply to its previous one (START before its first UPDATE, each report before the
//! next), so the sequence numbers a session sees only go up.
//!
//! The run starts with a ramp: every connection sends the STARTs of its share of the N calls
//! (unmeasured). The calls are staggered as if already under way: call i is `p_i` seconds old at
//! the run's second 0 (`p_i` uniform below the update interval) and, with exponential lengths
//! (memoryless), has an exponential remainder, so updates, ends and starts run at their steady
//! rates from the first measured second. At the end every call still live is ended (unmeasured)
//! so no reservation is left and every card's balance and held amount can be compared.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use pinswitch_protocol::{
    FINAL_UNIT_NONE, NOTICE_ABORT, OpResult, ResultCode, SessionEnd, SessionNotice, SessionResult,
    SessionStart, SessionUpdate, new_op_id,
};

use crate::cards::CardRecord;
use crate::dist::CardPicker;
use crate::model::{Model, Op, OpKind, not_executed};
use crate::rng::Rng;
use crate::workload::{Events, Frame};

/// Longest call (seconds) a length distribution may give: 11.5 days.
pub(crate) const CALL_S_MAX: u32 = 1_000_000;
/// A START the switch declined is followed by a new call this many simulated seconds later.
const DECLINE_RETRY_S: i64 = 5;
/// An event the switch did not execute (RETRY_LATER, deadline) is sent again this much later.
const RESEND_DELAY_S: i64 = 1;
/// Draws of a card that already has its most calls, or no money, before one is taken anyway.
const REDRAWS_MAX: usize = 8;

/// How long calls last (simulated seconds, at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallLength {
    /// Exponential with this mean: memoryless, so the run is in steady state from its start.
    Exp {
        mean_s: u32,
    },
    Fixed {
        length_s: u32,
    },
    Uniform {
        min_s: u32,
        max_s: u32,
    },
}

impl CallLength {
    pub(crate) fn sample(&self, rng: &mut Rng) -> u32 {
        match *self {
            CallLength::Exp { mean_s } => {
                let length = -(1.0 - rng.next_f64()).ln() * f64::from(mean_s);
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a drawn length, not money: `as` saturates (NaN to 0), clamped next"
                )]
                let length_s = length.ceil() as u64;
                u32::try_from(length_s).unwrap_or(u32::MAX).clamp(1, CALL_S_MAX)
            }
            CallLength::Fixed { length_s } => length_s,
            CallLength::Uniform { min_s, max_s } => {
                u32::try_from(rng.range_inclusive(u64::from(min_s), u64::from(max_s)))
                    .expect("a draw within u32 bounds fits a u32")
            }
        }
    }

    /// The length of a call already `age_s` seconds old at the start of the run.
    fn sample_aged(&self, age_s: u32, rng: &mut Rng) -> u32 {
        match self {
            CallLength::Exp { .. } => age_s.saturating_add(self.sample(rng)),
            _ => self.sample(rng).max(age_s + 1),
        }
    }
}

impl FromStr for CallLength {
    type Err = String;

    fn from_str(text: &str) -> Result<CallLength, String> {
        let usage = "use exp:MEAN_S, fixed:S or uniform:MIN_S,MAX_S (seconds, 1 to 1,000,000)";
        let seconds = |value: &str| -> Result<u32, String> {
            match value.trim().parse::<u32>() {
                Ok(value) if (1..=CALL_S_MAX).contains(&value) => Ok(value),
                _ => Err(format!("call length {value:?}: {usage}")),
            }
        };
        let text = text.trim();
        if let Some(mean) = text.strip_prefix("exp:") {
            return Ok(CallLength::Exp { mean_s: seconds(mean)? });
        }
        if let Some(length) = text.strip_prefix("fixed:") {
            return Ok(CallLength::Fixed { length_s: seconds(length)? });
        }
        if let Some(range) = text.strip_prefix("uniform:") {
            let (min, max) =
                range.split_once(',').ok_or_else(|| format!("call length {text:?}: {usage}"))?;
            let (min_s, max_s) = (seconds(min)?, seconds(max)?);
            if min_s > max_s {
                return Err(format!("call length {text:?}: the minimum passes the maximum"));
            }
            return Ok(CallLength::Uniform { min_s, max_s });
        }
        Err(format!("unknown call length {text:?}: {usage}"))
    }
}

impl fmt::Display for CallLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallLength::Exp { mean_s } => write!(f, "exp:{mean_s}"),
            CallLength::Fixed { length_s } => write!(f, "fixed:{length_s}"),
            CallLength::Uniform { min_s, max_s } => write!(f, "uniform:{min_s},{max_s}"),
        }
    }
}

/// The tariff the switch applies to the calls' destination, for checking every ended call's
/// debits: `connect_fee_won + rate_won × max(first_increment_s, ⌈u / increment_s⌉ × increment_s)
/// / increment_s` for `u` seconds used (0 for none), as PROTOCOL.md defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TariffSpec {
    pub connect_fee_won: u64,
    pub rate_won: u64,
    pub increment_s: u32,
    pub first_increment_s: u32,
}

impl TariffSpec {
    pub(crate) fn cost_won(&self, used_s: u32) -> u64 {
        if used_s == 0 {
            return 0;
        }
        let increment_s = u64::from(self.increment_s.max(1));
        let first_s = u64::from(self.first_increment_s).max(increment_s);
        let billed_s =
            u64::from(used_s).div_ceil(increment_s).saturating_mul(increment_s).max(first_s);
        (billed_s / increment_s).saturating_mul(self.rate_won).saturating_add(self.connect_fee_won)
    }
}

impl FromStr for TariffSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<TariffSpec, String> {
        let usage = "use CONNECT_FEE_WON,RATE_WON,INCREMENT_S[,FIRST_INCREMENT_S], e.g. 10,12,6,0";
        let numbers: Vec<u64> = text
            .split(',')
            .map(|part| part.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("tariff {text:?}: {usage}"))?;
        let (connect_fee_won, rate_won, increment_s, first_increment_s) = match numbers[..] {
            [fee, rate, increment] => (fee, rate, increment, 0),
            [fee, rate, increment, first] => (fee, rate, increment, first),
            _ => return Err(format!("tariff {text:?}: {usage}")),
        };
        let increment_s = u32::try_from(increment_s).unwrap_or(0);
        let first_increment_s = u32::try_from(first_increment_s).unwrap_or(u32::MAX);
        if increment_s == 0 || first_increment_s % increment_s != 0 {
            return Err(format!(
                "tariff {text:?}: the increment must be positive and the first increment a multiple of it"
            ));
        }
        Ok(TariffSpec { connect_fee_won, rate_won, increment_s, first_increment_s })
    }
}

impl fmt::Display for TariffSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.connect_fee_won, self.rate_won, self.increment_s, self.first_increment_s
        )
    }
}

/// What the calls of a run look like (shared by every connection).
#[derive(Clone, Debug)]
pub(crate) struct CallParams {
    /// Concurrent calls over all connections.
    pub calls: u64,
    /// Simulated seconds of a call between two reports; also the grant each report asks for.
    pub update_interval_s: u32,
    pub length: CallLength,
    /// A `Category` number (2: telephone call).
    pub category: u8,
    /// The called number (ASCII digits).
    pub destination: Vec<u8>,
    /// A new call is not put on a card with this many calls in progress (after redraws).
    pub calls_per_card_max: u16,
    /// SESSION_START carries the card's password (else an empty one).
    pub send_password: bool,
    /// When set, every ended call's debits are checked against this tariff.
    pub tariff: Option<TariffSpec>,
}

/// The grant part of a `SessionResult`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub granted_s: u32,
    pub final_unit: u8,
}

impl Grant {
    pub(crate) fn of(result: &SessionResult) -> Grant {
        Grant { granted_s: result.granted_s, final_unit: result.final_unit }
    }
}

/// Where a connection's calls are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Sending the first calls' STARTs (those due at or before second 0).
    Ramp,
    Run,
    /// Ending every call still in progress; no new calls.
    Drain,
}

/// What a connection's calls counted (besides the per-message statistics of the run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallCounters {
    /// Ended calls whose debits were checked against the tariff, and those that differed.
    pub tariff_checked: u64,
    pub tariff_mismatches: u64,
    /// SESSION_NOTICE pushes by kind (index = `NOTICE_*`; 0 = unknown kinds).
    pub notices: [u64; 5],
}

impl CallCounters {
    pub(crate) fn merge(&mut self, other: &CallCounters) {
        self.tariff_checked += other.tariff_checked;
        self.tariff_mismatches += other.tariff_mismatches;
        for (mine, theirs) in self.notices.iter_mut().zip(other.notices) {
            *mine += theirs;
        }
    }
}

/// A call's next event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Start,
    Update { used_s: u32 },
    End { used_s: u32 },
}

impl Next {
    /// The queue of its kind: ends first, then updates, then starts (ties go in this order).
    fn queue(self) -> usize {
        match self {
            Next::End { .. } => 0,
            Next::Update { .. } => 1,
            Next::Start => 2,
        }
    }
}

#[derive(Clone, Debug)]
struct Call {
    in_use: bool,
    card: u32,
    session_id: u128,
    /// Simulated second of the START (negative for the calls already under way at second 0).
    start_s: i64,
    /// The call ends after this many seconds: its drawn length, lowered by a final grant.
    limit_s: u32,
    /// Seconds of the last report the switch applied.
    reported_s: u32,
    /// Seconds the last grant allows past `reported_s`.
    granted_s: u32,
    /// Sequence number of the last report sent (START is 0).
    seq: u32,
    /// What the replies said this call's events debited.
    debited_won: u64,
    /// Known to be live at the switch; counted in `Model::calls_live`.
    live: bool,
    /// A START was sent (the session may exist).
    start_sent: bool,
    /// A reply was lost, or the use was capped or expired: the debits are not tariff-checked.
    unchecked: bool,
    /// The END is decided (and the call replacing this one exists).
    ending: bool,
    next: Next,
    /// Due second of `next`.
    due_s: i64,
    /// `next` was sent and its reply has not come yet.
    in_flight: bool,
    /// Bumped whenever `next` is queued: older queue entries are stale.
    version: u32,
}

/// (due second, call index, call version), smallest due first.
type Entry = Reverse<(i64, u32, u32)>;

/// The calls of one connection.
pub(crate) struct CallGen {
    params: Arc<CallParams>,
    batch: usize,
    owner_id: u32,
    picker: CardPicker,
    /// Draws cards only.
    card_rng: Rng,
    /// Lengths and phases.
    rng: Rng,
    /// Session ids are `nonce << 64 | counter << 32 | call index`: the nonce (an op id's low
    /// bits: the process's random prefix and a counter) keeps connections and runs apart, and
    /// the index finds the call of a reply or a push.
    nonce: u64,
    counter: u32,
    calls: Vec<Call>,
    free: Vec<u32>,
    /// End, update and start queues.
    queues: [BinaryHeap<Entry>; 3],
    clock_s: i64,
    phase: Phase,
    /// Calls in use (in progress, or ending).
    open: usize,
    pub counters: CallCounters,
}

impl CallGen {
    /// This connection's share of the calls, all queued to START in the ramp.
    pub(crate) fn new(
        params: Arc<CallParams>,
        batch: usize,
        picker: CardPicker,
        seed: u64,
        connection: u64,
        connections: u64,
        model: &Model,
    ) -> CallGen {
        let connections = connections.max(1);
        let share = params.calls / connections + u64::from(connection < params.calls % connections);
        #[expect(clippy::cast_possible_truncation, reason = "the cast keeps the low half")]
        let nonce = new_op_id() as u64;
        let mut calls = CallGen {
            batch: batch.max(1),
            owner_id: u32::try_from(connection + 1).unwrap_or(u32::MAX),
            picker,
            card_rng: Rng::stream(seed, connection * 2),
            rng: Rng::stream(seed, connection * 2 + 1),
            nonce,
            counter: 0,
            // A capacity hint only: a share past the address space gets none.
            calls: Vec::with_capacity(usize::try_from(share).unwrap_or(0)),
            free: Vec::new(),
            queues: Default::default(),
            clock_s: 0,
            phase: Phase::Ramp,
            open: 0,
            counters: CallCounters::default(),
            params,
        };
        let interval_s = calls.params.update_interval_s.max(1);
        for _ in 0..share {
            let age_s = calls.rng.below_u32(interval_s);
            let length_s = calls.params.length.sample_aged(age_s, &mut calls.rng);
            calls.new_call(-i64::from(age_s), Some(length_s), model);
        }
        calls
    }

    /// Ends the ramp: events of every kind and due time go out from now on.
    pub(crate) fn begin_run(&mut self) {
        self.phase = Phase::Run;
    }

    /// The simulated second the calls have reached (the latest due time sent).
    pub(crate) fn clock_s(&self) -> i64 {
        self.clock_s
    }

    /// Calls in progress or ending (0 after a complete drain).
    pub(crate) fn open_calls(&self) -> usize {
        self.open
    }

    /// Starts a call on a drawn card, its START due at `due_s`.
    fn new_call(&mut self, due_s: i64, length_s: Option<u32>, model: &Model) {
        let card = self.pick_card(model);
        model.add_call(card);
        let length_s = length_s.unwrap_or_else(|| self.params.length.sample(&mut self.rng));
        let index = self.free.pop().unwrap_or(self.call_slots());
        self.counter = self.counter.wrapping_add(1);
        let session_id =
            (u128::from(self.nonce) << 64) | (u128::from(self.counter) << 32) | u128::from(index);
        let call = Call {
            in_use: true,
            card,
            session_id,
            start_s: due_s,
            limit_s: length_s,
            reported_s: 0,
            granted_s: 0,
            seq: 0,
            debited_won: 0,
            live: false,
            start_sent: false,
            unchecked: false,
            ending: false,
            next: Next::Start,
            due_s,
            in_flight: false,
            // A reused slot keeps counting, so its old queue entries stay stale.
            version: self.calls.get(index as usize).map_or(0, |old| old.version),
        };
        match self.calls.get_mut(index as usize) {
            Some(slot) => *slot = call,
            None => self.calls.push(call),
        }
        self.open += 1;
        self.queue(index, Next::Start, due_s);
    }

    /// A card that has room for one more call and some money, if a few draws find one.
    fn pick_card(&mut self, model: &Model) -> u32 {
        let fits = |card: u32| {
            model.calls_on(card) < self.params.calls_per_card_max && model.balance_won(card) > 0
        };
        let mut card = self.picker.pick(&mut self.card_rng);
        for _ in 0..REDRAWS_MAX {
            if fits(card) {
                break;
            }
            card = self.picker.pick(&mut self.card_rng);
        }
        card
    }

    fn queue(&mut self, index: u32, next: Next, due_s: i64) {
        let call = &mut self.calls[index as usize];
        call.version = call.version.wrapping_add(1);
        call.next = next;
        call.due_s = due_s;
        call.in_flight = false;
        self.queues[next.queue()].push(Reverse((due_s, index, call.version)));
    }

    /// Due second of the first valid entry of a queue (stale entries are dropped).
    fn head(&mut self, queue: usize) -> Option<i64> {
        while let Some(Reverse((due_s, index, version))) = self.queues[queue].peek().copied() {
            let call = &self.calls[index as usize];
            if call.in_use && !call.in_flight && call.version == version {
                return Some(due_s);
            }
            self.queues[queue].pop();
        }
        None
    }

    /// The next frame: one message type, up to `batch` events in due order. In the ramp only
    /// STARTs due by second 0; in the run first the STARTs the clock has passed (they replace
    /// calls whose ENDs went out, so the sessions live stay at N), else the type whose first
    /// event is due first, without running more than a quarter of an update interval ahead of
    /// the other types; in the drain only ENDs. `None` when nothing can be sent until a reply
    /// comes.
    pub(crate) fn next_frame(&mut self, cards: &[CardRecord]) -> Option<Frame> {
        let heads = [self.head(0), self.head(1), self.head(2)];
        let (queue, limit_s) = match self.phase {
            Phase::Ramp => match heads[2] {
                Some(due_s) if due_s <= 0 => (2, 0),
                _ => return None,
            },
            Phase::Drain => {
                heads[0]?;
                (0, i64::MAX)
            }
            // STARTs the clock has passed go first: they replace calls whose ENDs were sent.
            Phase::Run if heads[2].is_some_and(|due_s| due_s <= self.clock_s) => (2, self.clock_s),
            Phase::Run => {
                let (queue, _) = heads
                    .iter()
                    .enumerate()
                    .filter_map(|(queue, head)| head.map(|due_s| (queue, due_s)))
                    .min_by_key(|(queue, due_s)| (*due_s, *queue))?;
                let slack_s = i64::from((self.params.update_interval_s / 4).max(1));
                let limit_s = heads
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != queue)
                    .filter_map(|(_, head)| *head)
                    .min()
                    .map_or(i64::MAX, |due_s| due_s.saturating_add(slack_s));
                (queue, limit_s)
            }
        };
        let mut taken: Vec<u32> = Vec::with_capacity(self.batch.min(1024));
        while taken.len() < self.batch {
            let Some(due_s) = self.head(queue) else { break };
            if due_s > limit_s && !taken.is_empty() {
                break;
            }
            let Some(Reverse((_, index, _))) = self.queues[queue].pop() else {
                break;
            };
            self.calls[index as usize].in_flight = true;
            if self.phase == Phase::Run {
                self.clock_s = self.clock_s.max(due_s);
            }
            taken.push(index);
        }
        if taken.is_empty() {
            return None;
        }
        Some(self.build_frame(&taken, cards))
    }

    fn build_frame(&mut self, taken: &[u32], cards: &[CardRecord]) -> Frame {
        let params = Arc::clone(&self.params);
        let mut ops = Vec::with_capacity(taken.len());
        let first = self.calls[taken[0] as usize].next;
        let mut starts = Vec::new();
        let mut updates = Vec::new();
        let mut ends = Vec::new();
        for &index in taken {
            let call = &mut self.calls[index as usize];
            let card = &cards[call.card as usize];
            let op_id = new_op_id();
            let kind = match call.next {
                Next::Start => {
                    call.start_sent = true;
                    starts.push(SessionStart {
                        op_id,
                        pin: card.pin,
                        session_id: call.session_id,
                        category: params.category,
                        destination: params.destination.clone(),
                        requested_s: params.update_interval_s,
                        owner_id: self.owner_id,
                        password: if params.send_password {
                            card.password.to_vec()
                        } else {
                            Vec::new()
                        },
                    });
                    OpKind::SessionStart
                }
                Next::Update { used_s } => {
                    call.seq += 1;
                    updates.push(SessionUpdate {
                        op_id,
                        pin: card.pin,
                        session_id: call.session_id,
                        seq: call.seq,
                        used_total_s: used_s,
                        requested_s: params.update_interval_s,
                    });
                    OpKind::SessionUpdate
                }
                Next::End { used_s } => {
                    call.seq += 1;
                    ends.push(SessionEnd {
                        op_id,
                        pin: card.pin,
                        session_id: call.session_id,
                        seq: call.seq,
                        used_total_s: used_s,
                    });
                    OpKind::SessionEnd
                }
            };
            ops.push(Op {
                kind,
                card: call.card,
                op_id,
                amount_won: 0,
                captured_won: 0,
                reference: call.session_id,
                gateway: false,
            });
        }
        let events = match first {
            Next::Start => Events::SessionStart(starts),
            Next::Update { .. } => Events::SessionUpdate(updates),
            Next::End { .. } => Events::SessionEnd(ends),
        };
        Frame { events, ops }
    }

    /// The number of call slots (in use or free), as a call index counts.
    fn call_slots(&self) -> u32 {
        // A session id carries its call's index in its low 32 bits.
        u32::try_from(self.calls.len()).expect("a connection's calls are numbered in 32 bits")
    }

    /// The call a session id names, if it is still in use.
    fn call_of(&self, session_id: u128) -> Option<u32> {
        #[expect(clippy::cast_possible_truncation, reason = "the index is the low 32 bits")]
        let index = session_id as u32;
        let call = self.calls.get(index as usize)?;
        (call.in_use && call.session_id == session_id).then_some(index)
    }

    /// The call an in-flight operation belongs to.
    fn in_flight_call(&self, op: &Op) -> Option<u32> {
        let index = self.call_of(op.reference)?;
        self.calls[index as usize].in_flight.then_some(index)
    }

    /// A reply (any code) to one of this connection's session events.
    pub(crate) fn on_reply(&mut self, op: &Op, result: &OpResult, grant: Grant, model: &Model) {
        let Some(index) = self.in_flight_call(op) else {
            return;
        };
        let call = &mut self.calls[index as usize];
        call.in_flight = false;
        let next = call.next;
        let code = result.code;
        if not_executed(code) {
            self.resend(index);
            return;
        }
        let debits = matches!(
            ResultCode::from_u16(code),
            Some(
                ResultCode::Approved
                    | ResultCode::SessionUsageCapped
                    | ResultCode::SessionExpiredCharged
            )
        );
        if debits && next != Next::Start {
            call.debited_won += result.amount_won;
        }
        match next {
            Next::Start => self.on_start(index, code, grant, model),
            Next::Update { used_s } => self.on_update(index, used_s, code, debits, grant, model),
            Next::End { used_s } => self.on_end(index, used_s, code, debits, model),
        }
    }

    fn on_start(&mut self, index: u32, code: u16, grant: Grant, model: &Model) {
        let call = &mut self.calls[index as usize];
        if code == ResultCode::Approved.as_u16() {
            call.live = true;
            model.calls_live_add(1);
            call.granted_s = grant.granted_s;
            if grant.final_unit != FINAL_UNIT_NONE {
                call.limit_s = call.limit_s.min(grant.granted_s.max(1));
            }
            self.schedule_next(index, model);
        } else {
            // Declined (no money, limits, tariff; SESSION_EXISTS would be another call's id, as
            // a START is only sent again when it did not run): a new call on another card a
            // little later.
            let due_s = call.start_s + DECLINE_RETRY_S;
            self.finish(index, model);
            if self.phase != Phase::Drain {
                self.new_call(due_s, None, model);
            }
        }
    }

    fn on_update(
        &mut self,
        index: u32,
        used_s: u32,
        code: u16,
        debits: bool,
        grant: Grant,
        model: &Model,
    ) {
        let call = &mut self.calls[index as usize];
        if debits {
            call.reported_s = call.reported_s.max(used_s);
            if !call.live && code != ResultCode::SessionExpiredCharged.as_u16() {
                // Its START's reply was lost, but the session is there.
                call.live = true;
                model.calls_live_add(1);
            }
        }
        match ResultCode::from_u16(code) {
            Some(ResultCode::Approved) => {
                call.granted_s = grant.granted_s;
                if grant.final_unit != FINAL_UNIT_NONE {
                    call.limit_s = call.limit_s.min(used_s.saturating_add(grant.granted_s));
                }
                self.schedule_next(index, model);
            }
            Some(ResultCode::SessionUsageCapped) => {
                // The card could not pay for all of it: no more grant, end at once.
                call.unchecked = true;
                call.limit_s = call.limit_s.min(call.reported_s);
                self.schedule_next(index, model);
            }
            Some(ResultCode::SessionExpiredCharged | ResultCode::SessionNotFound) => {
                // The session is gone (expired, or its START never ran): a new call replaces it.
                call.unchecked = true;
                let due_s = call.due_s;
                self.finish(index, model);
                if self.phase != Phase::Drain {
                    self.new_call(due_s, None, model);
                }
            }
            Some(ResultCode::SessionSequenceStale) => self.schedule_next(index, model),
            _ => {
                // Any other refusal ends the call.
                call.unchecked = true;
                call.limit_s = call.limit_s.min(call.reported_s);
                self.schedule_next(index, model);
            }
        }
    }

    fn on_end(&mut self, index: u32, used_s: u32, code: u16, debits: bool, model: &Model) {
        if code == ResultCode::SessionSequenceStale.as_u16() {
            self.resend(index);
            return;
        }
        let call = &mut self.calls[index as usize];
        if debits {
            call.reported_s = call.reported_s.max(used_s);
        }
        let checked = code == ResultCode::Approved.as_u16() && !call.unchecked;
        if let (true, Some(tariff)) = (checked, self.params.tariff) {
            self.counters.tariff_checked += 1;
            let expected_won = tariff.cost_won(call.reported_s);
            if call.debited_won != expected_won {
                self.counters.tariff_mismatches += 1;
                model.record_anomaly(format!(
                    "call {:032x} on card #{}: {} s debited {} won in all, the tariff {tariff} says {expected_won} won",
                    call.session_id, call.card, call.reported_s, call.debited_won
                ));
            }
        }
        self.finish(index, model);
    }

    /// A reply that never came (the connection failed): carry on as if the event ran; an END is
    /// sent again (the switch answers SESSION_NOT_FOUND if the first one ended the session).
    pub(crate) fn on_lost(&mut self, op: &Op, model: &Model) {
        let Some(index) = self.in_flight_call(op) else {
            return;
        };
        let call = &mut self.calls[index as usize];
        call.in_flight = false;
        call.unchecked = true;
        match call.next {
            Next::Start => self.schedule_next(index, model),
            Next::Update { used_s } => {
                call.reported_s = call.reported_s.max(used_s);
                self.schedule_next(index, model);
            }
            Next::End { .. } => self.resend(index),
        }
    }

    /// An event that was not executed (or not sent): the same event again, a little later.
    pub(crate) fn on_not_executed(&mut self, op: &Op) {
        if let Some(index) = self.in_flight_call(op) {
            self.calls[index as usize].in_flight = false;
            self.resend(index);
        }
    }

    fn resend(&mut self, index: u32) {
        let call = &self.calls[index as usize];
        let due_s = match self.phase {
            Phase::Ramp => call.due_s,
            _ => call.due_s.max(self.clock_s) + RESEND_DELAY_S,
        };
        self.queue(index, call.next, due_s);
    }

    /// Queues a call's next report: an UPDATE one interval (or the grant, if shorter) after the
    /// last report, or the END when the call's length is reached.
    fn schedule_next(&mut self, index: u32, model: &Model) {
        let interval_s = self.params.update_interval_s.max(1);
        let call = &self.calls[index as usize];
        let step_s = if call.granted_s > 0 { interval_s.min(call.granted_s) } else { interval_s };
        let next_used_s = call.reported_s.saturating_add(step_s);
        if self.phase == Phase::Drain {
            let used_s = self.used_by_clock(index);
            self.end_call(index, used_s, model);
        } else if call.ending || next_used_s >= call.limit_s {
            let used_s = call.limit_s.max(call.reported_s);
            self.end_call(index, used_s, model);
        } else {
            let due_s = call.start_s + i64::from(next_used_s);
            self.queue(index, Next::Update { used_s: next_used_s }, due_s);
        }
    }

    /// The seconds a call has used by the clock (within its limit, at least what it reported).
    fn used_by_clock(&self, index: u32) -> u32 {
        let call = &self.calls[index as usize];
        let so_far_s = u32::try_from((self.clock_s - call.start_s).max(0)).unwrap_or(u32::MAX);
        so_far_s.min(call.limit_s).max(call.reported_s)
    }

    /// Queues the END and, the first time, starts the call that replaces this one.
    fn end_call(&mut self, index: u32, used_s: u32, model: &Model) {
        let call = &mut self.calls[index as usize];
        let due_s = call.start_s + i64::from(used_s);
        let replace = !call.ending && self.phase != Phase::Drain;
        call.ending = true;
        self.queue(index, Next::End { used_s }, due_s);
        if replace {
            self.new_call(due_s, None, model);
        }
    }

    /// Frees a call whose session is over (or never was).
    fn finish(&mut self, index: u32, model: &Model) {
        let call = &mut self.calls[index as usize];
        if call.live {
            model.calls_live_add(-1);
        }
        model.remove_call(call.card);
        call.in_use = false;
        call.live = false;
        call.version = call.version.wrapping_add(1);
        self.free.push(index);
        self.open -= 1;
    }

    /// A SESSION_NOTICE push: counted; an abort (the card was blocked) ends the call now.
    pub(crate) fn on_notice(&mut self, notice: &SessionNotice, model: &Model) {
        let kind = usize::from(notice.kind);
        self.counters.notices[if kind < self.counters.notices.len() { kind } else { 0 }] += 1;
        if notice.kind != NOTICE_ABORT {
            return;
        }
        let Some(index) = self.call_of(notice.session_id) else {
            return;
        };
        let clock_s = self.clock_s;
        let call = &mut self.calls[index as usize];
        let so_far_s = u32::try_from((clock_s - call.start_s).max(0)).unwrap_or(u32::MAX);
        call.limit_s = call.limit_s.min(so_far_s.max(call.reported_s));
        if !call.in_flight && matches!(call.next, Next::Update { .. }) {
            self.schedule_next(index, model);
        }
    }

    /// Ends the run: STARTs not yet sent are dropped, every other call gets its END now (with
    /// the seconds it has used by the clock), and no new calls start.
    pub(crate) fn begin_drain(&mut self, model: &Model) {
        self.phase = Phase::Drain;
        for queue in &mut self.queues {
            queue.clear();
        }
        for index in 0..self.call_slots() {
            let call = &self.calls[index as usize];
            if !call.in_use || call.in_flight {
                continue;
            }
            if !call.start_sent {
                self.finish(index, model);
                continue;
            }
            let used_s = match call.next {
                Next::End { used_s } => used_s,
                _ => self.used_by_clock(index),
            };
            self.calls[index as usize].ending = true;
            self.queue(index, Next::End { used_s }, self.clock_s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::DistSpec;
    use crate::workload::tests::cards;
    use pinswitch_protocol::FINAL_UNIT_TERMINATE;

    /// Every card starts with 100,000 won.
    fn model(cards: &[CardRecord]) -> Model {
        Model::new(cards.iter().map(|_| 100_000))
    }

    fn params(calls: u64, length: CallLength) -> Arc<CallParams> {
        Arc::new(CallParams {
            calls,
            update_interval_s: 60,
            length,
            category: 2,
            destination: b"01012345678".to_vec(),
            calls_per_card_max: 4,
            send_password: true,
            tariff: Some("10,12,6,0".parse().expect("tariff")),
        })
    }

    fn approved(amount_won: u64) -> OpResult {
        OpResult { code: 0, amount_won, ..OpResult::default() }
    }

    fn grant(granted_s: u32) -> Grant {
        Grant { granted_s, final_unit: FINAL_UNIT_NONE }
    }

    /// Answers a frame like a switch with plenty of money and the tariff 10,12,6,0 would.
    fn answer(calls: &mut CallGen, frame: &Frame, model: &Model, charged: &mut Vec<(u128, u32)>) {
        let tariff: TariffSpec = "10,12,6,0".parse().expect("tariff");
        for (index, op) in frame.ops.iter().enumerate() {
            let (used_s, granted_s) = match &frame.events {
                Events::SessionStart(_) => (0, 60),
                Events::SessionUpdate(events) => (events[index].used_total_s, 60),
                Events::SessionEnd(events) => (events[index].used_total_s, 0),
                other => panic!("not a session frame: {other:?}"),
            };
            let before =
                charged.iter().find(|(id, _)| *id == op.reference).map_or(0, |(_, used)| *used);
            let debit = tariff.cost_won(used_s) - tariff.cost_won(before);
            charged.retain(|(id, _)| *id != op.reference);
            charged.push((op.reference, used_s));
            let result = approved(debit);
            model.apply_reply(op, &result);
            calls.on_reply(op, &result, grant(granted_s), model);
        }
    }

    #[test]
    fn lengths_and_tariffs_parse_print_and_price() {
        for text in ["exp:120", "fixed:180", "uniform:30,300"] {
            let length: CallLength = text.parse().expect("parses");
            assert_eq!(length.to_string(), text);
        }
        for bad in ["exp:0", "fixed:x", "uniform:300,30", "normal:5", "fixed:2000000"] {
            assert!(bad.parse::<CallLength>().is_err(), "{bad}");
        }
        let mut rng = Rng::new(3);
        let exp = CallLength::Exp { mean_s: 120 };
        let samples: Vec<u32> = (0..20_000).map(|_| exp.sample(&mut rng)).collect();
        let mean = samples.iter().map(|s| f64::from(*s)).sum::<f64>() / samples.len() as f64;
        assert!((115.0..126.0).contains(&mean), "mean {mean}");
        assert!(samples.iter().all(|s| *s >= 1));
        let tariff: TariffSpec = "10,12,6".parse().expect("parses");
        assert_eq!(tariff.to_string(), "10,12,6,0");
        assert_eq!(tariff.cost_won(0), 0);
        assert_eq!(tariff.cost_won(1), 22);
        assert_eq!(tariff.cost_won(60), 130);
        assert_eq!(tariff.cost_won(61), 142);
        let minutes: TariffSpec = "50,300,60,60".parse().expect("parses");
        assert_eq!(minutes.cost_won(1), 350);
        assert_eq!(minutes.cost_won(121), 950);
        assert!("1,2".parse::<TariffSpec>().is_err());
        assert!("1,2,0".parse::<TariffSpec>().is_err());
        assert!("1,2,6,7".parse::<TariffSpec>().is_err());
    }

    #[test]
    fn calls_ramp_run_and_drain_with_rising_sequences_and_constant_concurrency() {
        let cards = cards(50);
        let model = model(&cards);
        let picker = CardPicker::new(DistSpec::Uniform, 50);
        let mut calls =
            CallGen::new(params(40, CallLength::Exp { mean_s: 120 }), 16, picker, 7, 0, 1, &model);
        let mut charged = Vec::new();
        // The ramp sends every call's START, nothing else.
        let mut ramp_starts = 0;
        while let Some(frame) = calls.next_frame(&cards) {
            assert!(matches!(frame.events, Events::SessionStart(_)));
            ramp_starts += frame.ops.len();
            answer(&mut calls, &frame, &model, &mut charged);
        }
        assert_eq!(ramp_starts, 40);
        assert_eq!(model.calls_live(), 40);
        calls.begin_run();
        let mut last_seq: std::collections::HashMap<u128, u32> = Default::default();
        let (mut updates, mut ends, mut starts) = (0, 0, 0);
        let mut last_clock = 0;
        for _ in 0..400 {
            let frame = calls.next_frame(&cards).expect("a run always has something due");
            match &frame.events {
                Events::SessionStart(events) => {
                    starts += events.len();
                    for event in events {
                        assert!(!last_seq.contains_key(&event.session_id));
                        assert_eq!(event.destination, b"01012345678");
                        assert_eq!(event.category, 2);
                    }
                }
                Events::SessionUpdate(events) => {
                    updates += events.len();
                    for event in events {
                        let seq = last_seq.entry(event.session_id).or_insert(0);
                        assert!(event.seq > *seq);
                        *seq = event.seq;
                        assert_eq!(event.used_total_s % 60, 0, "reports every 60 s");
                    }
                }
                Events::SessionEnd(events) => {
                    ends += events.len();
                    for event in events {
                        let seq = last_seq.entry(event.session_id).or_insert(0);
                        assert!(event.seq > *seq);
                        *seq = u32::MAX;
                    }
                }
                other => panic!("{other:?}"),
            }
            answer(&mut calls, &frame, &model, &mut charged);
            assert!(calls.clock_s() >= last_clock);
            last_clock = calls.clock_s();
            // Every ended call was replaced at once.
            assert_eq!(calls.open_calls(), 40 + calls_ending(&calls));
        }
        assert!(starts > 50 && updates > 50 && ends > 50, "{starts} {updates} {ends}");
        // Ends and starts balance; the clock ran over many call lengths.
        assert!(starts.abs_diff(ends) <= 40);
        assert!(last_clock > 600, "clock {last_clock}");
        // Every ended call's debits matched the tariff.
        assert!(calls.counters.tariff_checked as usize >= ends - 40);
        assert_eq!(calls.counters.tariff_mismatches, 0);
        assert_eq!(model.anomalies(), 0);
        // The drain ends every call, starts none.
        calls.begin_drain(&model);
        while let Some(frame) = calls.next_frame(&cards) {
            assert!(matches!(frame.events, Events::SessionEnd(_)));
            answer(&mut calls, &frame, &model, &mut charged);
        }
        assert_eq!(calls.open_calls(), 0);
        assert_eq!(model.calls_live(), 0);
        assert!((0..50).all(|card| model.calls_on(card) == 0));
        // The model moved by exactly what the replies said.
        let debited: i64 = (0..50).map(|card| 100_000 - model.balance_won(card)).sum();
        let tariff: TariffSpec = "10,12,6,0".parse().expect("tariff");
        let billed: u64 = charged.iter().map(|(_, used)| tariff.cost_won(*used)).sum();
        assert_eq!(debited as u64, billed);
    }

    /// With replies coming back several frames late (a pipeline), the sessions live at the
    /// switch stay at N: a replacement START follows the END it replaces within a frame or two.
    #[test]
    fn concurrency_holds_with_pipelined_replies() {
        let cards = cards(5_000);
        let model = Model::new(cards.iter().map(|_| 1_000_000));
        let params = Arc::new(CallParams {
            tariff: None,
            ..(*params(5_000, CallLength::Exp { mean_s: 120 })).clone()
        });
        let picker = CardPicker::new(DistSpec::Uniform, 5_000);
        let mut calls = CallGen::new(params, 64, picker, 3, 0, 1, &model);
        let answer_all = |calls: &mut CallGen, frame: &Frame| {
            for op in &frame.ops {
                calls.on_reply(op, &approved(0), grant(60), &model);
            }
        };
        while let Some(frame) = calls.next_frame(&cards) {
            answer_all(&mut calls, &frame);
        }
        calls.begin_run();
        let mut in_flight: std::collections::VecDeque<Frame> = Default::default();
        let (mut low, mut high) = (i64::MAX, 0);
        for step in 0..2_000 {
            if let Some(frame) = calls.next_frame(&cards) {
                in_flight.push_back(frame);
            }
            if (in_flight.len() >= 8 || step % 50 == 49)
                && let Some(frame) = in_flight.pop_front()
            {
                answer_all(&mut calls, &frame);
            }
            if step >= 200 {
                low = low.min(model.calls_live());
                high = high.max(model.calls_live());
            }
        }
        assert!(calls.clock_s() > 200, "clock {}", calls.clock_s());
        assert!(low >= 4_750 && high <= 5_250, "live {low}..{high} of 5,000");
    }

    fn calls_ending(calls: &CallGen) -> usize {
        calls.calls.iter().filter(|call| call.in_use && call.ending).count()
    }

    #[test]
    fn declines_lost_replies_final_units_and_stale_sequences() {
        let cards = cards(10);
        let model = model(&cards);
        let picker = CardPicker::new(DistSpec::Uniform, 10);
        let params = Arc::new(CallParams {
            tariff: None,
            ..(*params(3, CallLength::Fixed { length_s: 600 })).clone()
        });
        let mut calls = CallGen::new(params, 8, picker, 1, 0, 1, &model);
        let ramp = calls.next_frame(&cards).expect("ramp");
        assert_eq!(ramp.ops.len(), 3);
        let [declined_op, lost_op, final_op] = [ramp.ops[0], ramp.ops[1], ramp.ops[2]];
        // One START declined, one whose reply is lost, one approved with a final 90 s grant.
        let declined =
            OpResult { code: ResultCode::InsufficientFunds.as_u16(), ..OpResult::default() };
        calls.on_reply(&declined_op, &declined, Grant::default(), &model);
        calls.on_lost(&lost_op, &model);
        let last_grant = Grant { granted_s: 90, final_unit: FINAL_UNIT_TERMINATE };
        calls.on_reply(&final_op, &approved(0), last_grant, &model);
        assert_eq!(model.calls_live(), 1);
        // The declined call's replacement, on a new card, may still be due in the ramp.
        while let Some(frame) = calls.next_frame(&cards) {
            assert!(matches!(frame.events, Events::SessionStart(_)));
            for op in &frame.ops {
                assert_ne!(op.reference, declined_op.reference);
                calls.on_reply(op, &approved(0), grant(60), &model);
            }
        }
        calls.begin_run();
        let stale =
            OpResult { code: ResultCode::SessionSequenceStale.as_u16(), ..OpResult::default() };
        let mut stale_sent = false;
        let mut ended: std::collections::HashMap<u128, u32> = Default::default();
        for _ in 0..200 {
            let Some(frame) = calls.next_frame(&cards) else {
                break;
            };
            for (index, op) in frame.ops.iter().enumerate() {
                match &frame.events {
                    Events::SessionStart(_) => {
                        calls.on_reply(op, &approved(0), grant(60), &model);
                    }
                    Events::SessionUpdate(events) => {
                        assert!(events[index].seq >= 1);
                        if op.reference == lost_op.reference && !stale_sent {
                            // A stale report changes nothing; the call reports again, seq higher.
                            stale_sent = true;
                            calls.on_reply(op, &stale, Grant::default(), &model);
                        } else {
                            calls.on_reply(op, &approved(130), grant(60), &model);
                        }
                    }
                    Events::SessionEnd(events) => {
                        ended.insert(op.reference, events[index].used_total_s);
                        calls.on_reply(op, &approved(10), Grant::default(), &model);
                    }
                    other => panic!("{other:?}"),
                }
            }
            if ended.contains_key(&final_op.reference) && ended.contains_key(&lost_op.reference) {
                break;
            }
        }
        assert!(stale_sent);
        // The final grant cut the call at 90 s; the call whose START reply was lost ran its 600 s.
        assert_eq!(ended.get(&final_op.reference), Some(&90));
        assert_eq!(ended.get(&lost_op.reference), Some(&600));
    }
}
