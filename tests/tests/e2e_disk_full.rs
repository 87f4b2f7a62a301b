//! A full disk end to end: the real binary runs on a small tmpfs that a filler file then fills.
//! The journal has the next segment's space taken ahead (the spare), so the switch goes on
//! through one more segment, then answers STORAGE_FULL to every write without executing it,
//! keeps answering BALANCE_INQUIRY and INQUIRY, never aborts (snapshots fail and are tried
//! again), restarts on the full disk, and resumes writing by itself once space returns, with
//! every acknowledged debit kept across SIGKILLs and the refused ones executed exactly once
//! when retried with their op ids.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    BalanceInquiry, Category, FLAG_REPLAYED, Inquiry, OpStatus, ResultCode, Sale, new_op_id,
};
use pinswitch_tests::{
    Switch, config_beside, fresh_dir, http_get, issue_active_cards, metric_sum, run_binary,
    test_sale,
};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const CARDS: usize = 16;
const FACE_WON: u64 = 100_000;
const DEBIT_WON: u64 = 10;
/// Small enough that a few thousand debits fill a segment; the tmpfs holds the two shards'
/// segments, spares and snapshots with room to spare until the filler takes the rest.
const SEGMENT_BYTES: u64 = 128 << 10;
const TMPFS_BYTES: u64 = 8 << 20;
/// Debits sent before the test gives up on seeing STORAGE_FULL (two segments per shard hold
/// far fewer).
const DEBITS_MAX: usize = 60_000;

/// A tmpfs mounted for the test, unmounted when dropped (before its directory is removed).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} needs root (CAP_SYS_ADMIN)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a file until the filesystem says ENOSPC; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5Au8; 4096];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => panic!("filling the tmpfs: {error}"),
        }
    }
    let _ = file.sync_all();
    path
}

fn sale(op_id: u128, pin: u64) -> Sale {
    test_sale(op_id, pin, DEBIT_WON, Category::InternetPayment)
}

/// The test's own ledger: debits acknowledged per card, and the op ids refused STORAGE_FULL.
#[derive(Default)]
struct Ledger {
    approved: HashMap<usize, u64>,
    refused: Vec<(u128, usize)>,
}

impl Ledger {
    /// One SALE per card in one frame; returns how many were refused STORAGE_FULL.
    async fn round(&mut self, client: &Client, pins: &[u64]) -> usize {
        let sent: Vec<(u128, usize)> = (0..pins.len()).map(|card| (new_op_id(), card)).collect();
        let sales: Vec<Sale> = sent.iter().map(|(op_id, card)| sale(*op_id, pins[*card])).collect();
        let results = client.sale(&sales).await.expect("sale");
        let mut refused = 0;
        for ((op_id, card), result) in sent.into_iter().zip(results) {
            if result.code == ResultCode::Approved.as_u16() {
                *self.approved.entry(card).or_default() += 1;
            } else {
                assert_eq!(result.code, ResultCode::StorageFull.as_u16(), "card {card}");
                self.refused.push((op_id, card));
                refused += 1;
            }
        }
        refused
    }

    /// Every card's balance is the face value less its acknowledged debits.
    async fn check_balances(&self, client: &Client, pins: &[u64], when: &str) {
        let inquiries: Vec<BalanceInquiry> =
            pins.iter().map(|pin| BalanceInquiry { pin: *pin }).collect();
        let views = client.balance_inquiry(&inquiries).await.expect("balance inquiry");
        for (card, view) in views.iter().enumerate() {
            assert_eq!(view.code, ResultCode::Approved.as_u16(), "card {card} {when}");
            let debits = self.approved.get(&card).copied().unwrap_or(0);
            assert_eq!(view.balance_won, FACE_WON - DEBIT_WON * debits, "card {card} {when}");
        }
    }

    /// INQUIRY: a refused op id was never recorded.
    async fn check_refused_unknown(&self, client: &Client, pins: &[u64]) {
        let queries: Vec<Inquiry> = self
            .refused
            .iter()
            .map(|(op_id, card)| Inquiry { pin: pins[*card], op_id: *op_id })
            .collect();
        for result in client.inquiry(&queries).await.expect("inquiry") {
            assert_eq!(result.status, OpStatus::Unknown as u8, "a refused op id was recorded");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_resumes_by_itself() {
    let dir = fresh_dir("disk-full");
    let config = config_beside(
        &dir,
        &format!(
            "[server]\nhttp_listen = \"127.0.0.1:0\"\n\
             [journal]\nsegment_bytes = {SEGMENT_BYTES}\ncommit_bytes_max = 32768\n\
             snapshot_every_records = 500\nsnapshot_retry_ms = 0\nstorage_retry_ms = 0\n"
        ),
    );
    let args = ["--config", config.as_str()];
    let mount = dir.join("mnt");
    let tmpfs = Tmpfs::mount(&mount, TMPFS_BYTES);
    let data = mount.join("data");
    let mut switch = Switch::start(Path::new(BIN), &data, &args);
    let client = Client::connect(&switch.address).await.expect("connect");
    let pins = issue_active_cards(&client, CARDS, FACE_WON).await;

    // The disk fills. Debits go on into the segment each shard has and the spare it took, and
    // are refused once neither has room: until every card's shard refuses.
    let filler = fill(&mount);
    let mut ledger = Ledger::default();
    let mut sent = 0;
    while ledger.round(&client, &pins).await < CARDS {
        sent += CARDS;
        assert!(sent < DEBITS_MAX, "{sent} debits on a full disk and no STORAGE_FULL");
        assert!(switch.is_running(), "the switch stopped on a full disk");
    }
    assert!(!ledger.approved.is_empty(), "the spare segment should have taken debits");
    // Writes are refused, reads are answered, and the switch stays up through further tries.
    for _ in 0..3 {
        assert_eq!(ledger.round(&client, &pins).await, CARDS);
    }
    ledger.check_balances(&client, &pins, "on the full disk").await;
    ledger.check_refused_unknown(&client, &pins).await;
    assert!(switch.is_running());
    // The operators see it: not ready, both shards full, every refusal counted.
    let http = switch.http_address();
    let (status, body) = http_get(&http, "/health/ready");
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = http_get(&http, "/metrics");
    assert_eq!(metric_sum(&metrics, "pinswitch_storage_state", &[]), 4, "both shards full");
    let refused = ledger.refused.len() as u64;
    let counted = ["type=\"SALE\"", "code=\"STORAGE_FULL\""];
    assert_eq!(metric_sum(&metrics, "pinswitch_events_total", &counted), refused);
    assert_eq!(metric_sum(&metrics, "pinswitch_storage_refused_total", &[]), refused);
    assert!(metric_sum(&metrics, "pinswitch_snapshots_failed", &[]) > 0, "{metrics}");
    let (ready, said) = run_binary(BIN, &["status", "--http", &http]);
    assert!(!ready && said.contains("FULL (writes refused)"), "{said}");

    // A crash and a restart on the full disk: recovery needs no space, the reads are answered
    // and writes are still refused.
    switch.kill();
    let mut switch = Switch::start(Path::new(BIN), &data, &args);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    ledger.check_balances(&client, &pins, "after a restart on the full disk").await;
    assert_eq!(ledger.round(&client, &pins).await, CARDS, "writes refused after the restart");
    ledger.check_refused_unknown(&client, &pins).await;

    // Space returns: the first write after it takes the next segment's space and runs. Every
    // refused debit, retried with its op id, executes once; a second retry replays it.
    std::fs::remove_file(&filler).expect("removing the filler");
    let refused = std::mem::take(&mut ledger.refused);
    for chunk in refused.chunks(64) {
        let retries: Vec<Sale> =
            chunk.iter().map(|(op_id, card)| sale(*op_id, pins[*card])).collect();
        for (round, flags) in [(1, 0), (2, FLAG_REPLAYED)] {
            let results = client.sale(&retries).await.expect("retry");
            for ((_, card), result) in chunk.iter().zip(&results) {
                assert_eq!(result.code, ResultCode::Approved.as_u16(), "retry {round} card {card}");
                assert_eq!(result.flags & FLAG_REPLAYED, flags, "retry {round} card {card}");
                if round == 1 {
                    *ledger.approved.entry(*card).or_default() += 1;
                }
            }
        }
    }
    // And new debits run across the next segment roll.
    let written = ledger.approved.values().sum::<u64>();
    while ledger.approved.values().sum::<u64>() < written * 2 {
        assert_eq!(ledger.round(&client, &pins).await, 0, "writes after space returned");
    }
    ledger.check_balances(&client, &pins, "after space returned").await;
    assert!(switch.is_running());
    let http = switch.http_address();
    assert_eq!(http_get(&http, "/health/ready").0, 200, "ready once space returned");
    let (ready, said) = run_binary(BIN, &["status", "--http", &http]);
    assert!(ready && said.starts_with("ready"), "{said}");

    // Nothing acknowledged is lost across a last SIGKILL.
    switch.kill();
    let switch = Switch::start(Path::new(BIN), &data, &args);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    ledger.check_balances(&client, &pins, "after the last restart").await;
    drop(client);
    drop(switch);
    drop(tmpfs);
}
