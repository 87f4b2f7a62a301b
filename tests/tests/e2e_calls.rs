//! What a call switch relies on besides charging, end to end over TCP against the real binary:
//! price quotes, one-shot event charges, request numbers, the pushes a call's connection gets
//! (re-authorize after a recharge made elsewhere, low balance, abort on a block), the redirect
//! final-unit action, SESSION_AUDIT closing the orphans a call switch no longer has, silent
//! sessions expired by the switch with their late report still charged, and all of it exact
//! across SIGKILLs. Waiting is on pushes (with a generous timeout), never on a sleep.

use std::path::Path;
use std::time::Duration;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    BalanceInquiry, BalanceResult, CardActivate, CardBlock, CardIssue, CardLoad, CardUnblock,
    Category, EventCharge, FAILURE_HANDLING_CONTINUE, FINAL_UNIT_NONE, FINAL_UNIT_REDIRECT,
    NOTICE_ABORT, NOTICE_EXPIRED, NOTICE_LOW_BALANCE, NOTICE_REAUTHORIZE, PriceQuote, ResultCode,
    Sale, SessionAudit, SessionEnd, SessionNotice, SessionResult, SessionStart, SessionUpdate,
    new_op_id, session_digest,
};
use pinswitch_tests::{Switch, TestDir, fresh_dir, one};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const PASSWORD: &[u8] = b"4321";
const OWNER: u32 = 7;
const MOBILE: &[u8] = b"01012345678";
const DOMESTIC: &[u8] = b"0212345678";
const INFO_LINE: &[u8] = b"15881234";
/// Pushes arrive within milliseconds; this only bounds a broken run.
const PUSH_TIMEOUT: Duration = Duration::from_secs(20);

/// The production mobile tariff: 10 won to connect, 12 won per 6 s.
fn mobile_won(used_s: u64) -> u64 {
    if used_s == 0 { 0 } else { 10 + used_s.div_ceil(6) * 12 }
}

fn code(result: &SessionResult) -> ResultCode {
    ResultCode::from_u16(result.result.code).expect("a known code")
}

async fn balance(client: &Client, pin: u64) -> BalanceResult {
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await;
    assert_eq!(card.code, ResultCode::Approved.as_u16());
    card
}

async fn active_card(client: &Client, face_value_won: u64) -> u64 {
    let issued =
        one(client.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won }]).await).await;
    let pin = issued.pin;
    let activated = one(client
        .card_activate(&[CardActivate { op_id: new_op_id(), pin, password: PASSWORD.to_vec() }])
        .await)
    .await;
    assert_eq!(activated.code, ResultCode::Approved.as_u16());
    pin
}

fn start(pin: u64, session_id: u128, destination: &[u8], requested_s: u32) -> SessionStart {
    SessionStart {
        op_id: new_op_id(),
        pin,
        session_id,
        category: Category::TelephoneCall as u8,
        destination: destination.to_vec(),
        requested_s,
        owner_id: OWNER,
        password: Vec::new(),
    }
}

fn update(
    pin: u64,
    session_id: u128,
    seq: u32,
    used_total_s: u32,
    requested_s: u32,
) -> SessionUpdate {
    SessionUpdate { op_id: new_op_id(), pin, session_id, seq, used_total_s, requested_s }
}

fn end(pin: u64, session_id: u128, seq: u32, used_total_s: u32) -> SessionEnd {
    SessionEnd { op_id: new_op_id(), pin, session_id, seq, used_total_s }
}

async fn next_notice(notices: &mut mpsc::Receiver<SessionNotice>) -> SessionNotice {
    tokio::time::timeout(PUSH_TIMEOUT, notices.recv())
        .await
        .expect("a push in time")
        .expect("the connection is open")
}

fn config(dir: &TestDir, text: &str) -> String {
    let path = dir.with_extension("toml");
    std::fs::write(&path, text).expect("config");
    path.to_str().expect("utf-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_events_pushes_redirect_and_audit_over_the_wire() {
    let dir = fresh_dir("calls");
    let config = config(
        &dir,
        "[engine]\nlow_balance_warn_won = 5000\n\
         [sessions]\nfinal_unit_action = \"redirect\"\nredirect_number = \"15880000\"\nfailure_handling = \"continue\"\n\
         quota_threshold_s = 10\naudit_grace_s = 0\n",
    );
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    // The call switch's connection takes pushes; the operator and the gateway use another one.
    let calls = Client::connect(&switch.address).await.expect("connect");
    let mut notices = calls.notices();
    let office = Client::connect(&switch.address).await.expect("connect");
    let pin = active_card(&office, 50_000).await;

    // PRICE_QUOTE: a minute to a mobile, what the card affords, and an information line's event.
    let quote = |pin, category: Category, destination: &[u8], duration_s, units| PriceQuote {
        pin,
        category: category as u8,
        destination: destination.to_vec(),
        duration_s,
        units,
    };
    let quoted = office
        .price_quote(&[
            quote(pin, Category::TelephoneCall, MOBILE, 60, 0),
            quote(0, Category::PhoneInformation, INFO_LINE, 0, 2),
            quote(0, Category::PhoneInformation, DOMESTIC, 60, 0),
            quote(pin, Category::TelephoneCall, b"01x", 60, 0),
        ])
        .await
        .expect("quotes");
    assert_eq!(
        (quoted[0].code, quoted[0].tariff_id, quoted[0].duration_cost_won),
        (0, 2, mobile_won(60))
    );
    assert_eq!((quoted[0].rate_won, quoted[0].increment_s, quoted[0].connect_fee_won), (12, 6, 10));
    assert_eq!(
        (quoted[0].available_won, quoted[0].affordable_s),
        (50_000, 3_600),
        "an hour (7,210 won) is affordable"
    );
    assert_eq!((quoted[1].code, quoted[1].event_won, quoted[1].event_cost_won), (0, 500, 1_000));
    assert_eq!(quoted[2].code, ResultCode::TariffNotFound.as_u16());
    assert_eq!(quoted[3].code, ResultCode::DestinationInvalid.as_u16());

    // EVENT_CHARGE: two information events, 500 won each, no password (the PIN alone).
    let charge = EventCharge {
        op_id: new_op_id(),
        pin,
        password: Vec::new(),
        category: Category::PhoneInformation as u8,
        destination: INFO_LINE.to_vec(),
        units: 2,
    };
    let charged = one(office.event_charge(&[charge]).await).await;
    assert_eq!((charged.code, charged.amount_won, charged.balance_won), (0, 1_000, 49_000));
    let wrong = EventCharge {
        op_id: new_op_id(),
        pin,
        password: b"9999".to_vec(),
        category: 3,
        destination: INFO_LINE.to_vec(),
        units: 1,
    };
    assert_eq!(
        one(office.event_charge(&[wrong]).await).await.code,
        ResultCode::PasswordInvalid.as_u16()
    );

    // A call: the grant carries the front end's policy.
    let started = one(calls.session_start(&[start(pin, 1, MOBILE, 60)]).await).await;
    assert_eq!(code(&started), ResultCode::Approved);
    assert_eq!(
        (started.granted_s, started.quota_threshold_s, started.failure_handling),
        (60, 10, FAILURE_HANDLING_CONTINUE)
    );
    assert_eq!(
        (started.final_unit, started.result.available_won),
        (FINAL_UNIT_NONE, 49_000 - mobile_won(60))
    );

    // A recharge made by the operator re-authorizes the call on the call switch's connection.
    let loaded = one(office
        .card_load(&[CardLoad { op_id: new_op_id(), pin, amount_won: 10_000, funding: 1 }])
        .await)
    .await;
    assert_eq!(loaded.code, 0);
    let notice = next_notice(&mut notices).await;
    assert_eq!(
        (notice.kind, notice.session_id, notice.available_won),
        (NOTICE_REAUTHORIZE, 1, 59_000 - mobile_won(60))
    );

    // Request numbers: a report not above the last one applied is stale and changes nothing.
    let reported = one(calls.session_update(&[update(pin, 1, 1, 30, 60)]).await).await;
    assert_eq!(
        (code(&reported), reported.result.amount_won),
        (ResultCode::Approved, mobile_won(30))
    );
    let stale = one(calls.session_update(&[update(pin, 1, 1, 40, 60)]).await).await;
    assert_eq!(code(&stale), ResultCode::SessionSequenceStale);
    let before = balance(&office, pin).await;
    assert_eq!(before.balance_won, 59_000 - mobile_won(30));

    // A payment elsewhere takes the available balance under 5,000 won: a low-balance push.
    let spend_won = before.available_won - 4_000;
    let sale = Sale {
        op_id: new_op_id(),
        pin,
        password: PASSWORD.to_vec(),
        amount_won: spend_won,
        merchant_id: 5,
        category: 1,
    };
    assert_eq!(one(office.sale(&[sale]).await).await.code, 0);
    let notice = next_notice(&mut notices).await;
    assert_eq!(
        (notice.kind, notice.session_id, notice.available_won),
        (NOTICE_LOW_BALANCE, 1, 4_000)
    );

    // The card cannot pay for the hour asked: the last grant redirects to the recharge number.
    let last = one(calls.session_update(&[update(pin, 1, 2, 60, 3_600)]).await).await;
    assert_eq!(
        (code(&last), last.result.amount_won),
        (ResultCode::Approved, mobile_won(60) - mobile_won(30))
    );
    assert_eq!(
        (last.final_unit, last.redirect_number.as_slice()),
        (FINAL_UNIT_REDIRECT, b"15880000".as_slice())
    );
    let affordable_s =
        (4_000 + (mobile_won(90) - mobile_won(30)) - (mobile_won(60) - mobile_won(30))) / 12 * 6;
    assert_eq!(last.granted_s as u64, affordable_s);
    assert_eq!(last.result.available_won, 4_000 + 120 - 60 - affordable_s / 6 * 12);

    // A block aborts the call; an unblock re-authorizes it.
    assert_eq!(
        one(office.card_block(&[CardBlock { op_id: new_op_id(), pin, reason: 1 }]).await)
            .await
            .code,
        0
    );
    assert_eq!(next_notice(&mut notices).await.kind, NOTICE_ABORT);
    assert_eq!(
        one(office.card_unblock(&[CardUnblock { op_id: new_op_id(), pin }]).await).await.code,
        0
    );
    assert_eq!(next_notice(&mut notices).await.kind, NOTICE_REAUTHORIZE);
    let ended = one(calls.session_end(&[end(pin, 1, 3, 60)]).await).await;
    assert_eq!((code(&ended), ended.result.amount_won), (ResultCode::Approved, 0));

    // SESSION_AUDIT: the switch has calls 2 and 3 of this owner; the call switch only has 2.
    for session_id in [2, 3] {
        assert_eq!(
            code(&one(calls.session_start(&[start(pin, session_id, DOMESTIC, 60)]).await).await),
            ResultCode::Approved
        );
    }
    let audit = |count, digest, list, session_ids| SessionAudit {
        owner_id: OWNER,
        count,
        digest,
        list,
        session_ids,
    };
    let answer = calls
        .session_audit(&audit(1, session_digest([2]), false, Vec::new()))
        .await
        .expect("audit");
    assert_eq!((answer.code, answer.live_count), (ResultCode::SessionAuditMismatch.as_u16(), 2));
    let answer =
        calls.session_audit(&audit(1, session_digest([2]), true, vec![2])).await.expect("audit");
    assert_eq!((answer.code, answer.live_count, answer.ended), (0, 2, 1));
    let answer = calls
        .session_audit(&audit(1, session_digest([2]), false, Vec::new()))
        .await
        .expect("audit");
    assert_eq!((answer.code, answer.live_count), (0, 1));
    let other_owner = SessionAudit {
        owner_id: OWNER + 1,
        count: 0,
        digest: 0,
        list: false,
        session_ids: Vec::new(),
    };
    assert_eq!(calls.session_audit(&other_owner).await.expect("audit").code, 0);
    let orphan = one(calls.session_update(&[update(pin, 3, 1, 10, 60)]).await).await;
    assert_eq!(code(&orphan), ResultCode::SessionNotFound);
    let view = balance(&office, pin).await;
    assert_eq!(view.held_won, 120, "only call 2's minute (2 won a second) stays reserved");

    // SIGKILL: the balance, call 2 and its reservation come back exactly.
    switch.kill();
    drop((calls, office));
    let switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let after = balance(&client, pin).await;
    assert_eq!(
        (after.balance_won, after.available_won, after.held_won),
        (view.balance_won, view.available_won, 120)
    );
    let ended = one(client.session_end(&[end(pin, 2, 1, 5)]).await).await;
    assert_eq!(
        (code(&ended), ended.result.amount_won, ended.result.available_won),
        (ResultCode::Approved, 10, view.balance_won - 10)
    );
}

/// A call whose switch goes silent: twice its validity (1 s here) later the switch expires it,
/// releases its reservation and pushes the expiry; the late report, even after a SIGKILL, is
/// still charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_call_expires_and_its_late_report_is_charged_across_a_sigkill() {
    let dir = fresh_dir("calls-expiry");
    let config = config(&dir, "[engine]\nsession_validity_s = 1\n");
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let calls = Client::connect(&switch.address).await.expect("connect");
    let mut notices = calls.notices();
    let pin = active_card(&calls, 10_000).await;
    // Domestic calls cost 2 won a second.
    let started = one(calls.session_start(&[start(pin, 9, DOMESTIC, 60)]).await).await;
    assert_eq!((started.validity_s, started.result.available_won), (1, 10_000 - 120));
    let reported = one(calls.session_update(&[update(pin, 9, 1, 1, 60)]).await).await;
    assert_eq!((reported.result.amount_won, reported.result.available_won), (2, 10_000 - 2 - 120));
    let notice = next_notice(&mut notices).await;
    assert_eq!(
        (notice.kind, notice.session_id, notice.available_won),
        (NOTICE_EXPIRED, 9, 10_000 - 2)
    );
    let view = balance(&calls, pin).await;
    assert_eq!((view.balance_won, view.held_won), (10_000 - 2, 0));

    switch.kill();
    drop(calls);
    let switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let view = balance(&client, pin).await;
    assert_eq!((view.balance_won, view.held_won), (10_000 - 2, 0));
    // The call ran 100 s after all: the 98 s not yet charged are, and the session is gone.
    let late = one(client.session_end(&[end(pin, 9, 2, 100)]).await).await;
    assert_eq!(
        (code(&late), late.result.amount_won, late.result.balance_won),
        (ResultCode::SessionExpiredCharged, 198, 10_000 - 200)
    );
    let again = one(client.session_end(&[end(pin, 9, 3, 100)]).await).await;
    assert_eq!(code(&again), ResultCode::SessionNotFound);
}

/// Runs `pinswitch call ARGS --connect ADDRESS`; returns (exit code, stdout).
fn cli(address: &str, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(BIN)
        .arg("call")
        .args(args)
        .args(["--connect", address])
        .output()
        .expect("running the CLI");
    (output.status.code().unwrap_or(-1), String::from_utf8(output.stdout).expect("utf-8"))
}

/// The operator's view of the same features: `pinswitch call quote|charge|audit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_quotes_charges_and_audits() {
    let dir = fresh_dir("calls-cli");
    let config = config(&dir, "[sessions]\naudit_grace_s = 0\n");
    let switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let pin = active_card(&client, 10_000).await;
    let pin_text = format!("{pin:016}");
    let address = switch.address.clone();

    let (exit, text) = cli(
        &address,
        &[
            "quote",
            "--category",
            "2",
            "--to",
            "0014155550100",
            "--seconds",
            "61",
            "--pin",
            &pin_text,
        ],
    );
    assert_eq!(exit, 0, "{text}");
    assert!(text.contains("tariff    3") && text.contains("call      61 s cost 650 won"), "{text}");
    assert!(
        text.contains("card      10000 won available, buys 1980 s"),
        "(10,000 - 50) / 300 = 33 minutes: {text}"
    );
    let (exit, text) = cli(&address, &["quote", "--category", "3", "--to", "0212345678"]);
    assert_eq!((exit, text.trim()), (1, "TARIFF_NOT_FOUND (172)"));

    let (exit, text) = cli(
        &address,
        &["charge", &pin_text, "--category", "3", "--to", "15881234", "--units", "3"],
    );
    assert_eq!((exit, text.trim()), (0, "APPROVED (0), charged 1500 won, balance 8500 won"));
    // Domestic calls are priced per second only.
    let (exit, text) =
        cli(&address, &["charge", &pin_text, "--category", "2", "--to", "0212345678"]);
    assert_eq!((exit, text.trim()), (1, "EVENT_NOT_PRICED (177), charged 0 won, balance 8500 won"));

    for session_id in [0x51, 0x52] {
        assert_eq!(
            code(&one(client.session_start(&[start(pin, session_id, DOMESTIC, 60)]).await).await),
            ResultCode::Approved
        );
    }
    let (exit, text) =
        cli(&address, &["audit", "--owner", "7", "--session", "0x51", "--session", "82"]);
    assert_eq!((exit, text.trim()), (0, "APPROVED (0), 2 live on the switch, 0 ended"));
    let (exit, text) = cli(&address, &["audit", "--owner", "7", "--session", "0x51"]);
    assert_eq!(
        (exit, text.trim()),
        (1, "SESSION_AUDIT_MISMATCH (178), 2 live on the switch, 0 ended")
    );
    let (exit, text) = cli(&address, &["audit", "--owner", "7", "--session", "0x51", "--close"]);
    assert_eq!((exit, text.trim()), (0, "APPROVED (0), 2 live on the switch, 1 ended"));
    assert_eq!(balance(&client, pin).await.held_won, 120, "call 0x51's minute is still reserved");
}

/// Four calls on one card, each from its own call-switch connection, reporting use far past
/// their grants, while a gateway places holds, captures and sells on the same card, all at
/// once: whatever the interleaving, the card is never overdrawn and every won debited is one
/// an answer reported (seeded inputs; the interleaving is the scheduler's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_and_payments_on_one_card_never_overdraw_it() {
    use pinswitch_protocol::{Authorize, Capture};
    use pinswitch_tests::Rng;
    const FACE_WON: u64 = 30_000;
    let dir = fresh_dir("calls-concurrent");
    let switch = Switch::start(Path::new(BIN), &dir, &[]);
    let office = Client::connect(&switch.address).await.expect("connect");
    let pin = active_card(&office, FACE_WON).await;
    let mut tasks = Vec::new();
    for call in 0..4u64 {
        let address = switch.address.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&address).await.expect("connect");
            let mut rng = Rng(0xCA11 + call);
            let session_id = u128::from(100 + call);
            let started =
                one(client.session_start(&[start(pin, session_id, MOBILE, 60)]).await).await;
            if code(&started) != ResultCode::Approved {
                return 0;
            }
            let (mut debited_won, mut used_s) = (0u64, 0u32);
            for seq in 1..=20u32 {
                used_s += rng.below(240) as u32;
                let result =
                    one(client.session_update(&[update(pin, session_id, seq, used_s, 60)]).await)
                        .await;
                assert!(
                    matches!(code(&result), ResultCode::Approved | ResultCode::SessionUsageCapped),
                    "{result:?}"
                );
                debited_won += result.result.amount_won;
            }
            let ended = one(client.session_end(&[end(pin, session_id, 21, used_s)]).await).await;
            assert!(
                matches!(code(&ended), ResultCode::Approved | ResultCode::SessionUsageCapped),
                "{ended:?}"
            );
            debited_won + ended.result.amount_won
        }));
    }
    let payments = {
        let address = switch.address.clone();
        tokio::spawn(async move {
            let client = Client::connect(&address).await.expect("connect");
            let mut debited_won = 0u64;
            for round in 0..10u64 {
                let hold = Authorize {
                    op_id: new_op_id(),
                    pin,
                    password: PASSWORD.to_vec(),
                    amount_won: 2_000,
                    merchant_id: 9,
                    category: 1,
                    hold_ttl_s: 0,
                };
                if one(client.authorize(std::slice::from_ref(&hold)).await).await.code == 0 {
                    let capture = Capture {
                        op_id: new_op_id(),
                        pin,
                        hold_id: hold.op_id,
                        amount_won: 500 + round * 100,
                        final_capture: true,
                    };
                    let captured = one(client.capture(&[capture]).await).await;
                    assert_eq!(captured.code, 0);
                    debited_won += captured.amount_won;
                }
                let sale = Sale {
                    op_id: new_op_id(),
                    pin,
                    password: PASSWORD.to_vec(),
                    amount_won: 300,
                    merchant_id: 9,
                    category: 1,
                };
                let sold = one(client.sale(&[sale]).await).await;
                if sold.code == 0 {
                    debited_won += sold.amount_won;
                } else {
                    assert_eq!(sold.code, ResultCode::InsufficientFunds.as_u16());
                }
            }
            debited_won
        })
    };
    let mut debited_won = payments.await.expect("payments");
    for task in tasks {
        debited_won += task.await.expect("a call");
    }
    let view = balance(&office, pin).await;
    assert_eq!(view.held_won, 0, "every call ended and every hold was captured finally");
    assert!(debited_won <= FACE_WON, "debited {debited_won} of {FACE_WON}");
    assert_eq!(view.balance_won, FACE_WON - debited_won, "every won debited was reported");
}
