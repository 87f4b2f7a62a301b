//! The switch's keys on disk, and fresh PINs. `keys.bin` is read at start, or drawn from the
//! operating system's CSPRNG and written (mode 0600) on the first start; new PINs come from the
//! same source. What is derived from the keys (card names, password MACs, the table seed) is
//! `pinswitch_core::keys`, pure, and shared with the exporter.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use pinswitch_core::keys::KEY_FILE;
pub(crate) use pinswitch_core::keys::Keys;

/// Loads the keys from the data directory, creating them from the CSPRNG on first start.
pub(crate) fn load_or_create(data_dir: &Path) -> anyhow::Result<Keys> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match Keys::from_file_bytes(&bytes) {
            Some(keys) => Ok(keys),
            None => bail!("key file {} is damaged; refusing to start", path.display()),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|error| anyhow::anyhow!("{error}"))
                .context("drawing keys from the OS random source")?;
            let keys = Keys::from_secret(&secret);
            write_private(&path, &keys.file_bytes())?;
            Ok(keys)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
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
        let first = load_or_create(&dir).expect("create");
        let again = load_or_create(&dir).expect("load");
        assert_eq!(first.pin_hash(42), again.pin_hash(42));
        assert_ne!(first.pin_hash(42), first.pin_hash(43));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(1, b"1235"));
        assert_ne!(first.password_mac(1, b"1234"), first.password_mac(2, b"1234"));
        std::fs::write(dir.join(KEY_FILE), b"PSKEYS01 too short").expect("damage");
        assert!(load_or_create(&dir).is_err(), "a damaged key file is refused");
        let pin = random_pin().expect("pin");
        assert!(pinswitch_protocol::pin::is_valid(pin));
        assert_ne!(pin, random_pin().expect("pin"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
