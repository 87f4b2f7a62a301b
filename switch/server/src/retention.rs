//! Journal retention (`[journal] retention`): after each snapshot a shard's snapshot thread
//! archives or deletes the journal segments that nothing needs any more, so the disk does not
//! fill at about 150 bytes per operation. A segment goes only when every record in it is
//! covered by the older of the two kept snapshots (so recovery can still fall back to it) and
//! the settlement exporter has passed it: its cursor, from the `cursors.txt` it writes after
//! each durable checkpoint, is what the switch trusts. The last segment never goes. No cursor
//! file, or no line for the shard, keeps everything. The regulatory record (five years of
//! transactions) is the exporter's archive of closed periods, not these segments.

use std::path::{Path, PathBuf};

/// What to do with retired segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Retention {
    /// Keep every segment (the default).
    Keep,
    /// Delete retired segments.
    Delete { cursors: PathBuf },
    /// Copy retired segments into `archive_dir/shard-NNN/` (fsynced), then delete them.
    Archive { cursors: PathBuf, archive_dir: PathBuf },
}

/// What one pass did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Retired {
    pub segments: usize,
    /// Every record up to this seq is gone from the shard's directory.
    pub through_seq: u64,
}

/// The exporter's cursor for `shard_id` in `cursors` (lines `shard-NNN SEQ`; `#` comments), or
/// `None` when the file or the line is missing.
pub(crate) fn exporter_cursor(cursors: &Path, shard_id: u16) -> Result<Option<u64>, String> {
    let text = match std::fs::read_to_string(cursors) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("reading {}: {error}", cursors.display())),
    };
    let name = format!("shard-{shard_id:03}");
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(name.as_str()) {
            let seq = fields.next().and_then(|seq| seq.parse().ok());
            return seq
                .map(Some)
                .ok_or_else(|| format!("{}: an odd line {line:?}", cursors.display()));
        }
    }
    Ok(None)
}

/// One retention pass over the shard directory `dir`, after a snapshot was written.
pub(crate) fn retire(
    dir: &Path,
    shard_id: u16,
    retention: &Retention,
) -> Result<Option<Retired>, String> {
    let (cursors, archive_dir) = match retention {
        Retention::Keep => return Ok(None),
        Retention::Delete { cursors } => (cursors, None),
        Retention::Archive { cursors, archive_dir } => (cursors, Some(archive_dir)),
    };
    let snapshots = pinswitch_journal::snapshot_seqs(dir).map_err(|error| error.to_string())?;
    // Two snapshots are kept; recovery falls back to the older when the newer fails its checks.
    let [older, _, ..] = snapshots.as_slice() else { return Ok(None) };
    let Some(cursor) = exporter_cursor(cursors, shard_id)? else { return Ok(None) };
    let through_seq = (*older).min(cursor);
    let retired =
        pinswitch_journal::retired_segments(dir, through_seq).map_err(|error| error.to_string())?;
    if retired.is_empty() {
        return Ok(None);
    }
    let paths: Vec<PathBuf> = retired.into_iter().map(|(_, path)| path).collect();
    if let Some(archive_dir) = archive_dir {
        archive(&paths, &archive_dir.join(format!("shard-{shard_id:03}")))?;
    }
    pinswitch_journal::remove_segments(dir, &paths).map_err(|error| error.to_string())?;
    Ok(Some(Retired { segments: paths.len(), through_seq }))
}

/// Copies each segment into `to` and makes the copies durable before anything is deleted.
fn archive(paths: &[PathBuf], to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|error| format!("creating {}: {error}", to.display()))?;
    for path in paths {
        let name = path.file_name().ok_or_else(|| format!("{} has no name", path.display()))?;
        let copy = to.join(name);
        std::fs::copy(path, &copy).and_then(|_| std::fs::File::open(&copy)?.sync_all()).map_err(
            |error| format!("archiving {} to {}: {error}", path.display(), to.display()),
        )?;
    }
    std::fs::File::open(to)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| format!("fsync of {}: {error}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_lines_are_read_by_shard() {
        let dir = std::env::temp_dir().join(format!("pinswitch-cursors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cursors.txt");
        assert_eq!(exporter_cursor(&path, 0), Ok(None), "no file: keep everything");
        std::fs::write(&path, "# a comment\nshard-000 41\nshard-001 7\n").unwrap();
        assert_eq!(exporter_cursor(&path, 0), Ok(Some(41)));
        assert_eq!(exporter_cursor(&path, 1), Ok(Some(7)));
        assert_eq!(exporter_cursor(&path, 2), Ok(None));
        std::fs::write(&path, "shard-000 x\n").unwrap();
        assert!(exporter_cursor(&path, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
