//! Shared helpers for the journal's integration tests: a seeded PRNG (splitmix64), payloads that
//! can be regenerated from (seed, seq), journals written in commit groups, crash images (copies
//! of a directory), and an independent parser of the documented segment layout that tells the
//! tests where every record sits.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use pinswitch_journal::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use pinswitch_journal::{Journal, JournalError, JournalOptions};

/// A test error: anything printable.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// splitmix64: tiny, seedable, good enough to pick sizes and bytes.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..bound` (bound > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// The payload of record `seq` in a journal written with `seed`: mostly 0..300 bytes, one in
/// eight up to 2000 bytes, a few empty.
pub(crate) fn payload(seed: u64, seq: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed ^ seq.wrapping_mul(0xA076_1D64_78BD_642F));
    let len = match rng.below(16) {
        0 => 0,
        1 | 2 => rng.below(2000) as usize,
        _ => rng.below(300) as usize,
    };
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Opens (recovering) the journal in `dir`, replaying nothing.
pub(crate) fn open(dir: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
    let (_, recovery) = Journal::recover(dir, options)?;
    recovery.into_journal()
}

/// Appends records `journal.last_seq() + 1 ..= up_to_seq` with [`payload`], committing in
/// groups of 1..=max_group records chosen by `rng`. Returns the commit groups as
/// (first_seq, last_seq).
pub(crate) fn write_groups(
    journal: &mut Journal,
    seed: u64,
    up_to_seq: u64,
    max_group: u64,
    rng: &mut SplitMix64,
) -> Result<Vec<(u64, u64)>, JournalError> {
    let mut groups = Vec::new();
    while journal.last_seq() < up_to_seq {
        let first = journal.last_seq() + 1;
        let size = 1 + rng.below(max_group);
        let last = (first + size - 1).min(up_to_seq);
        for seq in first..=last {
            let got = journal.append(&payload(seed, seq))?;
            assert_eq!(got, seq);
        }
        journal.commit()?;
        assert_eq!(journal.durable_seq(), last);
        groups.push((first, last));
    }
    Ok(groups)
}

/// Replays the whole journal (after `after_seq`) into a vector of (seq, payload).
pub(crate) fn replay_all(
    dir: &Path,
    options: JournalOptions,
    after_seq: u64,
) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
    let (_, mut recovery) = Journal::recover(dir, options)?;
    let mut records = Vec::new();
    let last = recovery.replay(after_seq, |seq, payload| {
        records.push((seq, payload.to_vec()));
        Ok(())
    })?;
    assert_eq!(last, records.last().map_or(after_seq, |(seq, _)| *seq));
    Ok(records)
}

/// Asserts `records` are exactly seqs `first..=last` of the journal written with `seed`.
pub(crate) fn assert_records(records: &[(u64, Vec<u8>)], seed: u64, first: u64, last: u64) {
    let expected_count = (last + 1).saturating_sub(first) as usize;
    assert_eq!(
        records.len(),
        expected_count,
        "expected seqs {first}..={last}, got {} records",
        records.len()
    );
    for (index, (seq, bytes)) in records.iter().enumerate() {
        assert_eq!(*seq, first + index as u64);
        assert!(*bytes == payload(seed, *seq), "payload of seq {seq} differs");
    }
}

/// Segment files of `dir`, sorted.
pub(crate) fn segment_paths(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Where one record sits, found by parsing the documented layout independently of the crate.
#[derive(Clone, Debug)]
pub(crate) struct Placed {
    pub seq: u64,
    pub file: PathBuf,
    pub offset: usize,
    /// The `len` field: header + payload.
    pub len: usize,
    /// Bytes to the next record.
    pub span: usize,
}

/// Every record of every segment in `dir`, following the format docs: 40-byte header, then
/// `len u32 | crc u32 | seq u64 | payload | pad to 8` until a zero `len`.
pub(crate) fn layout(dir: &Path) -> Result<Vec<Placed>, std::io::Error> {
    let mut placed = Vec::new();
    for file in segment_paths(dir)? {
        let bytes = fs::read(&file)?;
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset + RECORD_HEADER_BYTES <= bytes.len() {
            let len = u32::from_le_bytes([
                bytes[offset],
                bytes[offset + 1],
                bytes[offset + 2],
                bytes[offset + 3],
            ]) as usize;
            if len == 0 {
                break;
            }
            let mut seq_bytes = [0u8; 8];
            seq_bytes.copy_from_slice(&bytes[offset + 8..offset + 16]);
            let span = len.div_ceil(8) * 8;
            placed.push(Placed {
                seq: u64::from_le_bytes(seq_bytes),
                file: file.clone(),
                offset,
                len,
                span,
            });
            offset += span;
        }
    }
    Ok(placed)
}

/// Copies the journal files of `from` into a fresh directory `to` (a crash image to edit).
pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<(), std::io::Error> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The same file in another directory.
pub(crate) fn in_dir(dir: &Path, file: &Path) -> PathBuf {
    dir.join(file.file_name().unwrap_or_default())
}

/// Zeroes `path` from `offset` to its end (the file keeps its length, as a preallocated segment
/// would after a crash).
pub(crate) fn zero_from(path: &Path, offset: usize) -> Result<(), std::io::Error> {
    let mut bytes = fs::read(path)?;
    let offset = offset.min(bytes.len());
    bytes[offset..].fill(0);
    fs::write(path, bytes)
}

/// Flips one bit of `path` at `offset`.
pub(crate) fn flip_bit(path: &Path, offset: usize, bit: u8) -> Result<(), std::io::Error> {
    let mut bytes = fs::read(path)?;
    bytes[offset] ^= 1 << bit;
    fs::write(path, bytes)
}

/// How many records of `placed` (in seq order) are still intact in `image` compared with the
/// files they were placed from: the expected recovered prefix after damage to the image.
pub(crate) fn intact_prefix(placed: &[Placed], image: &Path) -> Result<u64, std::io::Error> {
    let mut cache: Vec<(PathBuf, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut count = 0;
    for record in placed {
        if !cache.iter().any(|(file, _, _)| *file == record.file) {
            let before = fs::read(&record.file)?;
            let after = fs::read(in_dir(image, &record.file)).unwrap_or_default();
            cache.push((record.file.clone(), before, after));
        }
        let Some((_, before, after)) = cache.iter().find(|(file, _, _)| *file == record.file)
        else {
            break;
        };
        let range = record.offset..record.offset + record.len;
        if after.len() < range.end || before[range.clone()] != after[range] {
            break;
        }
        count += 1;
    }
    Ok(count)
}
