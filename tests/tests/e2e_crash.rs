//! Crash safety end to end: gateways stream durable debits at the real binary, which is killed
//! with SIGKILL mid-stream. After a restart on the same data directory, every acknowledged debit
//! must be there, nothing may be applied twice, and a retry of every debit that was sent (with
//! its original op id) must either replay or execute once, so that each card ends exactly at
//! its opening balance minus every debit sent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    BalanceInquiry, Category, FLAG_REPLAYED, Inquiry, OpStatus, ResultCode, Sale, new_op_id,
};
use pinswitch_tests::{Rng, Switch, fresh_dir, issue_active_cards, test_sale};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const CARDS: usize = 64;
const FACE_WON: u64 = 100_000;
const DEBIT_WON: u64 = 100;
const SENDERS: usize = 8;
const ACKED_BEFORE_KILL: usize = 3_000;

fn sale(op_id: u128, pin: u64) -> Sale {
    test_sale(op_id, pin, DEBIT_WON, Category::TelephoneCall)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_loses_no_acknowledged_debit() {
    let dir = fresh_dir("crash");
    // Small segments and frequent snapshots, so the kill lands among segment rolls and
    // background snapshots, and recovery goes through snapshot + replay.
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        "[journal]\nsegment_bytes = 262144\ncommit_bytes_max = 65536\nsnapshot_every_records = 400\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let pins = issue_active_cards(&client, CARDS, FACE_WON).await;

    // (op id, card index) of every debit sent, and the op ids the switch acknowledged.
    let sent: Arc<Mutex<Vec<(u128, usize)>>> = Arc::default();
    let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (client, sent, acked, pins) =
            (client.clone(), sent.clone(), acked.clone(), pins.clone());
        senders.push(tokio::spawn(async move {
            let mut rng = Rng(sender as u64 + 1);
            loop {
                let card = rng.below(CARDS as u64) as usize;
                let op_id = new_op_id();
                sent.lock().expect("lock").push((op_id, card));
                match client.sale(&[sale(op_id, pins[card])]).await {
                    Ok(results) => {
                        assert_eq!(results[0].code, ResultCode::Approved.as_u16());
                        acked.lock().expect("lock").push(op_id);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill as soon as enough debits were acknowledged and a snapshot is on disk (the snapshot
    // threads run at idle priority, so on a busy machine the first one may take longer than
    // the debits do), while the senders keep sending.
    let snapshots = || {
        std::fs::read_dir(&dir)
            .expect("data dir")
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("shard-"))
            .flat_map(|shard| std::fs::read_dir(shard.path()).expect("shard dir").flatten())
            .filter(|file| file.file_name().to_string_lossy().ends_with(".snap"))
            .count()
    };
    loop {
        if acked.lock().expect("lock").len() >= ACKED_BEFORE_KILL && snapshots() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    switch.kill();
    for sender in senders {
        sender.await.expect("sender task");
    }
    drop(client);
    assert!(snapshots() > 0, "the run should have written snapshots");
    let switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let sent = sent.lock().expect("lock").clone();
    let acked: std::collections::HashSet<u128> =
        acked.lock().expect("lock").iter().copied().collect();
    assert!(acked.len() >= ACKED_BEFORE_KILL);

    // Every acknowledged debit is present; count what was executed per card.
    let mut executed_per_card: HashMap<usize, u64> = HashMap::new();
    for chunk in sent.chunks(512) {
        let queries: Vec<Inquiry> =
            chunk.iter().map(|(op_id, card)| Inquiry { pin: pins[*card], op_id: *op_id }).collect();
        let results = client.inquiry(&queries).await.expect("inquiry");
        for ((op_id, card), result) in chunk.iter().zip(results) {
            let completed = result.status == OpStatus::Completed as u8;
            if acked.contains(op_id) {
                assert!(completed, "acknowledged debit {op_id:x} lost");
            }
            if completed {
                assert_eq!(result.result.code, 0);
                *executed_per_card.entry(*card).or_default() += 1;
            }
        }
    }
    for (card, pin) in pins.iter().enumerate() {
        let view = client.balance_inquiry(&[BalanceInquiry { pin: *pin }]).await.expect("balance");
        let executed = executed_per_card.get(&card).copied().unwrap_or(0);
        assert_eq!(
            view[0].balance_won,
            FACE_WON - DEBIT_WON * executed,
            "card {card} after recovery"
        );
    }

    // Retrying every debit sent: acknowledged ones replay, the rest execute exactly once.
    for chunk in sent.chunks(512) {
        let retries: Vec<Sale> =
            chunk.iter().map(|(op_id, card)| sale(*op_id, pins[*card])).collect();
        let results = client.sale(&retries).await.expect("retry");
        for ((op_id, _), result) in chunk.iter().zip(results) {
            assert_eq!(result.code, 0);
            if acked.contains(op_id) {
                assert_eq!(
                    result.flags & FLAG_REPLAYED,
                    FLAG_REPLAYED,
                    "acknowledged {op_id:x} ran again"
                );
            }
        }
    }
    let mut sent_per_card: HashMap<usize, u64> = HashMap::new();
    for (_, card) in &sent {
        *sent_per_card.entry(*card).or_default() += 1;
    }
    for (card, pin) in pins.iter().enumerate() {
        let view = client.balance_inquiry(&[BalanceInquiry { pin: *pin }]).await.expect("balance");
        let sent = sent_per_card.get(&card).copied().unwrap_or(0);
        assert_eq!(view[0].balance_won, FACE_WON - DEBIT_WON * sent, "card {card} after retries");
    }
}
