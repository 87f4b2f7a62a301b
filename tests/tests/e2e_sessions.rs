//! Per-second charging sessions end to end over TCP against the real binary: a simulated
//! two-hour call on a mobile number (12 won per 6 s, 10 won to connect) with an update every
//! minute, charged to the won, while a payment hold sits on the same card; one update is lost
//! and healed by the next cumulative report; the switch is killed with SIGKILL at the hour and
//! everything (balance, reservation, the session itself, a replay) is exact after recovery.

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    Authorize, BalanceInquiry, BalanceResult, CardActivate, CardIssue, Category, EventCharge,
    FLAG_REPLAYED, ResultCode, SessionEnd, SessionResult, SessionStart, SessionUpdate, Void,
    new_op_id,
};
use pinswitch_tests::{Switch, fresh_dir, one};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const PASSWORD: &[u8] = b"4321";
const FACE_WON: u64 = 50_000;
const HOLD_WON: u64 = 30_000;
const SESSION: u128 = 0x5E55_1011;
const MOBILE: &[u8] = b"01012345678";

/// The mobile tariff of the production preset: 10 won to connect, 12 won per 6 s.
fn cost_won(used_s: u64) -> u64 {
    if used_s == 0 { 0 } else { 10 + used_s.div_ceil(6) * 12 }
}

fn code(result: &SessionResult) -> ResultCode {
    ResultCode::from_u16(result.result.code).expect("a known code")
}

async fn card(client: &Client, pin: u64) -> BalanceResult {
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await;
    assert_eq!(card.code, ResultCode::Approved.as_u16());
    card
}

fn update(pin: u64, used_total_s: u32) -> SessionUpdate {
    // One report a minute: the minute is the request number.
    SessionUpdate {
        op_id: new_op_id(),
        pin,
        session_id: SESSION,
        seq: used_total_s / 60,
        used_total_s,
        requested_s: 60,
    }
}

/// Sends the update for minute `minute` and checks its debit and grant.
async fn report_minute(
    client: &Client,
    pin: u64,
    minute: u64,
    charged_won: &mut u64,
) -> (SessionUpdate, SessionResult) {
    let event = update(pin, (minute * 60) as u32);
    let result = one(client.session_update(&[event]).await).await;
    assert_eq!(code(&result), ResultCode::Approved, "minute {minute}: {result:?}");
    assert_eq!(result.result.amount_won, cost_won(minute * 60) - *charged_won, "minute {minute}");
    assert_eq!((result.granted_s, result.final_unit, result.tariff_id), (60, 0, 2));
    *charged_won = cost_won(minute * 60);
    assert_eq!(result.result.balance_won, FACE_WON - *charged_won);
    // The next minute (10 increments of 12 won) stays reserved beside the hold.
    assert_eq!(result.result.available_won, FACE_WON - *charged_won - HOLD_WON - 120);
    (event, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hour_call_is_charged_to_the_won_across_a_sigkill() {
    let dir = fresh_dir("sessions");
    let mut switch = Switch::start(BIN.as_ref(), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let issued =
        one(client.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won: FACE_WON }]).await)
            .await;
    let pin = issued.pin;
    let activated = one(client
        .card_activate(&[CardActivate { op_id: new_op_id(), pin, password: PASSWORD.to_vec() }])
        .await)
    .await;
    assert_eq!(activated.code, ResultCode::Approved.as_u16());
    let hold = Authorize {
        op_id: new_op_id(),
        pin,
        password: PASSWORD.to_vec(),
        amount_won: HOLD_WON,
        merchant_id: 77,
        category: Category::InternetPayment as u8,
        hold_ttl_s: 0,
    };
    assert_eq!(
        one(client.authorize(std::slice::from_ref(&hold)).await).await.code,
        ResultCode::Approved.as_u16()
    );

    // A malformed called number never reaches a shard.
    let bad = SessionStart {
        op_id: new_op_id(),
        pin,
        session_id: SESSION,
        category: Category::TelephoneCall as u8,
        destination: b"010-1234".to_vec(),
        requested_s: 60,
        owner_id: 1,
        password: Vec::new(),
    };
    assert_eq!(
        code(&one(client.session_start(&[bad]).await).await),
        ResultCode::DestinationInvalid
    );
    let start = SessionStart {
        op_id: new_op_id(),
        pin,
        session_id: SESSION,
        category: Category::TelephoneCall as u8,
        destination: MOBILE.to_vec(),
        requested_s: 60,
        owner_id: 1,
        password: Vec::new(),
    };
    let started = one(client.session_start(std::slice::from_ref(&start)).await).await;
    assert_eq!(code(&started), ResultCode::Approved);
    assert_eq!(
        (started.granted_s, started.validity_s, started.final_unit, started.tariff_id),
        (60, 600, 0, 2)
    );
    assert_eq!(
        (started.result.amount_won, started.result.available_won),
        (0, FACE_WON - HOLD_WON - cost_won(60))
    );
    let replayed = one(client.session_start(&[start]).await).await;
    assert_eq!(replayed.result.flags & FLAG_REPLAYED, FLAG_REPLAYED);
    assert_eq!(SessionResult { result: started.result, ..replayed.clone() }, started);

    // The first hour, minute by minute; the update of minute 30 is lost on the way.
    let mut charged_won = 0;
    let mut last = None;
    for minute in 1..=60 {
        if minute == 30 {
            continue;
        }
        last = Some(report_minute(&client, pin, minute, &mut charged_won).await);
    }
    assert_eq!(charged_won, cost_won(3_600));

    // SIGKILL at the hour: every acknowledged report survives, the reservation and the session too.
    switch.kill();
    drop(client);
    let mut switch = Switch::start(BIN.as_ref(), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let view = card(&client, pin).await;
    assert_eq!(view.balance_won, FACE_WON - cost_won(3_600));
    assert_eq!(view.held_won, HOLD_WON + 120);
    assert_eq!(view.available_won, FACE_WON - cost_won(3_600) - HOLD_WON - 120);
    let (event, result) = last.expect("an hour of reports");
    let replayed = one(client.session_update(&[event]).await).await;
    assert_eq!(replayed.result.flags & FLAG_REPLAYED, FLAG_REPLAYED);
    assert_eq!(SessionResult { result: result.result, ..replayed.clone() }, result);

    // The second hour, then the hang-up at 1:59:57 (billed to 2:00:00).
    for minute in 61..=119 {
        report_minute(&client, pin, minute, &mut charged_won).await;
    }
    let end =
        SessionEnd { op_id: new_op_id(), pin, session_id: SESSION, seq: 120, used_total_s: 7_197 };
    let ended = one(client.session_end(&[end]).await).await;
    assert_eq!(code(&ended), ResultCode::Approved);
    assert_eq!((ended.result.amount_won, ended.granted_s), (cost_won(7_197) - charged_won, 0));
    assert_eq!(cost_won(7_197), 14_410, "two hours at 12 won per 6 s, plus 10 to connect");
    assert_eq!(ended.result.balance_won, FACE_WON - 14_410);
    assert_eq!(ended.result.available_won, FACE_WON - 14_410 - HOLD_WON);
    let again = SessionUpdate {
        op_id: new_op_id(),
        pin,
        session_id: SESSION,
        seq: 121,
        used_total_s: 7_300,
        requested_s: 60,
    };
    assert_eq!(
        code(&one(client.session_update(&[again]).await).await),
        ResultCode::SessionNotFound
    );
    let void = Void { op_id: new_op_id(), pin, hold_id: hold.op_id };
    assert_eq!(one(client.void(&[void]).await).await.code, ResultCode::Approved.as_u16());

    // Exact again after a second SIGKILL.
    switch.kill();
    drop(client);
    let switch = Switch::start(BIN.as_ref(), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let view = card(&client, pin).await;
    assert_eq!(
        (view.balance_won, view.available_won, view.held_won),
        (FACE_WON - 14_410, FACE_WON - 14_410, 0)
    );
}

/// A product may require the password for its calls and event charges while the engine-wide
/// rule does not (`session_password_required` on the product in `[[engine.products]]`): the
/// 10,000-won card, sold for payments, refuses a call or an event charge without its password
/// (a found PIN alone buys nothing), while the 50,000-won calling card takes the PIN alone.
/// The rule is journaled (a CONFIGURE beyond the frozen record) and holds after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_can_require_the_password_for_its_calls() {
    let dir = fresh_dir("sessions-product-password");
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        "[engine]\nsession_password_required = false\n\
         [[engine.products]]\nface_value_won = 10000\nsession_password_required = true\n\
         [[engine.products]]\nface_value_won = 50000\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    let mut switch = Switch::start(BIN.as_ref(), &dir, &["--config", config]);
    let mut client = Client::connect(&switch.address).await.expect("connect");
    let mut pins = Vec::new();
    for face_value_won in [10_000, 50_000] {
        let issued =
            one(client.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won }]).await).await;
        let activate =
            CardActivate { op_id: new_op_id(), pin: issued.pin, password: PASSWORD.to_vec() };
        assert_eq!(one(client.card_activate(&[activate]).await).await.code, 0);
        pins.push(issued.pin);
    }
    let (payment_card, calling_card) = (pins[0], pins[1]);
    let start = |pin: u64, session_id: u128, password: &[u8]| SessionStart {
        op_id: new_op_id(),
        pin,
        session_id,
        category: Category::TelephoneCall as u8,
        destination: MOBILE.to_vec(),
        requested_s: 60,
        owner_id: 1,
        password: password.to_vec(),
    };
    let charge = |pin: u64, password: &[u8]| EventCharge {
        op_id: new_op_id(),
        pin,
        password: password.to_vec(),
        category: Category::PhoneInformation as u8,
        destination: b"15881234".to_vec(),
        units: 1,
    };
    for life in 0..2 {
        let session = |n: u128| SESSION + n + 10 * life;
        let refused =
            one(client.session_start(&[start(payment_card, session(1), b"")]).await).await;
        assert_eq!(code(&refused), ResultCode::PasswordInvalid, "life {life}");
        let charged = one(client.event_charge(&[charge(payment_card, b"")]).await).await;
        assert_eq!(charged.code, ResultCode::PasswordInvalid.as_u16(), "life {life}");
        let with =
            one(client.session_start(&[start(payment_card, session(2), PASSWORD)]).await).await;
        assert_eq!(code(&with), ResultCode::Approved, "life {life}");
        let calling =
            one(client.session_start(&[start(calling_card, session(3), b"")]).await).await;
        assert_eq!(code(&calling), ResultCode::Approved, "life {life}");
        let charged = one(client.event_charge(&[charge(calling_card, b"")]).await).await;
        assert_eq!(charged.code, ResultCode::Approved.as_u16(), "life {life}");
        // No try was counted for the missing password (5 tries, the production rule).
        assert_eq!(card(&client, payment_card).await.password_tries_left, 5, "life {life}");
        if life == 0 {
            drop(client);
            switch.stop();
            switch = Switch::start(BIN.as_ref(), &dir, &["--config", config]);
            client = Client::connect(&switch.address).await.expect("reconnect");
        }
    }
}
