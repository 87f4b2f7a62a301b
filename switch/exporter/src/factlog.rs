//! The detail lines of open periods, kept out of the state file: one append-only file per open
//! period and shard (`<state>/open/YYYY-MM-DD/shard-NNN.facts`), one length-prefixed rkyv record
//! per journal record. A checkpoint flushes and fsyncs every file, then the state records each
//! file's length; opening cuts every file back to its recorded length and removes files the
//! state does not know, so lines of records after the saved cursor vanish with them. A checkpoint
//! therefore costs what the shadow engines cost, not what the open periods hold.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::calendar::{self, Day};
use crate::error::{ExportError, Result};
use crate::facts::{
    BreakageLine, ChannelSaleLine, ForeignLine, MerchantLine, PayoutLine, PeriodFacts,
    RetentionLine,
};

/// The detail lines of one journal record.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFacts {
    pub merchant: Vec<MerchantLine>,
    pub payouts: Vec<PayoutLine>,
    pub breakage: Vec<BreakageLine>,
    pub channel_sales: Vec<ChannelSaleLine>,
    pub foreign: Vec<ForeignLine>,
    pub retention: Vec<RetentionLine>,
}

impl RecordFacts {
    fn move_into(self, facts: &mut PeriodFacts) {
        facts.merchant.extend(self.merchant);
        facts.payouts.extend(self.payouts);
        facts.breakage.extend(self.breakage);
        facts.channel_sales.extend(self.channel_sales);
        facts.foreign.extend(self.foreign);
        facts.retention.extend(self.retention);
    }
}

struct LogFile {
    writer: BufWriter<File>,
    length_bytes: u64,
}

/// The open periods' fact files.
pub struct FactLog {
    dir: PathBuf,
    files: BTreeMap<(Day, u16), LogFile>,
}

impl FactLog {
    /// The log as the state describes it, for reading only: files are read up to the recorded
    /// lengths and nothing is changed (a running exporter may be appending).
    pub fn open_read_only(state_dir: &Path, lengths: &[(Day, u16, u64)]) -> Result<FactLog> {
        let mut log = FactLog { dir: state_dir.join("open"), files: BTreeMap::new() };
        for (day, shard, length_bytes) in lengths {
            let path = log.path(*day, *shard);
            let file = File::open(&path).map_err(ExportError::io(&path, "open fact file"))?;
            log.files.insert(
                (*day, *shard),
                LogFile { writer: BufWriter::new(file), length_bytes: *length_bytes },
            );
        }
        Ok(log)
    }

    /// Opens the log under `state_dir` for appending, cutting each file back to `lengths` and
    /// removing every file and period directory not listed.
    pub fn open(state_dir: &Path, lengths: &[(Day, u16, u64)]) -> Result<FactLog> {
        let dir = state_dir.join("open");
        std::fs::create_dir_all(&dir)
            .map_err(ExportError::io(&dir, "create open-period directory"))?;
        let mut log = FactLog { dir, files: BTreeMap::new() };
        let known: BTreeMap<PathBuf, u64> =
            lengths.iter().map(|(day, shard, length)| (log.path(*day, *shard), *length)).collect();
        for entry in
            std::fs::read_dir(&log.dir).map_err(ExportError::io(&log.dir, "list open periods"))?
        {
            let day_dir = entry.map_err(ExportError::io(&log.dir, "list open periods"))?.path();
            let listing = std::fs::read_dir(&day_dir)
                .map_err(ExportError::io(&day_dir, "list open period"))?;
            let mut kept = 0;
            for file in listing {
                let path = file.map_err(ExportError::io(&day_dir, "list open period"))?.path();
                if known.contains_key(&path) {
                    kept += 1;
                } else {
                    std::fs::remove_file(&path).map_err(ExportError::io(
                        &path,
                        "remove a fact file the state does not know",
                    ))?;
                }
            }
            if kept == 0 {
                std::fs::remove_dir(&day_dir).map_err(ExportError::io(
                    &day_dir,
                    "remove an open period the state does not know",
                ))?;
            }
        }
        for (day, shard, length_bytes) in lengths {
            let path = log.path(*day, *shard);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(ExportError::io(&path, "open fact file"))?;
            let actual = file.metadata().map_err(ExportError::io(&path, "stat fact file"))?.len();
            if actual < *length_bytes {
                return Err(ExportError::State {
                    path,
                    reason: format!("{actual} bytes, the state counts {length_bytes}"),
                });
            }
            file.set_len(*length_bytes).map_err(ExportError::io(&path, "cut fact file back"))?;
            file.sync_all().map_err(ExportError::io(&path, "fsync fact file"))?;
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(ExportError::io(&path, "open fact file"))?;
            log.files.insert(
                (*day, *shard),
                LogFile { writer: BufWriter::new(file), length_bytes: *length_bytes },
            );
        }
        Ok(log)
    }

    fn day_dir(&self, day: Day) -> PathBuf {
        self.dir.join(calendar::date_string(day))
    }

    fn path(&self, day: Day, shard: u16) -> PathBuf {
        self.day_dir(day).join(format!("shard-{shard:03}.facts"))
    }

    /// Appends one record's lines (not durable before `sync`).
    pub fn append(&mut self, day: Day, shard: u16, record: &RecordFacts) -> Result<()> {
        if !self.files.contains_key(&(day, shard)) {
            let day_dir = self.day_dir(day);
            std::fs::create_dir_all(&day_dir)
                .map_err(ExportError::io(&day_dir, "create open period"))?;
            let path = self.path(day, shard);
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(ExportError::io(&path, "create fact file"))?;
            self.files
                .insert((day, shard), LogFile { writer: BufWriter::new(file), length_bytes: 0 });
        }
        let path = self.path(day, shard);
        let bytes =
            rkyv::to_bytes::<RkyvError>(record).expect("serializing into memory cannot fail");
        let length =
            u32::try_from(bytes.len()).map_err(|_| ExportError::Overflow("fact record length"))?;
        let log = self.files.get_mut(&(day, shard)).expect("inserted above");
        log.writer
            .write_all(&length.to_le_bytes())
            .map_err(ExportError::io(&path, "append to fact file"))?;
        log.writer.write_all(&bytes).map_err(ExportError::io(&path, "append to fact file"))?;
        log.length_bytes += 4 + u64::from(length);
        Ok(())
    }

    /// Flushes and fsyncs every file (and the directories), returning the lengths to record.
    pub fn sync(&mut self) -> Result<Vec<(Day, u16, u64)>> {
        let mut lengths = Vec::with_capacity(self.files.len());
        let mut days = Vec::new();
        for ((day, shard), log) in &mut self.files {
            let path =
                self.dir.join(calendar::date_string(*day)).join(format!("shard-{shard:03}.facts"));
            log.writer.flush().map_err(ExportError::io(&path, "flush fact file"))?;
            log.writer.get_ref().sync_data().map_err(ExportError::io(&path, "fsync fact file"))?;
            lengths.push((*day, *shard, log.length_bytes));
            days.push(*day);
        }
        days.dedup();
        for day in days {
            sync_dir(&self.day_dir(day))?;
        }
        sync_dir(&self.dir)?;
        Ok(lengths)
    }

    /// Every line of an open period, in file order (callers sort). The files must be synced.
    pub fn read(&self, day: Day, shard_count: u16, facts: &mut PeriodFacts) -> Result<()> {
        for shard in 0..shard_count {
            let Some(log) = self.files.get(&(day, shard)) else { continue };
            let path = self.path(day, shard);
            let bytes = std::fs::read(&path).map_err(ExportError::io(&path, "read fact file"))?;
            let bad = |reason: String| ExportError::State { path: path.clone(), reason };
            let length = usize::try_from(log.length_bytes).map_err(|_| bad("too long".into()))?;
            if bytes.len() < length {
                return Err(bad(format!("{} bytes, {length} expected", bytes.len())));
            }
            let mut rest = &bytes[..length];
            while !rest.is_empty() {
                let (prefix, tail) =
                    rest.split_at_checked(4).ok_or_else(|| bad("cut record length".into()))?;
                let record_length = u32::from_le_bytes(
                    prefix.try_into().map_err(|_| bad("cut record length".into()))?,
                ) as usize;
                let (record, tail) =
                    tail.split_at_checked(record_length).ok_or_else(|| bad("cut record".into()))?;
                let record = rkyv::from_bytes::<RecordFacts, RkyvError>(record)
                    .map_err(|error| bad(error.to_string()))?;
                record.move_into(facts);
                rest = tail;
            }
        }
        Ok(())
    }

    /// Forgets a closed period's files (after the state that closes it is durable).
    pub fn remove(&mut self, day: Day) -> Result<()> {
        self.files.retain(|(file_day, _), _| *file_day != day);
        let day_dir = self.day_dir(day);
        match std::fs::remove_dir_all(&day_dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(ExportError::Io {
                path: day_dir,
                action: "remove closed open-period files",
                source: error,
            }),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(ExportError::io(dir, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Origin, RetentionLine};

    fn record(seq: u64) -> RecordFacts {
        let origin = Origin { time_ms: seq, shard: 0, seq, op_id: u128::from(seq) };
        RecordFacts {
            retention: vec![RetentionLine { origin, kind: 13, code: 0, amount_won: seq, years: 1 }],
            ..RecordFacts::default()
        }
    }

    #[test]
    fn reopening_cuts_back_to_the_checkpoint_and_drops_unknown_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FactLog::open(dir.path(), &[]).unwrap();
        log.append(10, 0, &record(1)).unwrap();
        log.append(10, 0, &record(2)).unwrap();
        let lengths = log.sync().unwrap();
        // After the checkpoint: one more line, and a period the state never heard of.
        log.append(10, 0, &record(3)).unwrap();
        log.append(11, 1, &record(4)).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = FactLog::open(dir.path(), &lengths).unwrap();
        let mut facts = PeriodFacts::default();
        log.read(10, 2, &mut facts).unwrap();
        assert_eq!(facts.retention.iter().map(|line| line.origin.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(!dir.path().join("open/1970-01-12").exists());
        // A file shorter than the state says is an error, not a panic.
        let path = dir.path().join("open/1970-01-11/shard-000.facts");
        std::fs::write(&path, b"\x05\0").unwrap();
        assert!(matches!(FactLog::open(dir.path(), &lengths), Err(ExportError::State { .. })));
    }
}
