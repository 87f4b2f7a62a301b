//! The op-id window: what a shard remembers of every mutating op id (`OpRecord`), kept in two
//! generations (`OpTable`) so eviction is a table clear, never a per-operation removal, and the
//! too-old floor that makes an evicted op id fail loudly instead of executing twice. Also the
//! retry comparison (`first_difference`): a retry must repeat its first body field for field.

use pinswitch_protocol::{Field, MsgType, OpStatus, op_id_time_ms};
use rkyv::{Archive, Deserialize, Serialize};

use super::Shard;
use crate::dense_map::DenseMap;
use crate::hasher::KeyHasherBuilder;
use crate::types::{Body, Ms, OpId, OpView, PinHash, Reply};

/// What a shard remembers about one op id.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct OpRecord {
    /// The body as first received: a retry must match it field for field.
    pub(super) body: Body,
    pub(super) reply: Reply,
    /// `OpStatus` as a number.
    pub(super) status: u8,
    /// For a payment (approved AUTHORIZE or SALE): money debited by it so far.
    pub(super) debited_won: u64,
    /// For a payment: money given back by REFUNDs naming it or one of its captures.
    pub(super) refunded_won: u64,
}

/// Op-id records in two generations. New records go into `current`; when it holds half of
/// `idempotency_entries_max`, `previous` is dropped whole (raising the too-old floor to the
/// newest op time it held) and `current` becomes `previous`. Eviction is thus one table clear
/// per generation instead of a random-access removal per operation, and the tables are reused,
/// never reallocated. A generation holding op times still ahead of the clock is not dropped
/// (the floor never passes the clock); `current` may then grow to twice its size, past which
/// new operations get RETRY_LATER.
///
/// The fields are `pub(super)` only for the snapshot image (image.rs); everything else goes
/// through the methods, which keep the generations and the floor consistent.
#[derive(Clone)]
pub(super) struct OpTable {
    pub(super) current: DenseMap<OpRecord>,
    pub(super) previous: DenseMap<OpRecord>,
    pub(super) current_max_time_ms: Ms,
    pub(super) previous_max_time_ms: Ms,
    /// Op ids at or before this time answer OP_TOO_OLD: records up to it may have been evicted.
    pub(super) evicted_floor_ms: Ms,
}

impl OpTable {
    pub(super) fn new(hasher: KeyHasherBuilder) -> OpTable {
        OpTable {
            current: DenseMap::with_hasher(hasher),
            previous: DenseMap::with_hasher(hasher),
            current_max_time_ms: 0,
            previous_max_time_ms: 0,
            evicted_floor_ms: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub(super) fn get(&self, op_id: &OpId) -> Option<&OpRecord> {
        self.current.get(op_id).or_else(|| self.previous.get(op_id))
    }

    pub(super) fn get_mut(&mut self, op_id: &OpId) -> Option<&mut OpRecord> {
        match self.current.get_mut(op_id) {
            Some(record) => Some(record),
            None => self.previous.get_mut(op_id),
        }
    }

    pub(super) fn insert(&mut self, op_id: OpId, record: OpRecord) {
        assert!(self.get(&op_id).is_none(), "an op id is recorded once");
        self.current.insert_new(op_id, record);
        self.current_max_time_ms = self.current_max_time_ms.max(op_id_time_ms(op_id));
    }

    /// Whether an op id of `op_time_ms` is past the window (`window_ms` before `now_ms`) or at
    /// or before the floor of evicted records: its record may be gone, so it must not execute.
    pub(super) fn too_old(&self, now_ms: Ms, op_time_ms: Ms, window_ms: Ms) -> bool {
        let window_floor_ms = now_ms.saturating_sub(window_ms);
        op_time_ms <= window_floor_ms.max(self.evicted_floor_ms)
            && (window_floor_ms > 0 || self.evicted_floor_ms > 0)
    }

    /// `current` is at twice a generation: the previous generation holds op times ahead of the
    /// clock and cannot go yet, so a new op cannot be recorded.
    pub(super) fn is_full(&self, generation_max: usize) -> bool {
        self.current.len() >= 2 * generation_max
    }

    /// Drops generations that are due at `now_ms`; returns whether anything changed.
    pub(super) fn prune(&mut self, now_ms: Ms, window_ms: Ms, generation_max: usize) -> bool {
        let mut changed = false;
        let window_floor_ms = now_ms.saturating_sub(window_ms);
        // A previous generation wholly past the window goes without raising the floor.
        if !self.previous.is_empty()
            && window_floor_ms > 0
            && self.previous_max_time_ms <= window_floor_ms
        {
            self.previous.clear();
            self.previous_max_time_ms = 0;
            changed = true;
        }
        if self.current.len() >= generation_max && self.previous_max_time_ms <= now_ms {
            if !self.previous.is_empty() {
                self.evicted_floor_ms = self.evicted_floor_ms.max(self.previous_max_time_ms);
            }
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            self.previous_max_time_ms = self.current_max_time_ms;
            self.current_max_time_ms = 0;
            changed = true;
        }
        changed
    }
}

impl Shard {
    /// Whether an op id of `op_time_ms` is too old to execute at `now_ms` (see `OpTable::too_old`).
    pub(super) fn too_old(&self, now_ms: Ms, op_time_ms: Ms) -> bool {
        self.ops.too_old(now_ms, op_time_ms, self.config.idempotency_window_ms)
    }

    /// Stores an op's answer; drops records past the window and, at the capacity limit, the
    /// oldest records (raising the too-old floor so they can never execute again).
    pub(super) fn record(
        &mut self,
        op_id: OpId,
        body: Body,
        reply: Reply,
        status: OpStatus,
        debited_won: u64,
    ) {
        let record = OpRecord { body, reply, status: status as u8, debited_won, refunded_won: 0 };
        self.ops.insert(op_id, record);
        self.prune_ops();
    }

    /// Records one generation may hold.
    pub(super) fn generation_max(&self) -> usize {
        (self.config.idempotency_entries_max / 2) as usize
    }

    /// Drops generations that are due; returns whether anything changed.
    pub(super) fn prune_ops(&mut self) -> bool {
        let generation_max = self.generation_max();
        self.ops.prune(self.now_ms, self.config.idempotency_window_ms, generation_max)
    }

    /// INQUIRY: what is known of an op id on this card. Ops of other cards read as unknown.
    pub fn op(&self, pin_hash: PinHash, op_id: OpId) -> OpView {
        let unknown = OpView { status: OpStatus::Unknown, msg_type: 0, reply: None };
        let Some(record) = self.ops.get(&op_id) else { return unknown };
        if record.body.route_key() != Some(pin_hash) {
            return unknown;
        }
        let status =
            OpStatus::from_u8(record.status).expect("statuses are written by the engine only");
        if status == OpStatus::Tombstone {
            return OpView { status, msg_type: 0, reply: None };
        }
        OpView { status, msg_type: msg_type_of(&record.body) as u16, reply: Some(record.reply) }
    }
}

/// The wire message type of an operation.
pub fn msg_type_of(body: &Body) -> MsgType {
    match body {
        Body::Issue { .. } => MsgType::CardIssue,
        Body::Activate { .. } => MsgType::CardActivate,
        Body::Claim { .. } => MsgType::CardClaim,
        Body::Load { .. } => MsgType::CardLoad,
        Body::Sell { .. } => MsgType::CardSell,
        Body::Block { .. } => MsgType::CardBlock,
        Body::Unblock { .. } => MsgType::CardUnblock,
        Body::Register { .. } => MsgType::CardRegister,
        Body::Consign { .. } => MsgType::CardConsign,
        Body::BalanceRefund { .. } => MsgType::CardRefund,
        Body::Authorize { .. } => MsgType::Authorize,
        Body::Capture { .. } => MsgType::Capture,
        Body::Void { .. } => MsgType::Void,
        Body::Reverse { .. } => MsgType::Reverse,
        Body::Sale { .. } => MsgType::Sale,
        Body::Refund { .. } => MsgType::Refund,
        Body::ForeignImport { .. } => MsgType::ForeignImport,
        Body::ForeignConvert { .. } => MsgType::ForeignConvert,
        Body::SessionStart(_) => MsgType::SessionStart,
        Body::SessionUpdate { .. } => MsgType::SessionUpdate,
        Body::SessionEnd { .. } => MsgType::SessionEnd,
        Body::EventCharge { .. } => MsgType::EventCharge,
        Body::Tick
        | Body::Configure(_)
        | Body::ConfigureExtended(_)
        | Body::SessionsClose { .. }
        | Body::Upgrade { .. } => MsgType::Ping,
    }
}

/// The first field in which a retry differs from the recorded body (`None`: identical).
pub(super) fn first_difference(recorded: &Body, retry: &Body) -> Option<Field> {
    use Body::*;
    // By the recorded command's family; each family's comparison answers `Kind` for a retry of
    // another command.
    match recorded {
        Issue { .. }
        | Activate { .. }
        | Claim { .. }
        | Load { .. }
        | Sell { .. }
        | Block { .. }
        | Unblock { .. }
        | Register { .. }
        | Consign { .. }
        | BalanceRefund { .. } => card_difference(recorded, retry),
        Authorize { .. }
        | Capture { .. }
        | Void { .. }
        | Reverse { .. }
        | Sale { .. }
        | Refund { .. } => payment_difference(recorded, retry),
        ForeignImport { .. } | ForeignConvert { .. } => foreign_difference(recorded, retry),
        SessionStart(_) | SessionUpdate { .. } | SessionEnd { .. } | EventCharge { .. } => {
            charging_difference(recorded, retry)
        }
        // Server commands (op id 0) are never recorded; should one be, nothing matches it.
        Tick | Configure(_) | ConfigureExtended(_) | SessionsClose { .. } | Upgrade { .. } => {
            Some(Field::Kind)
        }
    }
}

/// The field of the first check that fails, in the order given: each check is (the retry's
/// field equals the recorded one, the field it names).
#[inline]
fn first_failed(checks: &[(bool, Field)]) -> Option<Field> {
    checks.iter().find(|(same, _)| !same).map(|(_, field)| *field)
}

/// `first_difference` for a card's life: issue to balance refund.
fn card_difference(recorded: &Body, retry: &Body) -> Option<Field> {
    use Body::*;
    match (recorded, retry) {
        (Issue { pin_hash: _, face_value_won: a }, Issue { pin_hash: _, face_value_won: b }) => {
            // The server draws the PIN; a retry carries a fresh draw, so only the product counts.
            first_failed(&[(a == b, Field::FaceValue)])
        }
        (
            Activate { pin_hash: p1, password_mac: m1 },
            Activate { pin_hash: p2, password_mac: m2 },
        ) => first_failed(&[(p1 == p2, Field::Card), (m1 == m2, Field::Password)]),
        (
            Claim { pin_hash: p1, password_mac: m1, gift_recipient_ref: g1, password_hint: h1 },
            Claim { pin_hash: p2, password_mac: m2, gift_recipient_ref: g2, password_hint: h2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (m1 == m2 && h1 == h2, Field::Password),
            (g1 == g2, Field::GiftRecipient),
        ]),
        (
            Load { pin_hash: p1, amount_won: a1, funding: f1 },
            Load { pin_hash: p2, amount_won: a2, funding: f2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (a1 == a2, Field::Amount),
            (f1 == f2, Field::Funding),
        ]),
        (
            Sell {
                pin_hash: p1,
                channel_id: c1,
                price_won: a1,
                payment_means: m1,
                gift_recipient_ref: g1,
            },
            Sell {
                pin_hash: p2,
                channel_id: c2,
                price_won: a2,
                payment_means: m2,
                gift_recipient_ref: g2,
            },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (c1 == c2, Field::Channel),
            (a1 == a2, Field::Price),
            (m1 == m2, Field::Funding),
            (g1 == g2, Field::GiftRecipient),
        ]),
        (Block { pin_hash: p1, reason: r1 }, Block { pin_hash: p2, reason: r2 }) => {
            first_failed(&[(p1 == p2, Field::Card), (r1 == r2, Field::Reason)])
        }
        (Unblock { pin_hash: p1 }, Unblock { pin_hash: p2 }) => {
            first_failed(&[(p1 == p2, Field::Card)])
        }
        (
            Register { pin_hash: p1, holder_ref: h1, verified_name: v1 },
            Register { pin_hash: p2, holder_ref: h2, verified_name: v2 },
        ) => first_failed(&[(p1 == p2, Field::Card), (h1 == h2 && v1 == v2, Field::Holder)]),
        (
            Consign { pin_hash: p1, partner_id: r1, commission_per_mille: c1 },
            Consign { pin_hash: p2, partner_id: r2, commission_per_mille: c2 },
        ) => first_failed(&[(p1 == p2, Field::Card), (r1 == r2 && c1 == c2, Field::Partner)]),
        (
            BalanceRefund { pin_hash: p1, payout_account_ref: a1 },
            BalanceRefund { pin_hash: p2, payout_account_ref: a2 },
        ) => first_failed(&[(p1 == p2, Field::Card), (a1 == a2, Field::PayoutAccount)]),
        _ => Some(Field::Kind),
    }
}

/// `first_difference` for a payment: AUTHORIZE to REFUND.
fn payment_difference(recorded: &Body, retry: &Body) -> Option<Field> {
    use Body::*;
    match (recorded, retry) {
        (
            Authorize {
                pin_hash: p1,
                password_mac: m1,
                amount_won: a1,
                merchant_id: r1,
                category: c1,
                hold_ttl_s: t1,
            },
            Authorize {
                pin_hash: p2,
                password_mac: m2,
                amount_won: a2,
                merchant_id: r2,
                category: c2,
                hold_ttl_s: t2,
            },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (a1 == a2, Field::Amount),
            (m1 == m2, Field::Password),
            (r1 == r2, Field::Merchant),
            (c1 == c2, Field::Category),
            (t1 == t2, Field::HoldTtl),
        ]),
        (
            Capture { pin_hash: p1, hold_id: h1, amount_won: a1, final_capture: f1 },
            Capture { pin_hash: p2, hold_id: h2, amount_won: a2, final_capture: f2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (h1 == h2, Field::Reference),
            (a1 == a2, Field::Amount),
            (f1 == f2, Field::FinalCapture),
        ]),
        (Void { pin_hash: p1, hold_id: h1 }, Void { pin_hash: p2, hold_id: h2 }) => {
            first_failed(&[(p1 == p2, Field::Card), (h1 == h2, Field::Reference)])
        }
        (
            Reverse { pin_hash: p1, original_op_id: o1 },
            Reverse { pin_hash: p2, original_op_id: o2 },
        ) => first_failed(&[(p1 == p2, Field::Card), (o1 == o2, Field::Reference)]),
        (
            Sale { pin_hash: p1, password_mac: m1, amount_won: a1, merchant_id: r1, category: c1 },
            Sale { pin_hash: p2, password_mac: m2, amount_won: a2, merchant_id: r2, category: c2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (a1 == a2, Field::Amount),
            (m1 == m2, Field::Password),
            (r1 == r2, Field::Merchant),
            (c1 == c2, Field::Category),
        ]),
        (
            Refund { pin_hash: p1, original_op_id: o1, amount_won: a1 },
            Refund { pin_hash: p2, original_op_id: o2, amount_won: a2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (o1 == o2, Field::Reference),
            (a1 == a2, Field::Amount),
        ]),
        _ => Some(Field::Kind),
    }
}

/// `first_difference` for the foreign PIN commands.
fn foreign_difference(recorded: &Body, retry: &Body) -> Option<Field> {
    use Body::*;
    match (recorded, retry) {
        (
            ForeignImport { foreign_hash: h1, product_id: p1, code: c1 },
            ForeignImport { foreign_hash: h2, product_id: p2, code: c2 },
        ) => first_failed(&[(h1 == h2 && c1 == c2, Field::Reference), (p1 == p2, Field::Product)]),
        (
            ForeignConvert { pin_hash: p1, password_mac: m1, product_id: r1 },
            ForeignConvert { pin_hash: p2, password_mac: m2, product_id: r2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (m1 == m2, Field::Password),
            (r1 == r2, Field::Product),
        ]),
        _ => Some(Field::Kind),
    }
}

/// `first_difference` for charging: call sessions and event charges.
fn charging_difference(recorded: &Body, retry: &Body) -> Option<Field> {
    use Body::*;
    match (recorded, retry) {
        (SessionStart(one), SessionStart(two)) => first_failed(&[
            (one.pin_hash == two.pin_hash, Field::Card),
            (one.session_id == two.session_id, Field::Reference),
            (one.password_mac == two.password_mac, Field::Password),
            (one.category == two.category, Field::Category),
            (one.destination == two.destination, Field::Destination),
            (one.requested_s == two.requested_s, Field::Seconds),
            (one.owner_id == two.owner_id, Field::Owner),
        ]),
        (
            SessionUpdate {
                pin_hash: p1,
                session_id: s1,
                seq: q1,
                used_total_s: u1,
                requested_s: r1,
            },
            SessionUpdate {
                pin_hash: p2,
                session_id: s2,
                seq: q2,
                used_total_s: u2,
                requested_s: r2,
            },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (s1 == s2, Field::Reference),
            (q1 == q2, Field::Sequence),
            (u1 == u2 && r1 == r2, Field::Seconds),
        ]),
        (
            SessionEnd { pin_hash: p1, session_id: s1, seq: q1, used_total_s: u1 },
            SessionEnd { pin_hash: p2, session_id: s2, seq: q2, used_total_s: u2 },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (s1 == s2, Field::Reference),
            (q1 == q2, Field::Sequence),
            (u1 == u2, Field::Seconds),
        ]),
        (
            EventCharge {
                pin_hash: p1,
                password_mac: m1,
                destination: d1,
                units: n1,
                category: c1,
            },
            EventCharge {
                pin_hash: p2,
                password_mac: m2,
                destination: d2,
                units: n2,
                category: c2,
            },
        ) => first_failed(&[
            (p1 == p2, Field::Card),
            (m1 == m2, Field::Password),
            (c1 == c2, Field::Category),
            (d1 == d2, Field::Destination),
            (n1 == n2, Field::Units),
        ]),
        _ => Some(Field::Kind),
    }
}
