//! Round trips: append and commit across segment rolls, reopen, replay, continue; plus the
//! writer's limits (record size, options, the directory lock, the commit window).

mod common;

use common::{
    SplitMix64, TestResult, assert_records, open, payload, replay_all, segment_paths, write_groups,
};
use pinswitch_journal::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use pinswitch_journal::{Journal, JournalError, JournalOptions};

const SEED: u64 = 0x5eed_0001;

#[test]
fn round_trip_across_segment_rolls_and_reopens() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("shard-0");
    let options = JournalOptions::test_min();
    let mut rng = SplitMix64::new(SEED);

    let mut journal = open(&dir, options)?;
    assert_eq!((journal.last_seq(), journal.durable_seq()), (0, 0));
    write_groups(&mut journal, SEED, 1_500, 40, &mut rng)?;
    drop(journal);
    let segments = segment_paths(&dir)?;
    assert!(segments.len() >= 5, "only {} segments; the test should roll several", segments.len());
    for path in &segments {
        assert_eq!(
            std::fs::metadata(path)?.len(),
            options.segment_bytes,
            "segments are preallocated"
        );
    }
    assert_records(&replay_all(&dir, options, 0)?, SEED, 1, 1_500);

    // Reopen (after a replay) and continue: sequence numbers go on from 1501.
    let (snapshot, mut recovery) = Journal::recover(&dir, options)?;
    assert!(snapshot.is_none());
    let mut count = 0;
    assert_eq!(
        recovery.replay(0, |_, _| {
            count += 1;
            Ok(())
        })?,
        1_500
    );
    assert_eq!(count, 1_500);
    let mut journal = recovery.into_journal()?;
    assert_eq!((journal.last_seq(), journal.durable_seq()), (1_500, 1_500));
    write_groups(&mut journal, SEED, 2_000, 40, &mut rng)?;
    drop(journal);

    // Reopen without a replay (into_journal scans itself) and continue again.
    let mut journal = open(&dir, options)?;
    assert_eq!(journal.last_seq(), 2_000);
    write_groups(&mut journal, SEED, 2_300, 40, &mut rng)?;
    drop(journal);

    assert_records(&replay_all(&dir, options, 0)?, SEED, 1, 2_300);
    assert_records(&replay_all(&dir, options, 1_234)?, SEED, 1_235, 2_300);
    Ok(())
}

#[test]
fn empty_directory_starts_at_seq_one_and_empty_payloads_are_records() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let (snapshot, mut recovery) = Journal::recover(temp.path(), options)?;
    assert!(snapshot.is_none());
    assert_eq!(recovery.replay(0, |_, _| Err("nothing to apply".to_owned()))?, 0);
    let mut journal = recovery.into_journal()?;
    assert_eq!(journal.append(&[])?, 1);
    assert_eq!(journal.append(b"x")?, 2);
    assert_eq!(journal.append(&[])?, 3);
    journal.commit()?;
    drop(journal);
    let records = replay_all(temp.path(), options, 0)?;
    let lengths: Vec<(u64, usize)> =
        records.iter().map(|(seq, bytes)| (*seq, bytes.len())).collect();
    assert_eq!(lengths, vec![(1, 0), (2, 1), (3, 0)]);
    Ok(())
}

#[test]
fn uncommitted_records_die_with_the_process_and_started_commits_survive_it() -> TestResult {
    // Appended records wait in the writer's memory (never acknowledged), so a process exit
    // without a commit drops them. A pipelined commit writes them to the file when it starts:
    // an exit before its sync returned leaves them in the page cache, where recovery finds
    // them and makes them durable before new appends.
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    for seq in 1..=10 {
        journal.append(&payload(SEED, seq))?;
    }
    assert_eq!((journal.last_seq(), journal.durable_seq()), (10, 0));
    drop(journal);
    let mut journal = open(temp.path(), options)?;
    assert_eq!((journal.last_seq(), journal.durable_seq()), (0, 0));
    for seq in 1..=10 {
        journal.append(&payload(SEED, seq))?;
    }
    let request = journal.commit_start()?.expect("records wait");
    assert!(journal.commit_start()?.is_none(), "one commit in flight at a time");
    assert_eq!(request.last_seq(), 10);
    assert_eq!(journal.durable_seq(), 0, "nothing is durable before the sync returned");
    drop(request);
    drop(journal);
    let journal = open(temp.path(), options)?;
    assert_eq!((journal.last_seq(), journal.durable_seq()), (10, 10));
    drop(journal);
    let records = replay_all(temp.path(), options, 0)?;
    assert_eq!(records.len(), 10);
    Ok(())
}

#[test]
fn a_pipelined_commit_makes_its_records_durable_and_a_roll_meanwhile_keeps_them() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    journal.append(&payload(SEED, 1))?;
    let request = journal.commit_start()?.expect("a record waits");
    // Appends go on while the commit is in flight, across a segment roll (committed in line).
    let mut seq = 1;
    let segments = std::fs::read_dir(temp.path())?.count();
    while std::fs::read_dir(temp.path())?.count() == segments {
        seq += 1;
        journal.append(&payload(SEED, seq))?;
    }
    let durable_after_roll = journal.durable_seq();
    assert!(durable_after_roll >= 1 && durable_after_roll < seq);
    let synced = request.sync();
    journal.commit_finish(request, synced)?;
    assert_eq!(
        journal.durable_seq(),
        durable_after_roll,
        "a finished commit never moves the durable end back"
    );
    let request = journal.commit_start()?.expect("the record that rolled waits");
    let synced = request.sync();
    journal.commit_finish(request, synced)?;
    assert_eq!(journal.durable_seq(), seq);
    drop(journal);
    assert_eq!(replay_all(temp.path(), options, 0)?.len() as u64, seq);
    Ok(())
}

#[test]
fn append_commits_early_to_keep_a_group_commit_within_the_window() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    let record = [7u8; 1000];
    let span = RECORD_HEADER_BYTES + record.len();
    let fits = options.commit_bytes_max as usize / span;
    for _ in 0..fits {
        journal.append(&record)?;
    }
    assert_eq!(journal.durable_seq(), 0, "{fits} records fit the window");
    journal.append(&record)?;
    assert_eq!(
        journal.durable_seq(),
        fits as u64,
        "the record that would overflow the window commits the others first"
    );
    Ok(())
}

#[test]
fn oversized_records_are_rejected_and_the_largest_fits() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions { segment_bytes: 64 << 10, commit_bytes_max: 1 << 20 };
    let max = options.max_payload_bytes();
    assert_eq!(max, (64 << 10) - SEGMENT_HEADER_BYTES - RECORD_HEADER_BYTES);
    assert_eq!(JournalOptions::test_min().max_payload_bytes(), (16 << 10) - RECORD_HEADER_BYTES);
    let mut journal = open(temp.path(), options)?;
    journal.append(b"small")?;
    match journal.append(&vec![1u8; max + 1]) {
        Err(JournalError::RecordTooLarge { bytes, max: reported }) => {
            assert_eq!((bytes, reported), (max + 1, max))
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(journal.last_seq(), 1, "a rejected record changes nothing");
    // The largest record needs a segment of its own: this rolls.
    assert_eq!(journal.append(&vec![2u8; max])?, 2);
    assert_eq!(journal.append(b"after")?, 3);
    journal.commit()?;
    drop(journal);
    assert_eq!(segment_paths(temp.path())?.len(), 3);
    let records = replay_all(temp.path(), options, 0)?;
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].1.len(), max);
    Ok(())
}

#[test]
fn invalid_options_are_refused() -> TestResult {
    let temp = tempfile::tempdir()?;
    for options in [
        JournalOptions { segment_bytes: 1024, commit_bytes_max: 1024 },
        JournalOptions { segment_bytes: (64 << 10) + 4, commit_bytes_max: 1024 },
        JournalOptions { segment_bytes: 64 << 10, commit_bytes_max: 8 },
    ] {
        match Journal::recover(temp.path(), options) {
            Err(JournalError::InvalidOptions { reason }) => assert!(!reason.is_empty()),
            other => panic!("expected InvalidOptions for {options:?}, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_second_writer_is_locked_out_until_the_first_is_dropped() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let journal = open(temp.path(), options)?;
    match Journal::recover(temp.path(), options) {
        Err(error @ JournalError::Locked { .. }) => {
            assert!(error.to_string().contains("journal.lock"))
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(journal);
    let _again = open(temp.path(), options)?;
    Ok(())
}

#[test]
fn segments_written_with_other_options_are_still_read() -> TestResult {
    // Existing segments keep their length; new ones take the new options.
    let temp = tempfile::tempdir()?;
    let small = JournalOptions::test_min();
    let large = JournalOptions { segment_bytes: 256 << 10, commit_bytes_max: 64 << 10 };
    let mut rng = SplitMix64::new(SEED);
    let mut journal = open(temp.path(), small)?;
    write_groups(&mut journal, SEED, 500, 20, &mut rng)?;
    drop(journal);
    let mut journal = open(temp.path(), large)?;
    write_groups(&mut journal, SEED, 2_000, 20, &mut rng)?;
    drop(journal);
    let lengths: Vec<u64> = segment_paths(temp.path())?
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .collect();
    assert!(
        lengths.contains(&small.segment_bytes) && lengths.contains(&large.segment_bytes),
        "{lengths:?}"
    );
    assert_records(&replay_all(temp.path(), large, 0)?, SEED, 1, 2_000);
    Ok(())
}

#[test]
fn apply_errors_pass_through() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut rng = SplitMix64::new(SEED);
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 20, 5, &mut rng)?;
    drop(journal);
    let (_, mut recovery) = Journal::recover(temp.path(), options)?;
    let result = recovery
        .replay(0, |seq, _| if seq == 7 { Err("engine rejects seq 7".to_owned()) } else { Ok(()) });
    match result {
        Err(error @ JournalError::Apply(_)) => {
            assert!(error.to_string().contains("engine rejects seq 7"))
        }
        other => panic!("expected Apply, got {other:?}"),
    }
    // The recovery is still usable.
    let journal = recovery.into_journal()?;
    assert_eq!(journal.last_seq(), 20);
    Ok(())
}

/// The spare segment: taken at recovery, renamed into place by a roll (so the roll needs no
/// new space) and taken again; a spare with a header left by a roll that did not finish, or
/// of another length, is made ready again; readers and recovery pass it by.
#[test]
fn the_spare_segment_is_taken_ahead_and_becomes_the_next_segment() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("shard-0");
    let options = JournalOptions::test_min();
    let spare = dir.join(pinswitch_journal::format::SPARE_SEGMENT_FILE_NAME);
    let mut rng = SplitMix64::new(SEED ^ 0x5a);

    let mut journal = open(&dir, options)?;
    assert!(journal.spare_ready(), "recovery takes the next segment's space");
    assert_eq!(std::fs::metadata(&spare)?.len(), options.segment_bytes);
    assert!(
        journal.fits(options.max_payload_bytes()) && !journal.fits(options.max_payload_bytes() + 1)
    );
    assert_eq!(journal.segment_room_bytes() as u64, options.segment_bytes - 40);
    write_groups(&mut journal, SEED, 600, 40, &mut rng)?;
    assert!(segment_paths(&dir)?.len() >= 2, "the test should roll");
    assert!(journal.spare_ready(), "a roll takes the next spare");
    assert_eq!(std::fs::metadata(&spare)?.len(), options.segment_bytes);
    drop(journal);
    assert_records(&replay_all(&dir, options, 0)?, SEED, 1, 600);

    // A roll that wrote the spare's header and died before the rename: the spare is kept and
    // its header written again by the next roll.
    std::fs::write(&spare, vec![0xA5u8; 40])?;
    let mut journal = open(&dir, options)?;
    assert!(journal.spare_ready());
    assert_eq!(std::fs::metadata(&spare)?.len(), options.segment_bytes, "made whole again");
    write_groups(&mut journal, SEED, 1_200, 40, &mut rng)?;
    drop(journal);
    assert_records(&replay_all(&dir, options, 0)?, SEED, 1, 1_200);
    let mut reader = pinswitch_journal::Reader::open(&dir)?;
    let mut read = 0u64;
    let last = reader.read_from(1, |seq, _| {
        read += 1;
        if seq == read { Ok(()) } else { Err(format!("record {seq} where {read} was due")) }
    })?;
    assert_eq!((last, read), (1_200, 1_200), "the reader passes the spare by");

    // A spare of another length (the segment size was changed) is started over.
    std::fs::write(&spare, vec![0u8; 4096])?;
    let journal = open(&dir, options)?;
    assert!(journal.spare_ready());
    assert_eq!(std::fs::metadata(&spare)?.len(), options.segment_bytes);
    Ok(())
}
