//! The switch's secrets and what it derives from them: the keyed hash that names a card instead
//! of its PIN (so journals, snapshots and memory never hold a clear PIN), the keyed MAC that
//! verifies a password (fast enough for the hot path, like a bank's PIN verification value),
//! and PIN generation from the operating system's CSPRNG.

use std::hash::Hasher;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};

/// File under the data directory holding the keys; created with mode 0600 on first start.
pub(crate) const KEY_FILE: &str = "keys.bin";
const KEY_FILE_MAGIC: &[u8; 8] = b"PSKEYS01";

#[derive(Clone)]
pub(crate) struct Keys {
    pin_key: [u8; 16],
    password_key: [u8; 16],
}

impl Keys {
    /// Loads the keys from the data directory, creating them from the CSPRNG on first start.
    pub(crate) fn load_or_create(data_dir: &Path) -> anyhow::Result<Keys> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                if bytes.len() != 40 || &bytes[..8] != KEY_FILE_MAGIC {
                    bail!("key file {} is damaged; refusing to start", path.display());
                }
                let mut keys = Keys { pin_key: [0; 16], password_key: [0; 16] };
                keys.pin_key.copy_from_slice(&bytes[8..24]);
                keys.password_key.copy_from_slice(&bytes[24..40]);
                Ok(keys)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret)
                    .map_err(|error| anyhow::anyhow!("{error}"))
                    .context("drawing keys from the OS random source")?;
                let mut keys = Keys { pin_key: [0; 16], password_key: [0; 16] };
                keys.pin_key.copy_from_slice(&secret[..16]);
                keys.password_key.copy_from_slice(&secret[16..]);
                let mut contents = KEY_FILE_MAGIC.to_vec();
                contents.extend_from_slice(&secret);
                write_private(&path, &contents)?;
                Ok(keys)
            }
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The name of the card with this PIN inside the switch.
    pub(crate) fn pin_hash(&self, pin: u64) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.pin_key);
        hasher.write_u64(pin);
        hasher.finish128().as_u128()
    }

    /// A foreign PIN's keyed hash: it routes the PIN to a shard and names it there (a code
    /// imported twice is refused). Keyed like PINs, with its own domain, so codes cannot be
    /// chosen to pile onto one shard and a foreign code never collides with a card's name.
    pub(crate) fn foreign_hash(&self, code: &[u8]) -> u128 {
        let mut hasher = SipHasher128::new_with_key(&self.pin_key);
        hasher.write(b"pinswitch foreign pin\0");
        hasher.write(code);
        hasher.finish128().as_u128()
    }

    /// The secret seed of the shards' hash tables (op ids are client-chosen: without a secret
    /// seed a client could flood one probe sequence). Derived, so `keys.bin` stays two keys.
    pub(crate) fn table_key(&self) -> [u64; 2] {
        let mut hasher = SipHasher128::new_with_key(&self.pin_key);
        hasher.write(b"pinswitch shard table seed");
        let seed = hasher.finish128().as_u128();
        #[expect(clippy::cast_possible_truncation, reason = "the cast keeps the low half")]
        let low = seed as u64;
        [low, (seed >> 64) as u64]
    }

    /// The verification value of a password for one card.
    pub(crate) fn password_mac(&self, pin_hash: u128, password: &[u8]) -> u64 {
        let mut hasher = SipHasher24::new_with_key(&self.password_key);
        hasher.write_u128(pin_hash);
        hasher.write(password);
        // 0 means "no password given" (sessions, event charges) and "none registered" (an
        // issued card): a real password's MAC never takes it.
        hasher.finish().max(1)
    }
}

/// Draws a fresh PIN: 15 uniformly random digits from the OS CSPRNG plus a Luhn check digit.
pub(crate) fn random_pin() -> anyhow::Result<u64> {
    const BODY_SPACE: u64 = 1_000_000_000_000_000;
    // Reject the top sliver of u64 so that `% BODY_SPACE` is uniform.
    let limit = u64::MAX - u64::MAX % BODY_SPACE;
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|error| anyhow::anyhow!("{error}"))
            .context("drawing a PIN from the OS random source")?;
        let value = u64::from_le_bytes(bytes);
        if value < limit {
            return Ok(pinswitch_protocol::pin::with_check_digit(value % BODY_SPACE));
        }
    }
}

/// Creates `path` (never overwriting an existing file) readable by its owner only, durably.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_hashes_are_keyed() {
        let dir = std::env::temp_dir().join(format!("pinswitch-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let first = Keys::load_or_create(&dir).expect("create");
        let again = Keys::load_or_create(&dir).expect("load");
        assert_eq!(first.pin_hash(42), again.pin_hash(42));
        assert_ne!(first.pin_hash(42), first.pin_hash(43));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(1, b"1235"));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(2, b"1234"));
        let pin = random_pin().expect("pin");
        assert!(pinswitch_protocol::pin::is_valid(pin));
        assert_ne!(pin, random_pin().expect("pin"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
