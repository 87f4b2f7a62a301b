//! The exporter against journals written here, record by record, by the same engine the switch
//! runs, at chosen server times: a card's validity (1 day under the test rules) runs out, holds
//! expire, and three days of periods close, none of which a test over TCP can do without waiting
//! for the wall clock. Every statement total, payout, breakage line and channel sum is checked
//! against figures worked out by hand below, the foreign partners' settlement against sums taken
//! from the list of conversions the journal was written from; the trial balance and the
//! safeguarding reconciliation must hold; and an exporter stopped after every possible number of
//! records and restarted from its saved state must write byte-identical files.

use std::collections::BTreeMap;
use std::path::Path;

use pinswitch_core::{
    Body, Command, EngineConfig, ForeignCode, ForeignProduct, JournalEntry, Reply, Shard,
    encode_entry, shard_of_card,
};
use pinswitch_exporter::{Cutoff, ExportConfig, Exporter, Options, parse_date, xml};
use pinswitch_journal::{Journal, JournalOptions};
use pinswitch_protocol::ResultCode;

const SHARDS: u16 = 2;
const HOUR_MS: u64 = 3_600_000;
const MAC: u64 = 7;

/// Writes journals the way the server does: apply, and append + commit what changed.
struct Switch {
    shards: Vec<(Shard, Journal)>,
    next_op: u128,
}

impl Switch {
    fn new(data: &Path) -> Switch {
        std::fs::write(data.join("shards.count"), format!("{SHARDS}\n")).unwrap();
        let shards = (0..SHARDS)
            .map(|shard| {
                let dir = data.join(format!("shard-{shard:03}"));
                std::fs::create_dir_all(&dir).unwrap();
                let (_, recovery) = Journal::recover(&dir, JournalOptions::test_min()).unwrap();
                (
                    Shard::first_format(shard, SHARDS, EngineConfig::test_min(), [0, 0]),
                    recovery.into_journal().unwrap(),
                )
            })
            .collect();
        Switch { shards, next_op: 0 }
    }

    /// Runs `body` at `now_ms` under a fresh op id (its time is `now_ms`) on the shard its card
    /// (or foreign PIN) routes to; returns (op id, reply).
    fn run(&mut self, now_ms: u64, body: Body) -> (u128, Reply) {
        let shard = shard_of_card(body.route_key().unwrap(), SHARDS);
        self.run_on(shard, now_ms, body)
    }

    fn run_on(&mut self, shard: u16, now_ms: u64, body: Body) -> (u128, Reply) {
        self.next_op += 1;
        let op_id = (u128::from(now_ms) << 80) | self.next_op;
        (op_id, self.apply(shard, now_ms, Command { op_id, deadline_at_ms: 0, body }))
    }

    fn apply(&mut self, shard: u16, now_ms: u64, command: Command) -> Reply {
        let (engine, journal) = &mut self.shards[usize::from(shard)];
        let applied = engine.apply(now_ms, &command);
        if applied.changed {
            journal
                .append(&encode_entry(&JournalEntry { now_ms, command, reply: applied.reply }))
                .unwrap();
            journal.commit().unwrap();
        }
        applied.reply
    }

    /// Moves every shard's clock: a Tick where holds are due, else a new card's issue.
    fn touch_all(&mut self, now_ms: u64, pins: &[u128]) {
        for pin in pins {
            let reply = self.run(now_ms, Body::Issue { pin_hash: *pin, face_value_won: 5_000 }).1;
            assert_eq!(reply.code, ResultCode::Approved.as_u16());
        }
    }
}

fn approved(reply: Reply) -> Reply {
    assert_eq!(ResultCode::from_u16(reply.code), Some(ResultCode::Approved), "{reply:?}");
    reply
}

/// A PIN hash owned by `shard`, distinct per `n`.
fn pin_on(shard: u16, n: u64) -> u128 {
    (1..)
        .map(|i: u128| (i * 0x9E37_79B9_7F4A_7C15 + u128::from(n) * 0x1_0000) << 64 | u128::from(n))
        .find(|pin| shard_of_card(*pin, SHARDS) == shard)
        .unwrap()
}

/// A foreign PIN converted in `write_journals`: (partner, product, currency, face value in minor
/// units, won price).
type Conversion = (u32, u32, &'static str, u64, u64);

/// Three days of traffic; the figures in the assertions follow from it. Returns the foreign PINs
/// converted, for the partners' settlement to be summed independently.
fn write_journals(data: &Path, t0_ms: u64) -> Vec<Conversion> {
    let mut switch = Switch::new(data);
    let (a, b, c, d) = (pin_on(0, 1), pin_on(1, 2), pin_on(0, 3), pin_on(1, 4));
    for (pin, face) in [(a, 10_000), (b, 20_000), (c, 50_000), (d, 5_000)] {
        approved(switch.run(t0_ms, Body::Issue { pin_hash: pin, face_value_won: face }).1);
    }
    approved(
        switch
            .run(t0_ms, Body::Consign { pin_hash: c, partner_id: 21, commission_per_mille: 35 })
            .1,
    );
    let sell = |pin, channel_id, price_won, payment_means| Body::Sell {
        pin_hash: pin,
        channel_id,
        price_won,
        payment_means,
        gift_recipient_ref: 0,
    };
    approved(switch.run(t0_ms, sell(a, 3, 9_500, 4)).1);
    approved(switch.run(t0_ms, sell(c, 21, 50_000, 5)).1);
    approved(switch.run(t0_ms, sell(d, 3, 5_000, 1)).1);
    for pin in [a, b, c, d] {
        approved(switch.run(t0_ms, Body::Activate { pin_hash: pin, password_mac: MAC }).1);
    }
    let sale = |pin, amount_won, merchant_id| Body::Sale {
        pin_hash: pin,
        password_mac: MAC,
        amount_won,
        merchant_id,
        category: 1,
    };
    let (sale_a77, _) = switch.run(t0_ms + 1000, sale(a, 1_500, 77));
    approved(
        switch
            .run(
                t0_ms + 2000,
                Body::Refund { pin_hash: a, original_op_id: sale_a77, amount_won: 500 },
            )
            .1,
    );
    let (sale_a78, reply) = switch.run(t0_ms + 3000, sale(a, 7_000, 78));
    approved(reply);
    let payout = approved(
        switch.run(t0_ms + 4000, Body::BalanceRefund { pin_hash: a, payout_account_ref: 42 }).1,
    );
    assert_eq!(payout.amount_won, 2_000);
    let reversal = approved(
        switch.run(t0_ms + 5000, Body::Reverse { pin_hash: a, original_op_id: sale_a78 }).1,
    );
    assert_eq!(reversal.amount_won, 7_000);
    let authorize = |pin, amount_won, merchant_id| Body::Authorize {
        pin_hash: pin,
        password_mac: MAC,
        amount_won,
        merchant_id,
        category: 1,
        hold_ttl_s: 0,
    };
    let (hold_b, reply) = switch.run(t0_ms + HOUR_MS, authorize(b, 5_000, 88));
    approved(reply);
    let (capture_b, reply) = switch.run(
        t0_ms + HOUR_MS + 10_000,
        Body::Capture { pin_hash: b, hold_id: hold_b, amount_won: 3_000, final_capture: false },
    );
    approved(reply);
    approved(
        switch
            .run(
                t0_ms + HOUR_MS + 20_000,
                Body::Refund { pin_hash: b, original_op_id: capture_b, amount_won: 1_000 },
            )
            .1,
    );
    approved(
        switch.run(t0_ms + HOUR_MS, Body::Load { pin_hash: d, amount_won: 10_000, funding: 2 }).1,
    );
    let (sale_d77, reply) = switch.run(t0_ms + HOUR_MS, sale(d, 4_000, 77));
    approved(reply);
    approved(switch.run(t0_ms + 2 * HOUR_MS, authorize(d, 2_000, 77)).1);
    let (hold_c, reply) = switch.run(t0_ms + 2 * HOUR_MS, authorize(c, 1_000, 88));
    approved(reply);
    approved(switch.run(t0_ms + 2 * HOUR_MS + 1000, Body::Void { pin_hash: c, hold_id: hold_c }).1);

    // Foreign PINs (the test rules' catalogue: product 1, partner 501, a 10-dollar PIN for
    // 14,000 won; product 2, partner 502, 1,000 yen for 9,500 won) go into the pool of the shard
    // their hash routes to; C (shard 0) and a new card E (shard 1) convert.
    let t_ms = t0_ms + 2 * HOUR_MS + 2000;
    for (n, product_id) in [(100, 1), (101, 1), (102, 2), (103, 1)] {
        let shard = if n == 103 { 1 } else { 0 };
        let code = ForeignCode::new(format!("PIN-{n}").as_bytes()).unwrap();
        approved(
            switch
                .run(t_ms, Body::ForeignImport { foreign_hash: pin_on(shard, n), product_id, code })
                .1,
        );
    }
    let convert =
        |pin, product_id| Body::ForeignConvert { pin_hash: pin, password_mac: MAC, product_id };
    let mut conversions = Vec::new();
    assert_eq!(approved(switch.run(t_ms + 1000, convert(c, 1)).1).amount_won, 14_000);
    conversions.push((501, 1, "USD", 1_000, 14_000));
    assert_eq!(approved(switch.run(t_ms + 2000, convert(c, 2)).1).amount_won, 9_500);
    conversions.push((502, 2, "JPY", 1_000, 9_500));
    // Shard 0's catalogue reprices product 1 (a SIGHUP reload journals a CONFIGURE per shard).
    let mut repriced = EngineConfig::test_min();
    repriced.foreign_products[0] =
        ForeignProduct { price_won: 15_000, ..repriced.foreign_products[0].clone() };
    approved(switch.run_on(0, t_ms + 3000, Body::configure(&repriced)).1);
    assert_eq!(approved(switch.run(t_ms + 4000, convert(c, 1)).1).amount_won, 15_000);
    conversions.push((501, 1, "USD", 1_000, 15_000));
    // Shard 0 has no yen PIN left: declined, and nobody is owed anything for it.
    let declined = switch.run(t_ms + 5000, convert(c, 2)).1;
    assert_eq!(ResultCode::from_u16(declined.code), Some(ResultCode::ForeignPinUnavailable));
    let e = pin_on(1, 5);
    approved(switch.run(t_ms, Body::Issue { pin_hash: e, face_value_won: 30_000 }).1);
    approved(switch.run(t_ms, Body::Activate { pin_hash: e, password_mac: MAC }).1);
    assert_eq!(approved(switch.run(t_ms + 6000, convert(e, 1)).1).amount_won, 14_000);
    conversions.push((501, 1, "USD", 1_000, 14_000));
    // The due holds (B's remaining 2,000, D's 2,000) expire with the shards' next records.
    switch.touch_all(t0_ms + 3 * HOUR_MS, &[pin_on(0, 10), pin_on(1, 11)]);

    // Day 2: the cards sold at t0 are past their 1-day validity.
    let day2_ms = t0_ms + 25 * HOUR_MS;
    let declined = switch.run(day2_ms, sale(d, 100, 77)).1;
    assert_eq!(ResultCode::from_u16(declined.code), Some(ResultCode::CardExpired));
    approved(switch.run(day2_ms + 1000, Body::Reverse { pin_hash: d, original_op_id: sale_d77 }).1);
    let closed =
        switch.run(day2_ms + 2000, Body::Load { pin_hash: a, amount_won: 10_000, funding: 4 }).1;
    assert_eq!(ResultCode::from_u16(closed.code), Some(ResultCode::CardClosed));

    // Day 3: every shard moves on, so day 2 closes too.
    switch.touch_all(t0_ms + 49 * HOUR_MS, &[pin_on(0, 12), pin_on(1, 13)]);
    conversions
}

/// Foreign partners: 50 per mille kept on partner 501's PINs, 20 on everybody else's.
const FOREIGN_RATES: [(u32, u64); 2] = [(501, 50), (0, 20)];

fn foreign_rate(partner_id: u32) -> u64 {
    FOREIGN_RATES
        .iter()
        .find(|(partner, _)| *partner == partner_id || *partner == 0)
        .map(|(_, rate)| *rate)
        .unwrap()
}

fn options(data: &Path, state: &Path) -> Options {
    let mut config = ExportConfig::default();
    config.foreign_partners.default_commission_per_mille = foreign_rate(0) as u16;
    config.foreign_partners.rates.insert("501".into(), foreign_rate(501) as u16);
    Options {
        data_dir: data.to_path_buf(),
        state_dir: state.to_path_buf(),
        engine: EngineConfig::test_min(),
        config,
    }
}

/// Every file under `dir`, by relative name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for day in std::fs::read_dir(dir.join("periods")).unwrap() {
        let day = day.unwrap().path();
        for file in std::fs::read_dir(&day).unwrap() {
            let file = file.unwrap().path();
            let name = format!(
                "{}/{}",
                day.file_name().unwrap().to_string_lossy(),
                file.file_name().unwrap().to_string_lossy()
            );
            out.insert(name, std::fs::read(&file).unwrap());
        }
    }
    out
}

fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
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

fn read(state: &Path, name: &str) -> String {
    std::fs::read_to_string(state.join("periods").join(name)).unwrap()
}

/// A temporary root with the three days' journals in `root/data`, from 10:00 KST on 1 May 2026;
/// returns the root, the data directory, the first day and the foreign PINs converted.
fn journals_and_conversions() -> (tempfile::TempDir, std::path::PathBuf, i64, Vec<Conversion>) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cutoff = Cutoff { utc_offset_hours: 9, cutoff_hour: 0 };
    let day1 = parse_date("2026-05-01").unwrap();
    let conversions = write_journals(&data, cutoff.start_ms(day1) as u64 + 10 * HOUR_MS);
    (root, data, day1, conversions)
}

fn journals() -> (tempfile::TempDir, std::path::PathBuf, i64) {
    let (root, data, day1, _) = journals_and_conversions();
    (root, data, day1)
}

#[test]
fn three_days_settle_to_hand_computed_figures_and_resume_byte_identically() {
    let (root, data, day1, conversions) = journals_and_conversions();

    let state = root.path().join("state");
    let mut exporter = Exporter::open(options(&data, &state)).unwrap();
    let report = exporter.run(None, 0).unwrap();
    assert!(!report.stopped_early);
    // Day 3 stays open: nothing newer shows the shards passed its end, and the wall clock (0)
    // does not either.
    assert_eq!(report.closed, vec![day1, day1 + 1]);
    let status = exporter.status().unwrap();
    assert!(status.reconciled(), "{status}");
    assert!(status.shards.iter().all(|shard| shard.lag_records == 0
        && shard.cursor_seq == shard.head_seq
        && shard.head_seq > 0));
    assert_eq!(status.open_periods, vec![day1 + 2]);

    // Merchant statements, day 1 (default commission 25 per mille, floor of the net).
    let statements = csv_rows(&read(&state, "2026-05-01/statements.csv"));
    let by_merchant: BTreeMap<&str, &BTreeMap<String, String>> =
        statements.iter().map(|row| (row["merchant_id"].as_str(), row)).collect();
    let expect = |merchant: &str, figures: [(&str, &str); 7]| {
        for (column, value) in figures {
            assert_eq!(by_merchant[merchant][column], value, "merchant {merchant} {column}");
        }
    };
    // 77: sales 1,500 (A) and 4,000 (D), 500 refunded; commission 25 + 100 = 125.
    expect(
        "77",
        [
            ("sales_count", "2"),
            ("gross_won", "5500"),
            ("refunds_count", "1"),
            ("refunds_won", "500"),
            ("commission_won", "125"),
            ("net_won", "4875"),
            ("payout_won", "4875"),
        ],
    );
    // 78: a 7,000 sale reversed the same day: nothing due.
    expect(
        "78",
        [
            ("sales_count", "1"),
            ("gross_won", "7000"),
            ("refunds_count", "1"),
            ("refunds_won", "7000"),
            ("commission_won", "0"),
            ("net_won", "0"),
            ("payout_won", "0"),
        ],
    );
    // 88: 3,000 captured of a 5,000 hold, 1,000 refunded; the voided hold on C is no sale.
    expect(
        "88",
        [
            ("sales_count", "1"),
            ("gross_won", "3000"),
            ("refunds_count", "1"),
            ("refunds_won", "1000"),
            ("commission_won", "50"),
            ("net_won", "1950"),
            ("payout_won", "1950"),
        ],
    );
    // Day 2: D's sale reversed onto the expired card: 77 owes 3,900, carried forward.
    let day2 = csv_rows(&read(&state, "2026-05-02/statements.csv"));
    assert_eq!(day2.len(), 1);
    assert_eq!(
        (
            day2[0]["merchant_id"].as_str(),
            day2[0]["refunds_won"].as_str(),
            day2[0]["commission_won"].as_str()
        ),
        ("77", "4000", "-100")
    );
    assert_eq!(
        (
            day2[0]["net_won"].as_str(),
            day2[0]["payout_won"].as_str(),
            day2[0]["carried_forward_won"].as_str()
        ),
        ("-3900", "0", "-3900")
    );

    // Payouts: merchants 77 and 88; A's balance refund and the reversal that joined it.
    let merchants = xml::parse(&read(&state, "2026-05-01/payouts-merchants.pain.001.xml")).unwrap();
    check_pain001(&merchants, &[4875, 1950]);
    let refunds = xml::parse(&read(&state, "2026-05-01/payouts-refunds.pain.001.xml")).unwrap();
    check_pain001(&refunds, &[2000, 7000]);
    assert!(
        !state.join("periods/2026-05-02/payouts-merchants.pain.001.xml").exists(),
        "no transfer, no pain.001"
    );

    // Breakage, day 2: D's 11,000 left at expiry, then the 4,000 reversal onto it.
    let breakage = csv_rows(&read(&state, "2026-05-02/breakage.csv"));
    let amounts: Vec<(&str, &str)> =
        breakage.iter().map(|row| (row["amount_won"].as_str(), row["cause"].as_str())).collect();
    assert_eq!(amounts, vec![("11000", "expiry"), ("4000", "reversal-after-expiry")]);

    // Channel sales, day 1: channel 3 sold A (9,500) and D (5,000); partner 21 sold C with 35 per mille.
    let channels = csv_rows(&read(&state, "2026-05-01/channel-summary.csv"));
    let summary: Vec<Vec<&str>> = channels
        .iter()
        .map(|row| {
            [
                "channel_id",
                "cards_sold",
                "face_value_won",
                "gross_won",
                "commission_won",
                "net_receivable_won",
            ]
            .iter()
            .map(|key| row[*key].as_str())
            .collect()
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            vec!["3", "2", "15000", "14500", "0", "14500"],
            vec!["21", "1", "50000", "50000", "1750", "48250"]
        ]
    );

    // The month's mobile-operator remittance: C sold by partner 21 by mobile bill (May is open).
    let (month_dir, is_final) =
        exporter.render_month(2026, 5, Some(&root.path().join("may"))).unwrap();
    assert!(!is_final);
    let operators =
        csv_rows(&std::fs::read_to_string(month_dir.join("operator-remittance.csv")).unwrap());
    let operator: Vec<&str> =
        ["operator_channel", "cards_sold", "gross_won", "commission_won", "net_due_won"]
            .iter()
            .map(|key| operators[0][*key].as_str())
            .collect();
    assert_eq!((operators.len(), operator), (1, vec!["21", "1", "50000", "1750", "48250"]));

    // Foreign partners, day 1: per partner and product, the PINs, their face value in the
    // currency's minor units, the won gross, the commission (floor per conversion) and the net
    // due, summed here from the conversions the journal was written from.
    let mut expected: BTreeMap<(String, String, String), [u64; 5]> = BTreeMap::new();
    for (partner_id, product_id, currency, face_minor, price_won) in &conversions {
        let commission_won = price_won * foreign_rate(*partner_id) / 1000;
        let sums = expected
            .entry((partner_id.to_string(), product_id.to_string(), currency.to_string()))
            .or_default();
        for (sum, add) in sums.iter_mut().zip([
            1,
            *face_minor,
            *price_won,
            commission_won,
            price_won - commission_won,
        ]) {
            *sum += add;
        }
    }
    let partner_csv = read(&state, "2026-05-01/foreign-partners.csv");
    let settled: BTreeMap<(String, String, String), [u64; 5]> = csv_rows(&partner_csv)
        .iter()
        .map(|row| {
            let key =
                (row["partner_id"].clone(), row["product_id"].clone(), row["currency"].clone());
            assert_eq!(row["settlement_id"], format!("FPS-{}-20260501", row["partner_id"]));
            (
                key,
                ["pins", "face_value_minor", "gross_won", "commission_won", "net_due_won"]
                    .map(|column| row[column].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(settled, expected);
    // By hand, for the reader: 501 three USD PINs, 14,000 + 15,000 (repriced) + 14,000.
    assert_eq!(
        expected[&("501".into(), "1".into(), "USD".into())],
        [3, 3_000, 43_000, 2_150, 40_850]
    );
    let net_due: u64 = expected.values().map(|sums| sums[4]).sum();
    assert_eq!(
        partner_csv.lines().last().unwrap(),
        format!("TRAILER,2,,,4,,52500,,2340,{net_due}")
    );
    let conversion_lines = csv_rows(&read(&state, "2026-05-01/foreign-conversions.csv"));
    let prices: Vec<&str> = conversion_lines.iter().map(|row| row["price_won"].as_str()).collect();
    assert_eq!(prices, ["14000", "9500", "15000", "14000"], "the declined conversion owes nothing");
    let summary = read(&state, "2026-05-01/summary.txt");
    assert!(summary.contains(&format!("foreign-PIN conversions  4 PINs, gross 52500 won, commission 2340 won, net due to 2 partners {net_due} won")), "{summary}");
    assert!(summary.contains("partner 501             3 PINs (USD 3000 minor units), gross 43000 won, commission 2150 won, net due 40850 won"), "{summary}");
    assert!(
        !read(&state, "2026-05-02/foreign-partners.csv").contains("\n5"),
        "no conversions on day 2"
    );

    // Retention: one tag per journal record; ≤10,000 won and authorizations 1 year, else 5.
    let retention = csv_rows(&read(&state, "2026-05-01/retention.csv"));
    let day1_records: u64 = read(&state, "2026-05-01/summary.txt")
        .lines()
        .find(|line| line.starts_with("journal records"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retention.len() as u64, day1_records);
    for row in &retention {
        let amount: u64 = row["amount_won"].parse().unwrap();
        let expected = if row["kind"] == "authorize"
            || row["kind"] == "void"
            || (1..=10_000).contains(&amount)
        {
            "1"
        } else {
            "5"
        };
        assert_eq!(row["retain_years"], expected, "{row:?}");
    }
    let sold_c =
        retention.iter().find(|row| row["kind"] == "sell" && row["amount_won"] == "50000").unwrap();
    assert_eq!(sold_c["retain_until"], "2031-05-01");

    // Trial balances balance, and the ledger says what the engines say.
    for day in ["2026-05-01", "2026-05-02"] {
        let trial = read(&state, &format!("{day}/trial-balance.csv"));
        assert!(trial.lines().last().unwrap().ends_with(",balanced"), "{trial}");
    }
    let ledger = exporter.ledger().unwrap();
    assert_eq!(ledger.trial_balance().check(), Ok(()));
    let totals = exporter.engine_totals();
    assert_eq!(totals.breakage_won, 15_000);
    assert_eq!(totals.paid_out_won, 9_000);
    // What the partners are owed stays in 2500 until paid: the net due, per partner.
    use pinswitch_exporter::ledger::Account;
    for (partner_id, net_won) in [(501u32, 40_850i128), (502, 9_310)] {
        let payable = Account::ForeignPartnerPayable { partner_id };
        assert_eq!(
            ledger.sides(&payable).balance_won(payable.normal_side()),
            net_won,
            "partner {partner_id}"
        );
    }

    // Re-rendering a closed period rewrites the same bytes.
    let expected_files = files(&state);
    let again = root.path().join("again");
    exporter.render_period(day1, Some(&again)).unwrap();
    for (name, bytes) in &expected_files {
        if let Some(file) = name.strip_prefix("2026-05-01/").filter(|file| *file != "facts.bin") {
            assert_eq!(&std::fs::read(again.join(file)).unwrap(), bytes, "{name}");
        }
    }

    // Stopped after any number of records and restarted from disk: the same files.
    let total_records: u64 = status.shards.iter().map(|shard| shard.head_seq).sum();
    for budget in 1..=total_records {
        let resumed = root.path().join(format!("resumed-{budget}"));
        let mut runs = 0;
        loop {
            let mut exporter = Exporter::open(options(&data, &resumed)).unwrap();
            runs += 1;
            if !exporter.run(Some(budget), 0).unwrap().stopped_early {
                break;
            }
        }
        assert!(runs >= (total_records / budget) as usize);
        assert_eq!(files(&resumed), expected_files, "resumed with a budget of {budget} records");
    }
}

/// GrpHdr and PmtInf counts and control sums equal the transfers', which are `amounts`.
fn check_pain001(document: &xml::Element, amounts: &[u128]) {
    assert_eq!(document.name, "Document");
    assert_eq!(document.attribute("xmlns"), Some("urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"));
    let initiation = document.child("CstmrCdtTrfInitn").unwrap();
    let header = initiation.child("GrpHdr").unwrap();
    let payment = initiation.child("PmtInf").unwrap();
    let transfers: Vec<u128> = payment
        .children_named("CdtTrfTxInf")
        .map(|transfer| {
            let amount = transfer.path(&["Amt", "InstdAmt"]).unwrap();
            assert_eq!(amount.attribute("Ccy"), Some("KRW"));
            assert!(
                transfer
                    .path(&["PmtId", "EndToEndId"])
                    .is_some_and(|id| !id.text.is_empty() && id.text.len() <= 35)
            );
            amount.text.parse().unwrap()
        })
        .collect();
    assert_eq!(transfers, amounts);
    let sum: u128 = amounts.iter().sum();
    for block in [header, payment] {
        assert_eq!(block.child("NbOfTxs").unwrap().text, amounts.len().to_string());
        assert_eq!(block.child("CtrlSum").unwrap().text, sum.to_string());
    }
    assert!(header.child("MsgId").is_some_and(|id| id.text.len() <= 35));
    assert_eq!(payment.child("PmtMtd").unwrap().text, "TRF");
}

/// Other engine rules than the switch's make the shadow answer differently: the run stops at
/// that record, names it, and keeps nothing of it; a damaged state file is an error, not a panic.
#[test]
fn wrong_rules_and_damaged_state_are_errors() {
    let (root, data, _) = journals();
    let state = root.path().join("state");
    let production = Options { engine: EngineConfig::production(), ..options(&data, &state) };
    let error = Exporter::open(production.clone()).unwrap().run(None, 0).expect_err("diverges");
    // Under production rules the first hold gets another default lifetime (15 minutes, not 60 s).
    assert!(
        matches!(error, pinswitch_exporter::ExportError::Diverged { shard: 0, seq: 13, .. }),
        "{error}"
    );
    assert!(!state.join("state.bin").exists(), "nothing of a failed run is kept");
    let mut exporter = Exporter::open(options(&data, &state)).unwrap();
    exporter.run(None, 0).unwrap();
    assert!(exporter.status().unwrap().reconciled());
    drop(exporter);
    let path = state.join("state.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Exporter::open(options(&data, &state)),
        Err(pinswitch_exporter::ExportError::State { .. })
    ));
}

/// One exporter at a time runs on a state directory; looking at it meanwhile changes nothing.
#[test]
fn a_second_runner_is_refused_and_readers_change_nothing() {
    let (root, data, day1) = journals();
    let state = root.path().join("state");
    let mut exporter = Exporter::open(options(&data, &state)).unwrap();
    exporter.run(Some(20), 0).unwrap();
    assert!(matches!(
        Exporter::open(options(&data, &state)),
        Err(pinswitch_exporter::ExportError::Locked(_))
    ));
    let reader = Exporter::open_read_only(options(&data, &state)).unwrap();
    let (dir, is_final) = reader.render_period(day1, Some(&root.path().join("peek"))).unwrap();
    assert!(!is_final && dir.join("summary.txt").exists());
    // The runner goes on undisturbed and ends where a single run ends.
    exporter.run(None, 0).unwrap();
    assert!(exporter.status().unwrap().reconciled());
    drop(exporter);
    assert!(Exporter::open(options(&data, &state)).is_ok(), "the lock goes with the runner");
}

/// The card statements the exporter's index gives for the three days, against the figures of
/// `write_journals`, and identical after the exporter was stopped and restarted after every few
/// records (the index is cut back to the cursor, nothing counted twice).
#[test]
fn card_statements_from_the_index_match_the_journals_and_survive_restarts() {
    use pinswitch_exporter::statement::{StatementIndex, StatementLimits, StatementPage};
    let (root, data, _) = journals();
    let state = root.path().join("state");
    Exporter::open(options(&data, &state)).unwrap().run(None, 0).unwrap();
    let limits = StatementLimits { lines_max: 1000, recharges_max: 100 };
    let name = |id: u64| format!("m{id}");
    let statement = |state: &Path, pin| {
        StatementIndex::open(state, SHARDS)
            .unwrap()
            .statement(pin, &StatementPage::default(), &limits, &name)
            .unwrap()
            .unwrap()
    };
    let (a, b, d) = (pin_on(0, 1), pin_on(1, 2), pin_on(1, 4));

    // A: sold by channel 3 for 9,500; 1,500 and 7,000 paid, 500 refunded, 2,000 paid out, then
    // the 7,000 sale reversed onto the closed card.
    let card_a = statement(&state, a);
    assert_eq!(
        (card_a.face_value_won, card_a.price_won, card_a.channel_id, card_a.state),
        (10_000, 9_500, 3, 6)
    );
    assert_eq!(
        (
            card_a.paid_by_category_won,
            card_a.merchant_refunds_won,
            card_a.reversals_won,
            card_a.balance_refund_won
        ),
        ([8_500, 0, 0, 0, 0, 0], 500, 7_000, 2_000)
    );
    assert_eq!((card_a.refunded_won, card_a.balance_won, card_a.lines_total), (9_500, 0, 4));
    let lines: Vec<(u8, &str, u64)> = card_a
        .lines
        .iter()
        .map(|line| (line.kind, line.merchant_name.as_str(), line.amount_won))
        .collect();
    assert_eq!(lines, [(1, "m77", 1_500), (2, "m77", 500), (1, "m78", 7_000), (3, "m78", 7_000)]);
    // B: activated unsold; 3,000 captured of a hold, 1,000 refunded; the rest of the hold expired.
    let card_b = statement(&state, b);
    assert_eq!(
        (
            card_b.sold_at_ms,
            card_b.paid_by_category_won[0],
            card_b.merchant_refunds_won,
            card_b.balance_won
        ),
        (0, 3_000, 1_000, 18_000)
    );
    // D: recharged 10,000 by bank transfer, paid 4,000, expired with 11,000, then the sale reversed.
    let card_d = statement(&state, d);
    assert_eq!(
        (card_d.recharge_count, card_d.recharged_won, card_d.recharges[0].funding),
        (1, 10_000, 2)
    );
    assert_eq!(
        (
            card_d.paid_by_category_won[0],
            card_d.breakage_won,
            card_d.reversals_won,
            card_d.balance_won,
            card_d.state
        ),
        (4_000, 11_000, 4_000, 0, 5)
    );

    let entries = |state: &Path| {
        (0..SHARDS)
            .map(|shard| {
                std::fs::read(state.join(format!("statements/shard-{shard:03}.entries"))).unwrap()
            })
            .collect::<Vec<_>>()
    };
    for budget in [1, 2, 3, 7, 13] {
        let resumed = root.path().join(format!("statements-{budget}"));
        while Exporter::open(options(&data, &resumed))
            .unwrap()
            .run(Some(budget), 0)
            .unwrap()
            .stopped_early
        {}
        assert_eq!(entries(&resumed), entries(&state), "budget {budget}");
        for pin in [a, b, d] {
            assert_eq!(statement(&resumed, pin), statement(&state, pin), "budget {budget}");
        }
    }
}

/// Charging sessions post like payments: each reservation moves card value into holds and back,
/// each debit (a capped one too) is service revenue of the session's category, and a hold that
/// expires in the same record as an update is told apart from the session's release.
#[test]
fn charging_sessions_post_reservations_and_service_revenue() {
    use pinswitch_core::pack_destination;
    use pinswitch_exporter::ledger::Account;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let t0_ms = parse_date("2026-05-01")
        .map(|day| Cutoff { utc_offset_hours: 9, cutoff_hour: 0 }.start_ms(day))
        .unwrap() as u64
        + 10 * HOUR_MS;
    let mut switch = Switch::new(&data);
    let card = pin_on(0, 20);
    approved(switch.run(t0_ms, Body::Issue { pin_hash: card, face_value_won: 10_000 }).1);
    approved(switch.run(t0_ms, Body::Activate { pin_hash: card, password_mac: MAC }).1);
    let hold = Body::Authorize {
        pin_hash: card,
        password_mac: MAC,
        amount_won: 5_000,
        merchant_id: 77,
        category: 1,
        hold_ttl_s: 60,
    };
    approved(switch.run(t0_ms, hold).1);
    let destination = pack_destination(b"0212345678").unwrap();
    let start = Body::SessionStart(Box::new(pinswitch_core::SessionOpen {
        pin_hash: card,
        session_id: 9,
        destination,
        requested_s: 100,
        owner_id: 1,
        password_mac: 0,
        category: 2,
    }));
    assert_eq!(approved(switch.run(t0_ms, start).1).available_won, 4_800);
    // 61 s later the hold has expired: the update debits 200 and reserves 600 s (1,200 won).
    let update = Body::SessionUpdate {
        pin_hash: card,
        session_id: 9,
        seq: 1,
        used_total_s: 100,
        requested_s: 600,
    };
    let reply = approved(switch.run(t0_ms + 61_000, update).1);
    assert_eq!((reply.amount_won, reply.available_won), (200, 8_600));
    // Far past the grant: 11,800 won due, 9,800 there.
    let end = Body::SessionEnd { pin_hash: card, session_id: 9, seq: 2, used_total_s: 6_000 };
    let reply = switch.run(t0_ms + 62_000, end).1;
    assert_eq!(
        (ResultCode::from_u16(reply.code), reply.amount_won, reply.balance_won),
        (Some(ResultCode::SessionUsageCapped), 9_800, 0)
    );

    let state = root.path().join("state");
    let mut exporter = Exporter::open(options(&data, &state)).unwrap();
    exporter.run(None, 0).unwrap();
    assert!(exporter.status().unwrap().reconciled());
    let ledger = exporter.ledger().unwrap();
    assert_eq!(ledger.trial_balance().check(), Ok(()));
    let revenue = ledger.accounts[&Account::ServiceRevenue { category: 2 }];
    assert_eq!((revenue.credits_won, revenue.debits_won), (10_000, 0));
    let holds = ledger.accounts[&Account::Holds];
    assert_eq!(holds.credits_won, holds.debits_won);
}

/// What a call switch adds: an event charge (service revenue, refunded and reversed back from
/// it), a call expired for silence by a Tick (its reservation released) whose late report is
/// still charged, and a call ended by an audit's close. The trial balance balances, the
/// ledger reconciles card by card, and revenue is exactly what the cards paid.
#[test]
fn event_charges_expired_and_audited_calls_post_and_reconcile() {
    use pinswitch_core::{SessionOpen, pack_destination};
    use pinswitch_exporter::ledger::Account;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let t0_ms = parse_date("2026-05-02")
        .map(|day| Cutoff { utc_offset_hours: 9, cutoff_hour: 0 }.start_ms(day))
        .unwrap() as u64
        + 10 * HOUR_MS;
    let mut switch = Switch::new(&data);
    let card = pin_on(1, 21);
    approved(switch.run(t0_ms, Body::Issue { pin_hash: card, face_value_won: 10_000 }).1);
    approved(switch.run(t0_ms, Body::Activate { pin_hash: card, password_mac: MAC }).1);
    let info = pack_destination(b"15881234").unwrap();
    let (charge, reply) = switch.run(
        t0_ms,
        Body::EventCharge {
            pin_hash: card,
            password_mac: 0,
            destination: info,
            units: 3,
            category: 3,
        },
    );
    assert_eq!(approved(reply).amount_won, 1_500);
    approved(
        switch
            .run(t0_ms, Body::Refund { pin_hash: card, original_op_id: charge, amount_won: 500 })
            .1,
    );
    let reversed =
        approved(switch.run(t0_ms, Body::Reverse { pin_hash: card, original_op_id: charge }).1);
    assert_eq!(reversed.amount_won, 1_000);
    approved(
        switch
            .run(
                t0_ms,
                Body::EventCharge {
                    pin_hash: card,
                    password_mac: 0,
                    destination: info,
                    units: 1,
                    category: 3,
                },
            )
            .1,
    );
    // Two domestic calls (2 won a second), 60 s reserved each.
    let domestic = pack_destination(b"0212345678").unwrap();
    let open = |session_id| {
        Body::SessionStart(Box::new(SessionOpen {
            pin_hash: card,
            session_id,
            destination: domestic,
            requested_s: 60,
            owner_id: 4,
            password_mac: 0,
            category: 2,
        }))
    };
    approved(switch.run(t0_ms, open(1)).1);
    approved(switch.run(t0_ms, open(2)).1);
    approved(
        switch
            .run(
                t0_ms + 1_000,
                Body::SessionUpdate {
                    pin_hash: card,
                    session_id: 1,
                    seq: 1,
                    used_total_s: 10,
                    requested_s: 60,
                },
            )
            .1,
    );
    // The audit closes call 2 (silent since t0) on the card's shard.
    let shard = shard_of_card(card, SHARDS);
    let close =
        Body::SessionsClose { owner_id: 4, silent_since_ms: t0_ms, session_ids: vec![2, 3] };
    let closed =
        switch.apply(shard, t0_ms + 2_000, Command { op_id: 0, deadline_at_ms: 0, body: close });
    assert_eq!(closed.amount_won, 1);
    // test_min validity is 120 s: call 1 expires 240 s after its report, at a Tick.
    let tick = switch.apply(
        shard,
        t0_ms + 1_000 + 240_000,
        Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick },
    );
    assert_eq!(ResultCode::from_u16(tick.code), Some(ResultCode::Approved));
    let late = Body::SessionEnd { pin_hash: card, session_id: 1, seq: 2, used_total_s: 100 };
    let reply = switch.run(t0_ms + 300_000, late).1;
    assert_eq!(
        (ResultCode::from_u16(reply.code), reply.amount_won, reply.balance_won),
        (Some(ResultCode::SessionExpiredCharged), 180, 10_000 - 500 - 200)
    );

    let state = root.path().join("state");
    let mut exporter = Exporter::open(options(&data, &state)).unwrap();
    exporter.run(None, 0).unwrap();
    let status = exporter.status().unwrap();
    assert!(status.reconciled(), "{status}");
    let ledger = exporter.ledger().unwrap();
    assert_eq!(ledger.trial_balance().check(), Ok(()));
    let info_revenue = ledger.accounts[&Account::ServiceRevenue { category: 3 }];
    assert_eq!(
        info_revenue.credits_won - info_revenue.debits_won,
        500,
        "1,500 charged, 500 refunded, 1,000 reversed, 500 charged"
    );
    let call_revenue = ledger.accounts[&Account::ServiceRevenue { category: 2 }];
    assert_eq!(call_revenue.credits_won - call_revenue.debits_won, 200);
    let holds = ledger.accounts[&Account::Holds];
    assert_eq!(holds.credits_won, holds.debits_won, "every reservation was released");
}
