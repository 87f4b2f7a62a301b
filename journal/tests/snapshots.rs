//! Snapshots: written atomically, newest two kept, recovery returns the newest valid one and
//! replays only what follows it, falling back past a damaged newest snapshot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{
    SplitMix64, TestResult, assert_records, flip_bit, layout, open, replay_all, segment_paths,
    write_groups, zero_from,
};
use pinswitch_journal::format::{SNAPSHOT_HEADER_BYTES, snapshot_file_name};
use pinswitch_journal::{Journal, JournalError, JournalOptions};

const SEED: u64 = 0x5eed_0004;

fn image(seq: u64) -> Vec<u8> {
    format!("engine state after seq {seq}").into_bytes()
}

fn snapshot_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_string_lossy().contains("snapshot-"))
        .collect();
    paths.sort();
    Ok(paths)
}

#[test]
fn recovery_returns_the_snapshot_and_replays_only_what_follows() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut rng = SplitMix64::new(SEED);
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 700, 10, &mut rng)?;
    journal.write_snapshot(650, 7, &image(650))?;
    write_groups(&mut journal, SEED, 1_100, 10, &mut rng)?;
    drop(journal);

    let (snapshot, mut recovery) = Journal::recover(temp.path(), options)?;
    let snapshot = snapshot.ok_or("no snapshot recovered")?;
    assert_eq!((snapshot.seq, &snapshot.bytes[..]), (650, &image(650)[..]));
    assert_eq!(snapshot.image_format, 7, "the image's format comes back as written");
    assert_eq!(recovery.snapshot_seq(), 650);
    let mut records = Vec::new();
    let last = recovery.replay(650, |seq, payload| {
        records.push((seq, payload.to_vec()));
        Ok(())
    })?;
    assert_eq!(last, 1_100);
    assert_records(&records, SEED, 651, 1_100);
    let mut journal = recovery.into_journal()?;
    assert_eq!(journal.append(b"next")?, 1_101);
    Ok(())
}

/// An image is written in flushed pieces (4 MiB each): one spanning several of them, with
/// a short last piece, comes back byte for byte.
#[test]
fn an_image_of_several_write_pieces_comes_back_whole() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 50, 10, &mut SplitMix64::new(SEED))?;
    let mut rng = SplitMix64::new(SEED ^ 1);
    let big: Vec<u8> = (0..(9 << 20) + 12_345).map(|_| rng.next_u64() as u8).collect();
    journal.write_snapshot(50, 0, &big)?;
    drop(journal);
    let (snapshot, _) = Journal::recover(temp.path(), options)?;
    let snapshot = snapshot.ok_or("no snapshot recovered")?;
    assert_eq!(snapshot.seq, 50);
    assert!(snapshot.bytes[..] == big[..], "the image differs");
    Ok(())
}

#[test]
fn into_journal_without_replay_starts_after_the_snapshot() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 300, 10, &mut SplitMix64::new(SEED))?;
    journal.write_snapshot(300, 0, &image(300))?;
    drop(journal);
    let journal = open(temp.path(), options)?;
    assert_eq!(journal.last_seq(), 300);
    Ok(())
}

#[test]
fn only_the_newest_two_snapshots_are_kept_and_segments_stay() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut rng = SplitMix64::new(SEED);
    let mut journal = open(temp.path(), options)?;
    for (index, seq) in [100u64, 200, 300, 400].into_iter().enumerate() {
        write_groups(&mut journal, SEED, seq, 10, &mut rng)?;
        let segments_before = segment_paths(temp.path())?.len();
        journal.write_snapshot(seq, 0, &image(seq))?;
        assert_eq!(
            segment_paths(temp.path())?.len(),
            segments_before,
            "snapshots never delete segments"
        );
        assert_eq!(snapshot_files(temp.path())?.len(), (index + 1).min(2));
    }
    let names: Vec<PathBuf> = snapshot_files(temp.path())?;
    assert_eq!(
        names,
        vec![temp.path().join(snapshot_file_name(300)), temp.path().join(snapshot_file_name(400))]
    );
    // The first segment is still there for the settlement exporter.
    assert_eq!(layout(temp.path())?[0].seq, 1);
    Ok(())
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut rng = SplitMix64::new(SEED);
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 200, 10, &mut rng)?;
    journal.write_snapshot(200, 0, &image(200))?;
    write_groups(&mut journal, SEED, 400, 10, &mut rng)?;
    journal.write_snapshot(400, 0, &image(400))?;
    write_groups(&mut journal, SEED, 450, 10, &mut rng)?;
    drop(journal);

    let newest = temp.path().join(snapshot_file_name(400));
    for (offset, bit) in [(SNAPSHOT_HEADER_BYTES + 4, 2u8), (20, 0), (0, 7)] {
        let original = fs::read(&newest)?;
        flip_bit(&newest, offset, bit)?;
        let (snapshot, mut recovery) = Journal::recover(temp.path(), options)?;
        let snapshot = snapshot.ok_or("no snapshot recovered")?;
        assert_eq!((snapshot.seq, &snapshot.bytes[..]), (200, &image(200)[..]));
        assert_eq!(recovery.skipped_snapshots().len(), 1);
        assert_eq!(recovery.skipped_snapshots()[0].0, newest);
        let mut records = Vec::new();
        recovery.replay(snapshot.seq, |seq, payload| {
            records.push((seq, payload.to_vec()));
            Ok(())
        })?;
        assert_records(&records, SEED, 201, 450);
        drop(recovery);
        fs::write(&newest, original)?;
    }

    // Both damaged: no snapshot, replay from the start.
    zero_from(&newest, 10)?;
    zero_from(&temp.path().join(snapshot_file_name(200)), 0)?;
    let (snapshot, recovery) = Journal::recover(temp.path(), options)?;
    assert!(snapshot.is_none());
    assert_eq!(recovery.skipped_snapshots().len(), 2);
    drop(recovery);
    assert_records(&replay_all(temp.path(), options, 0)?, SEED, 1, 450);
    Ok(())
}

#[test]
fn a_snapshot_ahead_of_the_journal_is_refused_and_an_uncommitted_one_commits_first() -> TestResult {
    let temp = tempfile::tempdir()?;
    let mut journal = open(temp.path(), JournalOptions::test_min())?;
    journal.append(b"one")?;
    journal.append(b"two")?;
    match journal.write_snapshot(3, 0, b"x") {
        Err(JournalError::SnapshotAhead { seq: 3, last_seq: 2 }) => {}
        other => panic!("expected SnapshotAhead, got {other:?}"),
    }
    assert_eq!(journal.durable_seq(), 0);
    journal.write_snapshot(2, 0, b"x")?;
    assert_eq!(journal.durable_seq(), 2, "the snapshot's records are made durable first");
    Ok(())
}

#[test]
fn a_journal_that_lost_records_the_snapshot_covers_is_corruption() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 400, 10, &mut SplitMix64::new(SEED))?;
    journal.write_snapshot(390, 0, &image(390))?;
    drop(journal);
    // Cut the journal back to seq 380 (below the snapshot).
    let placed = layout(temp.path())?;
    let cut = &placed[380];
    zero_from(&cut.file, cut.offset)?;
    for later in segment_paths(temp.path())? {
        if later > cut.file {
            fs::remove_file(later)?;
        }
    }
    let (snapshot, mut recovery) = Journal::recover(temp.path(), options)?;
    assert_eq!(snapshot.map(|s| s.seq), Some(390));
    match recovery.replay(390, |_, _| Ok(())) {
        Err(JournalError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, cut.file);
            assert!(reason.contains("must reach seq 390"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Replaying from earlier does not excuse it either.
    assert!(matches!(recovery.replay(0, |_, _| Ok(())), Err(JournalError::Corrupt { .. })));
    Ok(())
}

#[test]
fn a_snapshot_without_any_segment_is_corruption() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    journal.append(b"one")?;
    journal.write_snapshot(1, 0, b"x")?;
    drop(journal);
    for segment in segment_paths(temp.path())? {
        fs::remove_file(segment)?;
    }
    let (_, recovery) = Journal::recover(temp.path(), options)?;
    assert!(matches!(recovery.into_journal(), Err(JournalError::Corrupt { .. })));
    Ok(())
}

#[test]
fn segments_wholly_before_the_snapshot_are_not_read() -> TestResult {
    // Documented: the snapshot covers them, only their headers are checked. A flipped record
    // bit there does not stop recovery from the snapshot (the tailing reader would report it).
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let mut journal = open(temp.path(), options)?;
    write_groups(&mut journal, SEED, 800, 10, &mut SplitMix64::new(SEED))?;
    journal.write_snapshot(700, 0, &image(700))?;
    drop(journal);
    let placed = layout(temp.path())?;
    flip_bit(&placed[5].file, placed[5].offset + 18, 1)?;
    let records = replay_all(temp.path(), options, 700)?;
    assert_records(&records, SEED, 701, 800);
    assert!(matches!(replay_all(temp.path(), options, 0), Err(JournalError::Corrupt { .. })));
    Ok(())
}

#[test]
fn leftover_snapshot_temp_files_are_removed() -> TestResult {
    let temp = tempfile::tempdir()?;
    let options = JournalOptions::test_min();
    let leftover = temp.path().join(format!("{}.tmp", snapshot_file_name(9)));
    fs::write(&leftover, b"half a snapshot")?;
    let (snapshot, recovery) = Journal::recover(temp.path(), options)?;
    assert!(snapshot.is_none());
    assert!(!leftover.exists());
    drop(recovery);
    Ok(())
}
