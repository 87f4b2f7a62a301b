//! The switch's keys on disk, and fresh PINs. The key file (`keys.bin` in the data directory,
//! or `[server] keys_file`) is read at start, or drawn from the operating system's CSPRNG and
//! written (mode 0600) on the first start; `pinswitch keys export-pin` writes the PIN key alone
//! for the exporter. New PINs come from the same source. What is derived from the keys (card
//! names, password MACs, the table seed) is `pinswitch_core::keys`, pure, and shared with the
//! exporter.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use pinswitch_core::keys::KEY_FILE;
use pinswitch_core::{CardNames, PinHash};

/// The switch's keys as its front ends use them: a PIN's names in this data directory (its
/// shard count is fixed, and a rotated key's names depend on it), password MACs, foreign
/// hashes. No `Debug`.
#[derive(Clone)]
pub(crate) struct Keys {
    keys: pinswitch_core::Keys,
    shard_count: u16,
}

impl Keys {
    pub(crate) fn new(keys: pinswitch_core::Keys, shard_count: u16) -> Keys {
        Keys { keys, shard_count }
    }

    /// The names of the card with this PIN (newest key first; see `pinswitch_core::keys`).
    pub(crate) fn names(&self, pin: u64) -> CardNames {
        self.keys.names(pin, self.shard_count)
    }

    /// The names under the keys before the newest, newest first: empty until a rotation, so
    /// the front end asks the shard to try them only then.
    pub(crate) fn older_names(&self, pin: u64) -> Vec<PinHash> {
        if self.keys.pin_keys().key_ids().len() == 1 {
            return Vec::new();
        }
        self.names(pin).older
    }

    pub(crate) fn password_mac(&self, first_name: PinHash, password: &[u8]) -> u64 {
        self.keys.password_mac(first_name, password)
    }

    pub(crate) fn foreign_hash(&self, code: &[u8]) -> u128 {
        self.keys.foreign_hash(code)
    }

    /// The low bits of a front end's derived op id (`pinswitch_core::Keys::front_end_op_bits`).
    pub(crate) fn front_end_op_bits(&self, parts: &[&[u8]]) -> u128 {
        self.keys.front_end_op_bits(parts)
    }
}

/// Where the key file is: `[server] keys_file`, or `keys.bin` in the data directory.
pub(crate) fn key_file_path(data_dir: &Path, keys_file: &Path) -> std::path::PathBuf {
    if keys_file.as_os_str().is_empty() { data_dir.join(KEY_FILE) } else { keys_file.to_owned() }
}

/// Loads the keys from `path`, creating them from the CSPRNG on first start (only where no
/// journal exists yet: new keys would name none of the cards already journaled).
pub(crate) fn load_or_create(path: &Path, fresh: bool) -> anyhow::Result<pinswitch_core::Keys> {
    match std::fs::read(path) {
        Ok(bytes) => match pinswitch_core::Keys::from_file_bytes(&bytes) {
            Some(keys) => Ok(keys),
            None => bail!("key file {} is damaged; refusing to start", path.display()),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !fresh => Err(error)
            .with_context(|| {
                format!(
                    "the key file {} is missing but the data directory holds journals: new keys \
                     would name none of their cards; restore the key file (or set [server] \
                     keys_file to where it is)",
                    path.display()
                )
            }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|error| anyhow::anyhow!("{error}"))
                .context("drawing keys from the OS random source")?;
            let keys =
                pinswitch_core::Keys::from_secret(pinswitch_core::Keys::first_key_id(), &secret);
            write_private(path, &keys.file_bytes())?;
            Ok(keys)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// `pinswitch keys export-pin`: writes the PIN keys of the key file at `keys` alone to `out`
/// (created new, mode 0600): what the exporter needs to find a card by its PIN, without the
/// password key. Returns the newest key id.
pub(crate) fn export_pin_key(keys: &Path, out: &Path) -> anyhow::Result<u32> {
    let keys_read = read_keys(keys)?;
    write_private(out, &keys_read.pin_keys().file_bytes())?;
    Ok(keys_read.key_id())
}

/// `pinswitch keys rotate`: adds a new PIN key, drawn from the OS CSPRNG, under the next key
/// id, and replaces the key file with one that holds it (written beside it, synced, renamed
/// over it, the directory synced: a crash leaves the old file or the new one). A running
/// switch goes on with the keys it read; from its next start the new key names the cards it
/// issues, and the older keys still find theirs. Returns the new key id.
pub(crate) fn rotate(keys: &Path) -> anyhow::Result<u32> {
    let rotated = read_keys(keys)?.rotated(random_key()?).map_err(anyhow::Error::msg)?;
    let temporary = keys.with_extension("rotating");
    let _ = std::fs::remove_file(&temporary);
    write_private(&temporary, &rotated.file_bytes())?;
    std::fs::rename(&temporary, keys)
        .with_context(|| format!("renaming {} over {}", temporary.display(), keys.display()))?;
    let directory = keys.parent().filter(|parent| !parent.as_os_str().is_empty());
    let directory = directory.unwrap_or(Path::new("."));
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("syncing {}", directory.display()))?;
    Ok(rotated.key_id())
}

fn read_keys(path: &Path) -> anyhow::Result<pinswitch_core::Keys> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    pinswitch_core::Keys::from_file_bytes(&bytes)
        .with_context(|| format!("{} is not the switch's key file", path.display()))
}

fn random_key() -> anyhow::Result<[u8; 16]> {
    let mut key = [0u8; 16];
    getrandom::fill(&mut key)
        .map_err(|error| anyhow::anyhow!("{error}"))
        .context("drawing a key from the OS random source")?;
    Ok(key)
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
        let path = key_file_path(&dir, Path::new(""));
        assert!(load_or_create(&path, false).is_err(), "no keys are made beside journals");
        let first = load_or_create(&path, true).expect("create");
        let again = load_or_create(&path, false).expect("load");
        assert_eq!(first.key_id(), 1);
        let (first, again) = (Keys::new(first, 2), Keys::new(again, 2));
        assert_eq!(first.names(42), again.names(42));
        assert_ne!(first.names(42), first.names(43));
        assert!(first.older_names(42).is_empty());
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(1, b"1235"));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(2, b"1234"));
        let pin_only = dir.join("pin.key");
        assert_eq!(export_pin_key(&path, &pin_only).expect("export"), 1);
        assert!(export_pin_key(&path, &pin_only).is_err(), "never overwritten");
        // A rotation: key id 2 names new cards, key 1's name is the oldest tried.
        assert_eq!(rotate(&path).expect("rotate"), 2);
        let rotated = Keys::new(load_or_create(&path, false).expect("load rotated"), 2);
        assert_eq!(rotated.older_names(42), vec![first.names(42).newest]);
        assert_eq!(rotated.names(42).first, first.names(42).first);
        assert_ne!(rotated.names(42).newest, first.names(42).newest);
        assert!(!dir.join("keys.rotating").exists());
        assert!(load_or_create(&pin_only, false).is_err(), "the PIN key alone cannot run a switch");
        std::fs::write(&path, b"PSKEYS02 too short").expect("damage");
        assert!(load_or_create(&path, true).is_err(), "a damaged key file is refused");
        let pin = random_pin().expect("pin");
        assert!(pinswitch_protocol::pin::is_valid(pin));
        assert_ne!(pin, random_pin().expect("pin"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
