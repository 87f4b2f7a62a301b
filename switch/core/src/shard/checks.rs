//! The checks that decide whether a command may run, and in which order: the op-id gate every
//! command with an op id passes first, and the card checks the business rules share (the card's
//! state, a payment's checks, the password rules of payments and of calls). Checks answer with
//! the first failing `ResultCode`; the password checks also count a wrong password toward the
//! lockout, the one state change a declined command makes (it is journaled with the decline).

use pinswitch_protocol::{CardState, Category, MsgType, OpStatus, ResultCode, op_id_time_ms};

use super::{Card, Shard};
use crate::types::{
    Applied, Body, DESTINATION_DIGITS_MAX, Ms, OpId, PasswordMac, PinHash, Reply,
    destination_digits,
};

/// The result of the common op-id gate.
pub(super) enum Gate {
    /// Answer now; `record` says whether the answer is stored under the op id.
    Answer { reply: Reply, record: bool },
    /// New op: execute the business rules.
    Execute,
}

impl Shard {
    /// The op-id gate, the first checks of every command with an op id, in the order the module
    /// doc of `shard` states (this function is that order): the id itself (zero, too old, from
    /// the future), then its record (a tombstone, a replay, a reuse with another body), then
    /// room to record it, then the deadline. Only the deadline's answer is recorded: the others
    /// either are the record or must not take a place in the window.
    pub(super) fn gate(&self, now_ms: Ms, op_id: OpId, deadline_at_ms: Ms, body: &Body) -> Gate {
        if op_id == 0 {
            return Gate::Answer { reply: Reply::code(ResultCode::OpIdInvalid), record: false };
        }
        let op_time_ms = op_id_time_ms(op_id);
        if self.too_old(now_ms, op_time_ms) {
            return Gate::Answer { reply: Reply::code(ResultCode::OpTooOld), record: false };
        }
        if op_time_ms > now_ms.saturating_add(self.config.op_clock_skew_max_ms) {
            return Gate::Answer { reply: Reply::code(ResultCode::OpIdFromFuture), record: false };
        }
        if let Some(record) = self.ops.get(&op_id) {
            if record.status() == OpStatus::Tombstone {
                let code = if record.msg_type() == MsgType::OpFence as u8 {
                    ResultCode::FencedBeforeArrival
                } else {
                    ResultCode::ReversedBeforeArrival
                };
                return Gate::Answer { reply: Reply::code(code), record: false };
            }
            let reply = match self.ops.first_difference(record, body) {
                None => Reply { replayed: true, ..self.ops.reply(op_id, record) },
                Some(field) => Reply { field: field as u8, ..Reply::code(ResultCode::OpIdReused) },
            };
            return Gate::Answer { reply, record: false };
        }
        if self.ops.is_full(self.generation_max()) {
            // The previous generation holds op times ahead of the clock and cannot go yet.
            return Gate::Answer { reply: Reply::code(ResultCode::RetryLater), record: false };
        }
        if deadline_at_ms != 0 && now_ms > deadline_at_ms {
            return Gate::Answer {
                reply: Reply::code(ResultCode::DeadlineExceededNotExecuted),
                record: true,
            };
        }
        Gate::Execute
    }

    /// OP_FENCE of `op_id` on the card `pin_hash`: the op id's outcome made final. A record
    /// that names the card answers OP_RECORDED (INQUIRY tells the outcome), or FENCED when it
    /// is a tombstone (reversed or fenced before arrival: it never runs); another card's,
    /// ORIGINAL_CARD_MISMATCH. Without a record, the op id's own checks of the gate (zero, too
    /// old, from the future, room in the window), then a tombstone under it that declines a late
    /// arrival with FENCED_BEFORE_ARRIVAL: FENCED, and the only answer that changes state.
    /// The answers carry no balances: a fence names a card by its PIN alone, without password.
    pub(super) fn fence(&mut self, now_ms: Ms, op_id: OpId, pin_hash: PinHash) -> Applied {
        let answer = |code| Applied::new(Reply::code(code), false);
        if op_id == 0 {
            return answer(ResultCode::OpIdInvalid);
        }
        if let Some(record) = self.ops.get(&op_id) {
            let code = if !self.ops.names(record, pin_hash) {
                ResultCode::OriginalCardMismatch
            } else if record.status() == OpStatus::Tombstone {
                ResultCode::Fenced
            } else {
                ResultCode::OpRecorded
            };
            return answer(code);
        }
        let op_time_ms = op_id_time_ms(op_id);
        if self.too_old(now_ms, op_time_ms) {
            // It can never execute, but its record may have been evicted: what it did is no
            // longer known.
            return answer(ResultCode::OpTooOld);
        }
        if op_time_ms > now_ms.saturating_add(self.config.op_clock_skew_max_ms) {
            // Nothing this far ahead can have been accepted; a tombstone this far ahead would
            // pin the window as long (fence it once its time is near).
            return answer(ResultCode::OpIdFromFuture);
        }
        if self.ops.is_full(self.generation_max()) {
            return answer(ResultCode::RetryLater);
        }
        let tombstone = Reply::code(ResultCode::FencedBeforeArrival);
        self.record(op_id, &Body::Fence { pin_hash }, tombstone, OpStatus::Tombstone, 0);
        Applied::new(Reply::code(ResultCode::Fenced), true)
    }

    /// Checks that a card exists and is in one of `allowed` states.
    pub(super) fn card_in(
        &self,
        pin_hash: PinHash,
        allowed: &[CardState],
    ) -> Result<Card, ResultCode> {
        let card = self.cards.get(&pin_hash).ok_or(ResultCode::CardNotFound)?;
        let state = card.state();
        if allowed.contains(&state) {
            return Ok(*card);
        }
        Err(match state {
            CardState::Issued | CardState::Sold => ResultCode::CardNotActive,
            CardState::Active => ResultCode::CardAlreadyActive,
            CardState::Blocked => ResultCode::CardBlocked,
            CardState::Expired => ResultCode::CardExpired,
            CardState::Closed => ResultCode::CardClosed,
        })
    }

    /// Admits a payment (AUTHORIZE, SALE, FOREIGN_CONVERT): the checks it passes before money
    /// moves, the password last. Not read-only: the password try counts (see `try_password`).
    /// Returns the card as the try left it.
    pub(super) fn admit_payment(
        &mut self,
        pin_hash: PinHash,
        password_mac: PasswordMac,
        amount_won: u64,
        category: u8,
    ) -> Result<Card, ResultCode> {
        if amount_won == 0 {
            return Err(ResultCode::AmountInvalid);
        }
        if Category::from_u8(category).is_none() {
            return Err(ResultCode::CategoryInvalid);
        }
        let card = self.card_in(pin_hash, &[CardState::Active])?;
        if !self.config.category_allowed(card.face_value_won, category) {
            return Err(ResultCode::CategoryNotAllowed);
        }
        if card.password_failures >= self.config.password_tries_max {
            return Err(ResultCode::PasswordTriesExceeded);
        }
        self.try_password(pin_hash, password_mac)?;
        Ok(*self.cards.get(&pin_hash).expect("checked above"))
    }

    /// One password try: compares a password MAC with the card's; a wrong one counts toward the
    /// lockout (PASSWORD_TRIES_EXCEEDED at the limit), a right one resets the count.
    pub(super) fn try_password(
        &mut self,
        pin_hash: PinHash,
        password_mac: PasswordMac,
    ) -> Result<(), ResultCode> {
        let tries_max = self.config.password_tries_max;
        let card = self.cards.get_mut(&pin_hash).expect("checked by the caller");
        if card.password_mac != password_mac {
            card.password_failures += 1;
            return Err(if card.password_failures >= tries_max {
                ResultCode::PasswordTriesExceeded
            } else {
                ResultCode::PasswordInvalid
            });
        }
        card.password_failures = 0;
        Ok(())
    }

    /// The checks calls and event charges share, in order: the category, the called number,
    /// the card active, the product mix. Returns the card and the number's digits.
    pub(super) fn service_checks(
        &self,
        pin_hash: PinHash,
        category: u8,
        destination: u64,
    ) -> Result<(Card, [u8; DESTINATION_DIGITS_MAX], usize), ResultCode> {
        if Category::from_u8(category).is_none() {
            return Err(ResultCode::CategoryInvalid);
        }
        let (digits, digits_len) = destination_digits(destination);
        if digits_len == 0 {
            return Err(ResultCode::DestinationInvalid);
        }
        let card = self.card_in(pin_hash, &[CardState::Active])?;
        if !self.config.category_allowed(card.face_value_won, category) {
            return Err(ResultCode::CategoryNotAllowed);
        }
        Ok((card, digits, digits_len))
    }

    /// The password rule of calls and event charges: a card locked by wrong passwords is
    /// refused; a password given is a try (`try_password`: a wrong one counts toward the
    /// lockout); none given is accepted unless the card's product (or the engine-wide rule)
    /// requires one (`session_password_required_of`).
    pub(super) fn try_session_password(
        &mut self,
        pin_hash: PinHash,
        password_mac: PasswordMac,
    ) -> Result<(), ResultCode> {
        let card = self.cards.get(&pin_hash).expect("checked by the caller");
        if card.password_failures >= self.config.password_tries_max {
            return Err(ResultCode::PasswordTriesExceeded);
        }
        if password_mac == 0 {
            return if self.config.session_password_required_of(card.face_value_won) {
                Err(ResultCode::PasswordInvalid)
            } else {
                Ok(())
            };
        }
        self.try_password(pin_hash, password_mac)
    }
}
