//! The tailing reader: a read-only view of a journal directory for another process (the
//! settlement exporter), which iterates records from a sequence number over all segments and
//! stops cleanly where the durable prefix currently ends (the writer's watermark in the last
//! segment's header). It takes no lock and never writes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::format::{self, RecordFault, RecordStart, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::fsys::{self, NumberedFile};

/// Bytes read per `pread`; records are small, so one read covers hundreds of them.
const CHUNK_BYTES: usize = 256 << 10;

/// A read-only tailing reader of one journal directory.
///
/// Each [`Reader::read_from`] lists the segments again, so it sees segments the writer rolled
/// to since the last call, and resumes from where the previous call stopped when asked for the
/// next sequence number (no rescan of the segment).
///
/// It delivers only **durable** records: every segment before the last is wholly durable (the
/// writer commits a segment before it creates the next), and in the last segment it stops at
/// the durable end the writer publishes in the header after each successful commit
/// ([`crate::format::DURABLE_END_OFFSET`]; recovery sets it to the recovered end). Records the
/// writer appended but has not committed yet are in the shared page cache of the same machine,
/// yet a power loss could take them back and the writer would then reuse their sequence numbers;
/// they are not shown. A segment from a writer that kept no watermark (a journal written before
/// the field existed, and not opened by a writer since) is read to its valid end, as before.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    cursor: Option<Cursor>,
    buffer: Vec<u8>,
}

/// Where the previous call stopped.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    segment_seq: u64,
    offset: u64,
    next_seq: u64,
}

impl Reader {
    /// A reader of the journal in `dir`, which must exist (it may still be empty).
    pub fn open(dir: &Path) -> Result<Reader, JournalError> {
        let metadata =
            std::fs::metadata(dir).map_err(JournalError::io(dir, "open journal directory"))?;
        if !metadata.is_dir() {
            return Err(JournalError::Io {
                path: dir.to_path_buf(),
                action: "open journal directory",
                source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            });
        }
        Ok(Reader { dir: dir.to_path_buf(), cursor: None, buffer: Vec::new() })
    }

    /// Calls `visit(seq, payload)` for every valid record with `seq >= from_seq`, in order, and
    /// returns the sequence number of the last valid record in the journal (0 if it has none),
    /// so the next call can ask for that + 1.
    ///
    /// In the last segment it stops without error at the published durable end, or earlier at
    /// the first zero length, torn or half-written record (a crash image before recovery). The same in an earlier segment, a sequence
    /// gap between segments, or a journal that no longer holds `from_seq` (older segments
    /// removed) is [`JournalError::Corrupt`]. An `Err` from `visit` comes back as
    /// [`JournalError::Apply`]. Checks are the same as recovery's: length, sequence, CRC-32C.
    pub fn read_from(
        &mut self,
        from_seq: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<u64, JournalError> {
        let from_seq = from_seq.max(1);
        let segments = fsys::list_segments(&self.dir)?;
        if segments.is_empty() {
            return Ok(0);
        }
        let start = self.start_point(&segments, from_seq)?;
        self.cursor = None;

        let mut position = start.position;
        let last_index = segments.len() - 1;
        for (index, segment) in segments.iter().enumerate().skip(start.index) {
            let is_last = index == last_index;
            let path = &segment.path;
            let Some(file) = open_segment(path, is_last)? else {
                break;
            };
            let file_bytes = file.metadata().map_err(JournalError::io(path, "stat segment"))?.len();
            let mut window =
                Window { file: &file, path, file_bytes, buffer: &mut self.buffer, start: None };

            if index != start.index || !start.resumed {
                // A new segment: check its header and that it continues the sequence.
                if !window.check_segment_start(segment, position.next_seq, is_last)? {
                    // The writer is creating this segment right now.
                    break;
                }
                position.offset = SEGMENT_HEADER_BYTES as u64;
            }
            // The last segment may hold appended records that are not durable yet: read up to
            // the durable end the writer published (loaded after the header was found valid,
            // so the segment's creation is complete). Earlier segments are durable throughout.
            let durable_end = if is_last {
                fsys::load_durable_end(path, &file)?.unwrap_or(file_bytes)
            } else {
                file_bytes
            };

            let fault = window.walk_records(&mut position, durable_end, from_seq, &mut visit)?;
            self.cursor = Some(Cursor {
                segment_seq: segment.seq,
                offset: position.offset,
                next_seq: position.next_seq,
            });
            if let Some(fault) = fault {
                if is_last {
                    // A record the writer is still copying, or a torn tail recovery will remove.
                    break;
                }
                return Err(JournalError::corrupt(path, position.offset, fault.reason));
            }
        }
        Ok(position.next_seq - 1)
    }

    /// Where a read of `from_seq` begins in `segments` (not empty): where the previous call
    /// stopped when it asks for the next record there, else at the start of the segment that
    /// holds `from_seq`; an error when the journal no longer reaches back that far.
    fn start_point(&self, segments: &[NumberedFile], from_seq: u64) -> Result<Start, JournalError> {
        let resume = self.cursor.filter(|cursor| cursor.next_seq == from_seq).and_then(|cursor| {
            segments
                .iter()
                .position(|segment| segment.seq == cursor.segment_seq)
                .map(|index| (index, cursor))
        });
        if let Some((index, cursor)) = resume {
            let position = Position { offset: cursor.offset, next_seq: cursor.next_seq };
            return Ok(Start { index, position, resumed: true });
        }
        let Some(index) = segments.iter().rposition(|segment| segment.seq <= from_seq) else {
            let first = &segments[0];
            return Err(JournalError::corrupt(
                &first.path,
                0,
                format!(
                    "the journal starts at seq {} but records from seq {from_seq} were asked for",
                    first.seq
                ),
            ));
        };
        let position =
            Position { offset: SEGMENT_HEADER_BYTES as u64, next_seq: segments[index].seq };
        Ok(Start { index, position, resumed: false })
    }
}

/// Where a read begins: the segment's index in the listing, the position in it, and whether
/// that position is a previous call's cursor (its segment header was checked then).
struct Start {
    index: usize,
    position: Position,
    resumed: bool,
}

/// A place in a segment: the file offset of the next record and the sequence number it must
/// carry.
#[derive(Clone, Copy)]
struct Position {
    offset: u64,
    next_seq: u64,
}

/// The segment file at `path`, or `None` for a last segment that is gone (the writer's recovery
/// may have just removed a torn roll).
fn open_segment(path: &Path, is_last: bool) -> Result<Option<File>, JournalError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if is_last && error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(JournalError::Io {
            path: path.to_path_buf(),
            action: "open segment",
            source: error,
        }),
    }
}

/// A cached chunk of one segment file, refilled with `pread` when a request falls outside it.
struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    file_bytes: u64,
    buffer: &'a mut Vec<u8>,
    /// File offset of `buffer[0]`, or `None` before the first read.
    start: Option<u64>,
}

impl Window<'_> {
    /// Checks a new segment's header and that the segment continues the sequence at
    /// `next_seq`; `Ok(false)` for a last segment whose header is not whole yet (the writer is
    /// creating it right now), where reading stops without error.
    fn check_segment_start(
        &mut self,
        segment: &NumberedFile,
        next_seq: u64,
        is_last: bool,
    ) -> Result<bool, JournalError> {
        let path = self.path;
        let header = if self.file_bytes < SEGMENT_HEADER_BYTES as u64 {
            Err(format!("file of {} bytes is too short for a segment header", self.file_bytes))
        } else {
            SegmentHeader::decode(self.get(0, SEGMENT_HEADER_BYTES)?)
        };
        match header {
            Ok(header) if header.first_seq != segment.seq => {
                return Err(JournalError::corrupt(
                    path,
                    16,
                    format!(
                        "header says first seq {}, file name says {}",
                        header.first_seq, segment.seq
                    ),
                ));
            }
            Ok(_) => {}
            Err(_) if is_last => return Ok(false),
            Err(reason) => return Err(JournalError::corrupt(path, 0, reason)),
        }
        if segment.seq != next_seq {
            return Err(JournalError::corrupt(
                path,
                0,
                format!(
                    "sequence gap: the previous segment ends before seq {next_seq}, this segment starts at seq {}",
                    segment.seq
                ),
            ));
        }
        Ok(true)
    }

    /// Walks the records from `position` until `durable_end` or the end of the segment's data,
    /// calling `visit` for those at `from_seq` or later and moving `position` past each valid
    /// one; returns the fault of the record it stopped at, if any.
    fn walk_records(
        &mut self,
        position: &mut Position,
        durable_end: u64,
        from_seq: u64,
        visit: &mut impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Option<RecordFault>, JournalError> {
        loop {
            let offset = position.offset;
            if offset >= durable_end {
                return Ok(None);
            }
            let room_bytes =
                usize::try_from(self.file_bytes.saturating_sub(offset)).unwrap_or(usize::MAX);
            let header = self.get(offset, room_bytes.min(format::RECORD_HEADER_BYTES))?;
            let (len, span_bytes) = match format::record_start(header, room_bytes) {
                Ok(RecordStart::End) => return Ok(None),
                // Commits end on record boundaries: a record across the durable end is not
                // durable (only a cut tail, lowering the watermark, could make one).
                Ok(RecordStart::Record { span_bytes, .. })
                    if offset + span_bytes as u64 > durable_end =>
                {
                    return Ok(None);
                }
                Ok(RecordStart::Record { len, span_bytes }) => (len, span_bytes),
                Err(fault) => return Ok(Some(fault)),
            };
            let record = self.get(offset, len as usize)?;
            match format::check_record(record, position.next_seq) {
                Ok(payload) => {
                    if position.next_seq >= from_seq {
                        visit(position.next_seq, payload).map_err(JournalError::Apply)?;
                    }
                    position.offset += span_bytes as u64;
                    position.next_seq += 1;
                }
                Err(fault) => return Ok(Some(fault)),
            }
        }
    }

    /// `length` bytes at `offset`; the caller keeps `offset + length` within the file.
    fn get(&mut self, offset: u64, length: usize) -> Result<&[u8], JournalError> {
        let end = offset + length as u64;
        let cached = self
            .start
            .is_some_and(|start| offset >= start && end <= start + self.buffer.len() as u64);
        if !cached {
            let want = (length.max(CHUNK_BYTES) as u64).min(self.file_bytes - offset);
            let want = usize::try_from(want).unwrap_or(length);
            self.buffer.resize(want, 0);
            self.file
                .read_exact_at(self.buffer, offset)
                .map_err(JournalError::io(self.path, "read segment"))?;
            self.start = Some(offset);
        }
        // The window now holds `offset`, so the distance from its start is within the buffer.
        let from = usize::try_from(offset - self.start.unwrap_or(offset))
            .expect("the window holds offset, within a buffer of usize bytes");
        Ok(&self.buffer[from..from + length])
    }
}
