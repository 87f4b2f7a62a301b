//! Journal retention end to end: a switch with small segments and `retention = "archive"` keeps
//! every segment until the settlement exporter has checkpointed (its `cursors.txt`), then, at
//! its next snapshots, moves the segments both the exporter and the older kept snapshot have
//! passed into the archive directory. Recovery after SIGKILL starts from the segments left and
//! restores every balance, and the exporter goes on from its cursor.

use std::path::{Path, PathBuf};
use std::process::Command;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{BalanceInquiry, Category, ResultCode, new_op_id};
use pinswitch_tests::{Switch, fresh_dir, issue_active_cards, switch_binary, test_sale};

const EXPORTER: &str = env!("CARGO_BIN_EXE_pinswitch-exporter");
const CARDS: usize = 16;
const FACE_WON: u64 = 100_000;
const SALE_WON: u64 = 10;
/// Rounds of one SALE per card sent before the test gives up on seeing a segment retired.
const ROUNDS_MAX: usize = 2_000;

fn segments(shard: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(shard)
        .expect("shard dir")
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            pinswitch_journal::format::parse_segment_file_name(&name)
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn export(data: &Path) {
    let output = Command::new(EXPORTER)
        .args(["run", "--data"])
        .arg(data)
        .output()
        .expect("running pinswitch-exporter");
    assert!(
        output.status.success(),
        "pinswitch-exporter run failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One SALE per card; every one approved.
async fn round(client: &Client, pins: &[u64]) {
    let sales: Vec<_> = pins
        .iter()
        .map(|pin| test_sale(new_op_id(), *pin, SALE_WON, Category::InternetPayment))
        .collect();
    for result in client.sale(&sales).await.expect("sale") {
        assert_eq!(result.code, ResultCode::Approved.as_u16());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_the_exporter_and_the_older_snapshot_passed_are_archived() {
    let dir = fresh_dir("retention");
    let archive = dir.join("archive");
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\nsegment_bytes = 32768\ncommit_bytes_max = 8192\n\
             snapshot_every_records = 200\nretention = \"archive\"\narchive_dir = {:?}\n",
            archive.to_str().expect("utf-8 path")
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let switch_bin = switch_binary(EXPORTER);
    let data = dir.join("data");
    let args = ["--config", config.as_str()];
    let mut switch = Switch::start(&switch_bin, &data, &args);
    let client = Client::connect(&switch.address).await.expect("connect");
    let pins = issue_active_cards(&client, CARDS, FACE_WON).await;
    let shard_dirs: Vec<PathBuf> =
        (0..2).map(|shard| data.join(format!("shard-{shard:03}"))).collect();

    // Without the exporter's cursor nothing goes, however many snapshots are taken.
    let mut sent = 0u64;
    while shard_dirs.iter().any(|shard| segments(shard).len() < 4) {
        round(&client, &pins).await;
        sent += 1;
        assert!((sent as usize) < ROUNDS_MAX, "the segments do not roll");
    }
    for shard in &shard_dirs {
        assert_eq!(segments(shard)[0], 1, "nothing retired before the exporter ran");
    }
    assert!(!archive.exists());

    // The exporter checkpoints; the next snapshots retire what both it and the older snapshot
    // passed.
    let before: Vec<Vec<u64>> = shard_dirs.iter().map(|shard| segments(shard)).collect();
    export(&data);
    let cursors = std::fs::read_to_string(data.join("export/cursors.txt")).expect("cursors.txt");
    assert!(cursors.contains("shard-000 ") && cursors.contains("shard-001 "), "{cursors}");
    while shard_dirs.iter().any(|shard| segments(shard)[0] == 1) {
        round(&client, &pins).await;
        sent += 1;
        assert!((sent as usize) < ROUNDS_MAX, "no segment was retired");
    }
    // Checked once the switch is gone: a pass copies, then deletes, and may be under way. A
    // segment is never lost: each one is left in the shard or archived (both, when a kill
    // fell between the copy and the delete; the next pass deletes it).
    switch.kill();
    for (shard_id, shard) in shard_dirs.iter().enumerate() {
        let archived = segments(&archive.join(format!("shard-{shard_id:03}")));
        let left = segments(shard);
        assert_eq!(archived.first(), Some(&1), "shard {shard_id}: the archive starts at 1");
        assert!(left[0] > 1, "shard {shard_id}: retired segments left the shard");
        for seq in before[shard_id].iter().filter(|seq| **seq < left[0]) {
            assert!(archived.contains(seq), "shard {shard_id}: segment {seq} lost");
        }
    }

    // Recovery starts from what is left, and every balance is exact; the exporter goes on.
    let switch = Switch::start(&switch_bin, &data, &args);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let inquiries: Vec<BalanceInquiry> =
        pins.iter().map(|pin| BalanceInquiry { pin: *pin }).collect();
    for view in client.balance_inquiry(&inquiries).await.expect("balance") {
        assert_eq!(view.balance_won, FACE_WON - SALE_WON * sent);
    }
    round(&client, &pins).await;
    export(&data);
}
