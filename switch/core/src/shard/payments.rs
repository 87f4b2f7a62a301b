//! The payment rules: AUTHORIZE places a hold, CAPTURE and VOID settle it, SALE debits at once,
//! REVERSE undoes an AUTHORIZE, SALE or EVENT_CHARGE whatever became of it (never refused for
//! business reasons; before its original arrives it leaves a tombstone), and REFUND gives part of a
//! debit back. Holds expire by the engine's clock. A payment's accounting lives in its op-id record
//! (debited, refunded) and, while its hold is pending, in the hold too.

use pinswitch_protocol::{CardState, MsgType, OpStatus, ResultCode, op_id_time_ms};

use super::holds::Hold;
use super::{Outcome, Shard};
use crate::types::{Body, Effect, Ms, OpId, PasswordMac, PinHash, Reply};

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn authorize(
        &mut self,
        now_ms: Ms,
        op_id: OpId,
        pin_hash: PinHash,
        password_mac: PasswordMac,
        amount_won: u64,
        category: u8,
        hold_ttl_s: u32,
    ) -> Outcome {
        if hold_ttl_s > self.config.hold_ttl_max_s {
            return self.declined(ResultCode::HoldTtlInvalid, pin_hash);
        }
        let card = match self.admit_payment(pin_hash, password_mac, amount_won, category) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if card.holds >= self.config.holds_per_card_max {
            return self.declined(ResultCode::HoldLimitReached, pin_hash);
        }
        if card.available_won() < amount_won {
            return self.declined(ResultCode::InsufficientFunds, pin_hash);
        }
        let ttl_s = if hold_ttl_s == 0 { self.config.hold_ttl_default_s } else { hold_ttl_s };
        let expires_at_ms = now_ms + u64::from(ttl_s) * 1000;
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.held_won += amount_won;
        card.holds += 1;
        let hold = Hold {
            pin_hash,
            amount_won,
            captured_won: 0,
            refunded_won: 0,
            captures: 0,
            expires_at_ms,
        };
        self.holds.open(op_id, hold);
        self.totals.held_won += u128::from(amount_won);
        let mut reply = self.approved(pin_hash, amount_won);
        reply.hold_expires_at_ms = expires_at_ms;
        Outcome { reply, status: OpStatus::HoldPending, debited_won: 0 }
    }

    pub(super) fn sale(
        &mut self,
        pin_hash: PinHash,
        password_mac: PasswordMac,
        amount_won: u64,
        category: u8,
    ) -> Outcome {
        let card = match self.admit_payment(pin_hash, password_mac, amount_won, category) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if card.available_won() < amount_won {
            return self.declined(ResultCode::InsufficientFunds, pin_hash);
        }
        self.debit_now(pin_hash, amount_won)
    }

    /// The money of an approved SALE or EVENT_CHARGE leaves the card at once and earns points
    /// (so REFUND and REVERSE, which take points back, treat both alike).
    pub(super) fn debit_now(&mut self, pin_hash: PinHash, amount_won: u64) -> Outcome {
        self.cards.get_mut(&pin_hash).expect("checked by the caller").balance_won -= amount_won;
        self.totals.debited_won += u128::from(amount_won);
        self.totals.balances_won -= u128::from(amount_won);
        self.earn_points(pin_hash, amount_won);
        let reply = self.approved(pin_hash, amount_won);
        Outcome { reply, status: OpStatus::Completed, debited_won: amount_won }
    }

    /// Why a hold id names no pending hold of this card, from what its AUTHORIZE record says.
    pub(super) fn closed_hold_code(
        &self,
        pin_hash: PinHash,
        hold_id: OpId,
        voided: ResultCode,
    ) -> ResultCode {
        match self.ops.get(&hold_id) {
            Some(record)
                if self.ops.names(record, pin_hash)
                    && record.msg_type() == MsgType::Authorize as u8 =>
            {
                match record.status() {
                    OpStatus::HoldCaptured => ResultCode::HoldAlreadyCaptured,
                    OpStatus::HoldVoided => voided,
                    OpStatus::HoldExpired => ResultCode::HoldExpired,
                    OpStatus::Reversed => ResultCode::HoldReversed,
                    _ => ResultCode::HoldNotFound,
                }
            }
            _ => ResultCode::HoldNotFound,
        }
    }

    pub(super) fn capture(
        &mut self,
        pin_hash: PinHash,
        hold_id: OpId,
        amount_won: u64,
        final_capture: bool,
    ) -> Outcome {
        if amount_won == 0 {
            return self.declined(ResultCode::AmountInvalid, pin_hash);
        }
        if let Err(code) =
            self.card_in(pin_hash, &[CardState::Active, CardState::Blocked, CardState::Expired])
        {
            return self.declined(code, pin_hash);
        }
        let hold = match self.holds.get(&hold_id) {
            Some(hold) if hold.pin_hash == pin_hash => *hold,
            _ => {
                return self.declined(
                    self.closed_hold_code(pin_hash, hold_id, ResultCode::HoldNotFound),
                    pin_hash,
                );
            }
        };
        let remaining_won = hold.remaining_won();
        let capture_won = if amount_won == u64::MAX { remaining_won } else { amount_won };
        if capture_won > remaining_won {
            return self.declined(ResultCode::ExceedsHoldAmount, pin_hash);
        }
        if hold.captures >= self.config.captures_per_hold_max {
            return self.declined(ResultCode::CaptureLimitReached, pin_hash);
        }
        let card = self.cards.get_mut(&pin_hash).expect("checked above");
        card.balance_won -= capture_won;
        card.held_won -= capture_won;
        self.totals.debited_won += u128::from(capture_won);
        self.totals.balances_won -= u128::from(capture_won);
        self.totals.held_won -= u128::from(capture_won);
        let left_won = self.holds.capture(hold_id, capture_won);
        if let Some(record) = self.ops.get_mut(&hold_id) {
            record.add_debited(capture_won);
        }
        if final_capture || left_won == 0 {
            self.close_hold(hold_id, OpStatus::HoldCaptured);
        }
        self.earn_points(pin_hash, capture_won);
        let reply = self.approved(pin_hash, capture_won);
        Outcome { reply, status: OpStatus::Completed, debited_won: capture_won }
    }

    pub(super) fn void(&mut self, pin_hash: PinHash, hold_id: OpId) -> Outcome {
        let released_won = match self.holds.get(&hold_id) {
            Some(hold) if hold.pin_hash == pin_hash => {
                self.close_hold(hold_id, OpStatus::HoldVoided)
            }
            _ => {
                let code = self.closed_hold_code(pin_hash, hold_id, ResultCode::HoldAlreadyVoided);
                return self.declined(code, pin_hash);
            }
        };
        Outcome::completed(self.approved(pin_hash, released_won))
    }

    /// Removes a pending hold, releasing what was not captured; returns the released amount.
    pub(super) fn close_hold(&mut self, hold_id: OpId, status: OpStatus) -> u64 {
        let hold = self.holds.close(hold_id);
        let released_won = hold.remaining_won();
        let card = self.cards.get_mut(&hold.pin_hash).expect("a hold's card exists");
        card.held_won -= released_won;
        card.holds -= 1;
        self.totals.held_won -= u128::from(released_won);
        if let Some(record) = self.ops.get_mut(&hold_id) {
            record.set_status(status);
        }
        released_won
    }

    /// Expires every hold due at `now_ms`; returns how many.
    pub(super) fn expire_holds(&mut self, now_ms: Ms) -> usize {
        let mut expired = 0;
        while let Some(hold_id) = self.holds.first_due(now_ms) {
            let pin_hash = self.holds.get(&hold_id).expect("a due hold is pending").pin_hash;
            let released_won = self.close_hold(hold_id, OpStatus::HoldExpired);
            self.effects.push(Effect::HoldExpired { hold_id, pin_hash, released_won });
            expired += 1;
        }
        expired
    }

    /// Undoes an AUTHORIZE or SALE whatever state it is in. Never refused for business reasons:
    /// it credits even a blocked or closed card, and past the balance cap.
    pub(super) fn reverse(
        &mut self,
        op_id: OpId,
        pin_hash: PinHash,
        original_op_id: OpId,
    ) -> Outcome {
        if original_op_id == 0 || original_op_id == op_id {
            return self.declined(ResultCode::OpIdInvalid, pin_hash);
        }
        let Some(original) = self.ops.get(&original_op_id) else {
            if self.holds.get(&original_op_id).is_some_and(|hold| hold.pin_hash == pin_hash) {
                // The AUTHORIZE record was evicted but its hold is pending: release it.
                return self.reverse_payment(pin_hash, original_op_id);
            }
            // Not arrived yet: leave a tombstone (unless it could only ever arrive too old).
            let original_time_ms = op_id_time_ms(original_op_id);
            if original_time_ms > self.now_ms.saturating_add(self.config.op_clock_skew_max_ms) {
                // No such original can have been accepted yet; a tombstone far in the future
                // would pin a record (and the too-old floor) for as long.
                return self.declined(ResultCode::OpIdFromFuture, pin_hash);
            }
            if !self.too_old(self.now_ms, original_time_ms) {
                let body = Body::Reverse { pin_hash, original_op_id: op_id };
                self.record(
                    original_op_id,
                    &body,
                    Reply::code(ResultCode::ReversedBeforeArrival),
                    OpStatus::Tombstone,
                    0,
                );
            }
            return Outcome::completed(
                self.card_reply(ResultCode::OriginalNotFoundRecorded, pin_hash),
            );
        };
        if original.status() == OpStatus::Tombstone {
            // Fenced before it arrived: it never ran, so there is nothing to undo.
            let code = if original.msg_type() == MsgType::OpFence as u8 {
                ResultCode::OriginalDeclinedNoop
            } else {
                ResultCode::AlreadyReversed
            };
            return self.declined(code, pin_hash);
        }
        if !self.ops.names(original, pin_hash) {
            return self.declined(ResultCode::OriginalCardMismatch, pin_hash);
        }
        if ![MsgType::Authorize, MsgType::Sale, MsgType::EventCharge]
            .iter()
            .any(|kind| original.msg_type() == *kind as u8)
        {
            return self.declined(ResultCode::ReversalNotSupported, pin_hash);
        }
        if original.code() != ResultCode::Approved.as_u16() {
            return self.declined(ResultCode::OriginalDeclinedNoop, pin_hash);
        }
        if original.status() == OpStatus::Reversed {
            return self.declined(ResultCode::AlreadyReversed, pin_hash);
        }
        self.reverse_payment(pin_hash, original_op_id)
    }

    /// Releases a payment's pending hold and credits back what it debited and was not refunded.
    pub(super) fn reverse_payment(&mut self, pin_hash: PinHash, original_op_id: OpId) -> Outcome {
        // A pending hold carries the payment's accounting itself (its record may be evicted).
        let pending =
            self.holds.get(&original_op_id).map(|hold| hold.captured_won - hold.refunded_won);
        let released_won =
            if pending.is_some() { self.close_hold(original_op_id, OpStatus::Reversed) } else { 0 };
        let credit_won = match self.ops.get_mut(&original_op_id) {
            Some(record) => {
                record.set_status(OpStatus::Reversed);
                let credit_won = record.debited_won() - record.refunded_won();
                record.add_refunded(credit_won);
                assert!(
                    pending.is_none_or(|pending_won| pending_won == credit_won),
                    "hold and record agree"
                );
                credit_won
            }
            None => pending.unwrap_or(0),
        };
        let card = self.cards.get_mut(&pin_hash).expect("a payment's card exists");
        self.totals.reversed_won += u128::from(credit_won);
        match card.state() {
            // The card's balance was paid out: the credit joins the payout (the exporter pays
            // it to the account of the CARD_REFUND), rather than sit on a card nobody can use.
            CardState::Closed => self.totals.paid_out_won += u128::from(credit_won),
            // Past validity: the credit is breakage like the rest of the card's value.
            CardState::Expired => self.totals.breakage_won += u128::from(credit_won),
            _ => {
                card.balance_won = card
                    .balance_won
                    .checked_add(credit_won)
                    .expect("a credit back fits: it was on the card");
                self.totals.balances_won += u128::from(credit_won);
            }
        }
        self.return_points(pin_hash, credit_won);
        let reply = self.approved(pin_hash, credit_won + released_won);
        Outcome::completed(reply)
    }

    /// Gives back part of a debit. The original is a SALE, or a CAPTURE (then the refundable
    /// money is that of its AUTHORIZE, captures together).
    pub(super) fn refund(
        &mut self,
        pin_hash: PinHash,
        original_op_id: OpId,
        amount_won: u64,
    ) -> Outcome {
        if amount_won == 0 {
            return self.declined(ResultCode::AmountInvalid, pin_hash);
        }
        let card = match self.cards.get(&pin_hash) {
            Some(card) => *card,
            None => return self.declined(ResultCode::CardNotFound, pin_hash),
        };
        match card.state() {
            CardState::Closed => return self.declined(ResultCode::CardClosed, pin_hash),
            // Nothing credited to an expired card could ever be used.
            CardState::Expired => return self.declined(ResultCode::CardExpired, pin_hash),
            _ => {}
        }
        let Some(original) = self.ops.get(&original_op_id) else {
            return self.declined(ResultCode::OriginalNotFound, pin_hash);
        };
        if original.status() == OpStatus::Tombstone {
            return self.declined(ResultCode::OriginalNotFound, pin_hash);
        }
        if !self.ops.names(original, pin_hash) {
            return self.declined(ResultCode::OriginalCardMismatch, pin_hash);
        }
        if original.code() != ResultCode::Approved.as_u16() {
            return self.declined(ResultCode::OriginalNotFound, pin_hash);
        }
        let payment_op_id = match original.capture_hold_id() {
            // A capture's money belongs to its AUTHORIZE (the hold id).
            Some(hold_id) => hold_id,
            None if original.msg_type() == MsgType::Sale as u8
                || original.msg_type() == MsgType::EventCharge as u8 =>
            {
                original_op_id
            }
            None => return self.declined(ResultCode::ReversalNotSupported, pin_hash),
        };
        let Some(payment) = self.ops.get(&payment_op_id) else {
            return self.declined(ResultCode::OriginalNotFound, pin_hash);
        };
        if amount_won > payment.debited_won() - payment.refunded_won() {
            return self.declined(ResultCode::ExceedsRefundable, pin_hash);
        }
        let Some(balance_won) = card.balance_won.checked_add(amount_won) else {
            return self.declined(ResultCode::AmountOverflow, pin_hash);
        };
        if balance_won > self.cap_won(&card) {
            return self.declined(ResultCode::BalanceCapExceeded, pin_hash);
        }
        self.ops.get_mut(&payment_op_id).expect("checked above").add_refunded(amount_won);
        self.holds.refund(payment_op_id, amount_won);
        self.cards.get_mut(&pin_hash).expect("checked above").balance_won = balance_won;
        self.totals.refunded_won += u128::from(amount_won);
        self.totals.balances_won += u128::from(amount_won);
        self.return_points(pin_hash, amount_won);
        Outcome::completed(self.approved(pin_hash, amount_won))
    }
}
