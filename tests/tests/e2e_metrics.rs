//! The operators' HTTP port end to end: `/metrics` counts exactly what the gateways did (events
//! by type and code, cards, the liability, commits), `/health/live` and `/health/ready` answer,
//! `pinswitch status` reads them, and junk on the port gets 400, 404 or 405 without harm.

use std::path::Path;

use pinswitch_protocol::client::Client;
use pinswitch_protocol::{BalanceInquiry, Category, ResultCode, new_op_id};
use pinswitch_tests::{
    Switch, fresh_dir, http_get, http_request, issue_active_cards, metric_sum, run_binary,
    test_sale,
};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const CARDS: usize = 8;
const FACE_WON: u64 = 50_000;
const SALE_WON: u64 = 1_234;
const SALES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_gateways_did_and_health_answers() {
    let dir = fresh_dir("metrics");
    let switch = Switch::start(Path::new(BIN), &dir, &["--http-listen", "127.0.0.1:0"]);
    let http = switch.http_address();
    assert_eq!(http_get(&http, "/health/live"), (200, "live\n".to_string()));
    assert_eq!(http_get(&http, "/health/ready"), (200, "ready\n".to_string()));

    let client = Client::connect(&switch.address).await.expect("connect");
    let pins = issue_active_cards(&client, CARDS, FACE_WON).await;
    for sale in 0..SALES {
        let pin = pins[sale % CARDS];
        let sale = test_sale(new_op_id(), pin, SALE_WON, Category::InternetPayment);
        let result = client.sale(&[sale]).await.expect("sale");
        assert_eq!(result[0].code, ResultCode::Approved.as_u16());
    }
    let too_much = test_sale(new_op_id(), pins[0], FACE_WON, Category::InternetPayment);
    let declined = client.sale(&[too_much]).await.expect("sale");
    assert_eq!(declined[0].code, ResultCode::InsufficientFunds.as_u16());
    let inquiries: Vec<BalanceInquiry> =
        pins.iter().map(|pin| BalanceInquiry { pin: *pin }).collect();
    client.balance_inquiry(&inquiries).await.expect("balance inquiry");

    // Answers are released after their commit, and the figures are published by then.
    let (status, metrics) = http_get(&http, "/metrics");
    assert_eq!(status, 200);
    let events = |labels: &[&str]| metric_sum(&metrics, "pinswitch_events_total", labels);
    assert_eq!(events(&["type=\"SALE\"", "code=\"APPROVED\""]), SALES as u64, "{metrics}");
    assert_eq!(events(&["type=\"SALE\"", "code=\"INSUFFICIENT_FUNDS\""]), 1);
    assert_eq!(events(&["type=\"CARD_ACTIVATE\"", "code=\"APPROVED\""]), CARDS as u64);
    assert_eq!(events(&["type=\"BALANCE_INQUIRY\"", "code=\"APPROVED\""]), CARDS as u64);
    assert_eq!(metric_sum(&metrics, "pinswitch_cards", &[]), CARDS as u64);
    let liability = CARDS as u64 * FACE_WON - SALES as u64 * SALE_WON;
    assert_eq!(metric_sum(&metrics, "pinswitch_balances_won", &[]), liability);
    assert_eq!(metric_sum(&metrics, "pinswitch_connections_open", &[]), 1);
    assert_eq!(metric_sum(&metrics, "pinswitch_storage_state", &[]), 0);
    assert!(metric_sum(&metrics, "pinswitch_commit_seconds_count", &[]) > 0);
    // Every frame's batch is one answer; the histogram's +Inf bucket counts them all.
    let answers = metric_sum(&metrics, "pinswitch_answer_seconds_count", &[]);
    assert!(answers >= SALES as u64 + 1, "{answers} answers");
    assert_eq!(metric_sum(&metrics, "pinswitch_answer_seconds_bucket", &["le=\"+Inf\""]), answers);
    assert!(metrics.contains("# TYPE pinswitch_events_total counter"));

    let (ready, said) = run_binary(BIN, &["status", "--http", &http]);
    assert!(ready, "{said}");
    assert!(said.starts_with("ready\n"), "{said}");
    assert_eq!(said.lines().filter(|line| line.starts_with("shard ")).count(), 2, "{said}");

    // Junk on the port: an unknown path, another method, a head that never ends, bare bytes.
    assert_eq!(http_get(&http, "/nothing").0, 404);
    assert_eq!(http_request(&http, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    let endless = [b'a'; 20_000];
    assert_eq!(http_request(&http, &endless).0, 400);
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&http).expect("connect");
        stream.write_all(b"\x00\xff\r\n garbage").expect("junk");
    }
    assert_eq!(http_get(&http, "/health/live").0, 200, "the port survives junk");
}
