//! Card usage statements end to end (issue 4, the seed's FIG. 10H and 10I): seeded traffic on a
//! registered card through the real switch binary over TCP (sales in all six service categories at
//! three merchants, captures of holds, recharges by several funding means, merchant refunds and a
//! reversal), then the exporter, stopped after every 9 records and started again (a new process
//! each time), builds its statement index. The statement is read through the CLI
//! (`pinswitch-exporter statement`) and over the protocol from its `serve` (STATEMENT frames,
//! paged), and every figure is checked against sums computed here from the switch's replies;
//! merchant names come from the registry file, unknown merchants show by id; raw frames of an
//! unknown type and bad bytes get their result codes from the listener. More traffic and another
//! exporter run later must add to the statement exactly once, and a one-shot exporter on a second
//! state directory must give the same statement.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use pinswitch_protocol::client::{Client, ClientError};
use pinswitch_protocol::{
    Authorize, BalanceInquiry, Capture, CardActivate, CardIssue, CardLoad, CardRegister, CardSell,
    OpResult, Refund, ResultCode, Reverse, Sale, StatementQuery, StatementResult, new_op_id, pin,
};
use pinswitch_tests::{Rng, Switch, fresh_dir, one, switch_binary};

/// The binary under test; the switch it reads is `pinswitch_tests::switch_binary(EXPORTER)`.
const EXPORTER: &str = env!("CARGO_BIN_EXE_pinswitch-exporter");
const PASSWORD: &[u8] = b"4321";
const MERCHANTS: [u64; 3] = [77, 78, 88];
const REGISTRY: &str = "merchant_id,name,category\n77,e-lotto,1\n78,\"Flower delivery service \"\"Flower Land\"\"\",1\n";

fn name_of(merchant_id: u64) -> String {
    match merchant_id {
        77 => "e-lotto".into(),
        78 => "Flower delivery service \"Flower Land\"".into(),
        other => format!("merchant {other}"),
    }
}

/// The statement of the card as the test computes it from the replies.
#[derive(Default, Debug)]
struct Expected {
    paid_by_category_won: [u64; 6],
    merchant_refunds_won: u64,
    reversals_won: u64,
    /// (amount, funding)
    recharges: Vec<(u64, u8)>,
    /// Internet-payment detail lines in order: (kind, merchant, amount).
    lines: Vec<(u8, u64, u64)>,
    /// payment op id -> (merchant, category, refundable)
    payments: BTreeMap<u128, (u64, u8, u64)>,
}

fn approved(result: &OpResult) -> bool {
    result.code == ResultCode::Approved.as_u16()
}

/// Seeded traffic on `card`: `steps` events. Returns nothing; `expected` follows the replies.
async fn traffic(client: &Client, card: u64, rng: &mut Rng, steps: u32, expected: &mut Expected) {
    for _ in 0..steps {
        match rng.below(10) {
            0 | 1 => {
                let funding = 1 + rng.below(5) as u8;
                let load = CardLoad { op_id: new_op_id(), pin: card, amount_won: 10_000, funding };
                let result = one(client.card_load(&[load]).await).await;
                if approved(&result) {
                    expected.recharges.push((result.amount_won, funding));
                }
            }
            2 => {
                // A hold captured in part (the capture is the payment).
                let merchant_id = MERCHANTS[rng.below(3) as usize];
                let category = 1 + rng.below(6) as u8;
                let hold_id = new_op_id();
                let authorize = Authorize {
                    op_id: hold_id,
                    pin: card,
                    password: PASSWORD.to_vec(),
                    amount_won: 2_000,
                    merchant_id,
                    category,
                    hold_ttl_s: 0,
                };
                if !approved(&one(client.authorize(&[authorize]).await).await) {
                    continue;
                }
                let capture_id = new_op_id();
                let capture = Capture {
                    op_id: capture_id,
                    pin: card,
                    hold_id,
                    amount_won: 1_000 + rng.below(1_000),
                    final_capture: true,
                };
                let result = one(client.capture(&[capture]).await).await;
                assert!(approved(&result), "{result:?}");
                expected.paid_by_category_won[usize::from(category) - 1] += result.amount_won;
                if category == 1 {
                    expected.lines.push((1, merchant_id, result.amount_won));
                }
                expected.payments.insert(capture_id, (merchant_id, category, result.amount_won));
            }
            3 if !expected.payments.is_empty() => {
                // A merchant refunds part of an earlier payment: a REFUND names the SALE or the CAPTURE.
                let refundable: Vec<u128> = expected
                    .payments
                    .iter()
                    .filter(|(_, payment)| payment.2 > 1)
                    .map(|(id, _)| *id)
                    .collect();
                let Some(&original) =
                    refundable.get(rng.below(refundable.len().max(1) as u64) as usize)
                else {
                    continue;
                };
                let refund = Refund {
                    op_id: new_op_id(),
                    pin: card,
                    original_op_id: original,
                    amount_won: 1 + rng.below(expected.payments[&original].2 - 1),
                };
                let result = one(client.refund(&[refund]).await).await;
                assert!(approved(&result), "{result:?}");
                {
                    let payment = expected.payments.get_mut(&original).expect("known");
                    payment.2 -= result.amount_won;
                    expected.merchant_refunds_won += result.amount_won;
                    if payment.1 == 1 {
                        expected.lines.push((2, payment.0, result.amount_won));
                    }
                }
            }
            _ => {
                let merchant_id = MERCHANTS[rng.below(3) as usize];
                let category = 1 + rng.below(6) as u8;
                let op_id = new_op_id();
                let sale = Sale {
                    op_id,
                    pin: card,
                    password: PASSWORD.to_vec(),
                    amount_won: 100 + rng.below(3_000),
                    merchant_id,
                    category,
                };
                let result = one(client.sale(&[sale]).await).await;
                if approved(&result) {
                    expected.paid_by_category_won[usize::from(category) - 1] += result.amount_won;
                    if category == 1 {
                        expected.lines.push((1, merchant_id, result.amount_won));
                    }
                    expected.payments.insert(op_id, (merchant_id, category, result.amount_won));
                }
            }
        }
    }
}

/// `pinswitch keys export-pin`: the switch's PIN key alone, where the exporter looks for it.
fn export_pin_key(data: &Path, state: &Path) {
    let output = Command::new(switch_binary(EXPORTER))
        .args(["keys", "export-pin", "--data"])
        .arg(data)
        .arg("--out")
        .arg(state.join("pin.key"))
        .output()
        .expect("running pinswitch keys export-pin");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn export(state: &Path, data: &Path, registry: &Path, args: &[&str]) -> Output {
    let output = Command::new(EXPORTER)
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--state")
        .arg(state)
        .arg("--merchants")
        .arg(registry)
        .output()
        .expect("running pinswitch-exporter");
    assert!(
        output.status.success(),
        "pinswitch-exporter {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `pinswitch-exporter run --max-records 9` until the journals are done: a new process every 9
/// records.
fn export_in_steps(state: &Path, data: &Path, registry: &Path) {
    loop {
        let output = export(state, data, registry, &["run", "--max-records", "9"]);
        if !String::from_utf8_lossy(&output.stdout).contains("stopped at --max-records") {
            return;
        }
    }
}

/// The value of a `label   value` row of the CLI statement.
fn row<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(label).filter(|rest| rest.starts_with("  ")).map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {label:?} in\n{text}"))
}

fn won(text: &str, label: &str) -> u64 {
    row(text, label)
        .split_whitespace()
        .next()
        .and_then(|amount| amount.parse().ok())
        .unwrap_or_else(|| panic!("{label}: {}", row(text, label)))
}

/// Checks a statement (CLI text, or a protocol result with all its pages' lines) against `expected`.
fn check_cli(text: &str, expected: &Expected, points: u32, balance_won: u64) {
    let names = [
        "internet payment",
        "telephone call",
        "phone information",
        "prepaid mobile",
        "PC communication",
        "voicemail",
    ];
    for (name, paid_won) in names.iter().zip(expected.paid_by_category_won) {
        assert_eq!(won(text, &format!("total {name}")), paid_won, "{name}");
    }
    assert_eq!(won(text, "  merchant refunds"), expected.merchant_refunds_won);
    assert_eq!(won(text, "  reversals"), expected.reversals_won);
    assert_eq!(won(text, "total refunded"), expected.merchant_refunds_won + expected.reversals_won);
    assert_eq!(
        won(text, "recharged"),
        expected.recharges.iter().map(|(amount, _)| amount).sum::<u64>()
    );
    assert_eq!(
        text.lines().filter(|line| line.starts_with("recharge ")).count(),
        expected.recharges.len()
    );
    assert_eq!(row(text, "points"), points.to_string());
    assert_eq!(won(text, "balance"), balance_won);
    assert_eq!(row(text, "initial value").split_whitespace().next(), Some("50000"));
    assert!(row(text, "sold").contains("by channel 3 for 48000 won"), "{text}");
    let detail: Vec<(u8, u64, u64)> = text
        .lines()
        .skip_while(|line| !line.starts_with("DETAILED USAGE"))
        .skip(1)
        .filter(|line| !line.starts_with("total "))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let kind = match fields[1] {
                "payment" => 1,
                "refund" => 2,
                "reversal" => 3,
                other => panic!("kind {other}"),
            };
            let merchant = fields
                .last()
                .and_then(|id| id.trim_matches(|c| c == '(' || c == ')').parse().ok())
                .expect("merchant id");
            assert!(line.contains(&name_of(merchant)), "{line}");
            (kind, merchant, fields[2].parse().expect("amount"))
        })
        .collect();
    assert_eq!(detail, expected.lines);
}

fn check_result(
    result: &StatementResult,
    lines: &[(u8, u64, u64)],
    expected: &Expected,
    points: u32,
    balance_won: u64,
) {
    assert_eq!(result.code, ResultCode::Approved.as_u16());
    assert_eq!(result.paid_by_category_won, expected.paid_by_category_won);
    assert_eq!(
        (result.merchant_refunds_won, result.reversals_won, result.refunded_won),
        (
            expected.merchant_refunds_won,
            expected.reversals_won,
            expected.merchant_refunds_won + expected.reversals_won
        )
    );
    let recharges: Vec<(u64, u8)> =
        result.recharges.iter().map(|recharge| (recharge.amount_won, recharge.funding)).collect();
    assert_eq!(recharges, expected.recharges);
    assert_eq!(
        (
            result.points,
            result.balance_won,
            result.face_value_won,
            result.price_won,
            result.channel_id
        ),
        (points, balance_won, 50_000, 48_000, 3)
    );
    assert_eq!(result.lines_total as usize, expected.lines.len());
    assert_eq!(lines, expected.lines.as_slice());
}

/// Every page of the statement over the protocol, `limit` lines at a time.
async fn statement_pages(
    client: &Client,
    card: u64,
    limit: u32,
) -> (StatementResult, Vec<(u8, u64, u64)>) {
    let first = one(client
        .statement(&[StatementQuery { pin: card, limit, ..StatementQuery::default() }])
        .await)
    .await;
    let mut lines: Vec<(u8, u64, u64)> = Vec::new();
    let mut page = first.clone();
    loop {
        assert!(page.lines.len() <= limit as usize);
        for line in &page.lines {
            assert_eq!(line.merchant_name, name_of(line.merchant_id));
            lines.push((line.kind, line.merchant_id, line.amount_won));
        }
        if page.next_cursor == 0 {
            break;
        }
        page = one(client
            .statement(&[StatementQuery {
                pin: card,
                cursor: page.next_cursor,
                limit,
                ..StatementQuery::default()
            }])
            .await)
        .await;
    }
    (first, lines)
}

/// Outside bytes at `pinswitch-exporter serve`: an unknown message type is answered on a connection
/// that stays open (a PING after it is answered); bad magic gets one FORMAT_ERROR frame, then the
/// connection closes.
fn raw_frames_are_answered(address: &str) {
    use pinswitch_protocol::{FrameHeader, Ping, VERSION, decode_frame, encode_body, encode_frame};
    use std::io::{Read, Write};
    // Answers may arrive together in one read: bytes past a frame stay for the next one.
    let read_frame = |stream: &mut std::net::TcpStream, bytes: &mut Vec<u8>| {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = decode_frame(bytes, 1 << 20).expect("a valid frame") {
                let answer = (frame.header, frame.body.to_vec());
                let used = frame.total_len;
                bytes.drain(..used);
                return answer;
            }
            let read = stream.read(&mut chunk).expect("reading");
            assert!(read > 0, "closed before a whole frame");
            bytes.extend_from_slice(&chunk[..read]);
        }
    };
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let header = |msg_type: u16, request_id: u64| FrameHeader {
        version: VERSION,
        flags: 0,
        msg_type,
        status: 0,
        request_id,
        deadline_ms: 0,
        body_len: 0,
    };
    let mut frame = Vec::new();
    encode_frame(&mut frame, &header(99, 5), b"");
    encode_frame(&mut frame, &header(2, 6), &encode_body(&Ping { nonce: 9 }));
    stream.write_all(&frame).expect("write");
    let mut bytes = Vec::new();
    let (unknown, _) = read_frame(&mut stream, &mut bytes);
    assert_eq!((unknown.request_id, unknown.status), (5, ResultCode::UnknownMessageType.as_u16()));
    let (pong, _) = read_frame(&mut stream, &mut bytes);
    assert_eq!((pong.request_id, pong.status), (6, 0));
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.write_all(&[0xAB; 40]).expect("write");
    let (error, _) = read_frame(&mut stream, &mut Vec::new());
    assert_eq!(error.status, ResultCode::FormatError.as_u16());
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the connection closes");
}

/// `pinswitch-exporter serve` on a free port; returns the child and its address.
fn serve(state: &Path, data: &Path, registry: &Path) -> (Child, String) {
    let mut child = Command::new(EXPORTER)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--state")
        .arg(state)
        .arg("--merchants")
        .arg(registry)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning pinswitch-exporter serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("reading the serve line");
    let address = line
        .strip_prefix("statements on ")
        .map(|rest| rest.trim().to_string())
        .unwrap_or_else(|| panic!("unexpected {line:?}"));
    (child, address)
}

#[tokio::test(flavor = "current_thread")]
async fn statements_through_the_cli_and_the_protocol_match_the_replies() {
    let root = fresh_dir("statement");
    let data = root.join("data");
    let (state, state_once) = (root.join("export"), root.join("export-once"));
    let registry: PathBuf = root.join("merchants.csv");
    std::fs::write(&registry, REGISTRY).expect("writing the registry");
    let mut switch = Switch::start(&switch_binary(EXPORTER), &data, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");

    let issued = client
        .card_issue(&[
            CardIssue { op_id: new_op_id(), face_value_won: 50_000 },
            CardIssue { op_id: new_op_id(), face_value_won: 20_000 },
        ])
        .await
        .expect("issue");
    let (card, other) = (issued[0].pin, issued[1].pin);
    assert!(approved(
        &one(client
            .card_sell(&[CardSell {
                op_id: new_op_id(),
                pin: card,
                channel_id: 3,
                price_won: 48_000,
                payment_means: 1,
                gift_recipient_ref: 0
            }])
            .await)
        .await
    ));
    for pin in [card, other] {
        assert!(approved(
            &one(client
                .card_activate(&[CardActivate {
                    op_id: new_op_id(),
                    pin,
                    password: PASSWORD.to_vec()
                }])
                .await)
            .await
        ));
    }
    assert!(approved(
        &one(client
            .card_register(&[CardRegister {
                op_id: new_op_id(),
                pin: card,
                holder_ref: 7,
                verified_name: true
            }])
            .await)
        .await
    ));
    let mut expected = Expected::default();
    let mut rng = Rng(0x57A7_E3E7);
    traffic(&client, card, &mut rng, 60, &mut expected).await;
    // One internet payment reversed whole.
    let reversed = Sale {
        op_id: new_op_id(),
        pin: card,
        password: PASSWORD.to_vec(),
        amount_won: 2_500,
        merchant_id: 88,
        category: 1,
    };
    let reversed_id = reversed.op_id;
    assert!(approved(&one(client.sale(&[reversed]).await).await));
    let result = one(client
        .reverse(&[Reverse { op_id: new_op_id(), pin: card, original_op_id: reversed_id }])
        .await)
    .await;
    assert!(approved(&result));
    expected.paid_by_category_won[0] += 2_500;
    expected.reversals_won += result.amount_won;
    expected.lines.extend([(1, 88, 2_500), (3, 88, result.amount_won)]);
    // The other card's traffic must not show in this card's statement.
    assert!(approved(
        &one(client
            .sale(&[Sale {
                op_id: new_op_id(),
                pin: other,
                password: PASSWORD.to_vec(),
                amount_won: 700,
                merchant_id: 77,
                category: 1
            }])
            .await)
        .await
    ));
    let card_now = one(client.balance_inquiry(&[BalanceInquiry { pin: card }]).await).await;
    assert!(card_now.points > 0, "a registered card earns points");
    assert!(
        expected.paid_by_category_won.iter().all(|paid| *paid > 0),
        "every category paid: {expected:?}"
    );
    assert!(expected.merchant_refunds_won > 0 && expected.recharges.len() >= 2);

    // The exporter, restarted every 9 records; the CLI statement, with the PIN key alone.
    export_in_steps(&state, &data, &registry);
    let refused = |pin_key: &Path| {
        Command::new(EXPORTER)
            .args(["statement", &pin::format(card), "--data"])
            .arg(&data)
            .arg("--state")
            .arg(&state)
            .arg("--pin-key")
            .arg(pin_key)
            .output()
            .expect("running pinswitch-exporter")
    };
    let missing = refused(&state.join("pin.key"));
    assert!(!missing.status.success(), "a statement without the PIN key");
    let full = refused(&data.join("keys.bin"));
    let why = String::from_utf8_lossy(&full.stderr).into_owned();
    assert!(!full.status.success() && why.contains("full key file"), "{why}");
    export_pin_key(&data, &state);
    let text = String::from_utf8_lossy(
        &export(&state, &data, &registry, &["statement", &pin::format(card)]).stdout,
    )
    .into_owned();
    check_cli(&text, &expected, card_now.points, card_now.balance_won);

    // Over the protocol, 4 lines a page; unknown and malformed PINs; a switch message type.
    let (mut server, address) = serve(&state, &data, &registry);
    let exporter = Client::connect(&address).await.expect("connect to pinswitch-exporter serve");
    let (first, lines) = statement_pages(&exporter, card, 4).await;
    assert!(expected.lines.len() > 4, "several pages");
    check_result(&first, &lines, &expected, card_now.points, card_now.balance_won);
    let unknown = pin::with_check_digit(123_456_789_012_345);
    let bad = exporter
        .statement(&[
            StatementQuery { pin: unknown, ..StatementQuery::default() },
            StatementQuery { pin: 1234, ..StatementQuery::default() },
        ])
        .await
        .expect("answered");
    assert_eq!(
        (bad[0].code, bad[1].code),
        (ResultCode::CardNotFound.as_u16(), ResultCode::PinFormatInvalid.as_u16())
    );
    let too_many = vec![StatementQuery { pin: card, ..StatementQuery::default() }; 17];
    assert!(matches!(
        exporter.statement(&too_many).await,
        Err(ClientError::Rejected(ResultCode::BatchTooLarge))
    ));
    assert!(matches!(
        exporter.balance_inquiry(&[BalanceInquiry { pin: card }]).await,
        Err(ClientError::Rejected(ResultCode::UnknownMessageType))
    ));
    raw_frames_are_answered(&address);
    // The switch does not answer statements.
    assert!(matches!(
        client.statement(&[StatementQuery { pin: card, ..StatementQuery::default() }]).await,
        Err(ClientError::Rejected(ResultCode::UnknownMessageType))
    ));

    // More traffic; the exporter resumes from its cursor; the listener reads the grown index.
    traffic(&client, card, &mut rng, 30, &mut expected).await;
    let card_now = one(client.balance_inquiry(&[BalanceInquiry { pin: card }]).await).await;
    export_in_steps(&state, &data, &registry);
    let (first, lines) = statement_pages(&exporter, card, 7).await;
    check_result(&first, &lines, &expected, card_now.points, card_now.balance_won);
    let text = String::from_utf8_lossy(
        &export(&state, &data, &registry, &["statement", &pin::format(card)]).stdout,
    )
    .into_owned();
    check_cli(&text, &expected, card_now.points, card_now.balance_won);
    // A range after today holds no flows, but the initial value and the card as of now.
    let tomorrow = pinswitch_exporter::date_string(
        pinswitch_exporter::Cutoff { utc_offset_hours: 9, cutoff_hour: 0 }
            .period_of(first.as_of_ms)
            + 1,
    );
    let later = String::from_utf8_lossy(
        &export(&state, &data, &registry, &["statement", &pin::format(card), "--from", &tomorrow])
            .stdout,
    )
    .into_owned();
    assert_eq!(
        (won(&later, "total internet payment"), won(&later, "recharged"), won(&later, "balance")),
        (0, 0, card_now.balance_won)
    );

    // One exporter run over everything at once gives the same statement.
    export(&state_once, &data, &registry, &["run"]);
    export_pin_key(&data, &state_once);
    let once = String::from_utf8_lossy(
        &export(&state_once, &data, &registry, &["statement", &pin::format(card)]).stdout,
    )
    .into_owned();
    assert_eq!(once, text);

    server.kill().expect("stopping pinswitch-exporter serve");
    server.wait().expect("reaping pinswitch-exporter serve");
    switch.stop();
}
