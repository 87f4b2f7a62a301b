//! The tailing reader: reads what a live writer committed, resumes from where it stopped,
//! follows segment rolls, stops cleanly at a torn or growing tail, and reports real damage.

mod common;

use std::fs;

use common::{
    SplitMix64, TestResult, assert_records, copy_dir, flip_bit, in_dir, layout, open, payload,
    segment_paths, write_groups, zero_from,
};
use pinswitch_journal::format::DURABLE_END_OFFSET;
use pinswitch_journal::{JournalError, JournalOptions, Reader};

const SEED: u64 = 0x5eed_0005;

fn read_all(
    reader: &mut Reader,
    from_seq: u64,
) -> Result<(u64, Vec<(u64, Vec<u8>)>), JournalError> {
    let mut records = Vec::new();
    let last = reader.read_from(from_seq, |seq, bytes| {
        records.push((seq, bytes.to_vec()));
        Ok(())
    })?;
    Ok((last, records))
}

#[test]
fn reader_follows_a_live_writer() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut rng = SplitMix64::new(SEED);
    let mut journal = open(temp.path(), options)?;
    let mut reader = Reader::open(temp.path())?;
    assert_eq!(read_all(&mut reader, 1)?, (0, Vec::new()), "an empty journal has nothing");

    write_groups(&mut journal, SEED, 700, 20, &mut rng)?;
    let (last, records) = read_all(&mut reader, 1)?;
    assert_eq!(last, 700);
    assert_records(&records, SEED, 1, 700);

    // Nothing new yet: same end, no records.
    let (last, records) = read_all(&mut reader, 701)?;
    assert_eq!((last, records.len()), (700, 0));

    // The writer goes on across more segment rolls; the reader resumes where it stopped.
    let segments_before = segment_paths(temp.path())?.len();
    write_groups(&mut journal, SEED, 1_500, 20, &mut rng)?;
    assert!(segment_paths(temp.path())?.len() > segments_before);
    let (last, records) = read_all(&mut reader, 701)?;
    assert_eq!(last, 1_500);
    assert_records(&records, SEED, 701, 1_500);

    // A fresh reader can start in the middle of any segment.
    let mut other = Reader::open(temp.path())?;
    let (last, records) = read_all(&mut other, 1_234)?;
    assert_eq!(last, 1_500);
    assert_records(&records, SEED, 1_234, 1_500);
    Ok(())
}

#[test]
fn reader_sees_no_record_before_its_commit() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 40, 7, &mut SplitMix64::new(SEED))?;
    let mut reader = Reader::open(temp.path())?;
    assert_eq!(read_all(&mut reader, 1)?.0, 40);

    // Appended, so in the shared page cache with valid checksums, but not msynced: a power
    // loss could take them back and recovery would reuse their seqs. Not delivered.
    for seq in 41..=45 {
        assert_eq!(journal.append(&payload(SEED, seq))?, seq);
    }
    assert_eq!((journal.last_seq(), journal.durable_seq()), (45, 40));
    assert_eq!(
        read_all(&mut reader, 41)?,
        (40, Vec::new()),
        "the resumed reader stops at the durable end"
    );
    assert_eq!(read_all(&mut Reader::open(temp.path())?, 1)?.0, 40, "a fresh reader too");

    journal.commit()?;
    let (last, records) = read_all(&mut reader, 41)?;
    assert_eq!(last, 45);
    assert_records(&records, SEED, 41, 45);

    // Across a roll: records appended into the new segment wait for their commit as well,
    // while the rolled segment (committed by the roll) is read whole.
    let segments_before = segment_paths(temp.path())?.len();
    let mut seq = 45;
    while segment_paths(temp.path())?.len() == segments_before {
        seq += 1;
        journal.append(&payload(SEED, seq))?;
    }
    assert!(journal.durable_seq() < seq, "the record that rolled is not committed yet");
    let durable = journal.durable_seq();
    let (last, records) = read_all(&mut reader, 46)?;
    assert_eq!(last, durable);
    assert_records(&records, SEED, 46, durable);
    journal.commit()?;
    assert_eq!(read_all(&mut reader, durable + 1)?.0, seq);

    // An appended record waits in the writer's memory until a commit writes it, so a process
    // crash before the commit takes it away (it was never acknowledged); recovery publishes the
    // recovered end, and the next record reuses the seq.
    journal.append(&payload(SEED, seq + 1))?;
    assert_eq!(read_all(&mut reader, seq + 1)?.0, seq);
    drop(journal); // no commit on drop: as if killed
    let mut journal = open(temp.path(), options)?;
    assert_eq!(read_all(&mut reader, seq + 1)?.0, seq);
    assert_eq!(journal.append(&payload(SEED, seq + 1))?, seq + 1);
    journal.commit()?;
    assert_eq!(read_all(&mut reader, seq + 1)?.0, seq + 1);
    Ok(())
}

#[test]
fn a_segment_without_a_watermark_is_read_to_its_end_until_recovery_sets_one() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 300, 20, &mut SplitMix64::new(SEED))?;
    drop(journal);
    // A journal written before the watermark existed: zero padding at bytes 36..40.
    let last = segment_paths(temp.path())?.pop().ok_or("no segment")?;
    let mut bytes = fs::read(&last)?;
    assert_ne!(&bytes[DURABLE_END_OFFSET..DURABLE_END_OFFSET + 4], &[0; 4]);
    bytes[DURABLE_END_OFFSET..DURABLE_END_OFFSET + 4].fill(0);
    fs::write(&last, &bytes)?;
    let (end, records) = read_all(&mut Reader::open(temp.path())?, 1)?;
    assert_eq!(end, 300);
    assert_records(&records, SEED, 1, 300);
    // The first writer to open it publishes the recovered end; its appends then wait for commits.
    let mut journal = open(temp.path(), options)?;
    assert_ne!(&fs::read(&last)?[DURABLE_END_OFFSET..DURABLE_END_OFFSET + 4], &[0; 4]);
    journal.append(&payload(SEED, 301))?;
    assert_eq!(read_all(&mut Reader::open(temp.path())?, 1)?.0, 300);
    journal.commit()?;
    assert_eq!(read_all(&mut Reader::open(temp.path())?, 1)?.0, 301);
    Ok(())
}

#[test]
fn reader_in_another_thread_sees_every_committed_record() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    const TOTAL: u64 = 2_000;
    let dir = temp.path().to_path_buf();
    std::thread::scope(|scope| -> TestResult {
        let reader_thread = scope.spawn(move || -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
            let mut reader = Reader::open(&dir)?;
            let mut seen = Vec::new();
            let mut next = 1;
            while next <= TOTAL {
                let last = reader.read_from(next, |seq, bytes| {
                    seen.push((seq, bytes.to_vec()));
                    Ok(())
                })?;
                next = last + 1;
                std::thread::yield_now();
            }
            Ok(seen)
        });
        write_groups(&mut journal, SEED, TOTAL, 25, &mut SplitMix64::new(SEED))?;
        let seen = reader_thread.join().map_err(|_| "reader thread panicked")??;
        assert_records(&seen, SEED, 1, TOTAL);
        Ok(())
    })
}

#[test]
fn reader_stops_cleanly_at_a_torn_tail_and_reports_damage_earlier() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let options = JournalOptions::test_min();
    let mut journal = open(&original, options)?;
    write_groups(&mut journal, SEED, 600, 20, &mut SplitMix64::new(SEED))?;
    drop(journal);
    let placed = layout(&original)?;

    // Half of the last record missing (a crash image before recovery ran): the prefix.
    let torn = temp.path().join("torn");
    copy_dir(&original, &torn)?;
    let last = &placed[placed.len() - 1];
    zero_from(&in_dir(&torn, &last.file), last.offset + last.len / 2)?;
    let (end, records) = read_all(&mut Reader::open(&torn)?, 1)?;
    assert_eq!(end, last.seq - 1);
    assert_records(&records, SEED, 1, last.seq - 1);

    // A flipped bit in the first segment: Corrupt with file and offset.
    let damaged = temp.path().join("damaged");
    copy_dir(&original, &damaged)?;
    flip_bit(&in_dir(&damaged, &placed[10].file), placed[10].offset + 17, 2)?;
    match read_all(&mut Reader::open(&damaged)?, 1) {
        Err(JournalError::Corrupt { path, offset, .. }) => {
            assert_eq!(
                (path, offset),
                (in_dir(&damaged, &placed[10].file), placed[10].offset as u64)
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // Records that are no longer in the journal (first segment archived away).
    fs::remove_file(in_dir(&damaged, &placed[0].file))?;
    assert!(matches!(read_all(&mut Reader::open(&damaged)?, 1), Err(JournalError::Corrupt { .. })));
    Ok(())
}

#[test]
fn reader_visitor_errors_pass_through() -> TestResult {
    let temp = tempfile::tempdir()?;
    let mut journal = open(temp.path(), JournalOptions::test_min())?;
    for seq in 1..=5 {
        journal.append(&payload(SEED, seq))?;
    }
    journal.commit()?;
    let mut reader = Reader::open(temp.path())?;
    let result = reader
        .read_from(1, |seq, _| if seq == 3 { Err("export failed".to_owned()) } else { Ok(()) });
    assert!(matches!(result, Err(JournalError::Apply(message)) if message == "export failed"));
    assert!(Reader::open(&temp.path().join("missing")).is_err());
    Ok(())
}
