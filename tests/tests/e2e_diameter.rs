//! The Diameter credit-control front end (issue 15), end to end: a call platform written with
//! python-diameter from PyPI (tests/diameter/call_switch.py, a Diameter stack nobody here
//! wrote) exchanges capabilities and watchdogs, makes a two-hour call reported every minute
//! (one report retransmitted with the T flag), an event charge, and a call on a card too poor
//! for what it asks (granted what it can pay, as a final unit); the switch pushes a re-auth
//! request when this test recharges a card in a call and an abort when it blocks it; unknown
//! sessions, missing and unknown mandatory AVPs and a bad AVP length get their Result-Codes;
//! DPR ends it. The money is then read back over the native protocol, to the won of the tariff.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use pinswitch_protocol::client::Client;
use pinswitch_protocol::*;
use pinswitch_tests::{Switch, code, fresh_dir, one};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
/// A two-hour call to a mobile (tariff 2 of the production rules: 10 won to connect, 12 won
/// per 6 s), and three events of a phone information number (tariff 4: 500 won each).
const CALL_WON: u64 = 10 + 7200 / 6 * 12;
const EVENTS_WON: u64 = 3 * 500;

async fn card(client: &Client, face_value_won: u64) -> u64 {
    let issued =
        one(client.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won }]).await).await;
    let activate = CardActivate { op_id: new_op_id(), pin: issued.pin, password: b"1234".to_vec() };
    assert_eq!(code(&one(client.card_activate(&[activate]).await).await), ResultCode::Approved);
    issued.pin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_platform_charges_calls_over_diameter() {
    let dir = fresh_dir("e2e-diameter");
    let config = vec!["[diameter]".to_string(), "listen = \"127.0.0.1:0\"".to_string()];
    let mut switch = Switch::start_with_config(Path::new(BIN), &dir, &config, &[]);
    let address = switch
        .startup_lines()
        .iter()
        .find_map(|line| line.split("Diameter on ").nth(1))
        .map(|rest| rest.trim().to_string())
        .expect("a \"Diameter on\" line");
    let admin = Client::connect(&switch.address).await.expect("connect");
    let rich = card(&admin, 100_000).await;
    let poor = card(&admin, 5_000).await;
    let pushed = card(&admin, 10_000).await;
    let port = address.rsplit(':').next().expect("a port");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/diameter/call_switch.py");
    let mut platform = Command::new("python3")
        .arg(&script)
        .arg(format!(
            "{{\"port\": {port}, \"rich\": {rich}, \"poor\": {poor}, \"pushed\": {pushed}}}"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (python-diameter from PyPI: .ci/run installs it)");
    let mut to_platform = platform.stdin.take().expect("stdin");
    let from_platform = BufReader::new(platform.stdout.take().expect("stdout"));
    let mut answers: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut waits = 0;
    for line in from_platform.lines() {
        let line = line.expect("a line");
        if line == "waiting" {
            // First a recharge (the call's grant may grow: a re-auth request), then a block
            // (the call must end: an abort).
            if waits == 0 {
                let load =
                    CardLoad { op_id: new_op_id(), pin: pushed, amount_won: 10_000, funding: 1 };
                assert_eq!(code(&one(admin.card_load(&[load]).await).await), ResultCode::Approved);
            } else {
                let block = CardBlock { op_id: new_op_id(), pin: pushed, reason: 1 };
                assert_eq!(
                    code(&one(admin.card_block(&[block]).await).await),
                    ResultCode::Approved
                );
            }
            waits += 1;
            to_platform.write_all(b"\n").expect("to the platform");
            continue;
        }
        let fields: HashMap<String, String> = line
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        answers.insert(fields["step"].clone(), fields);
    }
    assert!(platform.wait().expect("the platform ends").success(), "{answers:?}");
    let field = |step: &str, key: &str| -> String {
        answers.get(step).and_then(|fields| fields.get(key)).cloned().unwrap_or_else(|| {
            panic!("no {key} in the answer to {step}: {answers:?}");
        })
    };
    assert_eq!((field("cer", "command"), field("cer", "result")), ("257".into(), "2001".into()));
    assert_eq!(field("dwr", "result"), "2001");
    assert_eq!(
        (field("initial", "result"), field("initial", "granted")),
        ("2001".into(), "60".into())
    );
    assert_eq!(field("retransmitted", "result"), "2001");
    assert_eq!(
        (field("updates", "all_success"), field("updates", "count")),
        ("True".into(), "119".into())
    );
    assert_eq!(field("termination", "result"), "2001");
    assert_eq!(field("event", "result"), "2001");
    // 5,000 won buys 2,490 s to a mobile after the connect fee: that, as the final unit.
    assert_eq!(field("poor_initial", "result"), "2001");
    assert_eq!(
        (field("poor_initial", "granted"), field("poor_initial", "final_unit")),
        ("2490".into(), "0".into())
    );
    assert_eq!(field("poor_termination", "result"), "2001");
    assert_eq!(field("pushed_initial", "result"), "2001");
    assert_eq!(
        (field("push_1", "command"), field("push_1", "request")),
        ("258".into(), "1".into())
    );
    assert_eq!(field("push_1", "session"), "sw.test;call;3");
    assert_eq!(
        (field("push_2", "command"), field("push_2", "session")),
        ("274".into(), "sw.test;call;3".into())
    );
    assert_eq!(field("unknown_session", "result"), "5002");
    assert_eq!(field("missing_avp", "result"), "5005");
    assert_eq!(field("unknown_avp", "result"), "5001");
    assert_eq!(field("bad_length", "result"), "5014");
    assert_eq!(field("dpr", "result"), "2001");
    // The two-hour call and the events, to the won; the retransmitted report charged once.
    let balance = |pin| {
        let admin = &admin;
        async move { one(admin.balance_inquiry(&[BalanceInquiry { pin }]).await).await.balance_won }
    };
    assert_eq!(balance(rich).await, 100_000 - CALL_WON - EVENTS_WON);
    assert_eq!(balance(poor).await, 5_000 - 10 - 2490 / 6 * 12);
    switch.stop();
}
