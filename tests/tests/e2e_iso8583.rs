//! The ISO 8583 front end (issue 15), end to end: an acquirer host written with pyiso8583 from
//! PyPI (tests/iso8583/acquirer.py, its own field specifications, PIN blocks under a triple-DES
//! zone PIN key made with pycryptodome) pays with cards over `[iso8583] listen`: echo, sale, its
//! retransmission (the stored answer, the same approval code), authorization and completion,
//! declines (funds, PIN, unknown card, currency), a reversal, a reversal that overtakes its
//! sale, a refund, a balance inquiry, sign-off and sign-on; the money is then read back over
//! the native protocol. Malformed messages get a format error (or a close) on a connection that
//! goes on serving; the binary-bitmap encoding serves the same flows.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::*;
use pinswitch_tests::{Switch, code, fresh_dir, one};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const ZONE_PIN_KEY: &str = "0123456789ABCDEFFEDCBA9876543210";
const MERCHANT: u64 = 1001;
const OTHER_MERCHANT: u64 = 2002;
const FACE_VALUE_WON: u64 = 10_000;

/// A switch with an ISO 8583 listener in `encoding` and `extra` configuration lines; returns it
/// and the listener's address.
fn start(dir: &Path, encoding: &str, extra: &[String]) -> (Switch, String) {
    let key_file = dir.join("zpk.hex");
    std::fs::write(&key_file, ZONE_PIN_KEY).expect("writing the zone PIN key");
    let mut config = extra.to_vec();
    config.extend([
        "[iso8583]".to_string(),
        "listen = \"127.0.0.1:0\"".to_string(),
        format!("encoding = {encoding:?}"),
        format!("zone_pin_key_file = {:?}", key_file.to_string_lossy()),
    ]);
    let switch = Switch::start_with_config(Path::new(BIN), dir, &config, &[]);
    let address = switch
        .startup_lines()
        .iter()
        .find_map(|line| line.split("ISO 8583 on ").nth(1))
        .map(|rest| rest.trim().to_string())
        .expect("an \"ISO 8583 on\" line");
    (switch, address)
}

/// Two active cards (password 1234 and 567890) of `FACE_VALUE_WON` each.
async fn cards(client: &Client) -> Vec<(u64, &'static str)> {
    let issued = client
        .card_issue(&[
            CardIssue { op_id: new_op_id(), face_value_won: FACE_VALUE_WON },
            CardIssue { op_id: new_op_id(), face_value_won: FACE_VALUE_WON },
        ])
        .await
        .expect("CARD_ISSUE");
    let cards: Vec<(u64, &str)> =
        issued.iter().map(|result| result.pin).zip(["1234", "567890"]).collect();
    for (pin, password) in &cards {
        let activate =
            CardActivate { op_id: new_op_id(), pin: *pin, password: password.as_bytes().to_vec() };
        assert_eq!(code(&one(client.card_activate(&[activate]).await).await), ResultCode::Approved);
    }
    cards
}

/// Runs the acquirer script; its answers by step name (each a map of element → value).
/// `tls`: the certificates' directory and the identity to connect as, for mutual TLS.
fn acquirer(
    port: &str,
    encoding: &str,
    cards: &[(u64, &str)],
    flows: &[&str],
    tls: Option<(&Path, &str)>,
) -> HashMap<String, HashMap<String, String>> {
    let unknown_pan = pin::with_check_digit(123_456_789_012_345);
    let cards_json: Vec<String> = cards
        .iter()
        .map(|(pin, password)| format!("{{\"pan\": \"{pin:016}\", \"password\": \"{password}\"}}"))
        .collect();
    let flows_json: Vec<String> = flows.iter().map(|flow| format!("\"{flow}\"")).collect();
    let tls_json = tls
        .map(|(certs, name)| {
            let file = |file: String| certs.join(file).to_string_lossy().to_string();
            format!(
                ", \"tls\": {{\"ca\": {:?}, \"cert\": {:?}, \"key\": {:?}}}",
                file("ca.pem".into()),
                file(format!("{name}.pem")),
                file(format!("{name}.key"))
            )
        })
        .unwrap_or_default();
    let config = format!(
        "{{\"port\": {port}, \"encoding\": \"{encoding}\", \"zpk\": \"{ZONE_PIN_KEY}\", \
         \"merchant\": \"{MERCHANT}\", \"other_merchant\": \"{OTHER_MERCHANT}\", \
         \"cards\": [{}], \"unknown_pan\": \"{unknown_pan}\", \"flows\": [{}]{tls_json}}}",
        cards_json.join(", "),
        flows_json.join(", ")
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/iso8583/acquirer.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&config)
        .output()
        .expect("python3 runs (pyiso8583 and pycryptodome from PyPI: .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "the acquirer failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let fields: HashMap<String, String> = line
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            (fields["step"].clone(), fields)
        })
        .collect()
}

#[track_caller]
fn answered(answers: &HashMap<String, HashMap<String, String>>, step: &str) -> (String, String) {
    let answer = answers.get(step).unwrap_or_else(|| panic!("no answer to {step}: {answers:?}"));
    (answer["mti"].clone(), answer["39"].clone())
}

/// DE 54's available balance (the first of its two amounts).
fn available_won(answer: &HashMap<String, String>) -> u64 {
    let amounts = &answer["54"];
    assert_eq!(&amounts[..8], "0002410C", "{amounts}");
    amounts[8..20].parse().expect("twelve digits")
}

async fn balance_won(client: &Client, pin: u64) -> u64 {
    one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await.balance_won
}

/// A switch whose ISO 8583 listener (in `encoding`) the acquirer has run its flows against.
struct Paid {
    switch: Switch,
    address: String,
    admin: Client,
    cards: Vec<(u64, &'static str)>,
    answers: HashMap<String, HashMap<String, String>>,
}

async fn pay(dir: &Path, encoding: &str) -> Paid {
    let (switch, address) = start(dir, encoding, &[]);
    let admin = Client::connect(&switch.address).await.expect("connect");
    let cards = cards(&admin).await;
    let port = address.rsplit(':').next().expect("a port");
    let answers = acquirer(port, encoding, &cards, &["echo", "pay"], None);
    Paid { switch, address, admin, cards, answers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquirer_pays_with_cards_over_iso8583() {
    let dir = fresh_dir("e2e-iso8583");
    let Paid { mut switch, address, admin, cards, answers } = pay(&dir, "ascii").await;
    let step = |name: &str| answered(&answers, name);
    assert_eq!(step("echo"), ("0810".into(), "00".into()));
    assert_eq!(step("sale"), ("0210".into(), "00".into()));
    let approval = &answers["sale"]["38"];
    assert!(approval.len() == 6 && approval.bytes().all(|b| b.is_ascii_digit()), "{approval}");
    assert_eq!(available_won(&answers["sale"]), FACE_VALUE_WON - 1000);
    // The retransmission is the same operation: its stored answer, not a second debit.
    assert_eq!(step("repeat"), ("0210".into(), "00".into()));
    assert_eq!(&answers["repeat"]["38"], approval);
    assert_eq!(available_won(&answers["repeat"]), FACE_VALUE_WON - 1000);
    assert_eq!(step("auth"), ("0110".into(), "00".into()));
    assert_eq!(available_won(&answers["auth"]), FACE_VALUE_WON - 1000 - 3000);
    assert_eq!(step("completion"), ("0230".into(), "00".into()));
    assert_eq!(step("insufficient"), ("0210".into(), "51".into()));
    assert_eq!(step("wrong_pin"), ("0210".into(), "55".into()));
    assert_eq!(step("reversal"), ("0410".into(), "00".into()));
    assert_eq!(step("balance"), ("0210".into(), "00".into()));
    // 10,000 - 1,000 (sale, reversed) - 2,500 (the completion; the hold's rest released).
    assert_eq!(available_won(&answers["balance"]), 7_500);
    assert_eq!(step("unknown_card"), ("0210".into(), "14".into()));
    assert_eq!(step("currency"), ("0210".into(), "12".into()));
    assert_eq!(step("early_reversal"), ("0410".into(), "00".into()));
    assert_eq!(step("late_sale"), ("0210".into(), "12".into()), "reversed before it arrived");
    assert_eq!(step("sale_b"), ("0210".into(), "00".into()));
    assert_eq!(step("refund"), ("0210".into(), "00".into()));
    assert_eq!(step("sign_off"), ("0810".into(), "00".into()));
    assert_eq!(step("signed_off_sale"), ("0210".into(), "91".into()));
    assert_eq!(step("sign_on"), ("0810".into(), "00".into()));
    assert_eq!(step("signed_on_sale"), ("0210".into(), "00".into()));
    // The engine holds what the acquirer was told, read over the native protocol.
    assert_eq!(balance_won(&admin, cards[0].0).await, 7_500);
    assert_eq!(balance_won(&admin, cards[1].0).await, FACE_VALUE_WON - 2000 + 500 - 100);

    // Malformed messages on one raw connection: each gets its format error (or, without a
    // readable type, nothing), and the connection goes on serving.
    let mut raw = TcpStream::connect(&address).expect("connect");
    let mut exchange = |message: &[u8]| -> Vec<u8> {
        let mut framed = u16::try_from(message.len()).expect("short").to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        raw.write_all(&framed).expect("write");
        let mut prefix = [0u8; 2];
        raw.read_exact(&mut prefix).expect("an answer");
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        raw.read_exact(&mut answer).expect("the whole answer");
        answer
    };
    let format_error = |answer: &[u8], mti: &[u8]| {
        assert_eq!(&answer[..4], mti, "{}", String::from_utf8_lossy(answer));
        assert!(answer.ends_with(b"30"), "{}", String::from_utf8_lossy(answer));
    };
    format_error(&exchange(b"0200ZZZZZZZZZZZZZZZZ"), b"0210");
    // DE 2 says 16 digits, 3 follow.
    format_error(&exchange(b"02004000000000000000"), b"0210");
    format_error(&exchange(b"0200400000000000000016123"), b"0210");
    // DE 2's length is 25, over its 19.
    format_error(&exchange(b"02004000000000000000251234567890123456789012345"), b"0210");
    format_error(&exchange(b"0100400000000000000016123456789012345600"), b"0110");
    // An unknown message type asks for something this switch does not do.
    let unknown = exchange(b"03000000000000000000");
    assert_eq!(&unknown[..4], b"0310");
    assert!(unknown.ends_with(b"12"));
    let echo = exchange(b"08000000000000000000");
    assert_eq!(&echo[..4], b"0810", "an 0800 without DE 70 is a format error");
    assert!(echo.ends_with(b"30"));
    let sent = "1201000000";
    // Bits 1 (a secondary bitmap), 7 and 11; then bit 70.
    let (primary, secondary) = ("8220000000000000", "0400000000000000");
    let echo = exchange(format!("0800{primary}{secondary}{sent}000001301").as_bytes());
    assert_eq!(&echo[..4], b"0810", "{}", String::from_utf8_lossy(&echo));
    assert!(String::from_utf8_lossy(&echo).contains("00301"), "{}", String::from_utf8_lossy(&echo));
    // A length no message has ends the connection.
    raw.write_all(&[0, 0]).expect("write");
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).expect("closed"), 0);
    switch.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_bitmap_encoding_serves_the_same_flows() {
    let dir = fresh_dir("e2e-iso8583-binary");
    let Paid { mut switch, admin, cards, answers, .. } = pay(&dir, "binary").await;
    assert_eq!(answered(&answers, "echo"), ("0810".into(), "00".into()));
    assert_eq!(answered(&answers, "sale"), ("0210".into(), "00".into()));
    assert_eq!(answered(&answers, "wrong_pin"), ("0210".into(), "55".into()));
    assert_eq!(available_won(&answers["balance"]), 7_500);
    assert_eq!(balance_won(&admin, cards[0].0).await, 7_500);
    switch.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquirer_is_an_identity_bound_to_its_merchants() {
    let dir = fresh_dir("e2e-iso8583-tls");
    let certs = dir.join("certs");
    let mut config = pinswitch_tests::mutual_tls_config(BIN, &certs, &["admin-1", "gw-acme"]);
    config.extend(pinswitch_tests::identity_lines("admin-1", &["admin"], &[]));
    config.extend(pinswitch_tests::identity_lines(
        "gw-acme",
        &["gateway"],
        &[format!("merchant_ids = [{MERCHANT}]")],
    ));
    let (mut switch, address) = start(&dir, "ascii", &config);
    let admin_tls = pinswitch_tests::tls_client(&certs, Some("admin-1"));
    let admin = Client::connect_tls(&switch.address, &admin_tls, ClientOptions::default())
        .await
        .expect("TLS connect");
    let cards = cards(&admin).await;
    let port = address.rsplit(':').next().expect("a port");
    let answers = acquirer(port, "ascii", &cards, &["merchants"], Some((&certs, "gw-acme")));
    assert_eq!(answered(&answers, "own_sale"), ("0210".into(), "00".into()));
    assert_eq!(answered(&answers, "foreign_reversal"), ("0410".into(), "58".into()));
    assert_eq!(answered(&answers, "foreign_sale"), ("0210".into(), "58".into()));
    assert_eq!(balance_won(&admin, cards[0].0).await, FACE_VALUE_WON - 300, "nothing reversed");
    // Plain TCP is off here: a plain ISO connection is closed unanswered.
    let mut plain = TcpStream::connect(&address).expect("connect");
    plain.write_all(b"\x00\x1408000000000000000000").expect("write");
    let mut rest = Vec::new();
    assert_eq!(plain.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0), 0);
    switch.stop();
}
