//! Recovery: checks every segment that matters, replays the records after a snapshot, repairs
//! a torn tail or a torn roll, and hands back a [`Journal`] positioned after the last valid
//! record. The torn-tail rule itself is explained in the crate docs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::format::{self, RecordStart, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::fsys::{self, DirLock, NumberedFile};
use crate::journal::{ActiveSegment, Journal, JournalOptions};

/// A journal directory after [`Journal::recover`]: locked, snapshot chosen, records not yet
/// replayed. Call [`Recovery::replay`] (optional) and then [`Recovery::into_journal`].
#[derive(Debug)]
pub struct Recovery {
    dir: PathBuf,
    options: JournalOptions,
    lock: DirLock,
    snapshot_seq: u64,
    skipped_snapshots: Vec<(PathBuf, String)>,
    /// The result of the last successful scan, so `into_journal` after `replay` does not scan
    /// twice.
    scanned: Option<ScanEnd>,
}

/// Where the valid records end.
#[derive(Debug)]
struct ScanEnd {
    /// The last segment, mapped and positioned after its last valid record; `None` for an empty
    /// directory.
    segment: Option<ActiveSegment>,
    last_seq: u64,
}

/// Damage found where the valid records of a segment end.
struct Damage {
    offset: usize,
    reason: String,
    maybe_torn: bool,
    last_nonzero: usize,
}

impl Recovery {
    pub(crate) fn new(
        dir: PathBuf,
        options: JournalOptions,
        lock: DirLock,
        snapshot_seq: u64,
        skipped_snapshots: Vec<(PathBuf, String)>,
    ) -> Recovery {
        Recovery { dir, options, lock, snapshot_seq, skipped_snapshots, scanned: None }
    }

    /// Sequence number of the snapshot [`Journal::recover`] returned (0 if none).
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot_seq
    }

    /// Snapshots newer than the one returned that failed their checks, with the reason, for the
    /// log. Recovery fell back past each of them.
    pub fn skipped_snapshots(&self) -> &[(PathBuf, String)] {
        &self.skipped_snapshots
    }

    /// Calls `apply(seq, payload)` for every valid record with `seq > after_seq`, in order,
    /// verifying lengths, sequence continuity and CRC-32C, and returns the last valid sequence
    /// number (`after_seq` itself if nothing follows it).
    ///
    /// Records are verified from the segment holding `after_seq + 1` onwards; older segments are
    /// covered by the snapshot and only their headers are checked. A torn tail is zeroed and
    /// made durable; a torn roll is removed; any other damage, records missing after
    /// `after_seq`, or a journal that ends before the returned snapshot's seq is
    /// [`JournalError::Corrupt`]. An `Err` from `apply` comes back as [`JournalError::Apply`].
    /// Records are applied as they are verified, so after an `Err` the state built from them
    /// must be discarded.
    pub fn replay(
        &mut self,
        after_seq: u64,
        mut apply: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<u64, JournalError> {
        // Drop a previous scan's mapping before scanning again.
        self.scanned = None;
        let end = scan(&self.dir, &self.options, after_seq, self.snapshot_seq, &mut apply)?;
        let last_seq = end.last_seq;
        self.scanned = Some(end);
        Ok(last_seq)
    }

    /// The journal, ready to append after the last valid record. Scans (and repairs) as
    /// [`Recovery::replay`] would from the snapshot's seq if `replay` was not called. An empty
    /// directory gets its first segment here.
    pub fn into_journal(mut self) -> Result<Journal, JournalError> {
        let end = match self.scanned.take() {
            Some(end) => end,
            None => scan(
                &self.dir,
                &self.options,
                self.snapshot_seq,
                self.snapshot_seq,
                &mut |_, _| Ok(()),
            )?,
        };
        let segment = match end.segment {
            Some(segment) => segment,
            None => {
                let (path, file, map) =
                    fsys::create_segment(&self.dir, end.last_seq + 1, self.options.segment_bytes)?;
                ActiveSegment {
                    path,
                    file: std::sync::Arc::new(file),
                    map,
                    write_offset: SEGMENT_HEADER_BYTES,
                    durable_offset: SEGMENT_HEADER_BYTES,
                    pending: Vec::new(),
                }
            }
        };
        let mut journal =
            Journal::from_parts(self.dir, self.options, self.lock, segment, end.last_seq);
        // The next segment's space; a full disk leaves the journal without one (it says why
        // in `spare_error`) and the writer goes on in the active segment.
        let _ = journal.replenish_spare();
        Ok(journal)
    }
}

/// What a scan does with each verified record after the replay start: `apply(seq, payload)`,
/// an `Err` stopping the scan.
type ApplyRecord<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// The whole recovery scan: torn roll, headers, continuity, records, torn tail.
fn scan(
    dir: &Path,
    options: &JournalOptions,
    after_seq: u64,
    snapshot_seq: u64,
    apply: &mut ApplyRecord<'_>,
) -> Result<ScanEnd, JournalError> {
    // The journal must reach the snapshot even if the caller replays from earlier.
    let required_seq = after_seq.max(snapshot_seq);
    let segments = segments_without_torn_roll(dir)?;
    if segments.is_empty() {
        if required_seq > 0 {
            return Err(JournalError::corrupt(
                dir,
                0,
                format!(
                    "the journal has no segments but must hold records up to seq {required_seq}"
                ),
            ));
        }
        return Ok(ScanEnd { segment: None, last_seq: 0 });
    }
    for segment in &segments {
        check_header(segment)?;
    }

    let start = replay_start(&segments, after_seq + 1)?;
    let last_index = segments.len() - 1;
    let next_seq =
        replay_sealed(&segments[start..last_index], segments[start].seq, after_seq, apply)?;

    let last = &segments[last_index];
    if last.seq != next_seq {
        return Err(gap(last, next_seq));
    }
    let (segment, end_seq) = recover_last(last, options, after_seq, apply)?;
    let last_seq = end_seq - 1;
    if last_seq < required_seq {
        return Err(JournalError::corrupt(
            &last.path,
            segment.write_offset as u64,
            format!(
                "the journal ends at seq {last_seq} but must reach seq {required_seq} (snapshot or replay start)"
            ),
        ));
    }
    Ok(ScanEnd { segment: Some(segment), last_seq })
}

/// The segments of `dir` in order, after removing a last one that is a torn roll
/// ([`is_torn_roll`]) and making the removal durable.
fn segments_without_torn_roll(dir: &Path) -> Result<Vec<NumberedFile>, JournalError> {
    let mut segments = fsys::list_segments(dir)?;
    if let Some(last) = segments.last()
        && is_torn_roll(last)?
    {
        std::fs::remove_file(&last.path)
            .map_err(JournalError::io(&last.path, "remove torn segment"))?;
        fsys::sync_dir(dir)?;
        segments.pop();
    }
    Ok(segments)
}

/// The index in `segments` (not empty) of the segment that holds `from_seq`, the first record
/// to replay; an error when the journal no longer reaches back that far.
fn replay_start(segments: &[NumberedFile], from_seq: u64) -> Result<usize, JournalError> {
    segments.iter().rposition(|segment| segment.seq <= from_seq).ok_or_else(|| {
        let first = &segments[0];
        JournalError::corrupt(
            &first.path,
            0,
            format!(
                "the journal starts at seq {} but records from seq {from_seq} are needed",
                first.seq
            ),
        )
    })
}

/// Verifies (and applies after `after_seq`) the records of `sealed`, the segments before the
/// last, which must continue the sequence from `next_seq` and be whole; returns the seq the
/// next segment must start at.
fn replay_sealed(
    sealed: &[NumberedFile],
    mut next_seq: u64,
    after_seq: u64,
    apply: &mut ApplyRecord<'_>,
) -> Result<u64, JournalError> {
    for segment in sealed {
        if segment.seq != next_seq {
            return Err(gap(segment, next_seq));
        }
        let file =
            File::open(&segment.path).map_err(JournalError::io(&segment.path, "open segment"))?;
        let map = fsys::map_segment(&segment.path, &file)?;
        let (_, end_seq, damage) = scan_records(&map, segment.seq, after_seq, apply)?;
        if let Some(damage) = damage {
            // Only the last segment can hold a torn write: a roll commits the old segment first.
            return Err(JournalError::corrupt(&segment.path, damage.offset as u64, damage.reason));
        }
        next_seq = end_seq;
    }
    Ok(next_seq)
}

/// Verifies (and applies after `after_seq`) the records of the last segment, cuts off a torn
/// tail, makes the recovered records durable and publishes their end to tailing readers;
/// returns the segment positioned after its last valid record, and the next seq.
fn recover_last(
    last: &NumberedFile,
    options: &JournalOptions,
    after_seq: u64,
    apply: &mut ApplyRecord<'_>,
) -> Result<(ActiveSegment, u64), JournalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last.path)
        .map_err(JournalError::io(&last.path, "open segment"))?;
    // Scanned through a read-only mapping with readahead: the writable one drops the file's
    // cached pages and reads a page per fault (the append path's needs), which made replaying
    // the last segment read it from the disk 4 KiB at a time, even with the file in the cache
    // (measured at 10,000,000 cards: 1.5-2.2 s for 0.6 M records a shard). The read-only
    // mapping is gone before the writable one drops the cache.
    let (end_offset, end_seq, damage) = {
        let map = fsys::map_segment(&last.path, &file)?;
        scan_records(&map, last.seq, after_seq, apply)?
    };
    let mut map = fsys::map_segment_mut(&last.path, &file)?;
    let written_end = match damage {
        Some(damage) => cut_torn_tail(&mut map, damage, &last.path, options.commit_bytes_max)?,
        None => end_offset,
    };
    // After a process crash (not a power loss) the recovered records may still be only in the
    // page cache; make them (and any zeroing) durable before anything new is acknowledged, or a
    // later power loss could tear them under newer, acknowledged records.
    map.flush_range(0, written_end).map_err(JournalError::io(&last.path, "msync segment"))?;
    // Now durable, the recovered records may be shown to tailing readers: publish their end
    // (lower than the old watermark only if a torn tail was cut) and make the header durable.
    fsys::store_durable_end(&mut map, end_offset);
    map.flush_range(0, SEGMENT_HEADER_BYTES)
        .map_err(JournalError::io(&last.path, "msync segment header"))?;
    let segment = ActiveSegment {
        path: last.path.clone(),
        file: std::sync::Arc::new(file),
        map,
        write_offset: end_offset,
        durable_offset: end_offset,
        pending: Vec::new(),
    };
    Ok((segment, end_seq))
}

/// Zeroes the damage at the end of the last segment's records in `bytes` if it is a torn
/// tail (damage an interrupted write can leave, within one commit window of
/// `commit_bytes_max` bytes) and returns the end of the bytes written; any other damage is
/// [`JournalError::Corrupt`].
fn cut_torn_tail(
    bytes: &mut [u8],
    damage: Damage,
    path: &Path,
    commit_bytes_max: u64,
) -> Result<usize, JournalError> {
    let window_bytes = damage.last_nonzero - damage.offset;
    if !damage.maybe_torn || window_bytes as u64 >= commit_bytes_max {
        let reason = if damage.maybe_torn {
            format!(
                "{}; non-zero bytes reach offset {}, beyond the {}-byte commit window, so this is not a torn write",
                damage.reason, damage.last_nonzero, commit_bytes_max
            )
        } else {
            damage.reason
        };
        return Err(JournalError::corrupt(path, damage.offset as u64, reason));
    }
    // A torn tail: the interrupted group commit was never acknowledged. Zero it so later
    // appends start from clean bytes and a later crash cannot mix old and new records.
    bytes[damage.offset..=damage.last_nonzero].fill(0);
    Ok(damage.last_nonzero + 1)
}

fn gap(segment: &NumberedFile, expected_seq: u64) -> JournalError {
    JournalError::corrupt(
        &segment.path,
        0,
        format!(
            "sequence gap: the previous segment ends before seq {expected_seq}, this segment starts at seq {}",
            segment.seq
        ),
    )
}

/// Checks a segment's header against its file name and length.
fn check_header(segment: &NumberedFile) -> Result<(), JournalError> {
    let file =
        File::open(&segment.path).map_err(JournalError::io(&segment.path, "open segment"))?;
    let file_bytes =
        file.metadata().map_err(JournalError::io(&segment.path, "stat segment"))?.len();
    let mut raw = [0u8; SEGMENT_HEADER_BYTES];
    let header = if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        Err(format!("file of {file_bytes} bytes is too short for a segment header"))
    } else {
        file.read_exact_at(&mut raw, 0)
            .map_err(JournalError::io(&segment.path, "read segment header"))?;
        SegmentHeader::decode(&raw)
    };
    let header = header.map_err(|reason| JournalError::corrupt(&segment.path, 0, reason))?;
    if header.first_seq != segment.seq {
        return Err(JournalError::corrupt(
            &segment.path,
            16,
            format!("header says first seq {}, file name says {}", header.first_seq, segment.seq),
        ));
    }
    if header.segment_bytes != file_bytes {
        return Err(JournalError::corrupt(
            &segment.path,
            24,
            format!("header says {} segment bytes, file has {file_bytes}", header.segment_bytes),
        ));
    }
    Ok(())
}

/// A last segment whose header is missing or invalid and which holds nothing after the header
/// is a roll that a crash interrupted: the header is made durable before any record is written
/// into a segment, so no acknowledged record can be in it.
fn is_torn_roll(segment: &NumberedFile) -> Result<bool, JournalError> {
    let file =
        File::open(&segment.path).map_err(JournalError::io(&segment.path, "open segment"))?;
    let file_bytes =
        file.metadata().map_err(JournalError::io(&segment.path, "stat segment"))?.len();
    if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        return Ok(true);
    }
    let mut raw = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact_at(&mut raw, 0)
        .map_err(JournalError::io(&segment.path, "read segment header"))?;
    match SegmentHeader::decode(&raw) {
        // A checksummed header (even one that disagrees with the file name, which check_header
        // reports) was written on purpose: not a crash artefact.
        Ok(_) => Ok(false),
        Err(reason) => {
            let map = fsys::map_segment(&segment.path, &file)?;
            match format::last_nonzero(&map[SEGMENT_HEADER_BYTES..]) {
                None => Ok(true),
                Some(index) => Err(JournalError::corrupt(
                    &segment.path,
                    0,
                    format!(
                        "{reason}, but the segment holds data (up to offset {})",
                        SEGMENT_HEADER_BYTES + index
                    ),
                )),
            }
        }
    }
}

/// Walks the records of one mapped segment from its header on, applying those after
/// `after_seq`. Returns where the valid records end, the next expected seq, and the damage
/// found there if the rest of the segment is not all zeros.
fn scan_records(
    bytes: &[u8],
    first_seq: u64,
    after_seq: u64,
    apply: &mut ApplyRecord<'_>,
) -> Result<(usize, u64, Option<Damage>), JournalError> {
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut seq = first_seq;
    let fault = loop {
        let header_end = bytes.len().min(offset + format::RECORD_HEADER_BYTES);
        let start = match format::record_start(&bytes[offset..header_end], bytes.len() - offset) {
            Ok(start) => start,
            Err(fault) => break Some(fault),
        };
        let RecordStart::Record { len, span_bytes } = start else {
            break None;
        };
        match format::check_record(&bytes[offset..offset + len as usize], seq) {
            Ok(payload) => {
                if seq > after_seq {
                    apply(seq, payload).map_err(JournalError::Apply)?;
                }
                offset += span_bytes;
                seq += 1;
            }
            Err(fault) => break Some(fault),
        }
    };
    let last_nonzero = format::last_nonzero(&bytes[offset..]).map(|index| offset + index);
    let damage = match (fault, last_nonzero) {
        (Some(fault), last_nonzero) => Some(Damage {
            offset,
            reason: fault.reason,
            maybe_torn: fault.maybe_torn,
            last_nonzero: last_nonzero.unwrap_or(offset),
        }),
        (None, Some(last_nonzero)) => Some(Damage {
            offset,
            reason: format!(
                "no record starts here, yet non-zero bytes follow up to offset {last_nonzero}"
            ),
            maybe_torn: true,
            last_nonzero,
        }),
        (None, None) => None,
    };
    Ok((offset, seq, damage))
}
