//! Seeded model test of the pure engine. For many seeds it drives a random but reproducible
//! sequence of commands (issues, activations, loads with good and bad units, authorizations,
//! partial/final/"all remaining" captures, voids, sales, refunds of sales and captures, reversals
//! sent before and after their originals, wrong passwords, retries with identical bodies, op-id
//! reuse with different bodies, op id 0, ids too old or from the future, passed deadlines, hold
//! expiry and jumps past the idempotency window; call sessions with owners, passwords, request
//! numbers in and out of order, silence expiry and late reports, time-of-day bands, event
//! charges, the audit's close and rule changes by CONFIGURE) through `pinswitch_core::Shard` and
//! through a naive reference ledger written here from the engine's rules alone (plain `Vec`s and
//! linear scans, calls rated second by second, no code shared with shard/ or the tariff's own
//! rating). It proves that, for every step, the engine's reply (code, replayed flag, reused
//! field, amounts, balances, hold expiry or packed grant; approval codes are six digits exactly
//! on approvals and replay unchanged) and its `changed` flag equal the reference's; that the
//! session notices raised (re-authorize, abort, low balance, expired) are the reference's, in
//! order; that every card (state, face value, balance, available, held, password tries, pending
//! holds), the money totals, the op-id records as INQUIRY shows them, the live and remembered
//! sessions, each owner's session digest, a random PRICE_QUOTE, the clock and the next expiry
//! equal the reference's; that money is conserved and `check_invariants` holds; that the engine
//! survives a snapshot round trip every few steps with nothing lost; and that replaying the
//! journal (the commands whose `changed` was true) into a fresh shard gives the very same
//! replies, the very same notices and the very same final state (recovery equivalence). A
//! failure names the seed and step and prints the command, both replies and the steps before it,
//! so it replays from its seed alone. The walk must reach every engine result code it can and
//! each session outcome (every notice kind, late reports, forgotten sessions, calls rated across
//! a rate change, both password rules, ...). A second walk hands the engine server times that
//! sometimes step back (the engine must keep the maximum). Fixed scripts replay the smallest
//! sequences behind the disagreements the walks found (see their comments), so each one fails on
//! its own, readably, and one covers a low-balance warning the walks rarely reach.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use pinswitch_core::shard::msg_type_of;
use pinswitch_core::{
    Applied, Body, CardView, Command, ConfigRecord, ConfigRecordAdded, EngineConfig,
    FINAL_UNIT_NONE, FINAL_UNIT_TERMINATE, ForeignCode, HoldView, Ms, OpId, OpView, PinHash,
    Product, Reply, SessionGrant, SessionNoticeOut, SessionOpen, Shard, Tariff, Totals,
    destination_digits, pack_destination,
};
use pinswitch_protocol::{
    CardState, Field, NOTICE_ABORT, NOTICE_EXPIRED, NOTICE_LOW_BALANCE, NOTICE_REAUTHORIZE,
    OpStatus, ResultCode, op_id_at, session_digest,
};

const T0: Ms = 1_800_000_000_000;
const SEEDS: u64 = 300;
const STEPS: usize = 600;
/// The engine is rebuilt from its own snapshot every this many steps.
const SNAPSHOT_EVERY: usize = 37;
/// The cards the commands talk about; only the first `ISSUABLE` are ever issued.
const PINS: [PinHash; 6] = [
    0x5EED_0000_0000_0000_0000_0000_0000_0A01,
    0x5EED_0000_0000_0000_0000_0000_0000_0B02,
    0x0000_0000_0000_0000_0000_0000_0000_0C03,
    0xFFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FD04,
    0x1234_5678_9ABC_DEF0_0FED_CBA9_8765_4321,
    0x0000_0000_0000_0000_0000_0000_0000_0006,
];
const ISSUABLE: usize = 4;
/// Placeholder in a reference reply for "an approval code the engine chooses".
const APPROVAL_PENDING: u32 = u32::MAX;
/// Diagnostic context kept for a failure message.
const TRAIL: usize = 12;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// Uniform in `lo..=hi` (`hi - lo` must be below u64::MAX).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// The reference ledger: the rules, written as plainly as possible.

#[derive(Clone, Debug)]
struct RefCard {
    pin: PinHash,
    state: CardState,
    face: u64,
    balance: u64,
    mac: u64,
    failures: u8,
    /// Face value plus recharges (the refund rule's base).
    charged: u64,
    /// End of validity in seconds (0: not started).
    expires_s: u32,
    /// Blocked while sold but not yet activated: unblocking returns it to sold.
    blocked_unsold: bool,
    /// Registered with a verified real name (the named-card cap applies).
    named: bool,
    /// Registered at all: payments earn points.
    registered: bool,
    points: u32,
    /// The partner channel it is consigned to (0: none).
    consignee: u32,
    /// Sold as a gift and not yet claimed: the recipient reference (0: none).
    gift_to: u64,
    /// A password hint was left at the claim.
    hint: bool,
}

#[derive(Clone, Debug)]
struct RefHold {
    id: OpId,
    pin: PinHash,
    amount: u64,
    captured: u64,
    captures: u16,
    expires: Ms,
}

#[derive(Clone, Debug)]
struct RefRecord {
    id: OpId,
    /// The generation it was recorded in (see `Reference::prune`).
    generation: u64,
    time: Ms,
    /// The card of the body (for a tombstone: the card the REVERSE named).
    pin: PinHash,
    /// `None`: a tombstone left by a REVERSE or an OP_FENCE that came first (its `reply` says
    /// which: what a late arrival gets).
    body: Option<Body>,
    reply: Reply,
    status: OpStatus,
    /// For an approved CAPTURE: the hold (AUTHORIZE) it took money from.
    capture_of: OpId,
}

/// A charging session: its tariff's rating fields, who owns it, the last request number, when
/// it started (local time, for the bands) and last reported, the seconds charged so far, what
/// they cost (debited or written off) and the money reserved for the current grant.
#[derive(Clone, Debug)]
struct RefSession {
    id: u128,
    pin: PinHash,
    tariff: Tariff,
    owner: u32,
    /// The last request number applied (START: 0).
    seq: u32,
    /// The local second (UTC plus the configured offset) of the START.
    local_start: u64,
    /// Server time of the START or the last report.
    last_report: Ms,
    /// Live: when silence expires it (last report plus twice the validity then configured).
    deadline: Ms,
    used: u64,
    rated: u64,
    reserved: u64,
}

/// Money of one approved AUTHORIZE, SALE or EVENT_CHARGE. Kept forever (the ledger never
/// forgets a payment, whatever happens to its op-id record).
#[derive(Clone, Debug)]
struct RefPayment {
    id: OpId,
    debited: u64,
    refunded: u64,
}

struct Reference {
    cfg: EngineConfig,
    clock: Ms,
    evicted_floor: Ms,
    /// The generation new records go into.
    generation: u64,
    cards: Vec<RefCard>,
    holds: Vec<RefHold>,
    /// In insertion order.
    records: Vec<RefRecord>,
    payments: Vec<RefPayment>,
    issued: u128,
    loaded: u128,
    refunded: u128,
    reversed: u128,
    debited: u128,
    paid_out: u128,
    breakage: u128,
    /// Foreign PINs not yet converted, per product, oldest first.
    foreign_pools: BTreeMap<u32, VecDeque<ForeignCode>>,
    /// Every foreign PIN hash ever imported.
    foreign_known: Vec<u128>,
    /// The PIN each approved conversion handed out.
    conversions: Vec<(OpId, ForeignCode)>,
    /// Live charging sessions.
    sessions: Vec<RefSession>,
    /// Sessions expired for silence and still remembered for a late report, first expired
    /// first (at most `expired_sessions_max`).
    expired_sessions: Vec<RefSession>,
    /// Session notices raised since the walk last took them.
    notices: Vec<SessionNoticeOut>,
    /// Coverage: reports rated across a time-of-day rate change, expired sessions forgotten.
    band_crossings: u64,
    banded_reports: u64,
    forgotten: u64,
    /// After an OP_ID_REUSED answer: every field the retry differs in (the engine names the
    /// first by keyed tags and may pass over one whose tag collides; see `same_reply`).
    reused_fields: Vec<Field>,
}

fn time_of(op_id: OpId) -> Ms {
    (op_id >> 80) as u64
}

fn bare(code: ResultCode) -> Reply {
    Reply {
        code: code as u16,
        replayed: false,
        field: 0,
        approval_code: 0,
        amount_won: 0,
        balance_won: 0,
        available_won: 0,
        hold_expires_at_ms: 0,
    }
}

/// The fields (in the documented order) in which `retry` differs from `first`: empty when it
/// is the same body, `[Kind]` for another message type.
fn differing_fields(first: &Body, retry: &Body) -> Vec<Field> {
    fn first_of(fields: &[(bool, Field)]) -> Vec<Field> {
        fields.iter().filter(|(differs, _)| *differs).map(|(_, field)| *field).collect()
    }
    match (first, retry) {
        (Body::Issue { face_value_won: f1, .. }, Body::Issue { face_value_won: f2, .. }) => {
            first_of(&[(f1 != f2, Field::FaceValue)])
        }
        (
            Body::Activate { pin_hash: p1, password_mac: m1 },
            Body::Activate { pin_hash: p2, password_mac: m2 },
        ) => first_of(&[(p1 != p2, Field::Card), (m1 != m2, Field::Password)]),
        (
            Body::Claim {
                pin_hash: p1,
                password_mac: m1,
                gift_recipient_ref: g1,
                password_hint: h1,
            },
            Body::Claim {
                pin_hash: p2,
                password_mac: m2,
                gift_recipient_ref: g2,
                password_hint: h2,
            },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (m1 != m2 || h1 != h2, Field::Password),
            (g1 != g2, Field::GiftRecipient),
        ]),
        (
            Body::Load { pin_hash: p1, amount_won: a1, funding: f1 },
            Body::Load { pin_hash: p2, amount_won: a2, funding: f2 },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (a1 != a2, Field::Amount),
            (f1 != f2, Field::Funding),
        ]),
        (
            Body::Sell {
                pin_hash: p1,
                channel_id: c1,
                price_won: a1,
                payment_means: m1,
                gift_recipient_ref: g1,
            },
            Body::Sell {
                pin_hash: p2,
                channel_id: c2,
                price_won: a2,
                payment_means: m2,
                gift_recipient_ref: g2,
            },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (c1 != c2, Field::Channel),
            (a1 != a2, Field::Price),
            (m1 != m2, Field::Funding),
            (g1 != g2, Field::GiftRecipient),
        ]),
        (Body::Block { pin_hash: p1, reason: r1 }, Body::Block { pin_hash: p2, reason: r2 }) => {
            first_of(&[(p1 != p2, Field::Card), (r1 != r2, Field::Reason)])
        }
        (Body::Unblock { pin_hash: p1 }, Body::Unblock { pin_hash: p2 }) => {
            first_of(&[(p1 != p2, Field::Card)])
        }
        (
            Body::Register { pin_hash: p1, holder_ref: h1, verified_name: v1 },
            Body::Register { pin_hash: p2, holder_ref: h2, verified_name: v2 },
        ) => first_of(&[(p1 != p2, Field::Card), (h1 != h2 || v1 != v2, Field::Holder)]),
        (
            Body::Consign { pin_hash: p1, partner_id: r1, commission_per_mille: c1 },
            Body::Consign { pin_hash: p2, partner_id: r2, commission_per_mille: c2 },
        ) => first_of(&[(p1 != p2, Field::Card), (r1 != r2 || c1 != c2, Field::Partner)]),
        (
            Body::BalanceRefund { pin_hash: p1, payout_account_ref: a1 },
            Body::BalanceRefund { pin_hash: p2, payout_account_ref: a2 },
        ) => first_of(&[(p1 != p2, Field::Card), (a1 != a2, Field::PayoutAccount)]),
        (
            Body::Authorize {
                pin_hash: p1,
                password_mac: m1,
                amount_won: a1,
                merchant_id: r1,
                category: c1,
                hold_ttl_s: t1,
            },
            Body::Authorize {
                pin_hash: p2,
                password_mac: m2,
                amount_won: a2,
                merchant_id: r2,
                category: c2,
                hold_ttl_s: t2,
            },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (a1 != a2, Field::Amount),
            (m1 != m2, Field::Password),
            (r1 != r2, Field::Merchant),
            (c1 != c2, Field::Category),
            (t1 != t2, Field::HoldTtl),
        ]),
        (
            Body::Capture { pin_hash: p1, hold_id: h1, amount_won: a1, final_capture: f1 },
            Body::Capture { pin_hash: p2, hold_id: h2, amount_won: a2, final_capture: f2 },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (h1 != h2, Field::Reference),
            (a1 != a2, Field::Amount),
            (f1 != f2, Field::FinalCapture),
        ]),
        (Body::Void { pin_hash: p1, hold_id: h1 }, Body::Void { pin_hash: p2, hold_id: h2 }) => {
            first_of(&[(p1 != p2, Field::Card), (h1 != h2, Field::Reference)])
        }
        (
            Body::Reverse { pin_hash: p1, original_op_id: o1 },
            Body::Reverse { pin_hash: p2, original_op_id: o2 },
        ) => first_of(&[(p1 != p2, Field::Card), (o1 != o2, Field::Reference)]),
        (
            Body::Sale {
                pin_hash: p1,
                password_mac: m1,
                amount_won: a1,
                merchant_id: r1,
                category: c1,
            },
            Body::Sale {
                pin_hash: p2,
                password_mac: m2,
                amount_won: a2,
                merchant_id: r2,
                category: c2,
            },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (a1 != a2, Field::Amount),
            (m1 != m2, Field::Password),
            (r1 != r2, Field::Merchant),
            (c1 != c2, Field::Category),
        ]),
        (
            Body::Refund { pin_hash: p1, original_op_id: o1, amount_won: a1 },
            Body::Refund { pin_hash: p2, original_op_id: o2, amount_won: a2 },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (o1 != o2, Field::Reference),
            (a1 != a2, Field::Amount),
        ]),
        (
            Body::ForeignImport { foreign_hash: h1, product_id: p1, code: c1 },
            Body::ForeignImport { foreign_hash: h2, product_id: p2, code: c2 },
        ) => first_of(&[(h1 != h2 || c1 != c2, Field::Reference), (p1 != p2, Field::Product)]),
        (
            Body::ForeignConvert { pin_hash: p1, password_mac: m1, product_id: r1 },
            Body::ForeignConvert { pin_hash: p2, password_mac: m2, product_id: r2 },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (m1 != m2, Field::Password),
            (r1 != r2, Field::Product),
        ]),
        (Body::SessionStart(one), Body::SessionStart(two)) => first_of(&[
            (one.pin_hash != two.pin_hash, Field::Card),
            (one.session_id != two.session_id, Field::Reference),
            (one.password_mac != two.password_mac, Field::Password),
            (one.category != two.category, Field::Category),
            (one.destination != two.destination, Field::Destination),
            (one.requested_s != two.requested_s, Field::Seconds),
            (one.owner_id != two.owner_id, Field::Owner),
        ]),
        // The request number before the seconds (PROTOCOL.md lists this order: 22 before 21).
        (
            Body::SessionUpdate {
                pin_hash: p1,
                session_id: s1,
                seq: q1,
                used_total_s: u1,
                requested_s: r1,
            },
            Body::SessionUpdate {
                pin_hash: p2,
                session_id: s2,
                seq: q2,
                used_total_s: u2,
                requested_s: r2,
            },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (s1 != s2, Field::Reference),
            (q1 != q2, Field::Sequence),
            (u1 != u2 || r1 != r2, Field::Seconds),
        ]),
        (
            Body::SessionEnd { pin_hash: p1, session_id: s1, seq: q1, used_total_s: u1 },
            Body::SessionEnd { pin_hash: p2, session_id: s2, seq: q2, used_total_s: u2 },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (s1 != s2, Field::Reference),
            (q1 != q2, Field::Sequence),
            (u1 != u2, Field::Seconds),
        ]),
        (
            Body::EventCharge {
                pin_hash: p1,
                password_mac: m1,
                destination: d1,
                units: n1,
                category: c1,
            },
            Body::EventCharge {
                pin_hash: p2,
                password_mac: m2,
                destination: d2,
                units: n2,
                category: c2,
            },
        ) => first_of(&[
            (p1 != p2, Field::Card),
            (m1 != m2, Field::Password),
            (c1 != c2, Field::Category),
            (d1 != d2, Field::Destination),
            (n1 != n2, Field::Units),
        ]),
        _ => vec![Field::Kind],
    }
}

/// The decline a card in `state` gets from an operation that needs another state.
fn wrong_state(state: CardState) -> ResultCode {
    match state {
        CardState::Issued | CardState::Sold => ResultCode::CardNotActive,
        CardState::Active => ResultCode::CardAlreadyActive,
        CardState::Blocked => ResultCode::CardBlocked,
        CardState::Expired => ResultCode::CardExpired,
        CardState::Closed => ResultCode::CardClosed,
    }
}

/// What executing a command produced (before it is recorded).
struct Outcome {
    reply: Reply,
    status: OpStatus,
    capture_of: OpId,
}

fn done(reply: Reply) -> Outcome {
    Outcome { reply, status: OpStatus::Completed, capture_of: 0 }
}

/// The rate of the second that starts at local second `local`: the tariff's day rate, or that
/// of the last time-of-day band begun by then that day.
fn rate_at(tariff: &Tariff, local: u64) -> u64 {
    if tariff.bands.is_empty() {
        return tariff.rate_won;
    }
    let second_of_day = local % 86_400;
    let mut rate = tariff.rate_won;
    for band in &tariff.bands {
        if u64::from(band.from_minute) * 60 <= second_of_day {
            rate = band.rate_won;
        }
    }
    rate
}

/// What 0, 1, ..., `up_to` seconds in all of a call that started at local second `start` cost,
/// found by walking the call second by second: nothing for none; else the connect fee and the
/// first billed span (the first increment, or `first_increment_s` if longer) whole at the
/// start's rate; then every run of seconds at one rate (a run ends where the rate changes) is
/// rounded up to whole increments at its rate.
fn session_costs(tariff: &Tariff, start: u64, up_to: u64) -> Vec<u64> {
    let increment = u64::from(tariff.increment_s.max(1));
    let first = u64::from(tariff.first_increment_s).max(increment);
    let mut costs = vec![0];
    // The connect fee, the first span and the runs already ended.
    let mut settled = tariff.connect_fee_won + first / increment * rate_at(tariff, start);
    // The run going on: its rate and its seconds so far.
    let mut run: Option<(u64, u64)> = None;
    for second in 0..up_to {
        if second >= first {
            let rate = rate_at(tariff, start + second);
            run = match run {
                Some((run_rate, seconds)) if run_rate == rate => Some((rate, seconds + 1)),
                Some((run_rate, seconds)) => {
                    settled += seconds.div_ceil(increment) * run_rate;
                    Some((rate, 1))
                }
                None => Some((rate, 1)),
            };
        }
        costs.push(settled + run.map_or(0, |(rate, seconds)| seconds.div_ceil(increment) * rate));
    }
    costs
}

/// The largest grant of at most `wanted` seconds past `used` whose extra cost fits `budget`,
/// whether not one second more would fit, and what it reserves.
fn session_grant(
    tariff: &Tariff,
    start: u64,
    used: u64,
    wanted: u32,
    budget: u64,
) -> (u32, u8, u64) {
    let costs = session_costs(tariff, start, used + u64::from(wanted) + 1);
    let extra = |more: u64| costs[(used + more) as usize] - costs[used as usize];
    let granted = (0..=u64::from(wanted)).rev().find(|more| extra(*more) <= budget).unwrap();
    let last = if extra(granted + 1) > budget { FINAL_UNIT_TERMINATE } else { FINAL_UNIT_NONE };
    (granted as u32, last, extra(granted))
}

impl Reference {
    fn new(cfg: EngineConfig) -> Reference {
        Reference {
            cfg,
            clock: 0,
            evicted_floor: 0,
            generation: 1,
            cards: Vec::new(),
            holds: Vec::new(),
            records: Vec::new(),
            payments: Vec::new(),
            issued: 0,
            loaded: 0,
            refunded: 0,
            reversed: 0,
            debited: 0,
            paid_out: 0,
            breakage: 0,
            foreign_pools: BTreeMap::new(),
            foreign_known: Vec::new(),
            conversions: Vec::new(),
            sessions: Vec::new(),
            expired_sessions: Vec::new(),
            notices: Vec::new(),
            band_crossings: 0,
            banded_reports: 0,
            forgotten: 0,
            reused_fields: Vec::new(),
        }
    }

    fn card(&self, pin: PinHash) -> Option<&RefCard> {
        self.cards.iter().find(|card| card.pin == pin)
    }

    fn card_mut(&mut self, pin: PinHash) -> Option<&mut RefCard> {
        self.cards.iter_mut().find(|card| card.pin == pin)
    }

    fn held(&self, pin: PinHash) -> u64 {
        self.holds
            .iter()
            .filter(|hold| hold.pin == pin)
            .map(|hold| hold.amount - hold.captured)
            .sum::<u64>()
            + self.reserved(pin)
    }

    /// What the card's charging sessions hold.
    fn reserved(&self, pin: PinHash) -> u64 {
        self.sessions
            .iter()
            .filter(|session| session.pin == pin)
            .map(|session| session.reserved)
            .sum()
    }

    fn available(&self, pin: PinHash) -> u64 {
        self.card(pin).map_or(0, |card| card.balance - self.held(pin))
    }

    fn hold(&self, id: OpId) -> Option<&RefHold> {
        self.holds.iter().find(|hold| hold.id == id)
    }

    fn record(&self, id: OpId) -> Option<&RefRecord> {
        self.records.iter().find(|record| record.id == id)
    }

    fn record_mut(&mut self, id: OpId) -> Option<&mut RefRecord> {
        self.records.iter_mut().find(|record| record.id == id)
    }

    fn payment_mut(&mut self, id: OpId) -> Option<&mut RefPayment> {
        self.payments.iter_mut().find(|payment| payment.id == id)
    }

    /// How much of the payment behind `original` (a SALE or a CAPTURE) may still be refunded.
    fn refundable(&self, original: OpId) -> Option<u64> {
        let record = self.record(original)?;
        let payment_id = match &record.body {
            Some(Body::Sale { .. } | Body::EventCharge { .. }) => original,
            Some(Body::Capture { .. }) => record.capture_of,
            _ => return None,
        };
        self.payments.iter().find(|p| p.id == payment_id).map(|p| p.debited - p.refunded)
    }

    /// A reply with `code` and the card's balances if the card exists.
    fn about_card(&self, code: ResultCode, pin: PinHash) -> Reply {
        let mut reply = bare(code);
        if let Some(card) = self.card(pin) {
            reply.balance_won = card.balance;
            reply.available_won = card.balance - self.held(pin);
        }
        reply
    }

    fn approve(&self, pin: PinHash, amount: u64) -> Reply {
        let mut reply = self.about_card(ResultCode::Approved, pin);
        reply.approval_code = APPROVAL_PENDING;
        reply.amount_won = amount;
        reply
    }

    fn decline(&self, code: ResultCode, pin: PinHash) -> Outcome {
        done(self.about_card(code, pin))
    }

    fn window_floor(&self) -> Ms {
        self.clock.saturating_sub(self.cfg.idempotency_window_ms)
    }

    fn too_old(&self, time: Ms) -> bool {
        let window_floor = self.window_floor();
        (window_floor > 0 || self.evicted_floor > 0) && time <= window_floor.max(self.evicted_floor)
    }

    /// Removes a pending hold, releasing its remaining amount; returns that amount.
    fn close_hold(&mut self, id: OpId, status: OpStatus) -> u64 {
        let index = self.holds.iter().position(|hold| hold.id == id).expect("pending hold");
        let hold = self.holds.remove(index);
        if let Some(record) = self.record_mut(id) {
            if matches!(record.body, Some(Body::Authorize { .. })) {
                record.status = status;
            }
        }
        hold.amount - hold.captured
    }

    fn insert_record(&mut self, mut record: RefRecord) {
        assert!(self.record(record.id).is_none(), "reference: an op id is recorded once");
        record.generation = self.generation;
        self.records.push(record);
        self.prune();
    }

    /// Records one generation holds before the older one is dropped.
    fn generation_max(&self) -> usize {
        (self.cfg.idempotency_entries_max / 2) as usize
    }

    fn count_in(&self, generation: u64) -> usize {
        self.records.iter().filter(|record| record.generation == generation).count()
    }

    /// Records are kept in two generations: the current one, and the one before it. The older
    /// one goes whole when all of it is past the window (no floor change), or when the current
    /// one holds `generation_max` records and the clock has reached every op time in the older
    /// one (the too-old floor rises to the newest of them); the current one then becomes the
    /// older one. Returns whether anything changed.
    fn prune(&mut self) -> bool {
        let older = self.generation - 1;
        let older_max = |records: &[RefRecord]| {
            records
                .iter()
                .filter(|record| record.generation == older)
                .map(|record| record.time)
                .max()
        };
        let window_floor = self.window_floor();
        let mut changed = false;
        if let Some(newest) = older_max(&self.records) {
            if window_floor > 0 && newest <= window_floor {
                self.records.retain(|record| record.generation != older);
                changed = true;
            }
        }
        let newest_older = older_max(&self.records).unwrap_or(0);
        if self.count_in(self.generation) >= self.generation_max() && newest_older <= self.clock {
            if older_max(&self.records).is_some() {
                self.evicted_floor = self.evicted_floor.max(newest_older);
                self.records.retain(|record| record.generation != older);
            }
            self.generation += 1;
            changed = true;
        }
        changed
    }

    fn apply(&mut self, now: Ms, command: &Command) -> (Reply, bool) {
        self.reused_fields.clear();
        // The clock moves only with a command that changed something (only those are journaled).
        let clock_before = self.clock;
        let (reply, changed) = self.apply_moving_clock(now, command);
        if !changed {
            self.clock = clock_before;
        }
        (reply, changed)
    }

    fn apply_moving_clock(&mut self, now: Ms, command: &Command) -> (Reply, bool) {
        self.clock = self.clock.max(now);
        let due: Vec<OpId> = self
            .holds
            .iter()
            .filter(|hold| hold.expires <= self.clock)
            .map(|hold| hold.id)
            .collect();
        for id in &due {
            self.close_hold(*id, OpStatus::HoldExpired);
        }
        let expired = !due.is_empty() | self.expire_sessions();
        let (reply, changed) = match &command.body {
            Body::Tick => (bare(ResultCode::Approved), false),
            Body::Configure(record) => self.configure(record, &ConfigRecordAdded::default()),
            Body::ConfigureExtended(rules) => self.configure(&rules.record, &rules.added),
            Body::SessionsClose { owner_id, silent_since_ms, session_ids } => {
                self.sessions_close(*owner_id, *silent_since_ms, session_ids)
            }
            body => self.operation(command.op_id, command.deadline_at_ms, body),
        };
        (reply, changed || expired)
    }

    /// Sessions silent until their deadline (at or before the clock) expire, earliest deadline
    /// first (then lowest id): the reservation goes back to the card, an EXPIRED notice carries
    /// the card's available balance right after, and the session is remembered for a late
    /// report; past `expired_sessions_max` the first remembered is forgotten.
    fn expire_sessions(&mut self) -> bool {
        let mut due: Vec<(Ms, u128)> = self
            .sessions
            .iter()
            .filter(|session| session.deadline <= self.clock)
            .map(|session| (session.deadline, session.id))
            .collect();
        due.sort();
        for (_, id) in &due {
            let at = self.sessions.iter().position(|session| session.id == *id).unwrap();
            let mut session = self.sessions.remove(at);
            session.reserved = 0;
            let available = self.available(session.pin);
            self.notices.push(SessionNoticeOut {
                session_id: *id,
                kind: NOTICE_EXPIRED,
                available_won: available,
            });
            self.expired_sessions.push(session);
            while self.expired_sessions.len() > self.cfg.expired_sessions_max as usize {
                self.expired_sessions.remove(0);
                self.forgotten += 1;
            }
        }
        !due.is_empty()
    }

    /// The audit's close: each listed session still live, of this owner and silent since
    /// `silent_since` ends (its reservation released; nothing charged, nothing remembered, no
    /// notice). The reply counts them; it changed something only if it closed one.
    fn sessions_close(&mut self, owner: u32, silent_since: Ms, ids: &[u128]) -> (Reply, bool) {
        let mut closed = 0;
        for id in ids {
            let orphan = self
                .sessions
                .iter()
                .position(|s| s.id == *id && s.owner == owner && s.last_report <= silent_since);
            if let Some(at) = orphan {
                self.sessions.remove(at);
                closed += 1;
            }
        }
        let mut reply = bare(ResultCode::Approved);
        reply.amount_won = closed;
        (reply, closed > 0)
    }

    /// New rules from here on. The walk changes only the session rules below (everything else
    /// stays `test_min`'s, which the reference is written for); a local-time offset more than
    /// 14 hours from UTC is refused (FORMAT_ERROR) and changes nothing.
    fn configure(&mut self, record: &ConfigRecord, added: &ConfigRecordAdded) -> (Reply, bool) {
        let config =
            &EngineConfig::from_records(record, added).expect("the walk sends whole records");
        let mut products = EngineConfig::test_min().products;
        for (product, set) in products.iter_mut().zip(&config.products) {
            product.session_password_required = set.session_password_required;
        }
        let expected = EngineConfig {
            products,
            session_password_required: config.session_password_required,
            low_balance_warn_won: config.low_balance_warn_won,
            tariff_utc_offset_s: config.tariff_utc_offset_s,
            session_validity_s: config.session_validity_s,
            ..EngineConfig::test_min()
        };
        assert_eq!(
            &expected, config,
            "the walk changes only the session rules the reference models"
        );
        if config.tariff_utc_offset_s.abs() > 14 * 3600 || config.session_validity_s == 0 {
            return (bare(ResultCode::FormatError), false);
        }
        self.cfg = config.clone();
        (bare(ResultCode::Approved), true)
    }

    fn operation(&mut self, op_id: OpId, deadline: Ms, body: &Body) -> (Reply, bool) {
        // Time alone may have made the older generation droppable.
        let pruned = self.prune();
        let (reply, changed) = match body {
            Body::Fence { pin_hash } => self.fence(op_id, *pin_hash),
            body => self.operation_after_prune(op_id, deadline, body),
        };
        (reply, changed || pruned)
    }

    /// OP_FENCE: a record answers for itself (OP_RECORDED, FENCED for a tombstone, another
    /// card's ORIGINAL_CARD_MISMATCH); else the op id's own checks; else a fence tombstone.
    fn fence(&mut self, op_id: OpId, pin: PinHash) -> (Reply, bool) {
        if op_id == 0 {
            return (bare(ResultCode::OpIdInvalid), false);
        }
        if let Some(record) = self.record(op_id) {
            let code = if record.pin != pin {
                ResultCode::OriginalCardMismatch
            } else if record.body.is_none() {
                ResultCode::Fenced
            } else {
                ResultCode::OpRecorded
            };
            return (bare(code), false);
        }
        let time = time_of(op_id);
        if self.too_old(time) {
            return (bare(ResultCode::OpTooOld), false);
        }
        if time > self.clock + self.cfg.op_clock_skew_max_ms {
            return (bare(ResultCode::OpIdFromFuture), false);
        }
        if self.count_in(self.generation) >= 2 * self.generation_max() {
            return (bare(ResultCode::RetryLater), false);
        }
        self.insert_record(RefRecord {
            generation: 0,
            id: op_id,
            time,
            pin,
            body: None,
            reply: bare(ResultCode::FencedBeforeArrival),
            status: OpStatus::Tombstone,
            capture_of: 0,
        });
        (bare(ResultCode::Fenced), true)
    }

    fn operation_after_prune(&mut self, op_id: OpId, deadline: Ms, body: &Body) -> (Reply, bool) {
        let now = self.clock;
        if op_id == 0 {
            return (bare(ResultCode::OpIdInvalid), false);
        }
        let time = time_of(op_id);
        if self.too_old(time) {
            return (bare(ResultCode::OpTooOld), false);
        }
        if time > now + self.cfg.op_clock_skew_max_ms {
            return (bare(ResultCode::OpIdFromFuture), false);
        }
        if let Some(record) = self.record(op_id) {
            let Some(first) = &record.body else {
                // A tombstone: REVERSED_BEFORE_ARRIVAL, or FENCED_BEFORE_ARRIVAL for a fence.
                return (bare(record.reply.result_code()), false);
            };
            let differing = differing_fields(first, body);
            let reply = match differing.first() {
                None => Reply { replayed: true, ..record.reply },
                Some(field) => Reply { field: *field as u8, ..bare(ResultCode::OpIdReused) },
            };
            self.reused_fields = differing;
            return (reply, false);
        }
        // A card, or for FOREIGN_IMPORT the foreign PIN's hash (no card has it).
        let pin = body.route_key().expect("operations name a card or a foreign PIN");
        if self.count_in(self.generation) >= 2 * self.generation_max() {
            // The older generation holds op times ahead of the clock and cannot go yet.
            return (bare(ResultCode::RetryLater), false);
        }
        let outcome = if deadline != 0 && now > deadline {
            done(bare(ResultCode::DeadlineExceededNotExecuted))
        } else {
            if matches!(body, Body::Issue { .. }) && self.card(pin).is_some() {
                return (bare(ResultCode::RetryLater), false);
            }
            if !matches!(body, Body::Issue { .. }) {
                self.settle_expiry(pin);
            }
            // Low balance: these may lower what the card has available; crossing below the
            // warning level (from at or above it) warns every live session of the card.
            let watched = matches!(
                body,
                Body::Authorize { .. }
                    | Body::Sale { .. }
                    | Body::ForeignConvert { .. }
                    | Body::SessionStart(_)
                    | Body::SessionUpdate { .. }
                    | Body::EventCharge { .. }
            );
            let available_before = self.card(pin).map(|_| self.available(pin));
            let outcome = self.execute(now, op_id, body);
            if outcome.reply.code < 100 {
                match body {
                    Body::Load { .. } | Body::Unblock { .. } => {
                        self.notify_card(pin, NOTICE_REAUTHORIZE)
                    }
                    Body::Block { .. } => self.notify_card(pin, NOTICE_ABORT),
                    _ => {}
                }
            }
            let warn = self.cfg.low_balance_warn_won;
            let crossed =
                available_before.is_some_and(|before| before >= warn && self.available(pin) < warn);
            if watched && warn > 0 && crossed {
                self.notify_card(pin, NOTICE_LOW_BALANCE);
            }
            outcome
        };
        let reply = outcome.reply;
        // An op naming a card the shard does not hold is not kept (CARD_NOT_FOUND, or its
        // deadline passed): it changed nothing, and a retry is answered the same way again.
        let names_no_card = !matches!(body, Body::Issue { .. } | Body::ForeignImport { .. })
            && self.card(pin).is_none();
        let unkept = reply.code == ResultCode::CardNotFound.as_u16()
            || reply.code == ResultCode::DeadlineExceededNotExecuted.as_u16();
        if names_no_card && unkept {
            return (reply, false);
        }
        self.insert_record(RefRecord {
            generation: 0,
            id: op_id,
            time,
            pin,
            body: Some(body.clone()),
            reply,
            status: outcome.status,
            capture_of: outcome.capture_of,
        });
        (reply, true)
    }

    fn execute(&mut self, now: Ms, op_id: OpId, body: &Body) -> Outcome {
        match *body {
            Body::Issue { pin_hash, face_value_won } => self.issue(pin_hash, face_value_won),
            Body::Activate { pin_hash, password_mac } => self.activate(pin_hash, password_mac),
            Body::Load { pin_hash, amount_won, funding } => {
                self.load(pin_hash, amount_won, funding)
            }
            Body::Sell { pin_hash, channel_id, price_won, payment_means, gift_recipient_ref } => {
                self.sell(pin_hash, channel_id, price_won, payment_means, gift_recipient_ref)
            }
            Body::Claim { pin_hash, password_mac, gift_recipient_ref, password_hint } => {
                self.claim(pin_hash, password_mac, gift_recipient_ref, password_hint)
            }
            Body::Block { pin_hash, reason } => self.block(pin_hash, reason),
            Body::Unblock { pin_hash } => self.unblock(pin_hash),
            Body::Register { pin_hash, holder_ref, verified_name } => {
                self.register(pin_hash, holder_ref, verified_name)
            }
            Body::Consign { pin_hash, partner_id, commission_per_mille } => {
                self.consign(pin_hash, partner_id, commission_per_mille)
            }
            Body::BalanceRefund { pin_hash, payout_account_ref } => {
                self.balance_refund(pin_hash, payout_account_ref)
            }
            Body::Authorize {
                pin_hash, password_mac, amount_won, category, hold_ttl_s, ..
            } => {
                self.authorize(now, op_id, pin_hash, password_mac, amount_won, category, hold_ttl_s)
            }
            Body::Sale { pin_hash, password_mac, amount_won, category, .. } => {
                self.sale(op_id, pin_hash, password_mac, amount_won, category)
            }
            Body::Capture { pin_hash, hold_id, amount_won, final_capture } => {
                self.capture(pin_hash, hold_id, amount_won, final_capture)
            }
            Body::Void { pin_hash, hold_id } => self.void(pin_hash, hold_id),
            Body::Reverse { pin_hash, original_op_id } => {
                self.reverse(op_id, pin_hash, original_op_id)
            }
            Body::Refund { pin_hash, original_op_id, amount_won } => {
                self.refund(pin_hash, original_op_id, amount_won)
            }
            Body::ForeignImport { foreign_hash, product_id, code } => {
                self.foreign_import(foreign_hash, product_id, code)
            }
            Body::ForeignConvert { pin_hash, password_mac, product_id } => {
                self.foreign_convert(op_id, pin_hash, password_mac, product_id)
            }
            Body::SessionStart(ref open) => self.session_start(now, open),
            Body::SessionUpdate { pin_hash, session_id, seq, used_total_s, requested_s } => {
                self.session_report(now, pin_hash, session_id, seq, used_total_s, Some(requested_s))
            }
            Body::SessionEnd { pin_hash, session_id, seq, used_total_s } => {
                self.session_report(now, pin_hash, session_id, seq, used_total_s, None)
            }
            Body::EventCharge { pin_hash, password_mac, destination, units, category } => {
                self.event_charge(op_id, pin_hash, password_mac, destination, units, category)
            }
            Body::Fence { .. }
            | Body::Tick
            | Body::Configure(_)
            | Body::ConfigureExtended(_)
            | Body::SessionsClose { .. }
            | Body::Upgrade { .. } => unreachable!(),
        }
    }

    /// A notice of `kind` to each live session of the card, lowest session id first, with the
    /// card's available balance now.
    fn notify_card(&mut self, pin: PinHash, kind: u8) {
        let mut ids: Vec<u128> = self
            .sessions
            .iter()
            .filter(|session| session.pin == pin)
            .map(|session| session.id)
            .collect();
        ids.sort();
        let available = self.available(pin);
        for id in ids {
            self.notices.push(SessionNoticeOut { session_id: id, kind, available_won: available });
        }
    }

    /// The tariff of a category and called number: the category's entry with the longest
    /// prefix of the number.
    fn tariff(&self, category: u8, destination: u64) -> Option<Tariff> {
        let (digits, len) = destination_digits(destination);
        let number = &digits[..len];
        self.cfg
            .tariffs
            .iter()
            .filter(|tariff| {
                tariff.category == category
                    && number.starts_with(tariff.destination_prefix.as_bytes())
            })
            .max_by_key(|tariff| tariff.destination_prefix.len())
            .cloned()
    }

    /// The local second (for the time-of-day bands) at server time `at`.
    fn local_second(&self, at: Ms) -> u64 {
        (at as i64 / 1000 + i64::from(self.cfg.tariff_utc_offset_s)) as u64
    }

    fn session_wanted(&self, requested: u32) -> u32 {
        if requested == 0 {
            self.cfg.session_grant_default_s
        } else {
            requested.min(self.cfg.session_grant_max_s)
        }
    }

    /// The password rule of calls and event charges: a card locked by wrong passwords is
    /// refused; no password (MAC 0) passes unless the rules require one (then PASSWORD_INVALID,
    /// not counted); a wrong one counts toward the lock; the right one clears the count.
    fn session_password(&mut self, pin: PinHash, mac: u64) -> Result<(), ResultCode> {
        let tries = self.cfg.password_tries_max;
        let required = self.password_required(pin);
        let card = self.card_mut(pin).unwrap();
        if card.failures >= tries {
            return Err(ResultCode::PasswordTriesExceeded);
        }
        if mac == 0 {
            return if required { Err(ResultCode::PasswordInvalid) } else { Ok(()) };
        }
        if card.mac != mac {
            card.failures += 1;
            return Err(if card.failures >= tries {
                ResultCode::PasswordTriesExceeded
            } else {
                ResultCode::PasswordInvalid
            });
        }
        card.failures = 0;
        Ok(())
    }

    /// Whether the card's calls and event charges need the password: its product's rule,
    /// else the engine-wide one.
    fn password_required(&self, pin: PinHash) -> bool {
        let face = self.cards.iter().find(|card| card.pin == pin).map(|card| card.face);
        self.cfg
            .products
            .iter()
            .find(|product| Some(product.face_value_won) == face)
            .and_then(|product| product.session_password_required)
            .unwrap_or(self.cfg.session_password_required)
    }

    /// What SESSION_START and EVENT_CHARGE check first, in order: the category, the called
    /// number, the card active, the product paying for the category.
    fn call_checks(&self, pin: PinHash, category: u8, destination: u64) -> Result<(), ResultCode> {
        if !(1..=6).contains(&category) {
            return Err(ResultCode::CategoryInvalid);
        }
        if destination_digits(destination).1 == 0 {
            return Err(ResultCode::DestinationInvalid);
        }
        self.must_be_active(pin)?;
        if !self.cfg.category_allowed(self.card(pin).unwrap().face, category) {
            return Err(ResultCode::CategoryNotAllowed);
        }
        Ok(())
    }

    fn session_start(&mut self, now: Ms, open: &SessionOpen) -> Outcome {
        let SessionOpen {
            pin_hash: pin,
            session_id: id,
            destination,
            requested_s: requested,
            owner_id: owner,
            password_mac: mac,
            category,
        } = *open;
        if id == 0 {
            return self.decline(ResultCode::FormatError, pin);
        }
        if let Err(code) = self.call_checks(pin, category, destination) {
            return self.decline(code, pin);
        }
        // An expired session's id stays taken while it is remembered.
        if self.sessions.iter().chain(&self.expired_sessions).any(|session| session.id == id) {
            return self.decline(ResultCode::SessionExists, pin);
        }
        if self.sessions.iter().filter(|session| session.pin == pin).count()
            >= usize::from(self.cfg.sessions_per_card_max)
        {
            return self.decline(ResultCode::SessionLimitPerCard, pin);
        }
        if self.sessions.len() >= self.cfg.sessions_per_shard_max as usize {
            return self.decline(ResultCode::SessionLimitPerShard, pin);
        }
        let Some(tariff) = self.tariff(category, destination) else {
            return self.decline(ResultCode::TariffNotFound, pin);
        };
        if let Err(code) = self.session_password(pin, mac) {
            return self.decline(code, pin);
        }
        let local_start = self.local_second(now);
        let (granted, last, reserve) = session_grant(
            &tariff,
            local_start,
            0,
            self.session_wanted(requested),
            self.available(pin),
        );
        if granted == 0 {
            return self.decline(ResultCode::InsufficientFunds, pin);
        }
        let tariff_id = tariff.tariff_id;
        let deadline = now + 2 * 1000 * u64::from(self.cfg.session_validity_s);
        self.sessions.push(RefSession {
            id,
            pin,
            tariff,
            owner,
            seq: 0,
            local_start,
            last_report: now,
            deadline,
            used: 0,
            rated: 0,
            reserved: reserve,
        });
        let mut reply = self.approve(pin, 0);
        SessionGrant {
            granted_s: granted,
            validity_s: self.cfg.session_validity_s,
            tariff_id,
            final_unit: last,
        }
        .pack_into(&mut reply);
        done(reply)
    }

    /// UPDATE (`requested` given) or END of a live session of this card, or a late one of a
    /// session expired for silence and still remembered.
    fn session_report(
        &mut self,
        now: Ms,
        pin: PinHash,
        id: u128,
        seq: u32,
        used_total: u32,
        requested: Option<u32>,
    ) -> Outcome {
        let live = self.sessions.iter().position(|session| session.id == id);
        let (expired, at) = match live {
            Some(at) if self.sessions[at].pin == pin => (false, at),
            Some(_) => return self.decline(ResultCode::SessionNotFound, pin),
            None => match self
                .expired_sessions
                .iter()
                .position(|session| session.id == id && session.pin == pin)
            {
                Some(at) => (true, at),
                None => return self.decline(ResultCode::SessionNotFound, pin),
            },
        };
        let mut session =
            if expired { self.expired_sessions[at].clone() } else { self.sessions[at].clone() };
        if seq <= session.seq {
            return self.decline(ResultCode::SessionSequenceStale, pin);
        }
        if !expired {
            self.sessions[at].reserved = 0;
        }
        session.seq = seq;
        session.last_report = now;
        session.reserved = 0;
        let used = session.used.max(u64::from(used_total));
        let costs = session_costs(&session.tariff, session.local_start, used);
        if !session.tariff.bands.is_empty() {
            self.banded_reports += 1;
            let start_rate = rate_at(&session.tariff, session.local_start);
            if (0..used)
                .any(|second| rate_at(&session.tariff, session.local_start + second) != start_rate)
            {
                self.band_crossings += 1;
            }
        }
        let rated = costs[used as usize];
        let due = rated - session.rated;
        let debit = due.min(self.available(pin));
        self.card_mut(pin).unwrap().balance -= debit;
        self.debited += u128::from(debit);
        session.used = used;
        session.rated = rated;
        let tariff_id = session.tariff.tariff_id;
        if expired {
            // Charged, no grant; an UPDATE is told to end the call and the session is still
            // remembered (in its place: it expired when it did), an END forgets it.
            let final_unit = match requested {
                Some(_) => {
                    self.expired_sessions[at] = session;
                    FINAL_UNIT_TERMINATE
                }
                None => {
                    self.expired_sessions.remove(at);
                    FINAL_UNIT_NONE
                }
            };
            let mut reply = self.approve(pin, debit);
            reply.code = ResultCode::SessionExpiredCharged.as_u16();
            SessionGrant { granted_s: 0, validity_s: 0, tariff_id, final_unit }
                .pack_into(&mut reply);
            return done(reply);
        }
        let grant = match requested {
            None => {
                self.sessions.remove(at);
                SessionGrant { granted_s: 0, validity_s: 0, tariff_id, final_unit: FINAL_UNIT_NONE }
            }
            Some(requested) => {
                let wanted = self.session_wanted(requested);
                let active = self.card(pin).unwrap().state == CardState::Active;
                let budget = self.available(pin);
                let (granted, last, reserve) = if debit < due || !active {
                    (0, FINAL_UNIT_TERMINATE, 0)
                } else {
                    session_grant(&session.tariff, session.local_start, used, wanted, budget)
                };
                session.reserved = reserve;
                session.deadline = now + 2 * 1000 * u64::from(self.cfg.session_validity_s);
                self.sessions[at] = session;
                SessionGrant {
                    granted_s: granted,
                    validity_s: self.cfg.session_validity_s,
                    tariff_id,
                    final_unit: last,
                }
            }
        };
        let mut reply = self.approve(pin, debit);
        if debit < due {
            reply.code = ResultCode::SessionUsageCapped.as_u16();
        }
        grant.pack_into(&mut reply);
        done(reply)
    }

    /// EVENT_CHARGE: units times the tariff's event price, debited at once like a SALE
    /// (points, and REFUND/REVERSE treat it as one).
    fn event_charge(
        &mut self,
        op_id: OpId,
        pin: PinHash,
        mac: u64,
        destination: u64,
        units: u32,
        category: u8,
    ) -> Outcome {
        if units == 0 {
            return self.decline(ResultCode::UnitsInvalid, pin);
        }
        if let Err(code) = self.call_checks(pin, category, destination) {
            return self.decline(code, pin);
        }
        let Some(tariff) = self.tariff(category, destination) else {
            return self.decline(ResultCode::TariffNotFound, pin);
        };
        if tariff.event_won == 0 {
            return self.decline(ResultCode::EventNotPriced, pin);
        }
        let Some(amount) = tariff.event_won.checked_mul(u64::from(units)) else {
            return self.decline(ResultCode::AmountOverflow, pin);
        };
        if let Err(code) = self.session_password(pin, mac) {
            return self.decline(code, pin);
        }
        self.pay(op_id, pin, amount)
    }

    /// A known product's pool grows by the PIN unless it was imported before; the reply's
    /// amount is the pool's new size.
    fn foreign_import(&mut self, hash: u128, product: u32, code: ForeignCode) -> Outcome {
        if !self.cfg.foreign_products.iter().any(|p| p.product_id == product) {
            return done(bare(ResultCode::ForeignProductUnknown));
        }
        if self.foreign_known.contains(&hash) {
            return done(bare(ResultCode::ForeignPinExists));
        }
        self.foreign_known.push(hash);
        let pool = self.foreign_pools.entry(product).or_default();
        pool.push_back(code);
        let mut reply = bare(ResultCode::Approved);
        reply.amount_won = pool.len() as u64;
        done(reply)
    }

    /// Checked as a telephone-call payment of the product's price; takes the pool's oldest PIN;
    /// no points.
    fn foreign_convert(&mut self, op_id: OpId, pin: PinHash, mac: u64, product: u32) -> Outcome {
        let Some(price) =
            self.cfg.foreign_products.iter().find(|p| p.product_id == product).map(|p| p.price_won)
        else {
            return self.decline(ResultCode::ForeignProductUnknown, pin);
        };
        if let Err(code) = self.payment_checks(pin, mac, price, 2) {
            return self.decline(code, pin);
        }
        if self.available(pin) < price {
            return self.decline(ResultCode::InsufficientFunds, pin);
        }
        let Some(code) = self.foreign_pools.get_mut(&product).and_then(VecDeque::pop_front) else {
            return self.decline(ResultCode::ForeignPinUnavailable, pin);
        };
        self.conversions.push((op_id, code));
        self.card_mut(pin).unwrap().balance -= price;
        self.debited += u128::from(price);
        done(self.approve(pin, price))
    }

    fn issue(&mut self, pin: PinHash, face: u64) -> Outcome {
        if self.product(face).is_none() {
            return done(bare(ResultCode::ProductNotFound));
        }
        self.cards.push(RefCard {
            pin,
            state: CardState::Issued,
            face,
            balance: face,
            mac: 0,
            failures: 0,
            charged: face,
            expires_s: 0,
            blocked_unsold: false,
            named: false,
            registered: false,
            points: 0,
            consignee: 0,
            gift_to: 0,
            hint: false,
        });
        self.issued += u128::from(face);
        done(self.approve(pin, face))
    }

    /// The catalogue's product of this face value, if it is one.
    fn product(&self, face: u64) -> Option<&Product> {
        self.cfg.products.iter().find(|product| product.face_value_won == face)
    }

    /// Seconds since the epoch at which a validity period starting now ends, for a card of
    /// this face value (its product's own period if the catalogue gives one).
    fn validity_end(&self, face: u64) -> u32 {
        let days = match self.product(face) {
            Some(Product { validity_days: Some(days), .. }) => *days,
            _ => self.cfg.validity_days,
        };
        u32::try_from(self.clock / 1000 + u64::from(days) * 86_400).unwrap_or(u32::MAX)
    }

    /// The recharge unit of a card of this face value.
    fn recharge_unit(&self, face: u64) -> u64 {
        match self.product(face) {
            Some(Product { recharge_unit_won: Some(unit), .. }) => *unit,
            _ => self.cfg.recharge_unit_won,
        }
    }

    /// Past its validity, with no pending hold, and in a state that can expire.
    fn expiry_due(&self, card: &RefCard, at: Ms) -> bool {
        card.expires_s != 0
            && at / 1000 >= u64::from(card.expires_s)
            && !self.holds.iter().any(|hold| hold.pin == card.pin)
            && !self.sessions.iter().any(|session| session.pin == card.pin)
            && matches!(card.state, CardState::Sold | CardState::Active | CardState::Blocked)
    }

    /// The first operation touching an expired card turns what is left into breakage.
    fn settle_expiry(&mut self, pin: PinHash) {
        let Some(card) = self.card(pin).cloned() else { return };
        if self.expiry_due(&card, self.clock) {
            let card = self.card_mut(pin).unwrap();
            let left = card.balance;
            card.balance = 0;
            card.state = CardState::Expired;
            self.breakage += u128::from(left);
        }
    }

    /// Payments of registered cards earn their product's rate per 1,000 won (rounded down; the
    /// default rate for products without one); money credited back takes its points back
    /// (never below zero).
    fn points(&mut self, pin: PinHash, amount: u64, earn: bool) {
        let face = self.card(pin).unwrap().face;
        let rate = match self.product(face) {
            Some(Product { points_per_mille: Some(rate), .. }) => *rate,
            _ => self.cfg.points_per_mille,
        };
        let points =
            u32::try_from(u128::from(amount) * u128::from(rate) / 1000).unwrap_or(u32::MAX);
        let card = self.card_mut(pin).unwrap();
        if earn {
            if card.registered {
                card.points = card.points.saturating_add(points);
            }
        } else {
            card.points = card.points.saturating_sub(points);
        }
    }

    /// The balance cap of a card: the legal cap for its kind (higher for named cards), lowered
    /// to its product's own cap if the catalogue gives one.
    fn cap(&self, pin: PinHash) -> u64 {
        let card = self.card(pin).unwrap();
        let legal =
            if card.named { self.cfg.balance_cap_named_won } else { self.cfg.balance_cap_won };
        match self.product(card.face) {
            Some(Product { balance_cap_won: Some(cap), .. }) => (*cap).min(legal),
            _ => legal,
        }
    }

    fn register(&mut self, pin: PinHash, holder: u64, verified: bool) -> Outcome {
        if holder == 0 {
            return done(bare(ResultCode::FormatError));
        }
        let Some(card) = self.card_mut(pin) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        if !matches!(card.state, CardState::Active | CardState::Blocked) {
            let code = wrong_state(card.state);
            return self.decline(code, pin);
        }
        card.named |= verified;
        card.registered = true;
        let cap = self.cap(pin);
        done(self.approve(pin, cap))
    }

    fn consign(&mut self, pin: PinHash, partner: u32, commission: u16) -> Outcome {
        if partner == 0 || commission > 1000 {
            return self.decline(ResultCode::ChannelInvalid, pin);
        }
        let Some(card) = self.card_mut(pin) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        match card.state {
            CardState::Issued if card.consignee != 0 => {
                self.decline(ResultCode::CardConsignedElsewhere, pin)
            }
            CardState::Issued => {
                card.consignee = partner;
                let face = card.face;
                done(self.approve(pin, face))
            }
            CardState::Sold | CardState::Active => self.decline(ResultCode::CardAlreadySold, pin),
            other => self.decline(wrong_state(other), pin),
        }
    }

    fn sell(&mut self, pin: PinHash, channel: u32, price: u64, means: u8, gift_to: u64) -> Outcome {
        if channel == 0 || !(1..=5).contains(&means) {
            return self.decline(ResultCode::ChannelInvalid, pin);
        }
        if price == 0 {
            return self.decline(ResultCode::AmountInvalid, pin);
        }
        let Some(face) = self.card(pin).map(|card| card.face) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        let validity_end = self.validity_end(face);
        let card = self.card_mut(pin).unwrap();
        match card.state {
            CardState::Issued if card.consignee != 0 && card.consignee != channel => {
                self.decline(ResultCode::CardConsignedElsewhere, pin)
            }
            CardState::Issued => {
                card.state = CardState::Sold;
                card.expires_s = validity_end;
                card.gift_to = gift_to;
                let face = card.face;
                done(self.approve(pin, face))
            }
            CardState::Sold | CardState::Active => self.decline(ResultCode::CardAlreadySold, pin),
            other => self.decline(wrong_state(other), pin),
        }
    }

    fn block(&mut self, pin: PinHash, reason: u8) -> Outcome {
        if !(1..=4).contains(&reason) {
            return self.decline(ResultCode::BlockReasonInvalid, pin);
        }
        let Some(card) = self.card_mut(pin) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        match card.state {
            CardState::Active => {}
            CardState::Sold => card.blocked_unsold = true,
            other => return self.decline(wrong_state(other), pin),
        }
        card.state = CardState::Blocked;
        done(self.approve(pin, 0))
    }

    fn unblock(&mut self, pin: PinHash) -> Outcome {
        let tries = self.cfg.password_tries_max;
        let Some(card) = self.card_mut(pin) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        let code = match card.state {
            CardState::Blocked => None,
            CardState::Active if card.failures >= tries => None,
            CardState::Active => Some(ResultCode::CardNotBlocked),
            other => Some(wrong_state(other)),
        };
        if let Some(code) = code {
            return self.decline(code, pin);
        }
        card.state = if card.state == CardState::Blocked && card.blocked_unsold {
            CardState::Sold
        } else {
            CardState::Active
        };
        card.blocked_unsold = false;
        card.failures = 0;
        done(self.approve(pin, 0))
    }

    fn balance_refund(&mut self, pin: PinHash, account: u64) -> Outcome {
        if account == 0 {
            return done(bare(ResultCode::FormatError));
        }
        let Some(card) = self.card(pin).cloned() else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        if !matches!(card.state, CardState::Active | CardState::Blocked) {
            return self.decline(wrong_state(card.state), pin);
        }
        if self.holds.iter().any(|hold| hold.pin == pin)
            || self.sessions.iter().any(|session| session.pin == pin)
        {
            return self.decline(ResultCode::HoldsOutstanding, pin);
        }
        let percent = if card.face <= self.cfg.small_face_value_max_won {
            self.cfg.refund_used_percent_small
        } else {
            self.cfg.refund_used_percent
        };
        let used = card.charged.saturating_sub(card.balance);
        if u128::from(used) * 100 < u128::from(card.charged) * u128::from(percent) {
            return self.decline(ResultCode::RefundRuleNotMet, pin);
        }
        let card = self.card_mut(pin).unwrap();
        let payout = card.balance;
        card.balance = 0;
        card.state = CardState::Closed;
        self.paid_out += u128::from(payout);
        done(self.approve(pin, payout))
    }

    fn activate(&mut self, pin: PinHash, mac: u64) -> Outcome {
        let Some(face) = self.card(pin).map(|card| card.face) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        let validity_end = self.validity_end(face);
        let card = self.card_mut(pin).unwrap();
        match card.state {
            CardState::Issued | CardState::Sold if card.gift_to != 0 => {
                self.decline(ResultCode::GiftClaimRequired, pin)
            }
            CardState::Issued | CardState::Sold => {
                card.state = CardState::Active;
                card.mac = mac;
                card.failures = 0;
                if card.expires_s == 0 {
                    card.expires_s = validity_end;
                }
                done(self.approve(pin, 0))
            }
            other => self.decline(wrong_state(other), pin),
        }
    }

    /// A claim names the gift's recipient (0 for a card that is not a gift), then activates.
    fn claim(&mut self, pin: PinHash, mac: u64, gift_to: u64, hint: bool) -> Outcome {
        let Some(card) = self.card_mut(pin) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        match card.state {
            CardState::Issued | CardState::Sold if card.gift_to != gift_to => {
                self.decline(ResultCode::GiftRecipientMismatch, pin)
            }
            CardState::Issued | CardState::Sold => {
                card.gift_to = 0;
                let outcome = self.activate(pin, mac);
                self.card_mut(pin).unwrap().hint |= hint;
                outcome
            }
            other => self.decline(wrong_state(other), pin),
        }
    }

    /// Missing card or not active: the decline code.
    fn must_be_active(&self, pin: PinHash) -> Result<(), ResultCode> {
        match self.card(pin) {
            None => Err(ResultCode::CardNotFound),
            Some(card) if card.state == CardState::Active => Ok(()),
            Some(card) => Err(wrong_state(card.state)),
        }
    }

    fn load(&mut self, pin: PinHash, amount: u64, funding: u8) -> Outcome {
        if !(1..=5).contains(&funding) {
            return done(bare(ResultCode::FormatError));
        }
        if amount == 0 {
            return self.decline(ResultCode::AmountInvalid, pin);
        }
        if let Err(code) = self.must_be_active(pin) {
            return self.decline(code, pin);
        }
        if amount % self.recharge_unit(self.card(pin).unwrap().face) != 0 {
            return self.decline(ResultCode::RechargeUnitInvalid, pin);
        }
        let balance = self.card(pin).unwrap().balance;
        let Some(new_balance) = balance.checked_add(amount) else {
            return self.decline(ResultCode::AmountOverflow, pin);
        };
        if new_balance > self.cap(pin) {
            return self.decline(ResultCode::BalanceCapExceeded, pin);
        }
        let face = self.card(pin).unwrap().face;
        let extension = if self.product(face).is_some_and(|product| product.promotional) {
            u64::from(self.cfg.promotional_extension_days) * 86_400
        } else {
            0
        };
        let card = self.card_mut(pin).unwrap();
        card.balance = new_balance;
        card.charged = card.charged.saturating_add(amount);
        card.expires_s = u32::try_from(u64::from(card.expires_s) + extension).unwrap_or(u32::MAX);
        self.loaded += u128::from(amount);
        done(self.approve(pin, amount))
    }

    /// Amount, category, card and password checks shared by AUTHORIZE and SALE; counts a wrong
    /// password even though the payment is declined.
    fn payment_checks(
        &mut self,
        pin: PinHash,
        mac: u64,
        amount: u64,
        category: u8,
    ) -> Result<(), ResultCode> {
        if amount == 0 {
            return Err(ResultCode::AmountInvalid);
        }
        if !(1..=6).contains(&category) {
            return Err(ResultCode::CategoryInvalid);
        }
        self.must_be_active(pin)?;
        // The product mix: test_min's catalogue restricts some face values.
        let face = self.card(pin).unwrap().face;
        if let Some(Product { category_mask: Some(mask), .. }) = self.product(face) {
            if mask & (1 << (category - 1)) == 0 {
                return Err(ResultCode::CategoryNotAllowed);
            }
        }
        let tries = self.cfg.password_tries_max;
        let card = self.card_mut(pin).unwrap();
        if card.failures >= tries {
            return Err(ResultCode::PasswordTriesExceeded);
        }
        if card.mac != mac {
            card.failures += 1;
            return Err(if card.failures >= tries {
                ResultCode::PasswordTriesExceeded
            } else {
                ResultCode::PasswordInvalid
            });
        }
        card.failures = 0;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn authorize(
        &mut self,
        now: Ms,
        op_id: OpId,
        pin: PinHash,
        mac: u64,
        amount: u64,
        category: u8,
        ttl: u32,
    ) -> Outcome {
        if ttl > self.cfg.hold_ttl_max_s {
            return self.decline(ResultCode::HoldTtlInvalid, pin);
        }
        if let Err(code) = self.payment_checks(pin, mac, amount, category) {
            return self.decline(code, pin);
        }
        let pending = self.holds.iter().filter(|hold| hold.pin == pin).count();
        if pending >= usize::from(self.cfg.holds_per_card_max) {
            return self.decline(ResultCode::HoldLimitReached, pin);
        }
        if self.available(pin) < amount {
            return self.decline(ResultCode::InsufficientFunds, pin);
        }
        let ttl_s = if ttl == 0 { self.cfg.hold_ttl_default_s } else { ttl };
        let expires = now + u64::from(ttl_s) * 1000;
        self.holds.push(RefHold { id: op_id, pin, amount, captured: 0, captures: 0, expires });
        self.payments.push(RefPayment { id: op_id, debited: 0, refunded: 0 });
        let mut reply = self.approve(pin, amount);
        reply.hold_expires_at_ms = expires;
        Outcome { reply, status: OpStatus::HoldPending, capture_of: 0 }
    }

    fn sale(&mut self, op_id: OpId, pin: PinHash, mac: u64, amount: u64, category: u8) -> Outcome {
        if let Err(code) = self.payment_checks(pin, mac, amount, category) {
            return self.decline(code, pin);
        }
        self.pay(op_id, pin, amount)
    }

    /// The debit of a SALE or an EVENT_CHARGE: from the available balance, with points, kept
    /// as a payment that REFUND and REVERSE credit back.
    fn pay(&mut self, op_id: OpId, pin: PinHash, amount: u64) -> Outcome {
        if self.available(pin) < amount {
            return self.decline(ResultCode::InsufficientFunds, pin);
        }
        self.card_mut(pin).unwrap().balance -= amount;
        self.debited += u128::from(amount);
        self.points(pin, amount, true);
        self.payments.push(RefPayment { id: op_id, debited: amount, refunded: 0 });
        done(self.approve(pin, amount))
    }

    /// Why `hold_id` names no pending hold of this card, judged from its AUTHORIZE record.
    fn closed_hold(&self, pin: PinHash, hold_id: OpId, when_voided: ResultCode) -> ResultCode {
        match self.record(hold_id) {
            Some(record)
                if record.pin == pin && matches!(record.body, Some(Body::Authorize { .. })) =>
            {
                match record.status {
                    OpStatus::HoldCaptured => ResultCode::HoldAlreadyCaptured,
                    OpStatus::HoldVoided => when_voided,
                    OpStatus::HoldExpired => ResultCode::HoldExpired,
                    OpStatus::Reversed => ResultCode::HoldReversed,
                    _ => ResultCode::HoldNotFound,
                }
            }
            _ => ResultCode::HoldNotFound,
        }
    }

    fn capture(
        &mut self,
        pin: PinHash,
        hold_id: OpId,
        amount: u64,
        final_capture: bool,
    ) -> Outcome {
        if amount == 0 {
            return self.decline(ResultCode::AmountInvalid, pin);
        }
        match self.card(pin).map(|card| card.state) {
            None => return self.decline(ResultCode::CardNotFound, pin),
            Some(CardState::Issued | CardState::Sold) => {
                return self.decline(ResultCode::CardNotActive, pin);
            }
            Some(CardState::Closed) => return self.decline(ResultCode::CardClosed, pin),
            Some(CardState::Active | CardState::Blocked | CardState::Expired) => {}
        }
        let Some(hold) = self.hold(hold_id).filter(|hold| hold.pin == pin).cloned() else {
            let code = self.closed_hold(pin, hold_id, ResultCode::HoldNotFound);
            return self.decline(code, pin);
        };
        let remaining = hold.amount - hold.captured;
        let take = if amount == u64::MAX { remaining } else { amount };
        if take > remaining {
            return self.decline(ResultCode::ExceedsHoldAmount, pin);
        }
        if hold.captures >= self.cfg.captures_per_hold_max {
            return self.decline(ResultCode::CaptureLimitReached, pin);
        }
        self.card_mut(pin).unwrap().balance -= take;
        self.debited += u128::from(take);
        self.points(pin, take, true);
        let hold = self.holds.iter_mut().find(|hold| hold.id == hold_id).unwrap();
        hold.captured += take;
        hold.captures += 1;
        let nothing_left = hold.captured == hold.amount;
        self.payment_mut(hold_id).expect("an approved AUTHORIZE has a payment").debited += take;
        if final_capture || nothing_left {
            self.close_hold(hold_id, OpStatus::HoldCaptured);
        }
        Outcome { reply: self.approve(pin, take), status: OpStatus::Completed, capture_of: hold_id }
    }

    fn void(&mut self, pin: PinHash, hold_id: OpId) -> Outcome {
        if self.hold(hold_id).is_some_and(|hold| hold.pin == pin) {
            let released = self.close_hold(hold_id, OpStatus::HoldVoided);
            return done(self.approve(pin, released));
        }
        let code = self.closed_hold(pin, hold_id, ResultCode::HoldAlreadyVoided);
        self.decline(code, pin)
    }

    fn reverse(&mut self, op_id: OpId, pin: PinHash, original: OpId) -> Outcome {
        if original == 0 || original == op_id {
            return self.decline(ResultCode::OpIdInvalid, pin);
        }
        let Some(record) = self.record(original).cloned() else {
            if self.hold(original).is_some_and(|hold| hold.pin == pin) {
                return self.undo_payment(pin, original);
            }
            let time = time_of(original);
            if time > self.clock + self.cfg.op_clock_skew_max_ms {
                return self.decline(ResultCode::OpIdFromFuture, pin);
            }
            if !self.too_old(time) {
                self.insert_record(RefRecord {
                    generation: 0,
                    id: original,
                    time,
                    pin,
                    body: None,
                    reply: bare(ResultCode::ReversedBeforeArrival),
                    status: OpStatus::Tombstone,
                    capture_of: 0,
                });
            }
            return self.decline(ResultCode::OriginalNotFoundRecorded, pin);
        };
        let Some(original_body) = &record.body else {
            // A fenced op never ran: nothing to undo.
            if record.reply.result_code() == ResultCode::FencedBeforeArrival {
                return self.decline(ResultCode::OriginalDeclinedNoop, pin);
            }
            return self.decline(ResultCode::AlreadyReversed, pin);
        };
        if record.pin != pin {
            return self.decline(ResultCode::OriginalCardMismatch, pin);
        }
        if !matches!(
            original_body,
            Body::Authorize { .. } | Body::Sale { .. } | Body::EventCharge { .. }
        ) {
            return self.decline(ResultCode::ReversalNotSupported, pin);
        }
        if record.reply.code != ResultCode::Approved as u16 {
            return self.decline(ResultCode::OriginalDeclinedNoop, pin);
        }
        if record.status == OpStatus::Reversed {
            return self.decline(ResultCode::AlreadyReversed, pin);
        }
        self.undo_payment(pin, original)
    }

    /// Releases the payment's pending hold and credits back what it debited and was not
    /// refunded (no cap, any card state).
    fn undo_payment(&mut self, pin: PinHash, original: OpId) -> Outcome {
        let released = if self.hold(original).is_some() {
            self.close_hold(original, OpStatus::Reversed)
        } else {
            0
        };
        let credit = match self.payment_mut(original) {
            Some(payment) => {
                let credit = payment.debited - payment.refunded;
                payment.refunded = payment.debited;
                credit
            }
            None => 0,
        };
        if let Some(record) = self.record_mut(original) {
            record.status = OpStatus::Reversed;
        }
        self.reversed += u128::from(credit);
        let card = self.card_mut(pin).expect("a payment's card exists");
        match card.state {
            CardState::Closed => self.paid_out += u128::from(credit),
            CardState::Expired => self.breakage += u128::from(credit),
            _ => card.balance += credit,
        }
        self.points(pin, credit, false);
        done(self.approve(pin, credit + released))
    }

    fn refund(&mut self, pin: PinHash, original: OpId, amount: u64) -> Outcome {
        if amount == 0 {
            return self.decline(ResultCode::AmountInvalid, pin);
        }
        let Some(card) = self.card(pin) else {
            return self.decline(ResultCode::CardNotFound, pin);
        };
        if card.state == CardState::Closed {
            return self.decline(ResultCode::CardClosed, pin);
        }
        if card.state == CardState::Expired {
            return self.decline(ResultCode::CardExpired, pin);
        }
        let balance = card.balance;
        let Some(record) = self.record(original) else {
            return self.decline(ResultCode::OriginalNotFound, pin);
        };
        let Some(original_body) = &record.body else {
            return self.decline(ResultCode::OriginalNotFound, pin);
        };
        if record.pin != pin {
            return self.decline(ResultCode::OriginalCardMismatch, pin);
        }
        if record.reply.code != ResultCode::Approved as u16 {
            return self.decline(ResultCode::OriginalNotFound, pin);
        }
        let payment_id = match original_body {
            Body::Sale { .. } | Body::EventCharge { .. } => original,
            Body::Capture { .. } => {
                if self.record(record.capture_of).is_none() {
                    return self.decline(ResultCode::OriginalNotFound, pin);
                }
                record.capture_of
            }
            _ => return self.decline(ResultCode::ReversalNotSupported, pin),
        };
        let payment = self.payments.iter().find(|p| p.id == payment_id).expect("payment");
        if amount > payment.debited - payment.refunded {
            return self.decline(ResultCode::ExceedsRefundable, pin);
        }
        let Some(new_balance) = balance.checked_add(amount) else {
            return self.decline(ResultCode::AmountOverflow, pin);
        };
        if new_balance > self.cap(pin) {
            return self.decline(ResultCode::BalanceCapExceeded, pin);
        }
        self.payment_mut(payment_id).unwrap().refunded += amount;
        self.card_mut(pin).unwrap().balance = new_balance;
        self.refunded += u128::from(amount);
        self.points(pin, amount, false);
        done(self.approve(pin, amount))
    }

    /// Stores the approval code the engine chose for the op just recorded.
    fn adopt_approval_code(&mut self, op_id: OpId, code: u32) {
        if let Some(record) = self.record_mut(op_id) {
            if record.reply.approval_code == APPROVAL_PENDING {
                record.reply.approval_code = code;
            }
        }
    }

    // --- what the reads must show ---

    /// BALANCE_INQUIRY at `at` (never before the clock): holds due by then show as released.
    fn view(&self, pin: PinHash, at: Ms) -> Option<CardView> {
        let at = at.max(self.clock);
        let card = self.card(pin)?;
        let mut holds: Vec<HoldView> = self
            .holds
            .iter()
            .filter(|hold| hold.pin == pin && hold.expires > at)
            .map(|hold| HoldView {
                hold_id: hold.id,
                amount_won: hold.amount,
                captured_won: hold.captured,
                expires_at_ms: hold.expires,
            })
            .collect();
        holds.sort_by_key(|hold| (hold.expires_at_ms, hold.hold_id));
        let held: u64 = holds.iter().map(|hold| hold.amount_won - hold.captured_won).sum::<u64>()
            + self.reserved(pin);
        let (state, balance) = if self.expiry_due(card, at) {
            (CardState::Expired, 0)
        } else {
            (card.state, card.balance)
        };
        Some(CardView {
            state,
            face_value_won: card.face,
            balance_won: balance,
            available_won: balance - held,
            held_won: held,
            password_tries_left: self.cfg.password_tries_max.saturating_sub(card.failures),
            points: card.points,
            valid_until_s: card.expires_s,
            password_hint: card.hint,
            holds,
        })
    }

    fn op_view(&self, record: &RefRecord) -> OpView {
        match &record.body {
            None => OpView { status: OpStatus::Tombstone, msg_type: 0, reply: None },
            Some(body) => OpView {
                status: record.status,
                msg_type: msg_type_of(body) as u16,
                reply: Some(record.reply),
            },
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            issued_won: self.issued,
            loaded_won: self.loaded,
            refunded_won: self.refunded,
            reversed_won: self.reversed,
            debited_won: self.debited,
            paid_out_won: self.paid_out,
            breakage_won: self.breakage,
            balances_won: self.cards.iter().map(|card| u128::from(card.balance)).sum(),
            held_won: self
                .holds
                .iter()
                .map(|hold| u128::from(hold.amount - hold.captured))
                .sum::<u128>()
                + self.sessions.iter().map(|session| u128::from(session.reserved)).sum::<u128>(),
        }
    }

    fn next_expiry(&self) -> Option<Ms> {
        self.holds
            .iter()
            .map(|hold| hold.expires)
            .chain(self.sessions.iter().map(|session| session.deadline))
            .min()
    }

    /// PRICE_QUOTE at `at` (never before the clock): the tariff's terms, the rate at that local
    /// time, what a call of `duration` seconds starting then and `units` events cost, and with
    /// a card, its available balance and (active) the seconds it buys, up to the largest grant.
    fn quote(
        &self,
        at: Ms,
        pin: Option<PinHash>,
        category: u8,
        destination: u64,
        duration: u32,
        units: u32,
    ) -> pinswitch_core::Quote {
        let refused =
            |code: ResultCode| pinswitch_core::Quote { code: code.as_u16(), ..Default::default() };
        if !(1..=6).contains(&category) {
            return refused(ResultCode::CategoryInvalid);
        }
        if destination_digits(destination).1 == 0 {
            return refused(ResultCode::DestinationInvalid);
        }
        let Some(tariff) = self.tariff(category, destination) else {
            return refused(ResultCode::TariffNotFound);
        };
        let at = at.max(self.clock);
        let start = self.local_second(at);
        let mut quote = pinswitch_core::Quote {
            code: ResultCode::Approved.as_u16(),
            tariff_id: tariff.tariff_id,
            connect_fee_won: tariff.connect_fee_won,
            rate_won: rate_at(&tariff, start),
            increment_s: tariff.increment_s,
            first_increment_s: tariff.first_increment_s,
            event_won: tariff.event_won,
            duration_cost_won: session_costs(&tariff, start, u64::from(duration))
                [duration as usize],
            event_cost_won: tariff.event_won.saturating_mul(u64::from(units)),
            available_won: 0,
            affordable_s: 0,
        };
        if let Some(pin) = pin {
            let Some(view) = self.view(pin, at) else {
                return refused(ResultCode::CardNotFound);
            };
            quote.available_won = view.available_won;
            if view.state == CardState::Active {
                quote.affordable_s = session_grant(
                    &tariff,
                    start,
                    0,
                    self.cfg.session_grant_max_s,
                    view.available_won,
                )
                .0;
            }
        }
        quote
    }
}

// ---------------------------------------------------------------------------------------------
// The random walk.

/// What the last steps were, for failure messages.
struct TrailEntry {
    step: usize,
    now: Ms,
    command: Command,
    reply: Reply,
    changed: bool,
}

struct Walk {
    seed: u64,
    rng: Rng,
    shard: Shard,
    reference: Reference,
    now: Ms,
    /// Time-step divisor for this seed: large means many ops per window (capacity eviction).
    tempo: u64,
    /// Let some commands carry a clock a little behind the last one (the engine keeps the max).
    clock_jitter: bool,
    next_low: u64,
    /// Every command sent with a non-zero op id, in order.
    sent: Vec<Command>,
    /// AUTHORIZE/SALE commands whose REVERSE was sent first; sent later (or never).
    unsent_originals: Vec<Command>,
    journal: Vec<(Ms, Command, Reply)>,
    /// Every session notice the engine raised, in order (replay must raise the same).
    notices: Vec<SessionNoticeOut>,
    trail: VecDeque<TrailEntry>,
    step: usize,
    coverage: Coverage,
    /// Set for a fixed script instead of a random walk.
    script: Option<&'static str>,
}

/// Commands the server issues itself (no op id): the clock, the audit's close, new rules.
fn is_server_command(body: &Body) -> bool {
    matches!(
        body,
        Body::Tick
            | Body::SessionsClose { .. }
            | Body::Configure(_)
            | Body::ConfigureExtended(_)
            | Body::Upgrade { .. }
    )
}

fn good_mac(pin: PinHash) -> u64 {
    (pin as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1
}

impl Walk {
    fn new(seed: u64, clock_jitter: bool) -> Walk {
        let mut rng = Rng(seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x5EED);
        let tempo = rng.pick(&[1, 3, 30]);
        // T0 is 17:00 in Korea: some walks start shortly before the night rate (22:00) or the
        // day rate (08:00) of the banded tariff, so calls cross a rate change whatever the tempo.
        let start = T0 + rng.pick(&[0, 4 * 3_600, 4 * 3_600 + 40 * 60, 14 * 3_600]) * 1_000;
        Walk {
            seed,
            rng,
            shard: Shard::new(0, 1, EngineConfig::test_min()),
            reference: Reference::new(EngineConfig::test_min()),
            now: start,
            tempo,
            clock_jitter,
            next_low: 0,
            sent: Vec::new(),
            unsent_originals: Vec::new(),
            journal: Vec::new(),
            notices: Vec::new(),
            trail: VecDeque::new(),
            step: 0,
            coverage: Coverage::default(),
            script: None,
        }
    }

    fn cfg(&self) -> &EngineConfig {
        &self.reference.cfg
    }

    fn advance_time(&mut self) {
        // Some commands share a millisecond (one batch): sessions reported together expire
        // together, in session id order.
        if self.rng.percent(8) {
            return;
        }
        let r = self.rng.below(1000);
        let dt = if r < 450 {
            self.rng.range(0, 1_000)
        } else if r < 750 {
            self.rng.range(0, 30_000)
        } else if r < 900 {
            self.rng.range(30_000, 180_000)
        } else if r < 970 {
            self.rng.range(180_000, 1_200_000)
        } else if r < 995 {
            self.rng.range(1_200_000, 4_200_000)
        } else if r < 998 {
            self.rng.range(7_200_000, 9_000_000)
        } else {
            // Rarely a day passes (test_min cards are valid for one day): cards expire.
            self.now += self.rng.range(86_400_000, 90_000_000);
            0
        };
        self.now += dt / self.tempo;
    }

    /// Mostly a card that exists; sometimes one that may not yet, or never will.
    fn pick_pin(&mut self) -> PinHash {
        let r = self.rng.below(100);
        if r < 75 && !self.reference.cards.is_empty() {
            let index = self.rng.below(self.reference.cards.len() as u64) as usize;
            self.reference.cards[index].pin
        } else if r < 93 {
            PINS[self.rng.below(ISSUABLE as u64) as usize]
        } else {
            self.rng.pick(&PINS[ISSUABLE..])
        }
    }

    fn other_pin(&mut self, pin: PinHash) -> PinHash {
        loop {
            let other = self.rng.pick(&PINS);
            if other != pin {
                return other;
            }
        }
    }

    /// A fresh op id, usually stamped near now; sometimes at the edges of the window and skew.
    fn fresh_op_id(&mut self) -> OpId {
        self.next_low += 1;
        let window = self.cfg().idempotency_window_ms;
        let skew = self.cfg().op_clock_skew_max_ms;
        let now = self.now;
        let time = match self.rng.below(100) {
            0..=74 => now - self.rng.below(3_000),
            75..=81 => now + self.rng.below(90_000),
            82..=87 => now - self.rng.below(window + window / 10),
            88..=89 => now - window - 1 + self.rng.below(3),
            90..=91 => now + skew - 1 + self.rng.below(3),
            _ => now,
        };
        let noise = u128::from(self.rng.next() & 0xFFFF) << 64;
        op_id_at(time, noise | u128::from(self.next_low))
    }

    fn deadline(&mut self) -> Ms {
        match self.rng.below(100) {
            0..=81 => 0,
            82..=87 => self.now - self.rng.range(1, 10_000),
            88..=94 => self.now + self.rng.below(10_000),
            _ => self.now,
        }
    }

    fn password_for(&mut self, pin: PinHash) -> u64 {
        if self.rng.percent(85) {
            self.reference.card(pin).map_or(good_mac(pin), |card| card.mac)
        } else {
            self.rng.next()
        }
    }

    fn category(&mut self) -> u8 {
        match self.rng.below(100) {
            0..=89 => self.rng.range(1, 6) as u8,
            90..=94 => 0,
            _ => self.rng.range(7, 255) as u8,
        }
    }

    fn payment_amount(&mut self, pin: PinHash) -> u64 {
        let available = self.reference.available(pin);
        match self.rng.below(100) {
            0..=39 => self.rng.range(1, (available / 8).max(1)),
            40..=59 => self.rng.range(1, available.max(1)),
            60..=69 => available.max(1),
            70..=79 => available + self.rng.range(1, 1_000),
            80..=84 => 0,
            _ => self.rng.range(100, 5_000),
        }
    }

    fn authorize_body(&mut self, pin: PinHash) -> Body {
        let hold_ttl_s = match self.rng.below(100) {
            0..=19 => 0,
            20..=44 => self.rng.range(1, 120) as u32,
            45..=89 => self.rng.range(121, 3_600) as u32,
            90..=94 => 3_600,
            _ => self.rng.range(3_601, 100_000) as u32,
        };
        Body::Authorize {
            pin_hash: pin,
            password_mac: self.password_for(pin),
            amount_won: self.payment_amount(pin),
            merchant_id: self.rng.below(5),
            category: self.category(),
            hold_ttl_s,
        }
    }

    fn sale_body(&mut self, pin: PinHash) -> Body {
        Body::Sale {
            pin_hash: pin,
            password_mac: self.password_for(pin),
            amount_won: self.payment_amount(pin),
            merchant_id: self.rng.below(5),
            category: self.category(),
        }
    }

    /// A previously sent command matching `wanted`, preferring recent ones.
    fn sent_where(&mut self, wanted: impl Fn(&Body) -> bool) -> Option<Command> {
        let candidates: Vec<usize> =
            (0..self.sent.len()).filter(|&i| wanted(&self.sent[i].body)).collect();
        if candidates.is_empty() {
            return None;
        }
        let index = if self.rng.percent(70) {
            let recent = candidates.len().min(20);
            candidates[candidates.len() - 1 - self.rng.below(recent as u64) as usize]
        } else {
            self.rng.pick(&candidates)
        };
        Some(self.sent[index].clone())
    }

    /// A hold id (and its card) to capture or void.
    /// An op the reference still remembers, executed and matching `wanted` (its card and id).
    fn recorded_where(
        &mut self,
        wanted: impl Fn(&RefRecord, &Body) -> bool,
    ) -> Option<(PinHash, OpId)> {
        let candidates: Vec<(PinHash, OpId)> = self
            .reference
            .records
            .iter()
            .filter(|record| record.body.as_ref().is_some_and(|body| wanted(record, body)))
            .map(|record| (record.pin, record.id))
            .collect();
        if candidates.is_empty() { None } else { Some(self.rng.pick(&candidates)) }
    }

    /// A hold id (and its card) to capture or void.
    fn pick_hold(&mut self) -> (PinHash, OpId, u64) {
        let r = self.rng.below(100);
        if r < 75 && !self.reference.holds.is_empty() {
            let index = self.rng.below(self.reference.holds.len() as u64) as usize;
            let hold = &self.reference.holds[index];
            return (hold.pin, hold.id, hold.amount - hold.captured);
        }
        let found = if r < 88 {
            // A hold that was captured, voided, expired or reversed (or never placed).
            self.recorded_where(|_, body| matches!(body, Body::Authorize { .. }))
        } else if r < 95 {
            self.sent_where(|body| matches!(body, Body::Authorize { .. })).map(|command| {
                (
                    command.body.route_key().expect("operations name a card or a foreign PIN"),
                    command.op_id,
                )
            })
        } else {
            None
        };
        match found {
            Some((pin, id)) => {
                (pin, id, self.reference.hold(id).map_or(1_000, |hold| hold.amount - hold.captured))
            }
            None => {
                let id = self
                    .sent_where(|_| true)
                    .map_or_else(|| self.fresh_op_id(), |command| command.op_id);
                (self.pick_pin(), id, 1_000)
            }
        }
    }

    /// Sell, block, unblock, balance refund: mostly well formed, sometimes not.
    fn card_life_body(&mut self) -> Body {
        let kind = self.rng.below(8);
        // Conversions often draw on a card that is calling (low-balance notices).
        let pin =
            if kind == 7 && self.rng.percent(40) { self.calling_pin() } else { self.pick_pin() };
        match kind {
            6 => {
                // A dozen codes, so imports repeat (FOREIGN_PIN_EXISTS) and pools stay small
                // enough to run dry (FOREIGN_PIN_UNAVAILABLE); product 3 is not in the catalogue.
                let index = self.rng.below(12);
                let code = ForeignCode::new(format!("FX{index:02}").as_bytes()).unwrap();
                let product_id = if self.rng.percent(90) { self.rng.range(1, 2) as u32 } else { 3 };
                Body::ForeignImport {
                    foreign_hash: 0xF0E1_0000_0000_0000_0000_0000_0000_0000 | u128::from(index),
                    product_id,
                    code,
                }
            }
            7 => Body::ForeignConvert {
                pin_hash: pin,
                password_mac: if self.rng.percent(90) { good_mac(pin) } else { self.rng.next() },
                product_id: if self.rng.percent(92) { self.rng.range(1, 2) as u32 } else { 3 },
            },
            5 => Body::Consign {
                pin_hash: pin,
                partner_id: if self.rng.percent(90) { self.rng.range(1, 40) as u32 } else { 0 },
                commission_per_mille: if self.rng.percent(95) {
                    self.rng.range(0, 200) as u16
                } else {
                    1001
                },
            },
            4 => Body::Register {
                pin_hash: pin,
                holder_ref: if self.rng.percent(92) { self.rng.range(1, 1 << 30) } else { 0 },
                verified_name: self.rng.percent(50),
            },
            0 => Body::Sell {
                pin_hash: pin,
                channel_id: if self.rng.percent(90) { self.rng.range(1, 40) as u32 } else { 0 },
                price_won: if self.rng.percent(92) { self.rng.range(1, 100_000) } else { 0 },
                payment_means: if self.rng.percent(90) {
                    self.rng.range(1, 5) as u8
                } else {
                    self.rng.pick(&[0, 6])
                },
                gift_recipient_ref: if self.rng.percent(30) { self.rng.next() } else { 0 },
            },
            1 => Body::Block {
                pin_hash: pin,
                reason: if self.rng.percent(90) {
                    self.rng.range(1, 4) as u8
                } else {
                    self.rng.pick(&[0, 5])
                },
            },
            2 => Body::Unblock { pin_hash: pin },
            _ => Body::BalanceRefund {
                pin_hash: pin,
                payout_account_ref: if self.rng.percent(92) {
                    self.rng.range(1, 1 << 40)
                } else {
                    0
                },
            },
        }
    }

    /// A card with a live session (any card if none has one).
    fn calling_pin(&mut self) -> PinHash {
        let calling: Vec<PinHash> =
            self.reference.sessions.iter().map(|session| session.pin).collect();
        if calling.is_empty() { self.pick_pin() } else { self.rng.pick(&calling) }
    }

    /// A password for a call or an event charge: mostly none (MAC 0), else the card's or a
    /// wrong one.
    fn call_password(&mut self, pin: PinHash) -> u64 {
        match self.rng.below(100) {
            0..=54 => 0,
            55..=84 => self.reference.card(pin).map_or(good_mac(pin), |card| card.mac),
            _ => self.rng.next() | 1,
        }
    }

    /// A request number for a report on a session whose last one was `last`: mostly the next,
    /// sometimes past a gap (lost reports), sometimes stale (a repeat or an older one).
    fn next_seq(&mut self, last: u32) -> u32 {
        match self.rng.below(20) {
            0 => last,
            1 => last.saturating_sub(self.rng.range(1, 3) as u32),
            2..=3 => last + self.rng.range(2, 5) as u32,
            _ => last + 1,
        }
    }

    /// A charging-session command: mostly about live sessions (small session ids, so starts
    /// collide, reach the limits and meet expired ids), with cumulative use that grows,
    /// repeats, goes back or runs far past the grant; late reports on sessions expired for
    /// silence; event charges; the audit's close.
    fn session_body(&mut self) -> Body {
        // Domestic, mobile, international by the minute, premium, a short number, international
        // with a night rate (time-of-day bands), a phone information line priced per event.
        const NUMBERS: [&[u8]; 8] = [
            b"0212345678",
            b"01012345678",
            b"0014155550100",
            b"0601234567",
            b"0991",
            b"0021234567",
            b"0021234567",
            b"15881234",
        ];
        let r = self.rng.below(100);
        if r < 10 {
            return self.event_body();
        }
        if r < 15 {
            return self.sessions_close_body();
        }
        let expired = self.reference.expired_sessions.clone();
        if r < 27 && !expired.is_empty() {
            // A late report: charged, no grant.
            let session = &expired[self.rng.below(expired.len() as u64) as usize];
            let seq = self.next_seq(session.seq);
            let used_total_s = (session.used + self.rng.range(0, 200)) as u32;
            return if self.rng.percent(50) {
                Body::SessionUpdate {
                    pin_hash: session.pin,
                    session_id: session.id,
                    seq,
                    used_total_s,
                    requested_s: 60,
                }
            } else {
                Body::SessionEnd {
                    pin_hash: session.pin,
                    session_id: session.id,
                    seq,
                    used_total_s,
                }
            };
        }
        let live = self.reference.sessions.clone();
        if live.is_empty() || r < 50 {
            // Often another call on a card already calling, to reach the per-card limit.
            let pin = if !live.is_empty() && self.rng.percent(40) {
                live[self.rng.below(live.len() as u64) as usize].pin
            } else {
                self.pick_pin()
            };
            let destination = if self.rng.percent(95) {
                pack_destination(self.rng.pick(&NUMBERS)).unwrap()
            } else {
                0
            };
            let category = self.rng.pick(&[2, 2, 2, 3, 1, 7]);
            return Body::SessionStart(Box::new(SessionOpen {
                pin_hash: pin,
                session_id: u128::from(self.rng.below(12)),
                destination,
                requested_s: self.rng.pick(&[0, 30, 60, 600, 5_000]),
                owner_id: self.rng.range(1, 3) as u32,
                password_mac: self.call_password(pin),
                category,
            }));
        }
        let session = &live[self.rng.below(live.len() as u64) as usize];
        let pin = if self.rng.percent(5) { self.other_pin(session.pin) } else { session.pin };
        // A banded call within an hour or so of a rate change often runs past it.
        let to_change = if session.tariff.bands.is_empty() {
            u64::MAX
        } else {
            let start_rate = rate_at(&session.tariff, session.local_start);
            (session.used..session.used + 4_000)
                .find(|second| rate_at(&session.tariff, session.local_start + second) != start_rate)
                .unwrap_or(u64::MAX)
        };
        let used_total_s = match self.rng.below(10) {
            _ if to_change != u64::MAX && self.rng.percent(50) => {
                to_change + self.rng.range(0, 180)
            }
            0 => session.used.saturating_sub(self.rng.range(1, 30)),
            1 => session.used + self.rng.range(500, 3_000),
            _ => session.used + self.rng.range(0, 120),
        } as u32;
        let seq = self.next_seq(session.seq);
        if r < 88 {
            Body::SessionUpdate {
                pin_hash: pin,
                session_id: session.id,
                seq,
                used_total_s,
                requested_s: self.rng.pick(&[0, 60, 600, 1_000]),
            }
        } else {
            Body::SessionEnd { pin_hash: pin, session_id: session.id, seq, used_total_s }
        }
    }

    /// An EVENT_CHARGE: mostly to the information line priced per event, sometimes to a line
    /// that prices none, one no tariff prices, or malformed.
    fn event_body(&mut self) -> Body {
        let pin = if self.rng.percent(50) { self.calling_pin() } else { self.pick_pin() };
        let (number, category): (&[u8], u8) = match self.rng.below(20) {
            0 => (b"0601234567", 3),
            1 => (b"0212345678", 3),
            2 => (b"15881234", 2),
            3 => (b"15881234", self.rng.pick(&[0, 9])),
            4 => (b"15881234", 1),
            _ => (b"15881234", 3),
        };
        let destination = if self.rng.percent(96) { pack_destination(number).unwrap() } else { 0 };
        let available = self.reference.available(pin);
        let warn = self.reference.cfg.low_balance_warn_won;
        let units = match self.rng.below(20) {
            0 => 0,
            1 => self.rng.range(20, 2_000) as u32,
            // Just enough 500-won events to go below the low-balance level.
            2..=5 if available >= warn => ((available - warn) / 500 + 1) as u32,
            _ => self.rng.range(1, 4) as u32,
        };
        Body::EventCharge {
            pin_hash: pin,
            password_mac: self.call_password(pin),
            destination,
            units,
            category,
        }
    }

    /// The audit's close for one owner: some of the live sessions (any owner's) and unknown
    /// ids, silent since some time up to now.
    fn sessions_close_body(&mut self) -> Body {
        let live: Vec<u128> = self.reference.sessions.iter().map(|session| session.id).collect();
        let mut session_ids: Vec<u128> =
            live.into_iter().filter(|_| self.rng.percent(70)).collect();
        if self.rng.percent(30) {
            session_ids.push(u128::from(self.rng.below(12)));
        }
        let silent_since_ms = match self.rng.below(4) {
            0 => self.now,
            1 => self.now + self.rng.below(5_000),
            2 => self.now - self.rng.below(240_000),
            _ => self.reference.sessions.first().map_or(self.now, |session| session.last_report),
        };
        Body::SessionsClose { owner_id: self.rng.range(1, 3) as u32, silent_since_ms, session_ids }
    }

    /// New session rules (the rest stays `test_min`'s): whether calls need the password, the
    /// low-balance level, the local-time offset (sometimes out of range: refused), the
    /// validity time.
    fn configure_body(&mut self) -> Body {
        let mut products = EngineConfig::test_min().products;
        if self.rng.percent(50) {
            // Some products decide for their own cards (a CONFIGURE_EXTENDED record).
            for product in &mut products {
                product.session_password_required = match self.rng.below(3) {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                };
            }
        }
        let config = EngineConfig {
            products,
            session_password_required: self.rng.percent(50),
            low_balance_warn_won: self.rng.pick(&[1_000, 0, 5_000, 20_000]),
            tariff_utc_offset_s: self.rng.pick(&[9 * 3_600, 9 * 3_600, 0, -5 * 3_600, 15 * 3_600]),
            session_validity_s: self.rng.pick(&[120, 120, 45]),
            ..EngineConfig::test_min()
        };
        Body::configure(&config)
    }

    fn fresh_body(&mut self, op_id: OpId) -> Body {
        // Get the cards into play quickly: issue the missing ones and activate issued ones.
        if self.reference.cards.len() < ISSUABLE && self.rng.percent(25) {
            let faces: Vec<u64> =
                self.cfg().products.iter().map(|product| product.face_value_won).collect();
            let missing: Vec<PinHash> = PINS[..ISSUABLE]
                .iter()
                .copied()
                .filter(|pin| self.reference.card(*pin).is_none())
                .collect();
            let pin = self.rng.pick(&missing);
            return Body::Issue { pin_hash: pin, face_value_won: self.rng.pick(&faces) };
        }
        let issued: Vec<PinHash> = self
            .reference
            .cards
            .iter()
            .filter(|card| matches!(card.state, CardState::Issued | CardState::Sold))
            .map(|card| card.pin)
            .collect();
        if !issued.is_empty() && self.rng.percent(15) {
            let pin = self.rng.pick(&issued);
            let (state, consignee) =
                self.reference.card(pin).map(|card| (card.state, card.consignee)).unwrap();
            if state == CardState::Issued && self.rng.percent(30) {
                // Through a channel first: consigned to a partner, then sold by it (or wrongly by
                // another), sometimes as a gift.
                return if consignee == 0 && self.rng.percent(50) {
                    Body::Consign {
                        pin_hash: pin,
                        partner_id: self.rng.range(1, 3) as u32,
                        commission_per_mille: 50,
                    }
                } else {
                    Body::Sell {
                        pin_hash: pin,
                        channel_id: self.rng.range(1, 3) as u32,
                        price_won: self.rng.range(1, 100_000),
                        payment_means: self.rng.range(1, 5) as u8,
                        gift_recipient_ref: if self.rng.percent(50) {
                            self.rng.next() | 1
                        } else {
                            0
                        },
                    }
                };
            }
            // A gift is claimed by its recipient (mostly the right one), other cards activated
            // (sometimes claimed with or without a hint, sometimes naming a recipient wrongly).
            let gift_to = self.reference.card(pin).map_or(0, |card| card.gift_to);
            return match (gift_to, self.rng.below(10)) {
                (0, 0..=6) => Body::Activate { pin_hash: pin, password_mac: good_mac(pin) },
                (0, 7..=8) => Body::Claim {
                    pin_hash: pin,
                    password_mac: good_mac(pin),
                    gift_recipient_ref: 0,
                    password_hint: self.rng.percent(50),
                },
                (0, _) => Body::Claim {
                    pin_hash: pin,
                    password_mac: good_mac(pin),
                    gift_recipient_ref: 7,
                    password_hint: false,
                },
                (to, 0..=6) => Body::Claim {
                    pin_hash: pin,
                    password_mac: good_mac(pin),
                    gift_recipient_ref: to,
                    password_hint: self.rng.percent(50),
                },
                (_, 7..=8) => Body::Activate { pin_hash: pin, password_mac: good_mac(pin) },
                (to, _) => Body::Claim {
                    pin_hash: pin,
                    password_mac: good_mac(pin),
                    gift_recipient_ref: to ^ 1,
                    password_hint: true,
                },
            };
        }
        if self.rng.percent(10) {
            return self.card_life_body();
        }
        if self.rng.percent(15) {
            return self.session_body();
        }
        if self.rng.percent(1) {
            return self.configure_body();
        }
        let r = self.rng.below(100);
        match r {
            0..=4 => {
                let faces: Vec<u64> =
                    self.cfg().products.iter().map(|product| product.face_value_won).collect();
                let face_value_won = if self.rng.percent(85) {
                    self.rng.pick(&faces)
                } else {
                    self.rng.pick(&[0, 7_000, 1_000_000])
                };
                Body::Issue {
                    pin_hash: PINS[self.rng.below(ISSUABLE as u64) as usize],
                    face_value_won,
                }
            }
            5..=9 => {
                let issued: Vec<PinHash> = self
                    .reference
                    .cards
                    .iter()
                    .filter(|card| card.state == CardState::Issued)
                    .map(|card| card.pin)
                    .collect();
                let pin = if !issued.is_empty() && self.rng.percent(70) {
                    self.rng.pick(&issued)
                } else {
                    self.pick_pin()
                };
                let password_mac =
                    if self.rng.percent(85) { good_mac(pin) } else { self.rng.next() };
                Body::Activate { pin_hash: pin, password_mac }
            }
            10..=19 => {
                let pin = self.pick_pin();
                let amount_won = match self.rng.below(100) {
                    0..=49 => self.rng.range(1, 10) * 10_000,
                    50..=59 => 500_000,
                    60..=69 => self.rng.range(1, 49) * 10_000,
                    70..=79 => self.rng.range(1, 99_999),
                    80..=84 => 0,
                    85..=89 => u64::MAX - u64::MAX % 10_000,
                    _ => self.rng.range(1, 600_000),
                };
                let funding = if self.rng.percent(90) {
                    self.rng.range(1, 5) as u8
                } else {
                    self.rng.pick(&[0, 6, 255])
                };
                Body::Load { pin_hash: pin, amount_won, funding }
            }
            20..=39 => {
                // Often pile holds onto a card that already has some, to reach the hold limit.
                let pin = if !self.reference.holds.is_empty() && self.rng.percent(40) {
                    let index = self.rng.below(self.reference.holds.len() as u64) as usize;
                    self.reference.holds[index].pin
                } else {
                    self.pick_pin()
                };
                self.authorize_body(pin)
            }
            40..=49 => {
                let pin = if self.rng.percent(25) { self.calling_pin() } else { self.pick_pin() };
                self.sale_body(pin)
            }
            50..=64 => {
                let (mut pin, hold_id, remaining) = self.pick_hold();
                if self.rng.percent(6) {
                    pin = self.other_pin(pin);
                }
                let amount_won = match self.rng.below(100) {
                    0..=24 => u64::MAX,
                    25..=64 => self.rng.range(1, (remaining / 4).max(1)),
                    65..=74 => remaining.max(1),
                    75..=84 => remaining + self.rng.range(1, 500),
                    85..=89 => 0,
                    _ => self.rng.range(1, 5_000),
                };
                Body::Capture {
                    pin_hash: pin,
                    hold_id,
                    amount_won,
                    final_capture: self.rng.percent(20),
                }
            }
            65..=69 => {
                let (mut pin, hold_id, _) = self.pick_hold();
                if self.rng.percent(6) {
                    pin = self.other_pin(pin);
                }
                Body::Void { pin_hash: pin, hold_id }
            }
            70..=78 => {
                let r = self.rng.below(100);
                let approved_payment = |record: &RefRecord, body: &Body| {
                    record.reply.code == 0
                        && matches!(
                            body,
                            Body::Authorize { .. } | Body::Sale { .. } | Body::EventCharge { .. }
                        )
                };
                let (pin, original_op_id) = if r < 45 {
                    match self.recorded_where(approved_payment) {
                        Some(found) => found,
                        None => (self.pick_pin(), self.fresh_op_id()),
                    }
                } else if r < 60 {
                    match self.sent_where(|body| {
                        matches!(
                            body,
                            Body::Authorize { .. } | Body::Sale { .. } | Body::EventCharge { .. }
                        )
                    }) {
                        Some(command) => (
                            command
                                .body
                                .route_key()
                                .expect("operations name a card or a foreign PIN"),
                            command.op_id,
                        ),
                        None => (self.pick_pin(), self.fresh_op_id()),
                    }
                } else if r < 70 {
                    match self.sent_where(|_| true) {
                        Some(command) => (
                            command
                                .body
                                .route_key()
                                .expect("operations name a card or a foreign PIN"),
                            command.op_id,
                        ),
                        None => (self.pick_pin(), 0),
                    }
                } else if r < 75 {
                    (self.pick_pin(), 0)
                } else if r < 80 {
                    (self.pick_pin(), op_id)
                } else if r < 90 {
                    // Names an op that will never be sent: leaves a tombstone.
                    (self.pick_pin(), self.fresh_op_id())
                } else if !self.reference.holds.is_empty() {
                    let index = self.rng.below(self.reference.holds.len() as u64) as usize;
                    let hold = &self.reference.holds[index];
                    (hold.pin, hold.id)
                } else {
                    (self.pick_pin(), self.fresh_op_id())
                };
                let pin = if self.rng.percent(8) { self.other_pin(pin) } else { pin };
                Body::Reverse { pin_hash: pin, original_op_id }
            }
            79..=82 => {
                // A reversal overtakes its original: the original is sent later (maybe).
                let pin = self.pick_pin();
                let original_body = if self.rng.percent(60) {
                    self.authorize_body(pin)
                } else {
                    self.sale_body(pin)
                };
                let original_op_id = self.fresh_op_id();
                self.unsent_originals.push(Command {
                    op_id: original_op_id,
                    deadline_at_ms: 0,
                    body: original_body,
                });
                let pin = if self.rng.percent(10) { self.other_pin(pin) } else { pin };
                Body::Reverse { pin_hash: pin, original_op_id }
            }
            83..=96 => {
                let r = self.rng.below(100);
                let (pin, original_op_id) = if r < 40 {
                    self.recorded_where(|record, body| {
                        record.reply.code == 0
                            && matches!(body, Body::Sale { .. } | Body::EventCharge { .. })
                    })
                } else if r < 75 {
                    self.recorded_where(|record, body| {
                        record.reply.code == 0 && matches!(body, Body::Capture { .. })
                    })
                } else if r < 85 {
                    self.sent_where(|body| {
                        matches!(
                            body,
                            Body::Sale { .. } | Body::Capture { .. } | Body::EventCharge { .. }
                        )
                    })
                    .map(|c| {
                        (
                            c.body.route_key().expect("operations name a card or a foreign PIN"),
                            c.op_id,
                        )
                    })
                } else if r < 92 {
                    self.sent_where(|_| true).map(|c| {
                        (
                            c.body.route_key().expect("operations name a card or a foreign PIN"),
                            c.op_id,
                        )
                    })
                } else {
                    None
                }
                .unwrap_or_else(|| (self.pick_pin(), self.fresh_op_id()));
                let pin = if self.rng.percent(8) { self.other_pin(pin) } else { pin };
                let refundable = self.reference.refundable(original_op_id).unwrap_or(1_000);
                let amount_won = match self.rng.below(100) {
                    0..=29 => refundable.max(1),
                    30..=64 => self.rng.range(1, refundable.max(1)),
                    65..=74 => refundable + 1,
                    75..=79 => 0,
                    _ => self.rng.range(1, 20_000),
                };
                Body::Refund { pin_hash: pin, original_op_id, amount_won }
            }
            _ => Body::Tick,
        }
    }

    /// The same kind of body with one or more fields changed, or another kind altogether.
    fn altered(&mut self, body: &Body, op_id: OpId) -> Body {
        if self.rng.percent(20) {
            return self.fresh_body(op_id);
        }
        let mut flip = [false; 6];
        for slot in &mut flip {
            *slot = self.rng.percent(40);
        }
        if !flip.iter().any(|f| *f) {
            flip[self.rng.below(6) as usize] = true;
        }
        let bump = |value: u64, on: bool| if on { value.wrapping_add(1) } else { value };
        let mut body = body.clone();
        match &mut body {
            Body::Issue { pin_hash, face_value_won } => {
                if flip[0] || flip[2] || flip[4] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] || flip[3] || flip[5] {
                    *face_value_won = if *face_value_won == 10_000 { 20_000 } else { 10_000 };
                }
            }
            Body::Activate { pin_hash, password_mac } => {
                if flip[0] || flip[2] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *password_mac = bump(*password_mac, flip[1] || flip[3] || flip[4] || flip[5]);
            }
            Body::Claim { pin_hash, password_mac, gift_recipient_ref, password_hint } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *password_mac = bump(*password_mac, flip[1] || flip[4]);
                *gift_recipient_ref = bump(*gift_recipient_ref, flip[2] || flip[5]);
                if flip[3] {
                    *password_hint = !*password_hint;
                }
            }
            Body::Load { pin_hash, amount_won, funding } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *amount_won = bump(*amount_won, flip[1] || flip[3]);
                if flip[2] || flip[4] || flip[5] {
                    *funding = funding.wrapping_add(1);
                }
            }
            Body::Authorize {
                pin_hash,
                password_mac,
                amount_won,
                merchant_id,
                category,
                hold_ttl_s,
            } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *amount_won = bump(*amount_won, flip[1]);
                *password_mac = bump(*password_mac, flip[2]);
                *merchant_id = bump(*merchant_id, flip[3]);
                if flip[4] {
                    *category = category.wrapping_add(1);
                }
                if flip[5] {
                    *hold_ttl_s = hold_ttl_s.wrapping_add(1);
                }
            }
            Body::Capture { pin_hash, hold_id, amount_won, final_capture } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] || flip[4] {
                    *hold_id = hold_id.wrapping_add(1);
                }
                *amount_won = bump(*amount_won, flip[2]);
                if flip[3] || flip[5] {
                    *final_capture = !*final_capture;
                }
            }
            Body::Void { pin_hash, hold_id }
            | Body::Reverse { pin_hash, original_op_id: hold_id } => {
                if flip[0] || flip[2] || flip[4] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] || flip[3] || flip[5] {
                    *hold_id = hold_id.wrapping_add(1);
                }
            }
            Body::Sale { pin_hash, password_mac, amount_won, merchant_id, category } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *amount_won = bump(*amount_won, flip[1]);
                *password_mac = bump(*password_mac, flip[2]);
                *merchant_id = bump(*merchant_id, flip[3] || flip[5]);
                if flip[4] {
                    *category = category.wrapping_add(1);
                }
            }
            Body::Sell { pin_hash, channel_id, price_won, payment_means, gift_recipient_ref } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] {
                    *channel_id = channel_id.wrapping_add(1);
                }
                *price_won = bump(*price_won, flip[2]);
                if flip[3] {
                    *payment_means = payment_means.wrapping_add(1);
                }
                *gift_recipient_ref = bump(*gift_recipient_ref, flip[4] || flip[5]);
            }
            Body::Block { pin_hash, reason } => {
                if flip[0] || flip[2] || flip[4] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] || flip[3] || flip[5] {
                    *reason = reason.wrapping_add(1);
                }
            }
            Body::Unblock { pin_hash } => *pin_hash = self.other_pin(*pin_hash),
            Body::Consign { pin_hash, partner_id, commission_per_mille } => {
                if flip[0] || flip[2] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] || flip[4] {
                    *partner_id = partner_id.wrapping_add(1);
                }
                if flip[3] || flip[5] {
                    *commission_per_mille = commission_per_mille.wrapping_add(1);
                }
            }
            Body::Register { pin_hash, holder_ref, verified_name } => {
                if flip[0] || flip[2] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *holder_ref = bump(*holder_ref, flip[1] || flip[4]);
                if flip[3] || flip[5] {
                    *verified_name = !*verified_name;
                }
            }
            Body::BalanceRefund { pin_hash, payout_account_ref } => {
                if flip[0] || flip[2] || flip[4] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *payout_account_ref = bump(*payout_account_ref, flip[1] || flip[3] || flip[5]);
            }
            Body::Refund { pin_hash, original_op_id, amount_won } => {
                if flip[0] || flip[3] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                if flip[1] || flip[4] {
                    *original_op_id = original_op_id.wrapping_add(1);
                }
                *amount_won = bump(*amount_won, flip[2] || flip[5]);
            }
            Body::ForeignImport { foreign_hash, product_id, code } => {
                if flip[0] || flip[2] || flip[4] {
                    *foreign_hash ^= 0x40;
                    code.bytes[0] ^= 0x20;
                }
                if flip[1] || flip[3] || flip[5] {
                    *product_id = product_id.wrapping_add(1);
                }
            }
            Body::ForeignConvert { pin_hash, password_mac, product_id } => {
                if flip[0] || flip[3] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *password_mac = bump(*password_mac, flip[1] || flip[4]);
                if flip[2] || flip[5] {
                    *product_id = product_id.wrapping_add(1);
                }
            }
            Body::SessionStart(open) => {
                let SessionOpen {
                    pin_hash,
                    session_id,
                    destination,
                    requested_s,
                    owner_id,
                    password_mac,
                    category,
                } = &mut **open;
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *session_id = u128::from(bump(*session_id as u64, flip[1]));
                *category = if flip[2] { category.wrapping_add(1) } else { *category };
                if flip[3] {
                    let international = pack_destination(b"0014155550100").unwrap();
                    *destination = if *destination == international {
                        pack_destination(b"0212345678").unwrap()
                    } else {
                        international
                    };
                }
                *requested_s = if flip[4] { requested_s.wrapping_add(1) } else { *requested_s };
                if flip[5] {
                    if self.rng.percent(50) {
                        *owner_id = owner_id.wrapping_add(1);
                    } else {
                        *password_mac = bump(*password_mac, true);
                    }
                }
            }
            Body::SessionUpdate { pin_hash, session_id, seq, used_total_s, requested_s } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *session_id = u128::from(bump(*session_id as u64, flip[1]));
                *seq = if flip[3] { seq.wrapping_add(1) } else { *seq };
                *used_total_s =
                    if flip[2] || flip[4] { used_total_s.wrapping_add(1) } else { *used_total_s };
                *requested_s = if flip[5] { requested_s.wrapping_add(1) } else { *requested_s };
            }
            Body::SessionEnd { pin_hash, session_id, seq, used_total_s } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *session_id = u128::from(bump(*session_id as u64, flip[1] || flip[4]));
                *seq = if flip[3] { seq.wrapping_add(1) } else { *seq };
                *used_total_s =
                    if flip[2] || flip[5] { used_total_s.wrapping_add(1) } else { *used_total_s };
            }
            Body::EventCharge { pin_hash, password_mac, destination, units, category } => {
                if flip[0] {
                    *pin_hash = self.other_pin(*pin_hash);
                }
                *password_mac = bump(*password_mac, flip[1]);
                *category = if flip[2] { category.wrapping_add(1) } else { *category };
                if flip[3] {
                    let priced = pack_destination(b"15881234").unwrap();
                    *destination = if *destination == priced {
                        pack_destination(b"15880000").unwrap()
                    } else {
                        priced
                    };
                }
                *units = if flip[4] || flip[5] { units.wrapping_add(1) } else { *units };
            }
            Body::Fence { pin_hash } => *pin_hash = self.other_pin(*pin_hash),
            Body::Tick
            | Body::Configure(_)
            | Body::ConfigureExtended(_)
            | Body::SessionsClose { .. }
            | Body::Upgrade { .. } => {}
        }
        body
    }

    /// An OP_FENCE: of an op id sent already (its card, sometimes another), of an original still
    /// in flight (it arrives later, maybe), or of one never sent.
    fn fence_command(&mut self) -> Command {
        let r = self.rng.below(100);
        let (op_id, pin) = if r < 45 && !self.sent.is_empty() {
            let command = self.sent_where(|_| true).unwrap();
            (command.op_id, command.body.route_key().unwrap_or_else(|| self.pick_pin()))
        } else if r < 75 && !self.unsent_originals.is_empty() {
            let index = self.rng.below(self.unsent_originals.len() as u64) as usize;
            let command = &self.unsent_originals[index];
            (command.op_id, command.body.pin_hash().expect("originals name a card"))
        } else {
            (if self.rng.percent(5) { 0 } else { self.fresh_op_id() }, self.pick_pin())
        };
        let pin_hash = if self.rng.percent(8) { self.other_pin(pin) } else { pin };
        Command { op_id, deadline_at_ms: 0, body: Body::Fence { pin_hash } }
    }

    fn next_command(&mut self) -> Command {
        let r = self.rng.below(100);
        if r < 15 && !self.sent.is_empty() {
            // A retry: same op id, same body (the deadline may differ; it is not part of the body).
            let command = self.sent_where(|_| true).unwrap();
            let deadline_at_ms =
                if self.rng.percent(80) { command.deadline_at_ms } else { self.deadline() };
            return Command { deadline_at_ms, ..command };
        }
        if r < 20 && !self.sent.is_empty() {
            let command = self.sent_where(|_| true).unwrap();
            let body = self.altered(&command.body, command.op_id);
            if is_server_command(&body) {
                return Command { op_id: 0, deadline_at_ms: 0, body };
            }
            return Command { op_id: command.op_id, deadline_at_ms: self.deadline(), body };
        }
        if r < 25 && !self.unsent_originals.is_empty() {
            let index = self.rng.below(self.unsent_originals.len() as u64) as usize;
            return self.unsent_originals.swap_remove(index);
        }
        if r < 28 {
            return self.fence_command();
        }
        let op_id = if self.rng.percent(3) { 0 } else { self.fresh_op_id() };
        let body = self.fresh_body(op_id);
        if is_server_command(&body) {
            return Command { op_id: 0, deadline_at_ms: 0, body };
        }
        Command { op_id, deadline_at_ms: self.deadline(), body }
    }

    // --- running and comparing ---

    fn fail(
        &self,
        what: &str,
        command: &Command,
        engine: Option<&Applied>,
        reference: Option<(Reply, bool)>,
    ) -> ! {
        let mut message = format!(
            "\nMODEL MISMATCH: {what}\n  {}, step {}, now {}\n  command   {:?}\n",
            self.label(),
            self.step,
            self.now,
            command
        );
        if let Some(applied) = engine {
            message += &format!("  engine    {:?}\n", applied);
        }
        if let Some((reply, changed)) = reference {
            message += &format!("  reference {:?} changed: {changed}\n", reply);
            if reply.approval_code == APPROVAL_PENDING {
                message += "  (reference approval_code u32::MAX = any six-digit code)\n";
            }
        }
        message += "  previous steps (oldest first):\n";
        for entry in &self.trail {
            message += &format!(
                "    #{} now {} {:?}\n        -> {:?} changed {}\n",
                entry.step, entry.now, entry.command, entry.reply, entry.changed
            );
        }
        panic!("{message}");
    }

    /// `reused_fields`: with OP_ID_REUSED, every field the retry differs in. The engine keeps
    /// 8-bit keyed tags of the first body's fields, not the body: it names the card and another
    /// message type exactly, and otherwise the first differing field whose tag differs, so it
    /// may pass over a field whose tag collides (1 in 256) for a later differing one, or name
    /// none when all collide. It must never name a field that is the same.
    fn same_reply(engine: &Reply, reference: &Reply, reused_fields: &[Field]) -> bool {
        if reference.code == ResultCode::OpIdReused.as_u16()
            && engine.code == reference.code
            && engine.field != reference.field
        {
            let exact = matches!(reused_fields.first(), Some(Field::Card | Field::Kind));
            let named = Field::from_u8(engine.field);
            let allowed = named == Some(Field::None)
                || named.is_some_and(|field| reused_fields.contains(&field));
            return !exact
                && allowed
                && Reply { field: 0, ..*engine } == Reply { field: 0, ..*reference };
        }
        if reference.approval_code == APPROVAL_PENDING {
            (100_000..=999_999).contains(&engine.approval_code)
                && Reply { approval_code: 0, ..*engine } == Reply { approval_code: 0, ..*reference }
        } else {
            engine == reference
        }
    }

    /// Which run this is, for failure messages ("seed N ..." reproduces it).
    fn label(&self) -> String {
        match &self.script {
            Some(name) => format!("script {name}"),
            None => format!(
                "seed {} (tempo {}, clock jitter {})",
                self.seed, self.tempo, self.clock_jitter
            ),
        }
    }

    fn step_once(&mut self) {
        self.advance_time();
        let command = self.next_command();
        // Sometimes hand the engine a clock a little behind its own: it must keep the max.
        let given_now = if self.clock_jitter && self.rng.percent(3) {
            self.now - self.rng.range(1, 20_000)
        } else {
            self.now
        };
        self.apply_and_compare(given_now, command);
    }

    /// Runs one command on the engine and on the reference and compares everything.
    fn apply_and_compare(&mut self, given_now: Ms, command: Command) {
        self.now = self.now.max(given_now);
        let applied = match catch_unwind(AssertUnwindSafe(|| self.shard.apply(given_now, &command)))
        {
            Ok(applied) => applied,
            Err(_) => self.fail("the engine panicked (see the panic above)", &command, None, None),
        };
        let (reference_reply, reference_changed) = self.reference.apply(given_now, &command);
        if !Self::same_reply(&applied.reply, &reference_reply, &self.reference.reused_fields)
            || applied.changed != reference_changed
        {
            self.fail(
                "reply or changed differ",
                &command,
                Some(&applied),
                Some((reference_reply, reference_changed)),
            );
        }
        if reference_reply.approval_code == APPROVAL_PENDING {
            self.reference.adopt_approval_code(command.op_id, applied.reply.approval_code);
        }
        let engine_notices: Vec<SessionNoticeOut> = applied.notices().collect();
        let reference_notices = std::mem::take(&mut self.reference.notices);
        if engine_notices != reference_notices {
            self.fail(
                &format!(
                    "notices:\n  engine    {engine_notices:?}\n  reference {reference_notices:?}"
                ),
                &command,
                Some(&applied),
                Some((reference_reply, reference_changed)),
            );
        }
        for notice in &engine_notices {
            self.coverage.see(match notice.kind {
                NOTICE_REAUTHORIZE => "notice REAUTHORIZE",
                NOTICE_ABORT => "notice ABORT",
                NOTICE_LOW_BALANCE => match command.body {
                    Body::Authorize { .. } => "notice LOW_BALANCE after AUTHORIZE",
                    Body::Sale { .. } => "notice LOW_BALANCE after SALE",
                    Body::ForeignConvert { .. } => "notice LOW_BALANCE after FOREIGN_CONVERT",
                    Body::SessionStart(_) => "notice LOW_BALANCE after SESSION_START",
                    Body::SessionUpdate { .. } => "notice LOW_BALANCE after SESSION_UPDATE",
                    Body::EventCharge { .. } => "notice LOW_BALANCE after EVENT_CHARGE",
                    _ => "notice LOW_BALANCE after another command",
                },
                NOTICE_EXPIRED => "notice EXPIRED",
                _ => "notice of an unknown kind",
            });
        }
        self.notices.extend(engine_notices);
        self.note_coverage(&command, &applied.reply);
        self.compare_reads(&command, &applied);
        self.coverage.steps += 1;
        self.coverage.codes[usize::from(applied.reply.code)] += 1;
        self.coverage.replays += u64::from(applied.reply.replayed);
        self.coverage.journaled += u64::from(applied.changed);
        if command.op_id != 0 {
            self.sent.push(command.clone());
        }
        if applied.changed {
            self.journal.push((given_now, command.clone(), applied.reply));
        }
        self.compare_state(&command, &applied);
        if self.trail.len() == TRAIL {
            self.trail.pop_front();
        }
        self.trail.push_back(TrailEntry {
            step: self.step,
            now: given_now,
            command,
            reply: applied.reply,
            changed: applied.changed,
        });
    }

    /// Counts the session outcomes the walk must reach (beyond the result codes).
    fn note_coverage(&mut self, command: &Command, reply: &Reply) {
        if reply.replayed {
            return;
        }
        let code = reply.code;
        let required = command.body.pin_hash().is_some_and(|pin| {
            self.reference.cards.iter().any(|card| card.pin == pin)
                && self.reference.password_required(pin)
        });
        let what = match &command.body {
            Body::SessionUpdate { .. } if code == ResultCode::SessionExpiredCharged as u16 => {
                "late UPDATE charged"
            }
            Body::SessionEnd { .. } if code == ResultCode::SessionExpiredCharged as u16 => {
                "late END charged"
            }
            Body::SessionsClose { .. } if reply.amount_won > 0 => "audit close closed sessions",
            Body::Configure(_) if code == 0 => "CONFIGURE applied",
            Body::Configure(_) => "CONFIGURE refused",
            Body::ConfigureExtended(_) if code == 0 => {
                "CONFIGURE with product password rules applied"
            }
            Body::SessionStart(open)
                if open.password_mac == 0
                    && code == ResultCode::PasswordInvalid as u16
                    && !self.reference.cfg.session_password_required =>
            {
                "START without a password refused by its product alone"
            }
            Body::SessionStart(open)
                if open.password_mac == 0 && code == ResultCode::PasswordInvalid as u16 =>
            {
                "START without a password refused (required)"
            }
            Body::SessionStart(open) if open.password_mac == 0 && code == 0 => {
                "START without a password approved"
            }
            Body::SessionStart(open) if open.password_mac != 0 && code == 0 && required => {
                "START with the password approved (required)"
            }
            Body::EventCharge { password_mac: 0, .. }
                if code == ResultCode::PasswordInvalid as u16 =>
            {
                "EVENT_CHARGE without a password refused (required)"
            }
            Body::EventCharge { .. } if code == 0 => "EVENT_CHARGE approved",
            Body::Reverse { original_op_id, .. } | Body::Refund { original_op_id, .. }
                if code == 0 =>
            {
                let of_event = self.sent.iter().any(|sent| {
                    sent.op_id == *original_op_id && matches!(sent.body, Body::EventCharge { .. })
                });
                match (&command.body, of_event) {
                    (Body::Reverse { .. }, true) => "EVENT_CHARGE reversed",
                    (_, true) => "EVENT_CHARGE refunded",
                    _ => return,
                }
            }
            _ => return,
        };
        self.coverage.see(what);
    }

    /// The read-only session views: the live and remembered counts, each session's category
    /// (live or remembered), each owner's count and digest (SESSION_AUDIT), a random audit's orphans and a
    /// random PRICE_QUOTE.
    fn compare_reads(&mut self, command: &Command, applied: &Applied) {
        let reference = &self.reference;
        let counts = (self.shard.session_count(), self.shard.expired_session_count());
        let expected = (reference.sessions.len(), reference.expired_sessions.len());
        if counts != expected {
            self.fail(
                &format!("(live, expired) sessions: engine {counts:?}, reference {expected:?}"),
                command,
                Some(applied),
                None,
            );
        }
        // The walk's session ids are below 12: each is live, remembered or unknown.
        for id in 0..12u128 {
            let session = reference
                .sessions
                .iter()
                .chain(&reference.expired_sessions)
                .find(|session| session.id == id);
            let expected = session.map(|session| session.tariff.category);
            let engine = self.shard.session_category(id);
            if engine != expected {
                self.fail(
                    &format!("session {id} category: engine {engine:?}, reference {expected:?}"),
                    command,
                    Some(applied),
                    None,
                );
            }
        }
        for owner in 1..=3u32 {
            let ids: Vec<u128> = reference
                .sessions
                .iter()
                .filter(|session| session.owner == owner)
                .map(|session| session.id)
                .collect();
            let expected = (ids.len() as u32, session_digest(ids));
            let engine = self.shard.owner_sessions(owner);
            if engine != expected {
                self.fail(
                    &format!("owner {owner} sessions: engine {engine:?}, reference {expected:?}"),
                    command,
                    Some(applied),
                    None,
                );
            }
        }
        // An audit: the owner's live sessions not in the call switch's list and silent since.
        let owner = self.rng.range(1, 3) as u32;
        let listed: std::collections::HashSet<u128> = self
            .reference
            .sessions
            .iter()
            .map(|session| session.id)
            .filter(|_| self.rng.percent(50))
            .collect();
        let silent_since = self.now - self.rng.below(300_000);
        let mut orphans: Vec<u128> = self
            .reference
            .sessions
            .iter()
            .filter(|session| {
                session.owner == owner
                    && session.last_report <= silent_since
                    && !listed.contains(&session.id)
            })
            .map(|session| session.id)
            .collect();
        orphans.sort();
        let engine_orphans = self.shard.session_orphans(owner, &listed, silent_since);
        if engine_orphans != orphans {
            self.fail(
                &format!("audit orphans: engine {engine_orphans:?}, reference {orphans:?}"),
                command,
                Some(applied),
                None,
            );
        }
        // Every fourth step a quote, usually for a card; half of them price the banded tariff
        // shortly before one of its rate changes (local 08:00 or 22:00), the rest now or a
        // little later.
        if !self.step.is_multiple_of(4) {
            return;
        }
        const NUMBERS: [&[u8]; 6] = [
            b"0212345678",
            b"01012345678",
            b"0014155550100",
            b"0601234567",
            b"0021234567",
            b"15881234",
        ];
        let pin = if self.rng.percent(80) { Some(self.pick_pin()) } else { None };
        let duration = self.rng.pick(&[0, 1, 59, 60, 61, 150, 600, 1_000, 3_599]);
        let units = self.rng.pick(&[0, 1, 3]);
        let (category, destination, at) = if self.rng.percent(50) {
            let local_now = self.reference.local_second(self.now);
            let change = self.rng.pick(&[8 * 3_600, 22 * 3_600]);
            let before = self.rng.range(1, u64::from(duration).max(1));
            let wait = (change + 86_400 - before % 86_400 - local_now % 86_400) % 86_400;
            (2, pack_destination(b"0021234567").unwrap(), self.now + wait * 1_000)
        } else {
            let category = self.rng.pick(&[2, 2, 3, 3, 1, 0]);
            let destination = if self.rng.percent(97) {
                pack_destination(self.rng.pick(&NUMBERS)).unwrap()
            } else {
                0
            };
            (category, destination, self.now + self.rng.pick(&[0, 0, 30_000, 3_600_000]))
        };
        let engine = self.shard.quote(at, pin, category, destination, duration, units);
        let expected = self.reference.quote(at, pin, category, destination, duration, units);
        if engine != expected {
            self.fail(
                &format!(
                    "quote at {at} (card {pin:x?}, category {category}, destination {destination:#x}, {duration} s, {units} units):\n  engine    {engine:?}\n  reference {expected:?}"
                ),
                command,
                Some(applied),
                None,
            );
        }
    }

    fn compare_state(&self, command: &Command, applied: &Applied) {
        let shard = &self.shard;
        let reference = &self.reference;
        let now = self.now;
        for pin in PINS {
            let engine_view = shard.card(now, pin);
            let reference_view = reference.view(pin, now);
            if engine_view != reference_view {
                self.fail(
                    &format!("card {pin:#x}:\n  engine    {engine_view:?}\n  reference {reference_view:?}"),
                    command,
                    Some(applied),
                    None,
                );
            }
        }
        for (op_id, code) in &reference.conversions {
            if shard.foreign_code(*op_id) != Some(*code) {
                self.fail(
                    &format!(
                        "conversion {op_id:#x}: engine {:?}, reference {code:?}",
                        shard.foreign_code(*op_id)
                    ),
                    command,
                    Some(applied),
                    None,
                );
            }
        }
        for product in 1..=3u32 {
            let left = reference.foreign_pools.get(&product).map_or(0, VecDeque::len);
            if shard.foreign_stock(product) != left {
                self.fail(
                    &format!(
                        "foreign stock of {product}: engine {}, reference {left}",
                        shard.foreign_stock(product)
                    ),
                    command,
                    Some(applied),
                    None,
                );
            }
        }
        let totals = shard.totals();
        if totals != reference.totals() {
            self.fail(
                &format!("totals: engine {totals:?}, reference {:?}", reference.totals()),
                command,
                Some(applied),
                None,
            );
        }
        if totals.issued_won + totals.loaded_won + totals.refunded_won + totals.reversed_won
            != totals.balances_won + totals.debited_won + totals.paid_out_won + totals.breakage_won
        {
            self.fail(&format!("money not conserved: {totals:?}"), command, Some(applied), None);
        }
        if let Err(why) = shard.check_invariants() {
            self.fail(&format!("check_invariants: {why}"), command, Some(applied), None);
        }
        if shard.now_ms() != reference.clock {
            self.fail(
                &format!("clock: engine {}, reference {}", shard.now_ms(), reference.clock),
                command,
                Some(applied),
                None,
            );
        }
        if shard.next_expiry_ms() != reference.next_expiry() {
            self.fail(
                &format!(
                    "next expiry: engine {:?}, reference {:?}",
                    shard.next_expiry_ms(),
                    reference.next_expiry()
                ),
                command,
                Some(applied),
                None,
            );
        }
        for record in &reference.records {
            let engine_op = shard.op(record.pin, record.id);
            let reference_op = reference.op_view(record);
            if engine_op != reference_op {
                self.fail(
                    &format!(
                        "op {:#x} (time {}, window floor {}, evicted floor {}):\n  engine    {engine_op:?}\n  reference {reference_op:?}",
                        record.id,
                        record.time,
                        reference.window_floor(),
                        reference.evicted_floor
                    ),
                    command,
                    Some(applied),
                    None,
                );
            }
        }
        if shard.op_count() != reference.records.len() {
            self.fail(
                &format!(
                    "op-id records kept: engine {}, reference {}",
                    shard.op_count(),
                    reference.records.len()
                ),
                command,
                Some(applied),
                None,
            );
        }
    }

    fn snapshot_round_trip(&mut self) {
        let bytes = self.shard.to_snapshot_bytes();
        let restored = Shard::from_snapshot_bytes(&bytes).unwrap_or_else(|why| {
            panic!("{} step {}: snapshot does not restore: {why}", self.label(), self.step)
        });
        assert_eq!(
            restored.to_snapshot_bytes().len(),
            bytes.len(),
            "{} step {}: re-snapshot size",
            self.label(),
            self.step
        );
        self.shard = restored;
        let tick = Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick };
        let applied = Applied::new(bare(ResultCode::Approved), false);
        self.compare_state(&tick, &applied);
    }

    /// Replays the journal into a fresh shard: same replies, same final state.
    fn check_recovery(&self) {
        let mut recovered = Shard::new(0, 1, EngineConfig::test_min());
        let mut recovered_notices = Vec::new();
        for (index, (now, command, reply)) in self.journal.iter().enumerate() {
            let applied = recovered.apply(*now, command);
            recovered_notices.extend(applied.notices());
            if applied.reply != *reply || !applied.changed {
                panic!(
                    "\nRECOVERY MISMATCH: {}, journal entry {index} of {}\n  now {now}\n  command  {command:?}\n  journaled {reply:?}\n  replayed  {applied:?}",
                    self.label(),
                    self.journal.len()
                );
            }
        }
        let context = |what: &str| {
            format!(
                "{} ({} journal entries): recovered {what} differs",
                self.label(),
                self.journal.len()
            )
        };
        for pin in PINS {
            assert_eq!(
                recovered.card(self.now, pin),
                self.shard.card(self.now, pin),
                "{}",
                context(&format!("card {pin:#x}"))
            );
        }
        assert_eq!(recovered.totals(), self.shard.totals(), "{}", context("totals"));
        assert_eq!(recovered.op_count(), self.shard.op_count(), "{}", context("op count"));
        assert_eq!(
            recovered.next_expiry_ms(),
            self.shard.next_expiry_ms(),
            "{}",
            context("next expiry")
        );
        for record in &self.reference.records {
            assert_eq!(
                recovered.op(record.pin, record.id),
                self.shard.op(record.pin, record.id),
                "{}",
                context(&format!("op {:#x}", record.id))
            );
        }
        assert_eq!(
            recovered.session_count(),
            self.shard.session_count(),
            "{}",
            context("live sessions")
        );
        assert_eq!(
            recovered.expired_session_count(),
            self.shard.expired_session_count(),
            "{}",
            context("expired sessions")
        );
        for owner in 1..=3 {
            assert_eq!(
                recovered.owner_sessions(owner),
                self.shard.owner_sessions(owner),
                "{}",
                context(&format!("owner {owner}"))
            );
        }
        assert_eq!(recovered_notices, self.notices, "{}", context("notices"));
        recovered
            .check_invariants()
            .unwrap_or_else(|why| panic!("{}: {why}", context("invariants")));
    }

    fn run(mut self, steps: usize) -> Coverage {
        for step in 0..steps {
            self.step = step;
            self.step_once();
            if step % SNAPSHOT_EVERY == SNAPSHOT_EVERY - 1 {
                self.snapshot_round_trip();
            }
        }
        self.check_recovery();
        self.coverage.see_n("report rated across a rate change", self.reference.band_crossings);
        self.coverage.see_n("report on a banded session", self.reference.banded_reports);
        self.coverage.see_n("expired session forgotten", self.reference.forgotten);
        self.coverage
    }
}

/// How often each outcome was seen, so the walk is known to reach what it claims to test.
struct Coverage {
    codes: Vec<u64>,
    replays: u64,
    journaled: u64,
    steps: u64,
    /// Outcomes beyond the result codes (notices, late reports, band crossings, ...).
    seen: BTreeMap<&'static str, u64>,
}

impl Default for Coverage {
    fn default() -> Coverage {
        Coverage { codes: vec![0; 1000], replays: 0, journaled: 0, steps: 0, seen: BTreeMap::new() }
    }
}

impl Coverage {
    fn see(&mut self, what: &'static str) {
        self.see_n(what, 1);
    }

    fn see_n(&mut self, what: &'static str, n: u64) {
        if n > 0 {
            *self.seen.entry(what).or_default() += n;
        }
    }
}

fn run_seeds(seeds: std::ops::Range<u64>, steps: usize, clock_jitter: bool) -> Coverage {
    let mut total = Coverage::default();
    for seed in seeds {
        let coverage = Walk::new(seed, clock_jitter).run(steps);
        for (code, count) in coverage.codes.iter().enumerate() {
            total.codes[code] += count;
        }
        total.replays += coverage.replays;
        total.journaled += coverage.journaled;
        total.steps += coverage.steps;
        for (what, n) in coverage.seen {
            total.see_n(what, n);
        }
    }
    total
}

/// The main walk: the engine and the reference agree at every step for every seed.
#[test]
fn engine_matches_the_reference_ledger() {
    let coverage = run_seeds(0..SEEDS, STEPS, false);
    let counts = &coverage.codes;
    println!(
        "{} steps, {} journaled, {} replays; codes seen: {:?}",
        coverage.steps,
        coverage.journaled,
        coverage.replays,
        counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (code, *n))
            .collect::<Vec<_>>()
    );
    // The walk must actually reach the interesting outcomes, or it proves little.
    let must_reach = [
        ResultCode::Approved,
        ResultCode::OriginalNotFoundRecorded,
        ResultCode::OriginalDeclinedNoop,
        ResultCode::AlreadyReversed,
        ResultCode::HoldAlreadyVoided,
        ResultCode::CardNotFound,
        ResultCode::CardNotActive,
        ResultCode::CardAlreadyActive,
        ResultCode::InsufficientFunds,
        ResultCode::BalanceCapExceeded,
        ResultCode::RechargeUnitInvalid,
        ResultCode::AmountInvalid,
        ResultCode::AmountOverflow,
        ResultCode::ProductNotFound,
        ResultCode::CategoryInvalid,
        ResultCode::PasswordInvalid,
        ResultCode::PasswordTriesExceeded,
        ResultCode::HoldNotFound,
        ResultCode::HoldAlreadyCaptured,
        ResultCode::HoldExpired,
        ResultCode::ExceedsHoldAmount,
        ResultCode::HoldLimitReached,
        ResultCode::HoldTtlInvalid,
        ResultCode::CaptureLimitReached,
        ResultCode::HoldReversed,
        ResultCode::OriginalNotFound,
        ResultCode::ExceedsRefundable,
        ResultCode::ReversalNotSupported,
        ResultCode::OriginalCardMismatch,
        ResultCode::ReversedBeforeArrival,
        ResultCode::OpIdReused,
        ResultCode::OpTooOld,
        ResultCode::OpIdFromFuture,
        ResultCode::DeadlineExceededNotExecuted,
        ResultCode::OpIdInvalid,
        ResultCode::FormatError,
        ResultCode::RetryLater,
        ResultCode::CardBlocked,
        ResultCode::CardExpired,
        ResultCode::CardClosed,
        ResultCode::CardAlreadySold,
        ResultCode::CardNotBlocked,
        ResultCode::RefundRuleNotMet,
        ResultCode::ChannelInvalid,
        ResultCode::BlockReasonInvalid,
        ResultCode::HoldsOutstanding,
        ResultCode::CategoryNotAllowed,
        ResultCode::CardConsignedElsewhere,
        ResultCode::SessionUsageCapped,
        ResultCode::SessionNotFound,
        ResultCode::SessionExists,
        ResultCode::TariffNotFound,
        ResultCode::SessionLimitPerCard,
        ResultCode::DestinationInvalid,
        ResultCode::ForeignProductUnknown,
        ResultCode::ForeignPinExists,
        ResultCode::ForeignPinUnavailable,
        ResultCode::GiftRecipientMismatch,
        ResultCode::GiftClaimRequired,
        ResultCode::SessionExpiredCharged,
        ResultCode::SessionSequenceStale,
        ResultCode::EventNotPriced,
        ResultCode::UnitsInvalid,
    ];
    let missing: Vec<&str> = must_reach
        .iter()
        .filter(|code| counts[code.as_u16() as usize] == 0)
        .map(|code| code.name())
        .collect();
    assert!(missing.is_empty(), "outcomes never reached: {missing:?}");
    println!("session outcomes seen: {:?}", coverage.seen);
    let must_see = [
        "notice REAUTHORIZE",
        "notice ABORT",
        "notice LOW_BALANCE after AUTHORIZE",
        "notice LOW_BALANCE after SALE",
        "notice LOW_BALANCE after SESSION_START",
        "notice LOW_BALANCE after SESSION_UPDATE",
        "notice LOW_BALANCE after EVENT_CHARGE",
        "notice EXPIRED",
        "late UPDATE charged",
        "late END charged",
        "expired session forgotten",
        "audit close closed sessions",
        "report rated across a rate change",
        "CONFIGURE applied",
        "CONFIGURE refused",
        "CONFIGURE with product password rules applied",
        "START without a password refused by its product alone",
        "START without a password approved",
        "START without a password refused (required)",
        "START with the password approved (required)",
        "EVENT_CHARGE without a password refused (required)",
        "EVENT_CHARGE approved",
        "EVENT_CHARGE reversed",
        "EVENT_CHARGE refunded",
    ];
    let unseen: Vec<&str> =
        must_see.iter().copied().filter(|what| !coverage.seen.contains_key(what)).collect();
    assert!(unseen.is_empty(), "session outcomes never reached: {unseen:?}");
    assert!(coverage.replays > coverage.steps / 50, "too few replays: {}", coverage.replays);
}

/// The same walk, but some commands carry a server time a little behind the previous one (a
/// wall clock stepped back): the engine must keep its own clock at the maximum, and the journal
/// (which records the time each command was given, as the server's does) must still replay.
#[test]
fn engine_matches_the_reference_ledger_when_the_clock_steps_back() {
    let coverage = run_seeds(10_000..10_000 + SEEDS / 2, STEPS, true);
    assert!(coverage.codes[0] > 0);
}

// ---------------------------------------------------------------------------------------------
// The smallest command sequences behind the disagreements the walks found, run through the same
// step-by-step comparison and recovery check (so they fail with the same messages).

/// Runs a fixed list of (server time, command) through the engine and the reference, comparing
/// after every step, then replays the journal into a fresh shard. Returns the walk (its
/// `notices` are all the engine raised).
fn run_script(name: &'static str, steps: &[(Ms, Command)]) -> Walk {
    let mut walk = Walk::new(0, false);
    walk.script = Some(name);
    walk.now = T0;
    for (step, (now, command)) in steps.iter().enumerate() {
        walk.step = step;
        walk.apply_and_compare(*now, command.clone());
    }
    walk.check_recovery();
    walk
}

fn command(op_id: OpId, body: Body) -> Command {
    Command { op_id, deadline_at_ms: 0, body }
}

/// REVERSE of an AUTHORIZE whose op-id record was evicted (capacity) while its hold was pending
/// and partly captured. The rule: release the hold and credit back what the payment debited and
/// was not refunded (here the 1,000 captured), amount = 1,000 + 4,000 released. The engine only
/// releases the hold (amount 4,000) and keeps the captured 1,000, because the payment's
/// `debited_won` lives in the evicted record.
#[test]
fn reversal_of_a_partly_captured_hold_whose_record_was_evicted_credits_the_captures() {
    let pin = PINS[0];
    let mac = good_mac(pin);
    let hold = op_id_at(T0, 3);
    let mut steps = vec![
        (T0, command(op_id_at(T0, 1), Body::Issue { pin_hash: pin, face_value_won: 10_000 })),
        (T0, command(op_id_at(T0, 2), Body::Activate { pin_hash: pin, password_mac: mac })),
        (
            T0,
            command(
                hold,
                Body::Authorize {
                    pin_hash: pin,
                    password_mac: mac,
                    amount_won: 5_000,
                    merchant_id: 1,
                    category: 1,
                    hold_ttl_s: 3_600,
                },
            ),
        ),
        (
            T0,
            command(
                op_id_at(T0, 4),
                Body::Capture {
                    pin_hash: pin,
                    hold_id: hold,
                    amount_won: 1_000,
                    final_capture: false,
                },
            ),
        ),
    ];
    // 63 more recorded ops (declined loads): 67 records > 64, so the three oldest (ISSUE,
    // ACTIVATE, AUTHORIZE) are evicted; the hold stays pending (TTL 3,600 s).
    for i in 1..=63u64 {
        steps.push((
            T0 + i,
            command(
                op_id_at(T0 + i, 100 + u128::from(i)),
                Body::Load { pin_hash: pin, amount_won: 1, funding: 1 },
            ),
        ));
    }
    steps.push((
        T0 + 100,
        command(op_id_at(T0 + 100, 999), Body::Reverse { pin_hash: pin, original_op_id: hold }),
    ));
    run_script("reversal after the AUTHORIZE record was evicted", &steps);
}

/// A command that changes nothing (here a TICK with no hold due) still moves the engine clock
/// forward, but is not journaled (`changed` false). A later command given an earlier server time
/// (a wall clock stepped back) runs on the engine's clock, yet is journaled with the time it was
/// given; replay then runs it on the older clock and answers differently (hold expiry 500 ms
/// earlier), so recovery diverges (the server's `recover` refuses to start).
#[test]
fn journal_replay_matches_when_an_unjournaled_command_moved_the_clock() {
    let pin = PINS[0];
    let mac = good_mac(pin);
    let steps = [
        (T0, command(op_id_at(T0, 1), Body::Issue { pin_hash: pin, face_value_won: 10_000 })),
        (T0, command(op_id_at(T0, 2), Body::Activate { pin_hash: pin, password_mac: mac })),
        (T0 + 1_000, command(0, Body::Tick)),
        (
            T0 + 500,
            command(
                op_id_at(T0 + 500, 3),
                Body::Authorize {
                    pin_hash: pin,
                    password_mac: mac,
                    amount_won: 100,
                    merchant_id: 1,
                    category: 1,
                    hold_ttl_s: 0,
                },
            ),
        ),
    ];
    run_script("unjournaled clock advance", &steps);
}

/// FOREIGN_CONVERT is one of the debits that warn a calling card's sessions of a low balance
/// (the walks rarely reach it: it needs stock, a calling card and a balance just above the
/// level). Both sessions are warned, lowest id first, with the balance left available.
#[test]
fn a_conversion_that_leaves_a_calling_card_low_warns_its_sessions() {
    let pin = PINS[0];
    let mac = good_mac(pin);
    let domestic = pack_destination(b"0212345678").unwrap();
    let call = |session_id: u128| {
        Body::SessionStart(Box::new(SessionOpen {
            pin_hash: pin,
            session_id,
            destination: domestic,
            requested_s: 60,
            owner_id: 1,
            password_mac: 0,
            category: 2,
        }))
    };
    let code = ForeignCode::new(b"FX01").unwrap();
    let steps = [
        (T0, command(op_id_at(T0, 1), Body::Issue { pin_hash: pin, face_value_won: 10_000 })),
        (T0, command(op_id_at(T0, 2), Body::Activate { pin_hash: pin, password_mac: mac })),
        // Two calls of 60 s at 2 won a second reserve 240 won: 9,760 available.
        (T0, command(op_id_at(T0, 3), call(9))),
        (T0, command(op_id_at(T0, 4), call(3))),
        (
            T0,
            command(
                op_id_at(T0, 5),
                Body::ForeignImport { foreign_hash: 0xF0E1, product_id: 2, code },
            ),
        ),
        // 9,500 won for the yen PIN: 260 left available, below the 1,000-won level.
        (
            T0,
            command(
                op_id_at(T0, 6),
                Body::ForeignConvert { pin_hash: pin, password_mac: mac, product_id: 2 },
            ),
        ),
    ];
    let walk = run_script("low balance after a conversion", &steps);
    let warned: Vec<(u128, u8, u64)> = walk
        .notices
        .iter()
        .map(|notice| (notice.session_id, notice.kind, notice.available_won))
        .collect();
    assert_eq!(warned, [(3, NOTICE_LOW_BALANCE, 260), (9, NOTICE_LOW_BALANCE, 260)]);
}
