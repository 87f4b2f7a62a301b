//! The pure shard state machine: the cards one shard owns, their pending holds and charging
//! sessions, and the op-id records that make every mutating operation exactly-once.
//! `apply(now_ms, &Command)` is the only way state changes; it does no I/O, reads no clock, draws
//! no randomness and never blocks, so the server, recovery (journal replay), the model tests and
//! the benches all run the same code and get the same replies.
//!
//! `apply` takes every command through the same steps, in this order (this is the order of
//! checks, declared here once; `apply`, `Shard::gate` and the business rules follow it):
//! 1. expire: the holds and the silent sessions due at `now_ms` end first, and for an op the
//!    op-id generations due are dropped (time is an argument, so replay does the same);
//! 2. gate, for every command with an op id: the op id itself (zero: OP_ID_INVALID; at or before
//!    the window's floor or the evicted records' floor: OP_TOO_OLD; further ahead of the clock
//!    than the allowed skew: OP_ID_FROM_FUTURE), then its record (a tombstone:
//!    REVERSED_BEFORE_ARRIVAL; the same body: the stored reply, replayed; another body:
//!    OP_ID_REUSED naming the first differing field), then room to record it (RETRY_LATER), then
//!    the deadline (DEADLINE_EXCEEDED_NOT_EXECUTED);
//! 3. dispatch: the card's lazy expiry, then the business rule of the body (its own checks, in
//!    the order written there, the shared ones in `checks.rs`), then the notices to the card's
//!    calls;
//! 4. record: the answer is stored under the op id;
//! 5. assert: money is conserved.
//!
//! Every answer from the deadline on is stored under the op id, declines included, so a retry can
//! never execute twice and never gets a different answer. (One exception: a CARD_ISSUE whose drawn
//! PIN exists answers RETRY_LATER unrecorded, so the server draws again under the same op id.)
//! The commands without an op id (TICK, CONFIGURE, the audit's SESSIONS_CLOSE) skip steps 2 to 4.
//! OP_FENCE (`Body::Fence`, `Shard::fence` in checks.rs) names the op id it fences as its own:
//! it is answered from that op id's record, or records a tombstone under it, instead of steps
//! 2 to 4.
//!
//! What the steps do beyond the reply is recorded as it happens and returned in
//! `Applied::effects`: the holds and sessions step 1 expired, the card step 3 found expired (its
//! breakage), the sessions the audit closed, the foreign PIN a conversion (or its replay, from
//! step 2) handed out, the notices to the card's calls. They are derived, never journaled, so
//! replay makes the same ones again.
//!
//! The files, by job: `checks.rs` (the gate and the card checks the rules share), `op_window.rs`
//! (op-id records, their window, the retry comparison), `cards.rs` (a card's life),
//! `holds.rs` and `payments.rs` (the hold table; AUTHORIZE to REFUND), `sessions.rs` and
//! `charging.rs` (the session table and rating; calls, event charges, quotes, notices),
//! `foreign.rs` (foreign PIN pools), `image.rs` (snapshots and the invariant scan).

use std::hash::Hasher;

use pinswitch_protocol::{OpStatus, ResultCode};
use siphasher::sip::SipHasher24;

mod cards;
mod charging;
mod checks;
mod foreign;
mod holds;
mod image;
mod op_window;
mod payments;
mod sessions;

use self::cards::Card;
use self::checks::Gate;
use self::foreign::ForeignPools;
use self::holds::{Hold, HoldTable};
pub use self::op_window::msg_type_of;
use self::op_window::{OpRecord, OpTable};
use self::sessions::{Session, SessionTable};
use crate::config::EngineConfig;
use crate::config_record::{ConfigRecord, ConfigRecordAdded};
use crate::dense_map::DenseMap;
use crate::hasher::KeyMap;
pub use crate::hasher::{KeyHasher, KeyHasherBuilder};
use crate::types::{Applied, Body, Command, Effect, Ms, OpId, PinHash, Reply, Totals};

/// The engine format a shard with no history starts in: what the commands of a journal written
/// before formats were numbered mean (sequential approval codes). Recovery without a snapshot
/// starts here, and the journal's `Upgrade` records move it on.
pub const ENGINE_FORMAT_FIRST: u16 = 1;
/// The newest engine format this code runs: 2 draws approval codes from a keyed PRF; 3 keeps
/// no op-id record of an operation naming a card the shard does not hold (`may_record`).
pub const ENGINE_FORMAT_CURRENT: u16 = 3;
/// The snapshot image layout `to_snapshot_bytes` writes: 1 added the engine format and the
/// approval key to layout 0 (the images written before layouts were numbered), 2 the rules
/// added to the frozen record (`ConfigRecordAdded`), 3 the compact op-id records.
pub const SNAPSHOT_IMAGE_FORMAT: u32 = 3;

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
    /// What journaled commands mean (`ENGINE_FORMAT_FIRST..=ENGINE_FORMAT_CURRENT`).
    engine_format: u16,
    /// Counter behind approval codes (codes are six digits, 100000..=999999): the code itself
    /// in format 1, the input of the keyed PRF from format 2 on.
    approvals: u32,
    /// The secret key of approval codes from format 2 on (journaled in the `Upgrade` record).
    approval_key: [u64; 2],
    totals: Totals,
    cards: DenseMap<Card>,
    /// Pending holds, by hold id, card and expiry.
    holds: HoldTable,
    ops: OpTable,
    /// Foreign PINs: the pools, the codes ever imported, the code each conversion handed out.
    foreign: ForeignPools,
    /// Gift cards sold and not yet claimed: the recipient reference the sale named (kept apart
    /// from the 64-byte card: few cards are gifts, and the entry goes at the claim).
    gift_recipients: KeyMap<u64>,
    /// Charging sessions: live ones by id, silence deadline and card, and those expired for
    /// silence that a late report may still charge.
    sessions: SessionTable,
    /// The effects of the command being applied, handed out in its `Applied` (not state:
    /// always empty between commands).
    effects: Vec<Effect>,
}

impl Shard {
    pub fn new(shard_id: u16, shard_count: u16, config: EngineConfig) -> Shard {
        Shard::with_hash_key(shard_id, shard_count, config, [0, 0])
    }

    /// A shard whose tables are seeded with a secret (see `KeyHasherBuilder`), in the current
    /// engine format (its approval key derived from the table seed: tests and benches; the
    /// server starts from `first_format` and journals its upgrade).
    pub fn with_hash_key(
        shard_id: u16,
        shard_count: u16,
        config: EngineConfig,
        hash_key: [u64; 2],
    ) -> Shard {
        let mut shard = Shard::first_format(shard_id, shard_count, config, hash_key);
        shard.engine_format = ENGINE_FORMAT_CURRENT;
        let mut hasher = SipHasher24::new_with_keys(hash_key[0], hash_key[1]);
        hasher.write(b"pinswitch approval key for tests");
        let derived = hasher.finish();
        shard.approval_key = [derived, derived.rotate_left(32) ^ 0x5bd1_e995];
        shard
    }

    /// A shard with no history: format `ENGINE_FORMAT_FIRST`, where replay of a journal from its
    /// first record starts (recovery without a snapshot, the exporter's shadow engines).
    pub fn first_format(
        shard_id: u16,
        shard_count: u16,
        config: EngineConfig,
        hash_key: [u64; 2],
    ) -> Shard {
        assert!(shard_count > 0 && shard_id < shard_count, "shard {shard_id} of {shard_count}");
        let hasher = KeyHasherBuilder { key: hash_key };
        Shard {
            hash_key,
            shard_id,
            shard_count,
            config,
            now_ms: 0,
            engine_format: ENGINE_FORMAT_FIRST,
            approvals: 0,
            approval_key: [0, 0],
            totals: Totals::default(),
            cards: DenseMap::with_hasher(hasher),
            holds: HoldTable::new(hasher),
            ops: OpTable::new(hasher),
            foreign: ForeignPools::new(hasher),
            gift_recipients: KeyMap::with_hasher(hasher),
            sessions: SessionTable::new(hasher),
            effects: Vec::new(),
        }
    }

    /// What journaled commands mean to this shard (see `ENGINE_FORMAT_CURRENT`).
    pub fn engine_format(&self) -> u16 {
        self.engine_format
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
        let session_ms = self.sessions.next_deadline_ms();
        match (hold_ms, session_ms) {
            (Some(hold_ms), Some(session_ms)) => Some(hold_ms.min(session_ms)),
            (hold_ms, session_ms) => hold_ms.or(session_ms),
        }
    }

    /// Applies one command at server time `now_ms`, by the steps of the module doc: expire,
    /// gate, dispatch, record, assert. `changed` is true exactly when the state changed (the
    /// server journals the command then; replay must see the same reply). `effects` lists what
    /// the steps did beyond the reply, as they did it.
    pub fn apply(&mut self, now_ms: Ms, command: &Command) -> Applied {
        let clock_before_ms = self.now_ms;
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        let expired = self.expire_holds(now_ms) + self.expire_sessions(now_ms);
        let applied = match &command.body {
            Body::Tick => Applied::new(Reply::code(ResultCode::Approved), false),
            Body::Configure(record) => self.configure(record, &ConfigRecordAdded::default()),
            Body::ConfigureExtended(rules) => self.configure(&rules.record, &rules.added),
            Body::Upgrade { engine_format, approval_key } => {
                self.upgrade(*engine_format, *approval_key)
            }
            Body::SessionsClose { owner_id, silent_since_ms, session_ids } => {
                let closed = self.close_orphans(*owner_id, *silent_since_ms, session_ids);
                let mut reply = Reply::code(ResultCode::Approved);
                reply.amount_won = closed as u64;
                Applied::new(reply, closed > 0)
            }
            body => self.apply_op(now_ms, command.op_id, command.deadline_at_ms, body),
        };
        // (Taking an empty `Vec` moves no heap memory: the common command allocates nothing.)
        let effects = std::mem::take(&mut self.effects);
        let applied =
            Applied { reply: applied.reply, changed: applied.changed || expired > 0, effects };
        if !applied.changed {
            // Only journaled commands may move the clock: replay sees only those, and a later
            // command journaled with an earlier wall-clock time must compute the same expiry.
            self.now_ms = clock_before_ms;
        }
        self.assert_conservation();
        applied
    }

    /// CONFIGURE: new rules, if they are valid, from this command on. A record whose
    /// per-product vectors disagree in length is refused like any invalid rules.
    fn configure(&mut self, record: &ConfigRecord, added: &ConfigRecordAdded) -> Applied {
        let config = EngineConfig::from_records(record, added);
        match config.and_then(|config| config.validate().map(|()| config)) {
            Ok(config) => {
                self.config = config;
                // A lower bound on remembered expired sessions applies at once.
                self.sessions.trim_expired(self.config.expired_sessions_max as usize);
                Applied::new(Reply::code(ResultCode::Approved), true)
            }
            Err(_) => Applied::new(Reply::code(ResultCode::FormatError), false),
        }
    }

    /// UPGRADE: the engine format rises to `engine_format` (never falls; a format this code
    /// does not know is refused, so a journal from a newer release cannot run on old rules).
    fn upgrade(&mut self, engine_format: u16, approval_key: [u64; 2]) -> Applied {
        if engine_format <= self.engine_format || engine_format > ENGINE_FORMAT_CURRENT {
            return Applied::new(Reply::code(ResultCode::FormatError), false);
        }
        self.engine_format = engine_format;
        self.approval_key = approval_key;
        Applied::new(Reply::code(ResultCode::Approved), true)
    }

    /// A command with an op id: the gate, then the dispatch, then the record.
    fn apply_op(&mut self, now_ms: Ms, op_id: OpId, deadline_at_ms: Ms, body: &Body) -> Applied {
        // Time alone may have made a generation droppable (e.g. while the table was full).
        let pruned = self.prune_ops();
        if let Body::Fence { pin_hash } = body {
            let applied = self.fence(now_ms, op_id, *pin_hash);
            return Applied::new(applied.reply, applied.changed || pruned);
        }
        match self.gate(now_ms, op_id, deadline_at_ms, body) {
            Gate::Answer { reply, record } => {
                if record && self.may_record(body) {
                    self.record(op_id, body, reply, OpStatus::Completed, 0);
                }
                if let Body::ForeignConvert { .. } = body {
                    // A replay of an approved conversion hands out the PIN the first one did.
                    self.foreign_replayed(op_id, &reply);
                }
                return Applied::new(reply, (record && self.may_record(body)) || pruned);
            }
            Gate::Execute => {}
        }
        let Some(outcome) = self.dispatch(now_ms, op_id, body) else {
            // CARD_ISSUE drew a PIN that exists: not recorded, so the server draws another PIN
            // under the same op id.
            return Applied::new(Reply::code(ResultCode::RetryLater), pruned);
        };
        if outcome.reply.code == ResultCode::CardNotFound.as_u16() && !self.may_record(body) {
            // Nothing ran and nothing is kept (see `may_record`): a retry is answered the same.
            return Applied::new(outcome.reply, pruned);
        }
        self.record(op_id, body, outcome.reply, outcome.status, outcome.debited_won);
        Applied::new(outcome.reply, true)
    }

    /// Whether an op of `body` may take a place in the op-id window: not one that names a card
    /// this shard does not hold (CARD_NOT_FOUND, or a deadline passed before it ran). Such an
    /// op changes nothing, so answering a retry again gives the same answer, and junk on random
    /// PINs (a scanner, a flood, op ids dated ahead) can neither evict a real op's record nor
    /// hold a generation and refuse everyone RETRY_LATER. CARD_ISSUE (its card is new) and
    /// FOREIGN_IMPORT (it names no card) are always recorded.
    fn may_record(&self, body: &Body) -> bool {
        if self.engine_format < 3 {
            // Formats 1 and 2 recorded them (and journaled them): replayed as they ran.
            return true;
        }
        match body {
            Body::Issue { .. } | Body::ForeignImport { .. } => true,
            body => body.pin_hash().is_some_and(|pin_hash| self.has_card(pin_hash)),
        }
    }

    /// A new op past the gate: the card's lazy expiry, the business rule of the body, and the
    /// notices it raises to the card's calls. `None` when CARD_ISSUE drew a PIN that exists.
    fn dispatch(&mut self, now_ms: Ms, op_id: OpId, body: &Body) -> Option<Outcome> {
        if let Body::ForeignImport { foreign_hash, product_id, code } = body {
            // The one op that names no card.
            return Some(self.foreign_import(*foreign_hash, *product_id, *code));
        }
        let pin_hash = body.pin_hash().expect("operations name a card");
        // Validity is enforced lazily, by the first operation that touches the card after its
        // end (time is an argument; this is the same in replay).
        if !matches!(body, Body::Issue { .. }) {
            self.settle_expiry(now_ms, pin_hash);
        }
        let watch = self.low_balance_watch(body, pin_hash);
        let before = MoneyPair::of(self, pin_hash);
        let outcome = self.business_rule(now_ms, op_id, pin_hash, body)?;
        self.assert_card_pair(body, pin_hash, before);
        self.raise_card_notices(body, pin_hash, &outcome.reply, watch);
        Some(outcome)
    }

    /// The paired assertion of every op on a card, in release builds too: what the card's
    /// balance and holds moved by is exactly what the shard's totals moved by (the op touched
    /// no other card's money), and the card's holds stay within its balance. FOREIGN_CONVERT
    /// is the one op that moves money onto a second card (the PIN it hands out).
    fn assert_card_pair(&self, body: &Body, pin_hash: PinHash, before: MoneyPair) {
        let after = MoneyPair::of(self, pin_hash);
        assert!(after.card_held_won <= after.card_balance_won, "a card's holds within its balance");
        if let Some(card) = self.cards.get(&pin_hash) {
            // Held money is the holds' remainders plus the calls' reservations, nothing else.
            assert!(
                card.held_won == 0 || card.holds > 0 || card.sessions > 0,
                "a card holds money only for its holds and calls"
            );
        }
        if matches!(body, Body::ForeignConvert { .. }) {
            return;
        }
        // Wrapping differences: equal moves are equal modulo 2^128 whichever way money went.
        assert_eq!(
            after.card_balance_won.wrapping_sub(before.card_balance_won),
            after.balances_won.wrapping_sub(before.balances_won),
            "an op moves its own card's balance only (shard {})",
            self.shard_id
        );
        assert_eq!(
            after.card_held_won.wrapping_sub(before.card_held_won),
            after.held_won.wrapping_sub(before.held_won),
            "an op moves its own card's holds only (shard {})",
            self.shard_id
        );
    }

    /// The business rule of each body that names a card.
    fn business_rule(
        &mut self,
        now_ms: Ms,
        op_id: OpId,
        pin_hash: PinHash,
        body: &Body,
    ) -> Option<Outcome> {
        let outcome = match body {
            Body::Issue { face_value_won, .. } => {
                if self.cards.contains_key(&pin_hash) {
                    return None;
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
            Body::Register { holder_ref, verified_name, .. } => {
                self.register(pin_hash, *holder_ref, *verified_name)
            }
            Body::Consign { partner_id, commission_per_mille, .. } => {
                self.consign(pin_hash, *partner_id, *commission_per_mille)
            }
            Body::BalanceRefund { payout_account_ref, .. } => {
                self.balance_refund(pin_hash, *payout_account_ref)
            }
            Body::Authorize { password_mac, amount_won, category, hold_ttl_s, .. } => self
                .authorize(
                    now_ms,
                    op_id,
                    pin_hash,
                    *password_mac,
                    *amount_won,
                    *category,
                    *hold_ttl_s,
                ),
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
            Body::SessionUpdate { session_id, seq, used_total_s, requested_s, .. } => self
                .session_report(
                    now_ms,
                    pin_hash,
                    *session_id,
                    *seq,
                    *used_total_s,
                    Some(*requested_s),
                ),
            Body::SessionEnd { session_id, seq, used_total_s, .. } => {
                self.session_report(now_ms, pin_hash, *session_id, *seq, *used_total_s, None)
            }
            Body::EventCharge { password_mac, destination, units, category, .. } => {
                self.event_charge(pin_hash, *password_mac, *destination, *units, *category)
            }
            Body::ForeignImport { .. }
            | Body::Fence { .. }
            | Body::Tick
            | Body::Configure(_)
            | Body::ConfigureExtended(_)
            | Body::SessionsClose { .. }
            | Body::Upgrade { .. } => {
                unreachable!("names no card: handled before the dispatch")
            }
        };
        Some(outcome)
    }

    fn next_approval_code(&mut self) -> u32 {
        // Six digits, like an ISO 8583 authorization id response (field 38).
        if self.engine_format < 2 {
            // Format 1: sequential, which told anyone holding one code the next ones and the
            // shard's approval count. Kept so journals written then replay as they ran.
            self.approvals = (self.approvals + 1) % 900_000;
            return 100_000 + self.approvals;
        }
        // Format 2: a keyed PRF (SipHash-2-4) of the shard and a counter: unpredictable
        // without the key, the same at every replay. Codes may repeat, as in ISO 8583; the op
        // id, not the code, names the operation.
        self.approvals = self.approvals.wrapping_add(1);
        let mut hasher = SipHasher24::new_with_keys(self.approval_key[0], self.approval_key[1]);
        hasher.write_u16(self.shard_id);
        hasher.write_u32(self.approvals);
        let code = hasher.finish() % 900_000;
        100_000 + u32::try_from(code).expect("a remainder below 900000 fits a u32")
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

    /// The totals balance after every command, in release builds too: a bug that creates or
    /// loses money must stop the shard before its reply is journaled, not be replayed forever.
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

/// One card's balance and holds beside the shard's totals of both, taken around an op.
#[derive(Clone, Copy)]
struct MoneyPair {
    card_balance_won: u128,
    card_held_won: u128,
    balances_won: u128,
    held_won: u128,
}

impl MoneyPair {
    /// An absent card (before CARD_ISSUE) counts as zero.
    fn of(shard: &Shard, pin_hash: PinHash) -> MoneyPair {
        let (card_balance_won, card_held_won) = shard
            .cards
            .get(&pin_hash)
            .map_or((0, 0), |card| (u128::from(card.balance_won), u128::from(card.held_won)));
        MoneyPair {
            card_balance_won,
            card_held_won,
            balances_won: shard.totals.balances_won,
            held_won: shard.totals.held_won,
        }
    }
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
        assert!(std::mem::size_of::<super::OpRecord>() <= 64);
        assert!(std::mem::size_of::<crate::Body>() <= 48);
    }

    /// `Applied` crosses from the shard loop to every connection: its effects add one empty
    /// `Vec` (24 bytes, no heap) to the reply, not a list of inline effects.
    #[test]
    fn applied_stays_small() {
        assert!(std::mem::size_of::<crate::Effect>() <= 48);
        assert!(std::mem::size_of::<crate::Applied>() <= 72);
    }

    /// The table seed changes where op ids land, and a snapshot keeps the seed.
    #[test]
    fn the_table_hasher_is_seeded_and_the_seed_survives_a_snapshot() {
        use std::hash::BuildHasher;
        let (one, two) =
            (super::KeyHasherBuilder { key: [1, 2] }, super::KeyHasherBuilder { key: [3, 4] });
        let differing = (0..64u128)
            .filter(|op_id| one.hash_one(op_id << 80 | 7) != two.hash_one(op_id << 80 | 7))
            .count();
        assert_eq!(differing, 64);
        let shard = super::Shard::with_hash_key(0, 1, crate::EngineConfig::test_min(), [5, 6]);
        let restored = super::Shard::from_snapshot_bytes(&shard.to_snapshot_bytes()).unwrap();
        assert_eq!(restored.hash_key, [5, 6]);
    }
}
