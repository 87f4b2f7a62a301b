//! The settlement exporter end to end: a day of mixed traffic through the real binary over TCP
//! (cards sold through three channels, one of them a consignment partner with its commission, a
//! card activated without a sale, recharges, sales, holds captured in part, voided or reversed,
//! merchant refunds, reversals, balance refunds and a reversal joining a balance refund), with the
//! switch killed with SIGKILL and restarted in the middle and the exporter run against the live
//! journals before and after. Every statement, channel and payout total is checked against sums
//! worked out here from the replies, the pain.001 files against their structure, the trial balance
//! and the safeguarding reconciliation through `pinswitch-exporter status`; a second exporter that
//! stops after every 7 records and is started again (a new process each time), and a third one
//! killed with SIGKILL once it has checkpointed and then resumed, must write byte-identical files,
//! and so must a re-run of the period. Expiry cannot be reached over the protocol (validity is days
//! of the server's wall clock); the exporter's own tests cover it with journals written at chosen
//! times. A second test sells paid orders from a camt.054 deposit notice through the protocol,
//! once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    Authorize, Capture, CardActivate, CardConsign, CardIssue, CardLoad, CardRefund, CardSell,
    Category, OpResult, Refund, ResultCode, Reverse, Sale, Void, new_op_id,
};
use pinswitch_tests::{Rng, Switch, fresh_dir, one, switch_binary};

/// The binary under test; the switch it reads is `pinswitch_tests::switch_binary(EXPORTER)`.
const EXPORTER: &str = env!("CARGO_BIN_EXE_pinswitch-exporter");
const PASSWORD: &[u8] = b"4321";
const MERCHANTS: [u64; 3] = [77, 78, 88];
/// The exporter's default merchant commission.
const RATE_PER_MILLE: u64 = 25;
const PARTNER: u32 = 21;
const PARTNER_PER_MILLE: u16 = 35;

/// What the test expects, computed from the replies.
#[derive(Default)]
struct Expected {
    /// payment op id -> (merchant, debited, credited, card)
    payments: BTreeMap<u128, (u64, u64, u64, u64)>,
    /// capture op id -> hold id
    captures: BTreeMap<u128, u128>,
    /// merchant -> (debits count, gross, credits count, credited)
    merchants: BTreeMap<u64, (u64, u64, u64, u64)>,
    /// channel -> (cards, gross, commission)
    channels: BTreeMap<u32, (u64, u64, u64)>,
    /// card -> payout account, for paid-out cards
    paid_out: BTreeMap<u64, u64>,
    payouts_won: Vec<u64>,
}

impl Expected {
    fn debit(&mut self, payment: u128, amount_won: u64) {
        let entry = self.payments.get_mut(&payment).expect("known payment");
        entry.1 += amount_won;
        let merchant = self.merchants.entry(entry.0).or_default();
        merchant.0 += 1;
        merchant.1 += amount_won;
    }

    fn credit(&mut self, payment: u128, amount_won: u64) {
        let entry = self.payments.get_mut(&payment).expect("known payment");
        entry.2 += amount_won;
        let merchant = self.merchants.entry(entry.0).or_default();
        merchant.2 += 1;
        merchant.3 += amount_won;
    }

    /// Commission per merchant: floor(net × rate / 1000) per payment, summed.
    fn commission(&self, merchant_id: u64) -> u64 {
        self.payments
            .values()
            .filter(|payment| payment.0 == merchant_id)
            .map(|payment| (payment.1 - payment.2) * RATE_PER_MILLE / 1000)
            .sum()
    }
}

fn approved(result: &OpResult) -> bool {
    result.code == ResultCode::Approved.as_u16()
}

fn sale(pin: u64, amount_won: u64, merchant_id: u64) -> Sale {
    Sale {
        op_id: new_op_id(),
        pin,
        password: PASSWORD.to_vec(),
        amount_won,
        merchant_id,
        category: Category::InternetPayment as u8,
    }
}

/// Issues, consigns, sells and activates cards; returns the activated ones.
async fn stock(client: &Client, expected: &mut Expected) -> Vec<u64> {
    let faces = [5_000, 10_000, 20_000, 30_000, 50_000];
    let mut pins = Vec::new();
    for index in 0..16 {
        let issued = one(client
            .card_issue(&[CardIssue {
                op_id: new_op_id(),
                face_value_won: faces[index % faces.len()],
            }])
            .await)
        .await;
        assert_eq!(issued.code, ResultCode::Approved.as_u16());
        pins.push((issued.pin, issued.balance_won));
    }
    for (index, (pin, face_won)) in pins.iter().enumerate() {
        // 0..4 consigned to the partner (mobile bill), 4..10 an agent (cash, some at a
        // discount), 10..14 the web shop (credit card); 14 is activated unsold, 15 stays in stock.
        let (channel_id, means, price_won) = match index {
            0..4 => (PARTNER, 5, *face_won),
            4..10 => (3, 4, face_won - if index % 2 == 0 { 500 } else { 0 }),
            10..14 => (5, 1, *face_won),
            _ => (0, 0, 0),
        };
        if channel_id == PARTNER {
            let consigned = one(client
                .card_consign(&[CardConsign {
                    op_id: new_op_id(),
                    pin: *pin,
                    partner_id: PARTNER,
                    commission_per_mille: PARTNER_PER_MILLE,
                }])
                .await)
            .await;
            assert!(approved(&consigned));
        }
        if channel_id != 0 {
            let sold = one(client
                .card_sell(&[CardSell {
                    op_id: new_op_id(),
                    pin: *pin,
                    channel_id,
                    price_won,
                    payment_means: means,
                    gift_recipient_ref: 0,
                }])
                .await)
            .await;
            assert!(approved(&sold), "{sold:?}");
            let commission_won = if channel_id == PARTNER {
                price_won * u64::from(PARTNER_PER_MILLE) / 1000
            } else {
                0
            };
            let channel = expected.channels.entry(channel_id).or_default();
            channel.0 += 1;
            channel.1 += price_won;
            channel.2 += commission_won;
        }
    }
    let mut active = Vec::new();
    for (pin, _) in &pins[..15] {
        let activated = one(client
            .card_activate(&[CardActivate {
                op_id: new_op_id(),
                pin: *pin,
                password: PASSWORD.to_vec(),
            }])
            .await)
        .await;
        assert!(approved(&activated));
        active.push(*pin);
    }
    active
}

/// Payments of every kind, chosen by a seeded generator; the expectations follow the replies.
async fn payments(
    client: &Client,
    cards: &[u64],
    rng: &mut Rng,
    rounds: usize,
    expected: &mut Expected,
) {
    let mut sales: Vec<(u128, u64)> = Vec::new();
    let mut holds: Vec<(u128, u64)> = Vec::new();
    for _ in 0..rounds {
        let pin = cards[rng.below(cards.len() as u64) as usize];
        let merchant_id = MERCHANTS[rng.below(3) as usize];
        let amount_won = 100 * (1 + rng.below(40));
        match rng.below(12) {
            0..=4 => {
                let event = sale(pin, amount_won, merchant_id);
                let op_id = event.op_id;
                let result = one(client.sale(&[event]).await).await;
                if approved(&result) {
                    expected.payments.insert(op_id, (merchant_id, 0, 0, pin));
                    expected.debit(op_id, result.amount_won);
                    sales.push((op_id, pin));
                }
            }
            5 | 6 => {
                let event = Authorize {
                    op_id: new_op_id(),
                    pin,
                    password: PASSWORD.to_vec(),
                    amount_won,
                    merchant_id,
                    category: Category::InternetPayment as u8,
                    hold_ttl_s: 0,
                };
                let hold_id = event.op_id;
                let result = one(client.authorize(&[event]).await).await;
                if approved(&result) {
                    expected.payments.insert(hold_id, (merchant_id, 0, 0, pin));
                    holds.push((hold_id, pin));
                    match rng.below(3) {
                        0 => {
                            let voided = one(client
                                .void(&[Void { op_id: new_op_id(), pin, hold_id }])
                                .await)
                            .await;
                            assert!(approved(&voided));
                        }
                        split => {
                            let capture = Capture {
                                op_id: new_op_id(),
                                pin,
                                hold_id,
                                amount_won: amount_won / 2,
                                final_capture: split == 2,
                            };
                            let capture_id = capture.op_id;
                            let captured = one(client.capture(&[capture]).await).await;
                            assert!(approved(&captured), "{captured:?}");
                            expected.debit(hold_id, captured.amount_won);
                            expected.captures.insert(capture_id, hold_id);
                            sales.push((capture_id, pin));
                        }
                    }
                }
            }
            7..=9 if !sales.is_empty() => {
                let (original_op_id, pin) = sales[rng.below(sales.len() as u64) as usize];
                let result = one(client
                    .refund(&[Refund { op_id: new_op_id(), pin, original_op_id, amount_won: 100 }])
                    .await)
                .await;
                if approved(&result) {
                    let payment =
                        expected.captures.get(&original_op_id).copied().unwrap_or(original_op_id);
                    expected.credit(payment, result.amount_won);
                }
            }
            _ => {
                let pool = if rng.below(2) == 0 || holds.is_empty() { &sales } else { &holds };
                if pool.is_empty() {
                    continue;
                }
                let (original_op_id, pin) = pool[rng.below(pool.len() as u64) as usize];
                // A capture is not reversible itself; its authorization is.
                let original_op_id =
                    expected.captures.get(&original_op_id).copied().unwrap_or(original_op_id);
                let result = one(client
                    .reverse(&[Reverse { op_id: new_op_id(), pin, original_op_id }])
                    .await)
                .await;
                if approved(&result) {
                    let (_, debited, credited, _) = expected.payments[&original_op_id];
                    let credit_won = debited - credited;
                    if credit_won > 0 {
                        expected.credit(original_op_id, credit_won);
                        if expected.paid_out.contains_key(&pin) {
                            expected.payouts_won.push(credit_won);
                        }
                    }
                }
            }
        }
    }
}

fn export(state: &Path, data: &Path, args: &[&str]) -> Output {
    let output = Command::new(EXPORTER)
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--state")
        .arg(state)
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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    lines
        .filter(|line| !line.starts_with("TRAILER") && !line.starts_with("TOTAL"))
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect()
        })
        .collect()
}

/// Every period the exporter knows (closed in a run or open in the status), rendered into `out`.
fn render_all(state: &Path, data: &Path, out: &Path, closed: &[String]) -> Vec<PathBuf> {
    let status = stdout(&export(state, data, &["status"]));
    let open_line =
        status.lines().find(|line| line.starts_with("open periods:")).expect("open periods line");
    let mut dates: Vec<String> = closed.to_vec();
    dates.extend(
        open_line
            .trim_start_matches("open periods:")
            .split_whitespace()
            .filter(|date| *date != "none")
            .map(str::to_string),
    );
    dates.sort();
    dates.dedup();
    assert!(!dates.is_empty());
    dates
        .iter()
        .map(|date| {
            let dir = out.join(date);
            export(state, data, &["period", date, "--out", dir.to_str().expect("utf-8")]);
            dir
        })
        .collect()
}

fn closed_periods(output: &Output) -> Vec<String> {
    closed_periods_text(&stdout(output))
}

fn all_files(dirs: &[PathBuf]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for dir in dirs {
        for entry in std::fs::read_dir(dir).expect("period dir") {
            let path = entry.expect("entry").path();
            let name = format!(
                "{}/{}",
                dir.file_name().unwrap().to_string_lossy(),
                path.file_name().unwrap().to_string_lossy()
            );
            files.insert(name, std::fs::read(&path).expect("file"));
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_traffic_settles_exactly_and_resumes_byte_identically() {
    let dir = fresh_dir("export");
    let data = dir.join("data");
    let state = dir.join("state");
    let mut switch = Switch::start(&switch_binary(EXPORTER), &data, &[]);
    let mut expected = Expected::default();
    let mut rng = Rng(0x005E_771E);
    let cards = {
        let client = Client::connect(&switch.address).await.expect("connect");
        let cards = stock(&client, &mut expected).await;
        for pin in &cards[..4] {
            let loaded = one(client
                .card_load(&[CardLoad {
                    op_id: new_op_id(),
                    pin: *pin,
                    amount_won: 10_000,
                    funding: 2,
                }])
                .await)
            .await;
            assert!(approved(&loaded));
        }
        payments(&client, &cards, &mut rng, 120, &mut expected).await;
        cards
    };
    // The exporter follows the live journals, then the switch dies and comes back.
    let mut closed = closed_periods(&export(&state, &data, &["run"]));
    switch.kill();
    let mut switch = Switch::start(&switch_binary(EXPORTER), &data, &[]);
    {
        let client = Client::connect(&switch.address).await.expect("connect");
        payments(&client, &cards, &mut rng, 120, &mut expected).await;
        // Balance refunds wherever the used share allows; then a reversal of a payment of a
        // paid-out card joins its payout.
        for (index, pin) in cards.iter().enumerate() {
            let account = 1_000 + index as u64;
            let result = one(client
                .card_refund(&[CardRefund {
                    op_id: new_op_id(),
                    pin: *pin,
                    payout_account_ref: account,
                }])
                .await)
            .await;
            if approved(&result) {
                expected.paid_out.insert(*pin, account);
                expected.payouts_won.push(result.amount_won);
            }
        }
        let closed_card_sale = expected
            .payments
            .iter()
            .find(|(_, (_, debited, credited, pin))| {
                expected.paid_out.contains_key(pin) && debited > credited
            })
            .map(|(op_id, (_, _, _, pin))| (*op_id, *pin));
        {
            let (original_op_id, pin) =
                closed_card_sale.expect("a paid-out card with a payment to reverse");
            let result =
                one(client.reverse(&[Reverse { op_id: new_op_id(), pin, original_op_id }]).await)
                    .await;
            assert!(approved(&result), "{result:?}");
            let (_, debited, credited, _) = expected.payments[&original_op_id];
            expected.credit(original_op_id, debited - credited);
            expected.payouts_won.push(debited - credited);
        }
        assert!(!expected.paid_out.is_empty(), "some balance refund was allowed");
    }
    switch.stop();

    let run = export(&state, &data, &["run"]);
    closed.extend(closed_periods(&run));
    let text = stdout(&run);
    assert!(text.contains("reconciled") && !text.contains("NOT RECONCILED"), "{text}");
    assert!(text.contains("balanced"), "{text}");
    let status = stdout(&export(&state, &data, &["status"]));
    let mut head_records = 0u64;
    for line in status.lines().skip(1).take(2) {
        let fields: Vec<u64> =
            line.split_whitespace().map(|field| field.parse().expect("number")).collect();
        assert_eq!(fields[1], fields[2], "cursor at head: {line}");
        assert_eq!(fields[3], 0, "no lag: {line}");
        head_records += fields[2];
    }
    let first = render_all(&state, &data, &dir.join("out-first"), &closed);

    // Statement totals, summed over the periods (one, unless the day ran past a cut-off).
    let mut merchants: BTreeMap<u64, [u64; 5]> = BTreeMap::new();
    let mut retention_rows = 0u64;
    let mut payouts: Vec<u64> = Vec::new();
    let mut channels: BTreeMap<u32, [u64; 3]> = BTreeMap::new();
    for period in &first {
        for row in rows(&period.join("statements.csv")) {
            let figures = merchants.entry(row["merchant_id"].parse().unwrap()).or_default();
            for (slot, column) in
                ["sales_count", "gross_won", "refunds_count", "refunds_won", "commission_won"]
                    .iter()
                    .enumerate()
            {
                figures[slot] += row[*column].parse::<u64>().unwrap();
            }
            let net = row["net_won"].parse::<i64>().unwrap();
            let gross = row["gross_won"].parse::<i64>().unwrap()
                - row["refunds_won"].parse::<i64>().unwrap()
                - row["commission_won"].parse::<i64>().unwrap();
            assert_eq!(net, gross);
        }
        for row in rows(&period.join("channel-summary.csv")) {
            let figures = channels.entry(row["channel_id"].parse().unwrap()).or_default();
            for (slot, column) in ["cards_sold", "gross_won", "commission_won"].iter().enumerate() {
                figures[slot] += row[*column].parse::<u64>().unwrap();
            }
        }
        payouts.extend(
            rows(&period.join("payouts-refunds.csv"))
                .iter()
                .map(|row| row["amount_won"].parse::<u64>().unwrap()),
        );
        retention_rows += rows(&period.join("retention.csv")).len() as u64;
        let trial = std::fs::read_to_string(period.join("trial-balance.csv")).unwrap();
        assert!(trial.trim_end().ends_with(",balanced"), "{trial}");
        for file in ["payouts-merchants", "payouts-refunds"] {
            let xml_path = period.join(format!("{file}.pain.001.xml"));
            if xml_path.exists() {
                check_pain001(
                    &std::fs::read_to_string(&xml_path).unwrap(),
                    &rows(&period.join(format!("{file}.csv"))),
                );
            }
        }
    }
    let wanted: BTreeMap<u64, [u64; 5]> = expected
        .merchants
        .iter()
        .map(|(merchant_id, figures)| {
            (
                *merchant_id,
                [figures.0, figures.1, figures.2, figures.3, expected.commission(*merchant_id)],
            )
        })
        .collect();
    assert!(
        wanted.values().all(|figures| figures[0] > 0 && figures[2] > 0 && figures[4] > 0),
        "every kind of line occurs: {wanted:?}"
    );
    assert!(expected.captures.len() > 3 && expected.paid_out.len() > 1);
    assert_eq!(
        merchants, wanted,
        "statements: sales count, gross, refunds count, refunds, commission"
    );
    let wanted_channels: BTreeMap<u32, [u64; 3]> = expected
        .channels
        .iter()
        .map(|(channel, figures)| (*channel, [figures.0, figures.1, figures.2]))
        .collect();
    assert_eq!(channels, wanted_channels);
    payouts.sort_unstable();
    expected.payouts_won.sort_unstable();
    assert_eq!(payouts, expected.payouts_won, "balance-refund payouts");
    assert_eq!(retention_rows, head_records, "one retention tag per journal record");

    // The mobile operator's monthly remittance: partner 21 sold by mobile bill.
    let month = first[0].file_name().unwrap().to_string_lossy()[..7].to_string();
    let month_dir = dir.join("out-month");
    export(&state, &data, &["month", &month, "--out", month_dir.to_str().expect("utf-8")]);
    let remittance = rows(&month_dir.join("operator-remittance.csv"));
    let operator: Vec<u64> =
        ["operator_channel", "cards_sold", "gross_won", "commission_won", "net_due_won"]
            .iter()
            .map(|key| remittance[0][*key].parse().unwrap())
            .collect();
    let partner = expected.channels[&PARTNER];
    assert_eq!(
        (remittance.len(), operator),
        (1, vec![u64::from(PARTNER), partner.0, partner.1, partner.2, partner.1 - partner.2])
    );

    // A second exporter stopped after every 7 records, each run a new process.
    let resumed = dir.join("state-resumed");
    let mut runs = 0;
    let mut resumed_closed = Vec::new();
    loop {
        let output = export(&resumed, &data, &["run", "--max-records", "7"]);
        resumed_closed.extend(closed_periods(&output));
        runs += 1;
        if !stdout(&output).contains("stopped at --max-records") {
            break;
        }
    }
    assert!(runs as u64 > head_records / 7);
    let second = render_all(&resumed, &data, &dir.join("out-resumed"), &resumed_closed);
    let first_files = all_files(&first);
    assert_eq!(first_files, all_files(&second), "resumed exporter wrote other bytes");
    // A third one killed with SIGKILL once it has checkpointed (every 5 records), then resumed.
    let killed = dir.join("state-killed");
    let export_config = dir.join("export.toml");
    std::fs::write(&export_config, "checkpoint_every_records = 5\n").expect("export config");
    let mut child = Command::new(EXPORTER)
        .args([
            "run",
            "--export-config",
            export_config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--state",
            killed.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawning the exporter");
    while !killed.join("state.bin").exists() && child.try_wait().expect("polling").is_none() {
        std::thread::yield_now();
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping");
    let config_arg = ["--export-config", export_config.to_str().unwrap()];
    let output = export(&killed, &data, &[&["run"][..], &config_arg[..]].concat());
    let resumed_after_kill =
        render_all(&killed, &data, &dir.join("out-killed"), &closed_periods(&output));
    assert_eq!(
        first_files,
        all_files(&resumed_after_kill),
        "the exporter resumed after SIGKILL wrote other bytes"
    );
    // And a re-run of the period by the first exporter.
    let again = render_all(&state, &data, &dir.join("out-again"), &closed);
    assert_eq!(first_files, all_files(&again), "a re-run wrote other bytes");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The pain.001 structure: GrpHdr and PmtInf NbOfTxs and CtrlSum equal the transfers, which equal
/// the CSV's.
fn check_pain001(text: &str, csv: &[BTreeMap<String, String>]) {
    let document = pinswitch_exporter::xml::parse(text).expect("well-formed XML");
    assert_eq!(document.attribute("xmlns"), Some("urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"));
    let initiation = document.child("CstmrCdtTrfInitn").expect("CstmrCdtTrfInitn");
    let payment = initiation.child("PmtInf").expect("PmtInf");
    let amounts: Vec<u64> = payment
        .children_named("CdtTrfTxInf")
        .map(|transfer| {
            transfer.path(&["Amt", "InstdAmt"]).expect("InstdAmt").text.parse().unwrap()
        })
        .collect();
    let csv_amounts: Vec<u64> = csv.iter().map(|row| row["amount_won"].parse().unwrap()).collect();
    assert_eq!(amounts, csv_amounts);
    for block in [initiation.child("GrpHdr").expect("GrpHdr"), payment] {
        assert_eq!(block.child("NbOfTxs").unwrap().text, amounts.len().to_string());
        assert_eq!(block.child("CtrlSum").unwrap().text, amounts.iter().sum::<u64>().to_string());
    }
}

/// A camt.054 deposit notice sells the paid orders through the protocol, once: a second run with
/// the same notice sells nothing more, and the exporter then sees the sales (deposit without
/// bankbook, means 3) in the period's channel files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposit_notices_sell_paid_orders_once() {
    let dir = fresh_dir("export-deposits");
    let data = dir.join("data");
    let state = dir.join("state");
    // Rules other than the baseline: the switch journals them, the exporter needs no --config.
    let config = dir.join("switch.toml");
    std::fs::write(&config, "[engine]\nhold_ttl_default_s = 120\nrefund_used_percent = 50\n")
        .expect("config");
    let mut switch = Switch::start(
        &switch_binary(EXPORTER),
        &data,
        &["--config", config.to_str().expect("utf-8")],
    );
    let orders = dir.join("orders.csv");
    std::fs::write(&orders, "order_ref,face_value_won,price_won,channel_id,gift_recipient_ref\nORD-1,10000,10000,9,0\nORD-2,20000,20000,9,55\nORD-3,5000,5000,9,0\n").expect("orders");
    let entry = |amount: u64, entry_ref: &str, refs: &str| {
        format!(
            "<Ntry><Amt Ccy=\"KRW\">{amount}</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts><BookgDt><Dt>2026-05-01</Dt></BookgDt><AcctSvcrRef>{entry_ref}</AcctSvcrRef><NtryDtls><TxDtls>{refs}</TxDtls></NtryDtls></Ntry>"
        )
    };
    let notice = format!(
        "<?xml version=\"1.0\"?><Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.054.001.08\"><BkToCstmrDbtCdtNtfctn><GrpHdr><MsgId>N1</MsgId></GrpHdr><Ntfctn><Id>N1</Id>{}{}{}</Ntfctn></BkToCstmrDbtCdtNtfctn></Document>",
        entry(10_000, "B-1", "<Refs><EndToEndId>ORD-1</EndToEndId></Refs>"),
        entry(20_000, "B-2", "<RmtInf><Ustrd>ORD-2</Ustrd></RmtInf>"),
        entry(3_000, "B-9", "<RmtInf><Ustrd>who?</Ustrd></RmtInf>"),
    );
    let camt = dir.join("notice.xml");
    std::fs::write(&camt, notice).expect("notice");
    let args = [
        "deposits",
        "--camt",
        camt.to_str().unwrap(),
        "--orders",
        orders.to_str().unwrap(),
        "--connect",
        &switch.address,
    ];
    let first = stdout(&export(&state, &data, &args));
    let sold: Vec<(String, u64)> = first
        .lines()
        .filter_map(|line| line.strip_prefix("sold "))
        .map(|rest| {
            let mut parts = rest.split_whitespace();
            (
                parts.next().unwrap().to_string(),
                pinswitch_protocol::pin::parse(parts.next().unwrap()).expect("a PIN"),
            )
        })
        .collect();
    assert_eq!(
        sold.iter().map(|(order, _)| order.as_str()).collect::<Vec<_>>(),
        ["ORD-1", "ORD-2"],
        "{first}"
    );
    assert!(
        first.contains("pending: ORD-3") && first.contains("unmatched credit B-9 of 3000 won"),
        "{first}"
    );
    let client = Client::connect(&switch.address).await.expect("connect");
    for (_, card_pin) in &sold {
        let card = one(client
            .balance_inquiry(&[pinswitch_protocol::BalanceInquiry { pin: *card_pin }])
            .await)
        .await;
        assert_eq!(card.state, pinswitch_protocol::CardState::Sold as u8);
    }
    let again = stdout(&export(&state, &data, &args));
    assert!(!again.contains("sold ") && again.contains("already done: 2"), "{again}");
    switch.stop();

    let run = stdout(&export(&state, &data, &["run"]));
    assert!(run.contains("reconciled") && !run.contains("NOT RECONCILED"), "{run}");
    let periods = render_all(&state, &data, &dir.join("out"), &closed_periods_text(&run));
    let sales: Vec<BTreeMap<String, String>> =
        periods.iter().flat_map(|period| rows(&period.join("channel-sales.csv"))).collect();
    let summary: Vec<(&str, &str, &str)> = sales
        .iter()
        .map(|row| {
            (row["channel_id"].as_str(), row["price_won"].as_str(), row["payment_means"].as_str())
        })
        .collect();
    assert_eq!(summary, [("9", "10000", "3"), ("9", "20000", "3")]);
    assert_eq!(sales[1]["gift"], "true");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

fn closed_periods_text(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("closed period ").map(str::to_string))
        .collect()
}
