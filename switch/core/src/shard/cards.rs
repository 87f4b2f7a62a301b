//! A card and its life: issue, consign, sell (a gift too), activate or claim, register, block
//! and unblock, recharge, pay out and close, and expiry into breakage; the points a payment earns;
//! and BALANCE_INQUIRY's view of a card. The rules of payments on a card are in payments.rs, of
//! calls in charging.rs.

use pinswitch_protocol::{BlockReason, CardState, Funding, ResultCode};
use rkyv::{Archive, Deserialize, Serialize};

use super::{Outcome, Shard};
use crate::config::EngineConfig;
use crate::types::{CardView, Effect, HoldView, Ms, PasswordMac, PinHash, Reply};

/// One card. Kept small: a shard holds millions of them.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Card {
    /// Posted money, held funds included.
    pub(super) balance_won: u64,
    /// Sum of the remaining amounts of this card's pending holds.
    pub(super) held_won: u64,
    pub(super) password_mac: PasswordMac,
    pub(super) face_value_won: u64,
    /// Value charged onto the card: face value plus recharges (the refund rule's base).
    pub(super) charged_won: u64,
    /// End of validity, seconds since the Unix epoch (0: not started: issued, not yet sold).
    pub(super) expires_at_s: u32,
    /// Loyalty points (not money).
    pub(super) points: u32,
    /// The partner channel the card is consigned to (0: none): the only channel that may sell it.
    pub(super) consignee: u32,
    /// `CARD_FLAG_*` bits.
    pub(super) flags: u8,
    /// `CardState` as a number.
    pub(super) state: u8,
    /// Wrong passwords in a row.
    pub(super) password_failures: u8,
    /// Pending holds.
    pub(super) holds: u16,
    /// Live charging sessions (their reservations are part of `held_won`).
    pub(super) sessions: u16,
}

/// The card was sold as a gift; its activation is the recipient's claim.
const CARD_FLAG_GIFT: u8 = 1;
/// The card was blocked before activation (e.g. a gift card lost in transit): CARD_UNBLOCK
/// returns it to sold, not active.
const CARD_FLAG_BLOCKED_UNSOLD: u8 = 2;
/// The holder registered user information with the card site.
const CARD_FLAG_REGISTERED: u8 = 4;
/// ... with a verified real name: the named-card balance cap applies.
const CARD_FLAG_NAMED: u8 = 8;
/// The holder left a password hint with the card site (the hint itself is not here).
const CARD_FLAG_PASSWORD_HINT: u8 = 16;

impl Card {
    pub(super) fn available_won(&self) -> u64 {
        self.balance_won - self.held_won
    }

    /// Past its validity with nothing pending: the next touch expires it (breakage).
    pub(super) fn expiry_due(&self, now_ms: Ms) -> bool {
        self.expires_at_s != 0
            && now_ms / 1000 >= u64::from(self.expires_at_s)
            && self.holds == 0
            && self.sessions == 0
            && matches!(self.state(), CardState::Sold | CardState::Active | CardState::Blocked)
    }

    pub(super) fn state(&self) -> CardState {
        CardState::from_u8(self.state).expect("card states are written by the engine only")
    }
}

impl Shard {
    pub(super) fn issue(&mut self, pin_hash: PinHash, face_value_won: u64) -> Outcome {
        if self.config.product(face_value_won).is_none() {
            return Outcome::completed(Reply::code(ResultCode::ProductNotFound));
        }
        let card = Card {
            balance_won: face_value_won,
            held_won: 0,
            password_mac: 0,
            face_value_won,
            charged_won: face_value_won,
            expires_at_s: 0,
            points: 0,
            consignee: 0,
            flags: 0,
            state: CardState::Issued as u8,
            password_failures: 0,
            holds: 0,
            sessions: 0,
        };
        self.cards.insert_new(pin_hash, card);
        self.totals.issued_won += u128::from(face_value_won);
        self.totals.balances_won += u128::from(face_value_won);
        Outcome::completed(self.approved(pin_hash, face_value_won))
    }

    pub(super) fn activate(&mut self, pin_hash: PinHash, password_mac: PasswordMac) -> Outcome {
        let card = match self.card_in(pin_hash, &[CardState::Issued, CardState::Sold]) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if self.gift_recipients.contains_key(&pin_hash) {
            return self.declined(ResultCode::GiftClaimRequired, pin_hash);
        }
        let expires_at_s = self.validity_end_s(card.face_value_won);
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.state = CardState::Active as u8;
        card.password_mac = password_mac;
        card.password_failures = 0;
        if card.expires_at_s == 0 {
            // Never sold through a channel (e.g. a virtual card): validity runs from activation.
            card.expires_at_s = expires_at_s;
        }
        Outcome::completed(self.approved(pin_hash, 0))
    }

    /// CARD_CLAIM: activation by the gift's recipient (the reference must be the one the sale
    /// named; 0 for a card that is not a gift), recording whether a password hint was left.
    pub(super) fn claim(
        &mut self,
        pin_hash: PinHash,
        password_mac: PasswordMac,
        gift_recipient_ref: u64,
        password_hint: bool,
    ) -> Outcome {
        if let Err(code) = self.card_in(pin_hash, &[CardState::Issued, CardState::Sold]) {
            return self.declined(code, pin_hash);
        }
        if self.gift_recipients.get(&pin_hash).copied().unwrap_or(0) != gift_recipient_ref {
            return self.declined(ResultCode::GiftRecipientMismatch, pin_hash);
        }
        self.gift_recipients.remove(&pin_hash);
        let outcome = self.activate(pin_hash, password_mac);
        if password_hint {
            self.cards.get_mut(&pin_hash).expect("activated above").flags |=
                CARD_FLAG_PASSWORD_HINT;
        }
        outcome
    }

    /// A payment of a registered card earns points at its product's rate.
    pub(super) fn earn_points(&mut self, pin_hash: PinHash, amount_won: u64) {
        let card = self.cards.get_mut(&pin_hash).expect("a paying card exists");
        let points = points_of(&self.config, card.face_value_won, amount_won);
        if card.flags & CARD_FLAG_REGISTERED != 0 {
            card.points = card.points.saturating_add(points);
        }
    }

    /// Money credited back takes its points back with it (never below zero).
    pub(super) fn return_points(&mut self, pin_hash: PinHash, amount_won: u64) {
        let card = self.cards.get_mut(&pin_hash).expect("a credited card exists");
        let points = points_of(&self.config, card.face_value_won, amount_won);
        card.points = card.points.saturating_sub(points);
    }

    /// The balance cap of this card: named cards have the higher legal cap.
    pub(super) fn cap_won(&self, card: &Card) -> u64 {
        self.config.balance_cap_of(card.face_value_won, card.flags & CARD_FLAG_NAMED != 0)
    }

    /// CARD_REGISTER: marks the card registered (and named, with a verified name); the reply's
    /// amount is the balance cap now in force.
    pub(super) fn register(
        &mut self,
        pin_hash: PinHash,
        holder_ref: u64,
        verified_name: bool,
    ) -> Outcome {
        if holder_ref == 0 {
            // No holder to register: malformed, like an unknown funding means.
            return Outcome::completed(Reply::code(ResultCode::FormatError));
        }
        if let Err(code) = self.card_in(pin_hash, &[CardState::Active, CardState::Blocked]) {
            return self.declined(code, pin_hash);
        }
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.flags |= CARD_FLAG_REGISTERED;
        if verified_name {
            card.flags |= CARD_FLAG_NAMED;
        }
        let card = *card;
        let cap_won = self.cap_won(&card);
        Outcome::completed(self.approved(pin_hash, cap_won))
    }

    /// The end of a validity period that starts now, in seconds since the epoch.
    fn validity_end_s(&self, face_value_won: u64) -> u32 {
        let end_s =
            self.now_ms / 1000 + u64::from(self.config.validity_days_of(face_value_won)) * 86_400;
        u32::try_from(end_s).unwrap_or(u32::MAX)
    }

    /// Expires the card if its validity has ended: what is left becomes breakage.
    pub(super) fn settle_expiry(&mut self, now_ms: Ms, pin_hash: PinHash) -> bool {
        let Some(card) = self.cards.get_mut(&pin_hash) else { return false };
        if !card.expiry_due(now_ms) {
            return false;
        }
        let breakage_won = card.balance_won;
        card.balance_won = 0;
        card.state = CardState::Expired as u8;
        self.totals.breakage_won += u128::from(breakage_won);
        self.totals.balances_won -= u128::from(breakage_won);
        self.effects.push(Effect::CardExpired { pin_hash, breakage_won });
        true
    }

    pub(super) fn sell(
        &mut self,
        pin_hash: PinHash,
        channel_id: u32,
        price_won: u64,
        payment_means: u8,
        gift_recipient_ref: u64,
    ) -> Outcome {
        if channel_id == 0 || Funding::from_u8(payment_means).is_none() {
            return self.declined(ResultCode::ChannelInvalid, pin_hash);
        }
        if price_won == 0 {
            return self.declined(ResultCode::AmountInvalid, pin_hash);
        }
        let Some(card) = self.cards.get(&pin_hash).copied() else {
            return self.declined(ResultCode::CardNotFound, pin_hash);
        };
        match card.state() {
            CardState::Issued if card.consignee != 0 && card.consignee != channel_id => {
                return self.declined(ResultCode::CardConsignedElsewhere, pin_hash);
            }
            CardState::Issued => {}
            CardState::Sold | CardState::Active => {
                return self.declined(ResultCode::CardAlreadySold, pin_hash);
            }
            CardState::Blocked => return self.declined(ResultCode::CardBlocked, pin_hash),
            CardState::Expired => return self.declined(ResultCode::CardExpired, pin_hash),
            CardState::Closed => return self.declined(ResultCode::CardClosed, pin_hash),
        }
        let expires_at_s = self.validity_end_s(card.face_value_won);
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.state = CardState::Sold as u8;
        card.expires_at_s = expires_at_s;
        if gift_recipient_ref != 0 {
            card.flags |= CARD_FLAG_GIFT;
        }
        let face_value_won = card.face_value_won;
        if gift_recipient_ref != 0 {
            // Until the claim: only this recipient may activate the card.
            self.gift_recipients.insert(pin_hash, gift_recipient_ref);
        }
        Outcome::completed(self.approved(pin_hash, face_value_won))
    }

    /// Hands an issued, not yet consigned card to a partner channel; the commission is in the
    /// journaled command for settlement.
    pub(super) fn consign(
        &mut self,
        pin_hash: PinHash,
        partner_id: u32,
        commission_per_mille: u16,
    ) -> Outcome {
        if partner_id == 0 || commission_per_mille > 1000 {
            return self.declined(ResultCode::ChannelInvalid, pin_hash);
        }
        let card = match self.card_in(pin_hash, &[CardState::Issued]) {
            Ok(card) => card,
            Err(ResultCode::CardNotActive) | Err(ResultCode::CardAlreadyActive) => {
                // Sold or in use: too late to consign.
                return self.declined(ResultCode::CardAlreadySold, pin_hash);
            }
            Err(code) => return self.declined(code, pin_hash),
        };
        if card.consignee != 0 {
            return self.declined(ResultCode::CardConsignedElsewhere, pin_hash);
        }
        self.cards.get_mut(&pin_hash).expect("checked above").consignee = partner_id;
        Outcome::completed(self.approved(pin_hash, card.face_value_won))
    }

    pub(super) fn block(&mut self, pin_hash: PinHash, reason: u8) -> Outcome {
        if BlockReason::from_u8(reason).is_none() {
            return self.declined(ResultCode::BlockReasonInvalid, pin_hash);
        }
        // A sold card not yet activated can be blocked too: a gift card lost in transit must
        // not be claimable by whoever finds its PIN.
        if let Err(code) = self.card_in(pin_hash, &[CardState::Active, CardState::Sold]) {
            return self.declined(code, pin_hash);
        }
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        if card.state() == CardState::Sold {
            card.flags |= CARD_FLAG_BLOCKED_UNSOLD;
        }
        card.state = CardState::Blocked as u8;
        Outcome::completed(self.approved(pin_hash, 0))
    }

    /// Blocked -> active; on an active card, clears a wrong-password lockout.
    pub(super) fn unblock(&mut self, pin_hash: PinHash) -> Outcome {
        let tries_max = self.config.password_tries_max;
        let Some(card) = self.cards.get_mut(&pin_hash) else {
            return self.declined(ResultCode::CardNotFound, pin_hash);
        };
        match card.state() {
            CardState::Blocked if card.flags & CARD_FLAG_BLOCKED_UNSOLD != 0 => {
                card.state = CardState::Sold as u8;
                card.flags &= !CARD_FLAG_BLOCKED_UNSOLD;
            }
            CardState::Blocked => card.state = CardState::Active as u8,
            CardState::Active if card.password_failures >= tries_max => {}
            CardState::Active => return self.declined(ResultCode::CardNotBlocked, pin_hash),
            CardState::Issued | CardState::Sold => {
                return self.declined(ResultCode::CardNotActive, pin_hash);
            }
            CardState::Expired => return self.declined(ResultCode::CardExpired, pin_hash),
            CardState::Closed => return self.declined(ResultCode::CardClosed, pin_hash),
        }
        card.password_failures = 0;
        Outcome::completed(self.approved(pin_hash, 0))
    }

    /// Pays the whole balance out and closes the card, once enough of it was used.
    pub(super) fn balance_refund(&mut self, pin_hash: PinHash, payout_account_ref: u64) -> Outcome {
        if payout_account_ref == 0 {
            // No account to pay into: a malformed request, like an unknown funding means.
            return Outcome::completed(Reply::code(ResultCode::FormatError));
        }
        let card = match self.card_in(pin_hash, &[CardState::Active, CardState::Blocked]) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if card.holds > 0 || card.sessions > 0 {
            return self.declined(ResultCode::HoldsOutstanding, pin_hash);
        }
        let percent = if card.face_value_won <= self.config.small_face_value_max_won {
            self.config.refund_used_percent_small
        } else {
            self.config.refund_used_percent
        };
        let used_won = card.charged_won.saturating_sub(card.balance_won);
        if u128::from(used_won) * 100 < u128::from(card.charged_won) * u128::from(percent) {
            return self.declined(ResultCode::RefundRuleNotMet, pin_hash);
        }
        let payout_won = card.balance_won;
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.balance_won = 0;
        card.state = CardState::Closed as u8;
        self.totals.paid_out_won += u128::from(payout_won);
        self.totals.balances_won -= u128::from(payout_won);
        Outcome::completed(self.approved(pin_hash, payout_won))
    }

    pub(super) fn load(&mut self, pin_hash: PinHash, amount_won: u64, funding: u8) -> Outcome {
        if Funding::from_u8(funding).is_none() {
            return Outcome::completed(Reply::code(ResultCode::FormatError));
        }
        if amount_won == 0 {
            return self.declined(ResultCode::AmountInvalid, pin_hash);
        }
        let card = match self.card_in(pin_hash, &[CardState::Active]) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if !amount_won.is_multiple_of(self.config.recharge_unit_of(card.face_value_won)) {
            return self.declined(ResultCode::RechargeUnitInvalid, pin_hash);
        }
        let Some(balance_won) = card.balance_won.checked_add(amount_won) else {
            return self.declined(ResultCode::AmountOverflow, pin_hash);
        };
        if balance_won > self.cap_won(&card) {
            return self.declined(ResultCode::BalanceCapExceeded, pin_hash);
        }
        let extension_s = if self.config.promotional(card.face_value_won) {
            u64::from(self.config.promotional_extension_days) * 86_400
        } else {
            0
        };
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.balance_won = balance_won;
        card.charged_won = card.charged_won.saturating_add(amount_won);
        // A promotional product's validity grows by a year (by default) with each recharge.
        card.expires_at_s =
            u32::try_from(u64::from(card.expires_at_s) + extension_s).unwrap_or(u32::MAX);
        self.totals.loaded_won += u128::from(amount_won);
        self.totals.balances_won += u128::from(amount_won);
        Outcome::completed(self.approved(pin_hash, amount_won))
    }

    /// BALANCE_INQUIRY: the card as of `now_ms` (holds due by then show as released).
    /// Whether the shard holds a card of this name (the server's lookup across rotated keys).
    pub fn has_card(&self, pin_hash: PinHash) -> bool {
        self.cards.get(&pin_hash).is_some()
    }

    pub fn card(&self, now_ms: Ms, pin_hash: PinHash) -> Option<CardView> {
        let card = self.cards.get(&pin_hash)?;
        let now_ms = now_ms.max(self.now_ms);
        let mut holds: Vec<HoldView> = self
            .holds
            .of_card(pin_hash)
            .filter(|(_, hold)| hold.expires_at_ms > now_ms)
            .map(|(hold_id, hold)| HoldView {
                hold_id,
                amount_won: hold.amount_won,
                captured_won: hold.captured_won,
                expires_at_ms: hold.expires_at_ms,
            })
            .collect();
        holds.sort_by_key(|hold| (hold.expires_at_ms, hold.hold_id));
        let (holds_all_won, _) = self.holds.card_pending(pin_hash);
        // Charging sessions' reservations are the rest of what the card holds.
        let sessions_reserved_won = card.held_won - holds_all_won;
        let held_won: u64 =
            holds.iter().map(|hold| hold.amount_won - hold.captured_won).sum::<u64>()
                + sessions_reserved_won;
        // What the next operation would find: a card past its validity reads as expired.
        let (state, balance_won) = if card.expiry_due(now_ms) {
            (CardState::Expired, 0)
        } else {
            (card.state(), card.balance_won)
        };
        Some(CardView {
            state,
            face_value_won: card.face_value_won,
            balance_won,
            available_won: balance_won - held_won,
            held_won,
            password_tries_left: self
                .config
                .password_tries_max
                .saturating_sub(card.password_failures),
            points: card.points,
            valid_until_s: card.expires_at_s,
            password_hint: card.flags & CARD_FLAG_PASSWORD_HINT != 0,
            holds,
        })
    }
}

/// Points earned by paying `amount_won` with a card of this product (rounded down).
fn points_of(config: &EngineConfig, face_value_won: u64, amount_won: u64) -> u32 {
    let rate = config.points_per_mille_of(face_value_won);
    u32::try_from(u128::from(amount_won) * u128::from(rate) / 1000).unwrap_or(u32::MAX)
}
