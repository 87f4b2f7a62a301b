//! Junk operations against the real binary (the reliability review's flood, issue 16): a
//! client sends SALEs on random unknown PINs, a thousand times the op-id window's size, half
//! of them with op ids dated ahead of the clock inside the allowed skew. None takes a place in
//! the window: the gateway's approved SALE is still known (INQUIRY completed, its retry
//! replayed), new payments are approved rather than RETRY_LATER, and nothing of the junk is
//! journaled, so none of it is left after a SIGKILL and restart.

use std::path::Path;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    BalanceInquiry, Category, FLAG_REPLAYED, Inquiry, OpStatus, ResultCode, new_op_id, op_id_at,
    pin,
};
use pinswitch_tests::{Rng, Switch, config_beside, fresh_dir, issue_active_cards, test_sale};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
/// The op-id window of each shard (two generations of 32).
const WINDOW: u64 = 64;
const SKEW_MS: u64 = 60_000;
const JUNK_FRAMES: u64 = 1_000 * WINDOW / 16;

/// The gateway's payment `paid` on `pin` is known: INQUIRY says completed, a retry replays it.
async fn known(client: &Client, pin: u64, paid: u128) {
    let inquiry = client.inquiry(&[Inquiry { pin, op_id: paid }]).await;
    assert_eq!(inquiry.expect("inquiry")[0].status, OpStatus::Completed as u8);
    let retry = test_sale(paid, pin, 1_000, Category::InternetPayment);
    let retry = client.sale(&[retry]).await.expect("retry");
    assert_eq!(retry[0].code, ResultCode::Approved.as_u16());
    assert_eq!(retry[0].flags & FLAG_REPLAYED, FLAG_REPLAYED, "replayed, not run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_unknown_cards_cannot_evict_or_pin_the_op_id_window() {
    let dir = fresh_dir("junk");
    let config = config_beside(
        &dir,
        &format!(
            "[engine]\nidempotency_entries_max = {WINDOW}\nop_clock_skew_max_ms = {SKEW_MS}\n"
        ),
    );
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let gateway = Client::connect(&switch.address).await.expect("connect");
    let pins = issue_active_cards(&gateway, 2, 50_000).await;
    let paid = new_op_id();
    let sale = |op_id, pin| test_sale(op_id, pin, 1_000, Category::InternetPayment);
    let first = gateway.sale(&[sale(paid, pins[0])]).await.expect("sale");
    assert_eq!(first[0].code, ResultCode::Approved.as_u16());

    let junk = Client::connect(&switch.address).await.expect("connect");
    let mut rng = Rng(0x0BAD_5EED);
    let now_ms = || {
        let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        u64::try_from(elapsed.expect("after 1970").as_millis()).expect("ms fit")
    };
    for frame in 0..JUNK_FRAMES {
        let sales: Vec<_> = (0..16u64)
            .map(|event| {
                let ahead_ms = if event % 2 == 0 { 0 } else { SKEW_MS / 2 };
                let op_id = op_id_at(now_ms() + ahead_ms, u128::from(rng.next_u64()));
                let pin =
                    pin::with_check_digit(100_000_000_000_000 + rng.below(900_000_000_000_000));
                sale(op_id, pin)
            })
            .collect();
        for result in junk.sale(&sales).await.expect("junk") {
            assert_eq!(result.code, ResultCode::CardNotFound.as_u16(), "junk frame {frame}");
        }
    }

    // The gateway's payment is still known, and new ones are served.
    known(&gateway, pins[0], paid).await;
    let next = gateway.sale(&[sale(new_op_id(), pins[1])]).await.expect("sale");
    assert_eq!(next[0].code, ResultCode::Approved.as_u16(), "served, not RETRY_LATER");

    // Nothing of the junk was journaled: recovery replays the cards and the two payments only.
    switch.kill();
    let switch = Switch::start(Path::new(BIN), &dir, &["--config", &config]);
    let replayed: u64 = switch.recovered(2).iter().map(|shard| shard.replayed).sum();
    assert!(replayed < 20, "{replayed} records replayed: junk was journaled");
    let gateway = Client::connect(&switch.address).await.expect("reconnect");
    known(&gateway, pins[0], paid).await;
    let balances = gateway
        .balance_inquiry(&[BalanceInquiry { pin: pins[0] }, BalanceInquiry { pin: pins[1] }])
        .await
        .expect("balances");
    assert_eq!((balances[0].balance_won, balances[1].balance_won), (49_000, 49_000));
}
