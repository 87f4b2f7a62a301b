//! Foreign PINs: codes of partner products (calling cards abroad) imported into per-product
//! pools and handed out, oldest first, to cards that pay their price (FOREIGN_CONVERT). The
//! `ForeignPools` table keeps the pools, every code ever imported (a code is imported once) and
//! the code each conversion handed out (a retry gets the same code, long after its op-id record).

use std::collections::{BTreeMap, VecDeque};

use pinswitch_protocol::{Category, OpStatus, ResultCode};

use super::{Outcome, Shard};
use crate::hasher::{KeyHasherBuilder, KeyMap};
use crate::types::{Effect, ForeignCode, OpId, PasswordMac, PinHash, Reply};

/// A shard's foreign PINs.
#[derive(Clone)]
pub(super) struct ForeignPools {
    /// Foreign PINs not yet converted, per foreign product, in import order (a conversion takes
    /// the oldest). Only the PINs routed to this shard: imports spread over shards by the hash
    /// of the code, and a conversion draws from the card's shard.
    pools: BTreeMap<u32, VecDeque<ForeignCode>>,
    /// Every foreign PIN ever imported here, by the front end's hash of its code, with its
    /// product: a code imported twice is refused.
    known: KeyMap<u32>,
    /// The PIN each approved conversion handed out, by the conversion's op id: a retry of the
    /// conversion must hand out the same PIN, long after its op-id record may have gone.
    conversions: KeyMap<ForeignCode>,
}

/// The foreign PINs in a snapshot image: pools, known codes, conversions.
pub(super) type ForeignImage =
    (Vec<(u32, Vec<ForeignCode>)>, Vec<(u128, u32)>, Vec<(OpId, ForeignCode)>);

impl ForeignPools {
    pub(super) fn new(hasher: KeyHasherBuilder) -> ForeignPools {
        ForeignPools {
            pools: BTreeMap::new(),
            known: KeyMap::with_hasher(hasher),
            conversions: KeyMap::with_hasher(hasher),
        }
    }

    /// Adds a code to its product's pool; returns the pool's size then, or `None` for a code
    /// imported before.
    pub(super) fn import(
        &mut self,
        foreign_hash: u128,
        product_id: u32,
        code: ForeignCode,
    ) -> Option<usize> {
        if self.known.contains_key(&foreign_hash) {
            return None;
        }
        self.known.insert(foreign_hash, product_id);
        let pool = self.pools.entry(product_id).or_default();
        pool.push_back(code);
        Some(pool.len())
    }

    /// Takes the oldest code of the product's pool for the conversion `op_id` and remembers it
    /// under that op id; `None` when the pool is empty.
    pub(super) fn hand_out(&mut self, op_id: OpId, product_id: u32) -> Option<ForeignCode> {
        let code = self.pools.get_mut(&product_id).and_then(VecDeque::pop_front)?;
        self.conversions.insert(op_id, code);
        Some(code)
    }

    pub(super) fn code_of(&self, op_id: OpId) -> Option<ForeignCode> {
        self.conversions.get(&op_id).copied()
    }

    pub(super) fn stock(&self, product_id: u32) -> usize {
        self.pools.get(&product_id).map_or(0, VecDeque::len)
    }

    pub(super) fn to_image(&self) -> ForeignImage {
        (
            self.pools
                .iter()
                .map(|(product, pool)| (*product, pool.iter().copied().collect()))
                .collect(),
            self.known.iter().map(|(hash, product)| (*hash, *product)).collect(),
            self.conversions.iter().map(|(op_id, code)| (*op_id, *code)).collect(),
        )
    }

    /// Fills an empty table from a snapshot image.
    pub(super) fn restore(&mut self, (pools, known, conversions): ForeignImage) {
        self.pools = pools.into_iter().map(|(product, pool)| (product, pool.into())).collect();
        self.known.extend(known);
        self.conversions.extend(conversions);
    }
}

impl Shard {
    /// FOREIGN_IMPORT: one more PIN in this shard's pool of the product.
    pub(super) fn foreign_import(
        &mut self,
        foreign_hash: u128,
        product_id: u32,
        code: ForeignCode,
    ) -> Outcome {
        if self.config.foreign_product(product_id).is_none() {
            return Outcome::completed(Reply::code(ResultCode::ForeignProductUnknown));
        }
        let Some(stock) = self.foreign.import(foreign_hash, product_id, code) else {
            return Outcome::completed(Reply::code(ResultCode::ForeignPinExists));
        };
        let mut reply = Reply::code(ResultCode::Approved);
        // The pool's size after the import: the operator sees stock per shard grow.
        reply.amount_won = stock as u64;
        Outcome::completed(reply)
    }

    /// FOREIGN_CONVERT: the card pays the product's price and gets the oldest PIN of the pool.
    /// Checked like a payment for a telephone call (a foreign PIN is for calls abroad), so the
    /// product mix and the password rules apply; it earns no points (it is a conversion of
    /// value, not a purchase) and cannot be refunded or reversed (the PIN is handed out).
    pub(super) fn foreign_convert(
        &mut self,
        op_id: OpId,
        pin_hash: PinHash,
        password_mac: PasswordMac,
        product_id: u32,
    ) -> Outcome {
        let Some(price_won) =
            self.config.foreign_product(product_id).map(|product| product.price_won)
        else {
            return self.declined(ResultCode::ForeignProductUnknown, pin_hash);
        };
        let card = match self.admit_payment(
            pin_hash,
            password_mac,
            price_won,
            Category::TelephoneCall as u8,
        ) {
            Ok(card) => card,
            Err(code) => return self.declined(code, pin_hash),
        };
        if card.available_won() < price_won {
            return self.declined(ResultCode::InsufficientFunds, pin_hash);
        }
        let Some(code) = self.foreign.hand_out(op_id, product_id) else {
            return self.declined(ResultCode::ForeignPinUnavailable, pin_hash);
        };
        self.effects.push(Effect::ForeignPinHandedOut { code });
        self.cards.get_mut(&pin_hash).expect("checked above").balance_won -= price_won;
        self.totals.debited_won += u128::from(price_won);
        self.totals.balances_won -= u128::from(price_won);
        let reply = self.approved(pin_hash, price_won);
        Outcome { reply, status: OpStatus::Completed, debited_won: price_won }
    }

    /// The gate answered a FOREIGN_CONVERT with `reply`: when that is the stored approval (a
    /// replay), the holder is handed the PIN the conversion took, again.
    pub(super) fn foreign_replayed(&mut self, op_id: OpId, reply: &Reply) {
        if reply.code != ResultCode::Approved.as_u16() {
            return;
        }
        if let Some(code) = self.foreign.code_of(op_id) {
            self.effects.push(Effect::ForeignPinHandedOut { code });
        }
    }

    /// The foreign PIN an approved FOREIGN_CONVERT handed out (also for its replays).
    pub fn foreign_code(&self, op_id: OpId) -> Option<ForeignCode> {
        self.foreign.code_of(op_id)
    }

    /// PINs of a foreign product left in this shard's pool.
    pub fn foreign_stock(&self, product_id: u32) -> usize {
        self.foreign.stock(product_id)
    }
}
