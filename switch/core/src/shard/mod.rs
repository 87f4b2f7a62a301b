//! The pure shard state machine: the cards one shard owns, their pending holds, and the op-id
//! records that make every mutating operation exactly-once. `apply(now_ms, &Command)` is the
//! only way state changes; it does no I/O, reads no clock, draws no randomness and never
//! blocks, so the server, recovery (journal replay), the model tests and the benches all run the
//! same code and get the same replies.
//!
//! Order of checks for every command with an op id: the op id gate (zero, too old, from the
//! future), then the op-id record (replay of the stored reply, OP_ID_REUSED on a different body,
//! REVERSED_BEFORE_ARRIVAL on a tombstone), then the deadline, then the business rules. Every
//! answer from the record step on is stored under the op id, declines included, so a retry can
//! never execute twice and never gets a different answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use pinswitch_protocol::{
    CardState, Category, NOTICE_ABORT, NOTICE_EXPIRED, NOTICE_LOW_BALANCE,
    NOTICE_REAUTHORIZE, OpStatus, PriceQuoteResult, ResultCode, session_digest,
};
use rkyv::{Archive, Deserialize, Serialize};

mod cards;
mod checks;
mod holds;
mod image;
mod op_window;
mod payments;

pub use self::op_window::msg_type_of;
use self::cards::Card;
use self::checks::Gate;
use self::holds::{Hold, HoldTable};
use self::op_window::{OpRecord, OpTable};
use crate::dense_map::DenseMap;
pub use crate::hasher::{KeyHasher, KeyHasherBuilder};
use crate::hasher::KeyMap;
use crate::config::{EngineConfig, Tariff};
use crate::types::{
    Applied, Body, Command, FINAL_UNIT_NONE, FINAL_UNIT_TERMINATE, ForeignCode, Ms, OpId,
    PasswordMac, PinHash, Reply, SessionGrant, SessionNoticeOut, SessionOpen, Totals,
    destination_digits,
};

/// Most session notices waiting for the server to take them (`Shard::take_notices`); past it
/// new ones are dropped (they are advisory: the call switch learns the same at its next report).
pub const NOTICES_PENDING_MAX: usize = 65_536;

/// A live per-second charging session (a call), keyed by the call switch's session id. Its
/// reservation is held on the card like a hold's remainder, so calls and payment holds draw
/// from one available balance.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Session {
    pin_hash: PinHash,
    /// The tariff as it was when the session started (a later table change leaves it alone);
    /// its prefix is dropped, only the rating fields matter here.
    tariff: Tariff,
    /// Seconds rated so far (the largest cumulative use reported).
    used_s: u64,
    /// What those seconds cost (`tariff.cost_won(used_s)`), debited or written off.
    rated_won: u64,
    /// Money actually debited (less than `rated_won` when a report was capped).
    debited_won: u64,
    /// Money reserved for the current grant.
    reserved_won: u64,
    /// The call switch that owns it (SESSION_AUDIT).
    owner_id: u32,
    /// The last request number applied (START: 0).
    seq: u32,
    /// When it started, in local seconds (UTC plus the tariff offset then): the time-of-day
    /// bands rate it from there.
    local_start_s: u64,
    /// Engine time of the last START or report.
    last_report_ms: Ms,
    /// Live: when it expires for silence (last report + twice the validity time). Expired:
    /// when it was expired.
    expires_at_ms: Ms,
}

impl Session {
    fn cost_won(&self, used_s: u64) -> u64 {
        self.tariff.cost_from_won(self.local_start_s, used_s)
    }
}

/// One shard's state. `Clone` is a consistent copy for a snapshot taken off the shard thread:
/// the big tables (cards, op-id records) are `DenseMap`s whose chunks are shared copy-on-write,
/// so the clone costs microseconds and the shard pays later, a chunk at a time, as it writes.
#[derive(Clone)]
pub struct Shard {
    /// The secret seed of the tables' hasher (kept in snapshots).
    hash_key: [u64; 2],
    shard_id: u16,
    shard_count: u16,
    config: EngineConfig,
    /// The engine's clock: the largest `now_ms` it was given (it never runs backwards).
    now_ms: Ms,
    /// Counter behind approval codes (deterministic; codes are six digits, 100000..=999999).
    approvals: u32,
    totals: Totals,
    cards: DenseMap<Card>,
    /// Pending holds, by hold id, card and expiry.
    holds: HoldTable,
    ops: OpTable,
    /// Foreign PINs not yet converted, per foreign product, in import order (a conversion takes
    /// the oldest). Only the PINs routed to this shard: imports spread over shards by the hash
    /// of the code, and a conversion draws from the card's shard.
    foreign_pools: BTreeMap<u32, VecDeque<ForeignCode>>,
    /// Every foreign PIN ever imported here, by the front end's hash of its code, with its
    /// product: a code imported twice is refused.
    foreign_known: KeyMap<u32>,
    /// The PIN each approved conversion handed out, by the conversion's op id: a retry of the
    /// conversion must hand out the same PIN, long after its op-id record may have gone.
    foreign_conversions: KeyMap<ForeignCode>,
    /// Gift cards sold and not yet claimed: the recipient reference the sale named (kept apart
    /// from the 64-byte card: few cards are gifts, and the entry goes at the claim).
    gift_recipients: KeyMap<u64>,
    /// Live charging sessions by session id.
    sessions: KeyMap<Session>,
    /// Live sessions by silence deadline (derived from `sessions`).
    session_deadlines: BTreeSet<(Ms, u128)>,
    /// Live sessions by card (derived from `sessions`): notices go to a card's sessions.
    card_sessions: BTreeSet<(PinHash, u128)>,
    /// Sessions expired for silence, kept so a late report is still charged (at most
    /// `expired_sessions_max`; `expired_order` says which goes first).
    expired_sessions: KeyMap<Session>,
    /// (expired at, session id), oldest first; an entry whose session has since been ended (or
    /// expired again later) is skipped.
    expired_order: VecDeque<(Ms, u128)>,
    /// Notices raised by the commands applied since the server last took them (not state:
    /// never in a snapshot, and replay's are dropped).
    notices: Vec<SessionNoticeOut>,
}

impl Shard {
    pub fn new(shard_id: u16, shard_count: u16, config: EngineConfig) -> Shard {
        Shard::with_hash_key(shard_id, shard_count, config, [0, 0])
    }

    /// A shard whose tables are seeded with a secret (see `KeyHasherBuilder`).
    pub fn with_hash_key(shard_id: u16, shard_count: u16, config: EngineConfig, hash_key: [u64; 2]) -> Shard {
        assert!(shard_count > 0 && shard_id < shard_count, "shard {shard_id} of {shard_count}");
        let hasher = KeyHasherBuilder { key: hash_key };
        Shard {
            hash_key,
            shard_id,
            shard_count,
            config,
            now_ms: 0,
            approvals: 0,
            totals: Totals::default(),
            cards: DenseMap::with_hasher(hasher),
            holds: HoldTable::new(hasher),
            ops: OpTable::new(hasher),
            foreign_pools: BTreeMap::new(),
            foreign_known: KeyMap::with_hasher(hasher),
            foreign_conversions: KeyMap::with_hasher(hasher),
            gift_recipients: KeyMap::with_hasher(hasher),
            sessions: KeyMap::with_hasher(hasher),
            session_deadlines: BTreeSet::new(),
            card_sessions: BTreeSet::new(),
            expired_sessions: KeyMap::with_hasher(hasher),
            expired_order: VecDeque::new(),
            notices: Vec::new(),
        }
    }

    pub fn shard_id(&self) -> u16 {
        self.shard_id
    }

    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn card_count(&self) -> usize {
        self.cards.len()
    }

    /// Every card's PIN hash, in table order (reconciliation names cards only the engine has).
    pub fn card_hashes(&self) -> impl Iterator<Item = PinHash> + '_ {
        self.cards.iter().map(|(pin_hash, _)| *pin_hash)
    }

    /// Live charging sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The service category of a live session, or of one expired and still remembered.
    pub fn session_category(&self, session_id: u128) -> Option<u8> {
        self.sessions.get(&session_id).or_else(|| self.expired_sessions.get(&session_id)).map(|session| session.tariff.category)
    }

    /// Op-id records currently kept.
    pub fn op_count(&self) -> usize {
        self.ops.len()
    }

    pub fn now_ms(&self) -> Ms {
        self.now_ms
    }

    /// When the earliest pending hold or silent session expires (the server ticks the engine
    /// then).
    pub fn next_expiry_ms(&self) -> Option<Ms> {
        let hold_ms = self.holds.next_expiry_ms();
        let session_ms = self.session_deadlines.first().map(|(expires_at_ms, _)| *expires_at_ms);
        match (hold_ms, session_ms) {
            (Some(hold_ms), Some(session_ms)) => Some(hold_ms.min(session_ms)),
            (hold_ms, session_ms) => hold_ms.or(session_ms),
        }
    }

    /// Takes the session notices raised since the last call (the server pushes them once the
    /// commands that raised them are durable; recovery drops replay's).
    pub fn take_notices(&mut self) -> Vec<SessionNoticeOut> {
        std::mem::take(&mut self.notices)
    }

    /// Sessions expired for silence and still remembered for a late report.
    pub fn expired_session_count(&self) -> usize {
        self.expired_sessions.len()
    }

    /// The sessions that a command applied at `now_ms` would expire for silence, with their
    /// cards and reservations (the exporter posts the releases). Read-only.
    pub fn sessions_expiring(&self, now_ms: Ms) -> Vec<(u128, PinHash, u64)> {
        let now_ms = now_ms.max(self.now_ms);
        self.session_deadlines
            .iter()
            .take_while(|(expires_at_ms, _)| *expires_at_ms <= now_ms)
            .map(|(_, session_id)| {
                let session = &self.sessions[session_id];
                (*session_id, session.pin_hash, session.reserved_won)
            })
            .collect()
    }

    /// A live session's card and reservation.
    pub fn session_reservation(&self, session_id: u128) -> Option<(PinHash, u64)> {
        self.sessions.get(&session_id).map(|session| (session.pin_hash, session.reserved_won))
    }

    /// SESSION_AUDIT: how many live sessions `owner_id` has here, and their `session_digest`.
    pub fn owner_sessions(&self, owner_id: u32) -> (u32, u128) {
        let ids: Vec<u128> =
            self.sessions.iter().filter(|(_, session)| session.owner_id == owner_id).map(|(session_id, _)| *session_id).collect();
        (u32::try_from(ids.len()).unwrap_or(u32::MAX), session_digest(ids))
    }

    /// SESSION_AUDIT: the live sessions of `owner_id` not in `live` and silent since
    /// `silent_since_ms` (the caller journals a `SessionsClose` for them).
    pub fn session_orphans(&self, owner_id: u32, live: &std::collections::HashSet<u128>, silent_since_ms: Ms) -> Vec<u128> {
        let mut orphans: Vec<u128> = self
            .sessions
            .iter()
            .filter(|(session_id, session)| {
                session.owner_id == owner_id && session.last_report_ms <= silent_since_ms && !live.contains(session_id)
            })
            .map(|(session_id, _)| *session_id)
            .collect();
        orphans.sort_unstable();
        orphans
    }

    /// PRICE_QUOTE: what a call of `duration_s` starting at `now_ms` and `units` events would
    /// cost by the tariff of `category` and `destination`, and with a card, the seconds its
    /// available balance buys. Read-only.
    pub fn quote(&self, now_ms: Ms, pin_hash: Option<PinHash>, category: u8, destination: u64, duration_s: u32, units: u32) -> PriceQuoteResult {
        let refused = |code: ResultCode| PriceQuoteResult { code: code.as_u16(), ..PriceQuoteResult::default() };
        if Category::from_u8(category).is_none() {
            return refused(ResultCode::CategoryInvalid);
        }
        let (digits, digits_len) = destination_digits(destination);
        if digits_len == 0 {
            return refused(ResultCode::DestinationInvalid);
        }
        let Some(tariff) = self.config.tariff_for(category, &digits[..digits_len]) else {
            return refused(ResultCode::TariffNotFound);
        };
        let now_ms = now_ms.max(self.now_ms);
        let local_start_s = self.local_s(now_ms);
        let mut view = PriceQuoteResult {
            code: ResultCode::Approved.as_u16(),
            tariff_id: tariff.tariff_id,
            connect_fee_won: tariff.connect_fee_won,
            rate_won: tariff.rate_at(local_start_s),
            increment_s: tariff.increment_s,
            first_increment_s: tariff.first_increment_s,
            event_won: tariff.event_won,
            duration_cost_won: tariff.cost_from_won(local_start_s, u64::from(duration_s)),
            event_cost_won: tariff.event_won.saturating_mul(u64::from(units)),
            available_won: 0,
            affordable_s: 0,
        };
        if let Some(pin_hash) = pin_hash {
            let Some(card) = self.card(now_ms, pin_hash) else {
                return refused(ResultCode::CardNotFound);
            };
            view.available_won = card.available_won;
            if card.state == CardState::Active {
                let (affordable_s, _, _) =
                    grant(tariff, local_start_s, 0, self.config.session_grant_max_s, card.available_won);
                view.affordable_s = affordable_s;
            }
        }
        view
    }

    /// Local time (seconds) for the time-of-day bands.
    fn local_s(&self, now_ms: Ms) -> u64 {
        (now_ms / 1000).saturating_add_signed(i64::from(self.config.tariff_utc_offset_s))
    }

    /// Applies one command at server time `now_ms`. `changed` is true exactly when the state
    /// changed (the server journals the command then; replay must see the same reply).
    pub fn apply(&mut self, now_ms: Ms, command: &Command) -> Applied {
        let clock_before_ms = self.now_ms;
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        let expired = self.expire_holds(now_ms) + self.expire_sessions(now_ms);
        let applied = match &command.body {
            Body::Tick => Applied { reply: Reply::code(ResultCode::Approved), changed: expired > 0 },
            Body::Configure(config) => match config.validate() {
                Ok(()) => {
                    self.config = EngineConfig::clone(config);
                    // A lower bound on remembered expired sessions applies at once.
                    self.trim_expired_sessions();
                    Applied { reply: Reply::code(ResultCode::Approved), changed: true }
                }
                Err(_) => Applied { reply: Reply::code(ResultCode::FormatError), changed: expired > 0 },
            },
            Body::SessionsClose { owner_id, silent_since_ms, session_ids } => {
                let closed = self.close_orphans(*owner_id, *silent_since_ms, session_ids);
                let mut reply = Reply::code(ResultCode::Approved);
                reply.amount_won = closed as u64;
                Applied { reply, changed: closed > 0 || expired > 0 }
            }
            body => {
                let applied = self.apply_op(now_ms, command.op_id, command.deadline_at_ms, body);
                Applied { reply: applied.reply, changed: applied.changed || expired > 0 }
            }
        };
        if !applied.changed {
            // Only journaled commands may move the clock: replay sees only those, and a later
            // command journaled with an earlier wall-clock time must compute the same expiry.
            self.now_ms = clock_before_ms;
        }
        self.assert_conservation();
        applied
    }

    fn apply_op(&mut self, now_ms: Ms, op_id: OpId, deadline_at_ms: Ms, body: &Body) -> Applied {
        // Time alone may have made a generation droppable (e.g. while the table was full).
        let pruned = self.prune_ops();
        match self.gate(now_ms, op_id, deadline_at_ms, body) {
            Gate::Answer { reply, record } => {
                if record {
                    self.record(op_id, body.clone(), reply, OpStatus::Completed, 0);
                }
                Applied { reply, changed: record || pruned }
            }
            Gate::Execute => {
                if let Body::ForeignImport { foreign_hash, product_id, code } = body {
                    let outcome = self.foreign_import(*foreign_hash, *product_id, *code);
                    self.record(op_id, body.clone(), outcome.reply, outcome.status, outcome.debited_won);
                    return Applied { reply: outcome.reply, changed: true };
                }
                let pin_hash = body.pin_hash().expect("operations name a card");
                // Validity is enforced lazily, by the first operation that touches the card after
                // its end (time is an argument; this is the same in replay).
                if !matches!(body, Body::Issue { .. }) {
                    self.settle_expiry(now_ms, pin_hash);
                }
                // Low-balance notices: only commands that can lower what a card has available,
                // and only while the shard has live sessions or one may start (none: no lookups
                // on the hot path).
                let calls_possible = !self.sessions.is_empty() || matches!(body, Body::SessionStart(_));
                let watch_won = if calls_possible { self.config.low_balance_warn_won } else { 0 };
                let available_before_won = match body {
                    Body::Authorize { .. }
                    | Body::Sale { .. }
                    | Body::ForeignConvert { .. }
                    | Body::SessionStart(_)
                    | Body::SessionUpdate { .. }
                    | Body::EventCharge { .. }
                        if watch_won > 0 =>
                    {
                        self.cards.get(&pin_hash).map(Card::available_won)
                    }
                    _ => None,
                };
                let outcome = match body {
                    Body::Issue { face_value_won, .. } => {
                        if self.cards.contains_key(&pin_hash) {
                            // The drawn PIN exists: not recorded, so the server draws another
                            // PIN under the same op id.
                            return Applied { reply: Reply::code(ResultCode::RetryLater), changed: pruned };
                        }
                        self.issue(pin_hash, *face_value_won)
                    }
                    Body::Activate { password_mac, .. } => self.activate(pin_hash, *password_mac),
                    Body::Claim { password_mac, gift_recipient_ref, password_hint, .. } => {
                        self.claim(pin_hash, *password_mac, *gift_recipient_ref, *password_hint)
                    }
                    Body::Load { amount_won, funding, .. } => self.load(pin_hash, *amount_won, *funding),
                    Body::Sell { channel_id, price_won, payment_means, gift_recipient_ref, .. } => {
                        self.sell(pin_hash, *channel_id, *price_won, *payment_means, *gift_recipient_ref)
                    }
                    Body::Block { reason, .. } => self.block(pin_hash, *reason),
                    Body::Unblock { .. } => self.unblock(pin_hash),
                    Body::Register { holder_ref, verified_name, .. } => self.register(pin_hash, *holder_ref, *verified_name),
                    Body::Consign { partner_id, commission_per_mille, .. } => {
                        self.consign(pin_hash, *partner_id, *commission_per_mille)
                    }
                    Body::BalanceRefund { payout_account_ref, .. } => self.balance_refund(pin_hash, *payout_account_ref),
                    Body::Authorize { password_mac, amount_won, category, hold_ttl_s, .. } => {
                        self.authorize(now_ms, op_id, pin_hash, *password_mac, *amount_won, *category, *hold_ttl_s)
                    }
                    Body::Sale { password_mac, amount_won, category, .. } => {
                        self.sale(pin_hash, *password_mac, *amount_won, *category)
                    }
                    Body::Capture { hold_id, amount_won, final_capture, .. } => {
                        self.capture(pin_hash, *hold_id, *amount_won, *final_capture)
                    }
                    Body::Void { hold_id, .. } => self.void(pin_hash, *hold_id),
                    Body::Reverse { original_op_id, .. } => self.reverse(op_id, pin_hash, *original_op_id),
                    Body::Refund { original_op_id, amount_won, .. } => {
                        self.refund(pin_hash, *original_op_id, *amount_won)
                    }
                    Body::ForeignConvert { password_mac, product_id, .. } => {
                        self.foreign_convert(op_id, pin_hash, *password_mac, *product_id)
                    }
                    Body::SessionStart(open) => self.session_start(now_ms, open),
                    Body::SessionUpdate { session_id, seq, used_total_s, requested_s, .. } => {
                        self.session_report(now_ms, pin_hash, *session_id, *seq, *used_total_s, Some(*requested_s))
                    }
                    Body::SessionEnd { session_id, seq, used_total_s, .. } => {
                        self.session_report(now_ms, pin_hash, *session_id, *seq, *used_total_s, None)
                    }
                    Body::EventCharge { password_mac, destination, units, category, .. } => {
                        self.event_charge(pin_hash, *password_mac, *destination, *units, *category)
                    }
                    Body::ForeignImport { .. } => unreachable!("handled above"),
                    Body::Tick | Body::Configure(_) | Body::SessionsClose { .. } => unreachable!("handled by apply"),
                };
                // (Matched on the body first: decoding a reply's code is a table scan, too much
                // for every SALE.)
                let notice = match body {
                    Body::Load { .. } | Body::Unblock { .. } => Some(NOTICE_REAUTHORIZE),
                    Body::Block { .. } => Some(NOTICE_ABORT),
                    _ => None,
                };
                if let Some(kind) = notice.filter(|_| outcome.reply.result_code().is_success()) {
                    self.notify_card(pin_hash, kind);
                }
                if let Some(before_won) = available_before_won {
                    let after_won = self.cards.get(&pin_hash).map_or(before_won, Card::available_won);
                    if before_won >= watch_won && after_won < watch_won {
                        self.notify_card(pin_hash, NOTICE_LOW_BALANCE);
                    }
                }
                self.record(op_id, body.clone(), outcome.reply, outcome.status, outcome.debited_won);
                Applied { reply: outcome.reply, changed: true }
            }
        }
    }

    fn next_approval_code(&mut self) -> u32 {
        // Six digits, like an ISO 8583 authorization id response (field 38).
        self.approvals = (self.approvals + 1) % 900_000;
        100_000 + self.approvals
    }

    /// A reply carrying the card's balances.
    fn card_reply(&self, code: ResultCode, pin_hash: PinHash) -> Reply {
        let mut reply = Reply::code(code);
        if let Some(card) = self.cards.get(&pin_hash) {
            reply.balance_won = card.balance_won;
            reply.available_won = card.available_won();
        }
        reply
    }

    fn approved(&mut self, pin_hash: PinHash, amount_won: u64) -> Reply {
        let mut reply = self.card_reply(ResultCode::Approved, pin_hash);
        reply.approval_code = self.next_approval_code();
        reply.amount_won = amount_won;
        reply
    }

    fn declined(&self, code: ResultCode, pin_hash: PinHash) -> Outcome {
        Outcome::completed(self.card_reply(code, pin_hash))
    }

    /// The seconds a START or UPDATE asks for: 0 means the default grant; never past the maximum.
    fn requested_grant_s(&self, requested_s: u32) -> u32 {
        let requested_s = if requested_s == 0 { self.config.session_grant_default_s } else { requested_s };
        requested_s.min(self.config.session_grant_max_s)
    }

    /// SESSION_START: rates the call, reserves the money of the largest affordable grant (up to
    /// the request; the connect fee counts with the first second) from the available balance.
    fn session_start(&mut self, now_ms: Ms, open: &SessionOpen) -> Outcome {
        let SessionOpen { pin_hash, session_id, destination, requested_s, owner_id, password_mac, category } = *open;
        if session_id == 0 {
            return self.declined(ResultCode::FormatError, pin_hash);
        }
        let (card, digits, digits_len) = match self.service_checks(pin_hash, category, destination) {
            Ok(checked) => checked,
            Err(code) => return self.declined(code, pin_hash),
        };
        // An expired session's id stays taken while its late report may still come.
        if self.sessions.contains_key(&session_id) || self.expired_sessions.contains_key(&session_id) {
            return self.declined(ResultCode::SessionExists, pin_hash);
        }
        if card.sessions >= self.config.sessions_per_card_max {
            return self.declined(ResultCode::SessionLimitPerCard, pin_hash);
        }
        if self.sessions.len() >= self.config.sessions_per_shard_max as usize {
            return self.declined(ResultCode::SessionLimitPerShard, pin_hash);
        }
        let Some(tariff) = self.config.tariff_for(category, &digits[..digits_len]) else {
            return self.declined(ResultCode::TariffNotFound, pin_hash);
        };
        let tariff = Tariff { destination_prefix: String::new(), ..tariff.clone() };
        if let Err(code) = self.try_session_password(pin_hash, password_mac) {
            return self.declined(code, pin_hash);
        }
        let card = self.cards.get(&pin_hash).copied().expect("checked above");
        let requested_s = self.requested_grant_s(requested_s);
        let local_start_s = self.local_s(now_ms);
        let (granted_s, final_unit, reserve_won) = grant(&tariff, local_start_s, 0, requested_s, card.available_won());
        if granted_s == 0 {
            return self.declined(ResultCode::InsufficientFunds, pin_hash);
        }
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.held_won += reserve_won;
        card.sessions += 1;
        self.totals.held_won += u128::from(reserve_won);
        let tariff_id = tariff.tariff_id;
        let session = Session {
            pin_hash,
            tariff,
            used_s: 0,
            rated_won: 0,
            debited_won: 0,
            reserved_won: reserve_won,
            owner_id,
            seq: 0,
            local_start_s,
            last_report_ms: now_ms,
            expires_at_ms: self.silence_deadline_ms(now_ms),
        };
        self.session_deadlines.insert((session.expires_at_ms, session_id));
        self.card_sessions.insert((pin_hash, session_id));
        self.sessions.insert(session_id, session);
        let mut reply = self.approved(pin_hash, 0);
        let validity_s = self.config.session_validity_s;
        SessionGrant { granted_s, validity_s, tariff_id, final_unit }.pack_into(&mut reply);
        Outcome::completed(reply)
    }

    /// When a session reported at `now_ms` expires if it stays silent.
    fn silence_deadline_ms(&self, now_ms: Ms) -> Ms {
        now_ms.saturating_add(2 * 1000 * u64::from(self.config.session_validity_s))
    }

    /// SESSION_UPDATE (`requested_s` is `Some`) and SESSION_END (`None`): releases the session's
    /// reservation, debits the cumulative use reported beyond what was rated (capped at the
    /// available balance: the card never goes below zero), then reserves the next grant (UPDATE)
    /// or closes the session (END). A report lower than one already rated debits nothing. A
    /// report on a session expired for silence is charged the same way, gets no grant and
    /// answers SESSION_EXPIRED_CHARGED.
    fn session_report(
        &mut self,
        now_ms: Ms,
        pin_hash: PinHash,
        session_id: u128,
        seq: u32,
        used_total_s: u32,
        requested_s: Option<u32>,
    ) -> Outcome {
        let (mut session, expired) = match (self.sessions.get(&session_id), self.expired_sessions.get(&session_id)) {
            (Some(session), _) if session.pin_hash == pin_hash => (session.clone(), false),
            (None, Some(session)) if session.pin_hash == pin_hash => (session.clone(), true),
            _ => return self.declined(ResultCode::SessionNotFound, pin_hash),
        };
        if seq <= session.seq {
            return self.declined(ResultCode::SessionSequenceStale, pin_hash);
        }
        session.seq = seq;
        session.last_report_ms = now_ms;
        if !expired {
            self.session_deadlines.remove(&(session.expires_at_ms, session_id));
        }
        let card = self.cards.get_mut(&pin_hash).expect("a session's card exists");
        card.held_won -= session.reserved_won;
        self.totals.held_won -= u128::from(session.reserved_won);
        session.reserved_won = 0;
        let used_s = session.used_s.max(u64::from(used_total_s));
        let rated_won = session.cost_won(used_s);
        let due_won = rated_won.saturating_sub(session.rated_won);
        let debit_won = due_won.min(card.available_won());
        let capped = debit_won < due_won;
        card.balance_won -= debit_won;
        self.totals.debited_won += u128::from(debit_won);
        self.totals.balances_won -= u128::from(debit_won);
        session.used_s = used_s;
        session.rated_won = rated_won;
        session.debited_won += debit_won;
        let card = *card;
        let tariff_id = session.tariff.tariff_id;
        let mut grant_answer = SessionGrant { granted_s: 0, validity_s: 0, tariff_id, final_unit: FINAL_UNIT_NONE };
        if expired {
            // Charged; no grant. END forgets it; a later report may still heal more use.
            if requested_s.is_none() {
                self.expired_sessions.remove(&session_id);
            } else {
                self.expired_sessions.insert(session_id, session);
                grant_answer.final_unit = FINAL_UNIT_TERMINATE;
            }
            let mut reply = self.approved(pin_hash, debit_won);
            reply.code = ResultCode::SessionExpiredCharged.as_u16();
            grant_answer.pack_into(&mut reply);
            return Outcome { reply, status: OpStatus::Completed, debited_won: debit_won };
        }
        match requested_s {
            None => {
                self.sessions.remove(&session_id);
                self.card_sessions.remove(&(pin_hash, session_id));
                self.cards.get_mut(&pin_hash).expect("checked above").sessions -= 1;
            }
            Some(requested_s) => {
                // A blocked card, or one that could not pay for the use reported, gets no more.
                let (granted_s, final_unit, reserve_won) = if capped || card.state() != CardState::Active {
                    (0, FINAL_UNIT_TERMINATE, 0)
                } else {
                    grant(&session.tariff, session.local_start_s, used_s, self.requested_grant_s(requested_s), card.available_won())
                };
                let card = self.cards.get_mut(&pin_hash).expect("checked above");
                card.held_won += reserve_won;
                self.totals.held_won += u128::from(reserve_won);
                session.reserved_won = reserve_won;
                session.expires_at_ms = self.silence_deadline_ms(now_ms);
                self.session_deadlines.insert((session.expires_at_ms, session_id));
                self.sessions.insert(session_id, session);
                grant_answer = SessionGrant { granted_s, validity_s: self.config.session_validity_s, tariff_id, final_unit };
            }
        }
        let mut reply = self.approved(pin_hash, debit_won);
        if capped {
            reply.code = ResultCode::SessionUsageCapped.as_u16();
        }
        grant_answer.pack_into(&mut reply);
        Outcome { reply, status: OpStatus::Completed, debited_won: debit_won }
    }

    /// Ends a live session without a report (silence, an audit): its reservation goes back to
    /// the card; what it reported was charged already. Returns the session.
    fn close_session(&mut self, session_id: u128) -> Session {
        let mut session = self.sessions.remove(&session_id).expect("closing a live session");
        self.session_deadlines.remove(&(session.expires_at_ms, session_id));
        self.card_sessions.remove(&(session.pin_hash, session_id));
        let card = self.cards.get_mut(&session.pin_hash).expect("a session's card exists");
        card.held_won -= session.reserved_won;
        card.sessions -= 1;
        self.totals.held_won -= u128::from(session.reserved_won);
        session.reserved_won = 0;
        session
    }

    /// Expires every session silent past its deadline at `now_ms`; returns how many. Each is
    /// remembered (bounded by `expired_sessions_max`) so its late report is still charged.
    fn expire_sessions(&mut self, now_ms: Ms) -> usize {
        let mut expired = 0;
        while let Some(&(expires_at_ms, session_id)) = self.session_deadlines.first() {
            if expires_at_ms > now_ms {
                break;
            }
            let session = self.close_session(session_id);
            let available_won = self.cards.get(&session.pin_hash).map_or(0, Card::available_won);
            self.push_notice(SessionNoticeOut { session_id, kind: NOTICE_EXPIRED, available_won });
            self.expired_order.push_back((expires_at_ms, session_id));
            self.expired_sessions.insert(session_id, session);
            self.trim_expired_sessions();
            expired += 1;
        }
        // Entries of sessions ended since do not hold the order up forever.
        while let Some(&(expired_at_ms, oldest_id)) = self.expired_order.front() {
            if self.expired_sessions.get(&oldest_id).is_some_and(|oldest| oldest.expires_at_ms == expired_at_ms) {
                break;
            }
            self.expired_order.pop_front();
        }
        expired
    }

    /// Forgets the oldest expired sessions past `expired_sessions_max`.
    fn trim_expired_sessions(&mut self) {
        while self.expired_sessions.len() > self.config.expired_sessions_max as usize {
            let (expired_at_ms, oldest_id) = self.expired_order.pop_front().expect("the order lists every expired session");
            if self.expired_sessions.get(&oldest_id).is_some_and(|oldest| oldest.expires_at_ms == expired_at_ms) {
                self.expired_sessions.remove(&oldest_id);
            }
        }
    }

    /// SESSION_AUDIT's close: the listed sessions still live, of `owner_id`, silent since
    /// `silent_since_ms`. Returns how many were closed.
    fn close_orphans(&mut self, owner_id: u32, silent_since_ms: Ms, session_ids: &[u128]) -> usize {
        let mut closed = 0;
        for session_id in session_ids {
            let orphan = self
                .sessions
                .get(session_id)
                .is_some_and(|session| session.owner_id == owner_id && session.last_report_ms <= silent_since_ms);
            if orphan {
                self.close_session(*session_id);
                closed += 1;
            }
        }
        closed
    }

    /// Raises a notice for each live session of the card.
    fn notify_card(&mut self, pin_hash: PinHash, kind: u8) {
        let Some(card) = self.cards.get(&pin_hash) else { return };
        if card.sessions == 0 {
            return;
        }
        let available_won = card.available_won();
        let session_ids: Vec<u128> =
            self.card_sessions.range((pin_hash, 0)..=(pin_hash, u128::MAX)).map(|(_, session_id)| *session_id).collect();
        for session_id in session_ids {
            self.push_notice(SessionNoticeOut { session_id, kind, available_won });
        }
    }

    fn push_notice(&mut self, notice: SessionNoticeOut) {
        if self.notices.len() < NOTICES_PENDING_MAX {
            self.notices.push(notice);
        }
    }

    /// EVENT_CHARGE: `units` events at the tariff's event price, debited at once like a SALE
    /// (points included, so REFUND and REVERSE, which take points back, treat it like one).
    fn event_charge(&mut self, pin_hash: PinHash, password_mac: PasswordMac, destination: u64, units: u32, category: u8) -> Outcome {
        if units == 0 {
            return self.declined(ResultCode::UnitsInvalid, pin_hash);
        }
        let (card, digits, digits_len) = match self.service_checks(pin_hash, category, destination) {
            Ok(checked) => checked,
            Err(code) => return self.declined(code, pin_hash),
        };
        let Some(tariff) = self.config.tariff_for(category, &digits[..digits_len]) else {
            return self.declined(ResultCode::TariffNotFound, pin_hash);
        };
        if tariff.event_won == 0 {
            return self.declined(ResultCode::EventNotPriced, pin_hash);
        }
        let Some(amount_won) = tariff.event_won.checked_mul(u64::from(units)) else {
            return self.declined(ResultCode::AmountOverflow, pin_hash);
        };
        if let Err(code) = self.try_session_password(pin_hash, password_mac) {
            return self.declined(code, pin_hash);
        }
        if card.available_won() < amount_won {
            return self.declined(ResultCode::InsufficientFunds, pin_hash);
        }
        self.debit_now(pin_hash, amount_won)
    }

    /// FOREIGN_IMPORT: one more PIN in this shard's pool of the product.
    fn foreign_import(&mut self, foreign_hash: u128, product_id: u32, code: ForeignCode) -> Outcome {
        if self.config.foreign_product(product_id).is_none() {
            return Outcome::completed(Reply::code(ResultCode::ForeignProductUnknown));
        }
        if self.foreign_known.contains_key(&foreign_hash) {
            return Outcome::completed(Reply::code(ResultCode::ForeignPinExists));
        }
        self.foreign_known.insert(foreign_hash, product_id);
        let pool = self.foreign_pools.entry(product_id).or_default();
        pool.push_back(code);
        let mut reply = Reply::code(ResultCode::Approved);
        // The pool's size after the import: the operator sees stock per shard grow.
        reply.amount_won = pool.len() as u64;
        Outcome::completed(reply)
    }

    /// FOREIGN_CONVERT: the card pays the product's price and gets the oldest PIN of the pool.
    /// Checked like a payment for a telephone call (a foreign PIN is for calls abroad), so the
    /// product mix and the password rules apply; it earns no points (it is a conversion of
    /// value, not a purchase) and cannot be refunded or reversed (the PIN is handed out).
    fn foreign_convert(&mut self, op_id: OpId, pin_hash: PinHash, password_mac: PasswordMac, product_id: u32) -> Outcome {
        let Some(price_won) = self.config.foreign_product(product_id).map(|product| product.price_won) else {
            return self.declined(ResultCode::ForeignProductUnknown, pin_hash);
        };
        let card = match self.admit_payment(pin_hash, password_mac, price_won, Category::TelephoneCall as u8) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if card.available_won() < price_won {
            return self.declined(ResultCode::InsufficientFunds, pin_hash);
        }
        let Some(code) = self.foreign_pools.get_mut(&product_id).and_then(VecDeque::pop_front) else {
            return self.declined(ResultCode::ForeignPinUnavailable, pin_hash);
        };
        self.foreign_conversions.insert(op_id, code);
        self.cards.get_mut(&pin_hash).expect("checked above").balance_won -= price_won;
        self.totals.debited_won += u128::from(price_won);
        self.totals.balances_won -= u128::from(price_won);
        let reply = self.approved(pin_hash, price_won);
        Outcome { reply, status: OpStatus::Completed, debited_won: price_won }
    }

    /// The foreign PIN an approved FOREIGN_CONVERT handed out (also for its replays).
    pub fn foreign_code(&self, op_id: OpId) -> Option<ForeignCode> {
        self.foreign_conversions.get(&op_id).copied()
    }

    /// PINs of a foreign product left in this shard's pool.
    pub fn foreign_stock(&self, product_id: u32) -> usize {
        self.foreign_pools.get(&product_id).map_or(0, VecDeque::len)
    }

    fn assert_conservation(&self) {
        let totals = &self.totals;
        assert_eq!(
            totals.issued_won + totals.loaded_won + totals.refunded_won + totals.reversed_won,
            totals.balances_won + totals.debited_won + totals.paid_out_won + totals.breakage_won,
            "money is conserved on shard {}",
            self.shard_id
        );
        assert!(totals.held_won <= totals.balances_won, "holds never exceed balances");
    }

}

/// The largest grant (up to `requested_s`) whose money, beyond the `used_s` already rated, fits
/// in `budget_won`; whether it is the last one (not one second more would fit); and the money
/// to reserve for it. The cost is monotone in the seconds, so a binary search finds it.
fn grant(tariff: &Tariff, local_start_s: u64, used_s: u64, requested_s: u32, budget_won: u64) -> (u32, u8, u64) {
    let rated_won = tariff.cost_from_won(local_start_s, used_s);
    let extra_won = |more_s: u64| tariff.cost_from_won(local_start_s, used_s + more_s).saturating_sub(rated_won);
    let (mut low_s, mut high_s) = (0u64, u64::from(requested_s));
    while low_s < high_s {
        let middle_s = low_s + (high_s - low_s).div_ceil(2);
        if extra_won(middle_s) <= budget_won {
            low_s = middle_s;
        } else {
            high_s = middle_s - 1;
        }
    }
    let final_unit = if extra_won(low_s + 1) > budget_won { FINAL_UNIT_TERMINATE } else { FINAL_UNIT_NONE };
    (u32::try_from(low_s).expect("at most the request"), final_unit, extra_won(low_s))
}

/// What a business rule decided.
struct Outcome {
    reply: Reply,
    status: OpStatus,
    debited_won: u64,
}

impl Outcome {
    fn completed(reply: Reply) -> Outcome {
        Outcome { reply, status: OpStatus::Completed, debited_won: 0 }
    }
}

#[cfg(test)]
mod tests {
    /// Memory per card and per op-id record is a product figure (millions of each per shard):
    /// growing these structs must be a decision, not an accident.
    #[test]
    fn stored_structs_stay_small() {
        assert!(std::mem::size_of::<super::Card>() <= 64);
        assert!(std::mem::size_of::<super::OpRecord>() <= 112);
        assert!(std::mem::size_of::<crate::Body>() <= 48);
    }

    /// The table seed changes where op ids land, and a snapshot keeps the seed.
    #[test]
    fn the_table_hasher_is_seeded_and_the_seed_survives_a_snapshot() {
        use std::hash::BuildHasher;
        let (one, two) = (super::KeyHasherBuilder { key: [1, 2] }, super::KeyHasherBuilder { key: [3, 4] });
        let differing = (0..64u128).filter(|op_id| one.hash_one(op_id << 80 | 7) != two.hash_one(op_id << 80 | 7)).count();
        assert_eq!(differing, 64);
        let shard = super::Shard::with_hash_key(0, 1, crate::EngineConfig::test_min(), [5, 6]);
        let restored = super::Shard::from_snapshot_bytes(&shard.to_snapshot_bytes()).unwrap();
        assert_eq!(restored.hash_key, [5, 6]);
    }
}
