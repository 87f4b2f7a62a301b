//! The op-id window: what a shard remembers of every mutating op id (`OpRecord`, 64 bytes),
//! kept in two generations (`OpTable`) so eviction is a table clear, never a per-operation
//! removal, and the too-old floor that makes an evicted op id fail loudly instead of executing
//! twice. Also the retry comparison (`Compared`): a retry must repeat its first body field for
//! field, and the record keeps keyed fingerprints of the body instead of the body itself.
//!
//! Why fingerprints: the window holds millions of records per shard (4,000,000 by default),
//! and with the body (48 bytes) and the whole reply (40) a record was 112 bytes, more than the
//! card it names. A record now keeps a 64-bit keyed fingerprint of the compared fields (a retry
//! with another body passes for the same one with probability 2^-64), one 8-bit keyed tag per
//! field to name the first differing one, a keyed hash of the route key, and the reply's
//! numbers in 32 bits each; a reply whose numbers do not fit goes whole into a small side map
//! (`wide`), so every reply still comes back exactly as it was first given.

use std::hash::{BuildHasher, Hasher};

use pinswitch_protocol::{Field, MsgType, OpStatus, op_id_time_ms};
use rkyv::{Archive, Deserialize, Serialize};

use super::Shard;
use crate::dense_map::DenseMap;
use crate::hasher::{KeyHasherBuilder, KeyMap};
use crate::types::{Body, Ms, OpId, OpView, PinHash, Reply};

/// Set in `OpRecord::kind` when the reply is kept whole in the table's wide map.
const KIND_WIDE: u8 = 0x80;
/// `OpRecord::hold_expiry_delta_ms` of a reply without a hold expiry.
const NO_HOLD_EXPIRY: i32 = i32::MIN;

/// What a shard remembers about one op id. The fields are private: `OpTable` builds records
/// from a body and its reply and gives the reply back (`OpTable::reply`).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OpRecord {
    /// Keyed fingerprint of the message type and the compared fields of the first body.
    body_fp: u64,
    /// The top byte of each compared field's keyed digest, field `i` of the comparison order
    /// in byte `i`: a retry's first field whose tag differs is the field OP_ID_REUSED names.
    field_tags: u64,
    /// The keyed 64-bit hash of the body's route key (the card's PIN hash; a foreign PIN's).
    route_tag: u64,
    /// CAPTURE: its hold id (low, high half), the payment its money belongs to. Every other
    /// kind: money debited by it so far (a payment: AUTHORIZE, SALE, EVENT_CHARGE) and money
    /// given back by REFUNDs naming it or one of its captures.
    aux: [u64; 2],
    approval_code: u32,
    code: u16,
    /// The wire message type (all below 128), `KIND_WIDE` set for a reply kept whole.
    kind: u8,
    /// `OpStatus` as a number.
    status: u8,
    amount_won: u32,
    balance_won: u32,
    /// The reply's balance minus its available balance.
    held_won: u32,
    /// The reply's hold expiry minus the op id's time, or `NO_HOLD_EXPIRY`.
    hold_expiry_delta_ms: i32,
}

impl OpRecord {
    pub(super) fn status(&self) -> OpStatus {
        OpStatus::from_u8(self.status).expect("statuses are written by the engine only")
    }

    pub(super) fn set_status(&mut self, status: OpStatus) {
        self.status = status as u8;
    }

    /// The wire message type of the recorded op.
    pub(super) fn msg_type(&self) -> u8 {
        self.kind & !KIND_WIDE
    }

    /// The recorded reply's result code.
    pub(super) fn code(&self) -> u16 {
        self.code
    }

    /// A CAPTURE's hold id.
    pub(super) fn capture_hold_id(&self) -> Option<OpId> {
        (self.msg_type() == MsgType::Capture as u8)
            .then(|| u128::from(self.aux[1]) << 64 | u128::from(self.aux[0]))
    }

    /// A payment's money debited so far (0 for a CAPTURE: its money is its AUTHORIZE's).
    pub(super) fn debited_won(&self) -> u64 {
        if self.capture_hold_id().is_some() { 0 } else { self.aux[0] }
    }

    pub(super) fn refunded_won(&self) -> u64 {
        if self.capture_hold_id().is_some() { 0 } else { self.aux[1] }
    }

    pub(super) fn add_debited(&mut self, amount_won: u64) {
        assert!(self.capture_hold_id().is_none(), "a capture's money is its authorization's");
        self.aux[0] = self.aux[0].checked_add(amount_won).expect("debits fit a card's balance");
    }

    pub(super) fn add_refunded(&mut self, amount_won: u64) {
        assert!(self.capture_hold_id().is_none(), "a capture's refunds are its authorization's");
        self.aux[1] = self.aux[1].checked_add(amount_won).expect("refunds fit what was debited");
        assert!(self.aux[1] <= self.aux[0], "nothing is refunded beyond what was debited");
    }
}

/// Op-id records in two generations. New records go into `current`; when it holds half of
/// `idempotency_entries_max`, `previous` is dropped whole (raising the too-old floor to the
/// newest op time it held) and `current` becomes `previous`. Eviction is thus one table clear
/// per generation instead of a random-access removal per operation. A generation holding op
/// times still ahead of the clock is not dropped (the floor never passes the clock); `current`
/// may then grow to twice its size, past which new operations get RETRY_LATER. Each generation
/// has its wide map beside it: the few replies whose numbers do not fit a record.
///
/// The fields are `pub(super)` only for the snapshot image (image.rs); everything else goes
/// through the methods, which keep the generations and the floor consistent.
#[derive(Clone)]
pub(super) struct OpTable {
    pub(super) hasher: KeyHasherBuilder,
    pub(super) current: DenseMap<OpRecord>,
    pub(super) previous: DenseMap<OpRecord>,
    pub(super) current_wide: KeyMap<Reply>,
    pub(super) previous_wide: KeyMap<Reply>,
    pub(super) current_max_time_ms: Ms,
    pub(super) previous_max_time_ms: Ms,
    /// Op ids at or before this time answer OP_TOO_OLD: records up to it may have been evicted.
    pub(super) evicted_floor_ms: Ms,
}

impl OpTable {
    pub(super) fn new(hasher: KeyHasherBuilder) -> OpTable {
        OpTable {
            hasher,
            current: DenseMap::with_hasher(hasher),
            previous: DenseMap::with_hasher(hasher),
            current_wide: KeyMap::with_hasher(hasher),
            previous_wide: KeyMap::with_hasher(hasher),
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

    /// Whether the recorded op names this route key (a card's PIN hash). Compares keyed 64-bit
    /// hashes: two of a shard's cards sharing one is a 2^-64 chance per pair.
    pub(super) fn names(&self, record: &OpRecord, route_key: u128) -> bool {
        record.route_tag == self.hasher.hash_one(route_key)
    }

    /// The reply recorded under `op_id` (`record` is its record), exactly as first given.
    pub(super) fn reply(&self, op_id: OpId, record: &OpRecord) -> Reply {
        if record.kind & KIND_WIDE != 0 {
            return *self
                .current_wide
                .get(&op_id)
                .or_else(|| self.previous_wide.get(&op_id))
                .expect("a wide record's reply is in its generation's wide map");
        }
        let hold_expires_at_ms = match record.hold_expiry_delta_ms {
            NO_HOLD_EXPIRY => 0,
            delta_ms => op_id_time_ms(op_id)
                .checked_add_signed(i64::from(delta_ms))
                .expect("a recorded expiry was a valid time"),
        };
        Reply {
            code: record.code,
            replayed: false,
            field: Field::None as u8,
            approval_code: record.approval_code,
            amount_won: u64::from(record.amount_won),
            balance_won: u64::from(record.balance_won),
            available_won: u64::from(record.balance_won) - u64::from(record.held_won),
            hold_expires_at_ms,
        }
    }

    /// Records a new op: its body's fingerprints, its reply, its status and, for a payment,
    /// what it debited.
    pub(super) fn insert(
        &mut self,
        op_id: OpId,
        body: &Body,
        reply: Reply,
        status: OpStatus,
        debited_won: u64,
    ) {
        assert!(self.get(&op_id).is_none(), "an op id is recorded once");
        let compared = Compared::of(self.hasher, body);
        let aux = match body {
            Body::Capture { hold_id, .. } => split(*hold_id),
            _ => [debited_won, 0],
        };
        let route_tag = self.hasher.hash_one(body.route_key().unwrap_or(0));
        let mut record = OpRecord {
            body_fp: compared.fingerprint(self.hasher),
            field_tags: compared.tags(),
            route_tag,
            aux,
            approval_code: reply.approval_code,
            code: reply.code,
            kind: compared.msg_type,
            status: status as u8,
            amount_won: 0,
            balance_won: 0,
            held_won: 0,
            hold_expiry_delta_ms: NO_HOLD_EXPIRY,
        };
        match compact_numbers(op_id, &reply) {
            Some((amount_won, balance_won, held_won, hold_expiry_delta_ms)) => {
                record.amount_won = amount_won;
                record.balance_won = balance_won;
                record.held_won = held_won;
                record.hold_expiry_delta_ms = hold_expiry_delta_ms;
            }
            None => {
                record.kind |= KIND_WIDE;
                self.current_wide.insert(op_id, reply);
            }
        }
        debug_assert_eq!(self.reply(op_id, &record), reply, "a record gives its reply back");
        self.current.insert_new(op_id, record);
        self.current_max_time_ms = self.current_max_time_ms.max(op_id_time_ms(op_id));
    }

    /// The first field in which `retry` differs from the body first recorded under the op id
    /// (`None`: the same body). A different message type is `Kind`; the card is compared by
    /// its 64-bit route tag; the other fields by their 8-bit tags, in comparison order, so a
    /// differing field whose tag collides (1 in 256) is passed over for the next differing one,
    /// and `Field::None` names none when every differing field collides.
    pub(super) fn first_difference(&self, record: &OpRecord, retry: &Body) -> Option<Field> {
        let compared = Compared::of(self.hasher, retry);
        if compared.msg_type != record.msg_type() || compared.server_command {
            return Some(Field::Kind);
        }
        if compared.fingerprint(self.hasher) == record.body_fp {
            return None;
        }
        let tags = compared.tags();
        for (at, (field, _)) in compared.fields[..compared.len].iter().enumerate() {
            let differs = if *field == Field::Card {
                !self.names(record, retry.route_key().unwrap_or(0))
            } else {
                (tags >> (8 * at)) & 0xFF != (record.field_tags >> (8 * at)) & 0xFF
            };
            if differs {
                return Some(*field);
            }
        }
        Some(Field::None)
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
            self.previous_wide.clear();
            self.previous_max_time_ms = 0;
            changed = true;
        }
        if self.current.len() >= generation_max && self.previous_max_time_ms <= now_ms {
            if !self.previous.is_empty() {
                self.evicted_floor_ms = self.evicted_floor_ms.max(self.previous_max_time_ms);
            }
            std::mem::swap(&mut self.current, &mut self.previous);
            std::mem::swap(&mut self.current_wide, &mut self.previous_wide);
            self.current.clear();
            self.current_wide.clear();
            self.previous_max_time_ms = self.current_max_time_ms;
            self.current_max_time_ms = 0;
            changed = true;
        }
        changed
    }
}

/// A 128-bit id as two halves, low first.
#[expect(clippy::cast_possible_truncation, reason = "the halves of the id")]
fn split(id: u128) -> [u64; 2] {
    [id as u64, (id >> 64) as u64]
}

/// A reply's numbers as a record keeps them (amount, balance, held, hold expiry relative to
/// the op id's time), or `None` when one does not fit (the reply is then kept whole).
fn compact_numbers(op_id: OpId, reply: &Reply) -> Option<(u32, u32, u32, i32)> {
    if reply.field != Field::None as u8 || reply.replayed {
        return None;
    }
    let amount_won = u32::try_from(reply.amount_won).ok()?;
    let balance_won = u32::try_from(reply.balance_won).ok()?;
    let held_won = u32::try_from(reply.balance_won.checked_sub(reply.available_won)?).ok()?;
    let hold_expiry_delta_ms = if reply.hold_expires_at_ms == 0 {
        NO_HOLD_EXPIRY
    } else {
        let delta_ms = i128::from(reply.hold_expires_at_ms) - i128::from(op_id_time_ms(op_id));
        i32::try_from(delta_ms).ok().filter(|delta_ms| *delta_ms != NO_HOLD_EXPIRY)?
    };
    Some((amount_won, balance_won, held_won, hold_expiry_delta_ms))
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
        body: &Body,
        reply: Reply,
        status: OpStatus,
        debited_won: u64,
    ) {
        self.ops.insert(op_id, body, reply, status, debited_won);
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
        if !self.ops.names(record, pin_hash) {
            return unknown;
        }
        let status = record.status();
        if status == OpStatus::Tombstone {
            return OpView { status, msg_type: 0, reply: None };
        }
        let reply = self.ops.reply(op_id, record);
        OpView { status, msg_type: u16::from(record.msg_type()), reply: Some(reply) }
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
        Body::Fence { .. } => MsgType::OpFence,
        Body::Tick
        | Body::Configure(_)
        | Body::ConfigureExtended(_)
        | Body::SessionsClose { .. }
        | Body::Upgrade { .. } => MsgType::Ping,
    }
}

/// A field's value as the digest takes it.
fn n(value: impl Into<u128>) -> u128 {
    value.into()
}

/// How many fields a retry comparison looks at, at most (SESSION_START: 7).
const COMPARED_FIELDS_MAX: usize = 8;

/// A body as the retry comparison sees it: its message type and its compared fields in
/// comparison order (ascending `Field` number), each with a keyed 64-bit digest of its value.
/// The choice of fields is the protocol's: a CARD_ISSUE compares only its face value (a retry
/// carries a fresh PIN draw), a grouped field (a claim's password and hint) digests its values
/// together, and a server command (op id 0) is never recorded and matches nothing.
struct Compared {
    msg_type: u8,
    server_command: bool,
    fields: [(Field, u64); COMPARED_FIELDS_MAX],
    len: usize,
}

impl Compared {
    fn of(hasher: KeyHasherBuilder, body: &Body) -> Compared {
        use Body::*;
        #[expect(clippy::cast_possible_truncation, reason = "every recorded msg type is below 128")]
        let msg_type = msg_type_of(body) as u16 as u8;
        let mut compared = Compared {
            msg_type,
            server_command: false,
            fields: [(Field::None, 0); COMPARED_FIELDS_MAX],
            len: 0,
        };
        match body {
            Issue { .. }
            | Activate { .. }
            | Claim { .. }
            | Load { .. }
            | Sell { .. }
            | Block { .. }
            | Unblock { .. }
            | Register { .. }
            | Consign { .. }
            | BalanceRefund { .. } => compared.card_life(hasher, body),
            Authorize { .. }
            | Capture { .. }
            | Void { .. }
            | Reverse { .. }
            | Sale { .. }
            | Refund { .. } => compared.payment(hasher, body),
            ForeignImport { .. }
            | ForeignConvert { .. }
            | SessionStart(_)
            | SessionUpdate { .. }
            | SessionEnd { .. }
            | EventCharge { .. } => compared.foreign_and_charging(hasher, body),
            Fence { pin_hash } => compared.push(hasher, Field::Card, &[*pin_hash]),
            Tick | Configure(_) | ConfigureExtended(_) | SessionsClose { .. } | Upgrade { .. } => {
                compared.server_command = true;
            }
        }
        compared
    }

    /// Adds a field and the keyed digest of its values.
    fn push(&mut self, hasher: KeyHasherBuilder, field: Field, values: &[u128]) {
        let mut digest = hasher.build_hasher();
        digest.write_u64(field as u64);
        for value in values {
            digest.write_u128(*value);
        }
        self.fields[self.len] = (field, digest.finish());
        self.len += 1;
    }

    /// The fields of a card's life: issue to balance refund.
    fn card_life(&mut self, hasher: KeyHasherBuilder, body: &Body) {
        use Body::*;
        match body {
            Issue { face_value_won, .. } => {
                self.push(hasher, Field::FaceValue, &[n(*face_value_won)])
            }
            Activate { pin_hash, password_mac } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Password, &[n(*password_mac)]);
            }
            Claim { pin_hash, password_mac, gift_recipient_ref, password_hint } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Password, &[n(*password_mac), n(*password_hint)]);
                self.push(hasher, Field::GiftRecipient, &[n(*gift_recipient_ref)]);
            }
            Load { pin_hash, amount_won, funding } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Amount, &[n(*amount_won)]);
                self.push(hasher, Field::Funding, &[n(*funding)]);
            }
            Sell { pin_hash, channel_id, price_won, payment_means, gift_recipient_ref } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Channel, &[n(*channel_id)]);
                self.push(hasher, Field::Price, &[n(*price_won)]);
                self.push(hasher, Field::Funding, &[n(*payment_means)]);
                self.push(hasher, Field::GiftRecipient, &[n(*gift_recipient_ref)]);
            }
            Block { pin_hash, reason } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reason, &[n(*reason)]);
            }
            Unblock { pin_hash } => self.push(hasher, Field::Card, &[*pin_hash]),
            Register { pin_hash, holder_ref, verified_name } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Holder, &[n(*holder_ref), n(*verified_name)]);
            }
            Consign { pin_hash, partner_id, commission_per_mille } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                let partner = [n(*partner_id), n(*commission_per_mille)];
                self.push(hasher, Field::Partner, &partner);
            }
            BalanceRefund { pin_hash, payout_account_ref } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::PayoutAccount, &[n(*payout_account_ref)]);
            }
            _ => unreachable!("a card-life body"),
        }
    }

    /// The fields of a payment: AUTHORIZE to REFUND.
    fn payment(&mut self, hasher: KeyHasherBuilder, body: &Body) {
        use Body::*;
        match body {
            Authorize { pin_hash, password_mac, amount_won, merchant_id, category, hold_ttl_s } => {
                let purchase = [*pin_hash, n(*amount_won), n(*password_mac), n(*merchant_id)];
                self.purchase(hasher, purchase, *category);
                self.push(hasher, Field::HoldTtl, &[n(*hold_ttl_s)]);
            }
            Capture { pin_hash, hold_id, amount_won, final_capture } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reference, &[*hold_id]);
                self.push(hasher, Field::Amount, &[n(*amount_won)]);
                self.push(hasher, Field::FinalCapture, &[n(*final_capture)]);
            }
            Void { pin_hash, hold_id } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reference, &[*hold_id]);
            }
            Reverse { pin_hash, original_op_id } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reference, &[*original_op_id]);
            }
            Sale { pin_hash, password_mac, amount_won, merchant_id, category } => {
                let purchase = [*pin_hash, n(*amount_won), n(*password_mac), n(*merchant_id)];
                self.purchase(hasher, purchase, *category);
            }
            Refund { pin_hash, original_op_id, amount_won } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reference, &[*original_op_id]);
                self.push(hasher, Field::Amount, &[n(*amount_won)]);
            }
            _ => unreachable!("a payment body"),
        }
    }

    /// The fields AUTHORIZE and SALE share: card, amount, password, merchant (in `values`) and
    /// category.
    fn purchase(&mut self, hasher: KeyHasherBuilder, values: [u128; 4], category: u8) {
        for (field, value) in
            [Field::Card, Field::Amount, Field::Password, Field::Merchant].into_iter().zip(values)
        {
            self.push(hasher, field, &[value]);
        }
        self.push(hasher, Field::Category, &[n(category)]);
    }

    /// The fields of the foreign PIN commands, call sessions and event charges.
    fn foreign_and_charging(&mut self, hasher: KeyHasherBuilder, body: &Body) {
        use Body::*;
        match body {
            ForeignImport { foreign_hash, product_id, code } => {
                let mut code_bytes = [0u8; 32];
                code_bytes[0] = code.len;
                code_bytes[1..=code.bytes.len()].copy_from_slice(&code.bytes);
                let code_words = [
                    u128::from_le_bytes(code_bytes[..16].try_into().expect("16 bytes")),
                    u128::from_le_bytes(code_bytes[16..].try_into().expect("16 bytes")),
                ];
                self.push(hasher, Field::Reference, &[*foreign_hash, code_words[0], code_words[1]]);
                self.push(hasher, Field::Product, &[n(*product_id)]);
            }
            ForeignConvert { pin_hash, password_mac, product_id } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Password, &[n(*password_mac)]);
                self.push(hasher, Field::Product, &[n(*product_id)]);
            }
            SessionStart(open) => {
                self.push(hasher, Field::Card, &[open.pin_hash]);
                self.push(hasher, Field::Reference, &[open.session_id]);
                self.push(hasher, Field::Password, &[n(open.password_mac)]);
                self.push(hasher, Field::Category, &[n(open.category)]);
                self.push(hasher, Field::Destination, &[n(open.destination)]);
                self.push(hasher, Field::Seconds, &[n(open.requested_s)]);
                self.push(hasher, Field::Owner, &[n(open.owner_id)]);
            }
            SessionUpdate { pin_hash, session_id, seq, used_total_s, requested_s } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reference, &[*session_id]);
                self.push(hasher, Field::Sequence, &[n(*seq)]);
                let seconds = [n(*used_total_s), n(*requested_s)];
                self.push(hasher, Field::Seconds, &seconds);
            }
            SessionEnd { pin_hash, session_id, seq, used_total_s } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Reference, &[*session_id]);
                self.push(hasher, Field::Sequence, &[n(*seq)]);
                self.push(hasher, Field::Seconds, &[n(*used_total_s)]);
            }
            EventCharge { pin_hash, password_mac, destination, units, category } => {
                self.push(hasher, Field::Card, &[*pin_hash]);
                self.push(hasher, Field::Password, &[n(*password_mac)]);
                self.push(hasher, Field::Category, &[n(*category)]);
                self.push(hasher, Field::Destination, &[n(*destination)]);
                self.push(hasher, Field::Units, &[n(*units)]);
            }
            _ => unreachable!("a foreign or charging body"),
        }
    }

    /// The keyed fingerprint of the message type and every compared field.
    fn fingerprint(&self, hasher: KeyHasherBuilder) -> u64 {
        let mut fingerprint = hasher.build_hasher();
        fingerprint.write_u64(u64::from(self.msg_type) | u64::from(self.server_command) << 8);
        for (_, digest) in &self.fields[..self.len] {
            fingerprint.write_u64(*digest);
        }
        fingerprint.finish()
    }

    /// The top byte of each field's digest, field `i` in byte `i`.
    fn tags(&self) -> u64 {
        self.fields[..self.len]
            .iter()
            .enumerate()
            .fold(0, |tags, (at, (_, digest))| tags | (digest >> 56) << (8 * at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(amount_won: u64, merchant_id: u64) -> Body {
        Body::Sale { pin_hash: 7, password_mac: 9, amount_won, merchant_id, category: 1 }
    }

    fn reply(amount_won: u64, balance_won: u64, available_won: u64, hold_ms: Ms) -> Reply {
        Reply {
            amount_won,
            balance_won,
            available_won,
            hold_expires_at_ms: hold_ms,
            approval_code: 123_456,
            ..Reply::code(pinswitch_protocol::ResultCode::Approved)
        }
    }

    /// Every reply comes back as it was given: compact when its numbers fit, whole from the
    /// wide map when they do not (and the wide map goes with its generation).
    #[test]
    fn replies_come_back_exactly_compact_or_wide() {
        let mut table = OpTable::new(KeyHasherBuilder { key: [3, 4] });
        let op_time_ms: Ms = 1_800_000_000_000;
        let cases = [
            reply(1_000, 399_000, 399_000, 0),
            reply(u64::from(u32::MAX), u64::from(u32::MAX), 0, op_time_ms + 604_800_000),
            reply(5_000_000_000, 7, 7, 0),
            reply(1, 10, 11, 0),
            reply(1, 10, 5, op_time_ms - 300_000),
            reply(1, 10, 5, op_time_ms + (1 << 40)),
            Reply {
                field: Field::Amount as u8,
                ..Reply::code(pinswitch_protocol::ResultCode::OpIdReused)
            },
        ];
        for (at, given) in cases.iter().enumerate() {
            let op_id = u128::from(op_time_ms) << 80 | at as u128;
            table.insert(op_id, &sale(1_000, 1), *given, OpStatus::Completed, 1_000);
            let record = *table.get(&op_id).unwrap();
            assert_eq!(table.reply(op_id, &record), *given, "case {at}");
        }
        assert_eq!(
            table.current_wide.len(),
            4,
            "u64 amount, available over balance, far expiry, field"
        );
        assert!(table.prune(op_time_ms, 0, 4));
        assert!(table.prune(op_time_ms, 0, 1) && table.previous_wide.is_empty());
    }

    /// A capture keeps its hold id; a payment its debits and refunds.
    #[test]
    fn captures_keep_their_hold_and_payments_their_money() {
        let mut table = OpTable::new(KeyHasherBuilder::default());
        let hold_id = u128::MAX - 5;
        let capture = Body::Capture { pin_hash: 7, hold_id, amount_won: 5, final_capture: true };
        table.insert(1 << 80, &capture, reply(5, 5, 5, 0), OpStatus::Completed, 5);
        let record = table.get(&(1 << 80)).unwrap();
        assert_eq!((record.capture_hold_id(), record.debited_won()), (Some(hold_id), 0));
        table.insert(2 << 80, &sale(700, 1), reply(700, 5, 5, 0), OpStatus::Completed, 700);
        let payment = table.get_mut(&(2 << 80)).unwrap();
        payment.add_refunded(200);
        assert_eq!((payment.debited_won(), payment.refunded_won()), (700, 200));
        assert!(table.names(table.get(&(2 << 80)).unwrap(), 7));
        assert!(!table.names(table.get(&(2 << 80)).unwrap(), 7 | 1 << 64), "all 128 bits count");
    }

    /// The retry comparison: the same body matches; another type is `Kind`; another card is
    /// `Card`; a single differing field is named right but for tag collisions (about 1 in
    /// 256), and then a later differing field or none, never a field that is the same.
    #[test]
    fn retries_name_the_first_differing_field() {
        let table = OpTable::new(KeyHasherBuilder { key: [11, 12] });
        let mut record_table = OpTable::new(KeyHasherBuilder { key: [11, 12] });
        let first = sale(1_000, 42);
        record_table.insert(1, &first, reply(1_000, 0, 0, 0), OpStatus::Completed, 1_000);
        let record = *record_table.get(&1).unwrap();
        assert_eq!(table.first_difference(&record, &first), None);
        let void = Body::Void { pin_hash: 7, hold_id: 1 };
        assert_eq!(table.first_difference(&record, &void), Some(Field::Kind));
        let other_card = Body::Sale {
            pin_hash: 8,
            password_mac: 9,
            amount_won: 1_000,
            merchant_id: 42,
            category: 1,
        };
        assert_eq!(table.first_difference(&record, &other_card), Some(Field::Card));
        let mut misnamed = 0;
        for amount_won in 1..=10_000u64 {
            let retry = sale(1_000 + amount_won, 42);
            match table.first_difference(&record, &retry) {
                Some(Field::Amount) => {}
                Some(Field::None) => misnamed += 1,
                other => panic!("amount {amount_won}: {other:?} names a field that is the same"),
            }
            let retry = sale(1_000 + amount_won, 42 + amount_won);
            match table.first_difference(&record, &retry) {
                Some(Field::Amount) => {}
                Some(Field::Merchant | Field::None) => misnamed += 1,
                other => panic!("amount and merchant {amount_won}: {other:?}"),
            }
        }
        assert!((20..=200).contains(&misnamed), "{misnamed} of 20,000 misnamed");
    }
}
