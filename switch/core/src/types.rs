//! The engine's inputs and outputs. A `Command` is what the server journals (never a clear PIN:
//! cards are named by the keyed hash of their PIN, passwords by a keyed MAC); a `Reply` is the
//! outcome the server turns into a wire result. Reads (`CardView`, `OpView`) are not journaled.

use pinswitch_protocol::{CardState, Field, OpStatus, ResultCode};
use rkyv::{Archive, Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::config_record::{ConfigRecord, ConfigRecordAdded, ConfigRecordExtended};

/// Milliseconds since the Unix epoch, as the server's clock reported them.
pub type Ms = u64;
/// Keyed hash of a PIN (128 bits); the only name a card has inside the switch.
pub type PinHash = u128;
/// Client-chosen operation id; the top 48 bits are the client's time in ms (UUIDv7 layout).
pub type OpId = u128;
/// Keyed MAC of (PIN hash, password); compared, never reversed.
pub type PasswordMac = u64;

/// One mutating request, as journaled.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Client-chosen, unique per operation; 0 only for the server's commands.
    pub op_id: OpId,
    /// Server time after which the command must not execute (0 = no deadline).
    pub deadline_at_ms: Ms,
    pub body: Body,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Issue one card with this face value into stock (state issued).
    Issue {
        pin_hash: PinHash,
        face_value_won: u64,
    },
    /// Register the holder's password; the card becomes active.
    Activate {
        pin_hash: PinHash,
        password_mac: PasswordMac,
    },
    /// Activation by a gift's recipient (or with a password hint): see `CardClaim` on the wire.
    Claim {
        pin_hash: PinHash,
        password_mac: PasswordMac,
        gift_recipient_ref: u64,
        password_hint: bool,
    },
    /// Recharge.
    Load {
        pin_hash: PinHash,
        amount_won: u64,
        funding: u8,
    },
    /// A channel sells an issued card (state sold; the validity period starts).
    Sell {
        pin_hash: PinHash,
        channel_id: u32,
        price_won: u64,
        payment_means: u8,
        gift_recipient_ref: u64,
    },
    /// Stop an active card from paying; the balance is kept.
    Block {
        pin_hash: PinHash,
        reason: u8,
    },
    /// Back to active (or clear a wrong-password lockout).
    Unblock {
        pin_hash: PinHash,
    },
    /// Hand an issued card to a partner channel to sell (only that channel may sell it).
    Consign {
        pin_hash: PinHash,
        partner_id: u32,
        commission_per_mille: u16,
    },
    /// The holder registered (with a verified real name: the named-card cap applies).
    Register {
        pin_hash: PinHash,
        holder_ref: u64,
        verified_name: bool,
    },
    /// Pay the whole balance out and close the card (the used-share rule permitting).
    BalanceRefund {
        pin_hash: PinHash,
        payout_account_ref: u64,
    },
    /// Place a hold (`hold_ttl_s` 0 = the configured default).
    Authorize {
        pin_hash: PinHash,
        password_mac: PasswordMac,
        amount_won: u64,
        merchant_id: u64,
        category: u8,
        hold_ttl_s: u32,
    },
    /// Debit from a hold (`amount_won == u64::MAX`: all that remains).
    Capture {
        pin_hash: PinHash,
        hold_id: OpId,
        amount_won: u64,
        final_capture: bool,
    },
    Void {
        pin_hash: PinHash,
        hold_id: OpId,
    },
    Reverse {
        pin_hash: PinHash,
        original_op_id: OpId,
    },
    /// Single-phase debit.
    Sale {
        pin_hash: PinHash,
        password_mac: PasswordMac,
        amount_won: u64,
        merchant_id: u64,
        category: u8,
    },
    Refund {
        pin_hash: PinHash,
        original_op_id: OpId,
        amount_won: u64,
    },
    /// Add one foreign PIN bought from a foreign operator to this shard's pool of its product.
    /// `foreign_hash` is the front end's keyed hash of the code: it routes the PIN to a shard
    /// and lets the shard refuse a code imported twice.
    ForeignImport {
        foreign_hash: u128,
        product_id: u32,
        code: ForeignCode,
    },
    /// The holder converts part of the balance into one foreign PIN of the product: the card
    /// is debited the product's price in won and the first PIN of this shard's pool is theirs.
    ForeignConvert {
        pin_hash: PinHash,
        password_mac: PasswordMac,
        product_id: u32,
    },
    /// Open a per-second charging session (a call): see `SessionOpen`. Boxed: it is the one
    /// body past 48 bytes, and every stored op record would otherwise pay for it.
    SessionStart(Box<SessionOpen>),
    /// Report the session's use so far (`used_total_s`, cumulative: a lost update heals), debit
    /// it and reserve a new grant. `seq` must be above the last request number applied.
    SessionUpdate {
        pin_hash: PinHash,
        session_id: u128,
        seq: u32,
        used_total_s: u32,
        requested_s: u32,
    },
    /// The call ended after `used_total_s` seconds in all: debit the rest, release the reservation.
    SessionEnd {
        pin_hash: PinHash,
        session_id: u128,
        seq: u32,
        used_total_s: u32,
    },
    /// A one-shot charge priced by the tariff of `category` and `destination`: `units` times
    /// its `event_won`, debited at once (REFUND and REVERSE treat it like a SALE).
    /// `password_mac` 0: none given (see `SessionOpen::password_mac`).
    EventCharge {
        pin_hash: PinHash,
        password_mac: PasswordMac,
        destination: u64,
        units: u32,
        category: u8,
    },
    /// SESSION_AUDIT found sessions of `owner_id` the call switch no longer has: end the listed
    /// ones that are still live, still that owner's and silent since `silent_since_ms` (charged
    /// what they reported, reservations released). A server command, not an op: no op id.
    SessionsClose {
        owner_id: u32,
        silent_since_ms: Ms,
        session_ids: Vec<u128>,
    },
    /// Let time pass: expire due holds and silent sessions. Journaled only when it changed
    /// something.
    Tick,
    /// Replace the engine's rules from this point of the journal on. The rules travel as their
    /// record, the journal's form of them (`Body::configure` makes one from `EngineConfig`).
    /// Boxed: rare, and it would otherwise double the size of every stored body.
    Configure(Box<ConfigRecord>),
    /// Raise the engine format (what the journaled commands mean) to `engine_format` from this
    /// point of the journal on: the server journals one after recovery when the shard runs an
    /// older format than the binary's, so a data directory written by an older release replays
    /// its records as they ran and continues under the new rules. Format 2 keys approval codes
    /// with `approval_key`, which only the journal and snapshots hold. Added last: an archived
    /// enum keeps its earlier variants' tags and layouts, so older records decode unchanged.
    Upgrade {
        engine_format: u16,
        approval_key: [u64; 2],
    },
    /// CONFIGURE of rules that set one the frozen record cannot hold (`ConfigRecordAdded`):
    /// the record and the added rules. Rules without any journal as a plain `Configure`.
    ConfigureExtended(Box<ConfigRecordExtended>),
    /// OP_FENCE of the command's op id on this card: recorded as never executed if it has no
    /// record (appended last: the journal's older variants keep their numbers).
    Fence {
        pin_hash: PinHash,
    },
}

impl Body {
    /// CONFIGURE with these rules: the frozen record alone when that holds them all (the
    /// bytes every release has journaled), else the record and the rules added since.
    pub fn configure(config: &EngineConfig) -> Body {
        let record = ConfigRecord::from(config);
        let added = ConfigRecordAdded::from(config);
        if added == ConfigRecordAdded::default() {
            Body::Configure(Box::new(record))
        } else {
            Body::ConfigureExtended(Box::new(ConfigRecordExtended { record, added }))
        }
    }

    /// The card a command is about (`None` for the server's commands: `Tick`, `Configure`,
    /// `SessionsClose`, `Upgrade`).
    pub fn pin_hash(&self) -> Option<PinHash> {
        match self {
            Body::Issue { pin_hash, .. }
            | Body::Activate { pin_hash, .. }
            | Body::Claim { pin_hash, .. }
            | Body::Load { pin_hash, .. }
            | Body::Sell { pin_hash, .. }
            | Body::Block { pin_hash, .. }
            | Body::Unblock { pin_hash }
            | Body::Register { pin_hash, .. }
            | Body::Consign { pin_hash, .. }
            | Body::BalanceRefund { pin_hash, .. }
            | Body::Authorize { pin_hash, .. }
            | Body::Capture { pin_hash, .. }
            | Body::Void { pin_hash, .. }
            | Body::Reverse { pin_hash, .. }
            | Body::Sale { pin_hash, .. }
            | Body::Refund { pin_hash, .. }
            | Body::Fence { pin_hash } => Some(*pin_hash),
            Body::ForeignConvert { pin_hash, .. }
            | Body::SessionUpdate { pin_hash, .. }
            | Body::SessionEnd { pin_hash, .. }
            | Body::EventCharge { pin_hash, .. } => Some(*pin_hash),
            Body::SessionStart(open) => Some(open.pin_hash),
            Body::ForeignImport { .. }
            | Body::Tick
            | Body::Configure(_)
            | Body::SessionsClose { .. }
            | Body::Upgrade { .. }
            | Body::ConfigureExtended(_) => None,
        }
    }

    /// The card name a command carries, to change (the server names a card by the key that
    /// named it, across rotations); `None` where `pin_hash` is.
    pub fn pin_hash_mut(&mut self) -> Option<&mut PinHash> {
        match self {
            Body::Issue { pin_hash, .. }
            | Body::Activate { pin_hash, .. }
            | Body::Claim { pin_hash, .. }
            | Body::Load { pin_hash, .. }
            | Body::Sell { pin_hash, .. }
            | Body::Block { pin_hash, .. }
            | Body::Unblock { pin_hash }
            | Body::Register { pin_hash, .. }
            | Body::Consign { pin_hash, .. }
            | Body::BalanceRefund { pin_hash, .. }
            | Body::Authorize { pin_hash, .. }
            | Body::Capture { pin_hash, .. }
            | Body::Void { pin_hash, .. }
            | Body::Reverse { pin_hash, .. }
            | Body::Sale { pin_hash, .. }
            | Body::Refund { pin_hash, .. }
            | Body::Fence { pin_hash } => Some(pin_hash),
            Body::ForeignConvert { pin_hash, .. }
            | Body::SessionUpdate { pin_hash, .. }
            | Body::SessionEnd { pin_hash, .. }
            | Body::EventCharge { pin_hash, .. } => Some(pin_hash),
            Body::SessionStart(open) => Some(&mut open.pin_hash),
            Body::ForeignImport { .. }
            | Body::Tick
            | Body::Configure(_)
            | Body::SessionsClose { .. }
            | Body::Upgrade { .. }
            | Body::ConfigureExtended(_) => None,
        }
    }
}

/// A notice for the call switch that owns a session (pushed by the server as SESSION_NOTICE
/// once the command that raised it is durable). `kind` is a protocol `NOTICE_*` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionNoticeOut {
    pub session_id: u128,
    pub kind: u8,
    pub available_won: u64,
}

/// SESSION_START's body.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionOpen {
    pub pin_hash: PinHash,
    /// The call switch's session id (non-zero).
    pub session_id: u128,
    /// The called number, packed by `pack_destination`.
    pub destination: u64,
    /// 0: the default grant.
    pub requested_s: u32,
    /// The call switch's node id (SESSION_AUDIT compares one owner's sessions).
    pub owner_id: u32,
    /// The holder's password MAC, or 0 when the call switch collected none (accepted only when
    /// `EngineConfig::session_password_required` is off). MACs of real passwords are never 0.
    pub password_mac: PasswordMac,
    pub category: u8,
}

impl Body {
    /// The key a command routes by: its card, or for FOREIGN_IMPORT the foreign PIN's hash
    /// (`None` for `Tick` and `Configure`, which go to every shard).
    pub fn route_key(&self) -> Option<u128> {
        match self {
            Body::ForeignImport { foreign_hash, .. } => Some(*foreign_hash),
            body => body.pin_hash(),
        }
    }
}

/// Digits a called number may have (E.164: at most 15).
pub const DESTINATION_DIGITS_MAX: usize = 15;

/// Packs a called number (1 to 15 ASCII digits; leading zeros matter: "010...", "001...") into
/// a `u64`: the digit count in the top four bits, digit `i` in bits `4i..4i+4`. `None` when the
/// number is empty, too long or not all digits.
pub fn pack_destination(digits: &[u8]) -> Option<u64> {
    if digits.is_empty()
        || digits.len() > DESTINATION_DIGITS_MAX
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let packed = digits
        .iter()
        .enumerate()
        .fold(0u64, |packed, (at, digit)| packed | u64::from(digit - b'0') << (4 * at));
    Some(packed | (digits.len() as u64) << 60)
}

/// The ASCII digits of a packed called number (at most 15; a malformed packing yields the
/// digits it can, never a panic).
pub fn destination_digits(packed: u64) -> ([u8; DESTINATION_DIGITS_MAX], usize) {
    let len = ((packed >> 60) as usize).min(DESTINATION_DIGITS_MAX);
    let mut digits = [0u8; DESTINATION_DIGITS_MAX];
    for (at, digit) in digits.iter_mut().enumerate().take(len) {
        *digit = b'0' + ((packed >> (4 * at)) & 0xF).min(9) as u8;
    }
    (digits, len)
}

/// What a session reply grants. The engine packs it into the reply it journals (so a replay
/// answers it again without a wider `Reply`): `hold_expires_at_ms` holds granted seconds (bits
/// 0..24), validity seconds (24..48) and the tariff id (48..64), `field` the final-unit action.
/// `amount_won` is the money the event debited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionGrant {
    pub granted_s: u32,
    pub validity_s: u32,
    pub tariff_id: u16,
    /// A `FINAL_UNIT_*` value.
    pub final_unit: u8,
}

/// More grants may follow.
pub const FINAL_UNIT_NONE: u8 = 0;
/// This grant is the last: the card cannot pay for more; end the call when it is used up (a
/// zero grant: now).
pub const FINAL_UNIT_TERMINATE: u8 = 1;

impl SessionGrant {
    const SECONDS_MASK: u64 = (1 << 24) - 1;

    /// Writes the grant into a session reply.
    pub fn pack_into(self, reply: &mut Reply) {
        reply.hold_expires_at_ms = (u64::from(self.granted_s) & Self::SECONDS_MASK)
            | (u64::from(self.validity_s) & Self::SECONDS_MASK) << 24
            | u64::from(self.tariff_id) << 48;
        reply.field = self.final_unit;
    }

    /// Reads the grant of a session reply.
    pub fn of_reply(reply: &Reply) -> SessionGrant {
        SessionGrant::unpack(reply.hold_expires_at_ms, reply.field)
    }

    /// Reads a grant from the two reply fields that carry it (as copied into an `OpResult`).
    pub fn unpack(hold_expires_at_ms: u64, field: u8) -> SessionGrant {
        SessionGrant {
            granted_s: (hold_expires_at_ms & Self::SECONDS_MASK) as u32,
            validity_s: (hold_expires_at_ms >> 24 & Self::SECONDS_MASK) as u32,
            tariff_id: (hold_expires_at_ms >> 48) as u16,
            final_unit: field,
        }
    }
}

/// A foreign PIN as the foreign operator printed it: 1 to 23 ASCII letters or digits (the
/// front end checks the alphabet), kept inline so a pool is one allocation.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForeignCode {
    pub len: u8,
    pub bytes: [u8; ForeignCode::BYTES_MAX],
}

impl ForeignCode {
    pub const BYTES_MAX: usize = 23;

    /// `None` unless 1..=23 bytes.
    pub fn new(code: &[u8]) -> Option<ForeignCode> {
        if code.is_empty() || code.len() > Self::BYTES_MAX {
            return None;
        }
        let mut bytes = [0u8; Self::BYTES_MAX];
        bytes[..code.len()].copy_from_slice(code);
        let len = u8::try_from(code.len()).expect("at most BYTES_MAX (23) bytes");
        Some(ForeignCode { len, bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(Self::BYTES_MAX)]
    }
}

/// The outcome of one command. Mirrors the wire `OpResult` field for field.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// True when this is the stored reply of an earlier identical command.
    pub replayed: bool,
    /// With OP_ID_REUSED: the first differing `Field` as a number.
    pub field: u8,
    pub approval_code: u32,
    pub amount_won: u64,
    pub balance_won: u64,
    pub available_won: u64,
    pub hold_expires_at_ms: Ms,
}

impl Reply {
    /// A reply with only a code (all amounts zero).
    pub fn code(code: ResultCode) -> Reply {
        Reply {
            code: code.as_u16(),
            replayed: false,
            field: Field::None as u8,
            approval_code: 0,
            amount_won: 0,
            balance_won: 0,
            available_won: 0,
            hold_expires_at_ms: 0,
        }
    }

    pub fn result_code(&self) -> ResultCode {
        ResultCode::from_u16(self.code).expect("the engine only produces known codes")
    }
}

/// PRICE_QUOTE's answer as the engine gives it (the front end turns it into its wire result):
/// the tariff that matches, what `duration_s` seconds starting now and `units` events cost, and
/// with a card its available balance and the seconds of a call it pays for. Read-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quote {
    /// APPROVED, TARIFF_NOT_FOUND, DESTINATION_INVALID, CATEGORY_INVALID, or a card's refusal.
    pub code: u16,
    pub tariff_id: u16,
    pub connect_fee_won: u64,
    /// Won per increment at the current time of day.
    pub rate_won: u64,
    pub increment_s: u32,
    pub first_increment_s: u32,
    /// Won per event (0: the tariff prices no events).
    pub event_won: u64,
    /// What the seconds asked about cost, time-of-day bands and connect fee included.
    pub duration_cost_won: u64,
    /// What the events asked about cost.
    pub event_cost_won: u64,
    /// With a card: its available balance, and the seconds of a call starting now it pays for.
    pub available_won: u64,
    pub affordable_s: u32,
}

/// What `Shard::apply` returns: the reply, whether the state changed (the server journals the
/// command exactly when it did; recovery replays exactly those commands), and what happened
/// beyond the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub reply: Reply,
    pub changed: bool,
    /// In the order they happened. Derived at apply time and never journaled: replay makes the
    /// same ones again from the same records, and recovery drops them. A `Vec` so the common
    /// command (a SALE with none) allocates nothing: an empty `Vec` owns no heap memory.
    pub effects: Vec<Effect>,
}

impl Applied {
    /// An outcome with no effects (yet: `Shard::apply` adds those it recorded).
    pub fn new(reply: Reply, changed: bool) -> Applied {
        Applied { reply, changed, effects: Vec::new() }
    }

    /// The session notices the command raised, in order.
    pub fn notices(&self) -> impl Iterator<Item = SessionNoticeOut> + '_ {
        self.effects.iter().filter_map(|effect| match effect {
            Effect::Notice(notice) => Some(*notice),
            _ => None,
        })
    }

    /// The foreign PIN an approved FOREIGN_CONVERT handed out (its replays included).
    pub fn foreign_pin(&self) -> Option<ForeignCode> {
        self.effects.iter().find_map(|effect| match effect {
            Effect::ForeignPinHandedOut { code } => Some(*code),
            _ => None,
        })
    }
}

/// Something a command did that its reply does not show: money moved by the engine's clock or
/// by a card's validity, sessions ended without a report, a foreign PIN handed out. The
/// settlement exporter posts from these instead of reading the engine's state around a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A hold reached its expiry (before the command ran): what it had not captured went back
    /// to the card's available balance.
    HoldExpired { hold_id: OpId, pin_hash: PinHash, released_won: u64 },
    /// A live session stayed silent past its deadline (before the command ran): it ended, its
    /// reservation went back to the card; a late report may still charge it.
    SessionExpired { session_id: u128, pin_hash: PinHash, released_won: u64 },
    /// SESSION_AUDIT's close (`Body::SessionsClose`) ended a live session: its reservation
    /// went back to the card.
    SessionClosed { session_id: u128, pin_hash: PinHash, released_won: u64 },
    /// The command's card was past its validity: it expired, and its whole balance became the
    /// issuer's breakage (possibly 0 won).
    CardExpired { pin_hash: PinHash, breakage_won: u64 },
    /// An approved FOREIGN_CONVERT handed out this foreign PIN (its replay hands out the same).
    ForeignPinHandedOut { code: ForeignCode },
    /// A notice for the call switch that owns a live session (the server pushes it once the
    /// command is durable; replay's are dropped with the rest).
    Notice(SessionNoticeOut),
}

/// A card as BALANCE_INQUIRY shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardView {
    pub state: CardState,
    pub face_value_won: u64,
    pub balance_won: u64,
    pub available_won: u64,
    pub held_won: u64,
    pub password_tries_left: u8,
    pub points: u32,
    /// End of validity, seconds since the Unix epoch (0: not started).
    pub valid_until_s: u32,
    /// The holder left a password hint with the card site.
    pub password_hint: bool,
    pub holds: Vec<HoldView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub hold_id: OpId,
    pub amount_won: u64,
    pub captured_won: u64,
    pub expires_at_ms: Ms,
}

/// What INQUIRY knows about an op id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpView {
    pub status: OpStatus,
    /// The wire message type of the operation (0 when unknown or a tombstone).
    pub msg_type: u16,
    pub reply: Option<Reply>,
}

/// Money totals a shard keeps so conservation can be asserted after every command:
/// `issued + loaded + refunded + reversed == balances + debited + paid_out + breakage`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub issued_won: u128,
    pub loaded_won: u128,
    pub refunded_won: u128,
    pub reversed_won: u128,
    pub debited_won: u128,
    /// Balances paid out by CARD_REFUND (the card closed).
    pub paid_out_won: u128,
    /// Balances left on cards that expired (the issuer's breakage).
    pub breakage_won: u128,
    pub balances_won: u128,
    pub held_won: u128,
}

/// Re-exported so users of the core need not name the protocol crate for these.
pub use pinswitch_protocol::{CardState as State, Category as ServiceCategory};
