//! Snapshot files: writing one atomically (temp file, fsync, rename, directory fsync), pruning
//! to the newest two, and finding the newest valid one at recovery (falling back past damaged
//! ones).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use memmap2::Mmap;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::format;
use crate::fsys;

/// How many snapshots are kept: the newest, plus one to fall back to if the newest is damaged.
pub(crate) const SNAPSHOTS_KEPT: usize = 2;

/// How much of an image is written before it is flushed to the disk (see `write`).
const SNAPSHOT_WRITE_PIECE_BYTES: usize = 4 << 20;

/// Suffix of a snapshot being written; a crash can leave one behind, recovery removes it.
const TEMP_SUFFIX: &str = ".tmp";

/// A snapshot image found at recovery.
#[derive(Debug)]
pub struct Snapshot {
    /// Every record with a sequence number up to and including `seq` is reflected in `bytes`.
    pub seq: u64,
    /// The image's format, as given to [`crate::Journal::write_snapshot`] (0 for files written
    /// before snapshots carried one).
    pub image_format: u32,
    /// The image, exactly as given to [`crate::Journal::write_snapshot`] (a read-only mapping
    /// of the file; it derefs to `[u8]`).
    pub bytes: SnapshotBytes,
}

/// A snapshot image mapped from its file, header skipped.
pub struct SnapshotBytes {
    map: Mmap,
}

impl std::ops::Deref for SnapshotBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[format::SNAPSHOT_HEADER_BYTES..]
    }
}

impl std::fmt::Debug for SnapshotBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SnapshotBytes({} bytes)", self.len())
    }
}

/// Writes `snapshot-{seq}.snap` so that after a crash either the old set of snapshots or the
/// complete new file exists, then deletes all but the newest [`SNAPSHOTS_KEPT`].
pub(crate) fn write(
    dir: &Path,
    seq: u64,
    image_format: u32,
    bytes: &[u8],
) -> Result<(), JournalError> {
    let final_path = dir.join(format::snapshot_file_name(seq));
    let temp_path = dir.join(format!("{}{TEMP_SUFFIX}", format::snapshot_file_name(seq)));
    let written = write_temp(&temp_path, seq, image_format, bytes);
    if let Err(error) = written {
        // A snapshot that failed (a full disk, say) gives its space back; the journal holds
        // everything it would have held, and the caller may try again later.
        let _ = std::fs::remove_file(&temp_path);
        return Err(error);
    }
    std::fs::rename(&temp_path, &final_path)
        .map_err(JournalError::io(&final_path, "rename snapshot into place"))?;
    // The rename is only durable once the directory is.
    fsys::sync_dir(dir)?;
    prune(dir)
}

/// The temp file of [`write`]: header, image, flushed a piece at a time, then fsynced.
fn write_temp(
    temp_path: &Path,
    seq: u64,
    image_format: u32,
    bytes: &[u8],
) -> Result<(), JournalError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(fsys::FILE_MODE)
        .open(temp_path)
        .map_err(JournalError::io(temp_path, "create snapshot"))?;
    let header = format::encode_snapshot_header(seq, image_format, bytes);
    file.write_all(&header).map_err(JournalError::io(temp_path, "write snapshot"))?;
    // Written and flushed a piece at a time: one final fsync of hundreds of megabytes would
    // queue all of them at the disk at once, and every journal commit of every shard (the
    // `fdatasync` a reply waits for) would wait behind them.
    let mut written = header.len();
    for piece in bytes.chunks(SNAPSHOT_WRITE_PIECE_BYTES) {
        file.write_all(piece).map_err(JournalError::io(temp_path, "write snapshot"))?;
        fsys::flush_range(&file, written, piece.len())
            .map_err(JournalError::io(temp_path, "flush snapshot"))?;
        written += piece.len();
    }
    file.sync_all().map_err(JournalError::io(temp_path, "fsync snapshot"))?;
    Ok(())
}

/// Deletes every snapshot except the [`SNAPSHOTS_KEPT`] with the highest sequence numbers.
fn prune(dir: &Path) -> Result<(), JournalError> {
    let snapshots = fsys::list_snapshots(dir)?;
    let excess = snapshots.len().saturating_sub(SNAPSHOTS_KEPT);
    if excess == 0 {
        return Ok(());
    }
    for old in &snapshots[..excess] {
        std::fs::remove_file(&old.path)
            .map_err(JournalError::io(&old.path, "remove old snapshot"))?;
    }
    fsys::sync_dir(dir)
}

/// Removes snapshot temp files a crash left behind (they were never renamed, so never used).
pub(crate) fn remove_temp_files(dir: &Path) -> Result<(), JournalError> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(JournalError::io(dir, "list journal directory"))? {
        let entry = entry.map_err(JournalError::io(dir, "list journal directory"))?;
        let name = entry.file_name();
        let is_temp = name
            .to_str()
            .and_then(|name| name.strip_suffix(TEMP_SUFFIX))
            .and_then(format::parse_snapshot_file_name)
            .is_some();
        if is_temp {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(JournalError::io(&path, "remove snapshot temp file"))?;
            removed = true;
        }
    }
    if removed {
        fsys::sync_dir(dir)?;
    }
    Ok(())
}

/// Snapshots passed over because they failed a check: each one's path and the reason.
pub(crate) type SkippedSnapshots = Vec<(PathBuf, String)>;

/// The newest snapshot that passes its checks, plus the newer ones that did not, so the caller
/// can log why it fell back.
pub(crate) fn load_newest(
    dir: &Path,
) -> Result<(Option<Snapshot>, SkippedSnapshots), JournalError> {
    let mut skipped = Vec::new();
    for candidate in fsys::list_snapshots(dir)?.into_iter().rev() {
        let file = File::open(&candidate.path)
            .map_err(JournalError::io(&candidate.path, "open snapshot"))?;
        let map = fsys::map_snapshot(&candidate.path, &file)?;
        match format::decode_snapshot(&map) {
            Ok((header, _)) if header.seq != candidate.seq => {
                skipped.push((
                    candidate.path,
                    format!("header says seq {}, file name says {}", header.seq, candidate.seq),
                ));
            }
            Ok((header, image)) => {
                debug_assert_eq!(image.len(), map.len() - format::SNAPSHOT_HEADER_BYTES);
                return Ok((
                    Some(Snapshot {
                        seq: header.seq,
                        image_format: header.image_format,
                        bytes: SnapshotBytes { map },
                    }),
                    skipped,
                ));
            }
            Err(reason) => skipped.push((candidate.path, reason)),
        }
    }
    Ok((None, skipped))
}
