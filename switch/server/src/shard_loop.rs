//! One shard: it owns one pure engine (`pinswitch_core::Shard`) and one journal, and runs group
//! commit. Its driver task runs on the shard's own thread, beside that shard's connections (see
//! `runtime.rs`): it drains whatever batches are queued (the shard's own connections' and other
//! shards' connections', up to `commit_events_max` events), applies them in arrival order,
//! appends a journal record for each command that changed state, makes the records durable with
//! one commit, and only then releases the replies, reads included, so no client ever sees state
//! that a crash could take back. A failed commit is fatal: the process aborts and recovery
//! replays the journal. The driver is plain async code over runtime-neutral channels (tokio's
//! `mpsc`/`oneshot` need no tokio runtime), so glommio and the tokio fallback run the same one.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use crossbeam_channel::Sender;
use pinswitch_core::{
    Applied, Body, CardView, Command, ENGINE_FORMAT_CURRENT, EngineConfig, JournalEntry, Ms, OpId,
    OpView, PinHash, Reply, SNAPSHOT_IMAGE_FORMAT, SessionNoticeOut, Shard, decode_entry,
    encode_entry, encode_entry_into,
};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::clock::{EngineClock, Reading};
use crate::metrics::{ShardMetrics, StorageState};
use crate::push::SessionDirectory;
use pinswitch_journal::{CommitRequest, Journal, JournalOptions, SnapshotWriter};
use pinswitch_protocol::MsgType;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// What a connection asks of a shard, one item per event.
#[derive(Clone, Debug)]
pub(crate) enum ShardItem {
    Command(Command),
    Card(PinHash),
    Op {
        pin_hash: PinHash,
        op_id: OpId,
    },
    /// PRICE_QUOTE (read-only).
    Quote {
        pin_hash: Option<PinHash>,
        category: u8,
        destination: u64,
        duration_s: u32,
        units: u32,
    },
    /// SESSION_AUDIT's comparison: the owner's live sessions here (read-only).
    AuditCount {
        owner_id: u32,
    },
    /// SESSION_AUDIT's list: end the owner's sessions here that are not in `live` and silent
    /// since `silent_since_ms` (journaled as a `SessionsClose`).
    AuditClose {
        owner_id: u32,
        live: Arc<HashSet<u128>>,
        silent_since_ms: Ms,
    },
    /// `item` names its card under the newest PIN key; the card may be named under one of the
    /// `older` keys (newest first) instead. The shard serves `item` under the first of the
    /// names that names a card it holds, the newest when none does, before anything is
    /// journaled: the record carries the one name, so replay needs no keys. Sent only once a
    /// rotation has left older keys.
    Resolve {
        older: Box<[PinHash]>,
        item: Box<ShardItem>,
    },
}

/// `item` with its card named by the first of its names (the newest, then `older`) that names
/// a card `engine` holds; unchanged when the newest does or none does.
fn resolve(engine: &Shard, older: &[PinHash], item: &ShardItem) -> ShardItem {
    let newest = match item {
        ShardItem::Command(command) => command.body.pin_hash(),
        ShardItem::Card(pin_hash) | ShardItem::Op { pin_hash, .. } => Some(*pin_hash),
        ShardItem::Quote { pin_hash, .. } => *pin_hash,
        _ => None,
    };
    let found = newest
        .filter(|newest| !engine.has_card(*newest))
        .and_then(|_| older.iter().copied().find(|name| engine.has_card(*name)));
    let Some(name) = found else { return item.clone() };
    match item {
        ShardItem::Command(command) => {
            let mut command = command.clone();
            if let Some(pin_hash) = command.body.pin_hash_mut() {
                *pin_hash = name;
            }
            ShardItem::Command(command)
        }
        ShardItem::Card(_) => ShardItem::Card(name),
        ShardItem::Op { op_id, .. } => ShardItem::Op { pin_hash: name, op_id: *op_id },
        ShardItem::Quote { category, destination, duration_s, units, .. } => ShardItem::Quote {
            pin_hash: Some(name),
            category: *category,
            destination: *destination,
            duration_s: *duration_s,
            units: *units,
        },
        other => other.clone(),
    }
}

/// The shard's answer to one item, in the same position.
#[derive(Debug)]
pub(crate) enum ShardOutput {
    /// A command's outcome; a FOREIGN_CONVERT's effects carry the foreign PIN it handed out
    /// (approved ones, replays included).
    Applied(Applied),
    Card(Option<CardView>),
    Op(OpView),
    Quote(pinswitch_core::Quote),
    /// Live sessions of the owner and their digest.
    AuditCount(u32, u128),
    /// The owner's live sessions before the close, and the ids closed.
    AuditClosed(u32, Vec<u128>),
}

/// A group of items from one frame for one shard, answered together.
pub(crate) struct ShardBatch {
    pub items: Vec<ShardItem>,
    pub reply: oneshot::Sender<Vec<ShardOutput>>,
    /// When the batch was made (for `pinswitch_answer_seconds`).
    pub queued_at: Instant,
}

/// The closed set of inputs a shard's driver consumes.
pub(crate) enum ShardInput {
    Batch(ShardBatch),
    /// The shard's ticker: look for due hold and session expiries even when no batch comes.
    Tick,
}

/// How connections reach one shard: a bounded queue (a full queue is RETRY_LATER, never
/// waiting). Any thread may submit: a batch from the shard's own thread wakes its driver with
/// no system call; one from another thread wakes it through the runtime's cross-thread waker
/// (an eventfd write, and only when the shard's thread sleeps).
#[derive(Clone)]
pub(crate) struct ShardHandle {
    sender: mpsc::Sender<ShardInput>,
}

impl ShardHandle {
    /// Queues a batch; gives it back when the shard's queue is full or the shard has stopped.
    pub(crate) fn try_submit(&self, batch: ShardBatch) -> Result<(), ShardBatch> {
        match self.sender.try_send(ShardInput::Batch(batch)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(ShardInput::Batch(batch)))
            | Err(mpsc::error::TrySendError::Closed(ShardInput::Batch(batch))) => Err(batch),
            Err(_) => unreachable!("only batches are submitted"),
        }
    }

    /// The ticker's nudge; dropped when the queue is full (the driver is busy and ticks anyway).
    pub(crate) fn tick(&self) {
        let _ = self.sender.try_send(ShardInput::Tick);
    }
}

/// Settings one shard thread needs.
#[derive(Clone, Debug)]
pub(crate) struct ShardSettings {
    pub shard_id: u16,
    pub shard_count: u16,
    pub dir: PathBuf,
    pub engine: EngineConfig,
    /// Secret seed of the engine's hash tables (`Keys::table_key`).
    pub hash_key: [u64; 2],
    /// The key of approval codes, journaled in the shard's UPGRADE to format 2.
    pub approval_key: [u64; 2],
    pub journal: JournalOptions,
    pub queue_max: usize,
    pub commit_events_max: usize,
    pub snapshot_every_records: u64,
    /// A failed snapshot is tried again no sooner than this.
    pub snapshot_retry_ms: u64,
    /// With no spare segment (a full disk), making one is tried again at most this often.
    pub storage_retry_ms: u64,
    /// Where session notices go once durable.
    pub directory: Arc<SessionDirectory>,
    /// The shard's figures for `/metrics`.
    pub metrics: Arc<ShardMetrics>,
    /// The engine clock's forward-step bound and its confirmation time (`clock.rs`).
    pub clock_step_max_ms: u64,
    pub clock_step_confirm_ms: u64,
    /// What becomes of retired journal segments after each snapshot.
    pub retention: crate::retention::Retention,
}

/// What recovery found, for the start-up log line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecoveryReport {
    pub snapshot_seq: u64,
    pub replayed_records: u64,
    pub cards: usize,
    /// Where recovery's time went: finding the journal's end and the newest snapshot, decoding
    /// the snapshot into tables, replaying the records after it.
    pub scan_ms: u128,
    pub decode_ms: u128,
    pub replay_ms: u128,
}

/// Server wall clock in ms since the Unix epoch. The engine keeps its own clock monotonic.
pub(crate) fn wall_clock_ms() -> Ms {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // Saturates (u64 milliseconds last 584 million years).
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A recovered shard, ready to be driven on the thread that will serve it.
pub(crate) struct ShardDriver {
    runner: Runner,
    receiver: mpsc::Receiver<ShardInput>,
}

/// Recovers the shard from its directory and starts its snapshot thread; `ShardDriver::run`
/// then serves it on the calling thread's runtime.
pub(crate) fn start(
    settings: ShardSettings,
) -> anyhow::Result<(ShardHandle, RecoveryReport, ShardDriver)> {
    let (engine, journal, report) = recover(&settings)?;
    let (sender, receiver) = mpsc::channel(settings.queue_max.max(1));
    let snapshots = SnapshotThread::start(&settings)?;
    // Records replayed since the newest snapshot count toward the next one: a switch that
    // crashes more often than every `snapshot_every_records` records still snapshots, so
    // recovery time stays bounded under a crash loop (it restarted at zero before, and replay
    // grew without bound: 15.1 M records per shard after 86 kills).
    let since_snapshot = report.replayed_records;
    let storage = Storage::new(&settings, &journal);
    let clock = EngineClock::new(settings.clock_step_max_ms, settings.clock_step_confirm_ms);
    let runner = Runner {
        settings,
        engine,
        journal,
        since_snapshot,
        snapshots,
        encoded: Vec::new(),
        storage,
        snapshot_not_before: None,
        clock,
        clock_origin: Instant::now(),
        clock_quarantined: false,
    };
    Ok((ShardHandle { sender }, report, ShardDriver { runner, receiver }))
}

impl ShardDriver {
    /// Serves the shard until every handle is gone. A loop turn either applies one group (the
    /// first input and whatever else is queued by then) in memory, or takes the result of the
    /// commit in flight. One commit is kept in flight on the shard's sync thread while records
    /// wait, so the shard goes on reading, applying and answering while the disk flushes; each
    /// group's replies (reads included) and notices leave, in order, once the journal is durable
    /// up to the group's last record.
    ///
    /// `ring`: how to sync a commit through the runtime's own I/O ring (glommio's `fdatasync`
    /// op), or `None` for the shard's sync thread.
    pub(crate) async fn run(self, ring: Option<RingSync>) {
        let ShardDriver { mut runner, mut receiver } = self;
        let shard_id = runner.settings.shard_id;
        let syncer = match ring {
            Some(ring) => Syncer::Ring(ring),
            None => match SyncThread::start(shard_id) {
                Ok(syncer) => Syncer::Thread(syncer),
                Err(error) => fatal(&format!("shard {shard_id}: {error:#}")),
            },
        };
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let mut in_flight: Option<Pin<Box<dyn Future<Output = Option<Synced>>>>> = None;
        // When the commit in flight started, and the first record it covers.
        let mut commit_started = (Instant::now(), 0u64);
        let mut closed = false;
        // A snapshot due at start (the replay was long) is taken at the first turn: the ticker
        // sends an input within `TICK`.
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Some(done) = in_flight.as_mut()
                    && let Poll::Ready(synced) = done.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Synced(synced));
                }
                if closed {
                    return if in_flight.is_none() {
                        Poll::Ready(Event::Closed)
                    } else {
                        Poll::Pending
                    };
                }
                match receiver.poll_recv(cx) {
                    Poll::Ready(Some(input)) => Poll::Ready(Event::Input(input)),
                    Poll::Ready(None) => Poll::Ready(Event::Closed),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match event {
                Event::Synced(Some((request, synced))) => {
                    in_flight = None;
                    let metrics = &runner.settings.metrics;
                    let elapsed_us = commit_started.0.elapsed().as_micros();
                    metrics.commit_us.record(u64::try_from(elapsed_us).unwrap_or(u64::MAX));
                    metrics
                        .commit_records
                        .record(request.last_seq().saturating_sub(commit_started.1));
                    if let Err(error) = runner.journal.commit_finish(request, synced) {
                        // Never retried: after a failed fsync the page cache can no longer be trusted.
                        fatal(&format!("shard {shard_id} journal commit failed: {error}"));
                    }
                }
                Event::Synced(None) => fatal(&format!("shard {shard_id} sync thread is gone")),
                Event::Input(first) => {
                    let mut batches = Vec::new();
                    let mut events = 0usize;
                    if let ShardInput::Batch(batch) = first {
                        events += batch.items.len();
                        batches.push(batch);
                    }
                    // Group: take whatever else is already queued, up to the commit size.
                    while events < runner.settings.commit_events_max {
                        match receiver.try_recv() {
                            Ok(ShardInput::Batch(batch)) => {
                                events += batch.items.len();
                                batches.push(batch);
                            }
                            Ok(ShardInput::Tick) => {}
                            Err(_) => break,
                        }
                    }
                    let group = runner.group(batches);
                    // Groups wait in journal order, so releasing a prefix releases in order.
                    assert!(
                        waiting.back().is_none_or(|last: &Waiting| last.seq <= group.seq),
                        "groups are released in journal order"
                    );
                    waiting.push_back(group);
                }
                Event::Closed if in_flight.is_none() && waiting.is_empty() => return,
                Event::Closed => closed = true,
            }
            // A due snapshot is taken at the last applied record, which it commits in line.
            if runner.since_snapshot >= runner.settings.snapshot_every_records
                || runner.snapshots.failed.load(Ordering::Acquire)
            {
                runner.snapshot();
            }
            // Durable: release the groups it covers, oldest first, then the notices they raised.
            let durable_seq = runner.journal.durable_seq();
            while waiting.front().is_some_and(|group| group.seq <= durable_seq) {
                if let Some(group) = waiting.pop_front() {
                    group.release(
                        durable_seq,
                        &runner.settings.directory,
                        &runner.settings.metrics,
                    );
                }
            }
            if in_flight.is_none() {
                let durable_before = runner.journal.durable_seq();
                match runner.journal.commit_start() {
                    Ok(Some(request)) => {
                        commit_started = (Instant::now(), durable_before);
                        in_flight = Some(syncer.submit(request));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        fatal(&format!("shard {shard_id} journal commit failed: {error}"))
                    }
                }
            }
        }
    }
}

/// What wakes the driver.
enum Event {
    Input(ShardInput),
    Synced(Option<Synced>),
    Closed,
}

/// A finished commit: the request and what the sync returned.
pub(crate) type Synced = (CommitRequest, std::io::Result<()>);

/// A group applied in memory: its replies and notices leave once the journal is durable up
/// to `seq` (its last record, or the last before it for a group that wrote none).
struct Waiting {
    seq: u64,
    batches: Vec<ShardBatch>,
    outputs: Vec<Vec<ShardOutput>>,
    notices: Vec<SessionNoticeOut>,
}

impl Waiting {
    /// Sends the group's answers and notices: only once the journal is durable through `seq`.
    fn release(self, durable_seq: u64, directory: &SessionDirectory, metrics: &ShardMetrics) {
        assert!(self.seq <= durable_seq, "no answer leaves before its records are durable");
        assert_eq!(self.batches.len(), self.outputs.len(), "one answer list per batch");
        // One clock reading for the group's batches, not one each.
        let released_at = Instant::now();
        for (batch, answers) in self.batches.into_iter().zip(self.outputs) {
            assert_eq!(batch.items.len(), answers.len(), "one answer per event");
            let waited_us = released_at.saturating_duration_since(batch.queued_at).as_micros();
            metrics.answer_us.record(u64::try_from(waited_us).unwrap_or(u64::MAX));
            // A connection that went away no longer wants its answer; that is fine.
            let _ = batch.reply.send(answers);
        }
        if !self.notices.is_empty() {
            directory.notify(&self.notices);
        }
    }
}

/// A commit's sync issued through the runtime's ring: given the request, a future that runs
/// its `fdatasync` there and yields the request and the result.
pub(crate) type RingSync = Box<dyn Fn(CommitRequest) -> Pin<Box<dyn Future<Output = Synced>>>>;

/// Where the driver's commits are made durable.
enum Syncer {
    Thread(SyncThread),
    Ring(RingSync),
}

impl Syncer {
    fn submit(&self, request: CommitRequest) -> Pin<Box<dyn Future<Output = Option<Synced>>>> {
        match self {
            Syncer::Thread(thread) => {
                let answer = thread.submit(request);
                Box::pin(async move { answer.await.ok() })
            }
            Syncer::Ring(ring) => {
                let synced = ring(request);
                Box::pin(async move { Some(synced.await) })
            }
        }
    }
}

/// The shard's sync thread: it runs each commit's `fdatasync` so the shard thread never
/// blocks on the disk. One commit at a time (the driver keeps at most one in flight), handed
/// over in a one-place mailbox: a mutex and a condition variable, because a channel's receiver
/// spins and yields before it sleeps, and on two cores that spinning is taken from the shards.
struct SyncThread {
    mailbox: Mailbox,
}

/// The sync thread's one place: the commit to run and where to say it ran.
type Mailbox =
    Arc<(std::sync::Mutex<Option<(CommitRequest, oneshot::Sender<Synced>)>>, std::sync::Condvar)>;

impl SyncThread {
    fn start(shard_id: u16) -> anyhow::Result<SyncThread> {
        let mailbox: Mailbox = Arc::new((std::sync::Mutex::new(None), std::sync::Condvar::new()));
        let inbox = mailbox.clone();
        std::thread::Builder::new()
            .name(format!("sync-{shard_id}"))
            .spawn(move || {
                let (slot, ready) = &*inbox;
                loop {
                    let (request, done) = {
                        let mut slot =
                            slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        loop {
                            if let Some(work) = slot.take() {
                                break work;
                            }
                            slot =
                                ready.wait(slot).unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                    };
                    let synced = request.sync();
                    let _ = done.send((request, synced));
                }
            })
            .context("spawning a sync thread")?;
        Ok(SyncThread { mailbox })
    }

    fn submit(&self, request: CommitRequest) -> oneshot::Receiver<Synced> {
        let (done, answer) = oneshot::channel();
        let (slot, ready) = &*self.mailbox;
        let mut slot = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(slot.is_none(), "one commit in flight at a time");
        *slot = Some((request, done));
        ready.notify_one();
        answer
    }
}

/// Newest snapshot + journal replay; every replayed reply must equal the recorded one.
pub(crate) fn recover(
    settings: &ShardSettings,
) -> anyhow::Result<(Shard, Journal, RecoveryReport)> {
    std::fs::create_dir_all(&settings.dir)
        .with_context(|| format!("creating {}", settings.dir.display()))?;
    let started = Instant::now();
    let (snapshot, mut recovery) = Journal::recover(&settings.dir, settings.journal)
        .with_context(|| format!("recovering journal in {}", settings.dir.display()))?;
    let scan_ms = started.elapsed().as_millis();
    let (mut engine, snapshot_seq) = match snapshot {
        Some(snapshot) => {
            let engine = Shard::from_snapshot_image(snapshot.image_format, &snapshot.bytes)
                .map_err(|why| {
                    anyhow!(
                        "snapshot {} in {} does not decode: {why}",
                        snapshot.seq,
                        settings.dir.display()
                    )
                })?;
            (engine, snapshot.seq)
        }
        // No snapshot: replay starts from the fixed baseline rules, never from today's file.
        // The rules a shard first ran under are journaled as a CONFIGURE (below) whenever they
        // differ from the baseline, so a restart under an edited file replays every command
        // under the rules it first ran with (starting from the file's rules would make the
        // replay of a directory written under other rules diverge).
        // The same holds for the engine format: replay starts in the first, and the journal's
        // UPGRADE records move it on where they were written.
        None => (
            Shard::first_format(
                settings.shard_id,
                settings.shard_count,
                EngineConfig::production(),
                settings.hash_key,
            ),
            0,
        ),
    };
    let decode_ms = started.elapsed().as_millis() - scan_ms;
    let mut replayed_records = 0u64;
    recovery
        .replay(snapshot_seq, |seq, payload| {
            let entry = decode_entry(payload).map_err(|why| {
                format!("record {seq} does not decode (written by a newer release?): {why}")
            })?;
            if let Body::Upgrade { engine_format, .. } = entry.command.body
                && engine_format > ENGINE_FORMAT_CURRENT
            {
                return Err(format!(
                    "record {seq} raises the engine format to {engine_format}; this release runs \
                     formats up to {ENGINE_FORMAT_CURRENT}: start the release that wrote it"
                ));
            }
            // The effects (expiries, breakage, PINs handed out, notices) were answered and pushed
            // by the process that applied the record first: dropped with `applied`.
            let applied = engine.apply(entry.now_ms, &entry.command);
            if applied.reply != entry.reply || !applied.changed {
                return Err(format!(
                    "replay diverged at record {seq}: journaled {:?}, replayed {:?}",
                    entry.reply, applied
                ));
            }
            replayed_records += 1;
            Ok(())
        })
        .with_context(|| format!("replaying journal in {}", settings.dir.display()))?;
    let replay_ms = started.elapsed().as_millis() - scan_ms - decode_ms;
    let mut journal = recovery.into_journal().context("reopening the journal for appends")?;
    // A shard written by an older release (or a new one) runs this release's engine format
    // from here on: journaled, so replay switches formats at this very record.
    if engine.engine_format() < ENGINE_FORMAT_CURRENT {
        let body = Body::Upgrade {
            engine_format: ENGINE_FORMAT_CURRENT,
            approval_key: settings.approval_key,
        };
        journal_at_start(&mut engine, &mut journal, body, "the format upgrade")?;
    }
    // Rules changed since the last run: journal the change so replay applies it at this point.
    // Compared as records: the journal's rules come back from their record, so rules that
    // would be journaled the same are the same rules (`EngineConfig::same_record`).
    if !engine.config().same_record(&settings.engine) {
        let body = Body::configure(&settings.engine);
        journal_at_start(&mut engine, &mut journal, body, "the configured rules")?;
    }
    let report = RecoveryReport {
        snapshot_seq,
        replayed_records,
        cards: engine.card_count(),
        scan_ms,
        decode_ms,
        replay_ms,
    };
    Ok((engine, journal, report))
}

/// Applies a server command (no op id) at start-up, before any traffic, and makes its record
/// durable; an engine that refuses it stops the start.
fn journal_at_start(
    engine: &mut Shard,
    journal: &mut Journal,
    body: Body,
    what: &str,
) -> anyhow::Result<()> {
    let command = Command { op_id: 0, deadline_at_ms: 0, body };
    let now_ms = wall_clock_ms().max(engine.now_ms());
    let applied = engine.apply(now_ms, &command);
    if !applied.changed {
        bail!("the engine did not take {what}");
    }
    let entry = JournalEntry { now_ms, command, reply: applied.reply };
    journal.append(&encode_entry(&entry)).with_context(|| format!("journaling {what}"))?;
    journal.commit().with_context(|| format!("committing {what}"))?;
    Ok(())
}

struct Runner {
    settings: ShardSettings,
    engine: Shard,
    journal: Journal,
    since_snapshot: u64,
    snapshots: SnapshotThread,
    /// Scratch buffer for journal records (reused, not allocated per record).
    encoded: Vec<u8>,
    /// Whether the journal has the next segment's space, and what the shard said about it.
    storage: Storage,
    /// After a failed snapshot, the next is not tried before this.
    snapshot_not_before: Option<Instant>,
    /// The time given to the engine: the wall clock with its forward steps bounded.
    clock: EngineClock,
    /// The monotonic clock's origin for `clock`.
    clock_origin: Instant,
    /// A forward step is in quarantine (said once per episode).
    clock_quarantined: bool,
}

/// A full disk, as one shard sees it. The journal takes the next segment's space ahead (the
/// spare); while it cannot, the shard goes on writing into the segment it has and, once a
/// record would not fit there, answers STORAGE_FULL to every event that would write one,
/// without executing it (reads and INQUIRY are still answered). It tries to take the space
/// again at most every `storage_retry_ms` and resumes by itself when that succeeds. Nothing
/// here is fatal: no acknowledged record depends on space not yet taken.
struct Storage {
    /// The spare could not be made at the last attempt.
    short: bool,
    /// STORAGE_FULL was answered since the shard last said so (said once per episode).
    refusing: bool,
    next_try: Instant,
    retry: std::time::Duration,
}

impl Storage {
    fn new(settings: &ShardSettings, journal: &Journal) -> Storage {
        let storage = Storage {
            short: !journal.spare_ready(),
            refusing: false,
            next_try: Instant::now(),
            retry: std::time::Duration::from_millis(settings.storage_retry_ms),
        };
        if storage.short {
            storage.say_short(settings.shard_id, journal);
        }
        storage
    }

    fn say_short(&self, shard_id: u16, journal: &Journal) {
        eprintln!(
            "pinswitch: shard {shard_id} storage short: no space for the next journal segment \
             ({}); writes go on in the current segment ({} KiB left), then get STORAGE_FULL; \
             trying again every {} ms",
            journal.spare_error().unwrap_or("unknown error"),
            journal.segment_room_bytes() >> 10,
            self.retry.as_millis()
        );
    }

    /// Before a group: if the spare is missing and a try is due, try to make it.
    fn check(&mut self, shard_id: u16, journal: &mut Journal) {
        let short = !journal.spare_ready();
        if !short {
            if self.short {
                self.short = false;
                self.refusing = false;
                eprintln!(
                    "pinswitch: shard {shard_id} storage ready again: the next segment's space \
                     is taken; writes resume"
                );
            }
            return;
        }
        if !self.short {
            // A roll used the spare and could not make the next one.
            self.short = true;
            self.next_try = Instant::now() + self.retry;
            self.say_short(shard_id, journal);
            return;
        }
        let now = Instant::now();
        if now < self.next_try {
            return;
        }
        self.next_try = now + self.retry;
        if journal.replenish_spare().is_ok() {
            self.check(shard_id, journal);
        }
    }

    /// An event was refused for want of space (said once per episode).
    fn refused(&mut self, shard_id: u16) {
        if !self.refusing {
            self.refusing = true;
            eprintln!(
                "pinswitch: shard {shard_id} storage full: the current segment is full and no \
                 space for the next; events that would write a record get STORAGE_FULL \
                 (reads and INQUIRY are answered)"
            );
        }
    }
}

/// Writes a shard's snapshot images on their own thread: writing and fsyncing hundreds of
/// megabytes takes seconds, and the shard goes on serving meanwhile (its journal still holds
/// everything, so a snapshot is never needed for durability, only to bound recovery time).
/// One image at a time; a snapshot due while one is being written waits for the next batch.
struct SnapshotThread {
    sender: Sender<(SnapshotWriter, Box<Shard>)>,
    busy: Arc<AtomicBool>,
    /// The last image could not be written; the shard waits `snapshot_retry_ms` for the next.
    failed: Arc<AtomicBool>,
}

impl SnapshotThread {
    fn start(settings: &ShardSettings) -> anyhow::Result<SnapshotThread> {
        let (shard_id, metrics) = (settings.shard_id, settings.metrics.clone());
        let (dir, retention) = (settings.dir.clone(), settings.retention.clone());
        let (sender, receiver) = crossbeam_channel::bounded::<(SnapshotWriter, Box<Shard>)>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let failure = failed.clone();
        std::thread::Builder::new()
            .name(format!("snapshot-{shard_id}"))
            .spawn(move || {
                // Serializing an image is seconds of CPU that must not slow the shards down.
                if let Err(error) = pinswitch_journal::lower_thread_priority() {
                    eprintln!("pinswitch: shard {shard_id} snapshot thread keeps normal priority: {error}");
                }
                for (writer, copy) in receiver {
                    let started = Instant::now();
                    let seq = writer.seq();
                    let bytes = copy.to_snapshot_bytes();
                    drop(copy);
                    let serialized_ms = started.elapsed().as_millis();
                    if let Err(error) = writer.write(SNAPSHOT_IMAGE_FORMAT, &bytes) {
                        // Never fatal: the journal holds every record the image would have, a
                        // snapshot only bounds recovery time (a full disk must not become a
                        // crash loop). The temp file is gone; the shard tries again later.
                        eprintln!(
                            "pinswitch: shard {shard_id} snapshot at record {seq} failed, kept \
                             the previous one and will try again: {error}"
                        );
                        metrics.snapshots_failed.add(1);
                        failure.store(true, Ordering::Release);
                        done.store(false, Ordering::Release);
                        continue;
                    }
                    metrics.snapshots_written.add(1);
                    let total_ms = started.elapsed().as_millis();
                    metrics.snapshot_last_ms.set(u64::try_from(total_ms).unwrap_or(u64::MAX));
                    metrics.snapshot_last_unix_ms.set(wall_clock_ms());
                    eprintln!(
                        "pinswitch: shard {shard_id} snapshot at record {seq}: {} MiB, serialized in {serialized_ms} ms, written in {} ms",
                        bytes.len() >> 20,
                        started.elapsed().as_millis() - serialized_ms
                    );
                    match crate::retention::retire(&dir, shard_id, &retention) {
                        Ok(Some(retired)) => eprintln!(
                            "pinswitch: shard {shard_id} retention: {} segments through record {} \
                             retired ({retention:?})",
                            retired.segments, retired.through_seq
                        ),
                        Ok(None) => {}
                        Err(error) => {
                            eprintln!("pinswitch: shard {shard_id} retention failed, kept: {error}")
                        }
                    }
                    done.store(false, Ordering::Release);
                }
            })
            .context("spawning a snapshot thread")?;
        Ok(SnapshotThread { sender, busy, failed })
    }
}

impl Runner {
    /// One group, in memory: expiries due, then every item of `batches` in order, appending a
    /// journal record for each change. The commit is the driver's.
    fn group(&mut self, batches: Vec<ShardBatch>) -> Waiting {
        let mut outputs = Vec::with_capacity(batches.len());
        let now_ms = self.engine_time_ms();
        let mut appended = 0u64;
        let mut notices = Vec::new();
        self.storage.check(self.settings.shard_id, &mut self.journal);
        appended += self.tick(now_ms, &mut notices);
        let mut events = 0u64;
        for batch in batches.iter() {
            let mut answers = Vec::with_capacity(batch.items.len());
            for item in &batch.items {
                let answer = self.serve(now_ms, item, &mut appended, &mut notices);
                let (msg_type, code) = counted(item, &answer);
                self.settings.metrics.event(msg_type, code);
                answers.push(answer);
            }
            events += batch.items.len() as u64;
            outputs.push(answers);
        }
        self.since_snapshot += appended;
        self.publish(events);
        Waiting { seq: self.journal.last_seq(), batches, outputs, notices }
    }

    /// The time for this group: the wall clock, unless it stepped too far ahead (`clock.rs`).
    fn engine_time_ms(&mut self) -> Ms {
        let mono_ms = u64::try_from(self.clock_origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (now_ms, reading) = self.clock.now(wall_clock_ms(), mono_ms);
        let shard_id = self.settings.shard_id;
        let metrics = &self.settings.metrics;
        match reading {
            Reading::Taken => {
                if self.clock_quarantined {
                    self.clock_quarantined = false;
                    eprintln!(
                        "pinswitch: shard {shard_id} clock: the wall clock is back in bounds"
                    );
                }
                metrics.clock_ahead_ms.set(0);
            }
            Reading::Quarantined { ahead_ms } => {
                metrics.clock_quarantined.add(1);
                metrics.clock_ahead_ms.set(ahead_ms);
                if !self.clock_quarantined {
                    self.clock_quarantined = true;
                    eprintln!(
                        "pinswitch: shard {shard_id} clock: the wall clock stepped {ahead_ms} ms \
                         ahead (bound {} ms); running on the monotonic clock until the step \
                         holds for {} ms or goes away",
                        self.settings.clock_step_max_ms, self.settings.clock_step_confirm_ms
                    );
                }
            }
            Reading::Confirmed { step_ms } => {
                self.clock_quarantined = false;
                metrics.clock_ahead_ms.set(0);
                eprintln!(
                    "pinswitch: shard {shard_id} clock: a forward step of {step_ms} ms held for \
                     {} ms and is taken",
                    self.settings.clock_step_confirm_ms
                );
            }
        }
        now_ms
    }

    /// The shard's gauges after a group (a few relaxed stores).
    fn publish(&self, events: u64) {
        let metrics = &self.settings.metrics;
        metrics.group_events.record(events);
        metrics.cards.set(self.engine.card_count() as u64);
        metrics.op_records.set(self.engine.op_count() as u64);
        metrics.sessions_live.set(self.engine.session_count() as u64);
        let totals = self.engine.totals();
        metrics.balances_won.set(u64::try_from(totals.balances_won).unwrap_or(u64::MAX));
        metrics.held_won.set(u64::try_from(totals.held_won).unwrap_or(u64::MAX));
        metrics.journal_last_seq.set(self.journal.last_seq());
        metrics.journal_durable_seq.set(self.journal.durable_seq());
        metrics.segment_room_bytes.set(self.journal.segment_room_bytes() as u64);
        let state = match (self.storage.short, self.storage.refusing) {
            (false, _) => StorageState::Ready,
            (true, false) => StorageState::Short,
            (true, true) => StorageState::Full,
        };
        metrics.storage_state.set(state as u64);
    }

    /// One item of a group: applied (and journaled when it changed state) or read.
    fn serve(
        &mut self,
        now_ms: Ms,
        item: &ShardItem,
        appended: &mut u64,
        notices: &mut Vec<SessionNoticeOut>,
    ) -> ShardOutput {
        match item {
            ShardItem::Command(command) => {
                if !self.room_for(now_ms, command) {
                    let refused = Reply::code(pinswitch_protocol::ResultCode::StorageFull);
                    return ShardOutput::Applied(Applied::new(refused, false));
                }
                let applied = self.engine.apply(now_ms, command);
                if applied.changed {
                    self.append(now_ms, command.clone(), applied.reply);
                    *appended += 1;
                }
                collect_notices(&applied, notices);
                ShardOutput::Applied(applied)
            }
            ShardItem::Card(pin_hash) => ShardOutput::Card(self.engine.card(now_ms, *pin_hash)),
            ShardItem::Op { pin_hash, op_id } => ShardOutput::Op(self.engine.op(*pin_hash, *op_id)),
            ShardItem::Quote { pin_hash, category, destination, duration_s, units } => {
                ShardOutput::Quote(self.engine.quote(
                    now_ms,
                    *pin_hash,
                    *category,
                    *destination,
                    *duration_s,
                    *units,
                ))
            }
            ShardItem::AuditCount { owner_id } => {
                let (count, digest) = self.engine.owner_sessions(*owner_id);
                ShardOutput::AuditCount(count, digest)
            }
            ShardItem::AuditClose { owner_id, live, silent_since_ms } => {
                let (count, _) = self.engine.owner_sessions(*owner_id);
                let mut orphans = self.engine.session_orphans(*owner_id, live, *silent_since_ms);
                if !orphans.is_empty() {
                    let body = Body::SessionsClose {
                        owner_id: *owner_id,
                        silent_since_ms: *silent_since_ms,
                        session_ids: orphans.clone(),
                    };
                    let command = Command { op_id: 0, deadline_at_ms: 0, body };
                    if !self.room_for(now_ms, &command) {
                        // Nothing is closed; the next audit lists them again.
                        return ShardOutput::AuditClosed(count, Vec::new());
                    }
                    let applied = self.engine.apply(now_ms, &command);
                    if applied.changed {
                        self.append(now_ms, command, applied.reply);
                        *appended += 1;
                    }
                    collect_notices(&applied, notices);
                    if !applied.changed {
                        orphans.clear();
                    }
                }
                ShardOutput::AuditClosed(count, orphans)
            }
            ShardItem::Resolve { older, item } => {
                let resolved = resolve(&self.engine, older, item);
                self.serve(now_ms, &resolved, appended, notices)
            }
        }
    }

    /// Expires due holds and silent sessions (their notices go to `notices`); returns how many
    /// records it appended.
    fn tick(&mut self, now_ms: Ms, notices: &mut Vec<SessionNoticeOut>) -> u64 {
        match self.engine.next_expiry_ms() {
            Some(due_ms) if due_ms <= now_ms => {}
            _ => return 0,
        }
        let command = Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick };
        if !self.room_for(now_ms, &command) {
            // The expiries wait for space (every command expires what is due before it runs,
            // so none is served on a hold that should have gone).
            return 0;
        }
        let applied = self.engine.apply(now_ms, &command);
        if !applied.changed {
            return 0;
        }
        self.append(now_ms, command, applied.reply);
        collect_notices(&applied, notices);
        1
    }

    /// Whether the record `command` would write fits without new disk space (always, while the
    /// spare segment is ready). Asked before the command runs: once applied, a change must be
    /// journaled, and an append that would need space the disk does not have is fatal. The
    /// record's size does not depend on the reply (rkyv lays a `Reply` out at a fixed size), so
    /// the command encoded with a stand-in reply is the record's exact size.
    fn room_for(&mut self, now_ms: Ms, command: &Command) -> bool {
        if self.journal.spare_ready() {
            return true;
        }
        let entry = JournalEntry {
            now_ms,
            command: command.clone(),
            reply: Reply::code(pinswitch_protocol::ResultCode::Approved),
        };
        encode_entry_into(&entry, &mut self.encoded);
        if self.journal.fits(self.encoded.len()) {
            return true;
        }
        self.storage.refused(self.settings.shard_id);
        self.settings.metrics.storage_refused.add(1);
        false
    }

    /// Journals a command that changed state with its reply (never its effects: replay derives
    /// them again).
    fn append(&mut self, now_ms: Ms, command: Command, reply: Reply) {
        let entry = JournalEntry { now_ms, command, reply };
        encode_entry_into(&entry, &mut self.encoded);
        // `room_for` said yes for this very record; the size cannot have changed since.
        assert!(self.journal.fits(self.encoded.len()), "a journaled change has its space");
        if let Err(error) = self.journal.append(&self.encoded) {
            fatal(&format!("shard {} journal append failed: {error}", self.settings.shard_id));
        }
    }

    fn snapshot(&mut self) {
        if self.snapshots.busy.load(Ordering::Acquire) {
            return;
        }
        if self.snapshots.failed.swap(false, Ordering::AcqRel) {
            let retry = std::time::Duration::from_millis(self.settings.snapshot_retry_ms);
            self.snapshot_not_before = Some(Instant::now() + retry);
            // The records the failed image would have covered still count toward the next.
            self.since_snapshot = self.since_snapshot.max(self.settings.snapshot_every_records);
        }
        if self.snapshot_not_before.is_some_and(|not_before| Instant::now() < not_before) {
            return;
        }
        self.snapshot_not_before = None;
        // A consistent copy is all the shard thread pays for (copy-on-write chunks: microseconds,
        // then one chunk copy per first write to it); serializing and writing it happen on the
        // snapshot thread.
        let started = Instant::now();
        // The engine holds every applied record; the writer commits them first if need be.
        let seq = self.journal.last_seq();
        let copy = Box::new(self.engine.clone());
        let writer = match self.journal.prepare_snapshot(seq) {
            Ok(writer) => writer,
            Err(error) => {
                fatal(&format!("shard {} snapshot failed: {error}", self.settings.shard_id))
            }
        };
        eprintln!(
            "pinswitch: shard {} snapshot at record {seq}: {} cards, copy taken in {} us",
            self.settings.shard_id,
            self.engine.card_count(),
            started.elapsed().as_micros()
        );
        self.snapshots.busy.store(true, Ordering::Release);
        if self.snapshots.sender.send((writer, copy)).is_err() {
            fatal(&format!("shard {} snapshot thread is gone", self.settings.shard_id));
        }
        self.since_snapshot = 0;
    }
}

/// The message type and result code an answered item counts under in `/metrics`.
fn counted(item: &ShardItem, output: &ShardOutput) -> (MsgType, u16) {
    use pinswitch_protocol::ResultCode;
    let msg_type = match item {
        ShardItem::Command(command) => pinswitch_core::msg_type_of(&command.body),
        ShardItem::Card(_) => MsgType::BalanceInquiry,
        ShardItem::Op { .. } => MsgType::Inquiry,
        ShardItem::Quote { .. } => MsgType::PriceQuote,
        ShardItem::AuditCount { .. } | ShardItem::AuditClose { .. } => MsgType::SessionAudit,
        ShardItem::Resolve { item, .. } => return counted(item, output),
    };
    let code = match output {
        ShardOutput::Applied(applied) => applied.reply.code,
        ShardOutput::Card(None) => ResultCode::CardNotFound.as_u16(),
        ShardOutput::Quote(quote) => quote.code,
        ShardOutput::Card(Some(_))
        | ShardOutput::Op(_)
        | ShardOutput::AuditCount(..)
        | ShardOutput::AuditClosed(..) => ResultCode::Approved.as_u16(),
    };
    (msg_type, code)
}

/// Most session notices one group keeps for the push directory; past it new ones are dropped
/// (they are advisory: the call switch learns the same at its next report).
const NOTICES_PENDING_MAX: usize = 65_536;

/// Adds the notices a command raised to its group's, within `NOTICES_PENDING_MAX`.
fn collect_notices(applied: &Applied, notices: &mut Vec<SessionNoticeOut>) {
    for notice in applied.notices() {
        if notices.len() < NOTICES_PENDING_MAX {
            notices.push(notice);
        }
    }
}

/// Stops the process at once: durability can no longer be promised.
fn fatal(message: &str) -> ! {
    eprintln!("pinswitch: fatal: {message}");
    std::process::abort();
}

/// The directory of one shard under the data directory.
pub(crate) fn shard_dir(data_dir: &Path, shard_id: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard_id:03}"))
}
