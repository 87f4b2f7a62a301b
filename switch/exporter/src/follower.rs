//! One shard's follower: a shadow engine fed every journal record, and what the exporter must
//! remember beyond the engine (which merchant a hold or payment belongs to, pending holds with
//! their product, consignment commissions, the payout account of paid-out cards, and the card
//! sub-ledger: each card's value as the postings moved it, which the safeguarding reconciliation
//! compares card by card with the shadow engine's balances). For each record
//! it re-applies the command at its journaled time, requires the journaled reply (as recovery
//! does), and derives postings and facts from the command, the reply, the card before and after,
//! and the effects the engine reports beside the reply (holds expiring, sessions expired or closed
//! by the audit, a card expiring lazily into breakage). The postings of every record are checked
//! against the change of the engine's money totals before anything is kept.

use std::collections::{BTreeMap, BTreeSet};

use pinswitch_core::{
    Body, CardView, Effect, EngineConfig, JournalEntry, Ms, OpId, PinHash, Reply, Shard, State,
    Totals, decode_entry,
};
use pinswitch_protocol::{OpStatus, ResultCode};
use rkyv::{Archive, Deserialize, Serialize};

use crate::config::ExportConfig;
use crate::error::{ExportError, Result};
use crate::facts::{
    BreakageLine, ChannelSaleLine, Fact, ForeignLine, MerchantKind, MerchantLine, Origin,
    PayoutLine, RetentionLine,
};
use crate::ledger::{Account, Posting};

/// Transactions of at most this many won are kept 1 year, larger ones 5 years.
pub const SMALL_TRANSACTION_MAX_WON: u64 = 10_000;

/// A pending hold as the exporter tracks it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedHold {
    pub pin_hash: PinHash,
    pub face_value_won: u64,
    pub amount_won: u64,
    pub captured_won: u64,
    /// Kept in the exporter's state image; the engine's `Effect::HoldExpired` says when the
    /// hold expires, so nothing here orders by it.
    pub expires_at_ms: Ms,
}

/// An approved AUTHORIZE or SALE: whose money it is, and the commission charged on it so far.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payment {
    pub pin_hash: PinHash,
    pub merchant_id: u64,
    pub category: u8,
    pub rate_per_mille: u16,
    pub debited_won: u64,
    pub credited_won: u64,
    pub commission_won: u64,
    /// An EVENT_CHARGE: the issuer's own service revenue of `category`, no merchant.
    pub service: bool,
}

impl Payment {
    /// A merchant's payment (AUTHORIZE or SALE) as it opens: nothing debited or credited yet.
    fn merchant(pin_hash: PinHash, merchant_id: u64, category: u8, rate_per_mille: u16) -> Payment {
        Payment {
            pin_hash,
            merchant_id,
            category,
            rate_per_mille,
            debited_won: 0,
            credited_won: 0,
            commission_won: 0,
            service: false,
        }
    }

    /// Commission on what the merchant keeps: floor(net × rate / 1000), never negative.
    fn commission_due_won(&self) -> u64 {
        let net_won = self.debited_won.saturating_sub(self.credited_won);
        per_mille_of_won(net_won, self.rate_per_mille)
    }
}

/// `rate_per_mille` of `amount_won`, rounded down: a commission. Every rate is at most 1000
/// (the export configuration and the engine's CARD_CONSIGN refuse more), so the share is at
/// most the amount and fits its `u64`.
fn per_mille_of_won(amount_won: u64, rate_per_mille: u16) -> u64 {
    let share_won = u128::from(amount_won) * u128::from(rate_per_mille) / 1000;
    u64::try_from(share_won).expect("a rate of at most 1000 per mille takes at most the amount")
}

/// The follower's durable image (inside the exporter state). The shadow engine's snapshot is
/// stored beside it, in a file of its own (`Follower::shadow_snapshot`), so a checkpoint never
/// holds more than one shard's snapshot image in memory.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FollowerImage {
    pub shard_id: u16,
    /// The last journal seq applied (0: none).
    pub cursor_seq: u64,
    pub holds: BTreeMap<OpId, TrackedHold>,
    pub payments: BTreeMap<OpId, Payment>,
    /// Approved CAPTURE op id -> (hold id, card): a REFUND may name a capture.
    pub captures: BTreeMap<OpId, (OpId, PinHash)>,
    /// Consigned, unsold cards -> (partner, commission per mille).
    pub consignments: BTreeMap<PinHash, (u32, u16)>,
    /// Paid-out (closed) cards -> the account of their CARD_REFUND.
    pub payout_accounts: BTreeMap<PinHash, u64>,
    /// The card sub-ledger: every card ever posted -> its value (2000 + 2100 + 2200 postings).
    pub card_values: BTreeMap<PinHash, u64>,
}

/// Why a card's value in the sub-ledger and its balance in the shadow engine are not the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardFinding {
    /// The engine's balance differs.
    Differs { engine_won: u64 },
    /// The ledger posted to a card the engine does not hold.
    UnknownToEngine,
    /// The engine holds the card and the ledger never posted to it.
    NotPosted { engine_won: u64 },
    /// The card is past its validity and the engine has not expired it yet (no command touched
    /// it since), so its balance is not visible card by card; the engine's total says the
    /// difference lies among the cards of this kind.
    ExpiryPending,
}

/// A card the safeguarding reconciliation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardLine {
    pub shard: u16,
    pub card: PinHash,
    pub ledger_won: u64,
    pub finding: CardFinding,
}

/// The per-card comparison of one shard's sub-ledger with its shadow engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CardCheck {
    /// Cards in the sub-ledger.
    pub ledger_cards: u64,
    /// Cards the engine holds.
    pub engine_cards: u64,
    /// Cards the engine holds and the ledger never posted (counted: the engine lists no cards).
    pub unposted_engine_cards: u64,
    /// The cards involved in a difference, by card.
    pub lines: Vec<CardLine>,
}

pub struct Follower {
    shard_id: u16,
    cursor_seq: u64,
    shadow: Shard,
    holds: BTreeMap<OpId, TrackedHold>,
    tracked_held_won: u128,
    payments: BTreeMap<OpId, Payment>,
    captures: BTreeMap<OpId, (OpId, PinHash)>,
    consignments: BTreeMap<PinHash, (u32, u16)>,
    payout_accounts: BTreeMap<PinHash, u64>,
    card_values: BTreeMap<PinHash, u64>,
}

/// What one record produced.
#[derive(Debug, Default)]
pub struct Effects {
    /// The engine clock after the record (monotonic per shard): the record's time.
    pub time_ms: Ms,
    pub postings: Vec<Posting>,
    pub facts: Vec<Fact>,
}

impl Follower {
    /// A follower of a shard that starts from an empty journal under `config` (the switch's
    /// baseline rules; every change comes through a journaled `Configure` record).
    pub fn new(shard_id: u16, shard_count: u16, config: EngineConfig) -> Follower {
        Follower {
            shard_id,
            cursor_seq: 0,
            // The table seed only places entries in memory; replies do not depend on it. The
            // engine format starts where the switch's replay does: the journal upgrades it.
            shadow: Shard::first_format(shard_id, shard_count, config, [0, 0]),
            holds: BTreeMap::new(),
            tracked_held_won: 0,
            payments: BTreeMap::new(),
            captures: BTreeMap::new(),
            consignments: BTreeMap::new(),
            payout_accounts: BTreeMap::new(),
            card_values: BTreeMap::new(),
        }
    }

    /// The follower of `image` around the shadow engine restored from its snapshot bytes.
    /// `shadow_format` is the image format the shadow was written in (`shadow_snapshot`
    /// writes `SNAPSHOT_IMAGE_FORMAT`).
    pub fn from_image(
        image: FollowerImage,
        shadow_format: u32,
        shadow: &[u8],
    ) -> std::result::Result<Follower, String> {
        let shadow = Shard::from_snapshot_image(shadow_format, shadow)?;
        if shadow.shard_id() != image.shard_id {
            return Err(format!(
                "shadow of shard {} stored for shard {}",
                shadow.shard_id(),
                image.shard_id
            ));
        }
        if image.holds.values().any(|hold| hold.captured_won > hold.amount_won) {
            return Err("a tracked hold captured more than its amount".into());
        }
        let tracked_held_won =
            image.holds.values().map(|hold| u128::from(hold.amount_won - hold.captured_won)).sum();
        if tracked_held_won != shadow.totals().held_won {
            return Err("tracked holds disagree with the shadow's".into());
        }
        let card_value_won: u128 = image.card_values.values().map(|value| u128::from(*value)).sum();
        if card_value_won != shadow.totals().balances_won {
            return Err("the card sub-ledger disagrees with the shadow's card balances".into());
        }
        Ok(Follower {
            shard_id: image.shard_id,
            cursor_seq: image.cursor_seq,
            shadow,
            holds: image.holds,
            tracked_held_won,
            payments: image.payments,
            captures: image.captures,
            consignments: image.consignments,
            payout_accounts: image.payout_accounts,
            card_values: image.card_values,
        })
    }

    /// The image, with the maps moved out (no copy) for a checkpoint to serialize; `put_back`
    /// returns them. Between the two the follower must not apply records.
    pub fn take_image(&mut self) -> FollowerImage {
        FollowerImage {
            shard_id: self.shard_id,
            cursor_seq: self.cursor_seq,
            holds: std::mem::take(&mut self.holds),
            payments: std::mem::take(&mut self.payments),
            captures: std::mem::take(&mut self.captures),
            consignments: std::mem::take(&mut self.consignments),
            payout_accounts: std::mem::take(&mut self.payout_accounts),
            card_values: std::mem::take(&mut self.card_values),
        }
    }

    /// Returns the maps `take_image` moved out.
    pub fn put_back(&mut self, image: FollowerImage) {
        self.holds = image.holds;
        self.payments = image.payments;
        self.captures = image.captures;
        self.consignments = image.consignments;
        self.payout_accounts = image.payout_accounts;
        self.card_values = image.card_values;
    }

    /// The shadow engine's snapshot image (the switch's own snapshot format, image format
    /// `SNAPSHOT_IMAGE_FORMAT`).
    pub fn shadow_snapshot(&self) -> Vec<u8> {
        self.shadow.to_snapshot_bytes()
    }

    pub fn shard_id(&self) -> u16 {
        self.shard_id
    }

    pub fn cursor_seq(&self) -> u64 {
        self.cursor_seq
    }

    /// The shadow engine's clock (ms): the time of the last record applied.
    pub fn clock_ms(&self) -> Ms {
        self.shadow.now_ms()
    }

    pub fn totals(&self) -> Totals {
        self.shadow.totals()
    }

    pub fn shadow(&self) -> &Shard {
        &self.shadow
    }

    /// Drops what the engine can no longer refer to: payments and captures whose op records it
    /// forgot (a REFUND or REVERSE naming them is declined from now on) unless their hold is
    /// still pending, and payout accounts of cards no remembered payment can credit again.
    pub fn prune(&mut self) {
        let shadow = &self.shadow;
        let holds = &self.holds;
        self.payments.retain(|op_id, payment| {
            holds.contains_key(op_id)
                || shadow.op(payment.pin_hash, *op_id).status != OpStatus::Unknown
        });
        let payments = &self.payments;
        self.captures.retain(|op_id, (hold_id, pin_hash)| {
            payments.contains_key(hold_id)
                && shadow.op(*pin_hash, *op_id).status != OpStatus::Unknown
        });
        let live_cards: BTreeSet<PinHash> =
            self.payments.values().map(|payment| payment.pin_hash).collect();
        self.payout_accounts.retain(|pin_hash, _| live_cards.contains(pin_hash));
    }

    /// Applies journal record `seq` and returns its postings and facts (commission rates from
    /// `config`).
    pub fn apply(&mut self, seq: u64, payload: &[u8], config: &ExportConfig) -> Result<Effects> {
        if seq != self.cursor_seq + 1 {
            return Err(ExportError::Unbalanced {
                shard: self.shard_id,
                seq,
                what: format!("records must come in order: expected seq {}", self.cursor_seq + 1),
            });
        }
        let entry = decode_entry(payload).map_err(|reason| ExportError::Decode {
            shard: self.shard_id,
            seq,
            reason,
        })?;
        let effects = self.apply_entry(seq, &entry, config)?;
        self.cursor_seq = seq;
        Ok(effects)
    }

    fn apply_entry(
        &mut self,
        seq: u64,
        entry: &JournalEntry,
        config: &ExportConfig,
    ) -> Result<Effects> {
        let shard = self.shard_id;
        let unbalanced = |what: String| ExportError::Unbalanced { shard, seq, what };
        let body = &entry.command.body;
        let pin_hash = body.pin_hash();
        let clock_before_ms = self.shadow.now_ms();
        let totals_before = self.shadow.totals();
        let view_before = pin_hash.and_then(|pin| self.shadow.card(clock_before_ms, pin));
        // A session's category, read before SESSION_END removes it.
        let session_category = match body {
            Body::SessionStart(open) => open.category,
            _ => self.shadow.session_category(op_session_id(body)).unwrap_or(0),
        };
        let applied = self.shadow.apply(entry.now_ms, &entry.command);
        if applied.reply != entry.reply || !applied.changed {
            return Err(ExportError::Diverged {
                shard,
                seq,
                journaled: format!("{:?}", entry.reply),
                shadow: format!("{applied:?}"),
            });
        }
        let time_ms = self.shadow.now_ms();
        let view_after = pin_hash.and_then(|pin| self.shadow.card(time_ms, pin));
        let face_value_won = match (body, &view_after) {
            (Body::Issue { face_value_won, .. }, _) => *face_value_won,
            (_, Some(view)) => view.face_value_won,
            _ => 0,
        };
        let card = pin_hash.unwrap_or(0);
        let mut out = Out { card, ..Out::default() };
        // Holds and sessions the engine's clock or the audit ended, before the command ran.
        let released_won =
            self.post_releases(&applied.effects, time_ms, &mut out).map_err(unbalanced)?;
        let record = Record {
            origin: Origin { time_ms, shard, seq, op_id: entry.command.op_id },
            body,
            reply: entry.reply,
            card,
            face_value_won,
            view_before,
            view_after,
            session_category,
            totals_before,
            totals_after: self.shadow.totals(),
            released_won,
        };
        // A replayed reply executed nothing: it is journaled only when the same apply dropped an
        // op-id generation or expired something, and those moves come with their effects. Its
        // command's own money was posted with the original (posting it again would double it).
        let replayed = record.reply.replayed;
        let reversal_breakage_won = if replayed {
            0
        } else {
            self.post_body(&record, config, &mut out).map_err(unbalanced)?
        };
        self.post_expiry_breakage(&record, &applied.effects, reversal_breakage_won, &mut out)
            .map_err(unbalanced)?;

        out.check(&record.totals_before, &record.totals_after, self.tracked_held_won)
            .map_err(unbalanced)?;
        self.post_card_values(&out.card_moves).map_err(unbalanced)?;
        if replayed {
            return Ok(Effects { time_ms, postings: out.postings, facts: out.facts });
        }
        let reply = record.reply;
        let amount_won = if record.approved() { money_of(body, reply.amount_won) } else { 0 };
        let (kind, authorization) = record_kind(body);
        let years = if authorization || (1..=SMALL_TRANSACTION_MAX_WON).contains(&amount_won) {
            1
        } else {
            5
        };
        let origin = record.origin;
        out.facts.push(Fact::Retention(RetentionLine {
            origin,
            kind,
            code: reply.code,
            amount_won,
            years,
        }));
        Ok(Effects { time_ms, postings: out.postings, facts: out.facts })
    }

    /// Posts what the record's expiries released back to card value, from the engine's effects:
    /// holds past their expiry (by the exporter's tracked hold, whose product it names, and
    /// which must have held exactly that much), sessions silent past their deadline or closed by
    /// the audit. Returns the money released.
    fn post_releases(
        &mut self,
        effects: &[Effect],
        time_ms: Ms,
        out: &mut Out,
    ) -> std::result::Result<u128, String> {
        let mut released_total_won = 0u128;
        for effect in effects {
            match *effect {
                Effect::HoldExpired { hold_id, pin_hash, released_won } => {
                    let Some(hold) = self.holds.remove(&hold_id) else {
                        return Err(format!(
                            "expiry of hold {hold_id:032x} the exporter does not track"
                        ));
                    };
                    let tracked_won = hold.amount_won - hold.captured_won;
                    if hold.pin_hash != pin_hash || tracked_won != released_won {
                        let what =
                            format!("hold {hold_id:032x} expired releasing {released_won} won");
                        return Err(format!("{what}, tracked {tracked_won}"));
                    }
                    let liability = Account::CardLiability { face_value_won: hold.face_value_won };
                    out.post_for(pin_hash, Account::Holds, liability, released_won);
                    self.tracked_held_won -= u128::from(released_won);
                    released_total_won += u128::from(released_won);
                }
                Effect::SessionExpired { pin_hash, released_won, .. }
                | Effect::SessionClosed { pin_hash, released_won, .. } => {
                    let face_value_won =
                        self.shadow.card(time_ms, pin_hash).map_or(0, |view| view.face_value_won);
                    out.post_for(
                        pin_hash,
                        Account::Holds,
                        Account::CardLiability { face_value_won },
                        released_won,
                    );
                    self.tracked_held_won -= u128::from(released_won);
                    released_total_won += u128::from(released_won);
                }
                Effect::CardExpired { .. }
                | Effect::ForeignPinHandedOut { .. }
                | Effect::Notice(_) => {}
            }
        }
        Ok(released_total_won)
    }

    /// Posts what the command itself did, by its body; returns the breakage a reversal onto an
    /// expired card made (the rest of the record's breakage is the card's own expiry).
    fn post_body(
        &mut self,
        record: &Record,
        config: &ExportConfig,
        out: &mut Out,
    ) -> std::result::Result<u64, String> {
        let (card, face_value_won, reply) = (record.card, record.face_value_won, record.reply);
        let reversed_won =
            delta(record.totals_before.reversed_won, record.totals_after.reversed_won, "reversed")?;
        let approved = record.approved();
        match record.body {
            Body::Issue { .. } if approved => {
                out.post(
                    Account::CardStockControl,
                    Account::CardUnsold { face_value_won },
                    face_value_won,
                );
            }
            Body::Activate { .. } | Body::Claim { .. } if approved => {
                post_activation_unsold(record, out);
            }
            Body::Consign { partner_id, commission_per_mille, .. } if approved => {
                self.consignments.insert(card, (*partner_id, *commission_per_mille));
            }
            Body::Sell { channel_id, price_won, payment_means, gift_recipient_ref, .. }
                if approved =>
            {
                let sale = (*channel_id, *price_won, *payment_means, *gift_recipient_ref != 0);
                self.post_sale_of_card(record, sale, out)?;
            }
            Body::Load { funding, .. } if approved => {
                let liability = record.liability();
                out.post(Account::FundingClearing { means: *funding }, liability, reply.amount_won);
                out.facts.push(Fact::Load { means: *funding, amount_won: reply.amount_won });
            }
            Body::Authorize { merchant_id, category, .. } if approved => {
                let rate_per_mille = config.commission_per_mille(*merchant_id);
                let payment = Payment::merchant(card, *merchant_id, *category, rate_per_mille);
                self.post_authorization(record, payment, out);
            }
            Body::Sale { merchant_id, category, .. } if approved => {
                let rate_per_mille = config.commission_per_mille(*merchant_id);
                let payment = Payment::merchant(card, *merchant_id, *category, rate_per_mille);
                self.post_sale(record, payment, out)?;
            }
            Body::Capture { hold_id, .. } if approved => {
                self.post_capture(record, *hold_id, out)?
            }
            Body::Void { hold_id, .. } if approved => self.post_void(record, *hold_id, out)?,
            Body::Reverse { original_op_id, .. } if approved => {
                return self.post_reversal(record, *original_op_id, reversed_won, out);
            }
            Body::Refund { original_op_id, .. } if approved => {
                self.post_refund(record, *original_op_id, out)?;
            }
            Body::ForeignConvert { product_id, .. } if approved => {
                self.post_conversion(record, *product_id, config, out)?;
            }
            Body::EventCharge { category, .. } if approved => {
                self.post_event_charge(record, *category, out);
            }
            Body::SessionStart(_) | Body::SessionUpdate { .. } | Body::SessionEnd { .. }
                if approved
                    || reply.code == ResultCode::SessionUsageCapped.as_u16()
                    || reply.code == ResultCode::SessionExpiredCharged.as_u16() =>
            {
                self.post_session_report(record, out)?;
            }
            Body::BalanceRefund { payout_account_ref, .. } if approved => {
                out.post(record.liability(), Account::RefundsPayable, reply.amount_won);
                self.payout_accounts.insert(card, *payout_account_ref);
                out.facts.push(Fact::Payout(PayoutLine {
                    origin: record.origin,
                    account_ref: *payout_account_ref,
                    card,
                    amount_won: reply.amount_won,
                    after_close: false,
                }));
            }
            _ => {}
        }
        Ok(0)
    }

    /// AUTHORIZE: the authorized money goes from card value to holds, tracked as a hold of the
    /// card's product, and `payment` (as it opens) is remembered for its captures, reversal and
    /// refunds.
    fn post_authorization(&mut self, record: &Record, payment: Payment, out: &mut Out) {
        let (card, op_id, reply) = (record.card, record.origin.op_id, record.reply);
        out.post(record.liability(), Account::Holds, reply.amount_won);
        let hold = TrackedHold {
            pin_hash: card,
            face_value_won: record.face_value_won,
            amount_won: reply.amount_won,
            captured_won: 0,
            expires_at_ms: reply.hold_expires_at_ms,
        };
        self.holds.insert(op_id, hold);
        self.tracked_held_won += u128::from(reply.amount_won);
        self.payments.insert(op_id, payment);
    }

    /// SALE: the money goes from card value to the merchant at once, booked against
    /// `payment`, which it opens.
    fn post_sale(
        &mut self,
        record: &Record,
        payment: Payment,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let (op_id, amount_won) = (record.origin.op_id, record.reply.amount_won);
        let merchant_id = payment.merchant_id;
        self.payments.insert(op_id, payment);
        out.post(record.liability(), Account::MerchantPayable { merchant_id }, amount_won);
        self.merchant_line(out, record.origin, op_id, MerchantKind::Sale, amount_won)
    }

    /// VOID: the hold is released whole, which must be the amount the engine released.
    fn post_void(
        &mut self,
        record: &Record,
        hold_id: OpId,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let released_won = self.close_hold(hold_id, out);
        if released_won != record.reply.amount_won {
            return Err(format!(
                "void released {} won, tracked {released_won}",
                record.reply.amount_won
            ));
        }
        Ok(())
    }

    /// REFUND: money comes back to the card from the payment it names (directly or through one
    /// of its captures): from the merchant, or from service revenue for the issuer's own.
    fn post_refund(
        &mut self,
        record: &Record,
        original_op_id: OpId,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let (liability, amount_won) = (record.liability(), record.reply.amount_won);
        let payment_op_id =
            self.captures.get(&original_op_id).map_or(original_op_id, |(hold_id, _)| *hold_id);
        let payment = self.payment(payment_op_id)?;
        if payment.service {
            out.post(Account::ServiceRevenue { category: payment.category }, liability, amount_won);
            return Ok(());
        }
        out.post(
            Account::MerchantPayable { merchant_id: payment.merchant_id },
            liability,
            amount_won,
        );
        self.merchant_line(out, record.origin, payment_op_id, MerchantKind::Refund, amount_won)
    }

    /// EVENT_CHARGE: the issuer's own service (a phone information call): its revenue, no
    /// merchant; remembered as a service payment so refunds and reversals find it.
    fn post_event_charge(&mut self, record: &Record, category: u8, out: &mut Out) {
        let amount_won = record.reply.amount_won;
        let payment = Payment {
            pin_hash: record.card,
            merchant_id: 0,
            category,
            rate_per_mille: 0,
            debited_won: amount_won,
            credited_won: 0,
            commission_won: 0,
            service: true,
        };
        self.payments.insert(record.origin.op_id, payment);
        out.post(record.liability(), Account::ServiceRevenue { category }, amount_won);
    }

    /// CARD_SELL: the card's value becomes spendable, and the channel owes the price less the
    /// consignment commission (a discount or premium against the face value balances it).
    fn post_sale_of_card(
        &mut self,
        record: &Record,
        (channel_id, price_won, payment_means, gift): (u32, u64, u8, bool),
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let (card, face_value_won) = (record.card, record.face_value_won);
        let consignment =
            self.consignments.remove(&card).filter(|(partner_id, _)| *partner_id == channel_id);
        let commission_per_mille = consignment.map_or(0, |(_, rate)| rate);
        let commission_won = per_mille_of_won(price_won, commission_per_mille);
        out.post(Account::CardUnsold { face_value_won }, record.liability(), face_value_won);
        let mut debits =
            vec![(Account::ChannelReceivable { channel_id }, price_won - commission_won)];
        let mut credits = vec![(Account::CardStockControl, face_value_won)];
        debits.push((Account::DistributionCommission { partner_id: channel_id }, commission_won));
        if price_won < face_value_won {
            debits.push((Account::SalesDiscount, face_value_won - price_won));
        } else {
            credits.push((Account::SalesPremium, price_won - face_value_won));
        }
        out.entry(&debits, &credits)?;
        out.facts.push(Fact::ChannelSale(ChannelSaleLine {
            origin: record.origin,
            card,
            channel_id,
            face_value_won,
            price_won,
            payment_means,
            consigned: consignment.is_some(),
            commission_per_mille,
            commission_won,
            gift,
        }));
        Ok(())
    }

    /// CAPTURE: the captured money goes from the hold to the merchant; a hold the engine closed
    /// (a final capture, or nothing left) is closed here too.
    fn post_capture(
        &mut self,
        record: &Record,
        hold_id: OpId,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let captured_won = record.reply.amount_won;
        let Some(hold) = self.holds.get_mut(&hold_id) else {
            return Err(format!("capture of hold {hold_id:032x} the exporter does not track"));
        };
        hold.captured_won += captured_won;
        self.tracked_held_won -= u128::from(captured_won);
        let hold = *hold;
        let merchant_id = self.payment(hold_id)?.merchant_id;
        out.post(Account::Holds, Account::MerchantPayable { merchant_id }, captured_won);
        if !record
            .view_after
            .as_ref()
            .is_some_and(|view| view.holds.iter().any(|live| live.hold_id == hold_id))
        {
            self.close_hold(hold_id, out);
        }
        self.captures.insert(record.origin.op_id, (hold_id, hold.pin_hash));
        self.merchant_line(out, record.origin, hold_id, MerchantKind::Capture, captured_won)
    }

    /// REVERSE: a pending hold is released, debited money comes back to the card (or, on a
    /// closed card, to its payout account; on an expired one, to breakage). Returns that
    /// breakage.
    fn post_reversal(
        &mut self,
        record: &Record,
        original_op_id: OpId,
        reversed_won: u64,
        out: &mut Out,
    ) -> std::result::Result<u64, String> {
        let (card, reply, origin) = (record.card, record.reply, record.origin);
        let pending = self.holds.contains_key(&original_op_id);
        let released_won = if pending { self.close_hold(original_op_id, out) } else { 0 };
        if reversed_won + released_won != reply.amount_won {
            let amount_won = reply.amount_won;
            return Err(format!(
                "reversal of {amount_won} won: {reversed_won} credited + {released_won} released"
            ));
        }
        if reversed_won == 0 {
            return Ok(0);
        }
        let mut reversal_breakage_won = 0;
        let payment = self.payment(original_op_id)?;
        let payable = if payment.service {
            Account::ServiceRevenue { category: payment.category }
        } else {
            Account::MerchantPayable { merchant_id: payment.merchant_id }
        };
        match record.view_after.as_ref().map(|view| view.state) {
            Some(State::Closed) => {
                let Some(account_ref) = self.payout_accounts.get(&card).copied() else {
                    return Err("reversal onto a closed card without a known payout account".into());
                };
                out.post(payable, Account::RefundsPayable, reversed_won);
                out.facts.push(Fact::Payout(PayoutLine {
                    origin,
                    account_ref,
                    card,
                    amount_won: reversed_won,
                    after_close: true,
                }));
            }
            Some(State::Expired) => {
                out.post(payable, Account::BreakageRevenue, reversed_won);
                reversal_breakage_won = reversed_won;
                let face_value_won = record.face_value_won;
                out.facts.push(Fact::Breakage(BreakageLine {
                    origin,
                    card,
                    face_value_won,
                    amount_won: reversed_won,
                    after_expiry: true,
                }));
            }
            _ => out.post(payable, record.liability(), reversed_won),
        }
        if !payment.service {
            self.merchant_line(out, origin, original_op_id, MerchantKind::Reversal, reversed_won)?;
        }
        Ok(reversal_breakage_won)
    }

    /// FOREIGN_CONVERT: the price is what the foreign operator is owed for the PIN handed out,
    /// less the issuer's commission on it (configured per partner).
    fn post_conversion(
        &mut self,
        record: &Record,
        product_id: u32,
        config: &ExportConfig,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let Some(product) = self.shadow.config().foreign_product(product_id).cloned() else {
            return Err(format!(
                "conversion into foreign product {product_id}, which the catalogue does not hold"
            ));
        };
        let price_won = record.reply.amount_won;
        let rate_per_mille = config.foreign_commission_per_mille(product.partner_id);
        let commission_won = per_mille_of_won(price_won, rate_per_mille);
        let payable = Account::ForeignPartnerPayable { partner_id: product.partner_id };
        out.post(record.liability(), payable, price_won);
        out.post(payable, Account::CommissionRevenue, commission_won);
        out.facts.push(Fact::Foreign(ForeignLine {
            origin: record.origin,
            card: record.card,
            partner_id: product.partner_id,
            product_id,
            currency: product.currency,
            face_value_minor: product.face_value_minor,
            price_won,
            rate_per_mille,
            commission_won,
        }));
        Ok(())
    }

    /// SESSION_START, UPDATE and END: the reservation moves between card value and holds like a
    /// hold does (its change is the holds total's, less what the record's expiries released);
    /// what was debited is the issuer's service revenue for the session's category.
    fn post_session_report(
        &mut self,
        record: &Record,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let liability = record.liability();
        let (before, after) = (&record.totals_before, &record.totals_after);
        let reserved_change =
            (after.held_won + record.released_won) as i128 - before.held_won as i128;
        let reserved_won =
            u64::try_from(reserved_change.unsigned_abs()).map_err(|_| "reservation overflow")?;
        if reserved_change >= 0 {
            out.post(liability, Account::Holds, reserved_won);
            self.tracked_held_won += u128::from(reserved_won);
        } else {
            out.post(Account::Holds, liability, reserved_won);
            self.tracked_held_won -= u128::from(reserved_won);
        }
        out.post(
            liability,
            Account::ServiceRevenue { category: record.session_category },
            record.reply.amount_won,
        );
        Ok(())
    }

    /// A card past its validity expired when this command touched it: its balance is breakage.
    /// Posted from the engine's effect, which must account for the breakage total's whole move
    /// beyond the reversal's.
    fn post_expiry_breakage(
        &mut self,
        record: &Record,
        effects: &[Effect],
        reversal_breakage_won: u64,
        out: &mut Out,
    ) -> std::result::Result<(), String> {
        let breakage_won =
            delta(record.totals_before.breakage_won, record.totals_after.breakage_won, "breakage")?;
        let expiry_breakage_won = breakage_won
            .checked_sub(reversal_breakage_won)
            .ok_or_else(|| "breakage below the reversal's".to_string())?;
        let mut reported_won = 0u64;
        for effect in effects {
            let Effect::CardExpired { pin_hash, breakage_won } = *effect else { continue };
            reported_won = reported_won.checked_add(breakage_won).ok_or("breakage overflow")?;
            if breakage_won > 0 {
                let face_value_won = if pin_hash == record.card {
                    record.face_value_won
                } else {
                    self.shadow
                        .card(record.origin.time_ms, pin_hash)
                        .map_or(0, |view| view.face_value_won)
                };
                let liability = Account::CardLiability { face_value_won };
                out.post_for(pin_hash, liability, Account::BreakageRevenue, breakage_won);
                let (origin, amount_won) = (record.origin, breakage_won);
                let line = BreakageLine {
                    origin,
                    card: pin_hash,
                    face_value_won,
                    amount_won,
                    after_expiry: false,
                };
                out.facts.push(Fact::Breakage(line));
            }
        }
        if reported_won != expiry_breakage_won {
            let moved_won = expiry_breakage_won;
            return Err(format!(
                "card expiries report {reported_won} won of breakage, the totals moved {moved_won}"
            ));
        }
        Ok(())
    }

    /// Moves the card sub-ledger by a record's card-value postings (a card never below zero).
    fn post_card_values(&mut self, moves: &[(PinHash, i128)]) -> std::result::Result<(), String> {
        for (card, change) in moves {
            let value = self.card_values.entry(*card).or_insert(0);
            *value = u64::try_from(i128::from(*value) + change).map_err(|_| format!("card {card:032x}: its value would leave 0..=u64::MAX ({value} won moved by {change})"))?;
        }
        Ok(())
    }

    /// The card sub-ledger, to inject differences in tests.
    #[cfg(test)]
    pub(crate) fn card_values_mut(&mut self) -> &mut BTreeMap<PinHash, u64> {
        &mut self.card_values
    }

    /// The card sub-ledger's total (what the ledger's 2000 + 2100 + 2200 accounts hold for this
    /// shard's cards).
    pub fn card_value_won(&self) -> u128 {
        self.card_values.values().map(|value| u128::from(*value)).sum()
    }

    /// Compares every card of the sub-ledger with the shadow engine's balance for it (the
    /// balance includes what holds and sessions reserve, as card value in the ledger does).
    pub fn check_cards(&self) -> CardCheck {
        let now_ms = self.shadow.now_ms();
        let mut check = CardCheck {
            ledger_cards: self.card_values.len() as u64,
            engine_cards: self.shadow.card_count() as u64,
            ..CardCheck::default()
        };
        let mut known_cards = 0u64;
        let mut visible_engine_won = 0u128;
        let mut pending = Vec::new();
        let mut pending_ledger_won = 0u128;
        for (card, ledger_won) in &self.card_values {
            let line = |finding| CardLine {
                shard: self.shard_id,
                card: *card,
                ledger_won: *ledger_won,
                finding,
            };
            let Some(view) = self.shadow.card(now_ms, *card) else {
                check.lines.push(line(CardFinding::UnknownToEngine));
                continue;
            };
            known_cards += 1;
            let expiry_pending = view.state == State::Expired
                && view.valid_until_s != 0
                && now_ms / 1000 >= u64::from(view.valid_until_s);
            if expiry_pending && view.balance_won == 0 && *ledger_won != 0 {
                // The view shows the expiry the next touch will make; the engine still holds the
                // balance (and its totals count it).
                pending.push(line(CardFinding::ExpiryPending));
                pending_ledger_won += u128::from(*ledger_won);
                continue;
            }
            visible_engine_won += u128::from(view.balance_won);
            if view.balance_won != *ledger_won {
                check.lines.push(line(CardFinding::Differs { engine_won: view.balance_won }));
            }
        }
        check.unposted_engine_cards = check.engine_cards.saturating_sub(known_cards);
        if check.unposted_engine_cards > 0 {
            for card in
                self.shadow.card_hashes().filter(|card| !self.card_values.contains_key(card))
            {
                let engine_won = self.shadow.card(now_ms, card).map_or(0, |view| view.balance_won);
                visible_engine_won += u128::from(engine_won);
                check.lines.push(CardLine {
                    shard: self.shard_id,
                    card,
                    ledger_won: 0,
                    finding: CardFinding::NotPosted { engine_won },
                });
            }
        }
        // What the engine holds on the pending cards: its total less every visible balance
        // (cards it holds that the ledger never posted would be in there too).
        let pending_engine_won = self.shadow.totals().balances_won.checked_sub(visible_engine_won);
        if pending_engine_won != Some(pending_ledger_won) {
            check.lines.extend(pending);
            check.lines.sort_by_key(|line| line.card);
        }
        check
    }

    fn payment(&self, op_id: OpId) -> std::result::Result<Payment, String> {
        self.payments
            .get(&op_id)
            .copied()
            .ok_or_else(|| format!("payment {op_id:032x} the exporter does not track"))
    }

    /// Removes a tracked hold, posting the release of what was not captured; returns it.
    fn close_hold(&mut self, hold_id: OpId, out: &mut Out) -> u64 {
        let Some(hold) = self.holds.remove(&hold_id) else { return 0 };
        let released_won = hold.amount_won - hold.captured_won;
        self.tracked_held_won -= u128::from(released_won);
        out.post_for(
            hold.pin_hash,
            Account::Holds,
            Account::CardLiability { face_value_won: hold.face_value_won },
            released_won,
        );
        released_won
    }

    /// Books a debit (sale, capture) or credit back (refund, reversal) against a payment, with
    /// the change of its commission, and writes the statement line.
    fn merchant_line(
        &mut self,
        out: &mut Out,
        origin: Origin,
        payment_op_id: OpId,
        kind: MerchantKind,
        amount_won: u64,
    ) -> std::result::Result<(), String> {
        let payment = self
            .payments
            .get_mut(&payment_op_id)
            .ok_or_else(|| format!("payment {payment_op_id:032x} the exporter does not track"))?;
        if kind.is_debit() {
            payment.debited_won =
                payment.debited_won.checked_add(amount_won).ok_or("debited overflow")?;
        } else {
            payment.credited_won =
                payment.credited_won.checked_add(amount_won).ok_or("credited overflow")?;
        }
        let due_won = payment.commission_due_won();
        let payable = Account::MerchantPayable { merchant_id: payment.merchant_id };
        let commission_won = if due_won >= payment.commission_won {
            out.post(payable, Account::CommissionRevenue, due_won - payment.commission_won);
            i64::try_from(due_won - payment.commission_won).map_err(|_| "commission overflow")?
        } else {
            out.post(Account::CommissionRevenue, payable, payment.commission_won - due_won);
            -i64::try_from(payment.commission_won - due_won).map_err(|_| "commission overflow")?
        };
        payment.commission_won = due_won;
        out.facts.push(Fact::Merchant(MerchantLine {
            origin,
            kind,
            payment_op_id,
            merchant_id: payment.merchant_id,
            category: payment.category,
            card: payment.pin_hash,
            amount_won,
            commission_won,
            rate_per_mille: payment.rate_per_mille,
        }));
        Ok(())
    }

    /// The card view of a card on this shard at the shadow's clock.
    pub fn card(&self, pin_hash: PinHash) -> Option<CardView> {
        self.shadow.card(self.shadow.now_ms(), pin_hash)
    }
}

/// One journal record as the posting functions see it: the command, its reply, the record's
/// card before and after it, and the engine's totals around it.
struct Record<'a> {
    origin: Origin,
    body: &'a Body,
    reply: Reply,
    /// The command's card (0: none).
    card: PinHash,
    face_value_won: u64,
    view_before: Option<CardView>,
    view_after: Option<CardView>,
    /// The category of the session a session command names (read before the command).
    session_category: u8,
    totals_before: Totals,
    totals_after: Totals,
    /// What the record's expiries and audit closes released from holds to card value.
    released_won: u128,
}

impl Record<'_> {
    fn approved(&self) -> bool {
        self.reply.code == ResultCode::Approved.as_u16()
    }

    /// The spendable-value account of the record's card.
    fn liability(&self) -> Account {
        Account::CardLiability { face_value_won: self.face_value_won }
    }
}

/// Postings and facts being collected for one record.
#[derive(Default)]
struct Out {
    /// The record's card (0: none), which postings move unless they name another.
    card: PinHash,
    postings: Vec<Posting>,
    /// (card, change of its value) for every posting to a card-value account.
    card_moves: Vec<(PinHash, i128)>,
    facts: Vec<Fact>,
}

/// The accounts that together hold a card's value: unsold, spendable and held.
fn is_card_value(account: &Account) -> bool {
    matches!(account, Account::CardUnsold { .. } | Account::CardLiability { .. } | Account::Holds)
}

impl Out {
    /// A posting concerning the record's card.
    fn post(&mut self, debit: Account, credit: Account, amount_won: u64) {
        self.post_for(self.card, debit, credit, amount_won);
    }

    /// A posting concerning `card` (a hold expiring in another card's record).
    fn post_for(&mut self, card: PinHash, debit: Account, credit: Account, amount_won: u64) {
        if amount_won > 0 {
            let change = i128::from(is_card_value(&credit)) - i128::from(is_card_value(&debit));
            if change != 0 {
                self.card_moves.push((card, change * i128::from(amount_won)));
            }
            self.postings.push(Posting { debit, credit, amount_won });
        }
    }

    /// A compound entry: debits and credits with equal sums, split into pairs.
    fn entry(
        &mut self,
        debits: &[(Account, u64)],
        credits: &[(Account, u64)],
    ) -> std::result::Result<(), String> {
        let debit_sum: u128 = debits.iter().map(|(_, amount)| u128::from(*amount)).sum();
        let credit_sum: u128 = credits.iter().map(|(_, amount)| u128::from(*amount)).sum();
        if debit_sum != credit_sum {
            return Err(format!("compound entry with debits {debit_sum} and credits {credit_sum}"));
        }
        let mut credits: Vec<(Account, u64)> =
            credits.iter().copied().filter(|(_, amount)| *amount > 0).collect();
        let mut next = 0;
        for (debit, amount) in debits {
            let mut left_won = *amount;
            while left_won > 0 {
                let (credit, credit_left_won) = &mut credits[next];
                let take_won = left_won.min(*credit_left_won);
                self.post(*debit, *credit, take_won);
                left_won -= take_won;
                *credit_left_won -= take_won;
                if *credit_left_won == 0 {
                    next += 1;
                }
            }
        }
        Ok(())
    }

    /// Net credit (credits − debits) this record posted to accounts matching `filter`.
    fn net_credit_won(&self, filter: impl Fn(&Account) -> bool) -> i128 {
        self.postings
            .iter()
            .map(|posting| {
                let amount = i128::from(posting.amount_won);
                i128::from(filter(&posting.credit)) * amount
                    - i128::from(filter(&posting.debit)) * amount
            })
            .sum()
    }

    /// The postings must move the control accounts exactly as the engine's totals moved.
    fn check(
        &self,
        before: &Totals,
        after: &Totals,
        tracked_held_won: u128,
    ) -> std::result::Result<(), String> {
        let change = |from: u128, to: u128| to as i128 - from as i128;
        let card_value = self.net_credit_won(is_card_value);
        let checks = [
            ("card balances", card_value, change(before.balances_won, after.balances_won)),
            (
                "holds",
                self.net_credit_won(|account| *account == Account::Holds),
                change(before.held_won, after.held_won),
            ),
            (
                "breakage",
                self.net_credit_won(|account| *account == Account::BreakageRevenue),
                change(before.breakage_won, after.breakage_won),
            ),
            (
                "paid out",
                self.net_credit_won(|account| *account == Account::RefundsPayable),
                change(before.paid_out_won, after.paid_out_won),
            ),
        ];
        for (what, posted, engine) in checks {
            if posted != engine {
                return Err(format!("{what}: posted {posted} won, engine moved {engine} won"));
            }
        }
        if tracked_held_won != after.held_won {
            return Err(format!(
                "tracked holds {tracked_held_won} won, engine {} won",
                after.held_won
            ));
        }
        Ok(())
    }
}

/// CARD_ACTIVATE or CARD_CLAIM of a card still in stock (activated without a channel sale):
/// its value becomes spendable though nobody has paid for it yet, held in suspense.
fn post_activation_unsold(record: &Record, out: &mut Out) {
    let Some(view) = record.view_before.as_ref().filter(|view| view.state == State::Issued) else {
        return;
    };
    let face_value_won = record.face_value_won;
    out.post(Account::CardUnsold { face_value_won }, record.liability(), view.balance_won);
    out.post(Account::SuspenseActivatedUnsold, Account::CardStockControl, view.balance_won);
    out.facts.push(Fact::ActivatedUnsold { amount_won: view.balance_won });
}

fn delta(before: u128, after: u128, what: &str) -> std::result::Result<u64, String> {
    after
        .checked_sub(before)
        .and_then(|change| u64::try_from(change).ok())
        .ok_or_else(|| format!("{what} total moved from {before} to {after}"))
}

/// The money an approved record moved (for its retention class).
fn money_of(body: &Body, reply_amount_won: u64) -> u64 {
    match body {
        Body::Sell { price_won, .. } => *price_won,
        Body::Issue { .. } | Body::Consign { .. } | Body::Register { .. } => 0,
        _ => reply_amount_won,
    }
}

/// The record's kind (index into `RECORD_KINDS`) and whether it is an authorization record
/// (kept 1 year whatever its amount).
fn record_kind(body: &Body) -> (u8, bool) {
    match body {
        Body::Issue { .. } => (0, false),
        Body::Activate { .. } => (1, false),
        Body::Load { .. } => (2, false),
        Body::Sell { .. } => (3, false),
        Body::Block { .. } => (4, false),
        Body::Unblock { .. } => (5, false),
        Body::Consign { .. } => (6, false),
        Body::Register { .. } => (7, false),
        Body::BalanceRefund { .. } => (8, false),
        Body::Authorize { .. } => (9, true),
        Body::Capture { .. } => (10, false),
        Body::Void { .. } => (11, true),
        Body::Reverse { .. } => (12, false),
        Body::Sale { .. } => (13, false),
        Body::Refund { .. } => (14, false),
        Body::Tick => (15, false),
        Body::Configure(_) | Body::ConfigureExtended(_) => (16, false),
        Body::ForeignImport { .. } => (17, false),
        Body::ForeignConvert { .. } => (18, false),
        Body::Claim { .. } => (19, false),
        Body::SessionStart(_) => (20, true),
        Body::SessionUpdate { .. } => (21, false),
        Body::SessionEnd { .. } => (22, false),
        Body::EventCharge { .. } => (23, false),
        Body::SessionsClose { .. } => (24, false),
        Body::Upgrade { .. } => (25, false),
        Body::Fence { .. } => (26, false),
    }
}

/// The session a session command names (0 for other commands).
fn op_session_id(body: &Body) -> u128 {
    match body {
        Body::SessionStart(open) => open.session_id,
        Body::SessionUpdate { session_id, .. } | Body::SessionEnd { session_id, .. } => *session_id,
        _ => 0,
    }
}

#[cfg(test)]
mod replay_tests {
    use super::Follower;
    use crate::config::ExportConfig;
    use pinswitch_core::{Body, Command, EngineConfig, JournalEntry, Shard, encode_entry};
    use pinswitch_protocol::op_id_at;

    /// A retry that arrives in the apply that drops an old op-id generation changes the state
    /// (the generation goes), so the switch journals it with its replayed reply. The follower
    /// must post nothing for it: the SALE's money moved once, with the original.
    #[test]
    fn a_journaled_replay_posts_nothing_twice() {
        let config = EngineConfig::test_min();
        let mut engine = Shard::first_format(0, 1, config.clone(), [0, 0]);
        let mut follower = Follower::new(0, 1, config);
        let export = ExportConfig::default();
        let mut seq = 0u64;
        let mut journaled_replays = 0;
        let mut feed =
            |engine: &mut Shard, follower: &mut Follower, now_ms: u64, op_id: u128, body: Body| {
                let command = Command { op_id, deadline_at_ms: 0, body };
                let applied = engine.apply(now_ms, &command);
                if !applied.changed {
                    return None;
                }
                seq += 1;
                let entry = JournalEntry { now_ms, command, reply: applied.reply };
                let effects = follower
                    .apply(seq, &encode_entry(&entry), &export)
                    .expect("the follower posts every record");
                Some((applied.reply, effects))
            };
        let t0 = 1_800_000_000_000u64;
        let pin_hash = 1_000u128;
        let mut low = 1u128;
        for card in 0..40u128 {
            low += 1;
            let issue = Body::Issue { pin_hash: pin_hash + card, face_value_won: 10_000 };
            feed(&mut engine, &mut follower, t0, op_id_at(t0, low), issue);
        }
        low += 1;
        feed(
            &mut engine,
            &mut follower,
            t0,
            op_id_at(t0, low),
            Body::Activate { pin_hash, password_mac: 1 },
        );
        let t1 = t0 + 3_600_000;
        low += 1;
        let sale_id = op_id_at(t1, low);
        let sale =
            Body::Sale { pin_hash, password_mac: 1, amount_won: 100, merchant_id: 1, category: 1 };
        let (first, posted) = feed(&mut engine, &mut follower, t1, sale_id, sale.clone())
            .expect("the sale is journaled");
        assert!(
            first.code == 0 && !posted.postings.is_empty(),
            "the original SALE posts its debit"
        );
        let value_after_sale = follower.card_value_won();
        if let Some((again, effects)) =
            feed(&mut engine, &mut follower, t0 + 2 * 3_600_000 + 1, sale_id, sale)
        {
            assert!(again.replayed, "only a replay reaches here");
            let nothing = effects.postings.is_empty() && effects.facts.is_empty();
            assert!(nothing, "a replay posts nothing: {:?}", effects.postings);
            journaled_replays += 1;
        }
        assert_eq!(
            journaled_replays, 1,
            "the scenario journals the retry (the generation drop changed the state)"
        );
        assert_eq!(follower.card_value_won(), value_after_sale);
    }
}
