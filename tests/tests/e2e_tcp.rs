//! End to end over TCP against the real binary: the CLI issues cards and shows them, then a
//! gateway-like client drives activation, authorization, partial and final capture, void,
//! reversal after and before its original, sale, refund, retries, op-id reuse, inquiry, fences,
//! wrong passwords and recharge through the wire, checking every code and balance. A graceful
//! restart must keep all of it, including the idempotency records.

use std::path::Path;
use std::process::Command;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    Authorize, BalanceInquiry, Capture, CardActivate, CardLoad, CardState, Category, FLAG_REPLAYED,
    Field, Funding, Inquiry, MsgType, OpFence, OpStatus, Refund, ResultCode, Reverse, Sale, Void,
    new_op_id, pin,
};
use pinswitch_tests::{Switch, code, fresh_dir, one};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const PASSWORD: &[u8] = b"4321";

fn cli(args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN).args(args).output().expect("running the CLI");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn sale(op_id: u128, pin: u64, amount_won: u64) -> Sale {
    Sale {
        op_id,
        pin,
        password: PASSWORD.to_vec(),
        amount_won,
        merchant_id: 77,
        category: Category::InternetPayment as u8,
    }
}

async fn balance(client: &Client, pin: u64) -> (u64, u64) {
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await;
    assert_eq!(card.code, 0);
    (card.balance_won, card.available_won)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_life_over_tcp() {
    let dir = fresh_dir("life");
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let address = switch.address.clone();

    // The CLI issues through the protocol and prints each PIN once.
    let (ok, out) =
        cli(&["card", "issue", "--connect", &address, "--product", "10000", "--count", "3"]);
    assert!(ok, "card issue failed: {out}");
    let pins: Vec<u64> = out
        .lines()
        .map(|line| pin::parse(line.split_whitespace().next().expect("a PIN")).expect("16 digits"))
        .collect();
    assert_eq!(pins.len(), 3);
    assert!(pins.iter().all(|pin| pin::is_valid(*pin)));
    let (ok, shown) = cli(&["card", "show", "--connect", &address, &pin::format(pins[0])]);
    assert!(ok, "{shown}");
    assert!(shown.contains("state     issued") && shown.contains("balance   10000 won"), "{shown}");
    let (card, spare, idle) = (pins[0], pins[1], pins[2]);

    let client = Client::connect(&address).await.expect("connect");
    let hello = client.hello("e2e").await.expect("hello");
    assert_eq!(hello.shard_count, 2);

    // Not spendable before activation.
    let result = one(client.sale(&[sale(new_op_id(), idle, 1000)]).await).await;
    assert_eq!(code(&result), ResultCode::CardNotActive);

    for pin in [card, spare] {
        let event = CardActivate { op_id: new_op_id(), pin, password: PASSWORD.to_vec() };
        let result = one(client.card_activate(&[event]).await).await;
        assert_eq!(code(&result), ResultCode::Approved);
    }
    let short = CardActivate { op_id: new_op_id(), pin: idle, password: b"12".to_vec() };
    assert_eq!(
        code(&one(client.card_activate(&[short]).await).await),
        ResultCode::PasswordFormatInvalid
    );
    let typo = pin::with_check_digit(card / 10) ^ 1;
    let result = one(client.sale(&[sale(new_op_id(), typo, 1000)]).await).await;
    assert_eq!(code(&result), ResultCode::PinFormatInvalid);

    // Authorize 3,000, capture 1,000 (keep the rest held), then a final 500 releases the rest.
    let hold_id = new_op_id();
    let authorize = Authorize {
        op_id: hold_id,
        pin: card,
        password: PASSWORD.to_vec(),
        amount_won: 3000,
        merchant_id: 5,
        category: Category::InternetPayment as u8,
        hold_ttl_s: 600,
    };
    let result = one(client.authorize(&[authorize.clone()]).await).await;
    assert_eq!(code(&result), ResultCode::Approved);
    assert_eq!((result.balance_won, result.available_won), (10_000, 7_000));
    assert!(result.approval_code >= 100_000 && result.approval_code < 1_000_000);
    let card_view = one(client.balance_inquiry(&[BalanceInquiry { pin: card }]).await).await;
    assert_eq!(card_view.state, CardState::Active as u8);
    assert_eq!(card_view.holds.len(), 1);
    assert_eq!(card_view.holds[0].hold_id, hold_id);
    let capture = |amount_won, final_capture| Capture {
        op_id: new_op_id(),
        pin: card,
        hold_id,
        amount_won,
        final_capture,
    };
    let result = one(client.capture(&[capture(1000, false)]).await).await;
    assert_eq!(code(&result), ResultCode::Approved);
    assert_eq!((result.balance_won, result.available_won), (9_000, 7_000));
    let result = one(client.capture(&[capture(500, true)]).await).await;
    assert_eq!((result.balance_won, result.available_won), (8_500, 8_500));
    let result = one(client.capture(&[capture(1, true)]).await).await;
    assert_eq!(code(&result), ResultCode::HoldAlreadyCaptured);

    // Void releases a hold; a second void with another op id is a harmless no-op.
    let second_hold = new_op_id();
    let authorize_two = Authorize { op_id: second_hold, amount_won: 2000, ..authorize.clone() };
    assert_eq!(code(&one(client.authorize(&[authorize_two]).await).await), ResultCode::Approved);
    assert_eq!(balance(&client, card).await, (8_500, 6_500));
    let void = Void { op_id: new_op_id(), pin: card, hold_id: second_hold };
    let result = one(client.void(&[void]).await).await;
    assert_eq!((code(&result), result.amount_won), (ResultCode::Approved, 2000));
    let again = Void { op_id: new_op_id(), pin: card, hold_id: second_hold };
    assert_eq!(code(&one(client.void(&[again]).await).await), ResultCode::HoldAlreadyVoided);
    assert_eq!(balance(&client, card).await, (8_500, 8_500));

    // Reverse after the original: the sale's money comes back.
    let sold = new_op_id();
    assert_eq!(
        code(&one(client.sale(&[sale(sold, card, 1000)]).await).await),
        ResultCode::Approved
    );
    let reverse = Reverse { op_id: new_op_id(), pin: card, original_op_id: sold };
    let result = one(client.reverse(&[reverse]).await).await;
    assert_eq!(
        (code(&result), result.amount_won, result.balance_won),
        (ResultCode::Approved, 1000, 8_500)
    );

    // Reverse before the original: a tombstone declines the late original.
    let late = new_op_id();
    let early_reverse = Reverse { op_id: new_op_id(), pin: card, original_op_id: late };
    let result = one(client.reverse(&[early_reverse]).await).await;
    assert_eq!(code(&result), ResultCode::OriginalNotFoundRecorded);
    let tomb = one(client.inquiry(&[Inquiry { pin: card, op_id: late }]).await).await;
    assert_eq!(tomb.status, OpStatus::Tombstone as u8);
    let result = one(client.sale(&[sale(late, card, 700)]).await).await;
    assert_eq!(code(&result), ResultCode::ReversedBeforeArrival);
    assert_eq!(balance(&client, card).await, (8_500, 8_500));

    // Refund part of a sale; no more than was paid.
    let paid = new_op_id();
    let first = one(client.sale(&[sale(paid, card, 2000)]).await).await;
    assert_eq!(first.balance_won, 6_500);
    let refund = Refund { op_id: new_op_id(), pin: card, original_op_id: paid, amount_won: 500 };
    let result = one(client.refund(&[refund]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::Approved, 7_000));
    let too_much = Refund { op_id: new_op_id(), pin: card, original_op_id: paid, amount_won: 1501 };
    assert_eq!(code(&one(client.refund(&[too_much]).await).await), ResultCode::ExceedsRefundable);

    // Exactly once: a retry replays; the same id with another body is refused, naming the field.
    let retry = one(client.sale(&[sale(paid, card, 2000)]).await).await;
    assert_eq!(retry.flags & FLAG_REPLAYED, FLAG_REPLAYED);
    assert_eq!(
        (retry.code, retry.balance_won, retry.approval_code),
        (first.code, first.balance_won, first.approval_code)
    );
    let reused = one(client.sale(&[sale(paid, card, 2001)]).await).await;
    assert_eq!((code(&reused), reused.field), (ResultCode::OpIdReused, Field::Amount as u8));
    assert_eq!(balance(&client, card).await, (7_000, 7_000));
    let found = one(client.inquiry(&[Inquiry { pin: card, op_id: paid }]).await).await;
    assert_eq!((found.status, found.msg_type), (OpStatus::Completed as u8, MsgType::Sale as u16));
    assert_eq!(found.result.balance_won, 6_500);
    let unknown = one(client.inquiry(&[Inquiry { pin: card, op_id: new_op_id() }]).await).await;
    assert_eq!(unknown.status, OpStatus::Unknown as u8);

    // A gateway whose SALE timed out fences its op id: UNKNOWN was "not yet"; FENCED is
    // "never" (the SALE, arriving late, is refused and moves nothing), and a fence of an op id
    // that arrived says OP_RECORDED, after which INQUIRY's answer is final.
    let lost = new_op_id();
    let fenced = one(client.op_fence(&[OpFence { pin: card, op_id: lost }]).await).await;
    assert_eq!(code(&fenced), ResultCode::Fenced);
    let late = one(client.sale(&[sale(lost, card, 100)]).await).await;
    assert_eq!(code(&late), ResultCode::FencedBeforeArrival);
    let tomb = one(client.inquiry(&[Inquiry { pin: card, op_id: lost }]).await).await;
    assert_eq!(tomb.status, OpStatus::Tombstone as u8);
    let arrived = one(client.op_fence(&[OpFence { pin: card, op_id: paid }]).await).await;
    assert_eq!(code(&arrived), ResultCode::OpRecorded);
    assert_eq!(balance(&client, card).await, (7_000, 7_000));

    // Money rules.
    let result = one(client.sale(&[sale(new_op_id(), spare, 10_001)]).await).await;
    assert_eq!(code(&result), ResultCode::InsufficientFunds);
    let load = |amount_won| CardLoad {
        op_id: new_op_id(),
        pin: spare,
        amount_won,
        funding: Funding::BankTransfer as u8,
    };
    let result = one(client.card_load(&[load(20_000)]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::Approved, 30_000));
    assert_eq!(
        code(&one(client.card_load(&[load(5_000)]).await).await),
        ResultCode::RechargeUnitInvalid
    );
    assert_eq!(
        code(&one(client.card_load(&[load(480_000)]).await).await),
        ResultCode::BalanceCapExceeded
    );

    // A batch mixes cards and shards; results come back in event order.
    let batch: Vec<Sale> = (0..10)
        .map(|index| sale(new_op_id(), if index % 2 == 0 { card } else { spare }, 10))
        .collect();
    let results = client.sale(&batch).await.expect("batch");
    assert_eq!(results.len(), 10);
    assert!(results.iter().all(|result| result.code == 0));
    assert_eq!(results[8].balance_won, 7_000 - 50);
    assert_eq!(results[9].balance_won, 30_000 - 50);

    // Wrong passwords count toward the lockout and survive restart.
    let mut wrong = sale(new_op_id(), spare, 100);
    wrong.password = b"0000".to_vec();
    assert_eq!(code(&one(client.sale(&[wrong]).await).await), ResultCode::PasswordInvalid);
    let tries_before = one(client.balance_inquiry(&[BalanceInquiry { pin: spare }]).await)
        .await
        .password_tries_left;

    assert_eq!(tries_before, 4, "5 tries by default, one used");

    // Everything survives a graceful restart, idempotency records included.
    drop(client);
    switch.stop();
    let switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    assert_eq!(balance(&client, card).await, (6_950, 6_950));
    assert_eq!(balance(&client, spare).await, (29_950, 29_950));
    let retry = one(client.sale(&[sale(paid, card, 2000)]).await).await;
    assert_eq!(retry.flags & FLAG_REPLAYED, FLAG_REPLAYED);
    assert_eq!(retry.balance_won, 6_500);
    let after = one(client.balance_inquiry(&[BalanceInquiry { pin: spare }]).await).await;
    assert_eq!(after.password_tries_left, tries_before);
    let (ok, shown) = cli(&["card", "show", "--connect", &switch.address, &pin::format(card)]);
    assert!(ok && shown.contains("available 6950 won"), "{shown}");
}
