//! The shard runtimes and recovery's bookkeeping, end to end against the real binary: the
//! epoll fallback (`--runtime tokio`) serves the same protocol as the default glommio runtime
//! and leaves a data directory the default runtime recovers; and a switch killed with SIGKILL
//! over and over, each life writing fewer records than `snapshot_every_records`, still writes
//! snapshots (the records replayed at start count toward the next one, and a replay already
//! past the interval snapshots without waiting for traffic), so the replay at start stays
//! bounded instead of growing with the number of lives, and every acknowledged debit survives
//! the whole loop.

use std::path::{Path, PathBuf};

use pinswitch_core::shard_of_op;
use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    BalanceInquiry, CardActivate, CardIssue, Category, FLAG_REPLAYED, Inquiry, MsgType, OpResult,
    OpStatus, ResultCode, Sale, new_op_id,
};
use pinswitch_tests::{Recovered, Switch, fresh_dir};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
/// The harness starts every switch with `--shards 2`.
const SHARDS: u16 = 2;
const FACE_WON: u64 = 100_000;
const PASSWORD: &[u8] = b"pass1234";

/// The shards' "recovered" lines of a start, by shard id.
fn recovered(switch: &Switch) -> Vec<Recovered> {
    switch.recovered(usize::from(SHARDS))
}

/// The "listening on" line of a start.
fn listening_line(switch: &Switch) -> &str {
    let line = switch.startup_lines().last().expect("a listening line");
    assert!(line.contains("listening on "), "{line:?}");
    line
}

fn sale(op_id: u128, pin: u64, amount_won: u64) -> Sale {
    Sale {
        op_id,
        pin,
        password: PASSWORD.to_vec(),
        amount_won,
        merchant_id: 7,
        category: Category::TelephoneCall as u8,
    }
}

/// Issues and activates `per_shard` cards on every shard, in one frame each (so both frames
/// span every shard); returns the PINs by shard. CARD_ISSUE runs on `shard_of_op(op_id)` and
/// the card it creates lives there, so op ids are picked per shard.
async fn cards_on_every_shard(client: &Client, per_shard: usize) -> Vec<Vec<u64>> {
    let mut issues: Vec<(u16, CardIssue)> = Vec::new();
    let mut wanted = vec![per_shard; usize::from(SHARDS)];
    while wanted.iter().any(|left| *left > 0) {
        let op_id = new_op_id();
        let shard = shard_of_op(op_id, SHARDS);
        if wanted[usize::from(shard)] > 0 {
            wanted[usize::from(shard)] -= 1;
            issues.push((shard, CardIssue { op_id, face_value_won: FACE_WON }));
        }
    }
    let events: Vec<CardIssue> = issues.iter().map(|(_, issue)| *issue).collect();
    let results = client.card_issue(&events).await.expect("issue");
    assert_eq!(results.len(), events.len());
    let mut pins = vec![Vec::new(); usize::from(SHARDS)];
    for ((shard, _), result) in issues.iter().zip(&results) {
        assert_eq!(result.code, ResultCode::Approved.as_u16(), "issue: {result:?}");
        assert_ne!(result.pin, 0);
        assert_eq!(result.balance_won, FACE_WON);
        pins[usize::from(*shard)].push(result.pin);
    }
    let activate: Vec<CardActivate> = pins
        .iter()
        .flatten()
        .map(|pin| CardActivate { op_id: new_op_id(), pin: *pin, password: PASSWORD.to_vec() })
        .collect();
    for result in client.card_activate(&activate).await.expect("activate") {
        assert_eq!(result.code, ResultCode::Approved.as_u16(), "activate: {result:?}");
    }
    pins
}

async fn balances(client: &Client, pins: &[u64]) -> Vec<u64> {
    let queries: Vec<BalanceInquiry> =
        pins.iter().map(|pin| BalanceInquiry { pin: *pin }).collect();
    let results = client.balance_inquiry(&queries).await.expect("balance inquiry");
    assert_eq!(results.len(), pins.len());
    results
        .iter()
        .map(|result| {
            assert_eq!(result.code, ResultCode::Approved.as_u16(), "balance: {result:?}");
            result.balance_won
        })
        .collect()
}

fn approved(result: &OpResult, what: &str) {
    assert_eq!(result.code, ResultCode::Approved.as_u16(), "{what}: {result:?}");
}

/// `--runtime tokio` says so when it listens and serves a short card life like the default
/// runtime: issue on both shards, activate, a SALE, its INQUIRY, a retry answered as REPLAYED
/// with the first answer, frames whose events span both shards answered in event order. After
/// a clean stop, the default (glommio) runtime recovers the directory tokio wrote: every
/// record replayed, the balances and the sale's idempotency record intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokio_runtime_serves_the_same_protocol() {
    let dir = fresh_dir("runtime-tokio");
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--runtime", "tokio"]);
    assert!(
        listening_line(&switch).contains("(2 shards on tokio"),
        "{:?}",
        listening_line(&switch)
    );
    let fresh = Recovered { snapshot_seq: 0, replayed: 0, cards: 0 };
    assert_eq!(recovered(&switch), vec![fresh; 2]);

    let client = Client::connect(&switch.address).await.expect("connect");
    let pins = cards_on_every_shard(&client, 1).await;
    let (first, second) = (pins[0][0], pins[1][0]);
    assert_eq!(balances(&client, &[first, second]).await, vec![FACE_WON, FACE_WON]);

    let sale_op = new_op_id();
    let sold = client.sale(&[sale(sale_op, first, 1_000)]).await.expect("sale").remove(0);
    approved(&sold, "sale");
    assert_eq!(sold.flags & FLAG_REPLAYED, 0);
    assert_ne!(sold.approval_code, 0);
    assert_eq!((sold.amount_won, sold.balance_won), (1_000, FACE_WON - 1_000));

    let found =
        client.inquiry(&[Inquiry { pin: first, op_id: sale_op }]).await.expect("inquiry").remove(0);
    assert_eq!(found.code, ResultCode::Approved.as_u16(), "inquiry: {found:?}");
    approved(&found.result, "inquiry's stored result");
    assert_eq!(found.status, OpStatus::Completed as u8);
    assert_eq!(found.msg_type, MsgType::Sale as u16);
    assert_eq!(found.result.approval_code, sold.approval_code);
    assert_eq!(found.result.balance_won, sold.balance_won);

    let retried = client.sale(&[sale(sale_op, first, 1_000)]).await.expect("retry").remove(0);
    approved(&retried, "retry");
    assert_eq!(retried.flags & FLAG_REPLAYED, FLAG_REPLAYED, "the retry ran again: {retried:?}");
    assert_eq!(
        (retried.approval_code, retried.balance_won),
        (sold.approval_code, sold.balance_won)
    );

    // One frame, both shards, answers in event order.
    let both = client
        .sale(&[sale(new_op_id(), second, 3_000), sale(new_op_id(), first, 2_000)])
        .await
        .expect("sales");
    approved(&both[0], "sale on shard 1");
    approved(&both[1], "sale on shard 0");
    assert_eq!((both[0].amount_won, both[0].balance_won), (3_000, FACE_WON - 3_000));
    assert_eq!((both[1].amount_won, both[1].balance_won), (2_000, FACE_WON - 3_000));
    let expected = vec![FACE_WON - 3_000, FACE_WON - 3_000];
    assert_eq!(balances(&client, &[first, second]).await, expected);
    drop(client);
    switch.stop();

    // The default runtime on tokio's directory: the UPGRADE each shard journaled first, then
    // issue, activate and two sales on shard 0, issue, activate and one sale on shard 1, all
    // replayed; nothing was lost or doubled.
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    assert!(
        listening_line(&switch).contains("(2 shards on glommio"),
        "{:?}",
        listening_line(&switch)
    );
    let reports = recovered(&switch);
    assert_eq!(reports.iter().map(|report| report.cards).collect::<Vec<_>>(), vec![1, 1]);
    assert_eq!(
        reports.iter().map(|report| report.replayed).collect::<Vec<_>>(),
        vec![5, 4],
        "{reports:?}"
    );
    let client = Client::connect(&switch.address).await.expect("reconnect");
    assert_eq!(balances(&client, &[second, first]).await, vec![FACE_WON - 3_000, FACE_WON - 3_000]);
    let retried =
        client.sale(&[sale(sale_op, first, 1_000)]).await.expect("retry after restart").remove(0);
    assert_eq!(
        retried.flags & FLAG_REPLAYED,
        FLAG_REPLAYED,
        "the retry ran again after a restart: {retried:?}"
    );
    assert_eq!(
        (retried.approval_code, retried.balance_won),
        (sold.approval_code, sold.balance_won)
    );
    drop(client);
    switch.stop();
}

const SNAPSHOT_EVERY: u64 = 2_000;
/// Cards per shard; every frame of the crash loop debits each card once, so a frame is one
/// group of this many records on every shard.
const CARDS_PER_SHARD: usize = 8;
const DEBIT_WON: u64 = 10;
/// Lives after the first, each with fewer records per shard than `SNAPSHOT_EVERY`.
const LIVES: usize = 8;
const FRAMES_PER_LIFE: usize = 100;
/// The first life (setup under a config that never snapshots) writes more than
/// `SNAPSHOT_EVERY` records per shard, so the next start must snapshot before serving.
const FIRST_LIFE_FRAMES: usize = 255;

/// The sequence number of the newest complete snapshot in a shard directory.
fn newest_snapshot(shard_dir: &Path) -> Option<u64> {
    std::fs::read_dir(shard_dir)
        .expect("shard directory")
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()
        })
        .max()
}

/// Polls (bounded) until the shard directory holds a complete snapshot past `after`; returns
/// its sequence number. Snapshots are written on a background thread after the reply that
/// triggered them, so the test waits for the file before killing the switch.
fn wait_for_snapshot_past(shard_dir: &Path, after: u64, why: &str) -> u64 {
    for _ in 0..2_000 {
        if let Some(seq) = newest_snapshot(shard_dir).filter(|seq| *seq > after) {
            return seq;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("no snapshot past record {after} in {} within 10 s ({why})", shard_dir.display());
}

fn shard_dir(data: &Path, shard: usize) -> PathBuf {
    data.join(format!("shard-{shard:03}"))
}

/// Debits every card once per frame, `frames` frames, each awaited and approved.
async fn debit_frames(client: &Client, pins: &[u64], frames: usize, debits: &mut [u64]) {
    for _ in 0..frames {
        let events: Vec<Sale> = pins.iter().map(|pin| sale(new_op_id(), *pin, DEBIT_WON)).collect();
        let results = client.sale(&events).await.expect("sales");
        assert_eq!(results.len(), events.len());
        for (card, result) in results.iter().enumerate() {
            approved(result, "debit");
            assert_eq!(result.flags & FLAG_REPLAYED, 0);
            debits[card] += 1;
        }
    }
}

/// A crash loop: the first life journals more than `snapshot_every_records` records per shard
/// under a config that never snapshots; then eight lives under
/// `snapshot_every_records = 2000`, each 800 acknowledged debits per shard and SIGKILL. The
/// start after the first life must snapshot at its last replayed record before any traffic
/// (its replay was past the interval); every later life whose replay plus own records reach
/// the interval must write a snapshot although it wrote fewer records than that itself. Every
/// start replays fewer than one interval plus one group (without carrying the replay over, the
/// last start would replay all 8,456 records of a shard), the replay after a life without a
/// due snapshot is exactly the previous replay plus the life's records, and at the end every
/// card's balance is its face value minus every acknowledged debit, and the first life's
/// debits still answer REPLAYED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_stays_bounded_under_a_crash_loop() {
    let dir = fresh_dir("runtime-crash-loop");
    let journal = "segment_bytes = 1048576\ncommit_bytes_max = 262144";
    let never = dir.with_extension("never.toml");
    std::fs::write(&never, format!("[journal]\n{journal}\nsnapshot_every_records = 1000000000\n"))
        .expect("config");
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!("[journal]\n{journal}\nsnapshot_every_records = {SNAPSHOT_EVERY}\n"),
    )
    .expect("config");
    let (never, config) = (never.to_str().expect("utf-8"), config.to_str().expect("utf-8"));

    // Life 0: cards, then more than one interval of debits, never snapshotted.
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", never]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let by_shard = cards_on_every_shard(&client, CARDS_PER_SHARD).await;
    // Card index -> shard; every frame below debits all cards, shard 0's first.
    let pins: Vec<u64> = by_shard.iter().flatten().copied().collect();
    let mut debits = vec![0u64; pins.len()];
    let first_ops: Vec<Sale> = pins.iter().map(|pin| sale(new_op_id(), *pin, DEBIT_WON)).collect();
    for result in client.sale(&first_ops).await.expect("first debits") {
        approved(&result, "first debit");
    }
    debits.iter_mut().for_each(|count| *count += 1);
    debit_frames(&client, &pins, FIRST_LIFE_FRAMES - 1, &mut debits).await;
    drop(client);
    switch.kill();
    // Issue and activation are one record each per card; the first start journaled each
    // shard's UPGRADE to the current engine format before anything else.
    let first_life = 1 + (2 + FIRST_LIFE_FRAMES) as u64 * CARDS_PER_SHARD as u64;
    assert!(first_life > SNAPSHOT_EVERY);
    for shard in 0..usize::from(SHARDS) {
        assert_eq!(
            newest_snapshot(&shard_dir(&dir, shard)),
            None,
            "life 0 should not have snapshotted"
        );
    }

    let life_records = (FRAMES_PER_LIFE * CARDS_PER_SHARD) as u64;
    assert!(life_records < SNAPSHOT_EVERY);
    // Per shard: records since the newest complete snapshot, as the switch should see them.
    let mut since = vec![first_life; usize::from(SHARDS)];
    let mut written = first_life;
    let mut replays = Vec::new();
    for life in 1..=LIVES + 1 {
        let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", config]);
        let reports = recovered(&switch);
        replays.push(reports.iter().map(|report| report.replayed).collect::<Vec<_>>());
        let mut snapshot_at = Vec::new();
        for (shard, report) in reports.iter().enumerate() {
            assert_eq!(report.cards, CARDS_PER_SHARD as u64, "start {life}, shard {shard}");
            if life == 1 {
                assert_eq!(
                    *report,
                    Recovered {
                        snapshot_seq: 0,
                        replayed: first_life,
                        cards: CARDS_PER_SHARD as u64
                    }
                );
            } else {
                assert!(
                    report.replayed < SNAPSHOT_EVERY + CARDS_PER_SHARD as u64,
                    "start {life}, shard {shard}: {report:?} after {written} records; replays so far {replays:?}"
                );
            }
            if life == 1 || since[shard] < SNAPSHOT_EVERY {
                assert_eq!(
                    report.replayed, since[shard],
                    "start {life}, shard {shard}: the life's records are not all replayed"
                );
            } else {
                assert!(
                    report.replayed <= since[shard] - SNAPSHOT_EVERY,
                    "start {life}, shard {shard}: {report:?}, {since:?}"
                );
            }
            let mut base = report.snapshot_seq;
            if report.replayed >= SNAPSHOT_EVERY {
                // Past the interval already: a snapshot at the last record, with no traffic.
                // (The shard takes it before serving; the 100 ms ticker would also take it,
                // so this cannot tell the two apart.)
                let seq = wait_for_snapshot_past(
                    &shard_dir(&dir, shard),
                    base,
                    "a replay past the interval",
                );
                assert_eq!(
                    seq,
                    report.snapshot_seq + report.replayed,
                    "start {life}, shard {shard}"
                );
                since[shard] = 0;
                base = seq;
            } else {
                since[shard] = report.replayed;
            }
            snapshot_at.push(base);
        }
        if life == LIVES + 1 {
            // The last start: verify instead of debiting.
            let client = Client::connect(&switch.address).await.expect("connect");
            let expected: Vec<u64> =
                debits.iter().map(|count| FACE_WON - DEBIT_WON * count).collect();
            assert_eq!(balances(&client, &pins).await, expected, "balances after the crash loop");
            for result in client.sale(&first_ops).await.expect("retries") {
                approved(&result, "retry");
                assert_eq!(
                    result.flags & FLAG_REPLAYED,
                    FLAG_REPLAYED,
                    "a first-life debit ran again: {result:?}"
                );
            }
            assert_eq!(balances(&client, &pins).await, expected, "balances after the retries");
            drop(client);
            switch.stop();
            break;
        }
        let client = Client::connect(&switch.address).await.expect("connect");
        debit_frames(&client, &pins, FRAMES_PER_LIFE, &mut debits).await;
        drop(client);
        written += life_records;
        for shard in 0..usize::from(SHARDS) {
            since[shard] += life_records;
            if since[shard] >= SNAPSHOT_EVERY {
                let why = format!("life {life}: {} records since the last snapshot", since[shard]);
                wait_for_snapshot_past(&shard_dir(&dir, shard), snapshot_at[shard], &why);
            }
        }
        switch.kill();
    }
    // Bounded: the last start replayed a fraction of what was written, and snapshots were
    // taken (the cursor moved) along the way.
    let last = replays.last().expect("replays");
    assert!(
        last.iter().all(|replayed| *replayed * 3 < written),
        "{replays:?} of {written} records per shard"
    );
    eprintln!("replayed per start and shard: {replays:?}, {written} records written per shard");
}
