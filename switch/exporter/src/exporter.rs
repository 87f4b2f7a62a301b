//! The exporter proper: its durable state, the tailing loop over every shard, period closing, and
//! the status and reconciliation reports.
//!
//! State (`<state>/state.bin`) holds a checkpoint generation, per shard the cursor (last journal
//! seq applied) and the follower's maps, plus the open periods' totals and the lengths of their
//! fact files (`factlog.rs`), the ledger through the last closed period and the merchants' carried
//! balances; the shadow engines are in `<state>/shadows/`, one file per shard and generation,
//! written before the state that names them. The state is written whole to a temporary file,
//! fsynced and renamed, then the directory is fsynced, so a crash leaves either the old or the new state:
//! records after the saved cursor are applied again, and their effects were not saved, so nothing
//! is lost or counted twice. A closed period's files are written (each atomically) before the
//! state that says it is closed, so a crash in between writes the same bytes again on the next
//! run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use pinswitch_core::{EngineConfig, SNAPSHOT_IMAGE_FORMAT, Totals};
use pinswitch_journal::{JournalError, Reader};
use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::calendar::{self, Day};
use crate::config::ExportConfig;
use crate::error::{ExportError, Result};
use crate::factlog::{FactLog, RecordFacts};
use crate::facts::{Fact, PeriodFacts};
use crate::follower::{CardCheck, CardFinding, Effects, Follower, FollowerImage};
use crate::ledger::{Account, Ledger};
use crate::render::{self, ClosedPeriod};
use crate::statement::StatementWriter;

const STATE_FILE: &str = "state.bin";
/// The cursors of the state, one line per shard (`shard-NNN SEQ`), written after it: what the
/// switch's journal retention trusts (a segment wholly at or below a cursor has been exported).
pub const CURSORS_FILE: &str = "cursors.txt";
/// The last byte is the layout's version: 2 added foreign-PIN conversions and the card
/// sub-ledger, 3 moved the shadow engines into files of their own (`shadows/`).
const STATE_MAGIC: &[u8; 8] = b"PSEXPST3";
/// The shadow engines' snapshots, one file per shard and checkpoint generation.
const SHADOW_DIR: &str = "shadows";
/// The last byte is the file's version: 5 gives the shadow's snapshot image format (u32, then
/// four zero bytes) before the image; version 4 files hold image format 1 and version 3 files
/// image format 0 (before images were numbered), and both are still read.
const SHADOW_MAGIC: &[u8; 8] = b"PSEXPSH5";
const SHADOW_MAGIC_IMAGE_FORMAT_1: &[u8; 8] = b"PSEXPSH4";
const SHADOW_MAGIC_IMAGE_FORMAT_0: &[u8; 8] = b"PSEXPSH3";
const FACTS_FILE: &str = "facts.bin";
const FACTS_MAGIC: &[u8; 8] = b"PSEXPPD2";
/// Returned by the journal visitor to stop at the record budget (not an error).
const BUDGET_STOP: &str = "record budget reached";

#[derive(Archive, Serialize, Deserialize)]
struct StateImage {
    /// Which checkpoint this is: the shadow files of this generation belong to it.
    generation: u64,
    shard_count: u16,
    followers: Vec<FollowerImage>,
    /// Open periods' totals and movements (their detail lines are in the fact log).
    open: BTreeMap<Day, PeriodFacts>,
    /// (period, shard, bytes) of every open period's fact file.
    fact_lengths: Vec<(Day, u16, u64)>,
    last_closed: Option<Day>,
    closed_ledger: Ledger,
    merchant_carry: BTreeMap<u64, i128>,
}

/// Where things are and which rules apply.
#[derive(Clone, Debug)]
pub struct Options {
    /// The switch's data directory (`shard-NNN/` journals and `shards.count`).
    pub data_dir: PathBuf,
    /// The exporter's own directory (state and period files).
    pub state_dir: PathBuf,
    /// The rules the journals start under: the switch's fixed baseline,
    /// `EngineConfig::production()` (the switch journals a CONFIGURE whenever its rules differ,
    /// at start-up and on reload). Journals written before the switch did so started under the
    /// rules of its first `--config`.
    pub engine: EngineConfig,
    pub config: ExportConfig,
}

pub struct Exporter {
    options: Options,
    followers: Vec<Follower>,
    /// Open periods' totals and movements; their detail lines are in `log`.
    open: BTreeMap<Day, PeriodFacts>,
    log: FactLog,
    /// The card statement index (`None` when opened read-only).
    statements: Option<StatementWriter>,
    /// The exclusive lock of the state directory (`None` when opened read-only).
    _lock: Option<std::fs::File>,
    last_closed: Option<Day>,
    closed_ledger: Ledger,
    merchant_carry: BTreeMap<u64, i128>,
    /// One tailing reader per shard, kept between passes so a pass resumes where the previous
    /// one stopped instead of scanning its segment again.
    readers: Vec<Option<Reader>>,
    /// The generation of the last checkpoint (0: none yet).
    generation: u64,
}

/// What one `run` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Records applied per shard in this run.
    pub applied: Vec<u64>,
    /// Periods closed in this run.
    pub closed: Vec<Day>,
    /// True when the run stopped at its record budget before the journals' end.
    pub stopped_early: bool,
}

/// One shard's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: u16,
    pub cursor_seq: u64,
    pub head_seq: u64,
    pub lag_records: u64,
    pub clock_ms: u64,
}

/// One line of the safeguarding reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconLine {
    pub what: &'static str,
    pub ledger_won: i128,
    pub engine_won: i128,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub shards: Vec<ShardStatus>,
    pub open_periods: Vec<Day>,
    pub last_closed: Option<Day>,
    pub reconciliation: Vec<ReconLine>,
    /// The card sub-ledger against the shadow engines' card balances, card by card.
    pub cards: CardCheck,
    pub trial_debits_won: u128,
    pub trial_credits_won: u128,
    pub trial_problem: Option<String>,
}

impl Status {
    /// True when the trial balance balances, every reconciliation line agrees and no card
    /// differs.
    pub fn reconciled(&self) -> bool {
        self.trial_problem.is_none()
            && self.reconciliation.iter().all(|line| line.ledger_won == line.engine_won)
            && self.cards.lines.is_empty()
            && self.cards.unposted_engine_cards == 0
    }
}

/// Cards printed by `status` (all of them are in `Status::cards`).
const CARD_LINES_SHOWN: usize = 100;

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "shard  cursor_seq  head_seq  lag_records  clock")?;
        for shard in &self.shards {
            writeln!(
                f,
                "{:>5}  {:>10}  {:>8}  {:>11}  {}",
                shard.shard, shard.cursor_seq, shard.head_seq, shard.lag_records, shard.clock_ms
            )?;
        }
        let days = |days: &[Day]| {
            days.iter().map(|day| calendar::date_string(*day)).collect::<Vec<_>>().join(" ")
        };
        writeln!(
            f,
            "open periods: {}",
            if self.open_periods.is_empty() { "none".into() } else { days(&self.open_periods) }
        )?;
        writeln!(
            f,
            "last closed period: {}",
            self.last_closed.map_or_else(|| "none".into(), calendar::date_string)
        )?;
        writeln!(
            f,
            "trial balance: debits {} won, credits {} won: {}",
            self.trial_debits_won,
            self.trial_credits_won,
            self.trial_problem.as_deref().unwrap_or("balanced")
        )?;
        writeln!(f, "safeguarding reconciliation (ledger vs shadow engines at the cursor):")?;
        for line in &self.reconciliation {
            let verdict = if line.ledger_won == line.engine_won {
                "ok".to_string()
            } else {
                format!("DIFFERENCE {} won", line.ledger_won - line.engine_won)
            };
            writeln!(
                f,
                "  {:<44} ledger {:>14} won  engine {:>14} won  {verdict}",
                line.what, line.ledger_won, line.engine_won
            )?;
        }
        let cards = &self.cards;
        writeln!(
            f,
            "  cards: {} in the sub-ledger, {} in the engines, {} differ, {} never posted",
            cards.ledger_cards,
            cards.engine_cards,
            cards.lines.len(),
            cards.unposted_engine_cards
        )?;
        for line in cards.lines.iter().take(CARD_LINES_SHOWN) {
            let engine = match line.finding {
                CardFinding::Differs { engine_won } => format!("engine {engine_won:>10} won  DIFFERENCE {} won", i128::from(line.ledger_won) - i128::from(engine_won)),
                CardFinding::UnknownToEngine => "unknown to the engine".to_string(),
                CardFinding::NotPosted { engine_won } => format!("engine {engine_won:>10} won  never posted by the ledger"),
                CardFinding::ExpiryPending => "expiry pending (engine balance not visible; the shard's difference lies among these)".to_string(),
            };
            writeln!(
                f,
                "    card {:032x} shard {:>3}  ledger {:>10} won  {engine}",
                line.card, line.shard, line.ledger_won
            )?;
        }
        if cards.lines.len() > CARD_LINES_SHOWN {
            writeln!(f, "    ... and {} more cards", cards.lines.len() - CARD_LINES_SHOWN)?;
        }
        writeln!(f, "{}", if self.reconciled() { "reconciled" } else { "NOT RECONCILED" })
    }
}

impl Exporter {
    /// Opens the exporter's state to run (exclusively: a second one gets `Locked`), or starts
    /// fresh (cursors at 0) when there is none.
    pub fn open(options: Options) -> Result<Exporter> {
        Exporter::open_mode(options, true)
    }

    /// Opens the state to look at it (status, period files) while a run may be going on: takes no
    /// lock and changes no fact file. Not for `run`.
    pub fn open_read_only(options: Options) -> Result<Exporter> {
        Exporter::open_mode(options, false)
    }

    fn open_mode(options: Options, writable: bool) -> Result<Exporter> {
        options.config.validate()?;
        options
            .engine
            .validate()
            .map_err(|why| ExportError::Config(format!("engine rules: {why}")))?;
        let shard_count = read_shard_count(&options.data_dir)?;
        let lock = if writable { Some(lock_state(&options.state_dir)?) } else { None };
        let open_log = |lengths: &[(Day, u16, u64)]| {
            if writable {
                FactLog::open(&options.state_dir, lengths)
            } else {
                FactLog::open_read_only(&options.state_dir, lengths)
            }
        };
        let path = options.state_dir.join(STATE_FILE);
        // A running exporter's checkpoint writes the next generation's shadows, then the state,
        // then removes the previous shadows: a reader that finds its generation's shadow gone
        // read a state that has just been replaced, and reads again.
        let mut attempts = 0;
        let loaded = loop {
            let mut image = match std::fs::read(&path) {
                Ok(bytes) => decode::<StateImage>(&path, STATE_MAGIC, &bytes)?,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break None,
                Err(error) => {
                    return Err(ExportError::Io {
                        path,
                        action: "read exporter state",
                        source: error,
                    });
                }
            };
            let follower_images = std::mem::take(&mut image.followers);
            match load_followers(&options.state_dir, &path, image.generation, follower_images) {
                Ok(followers) => break Some((image, followers)),
                Err(ExportError::Io { source, .. })
                    if !writable
                        && source.kind() == std::io::ErrorKind::NotFound
                        && attempts < 3 =>
                {
                    attempts += 1
                }
                Err(error) => return Err(error),
            }
        };
        let Some((image, followers)) = loaded else {
            let followers = (0..shard_count)
                .map(|shard| Follower::new(shard, shard_count, options.engine.clone()))
                .collect();
            let log = open_log(&[])?;
            let statements = if writable {
                Some(StatementWriter::open(&options.state_dir, &vec![0; usize::from(shard_count)])?)
            } else {
                None
            };
            let readers = (0..shard_count).map(|_| None).collect();
            return Ok(Exporter {
                options,
                followers,
                open: BTreeMap::new(),
                log,
                statements,
                _lock: lock,
                last_closed: None,
                closed_ledger: Ledger::default(),
                merchant_carry: BTreeMap::new(),
                readers,
                generation: 0,
            });
        };
        if image.shard_count != shard_count || followers.len() != usize::from(shard_count) {
            return Err(ExportError::State {
                path,
                reason: format!(
                    "made for {} shards, the switch has {shard_count}",
                    image.shard_count
                ),
            });
        }
        if writable {
            // Shadows of a checkpoint a crash interrupted before its state was written.
            remove_shadows_except(&options.state_dir, image.generation)?;
        }
        let log = open_log(&image.fact_lengths)?;
        let cursors: Vec<u64> = followers.iter().map(Follower::cursor_seq).collect();
        let statements = if writable {
            Some(StatementWriter::open(&options.state_dir, &cursors)?)
        } else {
            None
        };
        let readers = (0..shard_count).map(|_| None).collect();
        Ok(Exporter {
            options,
            followers,
            open: image.open,
            log,
            statements,
            _lock: lock,
            last_closed: image.last_closed,
            closed_ledger: image.closed_ledger,
            merchant_carry: image.merchant_carry,
            readers,
            generation: image.generation,
        })
    }

    /// Applies journal records from every shard's cursor to its end (at most `max_records` in
    /// all), then closes every period all shards have passed. `wall_clock_ms` decides when a
    /// shard with nothing newer in its journal has passed a period end (see `close_grace_s`).
    pub fn run(&mut self, max_records: Option<u64>, wall_clock_ms: u64) -> Result<RunReport> {
        let mut since_checkpoint = 0u64;
        let (mut report, at_head) = self.pass(max_records, &mut since_checkpoint, &mut |_| {})?;
        self.close_and_checkpoint(&at_head, wall_clock_ms, &mut report)?;
        Ok(report)
    }

    /// Follows the journals: passes over every shard's durable records, closing periods as
    /// they finish, and waits `poll` whenever a pass found nothing, until `keep_going` (asked
    /// after every pass with the total applied so far) says stop. Checkpoints every
    /// `checkpoint_every_records` records and at the end, as `run` does, so a kill loses nothing
    /// but the records after the last checkpoint, which the next run applies again.
    /// `observe(time_ms)` is called after every record applied with its journaled time (for lag
    /// figures); `wall_clock_ms` gives the time for closing quiet periods.
    pub fn follow(
        &mut self,
        poll: std::time::Duration,
        wall_clock_ms: &dyn Fn() -> u64,
        keep_going: &mut dyn FnMut(u64) -> bool,
        observe: &mut dyn FnMut(u64),
    ) -> Result<RunReport> {
        let mut since_checkpoint = 0u64;
        let mut total =
            RunReport { applied: vec![0; self.followers.len()], ..RunReport::default() };
        loop {
            let (report, at_head) = self.pass(None, &mut since_checkpoint, observe)?;
            let applied: u64 = report.applied.iter().sum();
            for (sum, count) in total.applied.iter_mut().zip(&report.applied) {
                *sum += count;
            }
            if self.closable(&at_head, wall_clock_ms()) {
                let mut closing = RunReport::default();
                self.close_and_checkpoint(&at_head, wall_clock_ms(), &mut closing)?;
                since_checkpoint = 0;
                total.closed.extend(closing.closed);
            }
            if !keep_going(total.applied.iter().sum()) {
                let mut closing = RunReport::default();
                self.close_and_checkpoint(&at_head, wall_clock_ms(), &mut closing)?;
                total.closed.extend(closing.closed);
                return Ok(total);
            }
            if applied == 0 {
                std::thread::sleep(poll);
            }
        }
    }

    /// One pass: every shard's records from its cursor to its durable end (at most
    /// `max_records` in all), checkpointing every `checkpoint_every_records`. Returns what was
    /// applied and, per shard, whether it reached its journal's end.
    fn pass(
        &mut self,
        max_records: Option<u64>,
        since_checkpoint: &mut u64,
        observe: &mut dyn FnMut(u64),
    ) -> Result<(RunReport, Vec<bool>)> {
        let mut report =
            RunReport { applied: vec![0; self.followers.len()], ..RunReport::default() };
        let mut at_head = Vec::with_capacity(self.followers.len());
        let mut budget = max_records.unwrap_or(u64::MAX);
        for index in 0..self.followers.len() {
            if budget == 0 {
                report.stopped_early = true;
                break;
            }
            let shard = self.followers[index].shard_id();
            let mut reader = match self.readers[index].take() {
                Some(reader) => reader,
                None => Reader::open(&shard_dir(&self.options.data_dir, shard))
                    .map_err(|source| ExportError::Journal { shard, source })?,
            };
            let from_seq = self.followers[index].cursor_seq() + 1;
            let mut failure: Option<ExportError> = None;
            let mut applied = 0u64;
            let outcome = reader.read_from(from_seq, |seq, payload| {
                if budget == 0 {
                    return Err(BUDGET_STOP.into());
                }
                let step = self.apply_record(index, seq, payload).and_then(|()| {
                    *since_checkpoint += 1;
                    if *since_checkpoint >= self.options.config.checkpoint_every_records {
                        *since_checkpoint = 0;
                        self.checkpoint()?;
                    }
                    Ok(())
                });
                match step {
                    Ok(()) => {
                        budget -= 1;
                        applied += 1;
                        observe(self.followers[index].clock_ms());
                        Ok(())
                    }
                    Err(error) => {
                        let text = error.to_string();
                        failure = Some(error);
                        Err(text)
                    }
                }
            });
            report.applied[index] = applied;
            self.readers[index] = Some(reader);
            if let Some(error) = failure {
                // The failing record may have reached the shadow engine without its effects
                // being kept: this state is not saved; the last checkpoint stays consistent.
                return Err(error);
            }
            match outcome {
                Ok(_) => at_head.push(true),
                Err(JournalError::Apply(reason)) if reason == BUDGET_STOP => {
                    report.stopped_early = true;
                    at_head.push(false);
                }
                Err(source) => return Err(ExportError::Journal { shard, source }),
            }
        }
        at_head.resize(self.followers.len(), false);
        Ok((report, at_head))
    }

    /// Checkpoints, closes every finished period and checkpoints again if one closed.
    fn close_and_checkpoint(
        &mut self,
        at_head: &[bool],
        wall_clock_ms: u64,
        report: &mut RunReport,
    ) -> Result<()> {
        self.checkpoint()?;
        report.closed = self.close_periods(at_head, wall_clock_ms)?;
        if !report.closed.is_empty() {
            for follower in &mut self.followers {
                follower.prune();
            }
            self.checkpoint()?;
            // The state no longer names them: their fact files can go.
            for day in &report.closed {
                self.log.remove(*day)?;
            }
        }
        Ok(())
    }

    /// Whether the oldest open period has finished on every shard (see `close_periods`).
    fn closable(&self, at_head: &[bool], wall_clock_ms: u64) -> bool {
        let Some(&day) = self.open.keys().next() else { return false };
        let end_ms = u64::try_from(self.options.config.cutoff().end_ms(day)).unwrap_or(0);
        let grace_ms = self.options.config.close_grace_s.saturating_mul(1000);
        self.followers.iter().zip(at_head).all(|(follower, at_head)| {
            follower.clock_ms() >= end_ms
                || (*at_head && wall_clock_ms >= end_ms.saturating_add(grace_ms))
        })
    }

    fn apply_record(&mut self, index: usize, seq: u64, payload: &[u8]) -> Result<()> {
        let shard = self.followers[index].shard_id();
        // For the statement index: the record decoded (again: the follower keeps its copy to
        // itself) and the category of the session it names, read before SESSION_END forgets it.
        let statement_input = match &self.statements {
            None => None,
            Some(_) => {
                let entry = pinswitch_core::decode_entry(payload)
                    .map_err(|reason| ExportError::Decode { shard, seq, reason })?;
                let session_category = match &entry.command.body {
                    pinswitch_core::Body::SessionUpdate { session_id, .. }
                    | pinswitch_core::Body::SessionEnd { session_id, .. } => {
                        self.followers[index].shadow().session_category(*session_id)
                    }
                    _ => None,
                };
                Some((entry, session_category))
            }
        };
        let effects = self.followers[index].apply(seq, payload, &self.options.config)?;
        if let (Some(statements), Some((entry, session_category))) =
            (&mut self.statements, statement_input)
        {
            let card_after = entry
                .command
                .body
                .pin_hash()
                .and_then(|pin_hash| self.followers[index].card(pin_hash));
            statements.record(
                shard,
                seq,
                &entry,
                &effects,
                card_after.as_ref(),
                session_category,
            )?;
        }
        self.absorb(shard, effects)
    }

    /// Files a record's effects under its period (a record later than a closed period's end,
    /// but timed inside it, goes to the first open period: closed periods never change).
    fn absorb(&mut self, shard: u16, effects: Effects) -> Result<()> {
        let mut day = self.options.config.cutoff().period_of(effects.time_ms);
        if let Some(last_closed) = self.last_closed {
            day = day.max(last_closed + 1);
        }
        let period = self.open.entry(day).or_default();
        period.records += 1;
        for posting in &effects.postings {
            period.movements.post(posting)?;
        }
        let mut record = RecordFacts::default();
        for fact in effects.facts {
            match fact {
                Fact::Merchant(line) => record.merchant.push(line),
                Fact::Payout(line) => record.payouts.push(line),
                Fact::Breakage(line) => record.breakage.push(line),
                Fact::ChannelSale(line) => record.channel_sales.push(line),
                Fact::Foreign(line) => record.foreign.push(line),
                Fact::Retention(line) => record.retention.push(line),
                summary => period.add(summary)?,
            }
        }
        self.log.append(day, shard, &record)
    }

    /// Closes open periods in date order while every shard has passed the period's end.
    fn close_periods(&mut self, at_head: &[bool], wall_clock_ms: u64) -> Result<Vec<Day>> {
        let mut closed = Vec::new();
        while let Some(&day) = self.open.keys().next() {
            if !self.closable(at_head, wall_clock_ms) {
                break;
            }
            let mut facts = self.open.remove(&day).unwrap_or_default();
            self.log.read(day, self.shard_count(), &mut facts)?;
            facts.sort();
            self.closed_ledger.absorb(&facts.movements)?;
            if let Err(why) = self.closed_ledger.trial_balance().check() {
                return Err(ExportError::Unbalanced {
                    shard: 0,
                    seq: 0,
                    what: format!("period {}: {why}", calendar::date_string(day)),
                });
            }
            let period = ClosedPeriod {
                day,
                facts,
                carry_in: self.merchant_carry.clone(),
                ledger_after: self.closed_ledger.clone(),
            };
            let dir = self.period_dir(day);
            write_period(&dir, &period, false, &self.options.config)?;
            write_atomic(&dir.join(FACTS_FILE), &encode(FACTS_MAGIC, &period))?;
            self.merchant_carry = period
                .statements()
                .into_iter()
                .filter(|(_, statement)| statement.carry_out_won < 0)
                .map(|(merchant_id, statement)| (merchant_id, statement.carry_out_won))
                .collect();
            self.last_closed = Some(day);
            closed.push(day);
        }
        Ok(closed)
    }

    /// Writes the files of period `day` into `out_dir` (default: where closed periods live for a
    /// closed period, `<state>/provisional/DATE` for an open one) and returns the directory and
    /// whether the period is final. A closed period is rendered from its stored facts, so the
    /// files are byte-identical to those written at closing.
    pub fn render_period(&self, day: Day, out_dir: Option<&Path>) -> Result<(PathBuf, bool)> {
        let date = calendar::date_string(day);
        let Some((period, is_final)) = self.period(day)? else {
            return Err(ExportError::NoPeriod(date));
        };
        let default_dir = if is_final {
            self.period_dir(day)
        } else {
            self.options.state_dir.join("provisional").join(&date)
        };
        let dir = out_dir.map_or(default_dir, Path::to_path_buf);
        write_period(&dir, &period, !is_final, &self.options.config)?;
        Ok((dir, is_final))
    }

    /// Period `day` and whether it is closed (final): a closed one from its stored facts, an
    /// open one as it stands. `None` when nothing was exported for it.
    pub fn period(&self, day: Day) -> Result<Option<(ClosedPeriod, bool)>> {
        if self.last_closed.is_some_and(|last| day <= last) {
            let path = self.period_dir(day).join(FACTS_FILE);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(error) => {
                    return Err(ExportError::Io {
                        path,
                        action: "read period facts",
                        source: error,
                    });
                }
            };
            return Ok(Some((decode::<ClosedPeriod>(&path, FACTS_MAGIC, &bytes)?, true)));
        }
        let Some(facts) = self.open.get(&day) else { return Ok(None) };
        let mut facts = facts.clone();
        self.log.read(day, self.shard_count(), &mut facts)?;
        facts.sort();
        let mut ledger_after = self.closed_ledger.clone();
        for (_, open) in self.open.range(..=day) {
            ledger_after.absorb(&open.movements)?;
        }
        Ok(Some((
            ClosedPeriod { day, facts, carry_in: self.merchant_carry.clone(), ledger_after },
            false,
        )))
    }

    /// Writes the mobile-operator remittance of a month (`year`, `month` 1..=12) into `out_dir`
    /// (default `<state>/months/YYYY-MM`): what each operator channel sold, gross, its commission
    /// and the net it owes. Final when every period of the month is closed.
    pub fn render_month(
        &self,
        year: i64,
        month: u32,
        out_dir: Option<&Path>,
    ) -> Result<(PathBuf, bool)> {
        let first = calendar::days_from_civil(year, month, 1);
        let next = if month == 12 {
            calendar::days_from_civil(year + 1, 1, 1)
        } else {
            calendar::days_from_civil(year, month + 1, 1)
        };
        let mut periods = Vec::new();
        for day in first..next {
            if let Some((period, _)) = self.period(day)? {
                periods.push(period);
            }
        }
        let is_final = self.last_closed.is_some_and(|last| last >= next - 1);
        let label = format!("{year:04}-{month:02}");
        let dir = out_dir
            .map_or_else(|| self.options.state_dir.join("months").join(&label), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(ExportError::io(&dir, "create month directory"))?;
        for (name, contents) in
            render::operator_remittance(&label, &periods, is_final, &self.options.config)
        {
            write_atomic(&dir.join(name), contents.as_bytes())?;
        }
        Ok((dir, is_final))
    }

    fn period_dir(&self, day: Day) -> PathBuf {
        self.options.state_dir.join("periods").join(calendar::date_string(day))
    }

    /// The ledger through every record applied so far.
    pub fn ledger(&self) -> Result<Ledger> {
        let mut ledger = self.closed_ledger.clone();
        for facts in self.open.values() {
            ledger.absorb(&facts.movements)?;
        }
        Ok(ledger)
    }

    /// Cursors, journal heads and lag per shard, periods, the trial balance and the
    /// safeguarding reconciliation of the ledger against the shadow engines.
    pub fn status(&self) -> Result<Status> {
        let mut shards = Vec::new();
        for follower in &self.followers {
            let shard = follower.shard_id();
            let mut reader = Reader::open(&shard_dir(&self.options.data_dir, shard))
                .map_err(|source| ExportError::Journal { shard, source })?;
            let mut lag_records = 0u64;
            let head_seq = reader
                .read_from(follower.cursor_seq() + 1, |_, _| {
                    lag_records += 1;
                    Ok(())
                })
                .map_err(|source| ExportError::Journal { shard, source })?
                .max(follower.cursor_seq());
            shards.push(ShardStatus {
                shard,
                cursor_seq: follower.cursor_seq(),
                head_seq,
                lag_records,
                clock_ms: follower.clock_ms(),
            });
        }
        let ledger = self.ledger()?;
        let trial = ledger.trial_balance();
        let mut cards = CardCheck::default();
        let mut reconciliation = reconcile(&ledger, &self.engine_totals());
        let mut sub_ledger_won = 0i128;
        for follower in &self.followers {
            let shard = follower.check_cards();
            cards.ledger_cards += shard.ledger_cards;
            cards.engine_cards += shard.engine_cards;
            cards.unposted_engine_cards += shard.unposted_engine_cards;
            cards.lines.extend(shard.lines);
            sub_ledger_won += follower.card_value_won() as i128;
        }
        reconciliation.push(ReconLine {
            what: "card sub-ledger (sum of per-card values)",
            ledger_won: sub_ledger_won,
            engine_won: self.engine_totals().balances_won as i128,
        });
        Ok(Status {
            shards,
            open_periods: self.open.keys().copied().collect(),
            last_closed: self.last_closed,
            reconciliation,
            cards,
            trial_debits_won: trial.debits_won,
            trial_credits_won: trial.credits_won,
            trial_problem: trial.check().err(),
        })
    }

    /// The shadow engines' money totals, summed over shards.
    pub fn engine_totals(&self) -> Totals {
        let mut sum = Totals::default();
        for totals in self.followers.iter().map(Follower::totals) {
            sum.issued_won += totals.issued_won;
            sum.loaded_won += totals.loaded_won;
            sum.refunded_won += totals.refunded_won;
            sum.reversed_won += totals.reversed_won;
            sum.debited_won += totals.debited_won;
            sum.paid_out_won += totals.paid_out_won;
            sum.breakage_won += totals.breakage_won;
            sum.balances_won += totals.balances_won;
            sum.held_won += totals.held_won;
        }
        sum
    }

    pub fn state_dir(&self) -> &Path {
        &self.options.state_dir
    }

    pub fn followers(&self) -> &[Follower] {
        &self.followers
    }

    fn shard_count(&self) -> u16 {
        u16::try_from(self.followers.len()).unwrap_or(u16::MAX)
    }

    /// Makes the fact files durable, writes each shadow engine's snapshot to a file of the next
    /// generation (one shard's image in memory at a time), then replaces the state, which names
    /// that generation, atomically; the previous generation's shadows go last. Remembered
    /// payments the engines can no longer refer to are dropped first (`Follower::prune`).
    pub fn checkpoint(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.options.state_dir)
            .map_err(ExportError::io(&self.options.state_dir, "create state directory"))?;
        let mut fact_lengths = self.log.sync()?;
        if let Some(statements) = &mut self.statements {
            statements.checkpoint()?;
        }
        fact_lengths.retain(|(day, _, _)| self.open.contains_key(day));
        for follower in &mut self.followers {
            follower.prune();
        }
        let generation = self.generation + 1;
        let shadow_dir = self.options.state_dir.join(SHADOW_DIR);
        std::fs::create_dir_all(&shadow_dir)
            .map_err(ExportError::io(&shadow_dir, "create shadow directory"))?;
        for follower in &self.followers {
            let snapshot = follower.shadow_snapshot();
            let path = shadow_path(&self.options.state_dir, follower.shard_id(), generation);
            let mut image_format = [0u8; 8];
            image_format[..4].copy_from_slice(&SNAPSHOT_IMAGE_FORMAT.to_le_bytes());
            let header = header(SHADOW_MAGIC, image_format.len() + snapshot.len());
            write_atomic_parts(&path, &[&header, &image_format, &snapshot])?;
        }
        // The followers' maps (remembered payments: millions of entries) are moved into the
        // image and back rather than copied.
        let image = StateImage {
            generation,
            shard_count: u16::try_from(self.followers.len()).unwrap_or(u16::MAX),
            followers: self.followers.iter_mut().map(Follower::take_image).collect(),
            open: self.open.clone(),
            fact_lengths,
            last_closed: self.last_closed,
            closed_ledger: self.closed_ledger.clone(),
            merchant_carry: self.merchant_carry.clone(),
        };
        let body =
            rkyv::to_bytes::<RkyvError>(&image).expect("serializing into memory cannot fail");
        for (follower, image) in self.followers.iter_mut().zip(image.followers) {
            follower.put_back(image);
        }
        write_atomic_parts(
            &self.options.state_dir.join(STATE_FILE),
            &[&header(STATE_MAGIC, body.len()), &body],
        )?;
        // Only once the state naming these cursors is durable may the switch see them.
        let mut cursors = format!(
            "# pinswitch-exporter: per shard the last journal seq applied, durable in state.bin \
             (generation {generation})\n"
        );
        for follower in &self.followers {
            cursors.push_str(&format!(
                "shard-{:03} {}\n",
                follower.shard_id(),
                follower.cursor_seq()
            ));
        }
        write_atomic_parts(&self.options.state_dir.join(CURSORS_FILE), &[cursors.as_bytes()])?;
        self.generation = generation;
        remove_shadows_except(&self.options.state_dir, generation)
    }
}

/// The ledger's control accounts against the engines' totals: the card-liability accounts
/// (unsold, spendable, held) must equal the sum of all card balances, and so on.
pub fn reconcile(ledger: &Ledger, totals: &Totals) -> Vec<ReconLine> {
    let card_value = ledger.balance_where(|account| {
        matches!(
            account,
            Account::CardUnsold { .. } | Account::CardLiability { .. } | Account::Holds
        )
    });
    vec![
        ReconLine {
            what: "card balances (2000 + 2100 + 2200)",
            ledger_won: card_value,
            engine_won: totals.balances_won as i128,
        },
        ReconLine {
            what: "held (2200)",
            ledger_won: ledger.balance_where(|account| *account == Account::Holds),
            engine_won: totals.held_won as i128,
        },
        ReconLine {
            what: "issued face value (1100 debits)",
            ledger_won: ledger.sides(&Account::CardStockControl).debits_won as i128,
            engine_won: totals.issued_won as i128,
        },
        ReconLine {
            what: "breakage (4200)",
            ledger_won: ledger.balance_where(|account| *account == Account::BreakageRevenue),
            engine_won: totals.breakage_won as i128,
        },
        ReconLine {
            what: "paid out to holders (2400 credits)",
            ledger_won: ledger.sides(&Account::RefundsPayable).credits_won as i128,
            engine_won: totals.paid_out_won as i128,
        },
    ]
}

/// Writes every file of a period into `dir`, each atomically.
fn write_period(
    dir: &Path,
    period: &ClosedPeriod,
    provisional: bool,
    config: &ExportConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(ExportError::io(dir, "create period directory"))?;
    for (name, contents) in render::render(period, provisional, config.cutoff(), config) {
        write_atomic(&dir.join(name), contents.as_bytes())?;
    }
    Ok(())
}

/// Temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// `write_atomic` of the concatenation of `parts`, without building it in memory.
fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(ExportError::io(&tmp, "create"))?;
    for part in parts {
        file.write_all(part).map_err(ExportError::io(&tmp, "write"))?;
    }
    file.sync_all().map_err(ExportError::io(&tmp, "fsync"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(ExportError::io(path, "rename into place"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(ExportError::io(dir, "fsync directory"))?;
    Ok(())
}

/// The 16 bytes before an archive: `magic` and the archive's length (u64 LE).
fn header(magic: &[u8; 8], length: usize) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(magic);
    header[8..].copy_from_slice(&(length as u64).to_le_bytes());
    header
}

/// `shadows/shard-NNN-GGGGGGGGGGGGGGGGGGGG.bin`: a shard's shadow engine at checkpoint `generation`.
fn shadow_path(state_dir: &Path, shard: u16, generation: u64) -> PathBuf {
    state_dir.join(SHADOW_DIR).join(format!("shard-{shard:03}-{generation:020}.bin"))
}

/// The followers of a state, each around its shadow engine read from the state's generation.
fn load_followers(
    state_dir: &Path,
    state_path: &Path,
    generation: u64,
    images: Vec<FollowerImage>,
) -> Result<Vec<Follower>> {
    let mut followers = Vec::with_capacity(images.len());
    for follower in images {
        let path = shadow_path(state_dir, follower.shard_id, generation);
        let bytes = std::fs::read(&path).map_err(ExportError::io(&path, "read shadow engine"))?;
        let bad = |reason: String| ExportError::State { path: path.clone(), reason };
        if bytes.len() < 16 || bytes[8..16] != ((bytes.len() - 16) as u64).to_le_bytes() {
            return Err(bad("wrong length".into()));
        }
        let (image_format, image) = match &bytes[..8] {
            magic if magic == SHADOW_MAGIC && bytes.len() >= 24 => {
                let format = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
                (format, &bytes[24..])
            }
            magic if magic == SHADOW_MAGIC_IMAGE_FORMAT_1 => (1, &bytes[16..]),
            magic if magic == SHADOW_MAGIC_IMAGE_FORMAT_0 => (0, &bytes[16..]),
            magic if magic.starts_with(b"PSEXPSH") && magic != SHADOW_MAGIC => {
                return Err(bad(format!(
                    "shadow file version {} is newer than this release reads (3 to 5)",
                    char::from(magic[7])
                )));
            }
            _ => return Err(bad("wrong magic or length".into())),
        };
        let follower = Follower::from_image(follower, image_format, image)
            .map_err(|reason| ExportError::State { path: state_path.to_path_buf(), reason })?;
        followers.push(follower);
    }
    Ok(followers)
}

/// Removes every shadow file but those of `generation` (and half-written ones).
fn remove_shadows_except(state_dir: &Path, generation: u64) -> Result<()> {
    let dir = state_dir.join(SHADOW_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(ExportError::Io {
                path: dir,
                action: "list shadow directory",
                source: error,
            });
        }
    };
    let keep = format!("-{generation:020}.bin");
    for entry in entries {
        let path = entry.map_err(ExportError::io(&dir, "list shadow directory"))?.path();
        if !path.to_string_lossy().ends_with(&keep) {
            std::fs::remove_file(&path)
                .map_err(ExportError::io(&path, "remove old shadow engine"))?;
        }
    }
    Ok(())
}

/// `magic`, the length (u64 LE) and the rkyv archive of `value`.
pub(crate) fn encode<T>(magic: &[u8; 8], value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                RkyvError,
            >,
        >,
{
    let body = rkyv::to_bytes::<RkyvError>(value).expect("serializing into memory cannot fail");
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// The inverse of `encode`, validating magic, length and archive (errors name `path`).
pub(crate) fn decode<T>(path: &Path, magic: &[u8; 8], bytes: &[u8]) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, RkyvError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<RkyvError>>,
{
    let bad = |reason: String| ExportError::State { path: path.to_path_buf(), reason };
    if bytes.len() >= 8 && bytes[..7] == magic[..7] && bytes[7] != magic[7] {
        return Err(bad(format!(
            "written by an exporter with layout {} (this one reads {}): delete the exporter state directory and export again from seq 1",
            char::from(bytes[7]),
            char::from(magic[7])
        )));
    }
    if bytes.len() < 16 || &bytes[..8] != magic {
        return Err(bad("wrong magic or too short".into()));
    }
    let length =
        u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad("short header".into()))?);
    if length != (bytes.len() - 16) as u64 {
        return Err(bad(format!("length {length} does not match the file")));
    }
    rkyv::from_bytes::<T, RkyvError>(&bytes[16..]).map_err(|error| bad(error.to_string()))
}

/// Takes the exclusive lock of the state directory (`exporter.lock`, held while the file is open).
fn lock_state(state_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(state_dir)
        .map_err(ExportError::io(state_dir, "create state directory"))?;
    let path = state_dir.join("exporter.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ExportError::io(&path, "open lock file"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ExportError::Locked(path)),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(ExportError::Io { path, action: "lock", source: error })
        }
    }
}

/// The directory of one shard's journal under the switch's data directory.
pub fn shard_dir(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard:03}"))
}

/// The shard count of the switch's data directory (`shards.count`).
pub fn read_shard_count(data_dir: &Path) -> Result<u16> {
    let path = data_dir.join("shards.count");
    let text =
        std::fs::read_to_string(&path).map_err(ExportError::io(&path, "read shard count"))?;
    match text.trim().parse::<u16>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(ExportError::Config(format!("{} does not hold a shard count", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use pinswitch_core::{Body, Command, JournalEntry, Shard, encode_entry};
    use pinswitch_journal::{Journal, JournalOptions};
    use pinswitch_protocol::ResultCode;

    use super::*;
    use crate::follower::CardLine;
    use crate::ledger::Posting;

    const DAY_MS: u64 = 86_400_000;

    /// One shard's journal: X (sold, paid 1,000) and Y (activated unsold) at `t0`, both valid a
    /// day and never touched again, so their expiry is pending three days later, when Z (sold)
    /// and W (activated unsold) are issued.
    fn journal(data: &Path, t0_ms: u64) -> [u128; 4] {
        std::fs::write(data.join("shards.count"), "1\n").unwrap();
        let (_, recovery) =
            Journal::recover(&shard_dir(data, 0), JournalOptions::test_min()).unwrap();
        let mut journal = recovery.into_journal().unwrap();
        let mut engine = Shard::first_format(0, 1, EngineConfig::test_min(), [0, 0]);
        let [x, y, z, w] = [11u128 << 64, 12 << 64, 13 << 64, 14 << 64];
        let steps = [
            (t0_ms, Body::Issue { pin_hash: x, face_value_won: 10_000 }),
            (
                t0_ms,
                Body::Sell {
                    pin_hash: x,
                    channel_id: 3,
                    price_won: 10_000,
                    payment_means: 1,
                    gift_recipient_ref: 0,
                },
            ),
            (t0_ms, Body::Activate { pin_hash: x, password_mac: 7 }),
            (
                t0_ms,
                Body::Sale {
                    pin_hash: x,
                    password_mac: 7,
                    amount_won: 1_000,
                    merchant_id: 77,
                    category: 1,
                },
            ),
            (t0_ms, Body::Issue { pin_hash: y, face_value_won: 20_000 }),
            (t0_ms, Body::Activate { pin_hash: y, password_mac: 7 }),
            (t0_ms + 3 * DAY_MS, Body::Issue { pin_hash: z, face_value_won: 50_000 }),
            (
                t0_ms + 3 * DAY_MS,
                Body::Sell {
                    pin_hash: z,
                    channel_id: 3,
                    price_won: 50_000,
                    payment_means: 1,
                    gift_recipient_ref: 0,
                },
            ),
            (t0_ms + 3 * DAY_MS, Body::Issue { pin_hash: w, face_value_won: 5_000 }),
            (t0_ms + 3 * DAY_MS, Body::Activate { pin_hash: w, password_mac: 7 }),
        ];
        for (op, (now_ms, body)) in steps.into_iter().enumerate() {
            // Op ids carry their time in the top bits (the engine refuses ids too old).
            let command = Command {
                op_id: (u128::from(now_ms) << 80) | (op as u128 + 1),
                deadline_at_ms: 0,
                body,
            };
            let applied = engine.apply(now_ms, &command);
            assert_eq!(applied.reply.code, ResultCode::Approved.as_u16(), "{command:?}");
            journal
                .append(&encode_entry(&JournalEntry { now_ms, command, reply: applied.reply }))
                .unwrap();
            journal.commit().unwrap();
        }
        [x, y, z, w]
    }

    /// Posts `amount_won` into the ledger's open period as if a record had posted it.
    fn post(exporter: &mut Exporter, debit: Account, credit: Account, amount_won: u64) {
        let period = exporter.open.values_mut().next_back().unwrap();
        period.movements.post(&Posting { debit, credit, amount_won }).unwrap();
    }

    fn line(card: u128, ledger_won: u64, finding: CardFinding) -> CardLine {
        CardLine { shard: 0, card, ledger_won, finding }
    }

    #[test]
    fn following_applies_what_a_run_applies_and_reports_each_record_time() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let t0_ms = 1_777_000_000_000;
        journal(&data, t0_ms);
        let options = |state: &str| Options {
            data_dir: data.clone(),
            state_dir: root.path().join(state),
            engine: EngineConfig::test_min(),
            config: ExportConfig::default(),
        };
        let mut ran = Exporter::open(options("ran")).unwrap();
        ran.run(None, 0).unwrap();
        let mut followed = Exporter::open(options("followed")).unwrap();
        let mut times = Vec::new();
        let mut passes = 0;
        // Two passes: the first applies everything, the second finds nothing (no wait: the
        // poll is zero) and stops.
        let report = followed
            .follow(
                std::time::Duration::ZERO,
                &|| 0,
                &mut |_| {
                    passes += 1;
                    passes < 2
                },
                &mut |time_ms| times.push(time_ms),
            )
            .unwrap();
        assert_eq!((passes, report.applied.clone()), (2, vec![10]));
        assert_eq!((times.first(), times.last()), (Some(&t0_ms), Some(&(t0_ms + 3 * DAY_MS))));
        drop(followed);
        let reopened = Exporter::open(options("followed")).unwrap();
        assert_eq!(
            reopened.followers[0].cursor_seq(),
            ran.followers[0].cursor_seq(),
            "the end of following is checkpointed"
        );
        assert_eq!(reopened.status().unwrap().reconciliation, ran.status().unwrap().reconciliation);
    }

    #[test]
    fn shadows_of_an_interrupted_checkpoint_are_ignored_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        journal(&data, 1_777_000_000_000);
        let state = root.path().join("state");
        let options = Options {
            data_dir: data,
            state_dir: state.clone(),
            engine: EngineConfig::test_min(),
            config: ExportConfig::default(),
        };
        let mut exporter = Exporter::open(options.clone()).unwrap();
        exporter.run(None, 0).unwrap();
        let generation = exporter.generation;
        let reconciliation = exporter.status().unwrap().reconciliation;
        drop(exporter);
        // A crash after the next generation's shadow was written, before the state naming it.
        let stray = shadow_path(&state, 0, generation + 1);
        std::fs::copy(shadow_path(&state, 0, generation), &stray).unwrap();
        let looking = Exporter::open_read_only(options.clone()).unwrap();
        assert!(stray.exists(), "a reader changes nothing");
        assert_eq!(looking.status().unwrap().reconciliation, reconciliation);
        let reopened = Exporter::open(options.clone()).unwrap();
        assert!(!stray.exists() && shadow_path(&state, 0, generation).exists());
        assert_eq!(
            (reopened.generation, reopened.status().unwrap().reconciliation),
            (generation, reconciliation)
        );
        drop(reopened);
        // The state's own shadow missing is an error naming the file.
        std::fs::remove_file(shadow_path(&state, 0, generation)).unwrap();
        assert!(matches!(
            Exporter::open(options),
            Err(ExportError::Io { action: "read shadow engine", .. })
        ));
    }

    #[test]
    fn the_reconciliation_names_the_cards_whose_sub_ledger_differs_from_the_engine() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let [x, y, z, w] = journal(&data, 1_777_000_000_000);
        let options = Options {
            data_dir: data,
            state_dir: root.path().join("state"),
            engine: EngineConfig::test_min(),
            config: ExportConfig::default(),
        };
        let mut exporter = Exporter::open(options).unwrap();
        exporter.run(None, 0).unwrap();
        let status = exporter.status().unwrap();
        assert!(status.reconciled(), "{status}");
        assert_eq!(
            (status.cards.ledger_cards, status.cards.engine_cards, status.cards.lines.len()),
            (4, 4, 0)
        );
        // X and Y are past their validity: the engine's view shows them expired, its totals
        // still hold their 9,000 + 20,000 won, as the sub-ledger does. No difference.
        assert_eq!(exporter.followers[0].check_cards().lines, []);
        let clean = exporter.followers[0].card_values_mut().clone();
        assert_eq!([x, y, z, w].map(|card| clean[&card]), [9_000, 20_000, 50_000, 5_000]);

        // A lost posting: Z's liability 500 won short in the ledger and its sub-ledger.
        *exporter.followers[0].card_values_mut().get_mut(&z).unwrap() -= 500;
        post(
            &mut exporter,
            Account::CardLiability { face_value_won: 50_000 },
            Account::SalesPremium,
            500,
        );
        let status = exporter.status().unwrap();
        assert!(!status.reconciled());
        let card_balances = &status.reconciliation[0];
        assert_eq!(card_balances.ledger_won - card_balances.engine_won, -500, "{status}");
        assert_eq!(
            status.cards.lines,
            [line(z, 49_500, CardFinding::Differs { engine_won: 50_000 })]
        );
        let text = status.to_string();
        assert!(text.contains(&format!("card {z:032x} shard   0  ledger      49500 won  engine      50000 won  DIFFERENCE -500 won")), "{text}");
        post(
            &mut exporter,
            Account::SalesPremium,
            Account::CardLiability { face_value_won: 50_000 },
            500,
        );
        *exporter.followers[0].card_values_mut() = clean.clone();

        // Value posted to the wrong card: every total agrees, the cards do not.
        *exporter.followers[0].card_values_mut().get_mut(&z).unwrap() -= 300;
        *exporter.followers[0].card_values_mut().get_mut(&w).unwrap() += 300;
        let status = exporter.status().unwrap();
        assert!(
            status.reconciliation.iter().all(|line| line.ledger_won == line.engine_won),
            "{status}"
        );
        assert!(!status.reconciled());
        assert_eq!(
            status.cards.lines,
            [
                line(z, 49_700, CardFinding::Differs { engine_won: 50_000 }),
                line(w, 5_300, CardFinding::Differs { engine_won: 5_000 })
            ]
        );
        *exporter.followers[0].card_values_mut() = clean.clone();

        // A difference on a card whose expiry is pending: the engine shows no balance for it,
        // so the reconciliation names the cards the difference must lie among (X and Y).
        *exporter.followers[0].card_values_mut().get_mut(&x).unwrap() += 700;
        post(
            &mut exporter,
            Account::SalesDiscount,
            Account::CardLiability { face_value_won: 10_000 },
            700,
        );
        let status = exporter.status().unwrap();
        assert!(!status.reconciled());
        assert_eq!(
            status.cards.lines,
            [
                line(x, 9_700, CardFinding::ExpiryPending),
                line(y, 20_000, CardFinding::ExpiryPending)
            ]
        );
        assert!(status.to_string().contains("expiry pending"));
        post(
            &mut exporter,
            Account::CardLiability { face_value_won: 10_000 },
            Account::SalesDiscount,
            700,
        );
        *exporter.followers[0].card_values_mut() = clean.clone();

        // A card the ledger never posted to: named with what the engine holds on it.
        exporter.followers[0].card_values_mut().remove(&w);
        let status = exporter.status().unwrap();
        assert!(!status.reconciled());
        assert_eq!(
            (status.cards.unposted_engine_cards, status.cards.lines.as_slice()),
            (1, [line(w, 0, CardFinding::NotPosted { engine_won: 5_000 })].as_slice())
        );
        assert!(status.to_string().contains("never posted by the ledger"));
        *exporter.followers[0].card_values_mut() = clean;
        assert!(exporter.status().unwrap().reconciled());
    }
}
