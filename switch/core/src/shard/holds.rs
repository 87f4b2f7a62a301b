//! Pending holds (`Hold`) and the table that keeps them (`HoldTable`): the holds by hold id, and
//! the two indexes derived from them, by card (BALANCE_INQUIRY, the invariant scan) and by expiry
//! time (the engine's clock expires them). Only the table's methods change it, so the indexes
//! cannot drift from the holds; what a hold does to its card and to the money totals is the
//! payment rules' business (payments.rs).

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;

use rkyv::{Archive, Deserialize, Serialize};

use crate::hasher::{KeyHasherBuilder, KeyMap};
use crate::types::{Ms, OpId, PinHash};

/// A pending hold, keyed by its hold id (the op id of the AUTHORIZE that placed it).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hold {
    pub(super) pin_hash: PinHash,
    pub(super) amount_won: u64,
    pub(super) captured_won: u64,
    /// Refunds of this hold's captures. The hold keeps the payment's accounting while it is
    /// pending, so a REVERSE still credits the captures back after the AUTHORIZE's op-id record
    /// was evicted.
    pub(super) refunded_won: u64,
    pub(super) captures: u16,
    pub(super) expires_at_ms: Ms,
}

impl Hold {
    pub(super) fn remaining_won(&self) -> u64 {
        self.amount_won - self.captured_won
    }
}

/// A shard's pending holds and their indexes.
#[derive(Clone)]
pub(super) struct HoldTable {
    holds: KeyMap<Hold>,
    /// Pending hold ids per card, only for cards that have some.
    card_holds: KeyMap<Vec<OpId>>,
    /// Pending holds by expiry time.
    expiries: BTreeSet<(Ms, OpId)>,
}

impl HoldTable {
    pub(super) fn new(hasher: KeyHasherBuilder) -> HoldTable {
        HoldTable {
            holds: KeyMap::with_hasher(hasher),
            card_holds: KeyMap::with_hasher(hasher),
            expiries: BTreeSet::new(),
        }
    }

    pub(super) fn get(&self, hold_id: &OpId) -> Option<&Hold> {
        self.holds.get(hold_id)
    }

    /// Places a hold under its id.
    pub(super) fn open(&mut self, hold_id: OpId, hold: Hold) {
        let (pin_hash, expires_at_ms) = (hold.pin_hash, hold.expires_at_ms);
        self.holds.insert(hold_id, hold);
        self.card_holds.entry(pin_hash).or_default().push(hold_id);
        self.expiries.insert((expires_at_ms, hold_id));
    }

    /// Counts a capture of `capture_won` (at most the remainder) against a pending hold;
    /// returns what remains of it.
    pub(super) fn capture(&mut self, hold_id: OpId, capture_won: u64) -> u64 {
        let hold = self.holds.get_mut(&hold_id).expect("capturing a pending hold");
        hold.captured_won += capture_won;
        hold.captures += 1;
        hold.remaining_won()
    }

    /// Counts a refund of the hold's captures, if the hold is still pending (else the payment's
    /// op-id record alone keeps the accounting).
    pub(super) fn refund(&mut self, hold_id: OpId, amount_won: u64) {
        if let Some(hold) = self.holds.get_mut(&hold_id) {
            hold.refunded_won += amount_won;
        }
    }

    /// Removes a pending hold from the table and its indexes; returns it.
    pub(super) fn close(&mut self, hold_id: OpId) -> Hold {
        let hold = self.holds.remove(&hold_id).expect("closing a pending hold");
        self.expiries.remove(&(hold.expires_at_ms, hold_id));
        if let Entry::Occupied(mut ids) = self.card_holds.entry(hold.pin_hash) {
            ids.get_mut().retain(|id| *id != hold_id);
            if ids.get().is_empty() {
                ids.remove();
            }
        }
        hold
    }

    /// The earliest hold due at `now_ms`, if any.
    pub(super) fn first_due(&self, now_ms: Ms) -> Option<OpId> {
        self.expiries
            .first()
            .filter(|(expires_at_ms, _)| *expires_at_ms <= now_ms)
            .map(|(_, hold_id)| *hold_id)
    }

    /// When the earliest pending hold expires.
    pub(super) fn next_expiry_ms(&self) -> Option<Ms> {
        self.expiries.first().map(|(expires_at_ms, _)| *expires_at_ms)
    }

    /// The pending holds of one card, in the order they were placed (restored: by id).
    pub(super) fn of_card(&self, pin_hash: PinHash) -> impl Iterator<Item = (OpId, &Hold)> + '_ {
        self.card_holds.get(&pin_hash).into_iter().flatten().map(|id| (*id, &self.holds[id]))
    }

    /// What one card's pending holds still hold, and how many there are.
    pub(super) fn card_pending(&self, pin_hash: PinHash) -> (u64, usize) {
        let remaining_won = self.of_card(pin_hash).map(|(_, hold)| hold.remaining_won()).sum();
        (remaining_won, self.card_holds.get(&pin_hash).map_or(0, Vec::len))
    }

    /// The indexes list exactly the pending holds, given how many cards count holds (the scan
    /// checked each card's holds one way; this closes the other).
    pub(super) fn indexes_agree(&self, cards_with_holds: usize) -> bool {
        cards_with_holds == self.card_holds.len() && self.expiries.len() == self.holds.len()
    }

    /// The holds for a snapshot image, in table order.
    pub(super) fn to_image(&self) -> Vec<(OpId, Hold)> {
        self.holds.iter().map(|(key, hold)| (*key, *hold)).collect()
    }

    /// Fills an empty table from a snapshot image, rebuilding the indexes.
    pub(super) fn restore(&mut self, image: Vec<(OpId, Hold)>) {
        for (hold_id, hold) in image {
            self.card_holds.entry(hold.pin_hash).or_default().push(hold_id);
            self.expiries.insert((hold.expires_at_ms, hold_id));
            self.holds.insert(hold_id, hold);
        }
        for ids in self.card_holds.values_mut() {
            ids.sort_unstable();
        }
    }
}
