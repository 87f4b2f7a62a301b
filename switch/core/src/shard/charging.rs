//! Charging: per-second call sessions (START, UPDATE, END, silence expiry, the audit's close)
//! and event charges, rated by the tariff the call started with, their money reserved from and
//! debited to the card's one available balance; PRICE_QUOTE; and the notices that tell a call
//! switch its calls' card changed (re-authorize, abort, low balance, expired).

use pinswitch_protocol::{
    CardState, Category, NOTICE_ABORT, NOTICE_EXPIRED, NOTICE_LOW_BALANCE, NOTICE_REAUTHORIZE,
    OpStatus, ResultCode, session_digest,
};

use super::sessions::{Session, grant};
use super::{Card, Outcome, Shard};
use crate::config::Tariff;
use crate::types::{
    Body, Effect, FINAL_UNIT_NONE, FINAL_UNIT_TERMINATE, Ms, PasswordMac, PinHash, Quote, Reply,
    SessionGrant, SessionNoticeOut, SessionOpen, destination_digits,
};

/// A card's available balance before a command that may lower it, and the low-balance mark
/// (`low_balance_warn_won`) it must not cross without a notice.
pub(super) struct LowBalanceWatch {
    mark_won: u64,
    before_won: u64,
}

impl Shard {
    /// Live charging sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The service category of a live session, or of one expired and still remembered.
    pub fn session_category(&self, session_id: u128) -> Option<u8> {
        self.sessions.get_any(&session_id).map(|session| session.tariff.category)
    }

    /// Sessions expired for silence and still remembered for a late report.
    pub fn expired_session_count(&self) -> usize {
        self.sessions.expired_len()
    }

    /// SESSION_AUDIT: how many live sessions `owner_id` has here, and their `session_digest`.
    pub fn owner_sessions(&self, owner_id: u32) -> (u32, u128) {
        let ids: Vec<u128> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.owner_id == owner_id)
            .map(|(id, _)| *id)
            .collect();
        (u32::try_from(ids.len()).unwrap_or(u32::MAX), session_digest(ids))
    }

    /// SESSION_AUDIT: the live sessions of `owner_id` not in `live` and silent since
    /// `silent_since_ms` (the caller journals a `SessionsClose` for them).
    pub fn session_orphans(
        &self,
        owner_id: u32,
        live: &std::collections::HashSet<u128>,
        silent_since_ms: Ms,
    ) -> Vec<u128> {
        let mut orphans: Vec<u128> = self
            .sessions
            .iter()
            .filter(|(session_id, session)| {
                session.owner_id == owner_id
                    && session.last_report_ms <= silent_since_ms
                    && !live.contains(session_id)
            })
            .map(|(session_id, _)| *session_id)
            .collect();
        orphans.sort_unstable();
        orphans
    }

    /// PRICE_QUOTE: what a call of `duration_s` starting at `now_ms` and `units` events would
    /// cost by the tariff of `category` and `destination`, and with a card, the seconds its
    /// available balance buys. Read-only.
    pub fn quote(
        &self,
        now_ms: Ms,
        pin_hash: Option<PinHash>,
        category: u8,
        destination: u64,
        duration_s: u32,
        units: u32,
    ) -> Quote {
        let refused = |code: ResultCode| Quote { code: code.as_u16(), ..Quote::default() };
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
        let mut view = Quote {
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
                let (affordable_s, _, _) = grant(
                    tariff,
                    local_start_s,
                    0,
                    self.config.session_grant_max_s,
                    card.available_won,
                );
                view.affordable_s = affordable_s;
            }
        }
        view
    }

    /// Local time (seconds) for the time-of-day bands.
    pub(super) fn local_s(&self, now_ms: Ms) -> u64 {
        (now_ms / 1000).saturating_add_signed(i64::from(self.config.tariff_utc_offset_s))
    }

    /// The seconds a START or UPDATE asks for: 0 means the default grant; never past the maximum.
    pub(super) fn requested_grant_s(&self, requested_s: u32) -> u32 {
        let requested_s =
            if requested_s == 0 { self.config.session_grant_default_s } else { requested_s };
        requested_s.min(self.config.session_grant_max_s)
    }

    /// SESSION_START: rates the call, reserves the money of the largest affordable grant (up to
    /// the request; the connect fee counts with the first second) from the available balance.
    pub(super) fn session_start(&mut self, now_ms: Ms, open: &SessionOpen) -> Outcome {
        let SessionOpen {
            pin_hash,
            session_id,
            destination,
            requested_s,
            owner_id,
            password_mac,
            category,
        } = *open;
        if session_id == 0 {
            return self.declined(ResultCode::FormatError, pin_hash);
        }
        let (card, digits, digits_len) = match self.service_checks(pin_hash, category, destination)
        {
            Ok(checked) => checked,
            Err(code) => return self.declined(code, pin_hash),
        };
        if self.sessions.id_taken(&session_id) {
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
        // (`card` is the one checked above: a password try moves no money.)
        let requested_s = self.requested_grant_s(requested_s);
        let local_start_s = self.local_s(now_ms);
        let (granted_s, final_unit, reserve_won) =
            grant(&tariff, local_start_s, 0, requested_s, card.available_won());
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
        self.sessions.open(session_id, session);
        let mut reply = self.approved(pin_hash, 0);
        let validity_s = self.config.session_validity_s;
        SessionGrant { granted_s, validity_s, tariff_id, final_unit }.pack_into(&mut reply);
        Outcome::completed(reply)
    }

    /// When a session reported at `now_ms` expires if it stays silent.
    pub(super) fn silence_deadline_ms(&self, now_ms: Ms) -> Ms {
        now_ms.saturating_add(2 * 1000 * u64::from(self.config.session_validity_s))
    }

    /// SESSION_UPDATE (`requested_s` is `Some`) and SESSION_END (`None`): releases the session's
    /// reservation, debits the cumulative use reported beyond what was rated (capped at the
    /// available balance: the card never goes below zero), then reserves the next grant (UPDATE)
    /// or closes the session (END). A report lower than one already rated debits nothing. A
    /// report on a session expired for silence is charged the same way, gets no grant and
    /// answers SESSION_EXPIRED_CHARGED.
    pub(super) fn session_report(
        &mut self,
        now_ms: Ms,
        pin_hash: PinHash,
        session_id: u128,
        seq: u32,
        used_total_s: u32,
        requested_s: Option<u32>,
    ) -> Outcome {
        let Some((mut session, expired)) = self.sessions.reported(session_id, pin_hash) else {
            return self.declined(ResultCode::SessionNotFound, pin_hash);
        };
        if seq <= session.seq {
            return self.declined(ResultCode::SessionSequenceStale, pin_hash);
        }
        session.seq = seq;
        session.last_report_ms = now_ms;
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
        let mut grant_answer =
            SessionGrant { granted_s: 0, validity_s: 0, tariff_id, final_unit: FINAL_UNIT_NONE };
        if expired {
            // Charged; no grant. END forgets it; a later report may still heal more use.
            if requested_s.is_none() {
                self.sessions.forget_expired(session_id);
            } else {
                self.sessions.update_expired(session_id, session);
                grant_answer.final_unit = FINAL_UNIT_TERMINATE;
            }
            let mut reply = self.approved(pin_hash, debit_won);
            reply.code = ResultCode::SessionExpiredCharged.as_u16();
            grant_answer.pack_into(&mut reply);
            return Outcome { reply, status: OpStatus::Completed, debited_won: debit_won };
        }
        match requested_s {
            None => {
                self.sessions.close(session_id);
                self.cards.get_mut(&pin_hash).expect("checked above").sessions -= 1;
            }
            Some(requested_s) => {
                // A blocked card, or one that could not pay for the use reported, gets no more.
                let (granted_s, final_unit, reserve_won) =
                    if capped || card.state() != CardState::Active {
                        (0, FINAL_UNIT_TERMINATE, 0)
                    } else {
                        grant(
                            &session.tariff,
                            session.local_start_s,
                            used_s,
                            self.requested_grant_s(requested_s),
                            card.available_won(),
                        )
                    };
                let card = self.cards.get_mut(&pin_hash).expect("checked above");
                card.held_won += reserve_won;
                self.totals.held_won += u128::from(reserve_won);
                session.reserved_won = reserve_won;
                session.expires_at_ms = self.silence_deadline_ms(now_ms);
                self.sessions.renew(session_id, session);
                grant_answer = SessionGrant {
                    granted_s,
                    validity_s: self.config.session_validity_s,
                    tariff_id,
                    final_unit,
                };
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
    /// the card; what it reported was charged already. Returns the session and the money its
    /// reservation released.
    pub(super) fn close_session(&mut self, session_id: u128) -> (Session, u64) {
        let mut session = self.sessions.close(session_id);
        let released_won = session.reserved_won;
        let card = self.cards.get_mut(&session.pin_hash).expect("a session's card exists");
        card.held_won -= released_won;
        card.sessions -= 1;
        self.totals.held_won -= u128::from(released_won);
        session.reserved_won = 0;
        (session, released_won)
    }

    /// Expires every session silent past its deadline at `now_ms`; returns how many. Each is
    /// remembered (bounded by `expired_sessions_max`) so its late report is still charged.
    pub(super) fn expire_sessions(&mut self, now_ms: Ms) -> usize {
        let mut expired = 0;
        while let Some((expires_at_ms, session_id)) = self.sessions.first_due(now_ms) {
            let (session, released_won) = self.close_session(session_id);
            let pin_hash = session.pin_hash;
            self.effects.push(Effect::SessionExpired { session_id, pin_hash, released_won });
            let available_won = self.cards.get(&session.pin_hash).map_or(0, Card::available_won);
            self.push_notice(SessionNoticeOut { session_id, kind: NOTICE_EXPIRED, available_won });
            let expired_max = self.config.expired_sessions_max as usize;
            self.sessions.remember_expired(session_id, session, expires_at_ms, expired_max);
            expired += 1;
        }
        self.sessions.drop_stale_order();
        expired
    }

    /// SESSION_AUDIT's close: the listed sessions still live, of `owner_id`, silent since
    /// `silent_since_ms`. Returns how many were closed.
    pub(super) fn close_orphans(
        &mut self,
        owner_id: u32,
        silent_since_ms: Ms,
        session_ids: &[u128],
    ) -> usize {
        let mut closed = 0;
        for session_id in session_ids {
            let orphan = self.sessions.get(session_id).is_some_and(|session| {
                session.owner_id == owner_id && session.last_report_ms <= silent_since_ms
            });
            if orphan {
                let (session, released_won) = self.close_session(*session_id);
                let (session_id, pin_hash) = (*session_id, session.pin_hash);
                self.effects.push(Effect::SessionClosed { session_id, pin_hash, released_won });
                closed += 1;
            }
        }
        closed
    }

    /// What a low-balance notice compares: for a command that can lower what the card has
    /// available, and only while the shard has live sessions or one may start (none: no lookup
    /// on the hot path).
    pub(super) fn low_balance_watch(
        &self,
        body: &Body,
        pin_hash: PinHash,
    ) -> Option<LowBalanceWatch> {
        let calls_possible = !self.sessions.is_empty() || matches!(body, Body::SessionStart(_));
        let mark_won = if calls_possible { self.config.low_balance_warn_won } else { 0 };
        match body {
            Body::Authorize { .. }
            | Body::Sale { .. }
            | Body::ForeignConvert { .. }
            | Body::SessionStart(_)
            | Body::SessionUpdate { .. }
            | Body::EventCharge { .. }
                if mark_won > 0 =>
            {
                self.cards
                    .get(&pin_hash)
                    .map(|card| LowBalanceWatch { mark_won, before_won: card.available_won() })
            }
            _ => None,
        }
    }

    /// The notices a command raises to the card's calls: re-authorize after a recharge or an
    /// unblock, abort after a block, low balance when the command took the card below the mark.
    pub(super) fn raise_card_notices(
        &mut self,
        body: &Body,
        pin_hash: PinHash,
        reply: &Reply,
        watch: Option<LowBalanceWatch>,
    ) {
        // (Matched on the body first: decoding a reply's code is a table scan, too much for
        // every SALE.)
        let notice = match body {
            Body::Load { .. } | Body::Unblock { .. } => Some(NOTICE_REAUTHORIZE),
            Body::Block { .. } => Some(NOTICE_ABORT),
            _ => None,
        };
        if let Some(kind) = notice.filter(|_| reply.result_code().is_success()) {
            self.notify_card(pin_hash, kind);
        }
        if let Some(LowBalanceWatch { mark_won, before_won }) = watch {
            let after_won = self.cards.get(&pin_hash).map_or(before_won, Card::available_won);
            if before_won >= mark_won && after_won < mark_won {
                self.notify_card(pin_hash, NOTICE_LOW_BALANCE);
            }
        }
    }

    /// Raises a notice for each live session of the card.
    pub(super) fn notify_card(&mut self, pin_hash: PinHash, kind: u8) {
        let Some(card) = self.cards.get(&pin_hash) else { return };
        if card.sessions == 0 {
            return;
        }
        let available_won = card.available_won();
        for session_id in self.sessions.of_card(pin_hash) {
            self.push_notice(SessionNoticeOut { session_id, kind, available_won });
        }
    }

    /// A notice is an effect of the command that raised it (one command raises a few at most
    /// per live session of the shard: the list is bounded by `sessions_per_shard_max`).
    pub(super) fn push_notice(&mut self, notice: SessionNoticeOut) {
        self.effects.push(Effect::Notice(notice));
    }

    /// EVENT_CHARGE: `units` events at the tariff's event price, debited at once like a SALE
    /// (points included, so REFUND and REVERSE, which take points back, treat it like one).
    pub(super) fn event_charge(
        &mut self,
        pin_hash: PinHash,
        password_mac: PasswordMac,
        destination: u64,
        units: u32,
        category: u8,
    ) -> Outcome {
        if units == 0 {
            return self.declined(ResultCode::UnitsInvalid, pin_hash);
        }
        let (card, digits, digits_len) = match self.service_checks(pin_hash, category, destination)
        {
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
}
