//! The backup and restore runbook's scripts end to end (ops/backup.sh, ops/restore.sh): a
//! backup taken while the switch runs, after the exporter's run, without the key file; more
//! payments after it; then a restore into a fresh directory with the key file given apart, a
//! switch started on it, and every card compared with its balance when the backup was taken;
//! the exporter's state restored with it goes on from its cursor.

use std::path::{Path, PathBuf};
use std::process::Command;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{BalanceInquiry, Category, ResultCode, new_op_id};
use pinswitch_tests::{Switch, fresh_dir, issue_active_cards, switch_binary, test_sale};

const EXPORTER: &str = env!("CARGO_BIN_EXE_pinswitch-exporter");
const CARDS: usize = 8;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops").join(name)
}

/// Runs `bash ops/NAME args`; returns whether it succeeded and what it printed.
fn run_script(name: &str, args: &[&Path]) -> (bool, String) {
    let output = Command::new("bash").arg(script(name)).args(args).output().expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn exporter(args: &[&str], data: &Path) -> (bool, String) {
    let output = Command::new(EXPORTER)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("running pinswitch-exporter");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn pay(client: &Client, pins: &[u64], rounds: u64) {
    for round in 0..rounds {
        let sales: Vec<_> = pins
            .iter()
            .enumerate()
            .map(|(card, pin)| {
                let amount_won = 100 + 10 * (card as u64) + round;
                test_sale(new_op_id(), *pin, amount_won, Category::InternetPayment)
            })
            .collect();
        for result in client.sale(&sales).await.expect("sale") {
            assert_eq!(result.code, ResultCode::Approved.as_u16());
        }
    }
}

async fn balances(client: &Client, pins: &[u64]) -> Vec<u64> {
    let inquiries: Vec<BalanceInquiry> =
        pins.iter().map(|pin| BalanceInquiry { pin: *pin }).collect();
    let views = client.balance_inquiry(&inquiries).await.expect("balance inquiry");
    views.iter().map(|view| view.balance_won).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_fresh_directory_has_every_card() {
    let dir = fresh_dir("backup");
    let (data, backup, restored) = (dir.join("data"), dir.join("backup"), dir.join("restored"));
    let switch_bin = switch_binary(EXPORTER);
    let mut switch = Switch::start(&switch_bin, &data, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let pins = issue_active_cards(&client, CARDS, 50_000).await;
    pay(&client, &pins, 20).await;
    let (ran, said) = exporter(&["run"], &data);
    assert!(ran, "{said}");

    // The backup, with the switch running (idle: every answered payment is in it).
    let at_backup = balances(&client, &pins).await;
    let (ok, said) = run_script("backup.sh", &[&data, &backup]);
    assert!(ok && said.contains("2 shards") && said.contains("key file is not in it"), "{said}");
    assert!(!backup.join("keys.bin").exists(), "the key file goes apart");
    assert!(backup.join("export/cursors.txt").exists(), "the exporter's state is in it");
    let (refused, said) = run_script("backup.sh", &[&data, &backup]);
    assert!(!refused && said.contains("not empty"), "{said}");
    pay(&client, &pins, 5).await;
    assert_ne!(balances(&client, &pins).await, at_backup);
    switch.kill();

    // Restore: refused without the key file, then done with it given apart.
    let (refused, said) = run_script("restore.sh", &[&backup, &restored]);
    assert!(!refused && said.contains("no key file"), "{said}");
    let keys = data.join("keys.bin");
    let (ok, said) = run_script("restore.sh", &[&backup, &restored, &keys]);
    assert!(ok, "{said}");
    let switch = Switch::start(&switch_bin, &restored, &[]);
    let client = Client::connect(&switch.address).await.expect("connect to the restored switch");
    assert_eq!(balances(&client, &pins).await, at_backup, "every card as at the backup");
    pay(&client, &pins, 1).await;
    let (ran, said) = exporter(&["run"], &restored);
    assert!(ran, "the restored exporter state goes on: {said}");
    let (ran, status) = exporter(&["status"], &restored);
    assert!(ran, "{status}");
}
