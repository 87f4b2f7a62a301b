//! Crash images: a committed journal is copied and the copy is cut (zeroed from some offset on,
//! later segments removed), torn page by page, or left with a half-written segment header;
//! recovery must replay exactly the intact prefix and then accept appends.

mod common;

use std::fs;
use std::path::Path;

use common::{
    Placed, SplitMix64, TestResult, assert_records, copy_dir, in_dir, intact_prefix, layout, open,
    payload, replay_all, segment_paths, write_groups, zero_from,
};
use pinswitch_journal::JournalOptions;
use pinswitch_journal::format::SEGMENT_HEADER_BYTES;

const SEED: u64 = 0x5eed_0002;

/// Builds a committed journal of `records` records over several segments; returns the commit
/// groups and the layout.
fn build(
    dir: &Path,
    records: u64,
    max_group: u64,
) -> Result<(Vec<(u64, u64)>, Vec<Placed>), Box<dyn std::error::Error>> {
    let mut journal = open(dir, JournalOptions::test_min())?;
    let groups = write_groups(&mut journal, SEED, records, max_group, &mut SplitMix64::new(SEED))?;
    drop(journal);
    let placed = layout(dir)?;
    assert_eq!(placed.len() as u64, records);
    Ok((groups, placed))
}

/// Makes a crash image of `original` in `image` cut at `offset` of `file`: that file zeroed
/// from `offset` on, later segments gone.
fn cut_image(original: &Path, image: &Path, file: &Path, offset: usize) -> TestResult {
    if image.exists() {
        fs::remove_dir_all(image)?;
    }
    copy_dir(original, image)?;
    let cut_file = in_dir(image, file);
    zero_from(&cut_file, offset)?;
    for later in segment_paths(image)? {
        if later > cut_file {
            fs::remove_file(later)?;
        }
    }
    Ok(())
}

/// Recovers `image`, checks the replay is exactly seqs 1..=expected, then appends one record
/// and checks it gets seq expected + 1 and survives another recovery.
fn check_recovers_prefix(image: &Path, expected: u64, what: &str) -> TestResult {
    let options = JournalOptions::test_min();
    let records = replay_all(image, options, 0).map_err(|error| format!("{what}: {error}"))?;
    assert_records(&records, SEED, 1, expected);
    let mut journal = open(image, options)?;
    assert_eq!(journal.last_seq(), expected, "{what}");
    assert_eq!(journal.append(&payload(SEED, expected + 1))?, expected + 1, "{what}");
    journal.commit()?;
    drop(journal);
    assert_records(&replay_all(image, options, 0)?, SEED, 1, expected + 1);
    Ok(())
}

#[test]
fn cut_at_every_record_boundary() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let (_, placed) = build(&original, 600, 12)?;
    assert!(segment_paths(&original)?.len() >= 3);
    for record in &placed {
        // Cutting where record `seq` starts keeps exactly seqs 1..seq-1.
        cut_image(&original, &image, &record.file, record.offset)?;
        check_recovers_prefix(&image, record.seq - 1, &format!("cut before seq {}", record.seq))?;
    }
    // And after the very last record: nothing lost.
    let last = &placed[placed.len() - 1];
    cut_image(&original, &image, &last.file, last.offset + last.span)?;
    check_recovers_prefix(&image, last.seq, "cut after the last record")?;
    Ok(())
}

#[test]
fn cut_inside_the_records_of_the_last_commit_group() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let (groups, placed) = build(&original, 400, 30)?;
    let (first, last) = groups[groups.len() - 1];
    let mut cases = 0;
    for record in placed.iter().filter(|record| record.seq >= first && record.seq <= last) {
        let inside =
            [1, 3, 4, 7, 8, 12, 15, 16, 17, record.len / 2, record.len - 1, record.span - 1];
        for delta in inside.into_iter().filter(|&delta| delta > 0 && delta < record.span) {
            let offset = record.offset + delta;
            cut_image(&original, &image, &record.file, offset)?;
            // Usually the prefix ends before this record; a cut in the padding, or one that only
            // zeroes bytes that were zero anyway, keeps it. Compare bytes to know which.
            let expected = intact_prefix(&placed, &image)?;
            assert!(
                expected == record.seq - 1 || expected == record.seq,
                "cut at {offset}: prefix {expected}"
            );
            if delta >= record.len {
                assert_eq!(expected, record.seq, "a cut in the padding keeps the record");
            }
            check_recovers_prefix(
                &image,
                expected,
                &format!("cut inside seq {} at +{delta}", record.seq),
            )?;
            cases += 1;
        }
    }
    assert!(cases > 20, "only {cases} cut cases");
    Ok(())
}

#[test]
fn torn_pages_of_the_last_commit_group_recover_the_intact_prefix() -> TestResult {
    // Pages of an interrupted commit reach the disk in any order: zero random 512-byte sectors
    // of the last group's byte range and expect the prefix up to the first damaged record.
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let (groups, placed) = build(&original, 300, 40)?;
    let (first, _) = groups[groups.len() - 1];
    let group: Vec<&Placed> = placed.iter().filter(|record| record.seq >= first).collect();
    let file = group[group.len() - 1].file.clone();
    let in_last_file: Vec<&&Placed> = group.iter().filter(|record| record.file == file).collect();
    let start = in_last_file[0].offset;
    let end =
        in_last_file[in_last_file.len() - 1].offset + in_last_file[in_last_file.len() - 1].span;
    let mut rng = SplitMix64::new(SEED ^ 0x7075);
    for trial in 0..60 {
        if image.exists() {
            fs::remove_dir_all(&image)?;
        }
        copy_dir(&original, &image)?;
        let path = in_dir(&image, &file);
        let mut bytes = fs::read(&path)?;
        let sectors = (end - start).div_ceil(512);
        for _ in 0..1 + rng.below(3) {
            let sector = start + 512 * rng.below(sectors as u64) as usize;
            let sector_end = (sector + 512).min(end);
            bytes[sector..sector_end].fill(0);
        }
        fs::write(&path, bytes)?;
        let expected = intact_prefix(&placed, &image)?;
        check_recovers_prefix(&image, expected, &format!("torn pages, trial {trial}"))?;
    }
    Ok(())
}

#[test]
fn cut_inside_the_header_of_a_freshly_rolled_last_segment() -> TestResult {
    let temp = tempfile::tempdir()?;
    let original = temp.path().join("original");
    let image = temp.path().join("image");
    let (_, placed) = build(&original, 500, 10)?;
    let last_file = segment_paths(&original)?.pop().ok_or("no segments")?;
    let before_last = placed.iter().filter(|record| record.file != last_file).count() as u64;
    assert!(before_last > 0);

    // Header partly written (the rest zero), no records: a torn roll, removed.
    for offset in [0, 1, 7, 8, 16, 24, 31, 32, 35, 39] {
        cut_image(&original, &image, &last_file, offset)?;
        check_recovers_prefix(&image, before_last, &format!("header cut at {offset}"))?;
        let names: Vec<_> = segment_paths(&image)?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_owned()))
            .collect();
        // The append in check_recovers_prefix recreated a segment with the same first seq.
        assert_eq!(names.len(), segment_paths(&original)?.len(), "{names:?}");
    }

    // The file was created but never reached its full length.
    for length in [0u64, 20, 39] {
        cut_image(&original, &image, &last_file, 0)?;
        fs::OpenOptions::new().write(true).open(in_dir(&image, &last_file))?.set_len(length)?;
        check_recovers_prefix(
            &image,
            before_last,
            &format!("segment truncated to {length} bytes"),
        )?;
    }

    // Header complete, no records: an empty last segment, kept and appended to.
    cut_image(&original, &image, &last_file, SEGMENT_HEADER_BYTES)?;
    check_recovers_prefix(&image, before_last, "header complete, records cut")?;
    let appended = layout(&image)?;
    assert_eq!(appended[appended.len() - 1].file.file_name(), last_file.file_name());
    Ok(())
}
