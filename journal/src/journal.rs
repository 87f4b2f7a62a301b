//! The writer: [`Journal`] appends records into the mapped active segment, commits them with
//! `msync`, rolls to a new preallocated segment when the active one is full, and writes
//! snapshots. [`JournalOptions`] sizes segments and bounds a group commit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapMut;

use crate::error::JournalError;
use crate::format::{self, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::fsys::{self, DirLock};
use crate::recovery::Recovery;
use crate::snapshot::{self, Snapshot};

/// The pending-record buffer is given back down to this after a large group.
const PENDING_KEEP_BYTES: usize = 1 << 20;
/// A pipelined writer publishes the durable-end watermark at least every this many commits.
pub(crate) const WATERMARK_EVERY_COMMITS: u32 = 32;

/// Sizes of a journal's files and commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// Length of every new segment file, preallocated up front. A multiple of 8, at least 4096.
    /// Existing segments keep the length they were created with.
    pub segment_bytes: u64,
    /// The most bytes one group commit may write. [`Journal::append`] commits early rather than
    /// let the uncommitted range grow past this, and recovery uses the same figure to tell a torn
    /// tail from corruption, so it must not shrink between a crash and the recovery after it.
    pub commit_bytes_max: u64,
}

impl JournalOptions {
    /// 64 MiB segments, group commits of at most 16 MiB.
    pub fn production() -> Self {
        JournalOptions { segment_bytes: 64 << 20, commit_bytes_max: 16 << 20 }
    }

    /// 64 KiB segments and a 16 KiB commit window, so tests roll segments and reach the
    /// window's edge with a few hundred records.
    pub fn test_min() -> Self {
        JournalOptions { segment_bytes: 64 << 10, commit_bytes_max: 16 << 10 }
    }

    /// The largest payload [`Journal::append`] accepts: what fits in one segment after its
    /// header and one record header, and in one group commit (a record must never be bigger
    /// than the window recovery allows a torn write to span), rounded down to the 8-byte record
    /// alignment. Assumes valid options.
    pub fn max_payload_bytes(&self) -> usize {
        let segment_room = usize::try_from(self.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(SEGMENT_HEADER_BYTES);
        let commit_room = usize::try_from(self.commit_bytes_max).unwrap_or(usize::MAX);
        // The `len` field is a u32 and counts the record header too.
        let len_room = u32::MAX as usize;
        let room = segment_room.min(commit_room).min(len_room);
        (room - room % RECORD_ALIGN_BYTES).saturating_sub(RECORD_HEADER_BYTES)
    }

    pub(crate) fn validate(&self) -> Result<(), JournalError> {
        let invalid = |reason: String| Err(JournalError::InvalidOptions { reason });
        if self.segment_bytes < 4096 {
            return invalid(format!(
                "segment_bytes {} is below the minimum of 4096",
                self.segment_bytes
            ));
        }
        if !self.segment_bytes.is_multiple_of(RECORD_ALIGN_BYTES as u64) {
            return invalid(format!(
                "segment_bytes {} is not a multiple of {RECORD_ALIGN_BYTES}",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > format::SEGMENT_BYTES_MAX {
            return invalid(format!(
                "segment_bytes {} is above the maximum of {}",
                self.segment_bytes,
                format::SEGMENT_BYTES_MAX
            ));
        }
        if usize::try_from(self.segment_bytes).is_err()
            || i64::try_from(self.segment_bytes).is_err()
        {
            return invalid(format!(
                "segment_bytes {} does not fit this platform's address space",
                self.segment_bytes
            ));
        }
        let smallest_record = format::record_span_bytes(RECORD_ALIGN_BYTES) as u64;
        if self.commit_bytes_max < smallest_record {
            return invalid(format!(
                "commit_bytes_max {} is below the minimum of {smallest_record}",
                self.commit_bytes_max
            ));
        }
        Ok(())
    }
}

/// The segment records are appended to, mapped read-write.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub path: PathBuf,
    /// Kept open for the mapping's lifetime, and shared with commits in flight on another
    /// thread (`CommitRequest::sync` is an `fdatasync` of this file).
    pub file: Arc<File>,
    pub map: MmapMut,
    /// Where the next record starts.
    pub write_offset: usize,
    /// Everything before this offset is durable.
    pub durable_offset: usize,
    /// Records appended but not yet written to the file: they end at `write_offset`. Written
    /// with one `pwrite` when a commit starts, so the mapping's pages are never dirtied by
    /// appends (a page written through a shared mapping is write-protected again by every
    /// `fdatasync`, which costs a TLB shootdown across cores, then a fault at the next append;
    /// measured: a fifth of the shard threads' time at one event per frame).
    pub pending: Vec<u8>,
}

/// One shard's write-ahead journal, open for appending. Built by [`Journal::recover`] followed
/// by [`Recovery::into_journal`]; holds the directory's lock until dropped.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    segment: ActiveSegment,
    last_seq: u64,
    durable_seq: u64,
    /// The end (offset in the active segment) and last record of the commit in flight, if one
    /// was started by `commit_start` and not finished yet.
    requested: Option<(usize, u64)>,
    /// Pipelined commits finished since the watermark was last published.
    commits_since_watermark: u32,
    /// Counts segments this handle has written to, so a commit in flight knows whether the
    /// segment it covered is still the active one.
    segment_serial: u64,
    /// Set by the first failed commit or roll: after a failed `msync` the kernel may have
    /// dropped the dirty pages, so nothing this handle does afterwards could be trusted.
    poisoned: Option<String>,
    /// The next segment's space, taken ahead (`fsys::create_spare`); `None` when it could not
    /// be taken (a full disk): appends then go on only while they fit in the active segment.
    spare: Option<File>,
    /// Why the spare could not be made, as last tried.
    spare_error: Option<String>,
    _lock: DirLock,
}

impl Journal {
    /// Opens (creating the directory if absent) the journal in `dir`. Returns the newest valid
    /// snapshot (if any) and a [`Recovery`] to replay the records after it.
    ///
    /// Takes the directory's exclusive lock (`journal.lock`, `flock`), so a second writer on
    /// the same directory gets [`JournalError::Locked`]. Snapshot temp files left by a crash are
    /// removed. A snapshot that fails its checks is skipped in favour of the previous one (see
    /// [`Recovery::skipped_snapshots`]).
    pub fn recover(
        dir: &Path,
        options: JournalOptions,
    ) -> Result<(Option<Snapshot>, Recovery), JournalError> {
        options.validate()?;
        fsys::create_private_dir(dir).map_err(JournalError::io(dir, "create journal directory"))?;
        let lock = DirLock::acquire(dir)?;
        snapshot::remove_temp_files(dir)?;
        let (newest, skipped) = snapshot::load_newest(dir)?;
        let snapshot_seq = newest.as_ref().map_or(0, |snapshot| snapshot.seq);
        Ok((newest, Recovery::new(dir.to_path_buf(), options, lock, snapshot_seq, skipped)))
    }

    pub(crate) fn from_parts(
        dir: PathBuf,
        options: JournalOptions,
        lock: DirLock,
        segment: ActiveSegment,
        last_seq: u64,
    ) -> Journal {
        // Recovery made every record it found durable, so the two sequence numbers start equal.
        Journal {
            dir,
            options,
            segment,
            last_seq,
            durable_seq: last_seq,
            requested: None,
            commits_since_watermark: 0,
            segment_serial: 0,
            poisoned: None,
            spare: None,
            spare_error: None,
            _lock: lock,
        }
    }

    /// True when the next segment's space is taken: any record up to
    /// [`JournalOptions::max_payload_bytes`] can be appended without asking the disk for space.
    pub fn spare_ready(&self) -> bool {
        self.spare.is_some()
    }

    /// Whether a record of `payload_bytes` can be appended without new space on the disk: it
    /// fits in the active segment, or the spare is ready for the roll. A writer that must not
    /// fail for a full disk asks this before it changes anything (the shard refuses the
    /// command instead), because an `append` that has to roll without a spare creates a
    /// segment, and a failure there is final.
    pub fn fits(&self, payload_bytes: usize) -> bool {
        let span_bytes = format::record_span_bytes(payload_bytes);
        payload_bytes <= self.options.max_payload_bytes()
            && (self.spare.is_some()
                || self.segment.write_offset + span_bytes <= self.segment.map.len())
    }

    /// Bytes left for records in the active segment.
    pub fn segment_room_bytes(&self) -> usize {
        self.segment.map.len() - self.segment.write_offset
    }

    /// Makes the spare segment ready if it is not (`fsys::create_spare`). An error (a full
    /// disk, say) is returned and kept for [`Journal::spare_error`], and poisons nothing: no
    /// record depends on the spare, and the next attempt starts over.
    pub fn replenish_spare(&mut self) -> Result<(), JournalError> {
        self.check_poisoned()?;
        if self.spare.is_some() {
            return Ok(());
        }
        match fsys::create_spare(&self.dir, self.options.segment_bytes) {
            Ok(file) => {
                self.spare = Some(file);
                self.spare_error = None;
                Ok(())
            }
            Err(error) => {
                self.spare_error = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Why the spare segment could not be made at the last attempt (`None` when it is ready or
    /// was never tried).
    pub fn spare_error(&self) -> Option<&str> {
        self.spare_error.as_deref()
    }

    /// Copies one record into the mapped segment (not durable yet) and returns its sequence
    /// number (the first record ever is 1; each next one is +1).
    ///
    /// Rolls to a new preallocated segment when the record does not fit in the current one,
    /// committing the old one first. Commits early when the uncommitted bytes would otherwise
    /// exceed [`JournalOptions::commit_bytes_max`]; recovery's torn-tail rule depends on it.
    /// Payloads larger than [`JournalOptions::max_payload_bytes`] get
    /// [`JournalError::RecordTooLarge`] and change nothing.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        self.check_poisoned()?;
        let max = self.options.max_payload_bytes();
        if payload.len() > max {
            return Err(JournalError::RecordTooLarge { bytes: payload.len(), max });
        }
        let span_bytes = format::record_span_bytes(payload.len());
        if self.segment.write_offset + span_bytes > self.segment.map.len() {
            if self.segment.write_offset == SEGMENT_HEADER_BYTES {
                // Only possible for an empty segment recovered from a run with smaller segments:
                // a new segment would need the same first_seq, i.e. the same file name.
                let room = self.segment.map.len() - SEGMENT_HEADER_BYTES;
                let max = (room - room % RECORD_ALIGN_BYTES).saturating_sub(RECORD_HEADER_BYTES);
                return Err(JournalError::RecordTooLarge { bytes: payload.len(), max });
            }
            self.roll()?;
        }
        let uncommitted_bytes =
            self.segment.write_offset + span_bytes - self.segment.durable_offset;
        if uncommitted_bytes as u64 > self.options.commit_bytes_max {
            self.commit()?;
        }
        let seq = self.last_seq + 1;
        let pending = &mut self.segment.pending;
        let start = pending.len();
        pending.resize(start + span_bytes, 0);
        format::encode_record(&mut pending[start..], seq, payload);
        self.segment.write_offset += span_bytes;
        self.last_seq = seq;
        Ok(seq)
    }

    /// Makes every appended record durable: writes the pending records to the file, then
    /// `msync(MS_SYNC)` of the byte range through memmap2's `flush_range`. On Linux that is
    /// `fdatasync` restricted to the range (of the file's page cache, however the pages were
    /// written), which also persists the extent conversion of the preallocated blocks, so no
    /// separate `fdatasync` is needed here (new segments get theirs when created).
    ///
    /// After the `msync` returned, it publishes the new durable end in the segment header (one
    /// atomic store), which is as far as the tailing [`crate::Reader`] reads.
    ///
    /// An `Err` is final: the journal is poisoned and every later call fails with
    /// [`JournalError::Poisoned`]; reopen through [`Journal::recover`].
    pub fn commit(&mut self) -> Result<(), JournalError> {
        self.check_poisoned()?;
        self.write_pending()?;
        let segment = &mut self.segment;
        if segment.write_offset > segment.durable_offset {
            let length = segment.write_offset - segment.durable_offset;
            if let Err(source) = segment.map.flush_range(segment.durable_offset, length) {
                let error = JournalError::Io {
                    path: segment.path.clone(),
                    action: "msync segment",
                    source,
                };
                self.poisoned = Some(error.to_string());
                return Err(error);
            }
            segment.durable_offset = segment.write_offset;
            // Only now may a tailing reader see these records (see `format::DURABLE_END_OFFSET`).
            fsys::store_durable_end(&mut segment.map, segment.durable_offset);
            self.commits_since_watermark = 0;
        }
        self.durable_seq = self.last_seq;
        Ok(())
    }

    /// Writes the pending records to the file at their offset (page cache; not durable yet).
    fn write_pending(&mut self) -> Result<(), JournalError> {
        use std::os::unix::fs::FileExt;
        let segment = &mut self.segment;
        if segment.pending.is_empty() {
            return Ok(());
        }
        let at = segment.write_offset - segment.pending.len();
        if let Err(source) = segment.file.write_all_at(&segment.pending, at as u64) {
            let error =
                JournalError::Io { path: segment.path.clone(), action: "write segment", source };
            self.poisoned = Some(error.to_string());
            return Err(error);
        }
        segment.pending.clear();
        if segment.pending.capacity() > PENDING_KEEP_BYTES {
            segment.pending.shrink_to(PENDING_KEEP_BYTES);
        }
        Ok(())
    }

    /// The first half of a commit that runs on another thread, so that the shard goes on
    /// serving (reading, applying the next group) while the disk works: returns what to make
    /// durable (every record appended so far), or `None` when that is durable already or a
    /// commit is in flight (one at a time; start the next after `commit_finish`). Run
    /// `CommitRequest::sync` anywhere, then hand the request and its result to `commit_finish`.
    ///
    /// The guarantees of [`Journal::commit`] hold: nothing counts as durable before the sync
    /// returned, and the uncommitted bytes never exceed `commit_bytes_max` (`append` counts a
    /// range in flight as uncommitted and commits in line when it would pass it).
    pub fn commit_start(&mut self) -> Result<Option<CommitRequest>, JournalError> {
        self.check_poisoned()?;
        if self.requested.is_some() || self.last_seq == self.durable_seq {
            return Ok(None);
        }
        self.write_pending()?;
        self.requested = Some((self.segment.write_offset, self.last_seq));
        Ok(Some(CommitRequest {
            file: self.segment.file.clone(),
            path: self.segment.path.clone(),
            segment_serial: self.segment_serial,
            end_offset: self.segment.write_offset,
            last_seq: self.last_seq,
        }))
    }

    /// The second half of a commit started by `commit_start`: on success, the records it
    /// covered are durable (and published to tailing readers); a failed sync is final, as in
    /// [`Journal::commit`].
    pub fn commit_finish(
        &mut self,
        request: CommitRequest,
        synced: std::io::Result<()>,
    ) -> Result<(), JournalError> {
        self.requested = None;
        self.check_poisoned()?;
        if let Err(source) = synced {
            let error =
                JournalError::Io { path: request.path, action: "fdatasync segment", source };
            self.poisoned = Some(error.to_string());
            return Err(error);
        }
        // A roll or an in-line commit may have made more durable meanwhile; never go back.
        if request.segment_serial == self.segment_serial
            && request.end_offset > self.segment.durable_offset
        {
            self.segment.durable_offset = request.end_offset;
            // The watermark lives in the header page, written through the mapping: publishing
            // it after every commit would dirty that page for every `fdatasync` (a page write
            // and a TLB shootdown each). Readers only need a lower bound, so a pipelined writer
            // publishes it every `WATERMARK_EVERY_COMMITS` commits and whenever it catches up.
            self.commits_since_watermark += 1;
            if self.commits_since_watermark >= WATERMARK_EVERY_COMMITS
                || request.last_seq == self.last_seq
            {
                fsys::store_durable_end(&mut self.segment.map, self.segment.durable_offset);
                self.commits_since_watermark = 0;
            }
        }
        self.durable_seq = self.durable_seq.max(request.last_seq);
        Ok(())
    }

    /// The sequence number of the last appended record (0 if there is none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The sequence number of the last durable record (0 if there is none).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options this journal was opened with.
    pub fn options(&self) -> JournalOptions {
        self.options
    }

    /// Writes a snapshot image taken at `seq` (every record up to and including `seq` is in
    /// `bytes`): header and CRC-32C, written to a temp file, fsynced, renamed, directory
    /// fsynced. Keeps the newest two snapshots (by seq) and deletes older ones. Segments are not
    /// touched: the settlement exporter reads them later (retention is the server's, through
    /// [`retired_segments`] and [`remove_segments`]).
    ///
    /// If `seq` is not durable yet the journal commits first, so a snapshot never describes
    /// records a crash could take out of the journal. `seq` beyond [`Journal::last_seq`] is
    /// [`JournalError::SnapshotAhead`]. A failed snapshot does not poison the journal.
    pub fn write_snapshot(
        &mut self,
        seq: u64,
        image_format: u32,
        bytes: &[u8],
    ) -> Result<(), JournalError> {
        self.prepare_snapshot(seq)?.write(image_format, bytes)
    }

    /// The first half of [`Journal::write_snapshot`]: checks `seq` and makes it durable, then
    /// returns a writer that may write the image on another thread while appends go on (a
    /// snapshot of millions of cards takes seconds to write and fsync; the shard must not wait).
    pub fn prepare_snapshot(&mut self, seq: u64) -> Result<SnapshotWriter, JournalError> {
        self.check_poisoned()?;
        if seq > self.last_seq {
            return Err(JournalError::SnapshotAhead { seq, last_seq: self.last_seq });
        }
        if seq > self.durable_seq {
            self.commit()?;
        }
        Ok(SnapshotWriter { dir: self.dir.clone(), seq })
    }

    /// Commits the full segment and switches to a new one starting at the next sequence number.
    fn roll(&mut self) -> Result<(), JournalError> {
        // The old segment must be entirely durable before the new one exists: recovery only
        // allows a torn tail in the last segment.
        self.commit()?;
        let first_seq = self.last_seq + 1;
        let segment_bytes = self.options.segment_bytes;
        let created = match self.spare.take() {
            Some(spare) => fsys::install_spare(&self.dir, spare, first_seq, segment_bytes),
            None => fsys::create_segment(&self.dir, first_seq, segment_bytes),
        };
        match created {
            Ok((path, file, map)) => {
                self.segment_serial += 1;
                self.segment = ActiveSegment {
                    path,
                    file: Arc::new(file),
                    map,
                    write_offset: SEGMENT_HEADER_BYTES,
                    durable_offset: SEGMENT_HEADER_BYTES,
                    pending: Vec::new(),
                };
                // The next roll's space, taken now; if the disk has none the shard keeps
                // writing into this segment and tries again (see `fits`).
                let _ = self.replenish_spare();
                Ok(())
            }
            Err(error) => {
                // A half-created segment is left for recovery to remove as a torn roll.
                self.poisoned = Some(error.to_string());
                Err(error)
            }
        }
    }

    fn check_poisoned(&self) -> Result<(), JournalError> {
        match &self.poisoned {
            Some(first_error) => Err(JournalError::Poisoned { first_error: first_error.clone() }),
            None => Ok(()),
        }
    }
}

/// Writes one snapshot image, covering records `1..=seq` (all durable), into a journal
/// directory: temp file, fsync, rename, directory fsync, then prunes to the newest two. Only one
/// should run per directory at a time; the journal's appends may go on meanwhile.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    seq: u64,
}

impl SnapshotWriter {
    /// The last record the image covers.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the image durably (see the type's documentation).
    pub fn write(self, image_format: u32, bytes: &[u8]) -> Result<(), JournalError> {
        snapshot::write(&self.dir, self.seq, image_format, bytes)
    }
}

/// A commit in flight (see [`Journal::commit_start`]): an `fdatasync` of the active segment's
/// file, which makes every page written through the mapping durable, as `msync` of the range
/// does (on Linux both are `vfs_fsync_range` of the file). Send it to the thread that syncs.
#[derive(Debug)]
pub struct CommitRequest {
    file: Arc<File>,
    path: PathBuf,
    segment_serial: u64,
    end_offset: usize,
    last_seq: u64,
}

impl CommitRequest {
    /// Makes the covered records durable; blocks for the disk's flush.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The last record this commit covers.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The segment file to sync (a caller may `fdatasync` it through its own descriptor, an
    /// io_uring op say, instead of calling `sync`: the flush is of the file, not of the fd).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The segments of the journal in `dir` whose every record is at or below `through_seq` (a
/// segment's last record is the one before the next segment's first), oldest first, as
/// `(first_seq, path)`. The last segment is never among them: it is the one being written.
/// What retention may archive or delete once every reader has passed `through_seq` and a
/// snapshot covers it (see journal/FORMAT.md, Retention).
pub fn retired_segments(dir: &Path, through_seq: u64) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let segments = fsys::list_segments(dir)?;
    Ok(segments
        .windows(2)
        .take_while(|pair| pair[1].seq.saturating_sub(1) <= through_seq)
        .map(|pair| (pair[0].seq, pair[0].path.clone()))
        .collect())
}

/// The sequence numbers of the snapshots in `dir`, oldest first.
pub fn snapshot_seqs(dir: &Path) -> Result<Vec<u64>, JournalError> {
    Ok(fsys::list_snapshots(dir)?.into_iter().map(|snapshot| snapshot.seq).collect())
}

/// Removes retired segments (from [`retired_segments`]) and makes the removal durable. Recovery
/// then starts at the first segment left, which must hold the record after the snapshot it
/// loads; a reader asking for an earlier record gets `Corrupt` ("no longer holds").
pub fn remove_segments(dir: &Path, paths: &[PathBuf]) -> Result<(), JournalError> {
    for path in paths {
        std::fs::remove_file(path).map_err(JournalError::io(path, "remove retired segment"))?;
    }
    if !paths.is_empty() {
        fsys::sync_dir(dir)?;
    }
    Ok(())
}
