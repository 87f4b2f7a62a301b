//! A card's life end to end over TCP against the real binary: issue, sale through a channel (as
//! a gift), activation (the recipient's claim), payments, block and unblock, the balance refund
//! and its used-share rule, and closing. Every refusal of the four card-life messages is reached
//! through the wire, a SELL retry replays or names the differing field, and a graceful restart
//! keeps every state. A second test drives the same operations through the operator CLI.

use std::path::Path;
use std::process::{Command, Output};

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    Authorize, BalanceInquiry, BalanceResult, BlockReason, CardActivate, CardBlock, CardClaim,
    CardConsign, CardIssue, CardLoad, CardRefund, CardRegister, CardSell, CardState, CardUnblock,
    Category, FLAG_REPLAYED, Field, ForeignConvert, ForeignImport, Funding, Inquiry, MsgType,
    OpResult, OpStatus, ResultCode, Sale, Void, new_op_id, pin,
};
use pinswitch_tests::{Switch, code, fresh_dir, one};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const PASSWORD: &[u8] = b"4321";
const CHANNEL: u32 = 7;
const GIFT_RECIPIENT: u64 = 555;
const ACCOUNT: u64 = 42;

/// An `[engine]` catalogue of these face values, one `[[engine.products]]` table each, with
/// the extra keys (TOML lines) given for some of them.
fn catalogue(face_values_won: &[u64], rules: &[(u64, &str)]) -> String {
    let mut text = String::new();
    for face_value_won in face_values_won {
        text += &format!("[[engine.products]]\nface_value_won = {face_value_won}\n");
        for (_, lines) in rules.iter().filter(|(face, _)| face == face_value_won) {
            text += lines;
        }
    }
    text
}

/// The default face values.
const FACE_VALUES_WON: [u64; 6] = [5_000, 10_000, 20_000, 30_000, 50_000, 100_000];

fn sell(op_id: u128, pin: u64, price_won: u64) -> CardSell {
    CardSell {
        op_id,
        pin,
        channel_id: CHANNEL,
        price_won,
        payment_means: Funding::CreditCard as u8,
        gift_recipient_ref: GIFT_RECIPIENT,
    }
}

fn sale(pin: u64, amount_won: u64) -> Sale {
    Sale {
        op_id: new_op_id(),
        pin,
        password: PASSWORD.to_vec(),
        amount_won,
        merchant_id: 77,
        category: Category::InternetPayment as u8,
    }
}

fn block(pin: u64, reason: u8) -> CardBlock {
    CardBlock { op_id: new_op_id(), pin, reason }
}

fn unblock(pin: u64) -> CardUnblock {
    CardUnblock { op_id: new_op_id(), pin }
}

fn refund(pin: u64, payout_account_ref: u64) -> CardRefund {
    CardRefund { op_id: new_op_id(), pin, payout_account_ref }
}

async fn issue(client: &Client, face_value_won: u64) -> u64 {
    let result =
        one(client.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won }]).await).await;
    assert_eq!(result.code, ResultCode::Approved.as_u16());
    result.pin
}

async fn activate(client: &Client, pin: u64) -> OpResult {
    one(client
        .card_activate(&[CardActivate { op_id: new_op_id(), pin, password: PASSWORD.to_vec() }])
        .await)
    .await
}

async fn view(client: &Client, pin: u64) -> BalanceResult {
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await;
    assert_eq!(card.code, ResultCode::Approved.as_u16());
    card
}

/// The card's state and balance, as BALANCE_INQUIRY shows them.
async fn state(client: &Client, pin: u64) -> (CardState, u64) {
    let card = view(client, pin).await;
    (CardState::from_u8(card.state).expect("known state"), card.balance_won)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_sold_blocked_unblocked_refunded_and_closed_over_tcp() {
    let dir = fresh_dir("card-life");
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");

    // `life` goes the whole way; `stock` stays sold; `small` checks the 80 % rule with a
    // recharge; `locked` checks the wrong-password lockout and stays blocked over the restart.
    let life = issue(&client, 20_000).await;
    let stock = issue(&client, 10_000).await;
    let small = issue(&client, 10_000).await;
    let locked = issue(&client, 10_000).await;
    assert_eq!(state(&client, life).await, (CardState::Issued, 20_000));

    // SELL: channel, payment means and price are checked first.
    let mut bad = sell(new_op_id(), life, 19_000);
    bad.channel_id = 0;
    assert_eq!(code(&one(client.card_sell(&[bad]).await).await), ResultCode::ChannelInvalid);
    let mut bad = sell(new_op_id(), life, 19_000);
    bad.payment_means = 9;
    assert_eq!(code(&one(client.card_sell(&[bad]).await).await), ResultCode::ChannelInvalid);
    let bad = sell(new_op_id(), life, 0);
    assert_eq!(code(&one(client.card_sell(&[bad]).await).await), ResultCode::AmountInvalid);
    assert_eq!(state(&client, life).await, (CardState::Issued, 20_000));

    // A gift sale: the card is sold, its value is not spendable before the claim.
    let sold_op = new_op_id();
    let sold = one(client.card_sell(&[sell(sold_op, life, 19_000)]).await).await;
    assert_eq!(
        (code(&sold), sold.amount_won, sold.balance_won),
        (ResultCode::Approved, 20_000, 20_000)
    );
    assert!(sold.approval_code >= 100_000 && sold.approval_code < 1_000_000);
    assert_eq!(sold.flags & FLAG_REPLAYED, 0);
    assert_eq!(state(&client, life).await, (CardState::Sold, 20_000));

    // Exactly once: the same SELL replays; the same op id with another price names the price.
    let retry = one(client.card_sell(&[sell(sold_op, life, 19_000)]).await).await;
    assert_eq!(retry.flags & FLAG_REPLAYED, FLAG_REPLAYED);
    assert_eq!(
        (retry.code, retry.approval_code, retry.amount_won),
        (sold.code, sold.approval_code, sold.amount_won)
    );
    let reused = one(client.card_sell(&[sell(sold_op, life, 18_000)]).await).await;
    assert_eq!((code(&reused), reused.field), (ResultCode::OpIdReused, Field::Price as u8));
    let found = one(client.inquiry(&[Inquiry { pin: life, op_id: sold_op }]).await).await;
    assert_eq!(
        (found.status, found.msg_type),
        (OpStatus::Completed as u8, MsgType::CardSell as u16)
    );
    assert_eq!(found.result.approval_code, sold.approval_code);

    // Sold twice: refused, with a new op id.
    let again = one(client.card_sell(&[sell(new_op_id(), life, 19_000)]).await).await;
    assert_eq!((code(&again), again.balance_won), (ResultCode::CardAlreadySold, 20_000));

    // A batch: results in event order; malformed and unknown PINs answered per event.
    let typo = pin::with_check_digit(stock / 10) ^ 1;
    let unknown = pin::with_check_digit(123_456_789_012_345);
    let batch = [
        sell(new_op_id(), stock, 10_000),
        sell(new_op_id(), typo, 10_000),
        sell(new_op_id(), unknown, 10_000),
    ];
    let codes: Vec<ResultCode> =
        client.card_sell(&batch).await.expect("batch").iter().map(code).collect();
    assert_eq!(
        codes,
        [ResultCode::Approved, ResultCode::PinFormatInvalid, ResultCode::CardNotFound]
    );

    // Sold but not activated: not spendable. Lost in transit, it can be blocked (nobody can
    // claim it then); unblocking returns it to sold.
    assert_eq!(code(&one(client.sale(&[sale(life, 1000)]).await).await), ResultCode::CardNotActive);
    let result = one(client.card_block(&[block(life, BlockReason::Lost as u8)]).await).await;
    assert_eq!(code(&result), ResultCode::Approved);
    assert_eq!(code(&activate(&client, life).await), ResultCode::CardBlocked);
    let result =
        one(client.card_unblock(&[CardUnblock { op_id: new_op_id(), pin: life }]).await).await;
    assert_eq!(code(&result), ResultCode::Approved);
    assert_eq!(state(&client, life).await.0, CardState::Sold);

    // The recipient's claim: a plain activation is refused, a claim naming another recipient
    // too; the recipient the sale named claims it with their password (and a password hint
    // left with the site). The card is in use; selling it again is refused.
    assert_eq!(code(&activate(&client, life).await), ResultCode::GiftClaimRequired);
    let claim = |gift_recipient_ref| CardClaim {
        op_id: new_op_id(),
        pin: life,
        password: PASSWORD.to_vec(),
        gift_recipient_ref,
        password_hint: true,
    };
    assert_eq!(
        code(&one(client.card_claim(&[claim(GIFT_RECIPIENT + 1)]).await).await),
        ResultCode::GiftRecipientMismatch
    );
    assert_eq!(
        code(&one(client.card_claim(&[claim(GIFT_RECIPIENT)]).await).await),
        ResultCode::Approved
    );
    assert_eq!(state(&client, life).await, (CardState::Active, 20_000));
    assert!(view(&client, life).await.password_hint);
    let again = one(client.card_sell(&[sell(new_op_id(), life, 19_000)]).await).await;
    assert_eq!(code(&again), ResultCode::CardAlreadySold);
    let result = one(client.sale(&[sale(life, 2_000)]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::Approved, 18_000));

    // BLOCK: the reason must be a BlockReason; an active card cannot be unblocked.
    for reason in [0, 5] {
        let result = one(client.card_block(&[block(life, reason)]).await).await;
        assert_eq!(code(&result), ResultCode::BlockReasonInvalid);
    }
    let result = one(client.card_unblock(&[unblock(life)]).await).await;
    assert_eq!(code(&result), ResultCode::CardNotBlocked);

    // A hold placed before the block can still be captured while blocked.
    let hold_id = new_op_id();
    let authorize = Authorize {
        op_id: hold_id,
        pin: life,
        password: PASSWORD.to_vec(),
        amount_won: 1_000,
        merchant_id: 5,
        category: Category::TelephoneCall as u8,
        hold_ttl_s: 600,
    };
    assert_eq!(
        code(&one(client.authorize(std::slice::from_ref(&authorize)).await).await),
        ResultCode::Approved
    );
    let result = one(client.card_block(&[block(life, BlockReason::Lost as u8)]).await).await;
    assert_eq!(
        (code(&result), result.balance_won, result.available_won),
        (ResultCode::Approved, 18_000, 17_000)
    );
    assert_eq!(state(&client, life).await, (CardState::Blocked, 18_000));
    let result = one(client.sale(&[sale(life, 100)]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::CardBlocked, 18_000));
    let result = one(client.card_block(&[block(life, BlockReason::Stolen as u8)]).await).await;
    assert_eq!(code(&result), ResultCode::CardBlocked);
    let capture = pinswitch_protocol::Capture {
        op_id: new_op_id(),
        pin: life,
        hold_id,
        amount_won: 1_000,
        final_capture: true,
    };
    let result = one(client.capture(&[capture]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::Approved, 17_000));

    // UNBLOCK: back to active, once.
    let result = one(client.card_unblock(&[unblock(life)]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::Approved, 17_000));
    assert_eq!(state(&client, life).await, (CardState::Active, 17_000));
    let result = one(client.card_unblock(&[unblock(life)]).await).await;
    assert_eq!(code(&result), ResultCode::CardNotBlocked);

    // REFUND: an account is required; 3,000 of 20,000 used is short of 60 %.
    let result = one(client.card_refund(&[refund(life, 0)]).await).await;
    assert_eq!(code(&result), ResultCode::FormatError);
    let result = one(client.card_refund(&[refund(life, ACCOUNT)]).await).await;
    assert_eq!((code(&result), result.balance_won), (ResultCode::RefundRuleNotMet, 17_000));
    // 11,999 used is still short; 12,000 is exactly 60 %.
    assert_eq!(one(client.sale(&[sale(life, 8_999)]).await).await.balance_won, 8_001);
    let result = one(client.card_refund(&[refund(life, ACCOUNT)]).await).await;
    assert_eq!(code(&result), ResultCode::RefundRuleNotMet);
    assert_eq!(one(client.sale(&[sale(life, 1)]).await).await.balance_won, 8_000);
    // A pending hold stands in the way until it is settled.
    let pending = Authorize { op_id: new_op_id(), amount_won: 500, ..authorize.clone() };
    let hold = one(client.authorize(std::slice::from_ref(&pending)).await).await;
    assert_eq!(code(&hold), ResultCode::Approved);
    let result = one(client.card_refund(&[refund(life, ACCOUNT)]).await).await;
    assert_eq!(
        (code(&result), result.balance_won, result.available_won),
        (ResultCode::HoldsOutstanding, 8_000, 7_500)
    );
    let void = Void { op_id: new_op_id(), pin: life, hold_id: pending.op_id };
    assert_eq!(code(&one(client.void(&[void]).await).await), ResultCode::Approved);
    let paid = one(client.card_refund(&[refund(life, ACCOUNT)]).await).await;
    assert_eq!((code(&paid), paid.amount_won, paid.balance_won), (ResultCode::Approved, 8_000, 0));
    assert_eq!(state(&client, life).await, (CardState::Closed, 0));
    // Closed is terminal.
    assert_eq!(code(&one(client.sale(&[sale(life, 1)]).await).await), ResultCode::CardClosed);
    assert_eq!(
        code(&one(client.card_refund(&[refund(life, ACCOUNT)]).await).await),
        ResultCode::CardClosed
    );
    assert_eq!(
        code(&one(client.card_unblock(&[unblock(life)]).await).await),
        ResultCode::CardClosed
    );

    // Face value up to 10,000: 80 % of face plus recharges. 15,000 of 20,000 (75 %) is short.
    assert_eq!(
        code(&one(client.card_sell(&[sell(new_op_id(), small, 10_000)]).await).await),
        ResultCode::Approved
    );
    let claim = CardClaim {
        op_id: new_op_id(),
        pin: small,
        password: PASSWORD.to_vec(),
        gift_recipient_ref: GIFT_RECIPIENT,
        password_hint: false,
    };
    assert_eq!(code(&one(client.card_claim(&[claim]).await).await), ResultCode::Approved);
    let load = CardLoad {
        op_id: new_op_id(),
        pin: small,
        amount_won: 10_000,
        funding: Funding::Cash as u8,
    };
    assert_eq!(one(client.card_load(&[load]).await).await.balance_won, 20_000);
    assert_eq!(one(client.sale(&[sale(small, 15_000)]).await).await.balance_won, 5_000);
    let result = one(client.card_refund(&[refund(small, ACCOUNT)]).await).await;
    assert_eq!(code(&result), ResultCode::RefundRuleNotMet);
    assert_eq!(one(client.sale(&[sale(small, 1_000)]).await).await.balance_won, 4_000);
    let small_refund = refund(small, ACCOUNT);
    let paid_small = one(client.card_refund(&[small_refund]).await).await;
    assert_eq!((code(&paid_small), paid_small.amount_won), (ResultCode::Approved, 4_000));

    // UNBLOCK also clears a wrong-password lockout of an active card.
    assert_eq!(code(&activate(&client, locked).await), ResultCode::Approved);
    for _ in 0..5 {
        let mut wrong = sale(locked, 100);
        wrong.password = b"0000".to_vec();
        one(client.sale(&[wrong]).await).await;
    }
    assert_eq!(
        code(&one(client.sale(&[sale(locked, 100)]).await).await),
        ResultCode::PasswordTriesExceeded
    );
    assert_eq!(view(&client, locked).await.password_tries_left, 0);
    assert_eq!(
        code(&one(client.card_unblock(&[unblock(locked)]).await).await),
        ResultCode::Approved
    );
    assert_eq!(view(&client, locked).await.password_tries_left, 5);
    assert_eq!(one(client.sale(&[sale(locked, 100)]).await).await.balance_won, 9_900);
    let result =
        one(client.card_block(&[block(locked, BlockReason::HolderRequest as u8)]).await).await;
    assert_eq!(code(&result), ResultCode::Approved);

    // Every state survives a graceful restart, and so do the idempotency records.
    drop(client);
    switch.stop();
    let switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    assert_eq!(state(&client, life).await, (CardState::Closed, 0));
    assert_eq!(state(&client, stock).await, (CardState::Sold, 10_000));
    assert_eq!(state(&client, small).await, (CardState::Closed, 0));
    assert_eq!(state(&client, locked).await, (CardState::Blocked, 9_900));
    assert_eq!(code(&one(client.sale(&[sale(locked, 100)]).await).await), ResultCode::CardBlocked);
    assert_eq!(code(&one(client.sale(&[sale(life, 1)]).await).await), ResultCode::CardClosed);
    let retry = one(client.card_sell(&[sell(sold_op, life, 19_000)]).await).await;
    assert_eq!(retry.flags & FLAG_REPLAYED, FLAG_REPLAYED);
    assert_eq!((retry.code, retry.approval_code), (sold.code, sold.approval_code));
    let reused = one(client.card_sell(&[sell(sold_op, life, 18_000)]).await).await;
    assert_eq!((code(&reused), reused.field), (ResultCode::OpIdReused, Field::Price as u8));
    let replayed = one(client.card_refund(&[small_refund]).await).await;
    assert_eq!((replayed.flags & FLAG_REPLAYED, replayed.amount_won), (FLAG_REPLAYED, 4_000));
    let moved = CardRefund { payout_account_ref: ACCOUNT + 1, ..small_refund };
    let reused = one(client.card_refund(&[moved]).await).await;
    assert_eq!((code(&reused), reused.field), (ResultCode::OpIdReused, Field::PayoutAccount as u8));
}

fn binary() -> &'static Path {
    Path::new(BIN)
}

/// Runs `pinswitch card ARGS --connect ADDRESS`.
fn card(address: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("card")
        .args(args)
        .args(["--connect", address])
        .output()
        .expect("running pinswitch card")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}

/// Asserts the exit code and that the result line names `expected`.
fn expect(output: &Output, exit: i32, expected: &str) {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(exit), "{output:?}");
    assert!(text.contains(expected), "expected {expected:?} in {text:?}");
}

#[test]
fn operator_sells_blocks_unblocks_and_refunds_a_card() {
    let data_dir = fresh_dir("card-life-cli");
    let mut switch = Switch::start(binary(), &data_dir, &[]);
    let address = switch.address.clone();

    let issued = card(&address, &["issue", "--product", "20000"]);
    assert!(issued.status.success(), "{issued:?}");
    let text = stdout(&issued);
    let pin = text.split_whitespace().next().expect("a PIN").to_string();
    let pin = pin.as_str();

    // Arguments clap refuses never reach the switch (exit 2).
    assert_eq!(
        card(&address, &["sell", pin, "--channel", "3", "--price", "20000", "--means", "6"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(card(&address, &["block", pin, "--reason", "bored"]).status.code(), Some(2));

    expect(
        &card(&address, &["sell", pin, "--channel", "0", "--price", "20000"]),
        1,
        "CHANNEL_INVALID (118)",
    );
    let sold = card(
        &address,
        &["sell", pin, "--channel", "3", "--price", "18000", "--means", "1", "--gift-to", "99"],
    );
    expect(&sold, 0, "APPROVED (0), face value 20000 won");
    expect(
        &card(&address, &["sell", pin, "--channel", "3", "--price", "18000"]),
        1,
        "CARD_ALREADY_SOLD (107)",
    );
    expect(&card(&address, &["show", pin]), 0, "state     sold");
    expect(&card(&address, &["block", pin, "--reason", "lost"]), 0, "APPROVED (0)");
    expect(&card(&address, &["show", pin]), 0, "state     blocked");
    expect(&card(&address, &["unblock", pin]), 0, "APPROVED (0)");
    expect(&card(&address, &["show", pin]), 0, "state     sold");

    expect(
        &card(&address, &["activate", pin, "--password", "4321"]),
        1,
        "GIFT_CLAIM_REQUIRED (128)",
    );
    expect(
        &card(&address, &["claim", pin, "--password", "4321", "--gift-ref", "98"]),
        1,
        "GIFT_RECIPIENT_MISMATCH (127)",
    );
    expect(
        &card(&address, &["claim", pin, "--password", "4321", "--gift-ref", "99", "--hint"]),
        0,
        "APPROVED (0), balance 20000 won",
    );
    expect(
        &card(&address, &["show", pin]),
        0,
        "hint      a password hint is kept by the card site",
    );
    expect(&card(&address, &["unblock", pin]), 1, "CARD_NOT_BLOCKED (108)");
    expect(
        &card(&address, &["block", pin, "--reason", "stolen"]),
        0,
        "APPROVED (0), balance 20000 won",
    );
    expect(&card(&address, &["show", pin]), 0, "state     blocked");
    expect(
        &card(&address, &["sale", pin, "--password", "4321", "--amount", "100"]),
        1,
        "CARD_BLOCKED (103)",
    );
    expect(&card(&address, &["unblock", pin]), 0, "APPROVED (0), balance 20000 won");

    expect(&card(&address, &["refund", pin, "--account", "0"]), 1, "FORMAT_ERROR (900)");
    expect(&card(&address, &["refund", pin, "--account", "7"]), 1, "REFUND_RULE_NOT_MET (117)");
    expect(
        &card(&address, &["sale", pin, "--password", "4321", "--amount", "12000"]),
        0,
        "balance 8000 won",
    );
    expect(
        &card(&address, &["refund", pin, "--account", "7"]),
        0,
        "APPROVED (0), paid out 8000 won, balance 0 won",
    );
    let shown = stdout(&card(&address, &["show", pin]));
    assert!(shown.contains("state     closed") && shown.contains("balance   0 won"), "{shown}");
    expect(&card(&address, &["refund", pin, "--account", "7"]), 1, "CARD_CLOSED (105)");
    switch.stop();
}

/// The product mix from the configuration: a 5,000-won card that may pay only for internet
/// payments is refused a telephone call with CATEGORY_NOT_ALLOWED, over the wire; and each
/// product earns points at its own configured rate (none for the 5,000-won card, 5 % for the
/// 10,000-won card), its own balance cap and its own recharge unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_product_mix_limits_categories() {
    let dir = fresh_dir("product-mix");
    let config = dir.with_extension("toml");
    let products = catalogue(
        &FACE_VALUES_WON,
        &[
            (
                5_000,
                "categories = [\"internet_payment\"]\npoints_per_mille = 0\n\
                 balance_cap_won = 100000\n",
            ),
            (10_000, "points_per_mille = 50\nrecharge_unit_won = 5000\n"),
        ],
    );
    std::fs::write(&config, products).expect("config");
    let mut switch =
        Switch::start(Path::new(BIN), &dir, &["--config", config.to_str().expect("utf-8")]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let small = issue(&client, 5_000).await;
    assert_eq!(code(&activate(&client, small).await), ResultCode::Approved);
    assert_eq!(code(&one(client.sale(&[sale(small, 100)]).await).await), ResultCode::Approved);
    let call = Sale { category: Category::TelephoneCall as u8, ..sale(small, 100) };
    assert_eq!(code(&one(client.sale(&[call]).await).await), ResultCode::CategoryNotAllowed);
    let large = issue(&client, 10_000).await;
    assert_eq!(code(&activate(&client, large).await), ResultCode::Approved);
    let call = Sale { category: Category::TelephoneCall as u8, ..sale(large, 100) };
    assert_eq!(code(&one(client.sale(&[call]).await).await), ResultCode::Approved);
    for pin in [small, large] {
        let register =
            CardRegister { op_id: new_op_id(), pin, holder_ref: 8, verified_name: false };
        assert_eq!(code(&one(client.card_register(&[register]).await).await), ResultCode::Approved);
        assert_eq!(code(&one(client.sale(&[sale(pin, 1_000)]).await).await), ResultCode::Approved);
    }
    let small_points =
        one(client.balance_inquiry(&[BalanceInquiry { pin: small }]).await).await.points;
    assert_eq!(small_points, 0, "the 5,000-won product earns no points");
    let large_points =
        one(client.balance_inquiry(&[BalanceInquiry { pin: large }]).await).await.points;
    assert_eq!(large_points, 50, "the 10,000-won product earns 50 per 1,000 won");
    // The 5,000-won product's own cap (100,000 won) and the 10,000-won product's recharge unit.
    let load = |pin, amount_won| CardLoad {
        op_id: new_op_id(),
        pin,
        amount_won,
        funding: Funding::Cash as u8,
    };
    assert_eq!(
        code(&one(client.card_load(&[load(small, 100_000)]).await).await),
        ResultCode::BalanceCapExceeded
    );
    assert_eq!(
        code(&one(client.card_load(&[load(small, 90_000)]).await).await),
        ResultCode::Approved
    );
    assert_eq!(
        code(&one(client.card_load(&[load(large, 5_000)]).await).await),
        ResultCode::Approved
    );
    assert_eq!(
        code(&one(client.card_load(&[load(small, 5_000)]).await).await),
        ResultCode::RechargeUnitInvalid
    );
    switch.stop();
}

/// CARD_REGISTER over the wire and through the CLI: a verified name raises the balance cap from
/// 500,000 to 2,000,000 won, so a recharge refused before is approved after; it survives restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_verified_name_raises_the_cap() {
    let dir = fresh_dir("register");
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let pin = issue(&client, 100_000).await;
    assert_eq!(code(&activate(&client, pin).await), ResultCode::Approved);
    let load = |amount_won| CardLoad {
        op_id: new_op_id(),
        pin,
        amount_won,
        funding: Funding::BankTransfer as u8,
    };
    assert_eq!(
        code(&one(client.card_load(&[load(500_000)]).await).await),
        ResultCode::BalanceCapExceeded
    );
    let register = CardRegister { op_id: new_op_id(), pin, holder_ref: 0, verified_name: true };
    assert_eq!(code(&one(client.card_register(&[register]).await).await), ResultCode::FormatError);
    let registered = card(
        &switch.address,
        &["register", &pin::format(pin), "--holder", "77", "--verified-name"],
    );
    assert_eq!(registered.status.code(), Some(0), "{registered:?}");
    assert!(
        stdout(&registered).contains("APPROVED (0), balance cap 2000000 won"),
        "{}",
        stdout(&registered)
    );
    assert_eq!(code(&one(client.card_load(&[load(500_000)]).await).await), ResultCode::Approved);
    // A registered card earns points (1 % by default), shown by BALANCE_INQUIRY and the CLI.
    assert_eq!(code(&one(client.sale(&[sale(pin, 12_345)]).await).await), ResultCode::Approved);
    let points = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await.points;
    assert_eq!(points, 123);
    let shown = stdout(&card(&switch.address, &["show", &pin::format(pin)]));
    assert!(shown.contains("points    123"), "{shown}");
    drop(client);
    switch.stop();

    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    assert_eq!(code(&one(client.card_load(&[load(1_400_000)]).await).await), ResultCode::Approved);
    // 1,987,655 won now: another 20,000 would pass the named cap.
    assert_eq!(
        code(&one(client.card_load(&[load(20_000)]).await).await),
        ResultCode::BalanceCapExceeded
    );
    let points = one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await.points;
    assert_eq!(points, 123, "points survive a restart");
    switch.stop();
}

/// A promotional product (from the configuration): each recharge extends validity by a year,
/// visible in BALANCE_INQUIRY's `valid_until_s`; an ordinary product's stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recharging_a_promotional_card_extends_its_validity() {
    let dir = fresh_dir("promotional");
    let config = dir.with_extension("toml");
    let products = catalogue(&FACE_VALUES_WON, &[(20_000, "promotional = true\n")]);
    std::fs::write(&config, products).expect("config");
    let mut switch =
        Switch::start(Path::new(BIN), &dir, &["--config", config.to_str().expect("utf-8")]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let valid_until = |pin| {
        let client = &client;
        async move { one(client.balance_inquiry(&[BalanceInquiry { pin }]).await).await.valid_until_s }
    };
    let load = |pin| CardLoad {
        op_id: new_op_id(),
        pin,
        amount_won: 10_000,
        funding: Funding::Cash as u8,
    };
    let promotional = issue(&client, 20_000).await;
    let ordinary = issue(&client, 10_000).await;
    assert_eq!(valid_until(promotional).await, 0, "in stock: validity has not started");
    for pin in [promotional, ordinary] {
        assert_eq!(code(&activate(&client, pin).await), ResultCode::Approved);
    }
    let (promotional_before, ordinary_before) =
        (valid_until(promotional).await, valid_until(ordinary).await);
    assert!(promotional_before > 0 && ordinary_before > 0);
    for pin in [promotional, ordinary] {
        assert_eq!(code(&one(client.card_load(&[load(pin)]).await).await), ResultCode::Approved);
    }
    assert_eq!(valid_until(promotional).await, promotional_before + 365 * 86_400);
    assert_eq!(valid_until(ordinary).await, ordinary_before);
    switch.stop();
}

/// Consignment: a block of issued cards goes to a partner (e.g. a mobile operator) that sells
/// them one by one through its own channel; any other channel is refused, over the wire and by
/// the CLI, and the consignment survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consigned_cards_are_sold_only_by_their_partner() {
    const PARTNER: u32 = 21;
    let dir = fresh_dir("consign");
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let mut block = Vec::new();
    for _ in 0..3 {
        block.push(issue(&client, 10_000).await);
    }
    let consign: Vec<CardConsign> = block
        .iter()
        .map(|pin| CardConsign {
            op_id: new_op_id(),
            pin: *pin,
            partner_id: PARTNER,
            commission_per_mille: 35,
        })
        .collect();
    let results = client.card_consign(&consign).await.expect("consign");
    assert!(results.iter().all(|result| code(result) == ResultCode::Approved));
    let elsewhere = CardSell { channel_id: CHANNEL, ..sell(new_op_id(), block[0], 10_000) };
    assert_eq!(
        code(&one(client.card_sell(&[elsewhere]).await).await),
        ResultCode::CardConsignedElsewhere
    );
    drop(client);
    switch.stop();

    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let by_partner = CardSell { channel_id: PARTNER, ..sell(new_op_id(), block[0], 10_000) };
    assert_eq!(code(&one(client.card_sell(&[by_partner]).await).await), ResultCode::Approved);
    let again = card(
        &switch.address,
        &["consign", &pin::format(block[1]), "--partner", "22", "--commission", "35"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(stdout(&again).contains("CARD_CONSIGNED_ELSEWHERE (126)"), "{}", stdout(&again));
    let wrong = card(
        &switch.address,
        &["sell", &pin::format(block[2]), "--channel", "3", "--price", "10000"],
    );
    assert!(stdout(&wrong).contains("CARD_CONSIGNED_ELSEWHERE (126)"), "{}", stdout(&wrong));
    switch.stop();
}

/// The catalogue changes without a restart: SIGHUP re-reads the configuration file and every
/// shard journals the new rules. A product added to the file can be issued, a product mix
/// widened lets a refused category pay; a file in the old parallel-array form is refused, naming
/// the new one, and changes nothing; the rules survive a restart (recovery replays the
/// journaled change at its place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_catalogue_without_a_restart() {
    let dir = fresh_dir("reload");
    let config = dir.with_extension("toml");
    let write_config = |text: &str| std::fs::write(&config, text).expect("config");
    let small_internet_only = (5_000, "categories = [\"internet_payment\"]\n");
    write_config(&catalogue(&FACE_VALUES_WON, &[small_internet_only]));
    let mut switch =
        Switch::start(Path::new(BIN), &dir, &["--config", config.to_str().expect("utf-8")]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let small = issue(&client, 5_000).await;
    assert_eq!(code(&activate(&client, small).await), ResultCode::Approved);
    let call = || Sale { category: Category::TelephoneCall as u8, ..sale(small, 100) };
    assert_eq!(code(&one(client.sale(&[call()]).await).await), ResultCode::CategoryNotAllowed);
    let new_product = || CardIssue { op_id: new_op_id(), face_value_won: 70_000 };
    let refused = one(client.card_issue(&[new_product()]).await).await;
    assert_eq!(refused.code, ResultCode::ProductNotFound.as_u16());

    write_config(&catalogue(&[5_000, 10_000, 20_000, 30_000, 50_000, 70_000, 100_000], &[]));
    switch.signal("HUP");
    switch.wait_for_line("reloaded the engine rules on 2 shards");
    assert_eq!(code(&one(client.sale(&[call()]).await).await), ResultCode::Approved);
    let issued = one(client.card_issue(&[new_product()]).await).await;
    assert_eq!(issued.code, ResultCode::Approved.as_u16());

    switch.signal("HUP");
    switch.wait_for_line("the engine rules are unchanged");
    // The parallel arrays of the form before product tables are refused, naming the new form.
    write_config("[engine]\nproduct_category_masks = [1]\n");
    switch.signal("HUP");
    let refusal = switch.wait_for_line("reload refused");
    assert!(
        refusal.contains("product_category_masks") && refusal.contains("[[engine.products]]"),
        "{refusal}"
    );
    assert_eq!(
        code(&one(client.sale(&[call()]).await).await),
        ResultCode::Approved,
        "a refused file changes nothing"
    );
    drop(client);
    switch.stop();

    // The journal holds the change; the restart's file still has the bad mix, so start with
    // no file (production defaults differ from the reloaded rules, and that change is then
    // journaled too): the 70,000-won card issued under the reloaded rules is still there.
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin: issued.pin }]).await).await;
    assert_eq!((card.code, card.face_value_won), (ResultCode::Approved.as_u16(), 70_000));
    switch.stop();
}

/// Foreign PINs over the wire and through the CLI: an operator imports a pool of foreign PINs
/// (each code once), a holder converts part of the balance into one; a retry hands out the same
/// PIN, also after a SIGKILL; an empty pool and an unknown product are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_pins_are_imported_and_converted() {
    let dir = fresh_dir("foreign");
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        "[[engine.foreign_products]]\nproduct_id = 1\npartner_id = 501\ncurrency = \"USD\"\nface_value_minor = 1000\nprice_won = 14000\n\n\
         [[engine.foreign_products]]\nproduct_id = 2\npartner_id = 502\ncurrency = \"JPY\"\nface_value_minor = 1000\nprice_won = 9500\n",
    )
    .expect("config");
    let config_arg = ["--config", config.to_str().expect("utf-8")];
    let mut switch = Switch::start(Path::new(BIN), &dir, &config_arg);
    // Forty codes: imports spread over both shards by the code's hash, and a conversion draws
    // from the card's shard, so each shard must get a few.
    let codes: Vec<String> = (0..40).map(|index| format!("US{index:06}")).collect();
    let file = dir.with_extension("codes");
    std::fs::write(&file, codes.join("\n") + "\n\n").expect("codes file");
    let imported =
        card(&switch.address, &["foreign-import", "--product", "1", file.to_str().expect("utf-8")]);
    assert_eq!(imported.status.code(), Some(0), "{imported:?}");
    assert_eq!(stdout(&imported).matches("APPROVED (0)").count(), 40);

    let client = Client::connect(&switch.address).await.expect("connect");
    let again = ForeignImport {
        op_id: new_op_id(),
        product_id: 1,
        foreign_pin: codes[7].clone().into_bytes(),
    };
    assert_eq!(
        code(&one(client.foreign_import(&[again]).await).await),
        ResultCode::ForeignPinExists
    );
    let bad =
        ForeignImport { op_id: new_op_id(), product_id: 1, foreign_pin: b"no spaces".to_vec() };
    assert_eq!(code(&one(client.foreign_import(&[bad]).await).await), ResultCode::FormatError);

    let pin = issue(&client, 50_000).await;
    assert_eq!(code(&activate(&client, pin).await), ResultCode::Approved);
    let convert =
        |op_id, product_id| ForeignConvert { op_id, pin, password: PASSWORD.to_vec(), product_id };
    let first_op = new_op_id();
    let first = one(client.foreign_convert(&[convert(first_op, 1)]).await).await;
    assert_eq!(code(&first.result), ResultCode::Approved);
    assert_eq!((first.result.amount_won, first.result.balance_won), (14_000, 36_000));
    let first_pin = String::from_utf8(first.foreign_pin.clone()).expect("ascii");
    assert!(codes.contains(&first_pin), "{first_pin}");
    let retried = one(client.foreign_convert(&[convert(first_op, 1)]).await).await;
    assert_eq!(
        (retried.foreign_pin.clone(), retried.result.flags & FLAG_REPLAYED),
        (first.foreign_pin.clone(), FLAG_REPLAYED)
    );

    let shown = card(
        &switch.address,
        &["convert", &pin::format(pin), "--product", "1", "--password", "4321"],
    );
    assert_eq!(shown.status.code(), Some(0), "{shown:?}");
    let text = stdout(&shown);
    assert!(
        text.contains("APPROVED (0), foreign PIN US") && text.contains("balance 22000 won"),
        "{text}"
    );
    assert!(!text.contains(&first_pin), "a second conversion gets another PIN: {text}");
    assert_eq!(
        code(&one(client.foreign_convert(&[convert(new_op_id(), 2)]).await).await.result),
        ResultCode::ForeignPinUnavailable
    );
    assert_eq!(
        code(&one(client.foreign_convert(&[convert(new_op_id(), 9)]).await).await.result),
        ResultCode::ForeignProductUnknown
    );
    drop(client);

    switch.kill();
    let mut switch = Switch::start(Path::new(BIN), &dir, &config_arg);
    let client = Client::connect(&switch.address).await.expect("reconnect");
    let after = one(client.foreign_convert(&[convert(first_op, 1)]).await).await;
    assert_eq!(after.foreign_pin, first.foreign_pin, "the same PIN after a crash");
    assert_eq!(view(&client, pin).await.balance_won, 22_000);
    switch.stop();
}

/// Batch issuance for printing: `card issue --count N --pin-file F` writes the new PINs once to
/// a new file (mode 0600) instead of the terminal, and never overwrites an existing one.
#[test]
fn issued_pins_go_to_a_pin_file_written_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = fresh_dir("pin-file");
    let mut switch = Switch::start(Path::new(BIN), &dir, &[]);
    let file = dir.with_extension("pins");
    let file_arg = file.to_str().expect("utf-8");
    let issued = card(
        &switch.address,
        &["issue", "--product", "10000", "--count", "3", "--pin-file", file_arg],
    );
    expect(&issued, 0, "3 PINs written to");
    assert!(!stdout(&issued).contains(','), "no PIN on the terminal: {}", stdout(&issued));
    let text = std::fs::read_to_string(&file).expect("PIN file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(std::fs::metadata(&file).expect("metadata").permissions().mode() & 0o777, 0o600);
    for line in &lines {
        let (pin, face) = line.split_once(',').expect("PIN,face value");
        assert_eq!(face, "10000");
        expect(&card(&switch.address, &["show", pin]), 0, "state     issued");
    }
    let again = card(
        &switch.address,
        &["issue", "--product", "10000", "--count", "1", "--pin-file", file_arg],
    );
    assert_ne!(again.status.code(), Some(0), "an existing PIN file is never overwritten");
    assert_eq!(std::fs::read_to_string(&file).expect("PIN file"), text);
    switch.stop();
}
