//! The tailing reader: a read-only view of a journal directory for another process (the
//! settlement exporter), which iterates records from a sequence number over all segments and
//! stops cleanly where the durable prefix currently ends (the writer's watermark in the last
//! segment's header). It takes no lock and never writes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::format::{self, RecordStart, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::fsys;

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
        let Some(first) = segments.first() else {
            return Ok(0);
        };
        let resume = self.cursor.filter(|cursor| cursor.next_seq == from_seq).and_then(|cursor| {
            segments
                .iter()
                .position(|segment| segment.seq == cursor.segment_seq)
                .map(|index| (index, cursor))
        });
        let (start, mut offset, mut next_seq) = match resume {
            Some((index, cursor)) => (index, cursor.offset, cursor.next_seq),
            None => {
                let Some(index) = segments.iter().rposition(|segment| segment.seq <= from_seq)
                else {
                    return Err(JournalError::corrupt(
                        &first.path,
                        0,
                        format!(
                            "the journal starts at seq {} but records from seq {from_seq} were asked for",
                            first.seq
                        ),
                    ));
                };
                (index, SEGMENT_HEADER_BYTES as u64, segments[index].seq)
            }
        };
        self.cursor = None;

        let last_index = segments.len() - 1;
        for (index, segment) in segments.iter().enumerate().skip(start) {
            let is_last = index == last_index;
            let path = &segment.path;
            let file = match File::open(path) {
                Ok(file) => file,
                // The writer's recovery may have just removed a torn roll.
                Err(error) if is_last && error.kind() == std::io::ErrorKind::NotFound => break,
                Err(error) => {
                    return Err(JournalError::Io {
                        path: path.clone(),
                        action: "open segment",
                        source: error,
                    });
                }
            };
            let file_bytes = file.metadata().map_err(JournalError::io(path, "stat segment"))?.len();
            let mut window =
                Window { file: &file, path, file_bytes, buffer: &mut self.buffer, start: None };

            if index != start || resume.is_none() {
                // A new segment: check its header and that it continues the sequence.
                let header = if file_bytes < SEGMENT_HEADER_BYTES as u64 {
                    Err(format!("file of {file_bytes} bytes is too short for a segment header"))
                } else {
                    SegmentHeader::decode(window.get(0, SEGMENT_HEADER_BYTES)?)
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
                    // The writer is creating this segment right now.
                    Err(_) if is_last => break,
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
                offset = SEGMENT_HEADER_BYTES as u64;
            }
            // The last segment may hold appended records that are not durable yet: read up to
            // the durable end the writer published (loaded after the header was found valid,
            // so the segment's creation is complete). Earlier segments are durable throughout.
            let durable_end = if is_last {
                fsys::load_durable_end(path, &file)?.unwrap_or(file_bytes)
            } else {
                file_bytes
            };

            // Walk records until the end of this segment's data.
            let fault = loop {
                if offset >= durable_end {
                    break None;
                }
                let room_bytes =
                    usize::try_from(file_bytes.saturating_sub(offset)).unwrap_or(usize::MAX);
                let header = window.get(offset, room_bytes.min(format::RECORD_HEADER_BYTES))?;
                let (len, span_bytes) = match format::record_start(header, room_bytes) {
                    Ok(RecordStart::End) => break None,
                    // Commits end on record boundaries: a record across the durable end is not
                    // durable (only a cut tail, lowering the watermark, could make one).
                    Ok(RecordStart::Record { span_bytes, .. })
                        if offset + span_bytes as u64 > durable_end =>
                    {
                        break None;
                    }
                    Ok(RecordStart::Record { len, span_bytes }) => (len, span_bytes),
                    Err(fault) => break Some(fault),
                };
                let record = window.get(offset, len as usize)?;
                match format::check_record(record, next_seq) {
                    Ok(payload) => {
                        if next_seq >= from_seq {
                            visit(next_seq, payload).map_err(JournalError::Apply)?;
                        }
                        offset += span_bytes as u64;
                        next_seq += 1;
                    }
                    Err(fault) => break Some(fault),
                }
            };
            self.cursor = Some(Cursor { segment_seq: segment.seq, offset, next_seq });
            if let Some(fault) = fault {
                if is_last {
                    // A record the writer is still copying, or a torn tail recovery will remove.
                    break;
                }
                return Err(JournalError::corrupt(path, offset, fault.reason));
            }
        }
        Ok(next_seq - 1)
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
        let from = (offset - self.start.unwrap_or(offset)) as usize;
        Ok(&self.buffer[from..from + length])
    }
}
