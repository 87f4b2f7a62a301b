//! Workloads: what each frame of a run carries. `sale` is single-phase debits (the hot path of a
//! payment gateway); `recharge` is CARD_LOAD of one recharge unit; `gateway` is what a payment
//! gateway sends: new frames are AUTHORIZE (75%) or SALE (25%); each approved hold gets one
//! follow-up (full capture 60%, partial final capture 15%, void 15%, reverse 10%), a quarter of
//! the captures a partial refund, and of the gateway's approved sales a tenth are reversed and
//! another tenth partly refunded;
//! `mix:sale=8,gateway=1,recharge=1` picks one of those per frame by weight; `calls` is a call
//! switch's charging sessions (see `calls.rs`) and runs alone. A frame carries one message type
//! and `batch` events (follow-up frames, and call frames, may carry fewer).
//!
//! Card choice: the k-th new operation of a connection draws its card from a random stream fixed
//! by (seed, connection), so runs are reproducible. A drawn card the model says cannot afford the
//! operation (or would pass the balance cap) is redrawn a few times, so long runs keep most
//! operations approvable; that redraw depends on replies, so reproducibility is per seed up to it.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use pinswitch_protocol::{
    Authorize, Capture, CardLoad, Category, Funding, OpResult, Refund, Reverse, Sale, SessionEnd,
    SessionNotice, SessionStart, SessionUpdate, Void, new_op_id,
};

use crate::calls::{CallGen, Grant};
use crate::cards::CardRecord;
use crate::dist::CardPicker;
use crate::model::{Model, Op, OpKind};
use crate::rng::Rng;

/// One workload family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leaf {
    Sale,
    Gateway,
    Recharge,
    /// Charging sessions of concurrent calls; not part of mixes.
    Calls,
}

impl Leaf {
    fn name(self) -> &'static str {
        match self {
            Leaf::Sale => "sale",
            Leaf::Gateway => "gateway",
            Leaf::Recharge => "recharge",
            Leaf::Calls => "calls",
        }
    }

    fn parse(text: &str) -> Option<Leaf> {
        match text.trim() {
            "sale" => Some(Leaf::Sale),
            "gateway" => Some(Leaf::Gateway),
            "recharge" => Some(Leaf::Recharge),
            "calls" => Some(Leaf::Calls),
            _ => None,
        }
    }
}

/// A workload as given on the command line: families with weights (one family = weight 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkloadSpec {
    pub parts: Vec<(Leaf, u32)>,
}

impl FromStr for WorkloadSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<WorkloadSpec, String> {
        let text = text.trim();
        if let Some(leaf) = Leaf::parse(text) {
            return Ok(WorkloadSpec { parts: vec![(leaf, 1)] });
        }
        let usage = "use sale, gateway, recharge, calls or mix:sale=8,gateway=1,recharge=1";
        let Some(list) = text.strip_prefix("mix:") else {
            return Err(format!("unknown workload {text:?}: {usage}"));
        };
        let mut parts: Vec<(Leaf, u32)> = Vec::new();
        for item in list.split(',') {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("mix part {item:?} needs NAME=WEIGHT; {usage}"))?;
            let leaf =
                Leaf::parse(name).ok_or_else(|| format!("unknown workload {name:?}; {usage}"))?;
            if leaf == Leaf::Calls {
                return Err("calls runs alone, not in a mix".into());
            }
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {weight:?} is not a whole number"))?;
            if parts.iter().any(|(known, _)| *known == leaf) {
                return Err(format!("{} appears twice in the mix", leaf.name()));
            }
            if weight > 0 {
                parts.push((leaf, weight));
            }
        }
        if parts.is_empty() {
            return Err("a mix needs at least one part with a positive weight".into());
        }
        Ok(WorkloadSpec { parts })
    }
}

impl fmt::Display for WorkloadSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(leaf, _)] = self.parts.as_slice() {
            return write!(f, "{}", leaf.name());
        }
        write!(f, "mix:")?;
        for (index, (leaf, weight)) in self.parts.iter().enumerate() {
            if index > 0 {
                write!(f, ",")?;
            }
            write!(f, "{}={weight}", leaf.name())?;
        }
        Ok(())
    }
}

impl WorkloadSpec {
    /// The `calls` workload (charging sessions).
    pub(crate) fn is_calls(&self) -> bool {
        self.parts.iter().any(|(leaf, _)| *leaf == Leaf::Calls)
    }
}

/// Amounts and sizes of generated operations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkloadParams {
    pub batch: usize,
    /// SALE and AUTHORIZE amounts are uniform in `sale_min_won..=sale_max_won`.
    pub sale_min_won: u64,
    pub sale_max_won: u64,
    /// Each CARD_LOAD adds this (a multiple of the recharge unit).
    pub load_amount_won: u64,
    /// Loads that would take a card's expected balance past this are redrawn.
    pub balance_cap_won: u64,
    /// Hold lifetime asked for by AUTHORIZE.
    pub hold_ttl_s: u32,
}

/// The events of one frame.
#[derive(Clone, Debug)]
pub(crate) enum Events {
    Load(Vec<CardLoad>),
    Sale(Vec<Sale>),
    Authorize(Vec<Authorize>),
    Capture(Vec<Capture>),
    Void(Vec<Void>),
    Reverse(Vec<Reverse>),
    Refund(Vec<Refund>),
    SessionStart(Vec<SessionStart>),
    SessionUpdate(Vec<SessionUpdate>),
    SessionEnd(Vec<SessionEnd>),
}

impl Events {
    /// The message type's name, as reports show it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Events::Load(_) => "CARD_LOAD",
            Events::Sale(_) => "SALE",
            Events::Authorize(_) => "AUTHORIZE",
            Events::Capture(_) => "CAPTURE",
            Events::Void(_) => "VOID",
            Events::Reverse(_) => "REVERSE",
            Events::Refund(_) => "REFUND",
            Events::SessionStart(_) => "SESSION_START",
            Events::SessionUpdate(_) => "SESSION_UPDATE",
            Events::SessionEnd(_) => "SESSION_END",
        }
    }
}

/// A frame to send: its events and, index for index, the operations they are.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub events: Events,
    pub ops: Vec<Op>,
}

/// Redraws allowed when a drawn card cannot take the operation.
const REDRAWS_MAX: usize = 4;
/// A follow-up waits at most this long for its frame to fill.
const FOLLOW_UP_WAIT_MAX: Duration = Duration::from_millis(100);

/// Queued follow-ups of one kind.
#[derive(Default, Debug)]
struct FollowUps {
    ops: VecDeque<Op>,
    oldest_at: Option<Instant>,
}

impl FollowUps {
    fn push(&mut self, op: Op, now: Instant) {
        if self.ops.is_empty() {
            self.oldest_at = Some(now);
        }
        self.ops.push_back(op);
    }

    fn ready(&self, batch: usize, now: Instant) -> bool {
        self.ops.len() >= batch
            || self.oldest_at.is_some_and(|oldest| now.duration_since(oldest) >= FOLLOW_UP_WAIT_MAX)
    }

    fn take(&mut self, batch: usize, now: Instant) -> Vec<Op> {
        let count = self.ops.len().min(batch);
        let taken: Vec<Op> = self.ops.drain(..count).collect();
        self.oldest_at = if self.ops.is_empty() { None } else { Some(now) };
        taken
    }
}

/// Makes the frames of one connection.
pub(crate) struct Generator {
    parts: Vec<(Leaf, u32)>,
    weight_total: u64,
    params: WorkloadParams,
    picker: CardPicker,
    /// Draws cards only, so card choice does not depend on amounts or follow-ups.
    card_rng: Rng,
    /// Amounts, kinds, merchants.
    rng: Rng,
    /// Capture, void, reverse-authorize, refund and reverse-sale queues, in that order.
    follow_ups: [FollowUps; 5],
    /// The `calls` workload's sessions (then every frame comes from them).
    calls: Option<CallGen>,
    /// Buffers of answered frames (`recycle`), refilled by the next frames instead of
    /// allocating: with one event per frame an operation list, an event list and a password
    /// copy per frame would otherwise be allocated and freed a few hundred thousand times a
    /// second. Kept: the operation and event lists, and the events with their passwords.
    spare_ops: Vec<Op>,
    spare_sales: Vec<Sale>,
    spare_authorizes: Vec<Authorize>,
}

fn follow_up_slot(kind: OpKind) -> Option<usize> {
    match kind {
        OpKind::Capture => Some(0),
        OpKind::Void => Some(1),
        OpKind::ReverseAuthorize => Some(2),
        OpKind::Refund => Some(3),
        OpKind::ReverseSale => Some(4),
        _ => None,
    }
}

impl Generator {
    pub(crate) fn new(
        spec: &WorkloadSpec,
        params: WorkloadParams,
        picker: CardPicker,
        seed: u64,
        connection: u64,
    ) -> Generator {
        Generator {
            parts: spec.parts.clone(),
            weight_total: spec
                .parts
                .iter()
                .map(|(_, weight)| u64::from(*weight))
                .sum::<u64>()
                .max(1),
            params,
            picker,
            card_rng: Rng::stream(seed, connection * 2),
            rng: Rng::stream(seed, connection * 2 + 1),
            follow_ups: Default::default(),
            calls: None,
            spare_ops: Vec::new(),
            spare_sales: Vec::new(),
            spare_authorizes: Vec::new(),
        }
    }

    /// A generator whose frames are the `calls` workload's session events.
    pub(crate) fn for_calls(params: WorkloadParams, calls: CallGen) -> Generator {
        Generator {
            parts: vec![(Leaf::Calls, 1)],
            weight_total: 1,
            params,
            picker: CardPicker::new(crate::dist::DistSpec::Uniform, 1),
            card_rng: Rng::new(0),
            rng: Rng::new(0),
            follow_ups: Default::default(),
            calls: Some(calls),
            spare_ops: Vec::new(),
            spare_sales: Vec::new(),
            spare_authorizes: Vec::new(),
        }
    }

    /// Takes back the buffers of a frame that is done with (answered, failed or never sent):
    /// its operations and, when they came back, its events. The next frames refill them.
    pub(crate) fn recycle(&mut self, events: Option<Events>, ops: Vec<Op>) {
        // One spare of each is enough: a connection sends about one frame per frame answered.
        if ops.capacity() > self.spare_ops.capacity() {
            self.spare_ops = ops;
        }
        match events {
            Some(Events::Sale(sales)) if sales.capacity() > self.spare_sales.capacity() => {
                self.spare_sales = sales;
            }
            Some(Events::Authorize(authorizes))
                if authorizes.capacity() > self.spare_authorizes.capacity() =>
            {
                self.spare_authorizes = authorizes;
            }
            _ => {}
        }
    }

    pub(crate) fn calls(&self) -> Option<&CallGen> {
        self.calls.as_ref()
    }

    pub(crate) fn calls_mut(&mut self) -> Option<&mut CallGen> {
        self.calls.as_mut()
    }

    /// The next frame of the workload; `None` only for calls when every call waits for a reply
    /// (or, in the ramp, when every START is out).
    pub(crate) fn next_frame(
        &mut self,
        now: Instant,
        cards: &[CardRecord],
        model: &Model,
    ) -> Option<Frame> {
        if let Some(calls) = &mut self.calls {
            return calls.next_frame(cards);
        }
        let leaf = self.pick_leaf();
        let ops = match leaf {
            Leaf::Sale => self.new_ops(OpKind::Sale, false, model),
            Leaf::Recharge => self.new_ops(OpKind::Load, false, model),
            Leaf::Gateway => {
                let batch = self.params.batch;
                match self.follow_ups.iter().position(|queue| queue.ready(batch, now)) {
                    Some(slot) => self.follow_ups[slot].take(batch, now),
                    None if self.rng.percent(25) => self.new_ops(OpKind::Sale, true, model),
                    None => self.new_ops(OpKind::Authorize, true, model),
                }
            }
            Leaf::Calls => unreachable!("calls frames come from the call generator"),
        };
        Some(self.build_frame(ops, cards))
    }

    /// Follow-ups still queued (sent by `drain_frame` at the end of a run); for calls, the calls
    /// not yet ended.
    pub(crate) fn follow_ups_pending(&self) -> usize {
        if let Some(calls) = &self.calls {
            return calls.open_calls();
        }
        self.follow_ups.iter().map(|queue| queue.ops.len()).sum()
    }

    /// Prepares the end of a run: calls get their ENDs queued (follow-ups need nothing).
    pub(crate) fn begin_drain(&mut self, model: &Model) {
        if let Some(calls) = &mut self.calls {
            calls.begin_drain(model);
        }
    }

    /// A frame of whatever follow-ups remain, regardless of age (for calls: ENDs); `None` when
    /// none remain (or, for calls, none can be sent before a reply).
    pub(crate) fn drain_frame(&mut self, now: Instant, cards: &[CardRecord]) -> Option<Frame> {
        if let Some(calls) = &mut self.calls {
            return calls.next_frame(cards);
        }
        let batch = self.params.batch;
        let slot = self.follow_ups.iter().position(|queue| !queue.ops.is_empty())?;
        let ops = self.follow_ups[slot].take(batch, now);
        Some(self.build_frame(ops, cards))
    }

    /// An answered operation: follow-ups are queued (or re-queued when it did not run); calls
    /// move on to their next event.
    pub(crate) fn on_reply(
        &mut self,
        op: &Op,
        result: &OpResult,
        grant: Option<&Grant>,
        now: Instant,
        model: &Model,
    ) {
        if let Some(calls) = &mut self.calls {
            calls.on_reply(op, result, grant.copied().unwrap_or_default(), model);
        } else if crate::model::not_executed(result.code) {
            self.on_not_executed(op, now);
        } else {
            self.on_result(op, result.code, now);
        }
    }

    /// Operations whose reply was lost with the connection: calls carry on (an END is sent
    /// again); gateway follow-ups are not retried (the INQUIRY at the end settles their holds).
    pub(crate) fn on_lost(&mut self, ops: &[Op], model: &Model) {
        if let Some(calls) = &mut self.calls {
            for op in ops {
                calls.on_lost(op, model);
            }
        }
    }

    /// A SESSION_NOTICE push.
    pub(crate) fn on_notice(&mut self, notice: &SessionNotice, model: &Model) {
        if let Some(calls) = &mut self.calls {
            calls.on_notice(notice, model);
        }
    }

    /// Queues the follow-ups an answered operation calls for.
    pub(crate) fn on_result(&mut self, op: &Op, code: u16, now: Instant) {
        if code != 0 {
            return;
        }
        match op.kind {
            OpKind::Authorize => {
                let roll = self.rng.below(100);
                let hold = Op { op_id: 0, reference: op.op_id, captured_won: 0, ..*op };
                let follow_up = if roll < 60 {
                    Op { kind: OpKind::Capture, captured_won: op.amount_won, ..hold }
                } else if roll < 75 {
                    let captured_won = self.rng.range_inclusive(1, op.amount_won.max(1));
                    Op { kind: OpKind::Capture, captured_won, ..hold }
                } else if roll < 90 {
                    Op { kind: OpKind::Void, ..hold }
                } else {
                    Op { kind: OpKind::ReverseAuthorize, ..hold }
                };
                self.queue(follow_up, now);
            }
            // A refund names the CAPTURE (the switch refunds against its authorize's captures).
            OpKind::Capture if op.captured_won > 0 && self.rng.percent(25) => {
                let refund = Op {
                    kind: OpKind::Refund,
                    op_id: 0,
                    amount_won: self.rng.range_inclusive(1, op.captured_won),
                    captured_won: 0,
                    reference: op.op_id,
                    card: op.card,
                    gateway: true,
                };
                self.queue(refund, now);
            }
            // Gateway sales: a tenth are reversed, a tenth partly refunded.
            OpKind::Sale if op.gateway => {
                let roll = self.rng.below(100);
                let follow_up = Op { op_id: 0, reference: op.op_id, captured_won: 0, ..*op };
                if roll < 10 {
                    self.queue(Op { kind: OpKind::ReverseSale, ..follow_up }, now);
                } else if roll < 20 {
                    let amount_won = self.rng.range_inclusive(1, op.amount_won.max(1));
                    self.queue(Op { kind: OpKind::Refund, amount_won, ..follow_up }, now);
                }
            }
            _ => {}
        }
    }

    /// An operation that was not executed: follow-ups go back in the queue (they get a fresh op
    /// id when sent again); new operations are simply dropped.
    pub(crate) fn on_not_executed(&mut self, op: &Op, now: Instant) {
        if let Some(calls) = &mut self.calls {
            calls.on_not_executed(op);
            return;
        }
        if follow_up_slot(op.kind).is_some() {
            self.queue(Op { op_id: 0, ..*op }, now);
        }
    }

    fn queue(&mut self, op: Op, now: Instant) {
        if let Some(slot) = follow_up_slot(op.kind) {
            self.follow_ups[slot].push(op, now);
        }
    }

    fn pick_leaf(&mut self) -> Leaf {
        if let [(leaf, _)] = self.parts.as_slice() {
            return *leaf;
        }
        let mut roll = self.rng.below(self.weight_total);
        for (leaf, weight) in &self.parts {
            if roll < u64::from(*weight) {
                return *leaf;
            }
            roll -= u64::from(*weight);
        }
        self.parts[0].0
    }

    /// `batch` new operations of `kind` (sale, authorize or load) on drawn cards.
    fn new_ops(&mut self, kind: OpKind, gateway: bool, model: &Model) -> Vec<Op> {
        let params = self.params;
        let mut ops = std::mem::take(&mut self.spare_ops);
        ops.clear();
        ops.extend((0..params.batch).map(|_| {
            let amount_won = match kind {
                OpKind::Load => params.load_amount_won,
                _ => self.rng.range_inclusive(params.sale_min_won, params.sale_max_won),
            };
            let amount = i64::try_from(amount_won).unwrap_or(i64::MAX);
            let cap = i64::try_from(params.balance_cap_won).unwrap_or(i64::MAX);
            let fits = |card: u32| match kind {
                OpKind::Load => model.balance_won(card).saturating_add(amount) <= cap,
                _ => model.available_won(card) >= amount,
            };
            let mut card = self.picker.pick(&mut self.card_rng);
            for _ in 0..REDRAWS_MAX {
                if fits(card) {
                    break;
                }
                card = self.picker.pick(&mut self.card_rng);
            }
            Op { kind, card, op_id: 0, amount_won, captured_won: 0, reference: 0, gateway }
        }));
        ops
    }

    /// Gives every op a fresh op id and builds the events (all ops share one kind).
    fn build_frame(&mut self, mut ops: Vec<Op>, cards: &[CardRecord]) -> Frame {
        for op in &mut ops {
            op.op_id = new_op_id();
        }
        let kind = ops.first().map_or(OpKind::Sale, |op| op.kind);
        let hold_ttl_s = self.params.hold_ttl_s;
        let rng = &mut self.rng;
        let card = |op: &Op| &cards[op.card as usize];
        let events = match kind {
            OpKind::Load => Events::Load(
                ops.iter()
                    .map(|op| CardLoad {
                        op_id: op.op_id,
                        pin: card(op).pin,
                        amount_won: op.amount_won,
                        funding: Funding::Cash as u8,
                    })
                    .collect(),
            ),
            OpKind::Sale => {
                let mut sales = std::mem::take(&mut self.spare_sales);
                refill(
                    &mut sales,
                    &ops,
                    |sale| &mut sale.password,
                    |op, password| {
                        let card = card(op);
                        Sale {
                            op_id: op.op_id,
                            pin: card.pin,
                            password: password_in(password, card),
                            amount_won: op.amount_won,
                            merchant_id: rng.range_inclusive(1, 1000),
                            category: random_category(rng),
                        }
                    },
                );
                Events::Sale(sales)
            }
            OpKind::Authorize => {
                let mut authorizes = std::mem::take(&mut self.spare_authorizes);
                refill(
                    &mut authorizes,
                    &ops,
                    |authorize| &mut authorize.password,
                    |op, password| {
                        let card = card(op);
                        Authorize {
                            op_id: op.op_id,
                            pin: card.pin,
                            password: password_in(password, card),
                            amount_won: op.amount_won,
                            merchant_id: rng.range_inclusive(1, 1000),
                            category: random_category(rng),
                            hold_ttl_s,
                        }
                    },
                );
                Events::Authorize(authorizes)
            }
            OpKind::Capture => Events::Capture(
                ops.iter()
                    .map(|op| Capture {
                        op_id: op.op_id,
                        pin: card(op).pin,
                        hold_id: op.reference,
                        // A full capture asks for "all that remains".
                        amount_won: if op.captured_won == op.amount_won {
                            u64::MAX
                        } else {
                            op.captured_won
                        },
                        final_capture: true,
                    })
                    .collect(),
            ),
            OpKind::Void => Events::Void(
                ops.iter()
                    .map(|op| Void { op_id: op.op_id, pin: card(op).pin, hold_id: op.reference })
                    .collect(),
            ),
            OpKind::ReverseSale | OpKind::ReverseAuthorize => Events::Reverse(
                ops.iter()
                    .map(|op| Reverse {
                        op_id: op.op_id,
                        pin: card(op).pin,
                        original_op_id: op.reference,
                    })
                    .collect(),
            ),
            OpKind::Refund => Events::Refund(
                ops.iter()
                    .map(|op| Refund {
                        op_id: op.op_id,
                        pin: card(op).pin,
                        original_op_id: op.reference,
                        amount_won: op.amount_won,
                    })
                    .collect(),
            ),
            OpKind::SessionStart | OpKind::SessionUpdate | OpKind::SessionEnd => {
                unreachable!("session frames come from the call generator")
            }
        };
        Frame { events, ops }
    }
}

/// Makes `events` the events of `ops`, in order, in the list and the password buffers of the
/// events already there (a recycled frame's): `make` gets each op and the password buffer of
/// the event it replaces (empty for a new one).
fn refill<E>(
    events: &mut Vec<E>,
    ops: &[Op],
    password_of: fn(&mut E) -> &mut Vec<u8>,
    mut make: impl FnMut(&Op, Vec<u8>) -> E,
) {
    events.truncate(ops.len());
    for (index, op) in ops.iter().enumerate() {
        match events.get_mut(index) {
            Some(event) => {
                let password = std::mem::take(password_of(event));
                *event = make(op, password);
            }
            None => events.push(make(op, Vec::new())),
        }
    }
}

/// The card's password, written into `buffer`.
fn password_in(mut buffer: Vec<u8>, card: &CardRecord) -> Vec<u8> {
    buffer.clear();
    buffer.extend_from_slice(card.password.as_bytes());
    buffer
}

fn random_category(rng: &mut Rng) -> u8 {
    Category::ALL[rng.index_below(Category::ALL.len())] as u8
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cards::Password;
    use crate::dist::DistSpec;
    use pinswitch_protocol::pin;

    /// `count` cards of 10,000 won with valid PINs and their derived passwords.
    pub(crate) fn cards(count: u64) -> Vec<CardRecord> {
        (0..count)
            .map(|index| {
                let pin = pin::with_check_digit(100_000_000_000_000 + index);
                CardRecord {
                    pin,
                    password: Password::derive(pin),
                    face_value_won: 10_000,
                    expected_balance_won: 10_000,
                }
            })
            .collect()
    }

    fn params() -> WorkloadParams {
        WorkloadParams {
            batch: 8,
            sale_min_won: 10,
            sale_max_won: 500,
            load_amount_won: 10_000,
            balance_cap_won: 500_000,
            hold_ttl_s: 600,
        }
    }

    fn generator(spec: &str, seed: u64) -> Generator {
        Generator::new(
            &spec.parse().expect("spec"),
            params(),
            CardPicker::new(DistSpec::Uniform, 100),
            seed,
            0,
        )
    }

    #[test]
    fn specs_parse_and_print() {
        for text in ["sale", "gateway", "recharge", "mix:sale=8,gateway=1,recharge=1"] {
            let spec: WorkloadSpec = text.parse().expect("parses");
            assert_eq!(spec.to_string(), text);
        }
        assert!("mix:".parse::<WorkloadSpec>().is_err());
        assert!("mix:sale=0".parse::<WorkloadSpec>().is_err());
        assert!("mix:sale=1,sale=2".parse::<WorkloadSpec>().is_err());
        assert!("mix:bogus=1".parse::<WorkloadSpec>().is_err());
        assert!("mix:sale=1,calls=1".parse::<WorkloadSpec>().is_err());
        let calls: WorkloadSpec = "calls".parse().expect("parses");
        assert!(calls.is_calls() && calls.to_string() == "calls");
        assert!("nothing".parse::<WorkloadSpec>().is_err());
    }

    #[test]
    fn sale_frames_are_full_valid_and_deterministic_per_seed() {
        let cards = cards(100);
        let model = Model::new(cards.iter().map(|card| card.expected_balance_won));
        let now = Instant::now();
        let mut first = generator("sale", 9);
        let mut second = generator("sale", 9);
        for _ in 0..20 {
            let a = first.next_frame(now, &cards, &model).expect("frame");
            let b = second.next_frame(now, &cards, &model).expect("frame");
            assert_eq!(a.ops.len(), 8);
            let Events::Sale(events) = &a.events else {
                panic!("sale workload sent {:?}", a.events)
            };
            for (event, op) in events.iter().zip(&a.ops) {
                assert_eq!(event.op_id, op.op_id);
                assert_eq!(event.pin, cards[op.card as usize].pin);
                assert!((10..=500).contains(&event.amount_won));
                assert_eq!(event.password, cards[op.card as usize].password.to_vec());
            }
            let cards_a: Vec<u32> = a.ops.iter().map(|op| op.card).collect();
            let cards_b: Vec<u32> = b.ops.iter().map(|op| op.card).collect();
            assert_eq!(cards_a, cards_b);
        }
    }

    /// A frame with its op ids zeroed, printed: what must not depend on buffer reuse.
    fn shape(frame: &Frame) -> String {
        let ops: Vec<Op> = frame.ops.iter().map(|op| Op { op_id: 0, ..*op }).collect();
        let events = match &frame.events {
            Events::Sale(sales) => format!(
                "{:?}",
                sales.iter().map(|sale| Sale { op_id: 0, ..sale.clone() }).collect::<Vec<_>>()
            ),
            Events::Authorize(authorizes) => format!(
                "{:?}",
                authorizes
                    .iter()
                    .map(|authorize| Authorize { op_id: 0, ..authorize.clone() })
                    .collect::<Vec<_>>()
            ),
            other => format!("{:?}", other.name()),
        };
        format!("{ops:?} {events}")
    }

    #[test]
    fn recycled_buffers_make_the_same_frames() {
        let cards = cards(100);
        let model = Model::new(cards.iter().map(|card| card.expected_balance_won));
        let now = Instant::now();
        for spec in ["sale", "mix:sale=1,gateway=1,recharge=1"] {
            let mut fresh = generator(spec, 5);
            let mut recycling = generator(spec, 5);
            for round in 0..40 {
                let a = fresh.next_frame(now, &cards, &model).expect("frame");
                let b = recycling.next_frame(now, &cards, &model).expect("frame");
                assert_eq!(shape(&a), shape(&b), "{spec} frame {round}");
                if let Events::Sale(sales) = &b.events {
                    for (sale, op) in sales.iter().zip(&b.ops) {
                        assert_eq!(sale.op_id, op.op_id);
                        assert_eq!(sale.password, cards[op.card as usize].password.to_vec());
                    }
                }
                // Smaller and larger frames than the spare both refill correctly.
                let Frame { events, mut ops } = b;
                if round % 3 == 0 {
                    ops.truncate(1);
                }
                recycling.recycle(Some(events), ops);
            }
        }
    }

    #[test]
    fn gateway_follows_approved_operations_and_drains() {
        let cards = cards(100);
        let model = Model::new(cards.iter().map(|card| card.expected_balance_won));
        let now = Instant::now();
        let mut generator = generator("gateway", 1);
        // New frames are authorizes and sales; approve them all.
        let mut sent: Vec<Op> = Vec::new();
        let (mut authorizes, mut sales) = (0, 0);
        for _ in 0..12 {
            let frame = generator.next_frame(now, &cards, &model).expect("frame");
            match frame.events {
                Events::Authorize(_) => authorizes += 1,
                Events::Sale(_) => sales += 1,
                ref other => panic!("follow-ups are not due yet, got {other:?}"),
            }
            assert!(frame.ops.iter().all(|op| op.gateway));
            for op in &frame.ops {
                generator.on_result(op, 0, now);
            }
            sent.extend(frame.ops);
            // Pull out full follow-up batches as they become ready, like a run would.
            if generator.follow_ups.iter().any(|queue| queue.ready(8, now)) {
                break;
            }
        }
        assert!(authorizes > 0, "{authorizes} authorizes, {sales} sales");
        let pending = generator.follow_ups_pending();
        assert!(pending >= 8 * authorizes, "every approved hold has a follow-up");
        // Once old enough, follow-ups go out, each naming an operation that was sent.
        let mut old = now;
        let mut drained = 0;
        for _ in 0..1000 {
            if generator.follow_ups_pending() == 0 {
                break;
            }
            old += FOLLOW_UP_WAIT_MAX;
            let frame = generator.next_frame(old, &cards, &model).expect("frame");
            if matches!(frame.events, Events::Authorize(_) | Events::Sale(_)) {
                continue;
            }
            for op in &frame.ops {
                assert!(op.op_id != 0);
                assert!(
                    sent.iter()
                        .any(|original| original.op_id == op.reference && original.card == op.card),
                    "{op:?} names nothing that was sent"
                );
            }
            drained += frame.ops.len();
        }
        assert_eq!(drained, pending);
        assert!(generator.drain_frame(old, &cards).is_none());
        // A follow-up that was not executed comes back; a new operation does not.
        let capture = Op { kind: OpKind::Capture, op_id: 9, reference: 1, ..sent[0] };
        generator.on_not_executed(&capture, old);
        generator.on_not_executed(&sent[0], old);
        assert_eq!(generator.follow_ups_pending(), 1);
        // Refunds of captures name the capture.
        generator.on_not_executed(&capture, old);
        let mut refunds = 0;
        for _ in 0..200 {
            generator.on_result(&Op { captured_won: 100, ..capture }, 0, old);
        }
        while let Some(frame) = generator.drain_frame(old, &cards) {
            for op in frame.ops.iter().filter(|op| op.kind == OpKind::Refund) {
                assert_eq!(op.reference, capture.op_id);
                assert!((1..=100).contains(&op.amount_won));
                refunds += 1;
            }
        }
        assert!((20..=80).contains(&refunds), "{refunds} refunds of 200 captures");
    }

    #[test]
    fn mixes_use_every_part_and_loads_respect_the_cap() {
        let cards = cards(100);
        let model = Model::new(cards.iter().map(|card| card.expected_balance_won));
        let now = Instant::now();
        let mut generator = generator("mix:sale=1,gateway=1,recharge=1", 4);
        let (mut sales, mut authorizes, mut loads) = (0, 0, 0);
        for _ in 0..300 {
            match generator.next_frame(now, &cards, &model).expect("frame").events {
                Events::Sale(_) => sales += 1,
                Events::Authorize(_) => authorizes += 1,
                Events::Load(events) => {
                    loads += 1;
                    assert!(events.iter().all(|event| event.amount_won == 10_000));
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        assert!(sales > 50 && authorizes > 50 && loads > 50, "{sales} {authorizes} {loads}");
        // Every card at the cap: loads still go out (the switch declines them), after redraws.
        let full = Model::new(cards.iter().map(|_| 500_000));
        let mut recharge = self::generator("recharge", 4);
        assert_eq!(recharge.next_frame(now, &cards, &full).expect("frame").ops.len(), 8);
    }
}
