//! PIN key rotation end to end: cards issued, paid with, held and called on under the first
//! key; `pinswitch keys rotate` while the switch is stopped; then, under key id 2, every old
//! card is still found by every kind of request (a sale with its password, a retry that
//! replays, an INQUIRY of an old operation, the capture of an old hold, the end of a call
//! started before, a balance inquiry, a price quote with the PIN, a wrong password counted),
//! and new cards are issued and paid with. A restart replays both keys' names. The exporter's
//! statements show which key named which card: with the PIN key exported before the rotation
//! they find the old cards and not the new ones; with the PIN keys exported after, both.

use std::path::Path;
use std::process::Command;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    Authorize, BalanceInquiry, Capture, CardActivate, CardIssue, Category, FLAG_REPLAYED, Inquiry,
    OpResult, OpStatus, PriceQuote, ResultCode, Sale, SessionEnd, SessionStart, new_op_id, pin,
};
use pinswitch_tests::{Switch, code, fresh_dir, one, run_binary, switch_binary};

const EXPORTER: &str = env!("CARGO_BIN_EXE_pinswitch-exporter");
const PASSWORD: &[u8] = b"4321";
const FACE_WON: u64 = 50_000;
const CARDS: usize = 6;

fn sale(pin: u64, amount_won: u64, password: &[u8]) -> Sale {
    Sale {
        op_id: new_op_id(),
        pin,
        password: password.to_vec(),
        amount_won,
        merchant_id: 77,
        category: Category::InternetPayment as u8,
    }
}

fn approved(result: &OpResult, what: &str) {
    assert_eq!(code(result), ResultCode::Approved, "{what}: {result:?}");
}

/// Issues and activates `CARDS` cards; their PINs.
async fn new_cards(client: &Client) -> Vec<u64> {
    let issues: Vec<CardIssue> =
        (0..CARDS).map(|_| CardIssue { op_id: new_op_id(), face_value_won: FACE_WON }).collect();
    let issued = client.card_issue(&issues).await.expect("issue");
    let pins: Vec<u64> = issued.iter().map(|issued| issued.pin).collect();
    let activations: Vec<CardActivate> = pins
        .iter()
        .map(|pin| CardActivate { op_id: new_op_id(), pin: *pin, password: PASSWORD.to_vec() })
        .collect();
    for result in client.card_activate(&activations).await.expect("activate") {
        approved(&result, "activate");
    }
    pins
}

async fn balance(client: &Client, pin: u64) -> u64 {
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await;
    assert_eq!(card.code, 0, "card {pin} found");
    card.balance_won
}

/// `pinswitch-exporter statement PIN` with the PIN keys in `pin_key`: found or not.
fn statement_found(data: &Path, pin_key: &Path, pin: u64) -> bool {
    let output = Command::new(EXPORTER)
        .args(["statement", &pin::format(pin), "--data"])
        .arg(data)
        .arg("--pin-key")
        .arg(pin_key)
        .output()
        .expect("running pinswitch-exporter statement");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return true;
    }
    assert!(text.contains("CARD_NOT_FOUND") || text.contains("no such card"), "{text}");
    false
}

fn keys_command(data: &Path, args: &[&str]) -> String {
    let switch = switch_binary(EXPORTER);
    let mut all = vec!["keys"];
    all.extend(args);
    all.extend(["--data", data.to_str().expect("utf-8")]);
    let (ok, text) = run_binary(switch.to_str().expect("utf-8"), &all);
    assert!(ok, "pinswitch keys {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_pin_key_names_new_cards_and_the_old_key_still_finds_the_old_ones() {
    let root = fresh_dir("rotation");
    let data = root.join("data");
    let server = switch_binary(EXPORTER);

    // Key id 1: cards, a sale each, a hold and a call on the first two.
    let mut switch = Switch::start(&server, &data, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let old = new_cards(&client).await;
    let first_sales: Vec<Sale> = old.iter().map(|pin| sale(*pin, 1_000, PASSWORD)).collect();
    let first_results = client.sale(&first_sales).await.expect("sales");
    for result in &first_results {
        approved(result, "a sale under key 1");
    }
    let hold = Authorize {
        op_id: new_op_id(),
        pin: old[0],
        password: PASSWORD.to_vec(),
        amount_won: 5_000,
        merchant_id: 77,
        category: Category::InternetPayment as u8,
        hold_ttl_s: 0,
    };
    approved(&one(client.authorize(std::slice::from_ref(&hold)).await).await, "the hold");
    let call = SessionStart {
        op_id: new_op_id(),
        pin: old[1],
        session_id: 0x0CA1_1001,
        category: Category::TelephoneCall as u8,
        destination: b"01012345678".to_vec(),
        requested_s: 60,
        owner_id: 1,
        password: Vec::new(),
    };
    let started = one(client.session_start(std::slice::from_ref(&call)).await).await;
    assert_eq!(started.result.code, 0, "{started:?}");
    drop(client);
    switch.stop();
    let key_1 = root.join("pin-key-1");
    keys_command(&data, &["export-pin", "--out", key_1.to_str().expect("utf-8")]);

    // The rotation, while the switch is stopped.
    let rotated = keys_command(&data, &["rotate"]);
    assert!(rotated.contains("key id 2"), "{rotated}");
    let file = std::fs::read(data.join("keys.bin")).expect("the key file");
    assert_eq!(&file[..8], b"PSKEYS03");

    for life in 0..2 {
        let mut switch = Switch::start(&server, &data, &[]);
        let keys_line = switch
            .startup_lines()
            .iter()
            .find(|line| line.starts_with("pinswitch: keys "))
            .expect("a keys line")
            .clone();
        assert!(keys_line.contains("(key id 2; 1 older PIN keys"), "{keys_line}");
        let client = Client::connect(&switch.address).await.expect("connect");
        if life == 0 {
            // Every kind of request finds an old card.
            for (pin, first) in old.iter().zip(&first_results) {
                assert_eq!(balance(&client, *pin).await, first.balance_won);
            }
            let again = one(client.sale(&[sale(old[2], 2_000, PASSWORD)]).await).await;
            approved(&again, "a sale on an old card under key 2");
            let retry = client.sale(&first_sales).await.expect("retries");
            for (retry, first) in retry.iter().zip(&first_results) {
                assert_eq!(retry.flags & FLAG_REPLAYED, FLAG_REPLAYED, "{retry:?}");
                assert_eq!(retry.approval_code, first.approval_code);
            }
            let inquiry = Inquiry { pin: old[3], op_id: first_sales[3].op_id };
            let found = one(client.inquiry(&[inquiry]).await).await;
            assert_eq!(found.status, OpStatus::Completed as u8, "{found:?}");
            assert_eq!(found.result.approval_code, first_results[3].approval_code);
            let capture = Capture {
                op_id: new_op_id(),
                pin: old[0],
                hold_id: hold.op_id,
                amount_won: 5_000,
                final_capture: true,
            };
            approved(&one(client.capture(&[capture]).await).await, "the old hold captured");
            let end = SessionEnd {
                op_id: new_op_id(),
                pin: old[1],
                session_id: call.session_id,
                seq: 1,
                used_total_s: 30,
            };
            let ended = one(client.session_end(&[end]).await).await;
            assert_eq!(ended.result.code, 0, "the old call ended: {ended:?}");
            let quote = PriceQuote {
                pin: old[4],
                category: Category::TelephoneCall as u8,
                destination: b"01012345678".to_vec(),
                duration_s: 60,
                units: 0,
            };
            let priced = one(client.price_quote(&[quote]).await).await;
            assert_eq!(priced.available_won, first_results[4].balance_won, "{priced:?}");
            let wrong = one(client.sale(&[sale(old[5], 100, b"9999")]).await).await;
            assert_eq!(code(&wrong), ResultCode::PasswordInvalid);
            let card = one(client.balance_inquiry(&[BalanceInquiry { pin: old[5] }]).await).await;
            assert_eq!(card.password_tries_left, 4, "the wrong try counted on the old card");
        }
        let new = new_cards(&client).await;
        for pin in &new {
            approved(&one(client.sale(&[sale(*pin, 3_000, PASSWORD)]).await).await, "new card");
            assert_eq!(balance(&client, *pin).await, FACE_WON - 3_000);
        }
        // After the restart, both keys' cards are where they were.
        assert_eq!(balance(&client, old[0]).await, FACE_WON - 1_000 - 5_000);
        assert_eq!(balance(&client, old[2]).await, FACE_WON - 1_000 - 2_000);
        drop(client);
        switch.stop();

        // The exporter: the old PIN key finds the old cards only; the exported keys, all.
        let out = pinswitch_tests::run_binary(EXPORTER, &["run", "--data", data.to_str().unwrap()]);
        assert!(out.0, "{}", out.1);
        let keys_2 = root.join(format!("pin-keys-2-{life}"));
        keys_command(&data, &["export-pin", "--out", keys_2.to_str().expect("utf-8")]);
        for pin in &old {
            assert!(statement_found(&data, &key_1, *pin), "an old card under key 1");
            assert!(statement_found(&data, &keys_2, *pin), "an old card under keys 1 and 2");
        }
        for pin in &new {
            assert!(!statement_found(&data, &key_1, *pin), "a new card is not key 1's");
            assert!(statement_found(&data, &keys_2, *pin), "a new card under keys 1 and 2");
        }
    }
}
