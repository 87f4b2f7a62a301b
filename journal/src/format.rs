//! The on-disk layout: byte offsets of segment headers, record headers and snapshot headers,
//! their encoding and checking, and the file names. Everything here is pure (no I/O) so the
//! writer, recovery and the tailing reader share one definition of "a valid record".
//!
//! All integers are little-endian. The layout is described byte by byte in the crate docs and in
//! `journal/FORMAT.md`; keep the three in step.

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PINSJRNL";
/// First 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"PINSSNAP";
/// Version of the segment and snapshot layouts described here.
pub const FORMAT_VERSION: u32 = 1;

/// Size of the fixed segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = 40;
/// Size of a record header (`len`, `crc32c`, `seq`); the payload starts here.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Records start on multiples of this many bytes (so the `u64` seq is naturally aligned).
pub const RECORD_ALIGN_BYTES: usize = 8;
/// Size of the fixed snapshot header; the snapshot bytes start here.
pub const SNAPSHOT_HEADER_BYTES: usize = 40;
/// Offset in the segment header of the durable-end watermark: a `u32` (little-endian, 4-byte
/// aligned, outside the header's CRC) holding the offset up to which the segment's records are
/// durable, in units of [`RECORD_ALIGN_BYTES`]. The writer stores it atomically after every
/// successful commit, recovery sets it to the recovered end, and the tailing reader reads no
/// record of the last segment beyond it. Zero means "not maintained" (a segment written before
/// the watermark existed); a segment created now starts at the end of its header.
pub const DURABLE_END_OFFSET: usize = 36;
/// The largest segment whose durable end the `u32` watermark can express: 32 GiB - 8.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64 * RECORD_ALIGN_BYTES as u64;

/// `value` rounded up to a multiple of [`RECORD_ALIGN_BYTES`].
pub const fn align_up(value: usize) -> usize {
    value.div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// Bytes a record with `payload_bytes` of payload occupies in a segment, padding included.
pub const fn record_span_bytes(payload_bytes: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + payload_bytes)
}

/// File name of the segment whose first record has sequence number `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.seg")
}

/// The spare segment: preallocated, all zeros, no header; the next roll gives it a header and
/// a segment's name. Its name is no segment's, so recovery and readers pass it by.
pub const SPARE_SEGMENT_FILE_NAME: &str = "segment.spare";

/// File name of the snapshot taken at sequence number `seq`.
pub fn snapshot_file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

/// The sequence number in a segment file name, or `None` if the name is not a segment's.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, "journal-", ".seg")
}

/// The sequence number in a snapshot file name, or `None` if the name is not a snapshot's.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, "snapshot-", ".snap")
}

fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    // Exactly 20 digits: anything else was not written by us and is left alone.
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

/// The decoded fixed header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment's first record (also in the file name).
    pub first_seq: u64,
    /// Length of the segment file in bytes, as preallocated.
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// The 40 header bytes: magic, version, reserved, first_seq, segment_bytes, CRC, and the
    /// durable-end watermark of an empty segment (see [`DURABLE_END_OFFSET`]).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 12..16 reserved, zero.
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        // 36..40: the durable-end watermark, outside the CRC: nothing after the header yet.
        out[DURABLE_END_OFFSET..DURABLE_END_OFFSET + 4]
            .copy_from_slice(&encode_durable_end(SEGMENT_HEADER_BYTES as u64).to_le_bytes());
        out
    }

    /// Decodes and checks a segment header; `Err` says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "segment header needs {SEGMENT_HEADER_BYTES} bytes, file has {}",
                bytes.len()
            ));
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".to_owned());
        }
        let stored_crc = u32_at(bytes, 32);
        let computed_crc = crc32c::crc32c(&bytes[0..32]);
        if stored_crc != computed_crc {
            return Err(format!(
                "segment header crc mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
            ));
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(format!("unsupported segment format version {version}"));
        }
        Ok(SegmentHeader { first_seq: u64_at(bytes, 16), segment_bytes: u64_at(bytes, 24) })
    }
}

/// The watermark value for a durable end at byte `offset` of a segment (a multiple of
/// [`RECORD_ALIGN_BYTES`], at most [`SEGMENT_BYTES_MAX`], which options validation ensures).
pub fn encode_durable_end(offset: u64) -> u32 {
    debug_assert!(offset.is_multiple_of(RECORD_ALIGN_BYTES as u64) && offset <= SEGMENT_BYTES_MAX);
    u32::try_from(offset / RECORD_ALIGN_BYTES as u64).unwrap_or(u32::MAX)
}

/// The durable end in bytes that a watermark value says, or `None` for zero (the segment's
/// writer did not maintain one: every record found is taken as durable).
pub fn decode_durable_end(raw: u32) -> Option<u64> {
    (raw != 0).then(|| u64::from(raw) * RECORD_ALIGN_BYTES as u64)
}

/// Writes a complete record (header, payload, zero padding) into `out`, which must be exactly
/// [`record_span_bytes`]`(payload.len())` long. `payload.len()` must fit the `len` field.
pub fn encode_record(out: &mut [u8], seq: u64, payload: &[u8]) {
    debug_assert_eq!(out.len(), record_span_bytes(payload.len()));
    let len = u32::try_from(RECORD_HEADER_BYTES + payload.len()).unwrap_or(u32::MAX);
    let len_bytes = len.to_le_bytes();
    let seq_bytes = seq.to_le_bytes();
    let crc = record_crc(len_bytes, seq_bytes, payload);
    out[0..4].copy_from_slice(&len_bytes);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out[8..16].copy_from_slice(&seq_bytes);
    let payload_end = RECORD_HEADER_BYTES + payload.len();
    out[RECORD_HEADER_BYTES..payload_end].copy_from_slice(payload);
    // Padding is written explicitly instead of trusting the file to be zero there: it costs at
    // most 7 bytes and keeps "every byte after the data is zero" true by construction.
    out[payload_end..].fill(0);
}

/// CRC-32C over `len`, `seq` and the payload, in that order (the CRC field itself is skipped).
fn record_crc(len_bytes: [u8; 4], seq_bytes: [u8; 8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len_bytes);
    let crc = crc32c::crc32c_append(crc, &seq_bytes);
    crc32c::crc32c_append(crc, payload)
}

/// What is at a record position: the end of data, or a record header to check further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordStart {
    /// A zero `len` (or no room for a record header before the end of the segment).
    End,
    /// A non-zero `len`: the record occupies `span_bytes` bytes if it is valid.
    Record {
        /// The `len` field: header plus payload bytes, padding excluded.
        len: u32,
        /// Bytes from the record start to the next record start.
        span_bytes: usize,
    },
}

/// Why the record at some offset is not the next valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFault {
    /// What is wrong, in words.
    pub reason: String,
    /// `true` when the damage could come from an interrupted write (bad length or checksum);
    /// `false` for a record with a valid checksum but the wrong sequence number, which no torn
    /// write can produce.
    pub maybe_torn: bool,
}

/// Reads the `len` field at the start of `header` (at least 4 bytes; fewer means the segment
/// ends here) and checks that a record of that length fits in `room_bytes` (the bytes from the
/// record start to the end of the segment).
pub fn record_start(header: &[u8], room_bytes: usize) -> Result<RecordStart, RecordFault> {
    if room_bytes < RECORD_HEADER_BYTES || header.len() < 4 {
        return Ok(RecordStart::End);
    }
    let len = u32_at(header, 0);
    if len == 0 {
        return Ok(RecordStart::End);
    }
    let len_bytes = len as usize;
    if len_bytes < RECORD_HEADER_BYTES {
        return Err(RecordFault {
            reason: format!("record length {len} is shorter than a record header"),
            maybe_torn: true,
        });
    }
    let span_bytes = align_up(len_bytes);
    if span_bytes > room_bytes {
        return Err(RecordFault {
            reason: format!(
                "record length {len} runs past the end of the segment ({room_bytes} bytes left)"
            ),
            maybe_torn: true,
        });
    }
    Ok(RecordStart::Record { len, span_bytes })
}

/// Checks a whole record (`record` is its `len` bytes, header included, padding excluded)
/// against its checksum and the sequence number it must carry. Returns the payload.
pub fn check_record(record: &[u8], expected_seq: u64) -> Result<&[u8], RecordFault> {
    debug_assert!(record.len() >= RECORD_HEADER_BYTES);
    let stored_crc = u32_at(record, 4);
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&record[0..4]);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&record[8..16]);
    let payload = &record[RECORD_HEADER_BYTES..];
    let computed_crc = record_crc(len_bytes, seq_bytes, payload);
    if stored_crc != computed_crc {
        return Err(RecordFault {
            reason: format!(
                "record crc mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
            ),
            maybe_torn: true,
        });
    }
    let seq = u64::from_le_bytes(seq_bytes);
    if seq != expected_seq {
        return Err(RecordFault {
            reason: format!("sequence gap: expected seq {expected_seq}, record says {seq}"),
            maybe_torn: false,
        });
    }
    Ok(payload)
}

/// The decoded header of a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Every record with a sequence number up to and including this one is in the image.
    pub seq: u64,
    /// Length of the image in bytes (what follows the header).
    pub len: u64,
    /// The image's own format, the writer's to number (bytes 12..16; zero in files written
    /// before the field had a meaning, when it was reserved and zero).
    pub image_format: u32,
}

/// The 40 header bytes of a snapshot of `bytes` taken at `seq`, an image in `image_format`.
pub fn encode_snapshot_header(
    seq: u64,
    image_format: u32,
    bytes: &[u8],
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut out = [0u8; SNAPSHOT_HEADER_BYTES];
    out[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&image_format.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..32].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..32]), bytes);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
    // 36..40 padding, zero.
    out
}

/// Checks a whole snapshot file's contents; returns the header and the image bytes.
pub fn decode_snapshot(file: &[u8]) -> Result<(SnapshotHeader, &[u8]), String> {
    if file.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!(
            "snapshot needs a {SNAPSHOT_HEADER_BYTES}-byte header, file has {} bytes",
            file.len()
        ));
    }
    if file[0..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic".to_owned());
    }
    let version = u32_at(file, 8);
    if version != FORMAT_VERSION {
        return Err(format!("unsupported snapshot format version {version}"));
    }
    let header = SnapshotHeader {
        seq: u64_at(file, 16),
        len: u64_at(file, 24),
        image_format: u32_at(file, 12),
    };
    let image = &file[SNAPSHOT_HEADER_BYTES..];
    if image.len() as u64 != header.len {
        return Err(format!(
            "snapshot header says {} image bytes, file holds {}",
            header.len,
            image.len()
        ));
    }
    let stored_crc = u32_at(file, 32);
    let computed_crc = crc32c::crc32c_append(crc32c::crc32c(&file[0..32]), image);
    if stored_crc != computed_crc {
        return Err(format!(
            "snapshot crc mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
        ));
    }
    Ok((header, image))
}

/// Index of the last non-zero byte of `bytes`, or `None` if all are zero. Scans backwards in
/// blocks, comparing 8 bytes at a time, because recovery runs it over the unused tail of a
/// 64 MiB segment.
pub fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const BLOCK_BYTES: usize = 4096;
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK_BYTES);
        let block = &bytes[start..end];
        let words = block.chunks_exact(8);
        let rest_nonzero = words.remainder().iter().any(|&b| b != 0);
        let any_nonzero = rest_nonzero
            || words.into_iter().any(|word| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(word);
                u64::from_ne_bytes(raw) != 0
            });
        if any_nonzero {
            return block.iter().rposition(|&b| b != 0).map(|index| start + index);
        }
        end = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = SegmentHeader { first_seq: 42, segment_bytes: 65_536 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..(36 * 8) {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&damaged).is_err(), "bit {bit} flip accepted");
        }
        assert!(SegmentHeader::decode(&[0u8; SEGMENT_HEADER_BYTES]).is_err());
        assert!(SegmentHeader::decode(&bytes[..20]).is_err());
        // The watermark is outside the CRC: the writer moves it without rewriting the header.
        assert_eq!(u32_at(&bytes, DURABLE_END_OFFSET), 5);
        let mut moved = bytes;
        moved[DURABLE_END_OFFSET..DURABLE_END_OFFSET + 4]
            .copy_from_slice(&encode_durable_end(65_528).to_le_bytes());
        assert_eq!(SegmentHeader::decode(&moved), Ok(header));
    }

    #[test]
    fn durable_end_round_trips_and_zero_means_unknown() {
        assert_eq!(decode_durable_end(0), None);
        for offset in [40u64, 48, 65_536, 64 << 20, SEGMENT_BYTES_MAX] {
            assert_eq!(decode_durable_end(encode_durable_end(offset)), Some(offset));
        }
    }

    #[test]
    fn record_round_trips_and_every_bit_flip_is_caught() {
        let payload = b"seven b";
        let mut out = vec![0xffu8; record_span_bytes(payload.len())];
        encode_record(&mut out, 9, payload);
        assert_eq!(out.len(), 24);
        assert_eq!(&out[23..], &[0]);
        let Ok(RecordStart::Record { len, span_bytes }) = record_start(&out, out.len()) else {
            panic!("record start not recognised");
        };
        assert_eq!((len, span_bytes), (23, 24));
        assert_eq!(check_record(&out[..len as usize], 9), Ok(&payload[..]));
        let fault = check_record(&out[..len as usize], 10).err();
        assert_eq!(fault.map(|f| f.maybe_torn), Some(false));
        for bit in 0..(len as usize * 8) {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let ok = match record_start(&damaged, damaged.len()) {
                Ok(RecordStart::Record { len, .. }) => {
                    check_record(&damaged[..len as usize], 9).is_ok()
                }
                _ => false,
            };
            assert!(!ok, "bit {bit} flip accepted");
        }
    }

    #[test]
    fn empty_payload_is_a_record_not_the_end() {
        let mut out = vec![0u8; record_span_bytes(0)];
        encode_record(&mut out, 1, &[]);
        assert_eq!(record_start(&out, 16), Ok(RecordStart::Record { len: 16, span_bytes: 16 }));
        assert_eq!(check_record(&out, 1), Ok(&[][..]));
    }

    #[test]
    fn record_start_recognises_end_and_overrun() {
        assert_eq!(record_start(&[0; 16], 16), Ok(RecordStart::End));
        assert_eq!(record_start(&[1; 16], 8), Ok(RecordStart::End));
        assert!(record_start(&[8, 0, 0, 0], 64).is_err());
        assert!(record_start(&[100, 0, 0, 0], 64).is_err());
    }

    #[test]
    fn snapshot_round_trips_and_rejects_damage() {
        let image = b"state of the shard";
        let mut file = encode_snapshot_header(77, 3, image).to_vec();
        file.extend_from_slice(image);
        let (header, decoded) = decode_snapshot(&file).unwrap_or_else(|e| panic!("{e}"));
        let len = image.len() as u64;
        assert_eq!(header, SnapshotHeader { seq: 77, len, image_format: 3 });
        assert_eq!(decoded, image);
        let mut damaged = file.clone();
        damaged[SNAPSHOT_HEADER_BYTES + 3] ^= 0x10;
        assert!(decode_snapshot(&damaged).is_err());
        assert!(decode_snapshot(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(1), "journal-00000000000000000001.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(5)), Some(5));
        assert_eq!(parse_segment_file_name("journal-1.seg"), None);
        assert_eq!(parse_snapshot_file_name("snapshot-00000000000000000005.snap.tmp"), None);
    }

    #[test]
    fn last_nonzero_finds_the_last_byte() {
        let mut bytes = vec![0u8; 10_000];
        assert_eq!(last_nonzero(&bytes), None);
        bytes[3] = 1;
        assert_eq!(last_nonzero(&bytes), Some(3));
        bytes[9_999] = 1;
        assert_eq!(last_nonzero(&bytes), Some(9_999));
        bytes[9_999] = 0;
        bytes[5_000] = 7;
        assert_eq!(last_nonzero(&bytes), Some(5_000));
    }
}
