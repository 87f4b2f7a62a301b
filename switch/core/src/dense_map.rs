//! `DenseMap`: the shard's big tables (cards, op-id records) as a dense array of entries plus a
//! small open-addressing index, instead of a general hash map. Two product figures drive it:
//! - Memory per card. A general map keeps every bucket full-size and runs at 44–87 % load, so a
//!   64-byte card cost ~136 bytes at 5 M cards a shard. Here entries are packed (key + value, no
//!   empty buckets) and only the 8-byte index slots carry the load-factor slack: ~96 bytes.
//! - The snapshot stall. Entries live in fixed-size chunks behind `Arc`s, so cloning the map for
//!   a snapshot copies pointers, not gigabytes; the shard thread then copies a chunk only when it
//!   first writes to it while the snapshot still reads it (copy on write, 4,096 entries at a
//!   time). The clone that took seconds for millions of records takes microseconds.
//!
//! Entries are never removed one by one (cards are never deleted; op-id records go a whole
//! generation at a time with `clear`), which keeps the index a plain linear-probing table.

use std::hash::BuildHasher;
use std::sync::Arc;

use crate::hasher::KeyHasherBuilder;

/// Entries per chunk: the unit of copy-on-write after a snapshot clone.
const CHUNK_ENTRIES: usize = 4096;
/// The smallest index (slots); always a power of two.
const SLOTS_MIN: usize = 16;

/// An index slot: 0 is empty; otherwise the entry index + 1 in the low 32 bits and the high 32
/// bits of the key's hash above, so a probe skips non-matching entries without loading them
/// (a lookup of an unknown op id would otherwise touch several random entries).
type Slot = u64;

/// Up to `CHUNK_ENTRIES` entries (key, value), shared between a map and its snapshot clones
/// until one of them writes to it.
type Chunk<V> = Arc<Vec<(u128, V)>>;

#[derive(Clone)]
pub(crate) struct DenseMap<V: Clone> {
    hasher: KeyHasherBuilder,
    chunks: Vec<Chunk<V>>,
    len: usize,
    slots: Arc<Vec<Slot>>,
}

impl<V: Clone> DenseMap<V> {
    pub(crate) fn with_hasher(hasher: KeyHasherBuilder) -> DenseMap<V> {
        DenseMap { hasher, chunks: Vec::new(), len: 0, slots: Arc::new(vec![0; SLOTS_MIN]) }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn entry(&self, index: usize) -> &(u128, V) {
        &self.chunks[index / CHUNK_ENTRIES][index % CHUNK_ENTRIES]
    }

    /// The slot a probe for `hash` starts at, `mask` being the slot count - 1.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the hash's low bits pick the slot; the mask keeps fewer bits than a usize holds"
    )]
    fn home_slot(hash: u64, mask: usize) -> usize {
        hash as usize & mask
    }

    fn tag(hash: u64) -> u64 {
        hash & 0xFFFF_FFFF_0000_0000
    }

    /// `Ok(entry index)` when present, `Err(empty slot)` where it would go.
    fn find(&self, key: &u128) -> Result<usize, usize> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots[..];
        let mask = slots.len() - 1;
        let mut slot = Self::home_slot(hash, mask);
        loop {
            let stored = slots[slot];
            if stored == 0 {
                return Err(slot);
            }
            if stored & 0xFFFF_FFFF_0000_0000 == Self::tag(hash) {
                let index = (stored & 0xFFFF_FFFF) as usize - 1;
                if self.entry(index).0 == *key {
                    return Ok(index);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    pub(crate) fn get(&self, key: &u128) -> Option<&V> {
        self.find(key).ok().map(|index| &self.entry(index).1)
    }

    pub(crate) fn contains_key(&self, key: &u128) -> bool {
        self.find(key).is_ok()
    }

    /// Mutable access; copies the entry's chunk first if a snapshot clone still shares it.
    pub(crate) fn get_mut(&mut self, key: &u128) -> Option<&mut V> {
        let index = self.find(key).ok()?;
        let chunk = Arc::make_mut(&mut self.chunks[index / CHUNK_ENTRIES]);
        Some(&mut chunk[index % CHUNK_ENTRIES].1)
    }

    /// Adds a key that is not present (callers look it up first; a second insert is a bug).
    pub(crate) fn insert_new(&mut self, key: u128, value: V) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.rebuild_index(self.slots.len() * 2);
        }
        let slot = match self.find(&key) {
            Ok(_) => panic!("a key is inserted into a dense map once"),
            Err(slot) => slot,
        };
        let index = self.len;
        assert!(index < u32::MAX as usize - 1, "a dense map holds fewer than 2^32 - 1 entries");
        if index.is_multiple_of(CHUNK_ENTRIES) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK_ENTRIES)));
        }
        let chunk = Arc::make_mut(self.chunks.last_mut().expect("pushed above"));
        // A copied (or restored) chunk has only its length as capacity; keep chunks whole.
        if chunk.capacity() < CHUNK_ENTRIES {
            chunk.reserve_exact(CHUNK_ENTRIES - chunk.len());
        }
        chunk.push((key, value));
        Arc::make_mut(&mut self.slots)[slot] =
            Self::tag(self.hasher.hash_one(key)) | (index as u64 + 1);
        self.len += 1;
    }

    /// What a snapshot stores: the chunks and the index, shared (no copy is made).
    pub(crate) fn parts(&self) -> (Vec<Chunk<V>>, Arc<Vec<Slot>>) {
        (self.chunks.clone(), self.slots.clone())
    }

    /// Rebuilds a map from `parts` as restored from a snapshot, without rehashing a key: the
    /// index is kept (the hasher's seed is in the snapshot too). Checks the shape (full chunks
    /// but the last, a power-of-two index within the load bound, every entry indexed exactly
    /// once); the image itself is checksummed, so this guards against code bugs, not the disk.
    pub(crate) fn from_parts(
        hasher: KeyHasherBuilder,
        chunks: Vec<Chunk<V>>,
        slots: Arc<Vec<Slot>>,
    ) -> Result<DenseMap<V>, String> {
        let mut len = 0usize;
        for (number, chunk) in chunks.iter().enumerate() {
            let last = number + 1 == chunks.len();
            if chunk.len() > CHUNK_ENTRIES
                || chunk.is_empty()
                || (!last && chunk.len() != CHUNK_ENTRIES)
            {
                return Err(format!("dense map chunk {number} holds {} entries", chunk.len()));
            }
            len += chunk.len();
        }
        if !slots.len().is_power_of_two()
            || slots.len() < SLOTS_MIN
            || len * 4 > slots.len() * 3
            || len >= u32::MAX as usize - 1
        {
            return Err(format!("dense map index of {} slots for {len} entries", slots.len()));
        }
        let mut seen = vec![0u64; len.div_ceil(64)];
        let mut indexed = 0usize;
        for &slot in slots.iter() {
            if slot == 0 {
                continue;
            }
            let index = (slot & 0xFFFF_FFFF) as usize;
            if index == 0 || index > len || seen[(index - 1) / 64] & (1 << ((index - 1) % 64)) != 0
            {
                return Err(format!("dense map index slot names entry {index} of {len} wrongly"));
            }
            seen[(index - 1) / 64] |= 1 << ((index - 1) % 64);
            indexed += 1;
        }
        if indexed != len {
            return Err(format!("dense map index covers {indexed} of {len} entries"));
        }
        Ok(DenseMap { hasher, chunks, len, slots })
    }

    fn rebuild_index(&mut self, slot_count: usize) {
        debug_assert!(slot_count.is_power_of_two());
        let mut slots = vec![0 as Slot; slot_count];
        let mask = slot_count - 1;
        for (index, (key, _)) in self.chunks.iter().flat_map(|chunk| chunk.iter()).enumerate() {
            let hash = self.hasher.hash_one(key);
            let mut slot = Self::home_slot(hash, mask);
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = Self::tag(hash) | (index as u64 + 1);
        }
        self.slots = Arc::new(slots);
    }

    /// Drops every entry; the index keeps its size (a generation refills to the same size).
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
        match Arc::get_mut(&mut self.slots) {
            Some(slots) => slots.fill(0),
            None => self.slots = Arc::new(vec![0; self.slots.len()]),
        }
    }

    /// Entries in insertion order (deterministic, so snapshots of equal shards are equal).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u128, &V)> {
        self.chunks.iter().flat_map(|chunk| chunk.iter()).map(|(key, value)| (key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map against a std map, through growth, clones that share chunks, writes after a
    /// clone (copy on write must not leak into the clone) and clears.
    #[test]
    fn behaves_like_a_hash_map_and_clones_are_independent() {
        let mut map = DenseMap::<u64>::with_hasher(KeyHasherBuilder::default());
        let mut reference = std::collections::HashMap::new();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3u64 {
            for step in 0..20_000u64 {
                let key = u128::from(next() % 30_000) << 64 | u128::from(round);
                match reference.get(&key) {
                    Some(_) => {
                        *map.get_mut(&key).unwrap() += step;
                        *reference.get_mut(&key).unwrap() += step;
                    }
                    None => {
                        assert!(!map.contains_key(&key));
                        map.insert_new(key, step);
                        reference.insert(key, step);
                    }
                }
            }
            let frozen = map.clone();
            let frozen_reference = reference.clone();
            for (key, value) in reference.iter_mut() {
                *value += 1;
                *map.get_mut(key).unwrap() += 1;
            }
            assert_eq!(frozen.len(), frozen_reference.len());
            for (key, value) in frozen.iter() {
                assert_eq!(frozen_reference[key], *value, "a clone sees no later write");
            }
            for (key, value) in &reference {
                assert_eq!(map.get(key), Some(value));
            }
            assert_eq!(map.len(), reference.len());
            assert_eq!(map.get(&(u128::MAX - 1)), None);
            let (chunks, slots) = map.parts();
            let restored = DenseMap::from_parts(map.hasher, chunks.clone(), slots.clone()).unwrap();
            assert!(reference.iter().all(|(key, value)| restored.get(key) == Some(value)));
            let mut doubled = (*slots).clone();
            let (first, second) = {
                let mut used =
                    doubled.iter().enumerate().filter(|(_, slot)| **slot != 0).map(|(at, _)| at);
                (used.next().unwrap(), used.next().unwrap())
            };
            doubled[second] = doubled[first];
            assert!(
                DenseMap::from_parts(map.hasher, chunks.clone(), Arc::new(doubled)).is_err(),
                "an entry indexed twice"
            );
            let mut dropped = (*slots).clone();
            dropped[first] = 0;
            assert!(
                DenseMap::from_parts(map.hasher, chunks, Arc::new(dropped)).is_err(),
                "an entry not indexed"
            );
            if round == 1 {
                map.clear();
                reference.clear();
                assert!(map.is_empty() && frozen.len() == frozen_reference.len());
            }
        }
    }
}

#[cfg(test)]
mod probe_lengths {
    use super::*;

    /// Op ids are mostly time in the high bits and a counter in the low bits; the keyed hash
    /// must still spread them (a bad mix shows up as long probe runs long before it shows up
    /// as a slow benchmark).
    #[test]
    fn sequential_op_ids_spread_over_the_index() {
        for key in [[0u64, 0], [0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321]] {
            let mut map = DenseMap::<u64>::with_hasher(KeyHasherBuilder { key });
            let t0_ms: u128 = 1_800_000_000_000;
            for seq in 0..200_000u128 {
                map.insert_new((t0_ms + seq / 1000) << 80 | (seq * 7 + 3), 0);
            }
            let mask = map.slots.len() - 1;
            let (mut total, mut longest) = (0usize, 0usize);
            for (index, (key, _)) in map.iter().enumerate() {
                let mut slot = DenseMap::<u64>::home_slot(map.hasher.hash_one(key), mask);
                let mut probes = 1;
                while map.slots[slot] & 0xFFFF_FFFF != index as u64 + 1 {
                    slot = (slot + 1) & mask;
                    probes += 1;
                }
                total += probes;
                longest = longest.max(probes);
            }
            let mean = total as f64 / map.len() as f64;
            assert!(
                mean < 2.5 && longest < 100,
                "key {key:?}: mean probes {mean:.2}, longest {longest}"
            );
        }
    }
}
