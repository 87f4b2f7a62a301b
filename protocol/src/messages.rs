//! The message bodies of protocol v1. A request body is an rkyv archive of a `Vec` of events of
//! one type (a batch); the response body is an rkyv archive of a `Vec` of results, one per event,
//! in event order. Amounts are integer won (`u64`), ids are client-chosen `u128`, and PINs travel
//! as 16-digit numbers (`u64`, shown zero-padded) that the server hashes on arrival.

use rkyv::{Archive, Deserialize, Serialize};

use crate::wire_enum::wire_enum;

wire_enum! {
    /// Message types (the frame header's `msg_type`). A response carries the request's type.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum MsgType: u16, from_u16 {
        Hello = 1 => "HELLO",
        Ping = 2 => "PING",
        CardIssue = 10 => "CARD_ISSUE",
        CardActivate = 11 => "CARD_ACTIVATE",
        CardLoad = 12 => "CARD_LOAD",
        CardSell = 13 => "CARD_SELL",
        CardBlock = 14 => "CARD_BLOCK",
        CardUnblock = 15 => "CARD_UNBLOCK",
        CardRefund = 16 => "CARD_REFUND",
        CardRegister = 17 => "CARD_REGISTER",
        CardConsign = 18 => "CARD_CONSIGN",
        CardClaim = 19 => "CARD_CLAIM",
        Authorize = 20 => "AUTHORIZE",
        Capture = 21 => "CAPTURE",
        Void = 22 => "VOID",
        Reverse = 23 => "REVERSE",
        Sale = 24 => "SALE",
        Refund = 25 => "REFUND",
        ForeignImport = 26 => "FOREIGN_IMPORT",
        ForeignConvert = 27 => "FOREIGN_CONVERT",
        Inquiry = 30 => "INQUIRY",
        OpFence = 33 => "OP_FENCE",
        BalanceInquiry = 31 => "BALANCE_INQUIRY",
        SessionStart = 40 => "SESSION_START",
        SessionUpdate = 41 => "SESSION_UPDATE",
        SessionEnd = 42 => "SESSION_END",
        EventCharge = 43 => "EVENT_CHARGE",
        PriceQuote = 44 => "PRICE_QUOTE",
        SessionAudit = 45 => "SESSION_AUDIT",
        /// Server to client only (`FLAG_PUSH`): see `SessionNotice`.
        SessionNotice = 46 => "SESSION_NOTICE",
    }
}

impl MsgType {
    /// Mutating messages carry op ids, are journaled and are idempotent.
    pub fn is_mutating(self) -> bool {
        !matches!(
            self,
            Self::Hello
                | Self::Ping
                | Self::Inquiry
                | Self::BalanceInquiry
                | Self::PriceQuote
                | Self::SessionAudit
                | Self::SessionNotice
        )
    }
}

/// HELLO request: who is calling. Optional; answered with the server's limits.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub client_name: String,
    pub protocol_version: u8,
}

/// HELLO response: the limits a client must respect to avoid `BATCH_TOO_LARGE` and friends.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    pub server_name: String,
    pub protocol_version: u8,
    pub shard_count: u16,
    pub frame_bytes_max: u32,
    pub batch_events_max: u32,
    pub in_flight_per_connection_max: u32,
    pub hold_ttl_max_s: u32,
    pub idempotency_window_s: u64,
    pub server_time_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Ping {
    pub nonce: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Pong {
    pub nonce: u64,
    pub server_time_ms: u64,
}

/// CARD_ISSUE: issue one card of the product with this face value. The server draws the PIN.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardIssue {
    pub op_id: u128,
    pub face_value_won: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardIssueResult {
    pub code: u16,
    pub flags: u8,
    pub field: u8,
    /// The new card's PIN, shown once: 0 when the result is a replay or a decline.
    pub pin: u64,
    pub balance_won: u64,
}

/// CARD_CLAIM: activation with the details of the seed's two paths: a gift's recipient claims
/// the card with the recipient reference the sale named (`gift_recipient_ref`; 0 for a card
/// that is not a gift) and their own password; `password_hint` records that the holder left a
/// password hint with the card site (the hint itself stays there). A gift can only be claimed
/// this way.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CardClaim {
    pub op_id: u128,
    pub pin: u64,
    pub password: Vec<u8>,
    pub gift_recipient_ref: u64,
    pub password_hint: bool,
}

/// CARD_ACTIVATE: register the holder's password ("for user"); the card becomes active.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CardActivate {
    pub op_id: u128,
    pub pin: u64,
    pub password: Vec<u8>,
}

/// CARD_SELL: a channel (card site, agent, mobile operator) sells an issued card from its stock.
/// The card becomes `Sold` and its validity period starts; its value is spendable once the buyer
/// (or, for a gift, the recipient) registers a password with CARD_ACTIVATE.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardSell {
    pub op_id: u128,
    pub pin: u64,
    /// The selling channel (non-zero; the operator's channel registry names it).
    pub channel_id: u32,
    /// What the buyer paid (won; may differ from the face value, e.g. a discount).
    pub price_won: u64,
    /// How the buyer paid: a `Funding` value.
    pub payment_means: u8,
    /// Non-zero: the card is a gift to this recipient reference (the site's id of the
    /// recipient); the recipient claims it by registering their own password.
    pub gift_recipient_ref: u64,
}

/// CARD_BLOCK: stop an active card from paying (lost, stolen, operator or holder request). The
/// balance is kept; pending holds may still be captured or voided.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardBlock {
    pub op_id: u128,
    pub pin: u64,
    /// A `BlockReason` value.
    pub reason: u8,
}

wire_enum! {
    /// Why a card was blocked.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum BlockReason: u8, from_u8 {
        Lost = 1 => "lost",
        Stolen = 2 => "stolen",
        Operator = 3 => "operator",
        HolderRequest = 4 => "holder_request",
    }
}

/// CARD_UNBLOCK: return a blocked card to active, or clear a password lockout of an active card.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardUnblock {
    pub op_id: u128,
    pub pin: u64,
}

/// CARD_REFUND: pay the whole remaining balance out and close the card, allowed once the used
/// share of the value charged onto the card reaches the product's ratio (60 %, or 80 % for face
/// values up to 10,000 won). The payout goes to the bank account reference given (the settlement
/// exporter turns it into a payout instruction).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardRefund {
    pub op_id: u128,
    pub pin: u64,
    pub payout_account_ref: u64,
}

/// CARD_REGISTER: the holder registers with the card site ("user information"): the card becomes
/// registered, and with a verified real name, named, which raises its balance cap (500,000 won
/// unnamed, 2,000,000 named, by default). Personal data stays with the site; the switch keeps
/// only the site's reference. Re-registering updates it (e.g. a later name verification).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardRegister {
    pub op_id: u128,
    pub pin: u64,
    /// The card site's reference of the holder (non-zero).
    pub holder_ref: u64,
    /// The holder's real name was verified (the named-card cap applies).
    pub verified_name: bool,
}

/// CARD_CONSIGN: an issued card (one of a block of PINs) is handed to a partner (a mobile
/// operator or agent) to sell through its own channel; only that partner may then sell it, and
/// its commission rate is journaled for settlement.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardConsign {
    pub op_id: u128,
    pub pin: u64,
    /// The partner's channel id (non-zero): the only channel that may sell the card.
    pub partner_id: u32,
    /// The partner's commission on the sale, per mille of the price (0..=1000).
    pub commission_per_mille: u16,
}

/// CARD_LOAD: recharge. `funding` says how the money came in (see PROTOCOL.md).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardLoad {
    pub op_id: u128,
    pub pin: u64,
    pub amount_won: u64,
    pub funding: u8,
}

/// AUTHORIZE: place a hold of `amount_won` for `hold_ttl_s` seconds (0 = server default).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Authorize {
    pub op_id: u128,
    pub pin: u64,
    pub password: Vec<u8>,
    pub amount_won: u64,
    pub merchant_id: u64,
    pub category: u8,
    pub hold_ttl_s: u32,
}

/// CAPTURE: debit `amount_won` of a hold (`u64::MAX` = all that remains). `final_capture`
/// releases the remainder; otherwise it stays held for a later capture.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    pub op_id: u128,
    pub pin: u64,
    pub hold_id: u128,
    pub amount_won: u64,
    pub final_capture: bool,
}

/// VOID: release a hold.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Void {
    pub op_id: u128,
    pub pin: u64,
    pub hold_id: u128,
}

/// REVERSE: undo an AUTHORIZE or SALE named by its op id; never refused for business reasons.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reverse {
    pub op_id: u128,
    pub pin: u64,
    pub original_op_id: u128,
}

/// SALE: single-phase debit.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Sale {
    pub op_id: u128,
    pub pin: u64,
    pub password: Vec<u8>,
    pub amount_won: u64,
    pub merchant_id: u64,
    pub category: u8,
}

/// FOREIGN_IMPORT: add one foreign PIN bought from a foreign operator to the pool of a foreign
/// product of the catalogue (`[[engine.foreign_products]]`). The code is 1 to 23 ASCII
/// letters or digits; each code can be imported once. Answered with `OpResult` (`amount_won`:
/// the pool's size on the PIN's shard after the import).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ForeignImport {
    pub op_id: u128,
    pub product_id: u32,
    pub foreign_pin: Vec<u8>,
}

/// FOREIGN_CONVERT: the holder converts part of the card's balance into one foreign PIN of the
/// product; the card is debited the product's price in won.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ForeignConvert {
    pub op_id: u128,
    pub pin: u64,
    pub password: Vec<u8>,
    pub product_id: u32,
}

/// The result of one FOREIGN_CONVERT: the usual result, and the foreign PIN handed out (empty
/// unless approved; a replay hands out the same PIN).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ForeignConvertResult {
    pub result: OpResult,
    pub foreign_pin: Vec<u8>,
}

/// REFUND: credit back part or all of an earlier debit: `original_op_id` names a SALE or a
/// CAPTURE (the refundable money of a CAPTURE is that of its AUTHORIZE, captures together).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refund {
    pub op_id: u128,
    pub pin: u64,
    pub original_op_id: u128,
    pub amount_won: u64,
}

/// SESSION_START: a call switch opens a per-second charging session (a call) on the card. The
/// switch rates it by the tariff of the service category and the called number, reserves the
/// money of the granted seconds (connect fee included) from the card's available balance (the
/// one payment holds draw from) and answers a `SessionResult`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionStart {
    pub op_id: u128,
    pub pin: u64,
    /// The call switch's session id (non-zero), named again by SESSION_UPDATE and SESSION_END.
    pub session_id: u128,
    /// A `Category` number (2 telephone call, 3 phone information, 4 prepaid mobile, ...).
    pub category: u8,
    /// The called number: 1 to 15 ASCII digits (leading zeros count: "01012345678").
    pub destination: Vec<u8>,
    /// Seconds wanted (0: the server's default grant).
    pub requested_s: u32,
    /// The call switch's node id: SESSION_AUDIT compares the sessions of one owner.
    pub owner_id: u32,
    /// The holder's password when the call switch collects one (empty: none; accepted only
    /// when the card's product, or the engine-wide rule, has `session_password_required`
    /// off). A wrong one counts toward the lockout like a payment's.
    pub password: Vec<u8>,
}

/// SESSION_UPDATE: the use of the session so far, in total (so a lost update heals): the switch
/// debits what is due beyond what was charged and reserves a new grant.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionUpdate {
    pub op_id: u128,
    pub pin: u64,
    pub session_id: u128,
    /// The request number within the session (START is 0; each report counts up, gaps are
    /// allowed). A report whose number is not above the last one applied is stale: refused
    /// SESSION_SEQUENCE_STALE with nothing changed.
    pub seq: u32,
    /// Seconds used since the session started (cumulative).
    pub used_total_s: u32,
    /// Seconds wanted next (0: the server's default grant).
    pub requested_s: u32,
}

/// SESSION_END: the call ended after `used_total_s` seconds in all: the rest is debited and the
/// reservation released.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    pub op_id: u128,
    pub pin: u64,
    pub session_id: u128,
    /// The request number (see `SessionUpdate::seq`).
    pub seq: u32,
    pub used_total_s: u32,
}

/// The result of SESSION_START, SESSION_UPDATE and SESSION_END. `result.amount_won` is the money
/// this event debited; the grant fields are 0 unless the code is APPROVED or SESSION_USAGE_CAPPED.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionResult {
    pub result: OpResult,
    /// Seconds the switch may let the call run past the use reported (0 after SESSION_END).
    pub granted_s: u32,
    /// Report (SESSION_UPDATE) at the latest this many seconds from now, even with seconds left.
    /// A session silent for twice this long is expired by the switch (its reservation released).
    pub validity_s: u32,
    /// Report when this many granted seconds are left (RFC 8506 Time-Quota-Threshold).
    pub quota_threshold_s: u32,
    /// `FINAL_UNIT_*`: 0 none; 1 terminate: the card cannot pay for more than this grant, end
    /// the call when it is used up (at once for a zero grant); 2 redirect: as terminate, but
    /// connect the caller to `redirect_number` (the recharge service) instead of hanging up.
    pub final_unit: u8,
    /// With `final_unit` 2: the number to redirect to (ASCII digits).
    pub redirect_number: Vec<u8>,
    /// `FAILURE_HANDLING_*`: what the call switch does when the switch does not answer in time.
    pub failure_handling: u8,
    /// The tariff applied (its id in the switch's tariff table).
    pub tariff_id: u16,
}

/// `SessionResult::final_unit` values.
pub const FINAL_UNIT_NONE: u8 = 0;
pub const FINAL_UNIT_TERMINATE: u8 = 1;
pub const FINAL_UNIT_REDIRECT: u8 = 2;

/// `SessionResult::failure_handling` values (RFC 8506 CC-Failure-Handling).
pub const FAILURE_HANDLING_TERMINATE: u8 = 0;
pub const FAILURE_HANDLING_CONTINUE: u8 = 1;
pub const FAILURE_HANDLING_RETRY_AND_TERMINATE: u8 = 2;

/// EVENT_CHARGE: a one-shot charge priced by the tariff (a phone information call priced per
/// event): `units` times the tariff's `event_won`, debited at once like a SALE (REFUND and
/// REVERSE name it like one). Answered with an `OpResult`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EventCharge {
    pub op_id: u128,
    pub pin: u64,
    /// As in SESSION_START: empty when the call switch collects none.
    pub password: Vec<u8>,
    pub category: u8,
    /// The service number called: 1 to 15 ASCII digits.
    pub destination: Vec<u8>,
    /// Events charged (1 or more).
    pub units: u32,
}

/// PRICE_QUOTE: what a call or an event would cost now, read-only. With a PIN (non-zero) the
/// answer also says how many seconds the card's available balance buys.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PriceQuote {
    /// 0: no card.
    pub pin: u64,
    pub category: u8,
    pub destination: Vec<u8>,
    /// A call of this many seconds starting now (0: none).
    pub duration_s: u32,
    /// This many events (0: none).
    pub units: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriceQuoteResult {
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
    /// What `duration_s` seconds starting now cost, time-of-day bands and connect fee included.
    pub duration_cost_won: u64,
    /// What `units` events cost.
    pub event_cost_won: u64,
    /// With a PIN: the card's available balance, and the seconds of a call starting now it
    /// pays for (at most `session_grant_max_s`).
    pub available_won: u64,
    pub affordable_s: u32,
}

/// SESSION_AUDIT: a call switch checks that the switch's live sessions of `owner_id` are the
/// ones it has. First with `count` and `digest` (`session_digest` of its live ids) and an empty
/// list: the answer is APPROVED (in sync) or SESSION_AUDIT_MISMATCH. Then, on a mismatch, with
/// `list` set and every live id in `session_ids`: the switch ends each of the owner's sessions
/// missing from the list that has been silent for `session_audit_grace_s` (so a call started
/// while the audit was on its way is spared); they are charged what they reported and their
/// reservations released. Answered with one `SessionAuditResult`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionAudit {
    pub owner_id: u32,
    pub count: u32,
    pub digest: u128,
    pub list: bool,
    pub session_ids: Vec<u128>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionAuditResult {
    pub code: u16,
    /// The owner's live sessions on the switch (before any were ended).
    pub live_count: u32,
    /// Sessions ended as orphans by this audit.
    pub ended: u32,
}

/// The order-independent digest of a set of session ids SESSION_AUDIT compares: the XOR of
/// `session_id_mix(id)` over the set (0 for none).
pub fn session_digest(session_ids: impl IntoIterator<Item = u128>) -> u128 {
    session_ids.into_iter().fold(0, |digest, session_id| digest ^ session_id_mix(session_id))
}

/// A fixed bijective mix of a session id (SplitMix64's finalizer on each half, the halves
/// crossed), so sequential ids do not cancel each other in the XOR.
pub fn session_id_mix(session_id: u128) -> u128 {
    fn finalize(mut x: u64) -> u64 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    let high = (session_id >> 64) as u64;
    #[expect(clippy::cast_possible_truncation, reason = "the low half: the cast keeps 64 bits")]
    let low = session_id as u64;
    let low_mixed = finalize(low);
    let high_mixed = finalize(high ^ low_mixed);
    (u128::from(high_mixed) << 64) | u128::from(low_mixed)
}

/// A push (`FLAG_PUSH`, request id 0, type SESSION_NOTICE) to the connection that last reported
/// a session: one per frame, in a `Vec` of one.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionNotice {
    /// `NOTICE_*`.
    pub kind: u8,
    pub session_id: u128,
    /// The card's available balance when the notice was raised.
    pub available_won: u64,
}

/// The card was recharged: send SESSION_UPDATE now for a new grant (RFC 8506 re-auth request).
pub const NOTICE_REAUTHORIZE: u8 = 1;
/// The card was blocked: end the call now and send SESSION_END (RFC 8506 abort-session).
pub const NOTICE_ABORT: u8 = 2;
/// The card's available balance fell below the server's `low_balance_warn_won`.
pub const NOTICE_LOW_BALANCE: u8 = 3;
/// The session was silent past twice its validity and was expired: its reservation is
/// released; a late report is still charged (SESSION_EXPIRED_CHARGED).
pub const NOTICE_EXPIRED: u8 = 4;

/// The result of every mutating event except CARD_ISSUE.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpResult {
    /// A `ResultCode` number.
    pub code: u16,
    /// Bit 0 (`FLAG_REPLAYED`): this is the stored result of an earlier identical request.
    pub flags: u8,
    /// With `OP_ID_REUSED`: the first differing `Field`.
    pub field: u8,
    /// Six-digit approval code of every approved event (0 on declines).
    pub approval_code: u32,
    /// The amount this event moved: held, captured, released, reversed, refunded or loaded.
    pub amount_won: u64,
    /// The card's balance after the event (posted money, including held funds).
    pub balance_won: u64,
    /// The card's available balance after the event (balance minus live holds).
    pub available_won: u64,
    /// For AUTHORIZE: when the hold expires (server ms since the Unix epoch).
    pub hold_expires_at_ms: u64,
}

/// Set in `flags` when a result is the stored result of an earlier request with the same op id.
pub const FLAG_REPLAYED: u8 = 1;

/// OP_FENCE: close the question INQUIRY leaves open. An op id without a record reads UNKNOWN,
/// which means "not yet", not "never": a request still in flight may arrive later. A fence
/// records the op id as never executed if it has not arrived (FENCED; a late arrival is then
/// declined), or answers OP_RECORDED if it has (INQUIRY then tells its outcome). Either answer
/// is final. Journaled, like any operation; fencing again answers the same.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpFence {
    pub pin: u64,
    /// The op id of the operation to fence.
    pub op_id: u128,
}

/// INQUIRY: what happened to the operation with this op id on this card? Read-only.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inquiry {
    pub pin: u64,
    pub op_id: u128,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct InquiryResult {
    /// `APPROVED` when the owning shard answered (read `status`: an unknown card or op id reads
    /// as `Unknown`), otherwise why not (e.g. PIN_FORMAT_INVALID).
    pub code: u16,
    /// An `OpStatus` number.
    pub status: u8,
    /// The `MsgType` of the operation found (0 when unknown or a tombstone).
    pub msg_type: u16,
    /// The stored result of the operation (all zero when unknown or a tombstone).
    pub result: OpResult,
}

wire_enum! {
    /// What INQUIRY knows of an op id.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum OpStatus: u8, from_u8 {
        /// Never seen (or older than the idempotency window).
        Unknown = 0 => "unknown",
        /// Executed; `result` holds its outcome (approved or declined).
        Completed = 1 => "completed",
        /// A REVERSE arrived for it before it did: it will be declined if it arrives.
        Tombstone = 2 => "tombstone",
        /// An AUTHORIZE whose hold is still pending.
        HoldPending = 3 => "hold_pending",
        HoldCaptured = 4 => "hold_captured",
        HoldVoided = 5 => "hold_voided",
        HoldExpired = 6 => "hold_expired",
        /// An AUTHORIZE or SALE that was reversed.
        Reversed = 7 => "reversed",
    }
}

/// BALANCE_INQUIRY: the card's state, balances and live holds. Read-only.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalanceInquiry {
    pub pin: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BalanceResult {
    pub code: u16,
    /// A `CardState` number.
    pub state: u8,
    pub face_value_won: u64,
    pub balance_won: u64,
    pub available_won: u64,
    pub held_won: u64,
    pub password_tries_left: u8,
    /// Loyalty points (a balance separate from money), earned by payments of registered cards.
    pub points: u32,
    /// End of validity, seconds since the Unix epoch (0: not started, the card is in stock).
    pub valid_until_s: u32,
    /// The holder left a password hint with the card site (CARD_CLAIM).
    pub password_hint: bool,
    pub holds: Vec<HoldInfo>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldInfo {
    pub hold_id: u128,
    pub amount_won: u64,
    pub captured_won: u64,
    pub expires_at_ms: u64,
}

wire_enum! {
    /// The life of a card.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CardState: u8, from_u8 {
        /// In stock: value assigned, not spendable.
        Issued = 1 => "issued",
        /// Sold to a channel or buyer, not yet activated.
        Sold = 2 => "sold",
        /// Password registered: spendable.
        Active = 3 => "active",
        Blocked = 4 => "blocked",
        Expired = 5 => "expired",
        /// Refunded or otherwise terminated; terminal.
        Closed = 6 => "closed",
    }
}

wire_enum! {
    /// How the money of a CARD_LOAD came in. A card's value is never a funding source.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Funding: u8, from_u8 {
        CreditCard = 1 => "credit_card",
        BankTransfer = 2 => "bank_transfer",
        DepositWithoutBankbook = 3 => "deposit_without_bankbook",
        Cash = 4 => "cash",
        MobileBill = 5 => "mobile_bill",
    }
}

/// STATEMENT (message type `STATEMENT_MSG_TYPE`, 32): a card's usage statement, the seed's
/// FIG. 10H summary and FIG. 10I detail list. Answered by the settlement exporter's listener
/// (`pinswitch-exporter serve`) from its statement index, never by the switch (which answers
/// `UNKNOWN_MESSAGE_TYPE`), so statements never touch the shards. Read-only. A batch of
/// `StatementQuery` gets one `StatementResult` each.
pub const STATEMENT_MSG_TYPE: u16 = 32;

/// STATEMENT request: the card, a time range and one page of the detail list.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatementQuery {
    pub pin: u64,
    /// Start of the range, ms since the Unix epoch (inclusive; 0: from the card's first event).
    pub from_ms: u64,
    /// End of the range, ms (exclusive; 0: up to the exporter's position).
    pub to_ms: u64,
    /// Index of the first detail line wanted (0 on the first page; then `next_cursor`).
    pub cursor: u32,
    /// Most detail lines wanted; 0 or more than the listener's maximum means that maximum.
    pub limit: u32,
}

/// One recharge of the card (FIG. 10H "Charge amount").
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatementRecharge {
    pub time_ms: u64,
    pub amount_won: u64,
    /// A `Funding` number.
    pub funding: u8,
}

/// One line of the detail list of internet payments (FIG. 10I).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementLine {
    pub time_ms: u64,
    /// 1 payment (SALE or CAPTURE), 2 refund by the merchant, 3 reversal.
    pub kind: u8,
    pub merchant_id: u64,
    /// The registered name of the merchant (associate), or `merchant {id}` when unregistered.
    pub merchant_name: String,
    pub amount_won: u64,
}

/// STATEMENT result. Money flows (recharges, payments, refunds, expiry) cover the range; the
/// card's state, balance, points and validity are as of the end of the range; the initial
/// value (issue and sale) is shown whatever the range.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementResult {
    /// `APPROVED`, `CARD_NOT_FOUND` (the index knows no such card), `PIN_FORMAT_INVALID`,
    /// `FORMAT_ERROR` (`to_ms` before `from_ms`) or `INTERNAL_ERROR` (the index is unreadable).
    pub code: u16,
    /// A `CardState` number.
    pub state: u8,
    pub face_value_won: u64,
    /// When the card was issued into stock (ms).
    pub issued_at_ms: u64,
    /// When a channel sold it (ms; 0: not sold through a channel).
    pub sold_at_ms: u64,
    pub price_won: u64,
    pub channel_id: u32,
    /// End of validity, seconds since the Unix epoch (0: not started).
    pub valid_until_s: u32,
    pub recharge_count: u32,
    pub recharged_won: u64,
    /// The first recharges of the range, at most the listener's `recharges_max`.
    pub recharges: Vec<StatementRecharge>,
    /// Money merchants refunded (REFUND).
    pub merchant_refunds_won: u64,
    /// Money credited back by reversals.
    pub reversals_won: u64,
    /// The balance paid out by CARD_REFUND.
    pub balance_refund_won: u64,
    /// `merchant_refunds_won + reversals_won + balance_refund_won`.
    pub refunded_won: u64,
    /// Value lost when the card expired.
    pub breakage_won: u64,
    /// Debits and credits of other kinds (payments in no known category, later message types).
    pub other_debits_won: u64,
    pub other_credits_won: u64,
    /// Payments (SALE and CAPTURE before refunds, and what sessions debited) per service
    /// category 1..=6.
    pub paid_by_category_won: [u64; 6],
    pub points: u32,
    pub balance_won: u64,
    /// Time of the card's last event within the range (ms).
    pub as_of_ms: u64,
    /// Detail lines in the range, all pages together.
    pub lines_total: u32,
    /// The `cursor` of the next page; 0 when this page is the last.
    pub next_cursor: u32,
    pub lines: Vec<StatementLine>,
}
