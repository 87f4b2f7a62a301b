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
pub(crate) use pinswitch_core::keys::Keys;

/// Where the key file is: `[server] keys_file`, or `keys.bin` in the data directory.
pub(crate) fn key_file_path(data_dir: &Path, keys_file: &Path) -> std::path::PathBuf {
    if keys_file.as_os_str().is_empty() { data_dir.join(KEY_FILE) } else { keys_file.to_owned() }
}

/// Loads the keys from `path`, creating them from the CSPRNG on first start (only where no
/// journal exists yet: new keys would name none of the cards already journaled).
pub(crate) fn load_or_create(path: &Path, fresh: bool) -> anyhow::Result<Keys> {
    match std::fs::read(path) {
        Ok(bytes) => match Keys::from_file_bytes(&bytes) {
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
            let keys = Keys::from_secret(Keys::first_key_id(), &secret);
            write_private(path, &keys.file_bytes())?;
            Ok(keys)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// `pinswitch keys export-pin`: writes the PIN key of the key file at `keys` alone to `out`
/// (created new, mode 0600): what the exporter needs to find a card by its PIN, without the
/// password key.
pub(crate) fn export_pin_key(keys: &Path, out: &Path) -> anyhow::Result<u32> {
    let bytes = std::fs::read(keys).with_context(|| format!("reading {}", keys.display()))?;
    let keys_read = Keys::from_file_bytes(&bytes)
        .with_context(|| format!("{} is not the switch's key file", keys.display()))?;
    write_private(out, &keys_read.pin_key().file_bytes())?;
    Ok(keys_read.key_id())
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
        assert_eq!(first.pin_hash(42), again.pin_hash(42));
        assert_ne!(first.pin_hash(42), first.pin_hash(43));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(1, b"1235"));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(2, b"1234"));
        let pin_only = dir.join("pin.key");
        assert_eq!(export_pin_key(&path, &pin_only).expect("export"), 1);
        assert!(export_pin_key(&path, &pin_only).is_err(), "never overwritten");
        assert!(load_or_create(&pin_only, false).is_err(), "the PIN key alone cannot run a switch");
        std::fs::write(&path, b"PSKEYS02 too short").expect("damage");
        assert!(load_or_create(&path, true).is_err(), "a damaged key file is refused");
        let pin = random_pin().expect("pin");
        assert!(pinswitch_protocol::pin::is_valid(pin));
        assert_ne!(pin, random_pin().expect("pin"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
