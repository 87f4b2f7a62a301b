//! The switch's keys and what is derived from them, as pure functions. The keyed hash that
//! names a card instead of its PIN (so journals, snapshots and memory never hold a clear PIN), a
//! foreign PIN's keyed hash, the seed of the shards' tables, the keyed MAC that verifies a
//! password (fast enough for the hot path, like a bank's PIN verification value), and the
//! layout of `keys.bin` that holds the two secrets. It lives here, not in the server, because
//! the switch and the settlement exporter (statements are asked for by PIN) must name a card by
//! the very same function, and the exporter may not depend on the server. Reading, creating and
//! drawing the keys (files, the OS random source) stay with the processes that do it.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};

/// The key file's default name under the data directory (`[server] keys_file` may put it
/// elsewhere; the server creates it, mode 0600).
pub const KEY_FILE: &str = "keys.bin";
/// Version 1 (before key ids): the magic, the PIN key, the password key; 40 bytes. Still read.
const KEY_FILE_MAGIC_V1: &[u8; 8] = b"PSKEYS01";
/// Version 2: the magic, the key id (`u32` LE), the PIN key, the password key; 44 bytes.
const KEY_FILE_MAGIC_V2: &[u8; 8] = b"PSKEYS02";
/// The PIN key alone (what the exporter gets): the magic, the key id, the PIN key; 28 bytes.
const PIN_KEY_FILE_MAGIC: &[u8; 8] = b"PSPINK02";
/// The key id of keys made before key files carried one.
const FIRST_KEY_ID: u32 = 1;

/// The switch's secrets: the PIN key (card names, foreign PIN names, the table seed) and the
/// password key (password MACs), under one key id. No `Debug`, so they cannot end up in a log
/// line.
#[derive(Clone)]
pub struct Keys {
    pin: PinKey,
    password_key: [u8; 16],
}

/// The PIN key alone, with its key id: all that naming a card by its PIN needs (the exporter's
/// statements), and nothing that verifies a password. No `Debug`.
#[derive(Clone)]
pub struct PinKey {
    key_id: u32,
    key: [u8; 16],
}

/// What a key file holds, by its magic.
pub enum KeyFile {
    /// The switch's two keys (`keys.bin`, version 1 or 2).
    Both(Keys),
    /// The PIN key alone (`pinswitch keys export-pin`).
    PinOnly(PinKey),
}

impl KeyFile {
    /// The keys a key file holds; `None` when the bytes are no key file of a known version
    /// (wrong length or magic): a damaged key file would rename every card, so nobody may guess
    /// around it.
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
            PIN_KEY_FILE_MAGIC => {
                let (key_id, key) = rest.split_first_chunk::<4>()?;
                let key: &[u8; 16] = key.try_into().ok()?;
                Some(KeyFile::PinOnly(PinKey { key_id: u32::from_le_bytes(*key_id), key: *key }))
            }
            _ => None,
        }
    }
}

impl PinKey {
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The contents of a PIN-key file for this key.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut contents = PIN_KEY_FILE_MAGIC.to_vec();
        contents.extend_from_slice(&self.key_id.to_le_bytes());
        contents.extend_from_slice(&self.key);
        contents
    }

    /// The name of the card with this PIN inside the switch (`Keys::pin_hash`).
    pub fn pin_hash(&self, pin: u64) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.key);
        hasher.write_u64(pin);
        hasher.finish128().as_u128()
    }
}

impl Keys {
    /// The keys made of 32 secret bytes (the PIN key first), under `key_id`.
    pub fn from_secret(key_id: u32, secret: &[u8; 32]) -> Keys {
        let mut keys = Keys { pin: PinKey { key_id, key: [0; 16] }, password_key: [0; 16] };
        keys.pin.key.copy_from_slice(&secret[..16]);
        keys.password_key.copy_from_slice(&secret[16..]);
        keys
    }

    /// New keys' id: the first (rotation, which would give later keys higher ids, is not built).
    pub fn first_key_id() -> u32 {
        FIRST_KEY_ID
    }

    /// The two keys a `keys.bin` holds; `None` for anything else, a PIN-key file included.
    pub fn from_file_bytes(bytes: &[u8]) -> Option<Keys> {
        match KeyFile::parse(bytes)? {
            KeyFile::Both(keys) => Some(keys),
            KeyFile::PinOnly(_) => None,
        }
    }

    /// The contents of `keys.bin` (version 2) for these keys.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut contents = KEY_FILE_MAGIC_V2.to_vec();
        contents.extend_from_slice(&self.pin.key_id.to_le_bytes());
        contents.extend_from_slice(&self.pin.key);
        contents.extend_from_slice(&self.password_key);
        contents
    }

    pub fn key_id(&self) -> u32 {
        self.pin.key_id
    }

    /// The PIN key alone, for the exporter.
    pub fn pin_key(&self) -> &PinKey {
        &self.pin
    }

    /// The name of the card with this PIN inside the switch.
    pub fn pin_hash(&self, pin: u64) -> u128 {
        self.pin.pin_hash(pin)
    }

    /// A foreign PIN's keyed hash: it routes the PIN to a shard and names it there (a code
    /// imported twice is refused). Keyed like PINs, with its own domain, so codes cannot be
    /// chosen to pile onto one shard and a foreign code never collides with a card's name.
    pub fn foreign_hash(&self, code: &[u8]) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.pin.key);
        hasher.write(b"pinswitch foreign pin\0");
        hasher.write(code);
        hasher.finish128().as_u128()
    }

    /// The secret seed of the shards' hash tables (op ids are client-chosen: without a secret
    /// seed a client could flood one probe sequence). Derived, so `keys.bin` stays two keys.
    #[expect(clippy::cast_possible_truncation, reason = "the seed's low and high 64-bit halves")]
    pub fn table_key(&self) -> [u64; 2] {
        let mut hasher = SipHasher128::new_with_key(&self.pin.key);
        hasher.write(b"pinswitch shard table seed");
        let seed = hasher.finish128().as_u128();
        [seed as u64, (seed >> 64) as u64]
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

    /// The verification value of a password for one card.
    pub fn password_mac(&self, pin_hash: u128, password: &[u8]) -> u64 {
        let mut hasher = SipHasher24::new_with_key(&self.password_key);
        hasher.write_u128(pin_hash);
        hasher.write(password);
        // 0 means "no password given" (sessions, event charges) and "none registered" (an
        // issued card): a real password's MAC never takes it.
        hasher.finish().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_round_trips_and_damage_is_refused() {
        let secret: [u8; 32] = std::array::from_fn(|at| u8::try_from(at).unwrap());
        let keys = Keys::from_secret(7, &secret);
        let bytes = keys.file_bytes();
        assert_eq!(bytes.len(), 44);
        let again = Keys::from_file_bytes(&bytes).unwrap();
        assert_eq!(again.key_id(), 7);
        assert_eq!(keys.pin_hash(42), again.pin_hash(42));
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
        assert_eq!(keys.pin_hash(42), Keys::from_secret(1, &secret).pin_hash(42));
        assert!(Keys::from_file_bytes(&v1[..39]).is_none());
    }

    #[test]
    fn the_pin_key_file_names_cards_and_holds_no_password_key() {
        let secret: [u8; 32] = std::array::from_fn(|at| u8::try_from(at).unwrap());
        let keys = Keys::from_secret(3, &secret);
        let bytes = keys.pin_key().file_bytes();
        assert_eq!(bytes.len(), 28, "magic, key id, the PIN key");
        assert!(!bytes.windows(16).any(|window| window == &secret[16..]), "no password key");
        let Some(KeyFile::PinOnly(pin_key)) = KeyFile::parse(&bytes) else {
            panic!("a PIN-key file")
        };
        assert_eq!((pin_key.key_id(), pin_key.pin_hash(42)), (3, keys.pin_hash(42)));
        assert!(Keys::from_file_bytes(&bytes).is_none(), "not a full key file");
        assert!(KeyFile::parse(&bytes[..27]).is_none());
    }

    #[test]
    fn hashes_are_keyed_and_separated() {
        let keys = Keys::from_secret(1, &[7; 32]);
        let other = Keys::from_secret(1, &[8; 32]);
        assert_ne!(keys.pin_hash(42), keys.pin_hash(43));
        assert_ne!(keys.pin_hash(42), other.pin_hash(42));
        assert_ne!(keys.foreign_hash(&42u64.to_le_bytes()), keys.pin_hash(42));
        assert_ne!(keys.password_mac(1, b"1234"), keys.password_mac(1, b"1235"));
        assert_ne!(keys.password_mac(1, b"1234"), keys.password_mac(2, b"1234"));
        assert_ne!(keys.password_mac(1, b""), 0);
    }
}
