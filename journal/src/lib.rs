//! Pinswitch's write-ahead journal: one per shard directory, holding opaque payload records in
//! memory-mapped, preallocated segment files, with group commit, snapshots, recovery and a
//! tailing reader for the settlement exporter.
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> Result<(), pinswitch_journal::JournalError> {
//! use pinswitch_journal::{Journal, JournalOptions};
//! let dir = std::path::Path::new("/var/lib/pinswitch/shard-0");
//! let (snapshot, mut recovery) = Journal::recover(dir, JournalOptions::production())?;
//! let after_seq = snapshot.as_ref().map_or(0, |snapshot| snapshot.seq);
//! // ... load `snapshot.bytes` into the engine, then:
//! recovery.replay(after_seq, |_seq, _payload| Ok(()) /* apply to the engine */)?;
//! let mut journal = recovery.into_journal()?;
//! let seq = journal.append(b"one command")?; // in memory only
//! journal.commit()?;                          // durable: now the reply may go out
//! assert_eq!(journal.durable_seq(), seq);
//! # Ok(()) }
//! ```
//!
//! # Files in a journal directory
//!
//! | name | what |
//! |---|---|
//! | `journal-{first_seq:020}.seg` | a segment: records `first_seq`, `first_seq + 1`, ... |
//! | `snapshot-{seq:020}.snap` | a snapshot image covering records `1..=seq` (newest two kept) |
//! | `snapshot-{seq:020}.snap.tmp` | a snapshot being written; removed by recovery |
//! | `journal.lock` | empty; the writer holds an exclusive `flock` on it |
//!
//! The directory is private to the journal: it may be copied (backup), never edited in place.
//!
//! # Segment format (all integers little-endian; also in `journal/FORMAT.md`)
//!
//! A segment is created at its full length (`segment_bytes`, default 64 MiB) with
//! `posix_fallocate`, so it reads as zeros and `msync` never has to allocate blocks. It starts
//! with a 40-byte header, made durable (with the file's size and the directory entry) before
//! any record is written into the segment:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `PINSJRNL` |
//! | 8 | 4 | format version, `1` (u32) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `first_seq` (u64), equal to the number in the file name |
//! | 24 | 8 | `segment_bytes` (u64), equal to the file length |
//! | 32 | 4 | CRC-32C of bytes 0..32 (u32) |
//! | 36 | 4 | `durable_end` (u32): offset / 8 up to which records are durable; outside the CRC |
//!
//! `durable_end` is the only field that changes after creation: a new segment starts with 5
//! (40 bytes, the end of the header), the writer stores the new end with one atomic store after
//! every successful commit, and recovery stores the recovered end (then makes the header page
//! durable). The tailing [`Reader`] reads no record of the last segment beyond it, so it never
//! delivers a record a power loss could still take back. 0 means the segment's writer kept no
//! watermark (segments written before the field existed had zero padding here); such a segment
//! is read to its valid end, and the first recovery that opens it as the last segment sets the
//! field. The value in the page cache is what readers on the machine see; the copy on disk
//! follows with the kernel's write-back and may lag (never lead) the durable end. Because of the
//! `u32` in 8-byte units, segments are at most 32 GiB - 8.
//!
//! Records follow from offset 40, each starting on a multiple of 8:
//!
//! | offset in record | bytes | field |
//! |---|---|---|
//! | 0 | 4 | `len` (u32): 16 + payload bytes, i.e. header plus payload, padding excluded |
//! | 4 | 4 | `crc32c` (u32): CRC-32C of `len` (4 bytes), then `seq` (8 bytes), then the payload |
//! | 8 | 8 | `seq` (u64): the previous record's + 1; the segment's first is `first_seq` |
//! | 16 | `len - 16` | payload |
//! | `len` | 0..7 | zero padding to the next multiple of 8 |
//!
//! Because `len` counts the header it is never 0 for a record (even an empty payload has
//! `len = 16`), so **a zero `len` where a record would start marks the end of the data**, as
//! does a position with less than 16 bytes left in the file. A record that does not fit in the
//! rest of the segment goes to a new segment whose `first_seq` is that record's seq. The
//! largest payload ([`JournalOptions::max_payload_bytes`]) is what fits in a segment after the
//! segment and record headers, and also in one group commit (so a torn write can never span more
//! than the commit window); larger ones are [`JournalError::RecordTooLarge`].
//!
//! # Snapshot format
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `PINSSNAP` |
//! | 8 | 4 | format version, `1` (u32) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | `seq` (u64), equal to the number in the file name |
//! | 24 | 8 | `len` (u64): image bytes that follow the header |
//! | 32 | 4 | CRC-32C of bytes 0..32, then the image (u32) |
//! | 36 | 4 | zero padding |
//! | 40 | `len` | the image |
//!
//! A snapshot is written to `*.snap.tmp`, fsynced, renamed into place, and the directory
//! fsynced; then all but the newest two (by seq) are deleted. Segments are never deleted by the
//! journal. Before writing, the journal commits up to `seq`, so a snapshot never covers records
//! that a crash could remove from the journal.
//!
//! # Durability and group commit
//!
//! [`Journal::append`] copies a record into the mapping; [`Journal::commit`] makes everything
//! appended durable with one `msync(MS_SYNC)` of the dirty range (on Linux an `fdatasync` of that
//! range). A reply may be released only after the commit covering its record returned `Ok`. A
//! group commit writes at most [`JournalOptions::commit_bytes_max`] bytes: `append` commits early
//! rather than exceed it. Rolling to a new segment commits the old one first, so only the last
//! segment can ever hold bytes that are not durable.
//!
//! # Recovery, and torn tail versus corruption
//!
//! [`Journal::recover`] picks the newest snapshot that passes its checks (magic, version, length,
//! CRC, seq matching the name). **A damaged newest snapshot falls back to the previous one**;
//! the skipped files and reasons are in [`Recovery::skipped_snapshots`]. [`Recovery::replay`]
//! then walks the records after the chosen seq, checking length, CRC-32C and that each seq is
//! the previous + 1 (within and across segments). The journal must hold every record after the
//! snapshot's seq and must reach at least that seq, or recovery reports
//! [`JournalError::Corrupt`].
//!
//! When a crash interrupts a group commit, the pages of that commit may have reached the disk in
//! any order, partly or not at all; everything before the last completed commit is intact. So
//! where the valid records end, at offset `X` (an invalid record, or a zero `len` followed by
//! non-zero bytes):
//!
//! * **Torn tail**: if `X` is in the last segment and every non-zero byte after `X` lies within
//!   `commit_bytes_max` bytes of `X`, the damage fits inside one interrupted, never acknowledged
//!   group commit. Recovery zeroes `X` up to the last non-zero byte, makes that durable, and the
//!   journal continues at `X`.
//! * **Corruption**: damage in a segment other than the last, non-zero bytes further than
//!   `commit_bytes_max` beyond `X` (data that a completed commit wrote after the damage), a
//!   record with a valid CRC but the wrong seq, or a gap between segments. Recovery stops with
//!   [`JournalError::Corrupt`] naming the file and byte offset; it never guesses.
//! * **Torn roll**: a last segment whose header is missing or invalid and which holds only zeros
//!   after the header is a roll interrupted by a crash (records are only written after the header
//!   is durable); it is removed. An invalid header with data after it is corruption.
//!
//! **Limit of the rule**: recovery cannot tell an interrupted write from a bit flipped by the
//! disk or memory inside the last commit window. Such a flip is taken for a torn tail and the
//! records from the flipped one on are truncated, even if they had been committed and
//! acknowledged. Outside the window, or in any earlier segment, the same flip is reported.
//!
//! Recovery also makes the recovered last segment durable (after a process crash, as opposed
//! to a power loss, appended but uncommitted records survive in the page cache and are
//! replayed), so new commits never sit on top of bytes that a later power loss could tear.
//! Segments before the one holding the snapshot's seq + 1 are covered by the snapshot: only
//! their headers are checked.
//!
//! # Safety
//!
//! `unsafe` is used for the memmap2 mappings, a few libc calls (`flock`, `posix_fallocate`,
//! `posix_fadvise`, `setpriority`) and the two atomic accesses to the `durable_end` field
//! through a mapping (the writer's store, the reader's load); each block carries a `SAFETY`
//! comment. The mappings rely on the
//! directory's exclusive lock and on the journal never truncating a mapped file.

#![warn(missing_docs)]

mod error;
pub mod format;
mod fsys;
mod journal;
mod reader;
mod recovery;
mod snapshot;

pub use error::JournalError;
pub use fsys::lower_thread_priority;
pub use journal::{
    CommitRequest, Journal, JournalOptions, SnapshotWriter, remove_segments, retired_segments,
    snapshot_seqs,
};
pub use reader::Reader;
pub use recovery::Recovery;
pub use snapshot::{Snapshot, SnapshotBytes};
