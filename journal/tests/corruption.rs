//! Damage that is not a torn tail must stop recovery with `Corrupt` naming the file and byte
//! offset; damage inside the last commit window is truncated like a torn write (the documented
//! limit of the rule).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{
    Placed, SplitMix64, TestResult, assert_records, copy_dir, flip_bit, in_dir, layout, open,
    replay_all, segment_paths, write_groups,
};
use pinswitch_journal::{Journal, JournalError, JournalOptions};

const SEED: u64 = 0x5eed_0003;

/// A committed journal whose last segment holds well over one commit window of records.
fn build(dir: &Path) -> Result<Vec<Placed>, Box<dyn std::error::Error>> {
    let options = JournalOptions::test_min();
    let mut journal = open(dir, options)?;
    let mut rng = SplitMix64::new(SEED);
    let mut target = 200;
    loop {
        write_groups(&mut journal, SEED, target, 8, &mut rng)?;
        let placed = layout(dir)?;
        let last_file = &placed[placed.len() - 1].file;
        let first_in_last = placed
            .iter()
            .find(|record| record.file == *last_file)
            .map_or(0, |record| record.offset);
        let end = placed[placed.len() - 1].offset + placed[placed.len() - 1].span;
        if segment_paths(dir)?.len() >= 3
            && end - first_in_last > 2 * options.commit_bytes_max as usize
        {
            return Ok(placed);
        }
        target += 20;
    }
}

fn image_of(original: &Path, image: &Path) -> TestResult {
    if image.exists() {
        fs::remove_dir_all(image)?;
    }
    copy_dir(original, image)?;
    Ok(())
}

/// Recovers `dir` (replay and into_journal must agree) and returns the Corrupt error's parts.
fn expect_corrupt(dir: &Path) -> Result<(PathBuf, u64, String), Box<dyn std::error::Error>> {
    let options = JournalOptions::test_min();
    let (_, recovery) = Journal::recover(dir, options)?;
    let via_into = recovery.into_journal().err();
    match replay_all(dir, options, 0) {
        Err(JournalError::Corrupt { path, offset, reason }) => {
            let Some(JournalError::Corrupt { path: path2, offset: offset2, .. }) = via_into else {
                return Err(format!("into_journal did not report Corrupt: {via_into:?}").into());
            };
            assert_eq!((&path, offset), (&path2, offset2));
            Ok((path, offset, reason))
        }
        other => Err(format!("expected Corrupt, got {other:?}").into()),
    }
}

#[test]
fn flipped_bit_far_from_the_end_of_the_last_segment_is_corruption() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let placed = build(&original)?;
    let last_file = placed[placed.len() - 1].file.clone();
    // The second record of the last segment: far more than a commit window before the end.
    let victim =
        placed.iter().filter(|record| record.file == last_file).nth(1).ok_or("too few records")?;
    for (delta, bit) in [(0, 3), (5, 0), (9, 7), (victim.len - 1, 1)] {
        image_of(&original, &image)?;
        flip_bit(&in_dir(&image, &victim.file), victim.offset + delta, bit)?;
        let (path, offset, reason) = expect_corrupt(&image)?;
        assert_eq!(path, in_dir(&image, &victim.file));
        assert_eq!(offset, victim.offset as u64, "{reason}");
        let message = JournalError::Corrupt { path, offset, reason }.to_string();
        assert!(
            message.contains(".seg") && message.contains(&format!("offset {}", victim.offset)),
            "{message}"
        );
    }
    Ok(())
}

#[test]
fn flipped_bit_in_an_earlier_segment_is_corruption_even_near_its_end() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let placed = build(&original)?;
    let first_file = placed[0].file.clone();
    let last_of_first =
        placed.iter().filter(|record| record.file == first_file).last().ok_or("empty segment")?;
    for victim in [&placed[3], last_of_first] {
        image_of(&original, &image)?;
        flip_bit(&in_dir(&image, &victim.file), victim.offset + 16, 4)?;
        let (path, offset, _) = expect_corrupt(&image)?;
        assert_eq!((path, offset), (in_dir(&image, &first_file), victim.offset as u64));
    }
    // A damaged header of an earlier segment.
    image_of(&original, &image)?;
    flip_bit(&in_dir(&image, &first_file), 17, 0)?;
    let (path, offset, reason) = expect_corrupt(&image)?;
    assert_eq!((path, offset), (in_dir(&image, &first_file), 0), "{reason}");
    Ok(())
}

#[test]
fn flipped_bit_in_the_last_commit_window_is_truncated_like_a_torn_write() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let placed = build(&original)?;
    let count = placed.len();
    for victim in [&placed[count - 1], &placed[count - 3]] {
        image_of(&original, &image)?;
        flip_bit(&in_dir(&image, &victim.file), victim.offset + 20.min(victim.len - 1), 6)?;
        let records = replay_all(&image, JournalOptions::test_min(), 0)?;
        assert_records(&records, SEED, 1, victim.seq - 1);
        // The truncation was made durable: the bytes after the prefix are zero now.
        let bytes = fs::read(in_dir(&image, &victim.file))?;
        assert!(bytes[victim.offset..].iter().all(|&b| b == 0));
    }
    Ok(())
}

#[test]
fn a_checksummed_record_with_the_wrong_seq_is_corruption_not_a_torn_tail() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let placed = build(&original)?;
    let last = &placed[placed.len() - 1];
    // Rewrite the last record's seq and recompute its CRC (len, seq, payload).
    let mut bytes = fs::read(&last.file)?;
    let record = &mut bytes[last.offset..last.offset + last.len];
    record[8..16].copy_from_slice(&(last.seq + 1).to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&record[0..4]), &record[8..16]),
        &record[16..],
    );
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    fs::write(&last.file, bytes)?;
    let (path, offset, reason) = expect_corrupt(&original)?;
    assert_eq!((path, offset), (last.file.clone(), last.offset as u64));
    assert!(reason.contains("sequence gap"), "{reason}");
    Ok(())
}

#[test]
fn data_beyond_the_commit_window_after_the_end_is_corruption() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let placed = build(&original)?;
    let last = &placed[placed.len() - 1];
    let end = last.offset + last.span;
    let stray = end + JournalOptions::test_min().commit_bytes_max as usize + 8;
    let mut bytes = fs::read(&last.file)?;
    assert!(stray < bytes.len(), "segment too full for this test");
    bytes[stray] = 0xAB;
    fs::write(&last.file, bytes)?;
    let (path, offset, reason) = expect_corrupt(&original)?;
    assert_eq!((path, offset), (last.file.clone(), end as u64));
    assert!(reason.contains("commit window"), "{reason}");
    Ok(())
}

#[test]
fn missing_or_misnamed_segments_are_corruption() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    build(&original)?;
    let segments = segment_paths(&original)?;

    // A middle segment gone: a sequence gap, reported at the next segment.
    image_of(&original, &image)?;
    fs::remove_file(in_dir(&image, &segments[1]))?;
    let (path, offset, reason) = expect_corrupt(&image)?;
    assert_eq!((path, offset), (in_dir(&image, &segments[2]), 0));
    assert!(reason.contains("sequence gap"), "{reason}");

    // The first segment gone (and no snapshot): records 1.. are missing.
    image_of(&original, &image)?;
    fs::remove_file(in_dir(&image, &segments[0]))?;
    let (path, _, reason) = expect_corrupt(&image)?;
    assert_eq!(path, in_dir(&image, &segments[1]));
    assert!(reason.contains("starts at seq"), "{reason}");

    // A segment renamed: its header disagrees with its name.
    image_of(&original, &image)?;
    let renamed = image.join(pinswitch_journal::format::segment_file_name(1_000_000));
    fs::rename(in_dir(&image, &segments[segments.len() - 1]), &renamed)?;
    let (path, offset, _) = expect_corrupt(&image)?;
    assert_eq!((path, offset), (renamed, 16));
    Ok(())
}

#[test]
fn an_invalid_last_header_with_records_behind_it_is_corruption_not_a_torn_roll() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    build(&original)?;
    let last_file = segment_paths(&original)?.pop().ok_or("no segments")?;
    flip_bit(&last_file, 2, 5)?;
    let (path, offset, reason) = expect_corrupt(&original)?;
    assert_eq!((path, offset), (last_file, 0));
    assert!(reason.contains("holds data"), "{reason}");
    Ok(())
}
