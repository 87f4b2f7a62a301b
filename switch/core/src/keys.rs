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

/// The file under the data directory holding the keys (the server creates it, mode 0600).
pub const KEY_FILE: &str = "keys.bin";
const KEY_FILE_MAGIC: &[u8; 8] = b"PSKEYS01";

/// The switch's secrets: the PIN key (card names, foreign PIN names, the table seed) and the
/// password key (password MACs). No `Debug`, so they cannot end up in a log line.
#[derive(Clone)]
pub struct Keys {
    pin_key: [u8; 16],
    password_key: [u8; 16],
}

impl Keys {
    /// The keys made of 32 secret bytes (the PIN key first).
    pub fn from_secret(secret: &[u8; 32]) -> Keys {
        let mut keys = Keys { pin_key: [0; 16], password_key: [0; 16] };
        keys.pin_key.copy_from_slice(&secret[..16]);
        keys.password_key.copy_from_slice(&secret[16..]);
        keys
    }

    /// The keys a `keys.bin` holds; `None` when the bytes are not a key file (wrong length or
    /// magic): a damaged key file would rename every card, so nobody may guess around it.
    pub fn from_file_bytes(bytes: &[u8]) -> Option<Keys> {
        let rest = bytes.strip_prefix(KEY_FILE_MAGIC)?;
        let secret: &[u8; 32] = rest.try_into().ok()?;
        Some(Keys::from_secret(secret))
    }

    /// The contents of `keys.bin` for these keys.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut contents = KEY_FILE_MAGIC.to_vec();
        contents.extend_from_slice(&self.pin_key);
        contents.extend_from_slice(&self.password_key);
        contents
    }

    /// The name of the card with this PIN inside the switch.
    pub fn pin_hash(&self, pin: u64) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.pin_key);
        hasher.write_u64(pin);
        hasher.finish128().as_u128()
    }

    /// A foreign PIN's keyed hash: it routes the PIN to a shard and names it there (a code
    /// imported twice is refused). Keyed like PINs, with its own domain, so codes cannot be
    /// chosen to pile onto one shard and a foreign code never collides with a card's name.
    pub fn foreign_hash(&self, code: &[u8]) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.pin_key);
        hasher.write(b"pinswitch foreign pin\0");
        hasher.write(code);
        hasher.finish128().as_u128()
    }

    /// The secret seed of the shards' hash tables (op ids are client-chosen: without a secret
    /// seed a client could flood one probe sequence). Derived, so `keys.bin` stays two keys.
    #[expect(clippy::cast_possible_truncation, reason = "the seed's low and high 64-bit halves")]
    pub fn table_key(&self) -> [u64; 2] {
        let mut hasher = SipHasher128::new_with_key(&self.pin_key);
        hasher.write(b"pinswitch shard table seed");
        let seed = hasher.finish128().as_u128();
        [seed as u64, (seed >> 64) as u64]
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
        let keys = Keys::from_secret(&secret);
        let bytes = keys.file_bytes();
        assert_eq!(bytes.len(), 40);
        let again = Keys::from_file_bytes(&bytes).unwrap();
        assert_eq!(keys.pin_hash(42), again.pin_hash(42));
        assert_eq!(keys.password_mac(1, b"1234"), again.password_mac(1, b"1234"));
        assert!(Keys::from_file_bytes(&bytes[..39]).is_none());
        let mut bad_magic = bytes.clone();
        bad_magic[0] ^= 1;
        assert!(Keys::from_file_bytes(&bad_magic).is_none());
        assert!(Keys::from_file_bytes(&[bytes, vec![0]].concat()).is_none());
    }

    #[test]
    fn hashes_are_keyed_and_separated() {
        let keys = Keys::from_secret(&[7; 32]);
        let other = Keys::from_secret(&[8; 32]);
        assert_ne!(keys.pin_hash(42), keys.pin_hash(43));
        assert_ne!(keys.pin_hash(42), other.pin_hash(42));
        assert_ne!(keys.foreign_hash(&42u64.to_le_bytes()), keys.pin_hash(42));
        assert_ne!(keys.password_mac(1, b"1234"), keys.password_mac(1, b"1235"));
        assert_ne!(keys.password_mac(1, b"1234"), keys.password_mac(2, b"1234"));
        assert_ne!(keys.password_mac(1, b""), 0);
    }
}
