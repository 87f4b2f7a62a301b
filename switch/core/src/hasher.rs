//! The seeded 128-bit key hasher of the shard's tables (cards, op-id records, holds, sessions,
//! foreign PINs). It lives apart from the engine so `DenseMap` and the shard both depend on it
//! instead of on each other.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A fast keyed hasher for 128-bit keys: two rounds of folded multiply seeded with a secret.
/// PIN hashes are keyed PRF outputs already, but op ids are chosen by clients: without a secret
/// seed a hostile client could pick ids that all land in one probe sequence and slow its shard
/// to a crawl (hash flooding). The server seeds it from `keys.bin`; tests use zeros.
#[derive(Clone, Copy, Default)]
pub struct KeyHasherBuilder {
    pub(crate) key: [u64; 2],
}

pub struct KeyHasher {
    state: u64,
    key: u64,
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.key[0], key: self.key[1] }
    }
}

/// The high and low halves of a 128-bit product, folded together.
#[expect(clippy::cast_possible_truncation, reason = "the cast keeps the product's low half")]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.state = folded_multiply(self.state ^ value, self.key ^ 0x9E37_79B9_7F4A_7C15);
    }

    fn write_u128(&mut self, value: u128) {
        #[expect(clippy::cast_possible_truncation, reason = "the cast keeps the low half")]
        let low = folded_multiply(self.state ^ value as u64, self.key ^ 0xA076_1D64_78BD_642F);
        self.state = folded_multiply(low ^ (value >> 64) as u64, self.key ^ 0xE703_7ED1_A0B4_28DB);
    }
}

/// The shard's small tables: std maps keyed by a 128-bit id, hashed with the seeded hasher.
pub(crate) type KeyMap<V> = HashMap<u128, V, KeyHasherBuilder>;
