//! The switch's keys and what is derived from them, as pure functions. The keyed hash that
//! names a card instead of its PIN (so journals, snapshots and memory never hold a clear PIN), a
//! foreign PIN's keyed hash, the seed of the shards' tables, the keyed MAC that verifies a
//! password (fast enough for the hot path, like a bank's PIN verification value), and the
//! layout of `keys.bin` that holds the secrets. It lives here, not in the server, because
//! the switch and the settlement exporter (statements are asked for by PIN) must name a card by
//! the very same function, and the exporter may not depend on the server. Reading, creating and
//! drawing the keys (files, the OS random source) stay with the processes that do it.
//!
//! **Rotation.** The PIN key may be rotated: a new key (the next key id) names the cards issued
//! from then on, and the older keys stay in the file to find the cards they named. A PIN has a
//! name under every key (`CardNames`); the switch tries the newest first, then the older ones
//! (the server resolves which one names a card before a command is journaled). Every name of
//! one PIN lands on the same shard: a later key's name keeps its own bits except that its high
//! half is moved into the residue class, modulo the shard count, of the first key's name, which
//! is what routing reads (so the name depends on the data directory's fixed shard count, and it
//! reveals of the first key's name only what routing already does). The password MAC is taken
//! over the first key's name, so a card's password does not depend on which key names it; the
//! foreign-PIN hash and the table seed stay under the first key as well, as they must (they
//! name foreign codes and seed snapshots already written). The password key is not rotated: a
//! new one would verify no password registered under the old.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};

use crate::types::PinHash;

/// The key file's default name under the data directory (`[server] keys_file` may put it
/// elsewhere; the server creates it, mode 0600).
pub const KEY_FILE: &str = "keys.bin";
/// Version 1 (before key ids): the magic, the PIN key, the password key; 40 bytes. Still read.
const KEY_FILE_MAGIC_V1: &[u8; 8] = b"PSKEYS01";
/// Version 2, one PIN key: the magic, the key id (`u32` LE), the PIN key, the password key;
/// 44 bytes. Written while there is one key (so a file never rotated stays readable by the
/// releases before rotation).
const KEY_FILE_MAGIC_V2: &[u8; 8] = b"PSKEYS02";
/// Version 3, rotated: the magic, the PIN key count (`u32` LE), each PIN key oldest first as
/// its key id (`u32` LE) and 16 key bytes, then the password key.
const KEY_FILE_MAGIC_V3: &[u8; 8] = b"PSKEYS03";
/// The PIN key alone (what the exporter gets), one key: the magic, the key id, the PIN key;
/// 28 bytes.
const PIN_KEY_FILE_MAGIC_V2: &[u8; 8] = b"PSPINK02";
/// The PIN keys alone, rotated: the magic, the count, each key id and key, oldest first.
const PIN_KEY_FILE_MAGIC_V3: &[u8; 8] = b"PSPINK03";
/// The key id of keys made before key files carried one.
const FIRST_KEY_ID: u32 = 1;
/// The most PIN keys a key file may hold (each lookup of a card named by an old key tries the
/// keys newer than it first).
pub const PIN_KEYS_MAX: usize = 16;

/// The switch's secrets: the PIN keys (card names, foreign PIN names, the table seed) and the
/// password key (password MACs). No `Debug`, so they cannot end up in a log line.
#[derive(Clone)]
pub struct Keys {
    pins: PinKeys,
    password_key: [u8; 16],
}

/// The PIN keys alone, oldest first, with their key ids (strictly rising): all that naming a
/// card by its PIN needs (the exporter's statements), and nothing that verifies a password.
/// Never empty. No `Debug`.
#[derive(Clone)]
pub struct PinKeys {
    keys: Vec<PinKey>,
}

#[derive(Clone)]
struct PinKey {
    key_id: u32,
    key: [u8; 16],
}

/// The names one PIN has under the PIN keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardNames {
    /// Under the newest key: a new card's name, and the one tried first.
    pub newest: PinHash,
    /// Under the older keys, newest first (empty while there is one key).
    pub older: Vec<PinHash>,
    /// Under the first key: what the password MAC is taken over.
    pub first: PinHash,
}

/// What a key file holds, by its magic.
pub enum KeyFile {
    /// The switch's keys (`keys.bin`, version 1, 2 or 3).
    Both(Keys),
    /// The PIN keys alone (`pinswitch keys export-pin`).
    PinOnly(PinKeys),
}

impl KeyFile {
    /// The keys a key file holds; `None` when the bytes are no key file of a known version
    /// (wrong length or magic, key ids not rising, too many keys): a damaged key file would
    /// rename every card, so nobody may guess around it.
    pub fn parse(bytes: &[u8]) -> Option<KeyFile> {
        let (magic, rest) = bytes.split_first_chunk::<8>()?;
        match magic {
            KEY_FILE_MAGIC_V1 => {
                let secret: &[u8; 32] = rest.try_into().ok()?;
                Some(KeyFile::Both(Keys::from_secret(FIRST_KEY_ID, secret)))
            }
            KEY_FILE_MAGIC_V2 => {
                let (key_id, secret) = rest.split_first_chunk::<4>()?;
                let secret: &[u8; 32] = secret.try_into().ok()?;
                Some(KeyFile::Both(Keys::from_secret(u32::from_le_bytes(*key_id), secret)))
            }
            KEY_FILE_MAGIC_V3 => {
                let (pins, rest) = PinKeys::parse_list(rest)?;
                let password_key: [u8; 16] = rest.try_into().ok()?;
                Some(KeyFile::Both(Keys { pins, password_key }))
            }
            PIN_KEY_FILE_MAGIC_V2 => {
                let (key_id, key) = rest.split_first_chunk::<4>()?;
                let key: &[u8; 16] = key.try_into().ok()?;
                let key = PinKey { key_id: u32::from_le_bytes(*key_id), key: *key };
                Some(KeyFile::PinOnly(PinKeys { keys: vec![key] }))
            }
            PIN_KEY_FILE_MAGIC_V3 => {
                let (pins, rest) = PinKeys::parse_list(rest)?;
                rest.is_empty().then_some(KeyFile::PinOnly(pins))
            }
            _ => None,
        }
    }
}

impl PinKey {
    fn hash(&self, pin: u64) -> PinHash {
        let mut hasher = SipHasher128::new_with_key(&self.key);
        hasher.write_u64(pin);
        hasher.finish128().as_u128()
    }
}

impl PinKeys {
    /// A count, then that many (key id, key) entries with rising ids; the bytes after them.
    fn parse_list(bytes: &[u8]) -> Option<(PinKeys, &[u8])> {
        let (count, mut rest) = bytes.split_first_chunk::<4>()?;
        let count = usize::try_from(u32::from_le_bytes(*count)).ok()?;
        if count == 0 || count > PIN_KEYS_MAX {
            return None;
        }
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let (key_id, after) = rest.split_first_chunk::<4>()?;
            let (key, after) = after.split_first_chunk::<16>()?;
            let key_id = u32::from_le_bytes(*key_id);
            if keys.last().is_some_and(|last: &PinKey| last.key_id >= key_id) {
                return None;
            }
            keys.push(PinKey { key_id, key: *key });
            rest = after;
        }
        Some((PinKeys { keys }, rest))
    }

    /// The count and the (key id, key) entries, oldest first.
    fn list_bytes(&self, contents: &mut Vec<u8>) {
        let count = u32::try_from(self.keys.len()).expect("at most PIN_KEYS_MAX keys");
        contents.extend_from_slice(&count.to_le_bytes());
        for key in &self.keys {
            contents.extend_from_slice(&key.key_id.to_le_bytes());
            contents.extend_from_slice(&key.key);
        }
    }

    fn first(&self) -> &PinKey {
        self.keys.first().expect("a key file holds a PIN key")
    }

    fn newest(&self) -> &PinKey {
        self.keys.last().expect("a key file holds a PIN key")
    }

    /// The newest key's id: the one new cards are named under.
    pub fn key_id(&self) -> u32 {
        self.newest().key_id
    }

    /// Every key id, oldest first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|key| key.key_id).collect()
    }

    /// The contents of a PIN-key file for these keys (version 2 while there is one key).
    pub fn file_bytes(&self) -> Vec<u8> {
        if let [key] = self.keys.as_slice() {
            let mut contents = PIN_KEY_FILE_MAGIC_V2.to_vec();
            contents.extend_from_slice(&key.key_id.to_le_bytes());
            contents.extend_from_slice(&key.key);
            return contents;
        }
        let mut contents = PIN_KEY_FILE_MAGIC_V3.to_vec();
        self.list_bytes(&mut contents);
        contents
    }

    /// The names of the card with this PIN inside a switch of `shard_count` shards (see the
    /// module's "Rotation"): with one key, the first key's keyed hash alone.
    pub fn names(&self, pin: u64, shard_count: u16) -> CardNames {
        let first = self.first().hash(pin);
        let mut later =
            self.keys[1..].iter().rev().map(|key| same_shard_as(first, key.hash(pin), shard_count));
        match later.next() {
            None => CardNames { newest: first, older: Vec::new(), first },
            Some(newest) => {
                let mut older: Vec<PinHash> = later.collect();
                older.push(first);
                CardNames { newest, older, first }
            }
        }
    }

    /// A foreign PIN's keyed hash: it routes the PIN to a shard and names it there (a code
    /// imported twice is refused). Keyed like PINs, with its own domain, so codes cannot be
    /// chosen to pile onto one shard and a foreign code never collides with a card's name.
    /// Under the first key, always: it names codes already imported.
    pub fn foreign_hash(&self, code: &[u8]) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.first().key);
        hasher.write(b"pinswitch foreign pin\0");
        hasher.write(code);
        hasher.finish128().as_u128()
    }

    /// The secret seed of the shards' hash tables (op ids are client-chosen: without a secret
    /// seed a client could flood one probe sequence). Derived from the first key, so rotating
    /// changes no table already written.
    #[expect(clippy::cast_possible_truncation, reason = "the seed's low and high 64-bit halves")]
    pub fn table_key(&self) -> [u64; 2] {
        let mut hasher = SipHasher128::new_with_key(&self.first().key);
        hasher.write(b"pinswitch shard table seed");
        let seed = hasher.finish128().as_u128();
        [seed as u64, (seed >> 64) as u64]
    }
}

/// `hash` with its high half moved into the residue class of `first`'s high half modulo
/// `shard_count` (routing reads `high % shard_count`): a later key's name on the first one's
/// shard, its other bits its own.
#[expect(clippy::cast_possible_truncation, reason = "the hash's high and low 64-bit halves")]
fn same_shard_as(first: PinHash, hash: PinHash, shard_count: u16) -> PinHash {
    assert!(shard_count > 0, "at least one shard");
    let modulus = u64::from(shard_count);
    let residue = ((first >> 64) as u64) % modulus;
    let high = (hash >> 64) as u64;
    let base = high - high % modulus;
    // At the very top of the range the class's member lies one modulus lower.
    let high = base.checked_add(residue).unwrap_or(base - modulus + residue);
    (u128::from(high) << 64) | u128::from(hash as u64)
}

impl Keys {
    /// The keys made of 32 secret bytes (the PIN key first), under `key_id`.
    pub fn from_secret(key_id: u32, secret: &[u8; 32]) -> Keys {
        let mut pin = PinKey { key_id, key: [0; 16] };
        pin.key.copy_from_slice(&secret[..16]);
        let mut password_key = [0; 16];
        password_key.copy_from_slice(&secret[16..]);
        Keys { pins: PinKeys { keys: vec![pin] }, password_key }
    }

    /// New keys' id: the first (rotation gives each later PIN key the next id).
    pub fn first_key_id() -> u32 {
        FIRST_KEY_ID
    }

    /// The keys a `keys.bin` holds; `None` for anything else, a PIN-key file included.
    pub fn from_file_bytes(bytes: &[u8]) -> Option<Keys> {
        match KeyFile::parse(bytes)? {
            KeyFile::Both(keys) => Some(keys),
            KeyFile::PinOnly(_) => None,
        }
    }

    /// The contents of `keys.bin` for these keys (version 2 while there is one PIN key, else
    /// version 3).
    pub fn file_bytes(&self) -> Vec<u8> {
        if let [pin] = self.pins.keys.as_slice() {
            let mut contents = KEY_FILE_MAGIC_V2.to_vec();
            contents.extend_from_slice(&pin.key_id.to_le_bytes());
            contents.extend_from_slice(&pin.key);
            contents.extend_from_slice(&self.password_key);
            return contents;
        }
        let mut contents = KEY_FILE_MAGIC_V3.to_vec();
        self.pins.list_bytes(&mut contents);
        contents.extend_from_slice(&self.password_key);
        contents
    }

    /// The keys with `new_key` as the newest PIN key, under the next key id: cards issued from
    /// then on are named by it. Refused past `PIN_KEYS_MAX` keys.
    pub fn rotated(&self, new_key: [u8; 16]) -> Result<Keys, String> {
        if self.pins.keys.len() >= PIN_KEYS_MAX {
            return Err(format!("the key file holds {PIN_KEYS_MAX} PIN keys, the most it may"));
        }
        let key_id = self.key_id().checked_add(1).ok_or("no key id after u32::MAX")?;
        let mut keys = self.clone();
        keys.pins.keys.push(PinKey { key_id, key: new_key });
        Ok(keys)
    }

    /// The newest PIN key's id.
    pub fn key_id(&self) -> u32 {
        self.pins.key_id()
    }

    /// The PIN keys alone, for the exporter.
    pub fn pin_keys(&self) -> &PinKeys {
        &self.pins
    }

    /// The names of the card with this PIN (`PinKeys::names`).
    pub fn names(&self, pin: u64, shard_count: u16) -> CardNames {
        self.pins.names(pin, shard_count)
    }

    /// A foreign PIN's keyed hash (`PinKeys::foreign_hash`).
    pub fn foreign_hash(&self, code: &[u8]) -> u128 {
        self.pins.foreign_hash(code)
    }

    /// The seed of the shards' tables (`PinKeys::table_key`).
    pub fn table_key(&self) -> [u64; 2] {
        self.pins.table_key()
    }

    /// The secret key of approval codes (engine format 2), journaled in each shard's UPGRADE
    /// record. Derived like the table seed, in its own domain.
    #[expect(clippy::cast_possible_truncation, reason = "the key's low and high 64-bit halves")]
    pub fn approval_key(&self) -> [u64; 2] {
        let mut hasher = SipHasher128::new_with_key(&self.password_key);
        hasher.write(b"pinswitch approval codes");
        let key = hasher.finish128().as_u128();
        [key as u64, (key >> 64) as u64]
    }

    /// The low 80 bits of an op id a front end derives from a foreign protocol's own names of a
    /// transaction (ISO 8583: the kind, the card acceptor, the terminal, the trace number and
    /// the transmission time), so a retransmission maps to the same op id. Keyed, so nobody
    /// can compute another sender's op id from what crosses the wire; derived from the
    /// password key, which a rotation keeps, so the same message maps the same way across one.
    pub fn front_end_op_bits(&self, parts: &[&[u8]]) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.password_key);
        hasher.write(b"pinswitch front-end op ids");
        for part in parts {
            // Lengths first: ("ab", "c") and ("a", "bc") are different names.
            hasher.write_usize(part.len());
            hasher.write(part);
        }
        hasher.finish128().as_u128() & ((1u128 << 80) - 1)
    }

    /// The verification value of a password for one card, taken over the card's name under
    /// the first key (`CardNames::first`), whichever key names the card.
    pub fn password_mac(&self, first_name: PinHash, password: &[u8]) -> u64 {
        let mut hasher = SipHasher24::new_with_key(&self.password_key);
        hasher.write_u128(first_name);
        hasher.write(password);
        // 0 means "no password given" (sessions, event charges) and "none registered" (an
        // issued card): a real password's MAC never takes it.
        hasher.finish().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(keys: &Keys, pin: u64) -> PinHash {
        keys.names(pin, 4).newest
    }

    #[test]
    fn the_key_file_round_trips_and_damage_is_refused() {
        let secret: [u8; 32] = std::array::from_fn(|at| u8::try_from(at).unwrap());
        let keys = Keys::from_secret(7, &secret);
        let bytes = keys.file_bytes();
        assert_eq!(bytes.len(), 44);
        let again = Keys::from_file_bytes(&bytes).unwrap();
        assert_eq!(again.key_id(), 7);
        assert_eq!(name(&keys, 42), name(&again, 42));
        assert_eq!(keys.password_mac(1, b"1234"), again.password_mac(1, b"1234"));
        assert!(Keys::from_file_bytes(&bytes[..43]).is_none());
        let mut bad_magic = bytes.clone();
        bad_magic[0] ^= 1;
        assert!(Keys::from_file_bytes(&bad_magic).is_none());
        assert!(Keys::from_file_bytes(&[bytes, vec![0]].concat()).is_none());
    }

    #[test]
    fn version_1_files_are_read_as_key_id_1() {
        let secret = [9u8; 32];
        let v1 = [b"PSKEYS01".as_slice(), &secret].concat();
        let keys = Keys::from_file_bytes(&v1).unwrap();
        assert_eq!(keys.key_id(), 1);
        assert_eq!(name(&keys, 42), name(&Keys::from_secret(1, &secret), 42));
        assert!(Keys::from_file_bytes(&v1[..39]).is_none());
    }

    #[test]
    fn the_pin_key_file_names_cards_and_holds_no_password_key() {
        let secret: [u8; 32] = std::array::from_fn(|at| u8::try_from(at).unwrap());
        for keys in
            [Keys::from_secret(3, &secret), Keys::from_secret(3, &secret).rotated([5; 16]).unwrap()]
        {
            let bytes = keys.pin_keys().file_bytes();
            let expected_len = if keys.key_id() == 3 { 28 } else { 12 + 2 * 20 };
            assert_eq!(bytes.len(), expected_len, "magic, key ids, the PIN keys");
            assert!(!bytes.windows(16).any(|window| window == &secret[16..]), "no password key");
            let Some(KeyFile::PinOnly(pins)) = KeyFile::parse(&bytes) else {
                panic!("a PIN-key file")
            };
            assert_eq!(pins.key_id(), keys.key_id());
            assert_eq!(pins.names(42, 4), keys.names(42, 4));
            assert!(Keys::from_file_bytes(&bytes).is_none(), "not a full key file");
            assert!(KeyFile::parse(&bytes[..bytes.len() - 1]).is_none());
        }
    }

    #[test]
    fn hashes_are_keyed_and_separated() {
        let keys = Keys::from_secret(1, &[7; 32]);
        let other = Keys::from_secret(1, &[8; 32]);
        assert_ne!(name(&keys, 42), name(&keys, 43));
        assert_ne!(name(&keys, 42), name(&other, 42));
        assert_ne!(keys.foreign_hash(&42u64.to_le_bytes()), name(&keys, 42));
        assert_ne!(keys.password_mac(1, b"1234"), keys.password_mac(1, b"1235"));
        assert_ne!(keys.password_mac(1, b"1234"), keys.password_mac(2, b"1234"));
        assert_ne!(keys.password_mac(1, b""), 0);
    }

    /// A rotated key file: version 3 round trips; the first key's names, the foreign hash, the
    /// table seed and the approval key stay what they were; a new key names new cards on the
    /// shard the first key's name routes to; the older names come newest first.
    #[test]
    fn rotation_adds_a_newest_key_and_keeps_every_name_on_its_shard() {
        let keys = Keys::from_secret(1, &[7; 32]);
        let rotated = keys.rotated([8; 16]).unwrap().rotated([9; 16]).unwrap();
        assert_eq!(rotated.pin_keys().key_ids(), vec![1, 2, 3]);
        let bytes = rotated.file_bytes();
        assert_eq!(&bytes[..8], b"PSKEYS03");
        assert_eq!(bytes.len(), 12 + 3 * 20 + 16);
        let again = Keys::from_file_bytes(&bytes).unwrap();
        assert_eq!(again.names(42, 3), rotated.names(42, 3));
        assert_eq!(rotated.table_key(), keys.table_key());
        assert_eq!(rotated.approval_key(), keys.approval_key());
        assert_eq!(rotated.foreign_hash(b"code"), keys.foreign_hash(b"code"));
        for shard_count in [1, 2, 3, 7, 64, u16::MAX] {
            for pin in 0..500u64 {
                let before = keys.names(pin, shard_count);
                let names = rotated.names(pin, shard_count);
                assert_eq!((before.newest, before.first), (names.first, names.first));
                assert!(before.older.is_empty());
                assert_eq!(names.older.len(), 2);
                assert_eq!(names.older[1], names.first);
                let shard = crate::shard_of_card(names.first, shard_count);
                for other in std::iter::once(names.newest).chain(names.older.iter().copied()) {
                    assert_eq!(crate::shard_of_card(other, shard_count), shard);
                }
                assert_ne!(names.newest, names.older[0]);
                assert_ne!(names.newest, names.first);
            }
        }
        // Damage: ids not rising, no keys, too many keys.
        let mut swapped = bytes.clone();
        swapped[12..16].copy_from_slice(&5u32.to_le_bytes());
        assert!(Keys::from_file_bytes(&swapped).is_none());
        let mut none = bytes.clone();
        none[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Keys::from_file_bytes(&none).is_none());
        let mut full = keys.clone();
        for at in 1..PIN_KEYS_MAX {
            full = full.rotated([u8::try_from(at).unwrap(); 16]).unwrap();
        }
        assert!(full.rotated([0; 16]).is_err());
        assert!(Keys::from_file_bytes(&full.file_bytes()).is_some());
    }

    #[test]
    fn a_name_at_the_top_of_the_range_stays_in_its_class() {
        let top = u128::MAX;
        for shard_count in [3u16, 7, 10] {
            let first = 2u128 << 64;
            let moved = same_shard_as(first, top, shard_count);
            assert_eq!(
                crate::shard_of_card(moved, shard_count),
                crate::shard_of_card(first, shard_count)
            );
            assert_eq!(moved as u64, u64::MAX, "the low half is kept");
        }
    }
}
