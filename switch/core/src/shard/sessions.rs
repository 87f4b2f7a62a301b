//! Charging sessions (calls) as stored: `Session`, and the `SessionTable` that keeps the live
//! ones with their two derived indexes (by silence deadline, by card) and the sessions expired
//! for silence that a late report may still charge, oldest first, within a bound. Only the
//! table's methods change it, so the indexes cannot drift from the sessions. Also the rating of
//! a grant (`grant`). What a session does to its card and to the money totals is charging.rs's.

use std::collections::{BTreeSet, HashMap, VecDeque};

use rkyv::{Archive, Deserialize, Serialize};

use crate::config::Tariff;
use crate::hasher::{KeyHasherBuilder, KeyMap};
use crate::types::{FINAL_UNIT_NONE, FINAL_UNIT_TERMINATE, Ms, PinHash};

/// A live per-second charging session (a call), keyed by the call switch's session id. Its
/// reservation is held on the card like a hold's remainder, so calls and payment holds draw
/// from one available balance.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct Session {
    pub(super) pin_hash: PinHash,
    /// The tariff as it was when the session started (a later table change leaves it alone);
    /// its prefix is dropped, only the rating fields matter here.
    pub(super) tariff: Tariff,
    /// Seconds rated so far (the largest cumulative use reported).
    pub(super) used_s: u64,
    /// What those seconds cost (`tariff.cost_won(used_s)`), debited or written off.
    pub(super) rated_won: u64,
    /// Money actually debited (less than `rated_won` when a report was capped).
    pub(super) debited_won: u64,
    /// Money reserved for the current grant.
    pub(super) reserved_won: u64,
    /// The call switch that owns it (SESSION_AUDIT).
    pub(super) owner_id: u32,
    /// The last request number applied (START: 0).
    pub(super) seq: u32,
    /// When it started, in local seconds (UTC plus the tariff offset then): the time-of-day
    /// bands rate it from there.
    pub(super) local_start_s: u64,
    /// Engine time of the last START or report.
    pub(super) last_report_ms: Ms,
    /// Live: when it expires for silence (last report + twice the validity time). Expired:
    /// when it was expired.
    pub(super) expires_at_ms: Ms,
}

impl Session {
    pub(super) fn cost_won(&self, used_s: u64) -> u64 {
        self.tariff.cost_from_won(self.local_start_s, used_s)
    }
}

/// Sessions with their ids, as a snapshot image lists them.
pub(super) type SessionList = Vec<(u128, Session)>;

/// A shard's charging sessions: the live ones and their indexes, and the remembered expired ones.
#[derive(Clone)]
pub(super) struct SessionTable {
    /// Live charging sessions by session id.
    live: KeyMap<Session>,
    /// Live sessions by silence deadline (derived from `live`).
    deadlines: BTreeSet<(Ms, u128)>,
    /// Live sessions by card (derived from `live`): notices go to a card's sessions.
    card_sessions: BTreeSet<(PinHash, u128)>,
    /// Sessions expired for silence, kept so a late report is still charged (at most
    /// `expired_sessions_max`; `expired_order` says which goes first).
    expired: KeyMap<Session>,
    /// (expired at, session id), oldest first; an entry whose session has since been ended (or
    /// expired again later) is skipped.
    expired_order: VecDeque<(Ms, u128)>,
}

impl SessionTable {
    pub(super) fn new(hasher: KeyHasherBuilder) -> SessionTable {
        SessionTable {
            live: KeyMap::with_hasher(hasher),
            deadlines: BTreeSet::new(),
            card_sessions: BTreeSet::new(),
            expired: KeyMap::with_hasher(hasher),
            expired_order: VecDeque::new(),
        }
    }

    /// Live sessions.
    pub(super) fn len(&self) -> usize {
        self.live.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Expired sessions still remembered.
    pub(super) fn expired_len(&self) -> usize {
        self.expired.len()
    }

    pub(super) fn get(&self, session_id: &u128) -> Option<&Session> {
        self.live.get(session_id)
    }

    /// A live session, or one expired and still remembered.
    pub(super) fn get_any(&self, session_id: &u128) -> Option<&Session> {
        self.live.get(session_id).or_else(|| self.expired.get(session_id))
    }

    /// An expired session's id stays taken while its late report may still come.
    pub(super) fn id_taken(&self, session_id: &u128) -> bool {
        self.live.contains_key(session_id) || self.expired.contains_key(session_id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u128, &Session)> {
        self.live.iter()
    }

    /// The live session ids of one card.
    pub(super) fn of_card(&self, pin_hash: PinHash) -> Vec<u128> {
        self.card_sessions
            .range((pin_hash, 0)..=(pin_hash, u128::MAX))
            .map(|(_, session_id)| *session_id)
            .collect()
    }

    /// When the earliest live session expires for silence.
    pub(super) fn next_deadline_ms(&self) -> Option<Ms> {
        self.deadlines.first().map(|(expires_at_ms, _)| *expires_at_ms)
    }

    /// The earliest live session silent past its deadline at `now_ms`: (deadline, id).
    pub(super) fn first_due(&self, now_ms: Ms) -> Option<(Ms, u128)> {
        self.deadlines.first().filter(|(expires_at_ms, _)| *expires_at_ms <= now_ms).copied()
    }

    /// The session a report of this card names, and whether it is an expired one (a copy: the
    /// report changes it, then puts it back with `renew` or `update_expired`).
    pub(super) fn reported(&self, session_id: u128, pin_hash: PinHash) -> Option<(Session, bool)> {
        match (self.live.get(&session_id), self.expired.get(&session_id)) {
            (Some(session), _) if session.pin_hash == pin_hash => Some((session.clone(), false)),
            (None, Some(session)) if session.pin_hash == pin_hash => Some((session.clone(), true)),
            _ => None,
        }
    }

    /// Starts a live session.
    pub(super) fn open(&mut self, session_id: u128, session: Session) {
        self.deadlines.insert((session.expires_at_ms, session_id));
        self.card_sessions.insert((session.pin_hash, session_id));
        self.live.insert(session_id, session);
    }

    /// Puts back a live session a report changed, under its new deadline.
    pub(super) fn renew(&mut self, session_id: u128, session: Session) {
        let before = &self.live[&session_id];
        assert!(before.pin_hash == session.pin_hash, "a report keeps its session's card");
        self.deadlines.remove(&(before.expires_at_ms, session_id));
        self.deadlines.insert((session.expires_at_ms, session_id));
        self.live.insert(session_id, session);
    }

    /// Ends a live session: out of the table and its indexes; returns it as it was stored.
    pub(super) fn close(&mut self, session_id: u128) -> Session {
        let session = self.live.remove(&session_id).expect("closing a live session");
        self.deadlines.remove(&(session.expires_at_ms, session_id));
        self.card_sessions.remove(&(session.pin_hash, session_id));
        session
    }

    /// Remembers a session just expired at `expired_at_ms` (its `expires_at_ms`), forgetting the
    /// oldest past `expired_max`.
    pub(super) fn remember_expired(
        &mut self,
        session_id: u128,
        session: Session,
        expired_at_ms: Ms,
        expired_max: usize,
    ) {
        self.expired_order.push_back((expired_at_ms, session_id));
        self.expired.insert(session_id, session);
        self.trim_expired(expired_max);
    }

    /// Puts back an expired session a late report charged (it stays where it is in the order).
    pub(super) fn update_expired(&mut self, session_id: u128, session: Session) {
        let expired_at_ms = session.expires_at_ms;
        let before = self.expired.insert(session_id, session);
        let kept_place = before.is_some_and(|before| before.expires_at_ms == expired_at_ms);
        assert!(kept_place, "a late report keeps its place in the order");
    }

    /// Forgets an expired session (its late END came).
    pub(super) fn forget_expired(&mut self, session_id: u128) {
        self.expired.remove(&session_id);
    }

    /// Drops the order's leading entries of sessions ended since, so they do not hold the order
    /// up forever.
    pub(super) fn drop_stale_order(&mut self) {
        while let Some(&(expired_at_ms, oldest_id)) = self.expired_order.front() {
            if self
                .expired
                .get(&oldest_id)
                .is_some_and(|oldest| oldest.expires_at_ms == expired_at_ms)
            {
                break;
            }
            self.expired_order.pop_front();
        }
    }

    /// Forgets the oldest expired sessions past `expired_max`.
    pub(super) fn trim_expired(&mut self, expired_max: usize) {
        while self.expired.len() > expired_max {
            let (expired_at_ms, oldest_id) =
                self.expired_order.pop_front().expect("the order lists every expired session");
            if self
                .expired
                .get(&oldest_id)
                .is_some_and(|oldest| oldest.expires_at_ms == expired_at_ms)
            {
                self.expired.remove(&oldest_id);
            }
        }
    }

    /// What the live sessions reserve per card, and how many each card has.
    pub(super) fn reserved_by_card(&self) -> HashMap<PinHash, (u64, usize)> {
        let mut session_cards: HashMap<PinHash, (u64, usize)> = HashMap::new();
        for session in self.live.values() {
            let (reserved_won, count) = session_cards.entry(session.pin_hash).or_default();
            *reserved_won += session.reserved_won;
            *count += 1;
        }
        session_cards
    }

    /// The table's own invariants: the indexes list exactly the live sessions, and the expired
    /// ones reserve nothing and stay within `expired_max`.
    pub(super) fn check(&self, expired_max: usize) -> Result<(), String> {
        if self.deadlines.len() != self.live.len() || self.card_sessions.len() != self.live.len() {
            return Err("session indexes disagree with the live sessions".into());
        }
        for (session_id, session) in &self.live {
            if !self.deadlines.contains(&(session.expires_at_ms, *session_id))
                || !self.card_sessions.contains(&(session.pin_hash, *session_id))
            {
                return Err(format!("session {session_id:x} is missing from an index"));
            }
        }
        if self.expired.values().any(|session| session.reserved_won != 0)
            || self.expired.len() > expired_max
        {
            return Err(
                "expired sessions reserve nothing and stay within expired_sessions_max".into()
            );
        }
        Ok(())
    }

    /// The live sessions (table order) and the remembered expired ones (oldest first) for a
    /// snapshot image.
    pub(super) fn to_image(&self) -> (SessionList, SessionList) {
        let live =
            self.live.iter().map(|(session_id, session)| (*session_id, session.clone())).collect();
        let expired = self
            .expired_order
            .iter()
            .filter_map(|(expired_at_ms, session_id)| {
                let session = self.expired.get(session_id)?;
                (session.expires_at_ms == *expired_at_ms).then(|| (*session_id, session.clone()))
            })
            .collect();
        (live, expired)
    }

    /// Fills an empty table from a snapshot image, rebuilding the indexes and the order.
    pub(super) fn restore(&mut self, live: SessionList, expired: SessionList) {
        for (session_id, session) in live {
            self.open(session_id, session);
        }
        for (session_id, session) in expired {
            self.expired_order.push_back((session.expires_at_ms, session_id));
            self.expired.insert(session_id, session);
        }
    }
}

/// The largest grant (up to `requested_s`) whose money, beyond the `used_s` already rated, fits
/// in `budget_won`; whether it is the last one (not one second more would fit); and the money
/// to reserve for it. The cost is monotone in the seconds, so a binary search finds it.
pub(super) fn grant(
    tariff: &Tariff,
    local_start_s: u64,
    used_s: u64,
    requested_s: u32,
    budget_won: u64,
) -> (u32, u8, u64) {
    let rated_won = tariff.cost_from_won(local_start_s, used_s);
    let extra_won = |more_s: u64| {
        tariff.cost_from_won(local_start_s, used_s + more_s).saturating_sub(rated_won)
    };
    let (mut low_s, mut high_s) = (0u64, u64::from(requested_s));
    while low_s < high_s {
        let middle_s = low_s + (high_s - low_s).div_ceil(2);
        if extra_won(middle_s) <= budget_won {
            low_s = middle_s;
        } else {
            high_s = middle_s - 1;
        }
    }
    let final_unit =
        if extra_won(low_s + 1) > budget_won { FINAL_UNIT_TERMINATE } else { FINAL_UNIT_NONE };
    (u32::try_from(low_s).expect("at most the request"), final_unit, extra_won(low_s))
}
