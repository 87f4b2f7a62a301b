//! Who may do what, end to end over TLS (issue 14): `pinswitch tls init` makes a test CA and
//! certificates; a switch with mutual TLS and plain TCP off serves each identity its roles and
//! business ids and refuses the rest with NOT_PERMITTED before anything in the frame runs; a
//! client without a certificate, or from an unconfigured name, gets nothing that moves money;
//! plain TCP is answered NOT_PERMITTED; and a switch listening beyond loopback without TLS
//! refuses to start.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pinswitch_protocol::client::{Client, ClientError};
use pinswitch_protocol::*;
use pinswitch_tests::{
    Rng, Switch, code, fresh_dir, identity_lines, mutual_tls_config, one, run_binary, tls_client,
};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const PASSWORD: &[u8] = b"4321";
/// The gateway's own merchant, and one it is not bound to.
const OWN_MERCHANT: u64 = 1001;
const OTHER_MERCHANT: u64 = 2002;
const OWNER: u32 = 7;
/// The scanner identity's unknown-card answers a minute.
const SCANNER_GUESSES_MAX: usize = 5;

fn run(args: &[&str]) -> (bool, String) {
    run_binary(BIN, args)
}

/// A switch with mutual TLS, plain TCP off, and six certificates (the stranger's certificate is
/// signed by the same CA but names no configured identity).
fn start(dir: &Path) -> (Switch, PathBuf) {
    let certs = dir.join("certs");
    let clients = ["admin-1", "gw-acme", "sw-tel", "stranger", "scanner", "prober"];
    let mut config = mutual_tls_config(BIN, &certs, &clients);
    let merchant = format!("merchant_ids = [{OWN_MERCHANT}]");
    config.extend(identity_lines("admin-1", &["admin"], &[]));
    config.extend(identity_lines("gw-acme", &["gateway"], std::slice::from_ref(&merchant)));
    config.extend(identity_lines(
        "scanner",
        &["gateway"],
        &[merchant, format!("guesses_per_minute_max = {SCANNER_GUESSES_MAX}")],
    ));
    config.extend(identity_lines("sw-tel", &["call_switch"], &[format!("owner_id = {OWNER}")]));
    config.extend(identity_lines(
        "prober",
        &["call_switch"],
        &[format!("owner_id = {OWNER}"), format!("guesses_per_minute_max = {SCANNER_GUESSES_MAX}")],
    ));
    let switch = Switch::start_with_config(Path::new(BIN), dir, &config, &[]);
    (switch, certs)
}

async fn connect_as(address: &str, certs: &Path, identity: Option<&str>) -> Client {
    let tls = tls_client(certs, identity);
    Client::connect_tls(address, &tls, ClientOptions::default()).await.expect("TLS connect")
}

fn sale(pin: u64, merchant_id: u64) -> Sale {
    Sale {
        op_id: new_op_id(),
        pin,
        password: PASSWORD.to_vec(),
        amount_won: 1_000,
        merchant_id,
        category: Category::InternetPayment as u8,
    }
}

#[track_caller]
fn not_permitted<T: std::fmt::Debug>(result: Result<T, ClientError>) {
    match result {
        Err(ClientError::Rejected(code)) => assert_eq!(code, ResultCode::NotPermitted),
        other => panic!("expected NOT_PERMITTED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_does_its_own_job_and_nothing_else() {
    let dir = fresh_dir("e2e-trust");
    let (mut switch, certs) = start(&dir);
    let address = switch.address.clone();

    // The admin makes a spendable card.
    let admin = connect_as(&address, &certs, Some("admin-1")).await;
    let issued =
        one(admin.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won: 10_000 }]).await)
            .await;
    assert_eq!(issued.code, 0);
    let pin = issued.pin;
    let activate = CardActivate { op_id: new_op_id(), pin, password: PASSWORD.to_vec() };
    assert_eq!(code(&one(admin.card_activate(&[activate]).await).await), ResultCode::Approved);

    // The gateway pays for its own merchant, reads the balance, and nothing more.
    let gateway = connect_as(&address, &certs, Some("gw-acme")).await;
    let paid = one(gateway.sale(&[sale(pin, OWN_MERCHANT)]).await).await;
    assert_eq!((code(&paid), paid.balance_won), (ResultCode::Approved, 9_000));
    not_permitted(gateway.sale(&[sale(pin, OWN_MERCHANT), sale(pin, OTHER_MERCHANT)]).await);
    not_permitted(
        gateway
            .card_load(&[CardLoad { op_id: new_op_id(), pin, amount_won: 10_000, funding: 1 }])
            .await,
    );
    not_permitted(gateway.card_unblock(&[CardUnblock { op_id: new_op_id(), pin }]).await);
    let balance = one(gateway.balance_inquiry(&[BalanceInquiry { pin }]).await).await;
    assert_eq!(balance.balance_won, 9_000, "the refused frames moved nothing");
    gateway.ping(1).await.expect("PING is everyone's");

    // The call switch audits its own calls only, and cannot pay at a merchant.
    let call_switch = connect_as(&address, &certs, Some("sw-tel")).await;
    let audit = |owner_id| SessionAudit {
        owner_id,
        count: 0,
        digest: 0,
        list: true,
        session_ids: Vec::new(),
    };
    let own = call_switch.session_audit(&audit(OWNER)).await.expect("its own audit");
    assert_eq!(own.code, 0);
    not_permitted(call_switch.session_audit(&audit(OWNER + 1)).await);
    not_permitted(call_switch.sale(&[sale(pin, OWN_MERCHANT)]).await);

    // A certificate from the CA whose name is no configured identity: no role.
    let stranger = connect_as(&address, &certs, Some("stranger")).await;
    stranger.ping(2).await.expect("PING");
    not_permitted(stranger.balance_inquiry(&[BalanceInquiry { pin }]).await);

    // No client certificate: the handshake is refused, so no call is answered.
    let anonymous = connect_as(&address, &certs, None).await;
    assert!(anonymous.ping(3).await.is_err(), "a client without a certificate is not served");

    // The CLI speaks TLS with the same files.
    let pem = |name: &str| certs.join(name).to_string_lossy().to_string();
    let (ok, shown) = run(&[
        "card",
        "show",
        "--connect",
        &address,
        &pin::format(pin),
        "--tls-ca",
        &pem("ca.pem"),
        "--tls-cert",
        &pem("admin-1.pem"),
        "--tls-key",
        &pem("admin-1.key"),
    ]);
    assert!(ok && shown.contains("balance   9000 won"), "{shown}");

    // Plain TCP is off: one NOT_PERMITTED frame (PING type, request id 0), then EOF.
    let mut plain = std::net::TcpStream::connect(&address).expect("plain connect");
    let mut ping = Vec::new();
    encode_frame(
        &mut ping,
        &FrameHeader::request(MsgType::Ping, 9, 0),
        &encode_body(&Ping { nonce: 9 }),
    );
    plain.write_all(&ping).expect("writing a plain PING");
    let mut answer = Vec::new();
    plain.read_to_end(&mut answer).expect("reading the refusal");
    let frame = decode_frame(&answer, 1 << 20).expect("a frame").expect("a whole frame");
    assert_eq!(
        (frame.header.status, frame.header.request_id, frame.total_len),
        (ResultCode::NotPermitted.as_u16(), 0, answer.len())
    );
    // A gateway's occasional unknown card is answered as such, never throttled ...
    let mut rng = Rng(0x7E57);
    let mut unknown_pin =
        || pin::with_check_digit(100_000_000_000_000 + rng.below(900_000_000_000_000));
    for _ in 0..3 {
        let declined = one(gateway.sale(&[sale(unknown_pin(), OWN_MERCHANT)]).await).await;
        assert_eq!(code(&declined), ResultCode::CardNotFound);
    }
    // ... while a scanner trying PINs at full speed learns about a handful (its limit, twice at
    // most if a minute turns during the run): the frame that goes past it has its answer
    // withheld, and every frame after is answered RETRY_LATER, on a new connection too; other
    // identities are untouched.
    let scanner = connect_as(&address, &certs, Some("scanner")).await;
    let mut answered = 0;
    let mut withheld = 0;
    let mut refused = 0;
    for _ in 0..40 {
        match scanner.sale(&[sale(unknown_pin(), OWN_MERCHANT)]).await {
            Ok(results) if code(&results[0]) == ResultCode::AnswerWithheld => withheld += 1,
            Ok(results) => {
                assert_eq!(code(&results[0]), ResultCode::CardNotFound);
                answered += 1;
                assert_eq!(withheld + refused, 0, "past the budget, nothing is told");
            }
            Err(ClientError::Rejected(ResultCode::RetryLater)) => refused += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(
        (SCANNER_GUESSES_MAX..=2 * SCANNER_GUESSES_MAX).contains(&answered)
            && withheld == 1
            && refused > 0,
        "{answered} answered, {withheld} withheld, {refused} refused"
    );
    // Batching the guesses tells no more: a call switch probing PINs with price quotes (each
    // answers for a card) learns about its budget's worth, however many events a frame holds,
    // and the budget spans its frames.
    let prober = connect_as(&address, &certs, Some("prober")).await;
    let mut quote = || PriceQuote {
        pin: unknown_pin(),
        category: Category::TelephoneCall as u8,
        destination: b"01012345678".to_vec(),
        duration_s: 60,
        units: 0,
    };
    let told = |results: &[PriceQuoteResult]| {
        let not_found = results.iter().filter(|r| r.code == ResultCode::CardNotFound.as_u16());
        let withheld = results.iter().filter(|r| r.code == ResultCode::AnswerWithheld.as_u16());
        (not_found.count(), withheld.count())
    };
    let first = prober.price_quote(&[quote(), quote(), quote()]).await.expect("three quotes");
    assert_eq!(told(&first), (3, 0));
    let burst: Vec<PriceQuote> = (0..50).map(|_| quote()).collect();
    let second = prober.price_quote(&burst).await.expect("fifty quotes");
    assert_eq!(told(&second), (SCANNER_GUESSES_MAX - 3, 50 - (SCANNER_GUESSES_MAX - 3)));
    match prober.price_quote(&[quote()]).await {
        Err(ClientError::Rejected(ResultCode::RetryLater)) => {}
        other => panic!("past the budget the prober is blocked: {other:?}"),
    }
    let again = connect_as(&address, &certs, Some("scanner")).await;
    match again.balance_inquiry(&[BalanceInquiry { pin }]).await {
        Err(ClientError::Rejected(ResultCode::RetryLater)) => {}
        other => panic!("a blocked identity is blocked on every connection: {other:?}"),
    }
    let paid = one(gateway.sale(&[sale(pin, OWN_MERCHANT)]).await).await;
    assert_eq!(code(&paid), ResultCode::Approved);
    switch.stop();

    // At rest: the data directory and every file in it are the switch's alone.
    assert_private(&dir.join("data"));
}

/// `path` and everything under it: no permission for group or others.
#[track_caller]
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).expect("metadata");
    assert_eq!(metadata.permissions().mode() & 0o077, 0, "{} is private", path.display());
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir").flatten() {
            assert_private(&entry.path());
        }
    }
}

#[test]
fn listening_beyond_loopback_without_tls_refuses_to_start() {
    let dir = fresh_dir("e2e-trust-open");
    let data = dir.join("data").to_string_lossy().to_string();
    let (ok, out) = run(&["serve", "--data", &data, "--listen", "0.0.0.0:0"]);
    assert!(!ok, "{out}");
    assert!(out.contains("without TLS"), "{out}");
}

/// `[server] keys_file` puts the key file outside the data directory (so the data directory's
/// backups do not carry it), and a data directory with journals but no key file refuses to
/// start rather than make new keys that would name none of its cards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_may_live_apart_and_is_never_remade_beside_journals() {
    let dir = fresh_dir("e2e-trust-keys");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("the secrets directory");
    let key_file = secrets.join("keys.bin");
    let config = vec!["[server]".to_string(), format!("keys_file = {:?}", key_file)];
    let mut switch = Switch::start_with_config(Path::new(BIN), &dir, &config, &[]);
    assert!(
        switch
            .startup_lines()
            .iter()
            .any(|line| line.contains(&format!("keys {} (key id 1)", key_file.display()))),
        "{:?}",
        switch.startup_lines()
    );
    let client = Client::connect(&switch.address).await.expect("connect");
    let issued =
        one(client.card_issue(&[CardIssue { op_id: new_op_id(), face_value_won: 10_000 }]).await)
            .await;
    assert_eq!(issued.code, 0);
    switch.stop();
    assert!(key_file.exists() && !dir.join("data/keys.bin").exists(), "the keys live apart");

    // Without the setting the switch looks in the data directory, finds journals and no keys.
    let data = dir.join("data").to_string_lossy().to_string();
    let (ok, out) = run(&["serve", "--data", &data, "--listen", "127.0.0.1:0"]);
    assert!(!ok && out.contains("holds journals"), "{out}");
    assert!(!dir.join("data/keys.bin").exists(), "no new keys were made");

    // With it, the card is found again.
    let switch = Switch::start_with_config(Path::new(BIN), &dir, &config, &[]);
    let client = Client::connect(&switch.address).await.expect("connect");
    let card = one(client.balance_inquiry(&[BalanceInquiry { pin: issued.pin }]).await).await;
    assert_eq!((card.code, card.balance_won), (0, 10_000));
}
