//! The native protocol over QUIC (issue 14), end to end: a switch started with `--quic-listen`
//! and mutual TLS serves the same identities, roles and engine over QUIC as over TLS on TCP;
//! money moved over one transport is the money seen, and an op id retried, over the other;
//! every bidirectional stream of a connection is a connection of its own, up to
//! `quic_streams_per_connection_max` at once, survives the client's change of address, and ends
//! alone on a framing error; pushes reach the stream that started the call; 0-RTT and foreign
//! certificates get nothing; the CLI speaks QUIC with `--quic`; and QUIC without `[tls]`
//! refuses to start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pinswitch_protocol::client::{Client, ClientError};
use pinswitch_protocol::tls::TlsClient;
use pinswitch_protocol::*;
use pinswitch_tests::{
    Rng, Switch, code, fresh_dir, identity_lines, mutual_tls_config, one, run_binary, tls_client,
};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");
const PASSWORD: &[u8] = b"4321";
const MERCHANT: u64 = 1001;
const OWNER: u32 = 7;
const STREAMS_MAX: u32 = 2;
const CARDS: usize = 10;
const SALES: usize = 200;

/// A switch with mutual TLS on TCP and QUIC, an admin and a gateway; returns it, the
/// certificates' directory and its QUIC address.
fn start(dir: &Path) -> (Switch, PathBuf, String) {
    let certs = dir.join("certs");
    let mut config =
        vec!["[limits]".to_string(), format!("quic_streams_per_connection_max = {STREAMS_MAX}")];
    config.extend(mutual_tls_config(BIN, &certs, &["admin-1", "gw-acme", "sw-tel"]));
    config.extend(identity_lines("admin-1", &["admin"], &[]));
    config.extend(identity_lines(
        "gw-acme",
        &["gateway"],
        &[format!("merchant_ids = [{MERCHANT}]")],
    ));
    config.extend(identity_lines("sw-tel", &["call_switch"], &[format!("owner_id = {OWNER}")]));
    let switch =
        Switch::start_with_config(Path::new(BIN), dir, &config, &["--quic-listen", "127.0.0.1:0"]);
    let quic = quic_address(&switch);
    (switch, certs, quic)
}

/// The address of the switch's "QUIC on" line (printed before "listening on").
fn quic_address(switch: &Switch) -> String {
    switch
        .startup_lines()
        .iter()
        .find_map(|line| line.split("QUIC on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a \"QUIC on\" line before \"listening on\"")
        .to_string()
}

fn tls_as(certs: &Path, name: &str) -> TlsClient {
    tls_client(certs, Some(name))
}

async fn quic_as(quic: &str, certs: &Path, name: &str) -> Client {
    Client::connect_quic(quic, &tls_as(certs, name), ClientOptions::default())
        .await
        .expect("QUIC connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_serves_the_same_engine_and_identities_as_tls() {
    let dir = fresh_dir("e2e-quic");
    let (mut switch, certs, quic) = start(&dir);

    // The admin makes spendable cards over QUIC.
    let admin = quic_as(&quic, &certs, "admin-1").await;
    let issues: Vec<CardIssue> =
        (0..CARDS).map(|_| CardIssue { op_id: new_op_id(), face_value_won: 10_000 }).collect();
    let issued = admin.card_issue(&issues).await.expect("CARD_ISSUE over QUIC");
    let pins: Vec<u64> = issued.iter().map(|result| result.pin).collect();
    let activations: Vec<CardActivate> = pins
        .iter()
        .map(|&pin| CardActivate { op_id: new_op_id(), pin, password: PASSWORD.to_vec() })
        .collect();
    for result in admin.card_activate(&activations).await.expect("CARD_ACTIVATE") {
        assert_eq!(code(&result), ResultCode::Approved);
    }

    // The gateway pays, one event per frame, many frames in flight on one stream; the ledger
    // is what a naive model says (every sale fits, so the order does not matter).
    let gateway = quic_as(&quic, &certs, "gw-acme").await;
    let mut rng = Rng(0x0051_C0DE);
    let mut expected_won = vec![10_000u64; CARDS];
    let mut sales = Vec::with_capacity(SALES);
    for _ in 0..SALES {
        let card = rng.below(CARDS as u64) as usize;
        let amount_won = 1 + rng.below(40);
        expected_won[card] -= amount_won;
        sales.push(Sale {
            op_id: new_op_id(),
            pin: pins[card],
            password: PASSWORD.to_vec(),
            amount_won,
            merchant_id: MERCHANT,
            category: Category::InternetPayment as u8,
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for sale in sales.clone() {
        let gateway = gateway.clone();
        tasks.spawn(async move { one(gateway.sale(&[sale]).await).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(code(&result.expect("a sale task")), ResultCode::Approved);
    }
    // The same identity's grants as on TCP: a gateway cannot recharge.
    match gateway
        .card_load(&[CardLoad { op_id: new_op_id(), pin: pins[0], amount_won: 1, funding: 1 }])
        .await
    {
        Err(ClientError::Rejected(ResultCode::NotPermitted)) => {}
        other => panic!("a gateway's CARD_LOAD over QUIC: {other:?}"),
    }

    // Over TLS on TCP, the same balances, and a sale made over QUIC retried over TCP is
    // answered from its record, not executed again.
    let tcp = Client::connect_tls(&switch.address, &tls_as(&certs, "gw-acme"), Default::default())
        .await
        .expect("TLS connect");
    let inquiries: Vec<BalanceInquiry> = pins.iter().map(|&pin| BalanceInquiry { pin }).collect();
    let balances = tcp.balance_inquiry(&inquiries).await.expect("BALANCE_INQUIRY over TCP");
    let seen: Vec<u64> = balances.iter().map(|balance| balance.balance_won).collect();
    assert_eq!(seen, expected_won, "QUIC's sales, seen over TCP");
    let retried = one(tcp.sale(&sales[..1]).await).await;
    assert_eq!(code(&retried), ResultCode::Approved);
    let again = tcp.balance_inquiry(&inquiries).await.expect("BALANCE_INQUIRY");
    let after: Vec<u64> = again.iter().map(|balance| balance.balance_won).collect();
    assert_eq!(after, expected_won, "the retry moved nothing");

    // Pushes: the call switch's QUIC stream gets the SESSION_NOTICE that a recharge made on
    // another connection triggers, as on TCP.
    let calls = quic_as(&quic, &certs, "sw-tel").await;
    let mut notices = calls.notices();
    let call = SessionStart {
        op_id: new_op_id(),
        pin: pins[1],
        session_id: 1,
        category: Category::TelephoneCall as u8,
        destination: b"01012345678".to_vec(),
        requested_s: 60,
        owner_id: OWNER,
        password: Vec::new(),
    };
    let started = one(calls.session_start(&[call]).await).await;
    assert_eq!(code(&started.result), ResultCode::Approved);
    let recharge = CardLoad { op_id: new_op_id(), pin: pins[1], amount_won: 10_000, funding: 1 };
    assert_eq!(code(&one(admin.card_load(&[recharge]).await).await), ResultCode::Approved);
    let notice = tokio::time::timeout(Duration::from_secs(20), notices.recv())
        .await
        .expect("a push in time")
        .expect("the stream is open");
    assert_eq!((notice.kind, notice.session_id), (NOTICE_REAUTHORIZE, 1));

    streams_are_connections_up_to_the_limit(&quic, &certs).await;

    // The CLI speaks QUIC with the same files.
    let pem = |name: &str| certs.join(name).to_string_lossy().to_string();
    let (ok, shown) = run_binary(
        BIN,
        &[
            "card",
            "show",
            "--quic",
            "--connect",
            &quic,
            &pin::format(pins[0]),
            "--tls-ca",
            &pem("ca.pem"),
            "--tls-cert",
            &pem("admin-1.pem"),
            "--tls-key",
            &pem("admin-1.key"),
        ],
    );
    assert!(ok && shown.contains(&format!("balance   {} won", expected_won[0])), "{shown}");
    switch.stop();
}

/// One raw QUIC connection: each of its streams answers PING on its own; the stream past the
/// limit cannot open until one closes, and then can.
async fn streams_are_connections_up_to_the_limit(quic: &str, certs: &Path) {
    let endpoint = raw_endpoint(certs);
    let connection = raw_connection(&endpoint, quic).await.expect("the QUIC handshake");
    let mut streams = Vec::new();
    for nonce in 1..=u64::from(STREAMS_MAX) {
        let (mut send, mut recv) = connection.open_bi().await.expect("a stream within the limit");
        assert_eq!(ping(&mut send, &mut recv, nonce).await, nonce);
        streams.push((send, recv));
    }
    // The limit is QUIC's own stream credit, known since the handshake: the next open waits.
    let past =
        tokio::time::timeout(Duration::ZERO, connection.open_bi()).await.map(|opened| opened.ok());
    assert!(past.is_err(), "a stream past quic_streams_per_connection_max opened at once");
    // One stream ends (the client finishes, the switch answers end of stream) ...
    let (mut send, mut recv) = streams.remove(0);
    send.finish().expect("finishing a stream");
    let rest = recv.read_to_end(1 << 20).await.expect("the stream's end");
    assert!(rest.is_empty(), "nothing after the answers");
    // ... and a new one opens and is served, as the others still are.
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), connection.open_bi())
        .await
        .expect("the credit comes back when a stream closes")
        .expect("a new stream");
    assert_eq!(ping(&mut send, &mut recv, 9).await, 9);
    let (old_send, old_recv) = &mut streams[0];
    assert_eq!(ping(old_send, old_recv, 10).await, 10);

    // The client moves to another UDP port (a NAT rebinding, a phone changing networks): the
    // connection and its streams go on.
    let moved = std::net::UdpSocket::bind("127.0.0.1:0").expect("a new socket");
    let moved_to = moved.local_addr().expect("its address");
    endpoint.rebind(moved).expect("rebinding the client");
    assert_eq!(endpoint.local_addr().expect("the endpoint's address"), moved_to);
    assert_eq!(ping(old_send, old_recv, 11).await, 11);
    assert_eq!(ping(&mut send, &mut recv, 12).await, 12);

    // A frame past frame_bytes_max, refused from its header: FRAME_TOO_LARGE and that stream's
    // end; the connection's other stream is served on.
    let mut huge = Vec::new();
    encode_frame(&mut huge, &FrameHeader::request(MsgType::Ping, 13, 0), &[]);
    huge[20..24].copy_from_slice(&(64u32 << 20).to_le_bytes());
    send.write_all(&huge[..HEADER_BYTES]).await.expect("writing the header");
    let answer = recv.read_to_end(1 << 20).await.expect("the refusal and the stream's end");
    let refused = decode_frame(&answer, 1 << 20).expect("a frame").expect("a whole frame");
    assert_eq!(
        (refused.header.status, refused.header.request_id, refused.total_len),
        // Request id 0: a header is not trusted before its checksum, which a refused frame's
        // body would complete.
        (ResultCode::FrameTooLarge.as_u16(), 0, answer.len())
    );
    assert_eq!(ping(old_send, old_recv, 14).await, 14);
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

/// One PING on a raw stream; returns the nonce answered.
async fn ping(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, nonce: u64) -> u64 {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        &FrameHeader::request(MsgType::Ping, nonce, 0),
        &encode_body(&Ping { nonce }),
    );
    send.write_all(&frame).await.expect("writing a PING");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = decode_frame(&answer, 1 << 20).expect("a valid frame") {
            assert_eq!((frame.header.status, frame.header.request_id), (0, nonce));
            let pong: Pong = decode_body(frame.body).expect("a PONG");
            return pong.nonce;
        }
        let read = recv.read(&mut chunk).await.expect("reading the answer");
        let read = read.expect("the answer before the stream's end");
        answer.extend_from_slice(&chunk[..read]);
    }
}

#[test]
fn quic_without_tls_refuses_to_start() {
    let dir = fresh_dir("e2e-quic-plain");
    let data = dir.join("data").to_string_lossy().to_string();
    let (ok, out) = run_binary(BIN, &["serve", "--data", &data, "--quic-listen", "127.0.0.1:0"]);
    assert!(!ok, "{out}");
    assert!(out.contains("QUIC is always TLS 1.3"), "{out}");
}

/// A raw QUIC connection to `quic` from `endpoint` (an error: refused).
async fn raw_connection(
    endpoint: &quinn::Endpoint,
    quic: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let address = quic.parse().expect("the QUIC address");
    endpoint.connect(address, "localhost").expect("connect").await
}

/// A client endpoint presenting the gateway's certificate.
fn raw_endpoint(certs: &Path) -> quinn::Endpoint {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_as(certs, "gw-acme").quic_config())
            .expect("QUIC client crypto");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
        .expect("a client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// With `connections_per_address_max = 2`, a QUIC connection and one stream take both places:
/// the next stream is answered one RETRY_LATER frame and its end, a second connection is
/// refused in the handshake, and a place comes back when a stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_and_streams_hold_places_like_connections() {
    let dir = fresh_dir("e2e-quic-places");
    let certs = dir.join("certs");
    let mut config = vec!["[limits]".to_string(), "connections_per_address_max = 2".to_string()];
    config.extend(mutual_tls_config(BIN, &certs, &["gw-acme"]));
    config.extend(identity_lines("gw-acme", &["gateway"], &[]));
    let mut switch =
        Switch::start_with_config(Path::new(BIN), &dir, &config, &["--quic-listen", "127.0.0.1:0"]);
    let quic = quic_address(&switch);
    let endpoint = raw_endpoint(&certs);
    let connection = raw_connection(&endpoint, &quic).await.expect("the first connection");
    let (mut send, mut recv) = connection.open_bi().await.expect("a stream");
    assert_eq!(ping(&mut send, &mut recv, 1).await, 1);

    // The connection and its stream hold both places: the next stream is refused ...
    let (mut refused_send, mut refused_recv) = connection.open_bi().await.expect("a stream");
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        &FrameHeader::request(MsgType::Ping, 2, 0),
        &encode_body(&Ping { nonce: 2 }),
    );
    refused_send.write_all(&frame).await.expect("writing a PING");
    let refusal = refused_recv.read_to_end(1 << 20).await.expect("the refusal and its end");
    let refused = decode_frame(&refusal, 1 << 20).expect("a frame").expect("a whole frame");
    assert_eq!(
        (refused.header.status, refused.header.request_id, refused.total_len),
        (ResultCode::RetryLater.as_u16(), 0, refusal.len())
    );
    // ... and so is a second connection, in its handshake.
    let second = raw_connection(&endpoint, &quic).await;
    assert!(second.is_err(), "a connection past connections_per_address_max: {second:?}");

    // The stream ends and its place comes back.
    send.finish().expect("finishing the stream");
    recv.read_to_end(1 << 20).await.expect("the stream's end");
    let (mut send, mut recv) = connection.open_bi().await.expect("a stream");
    assert_eq!(ping(&mut send, &mut recv, 3).await, 3);
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    switch.stop();
}

/// Handshakes that must not carry anything: 0-RTT (replayable, so refused whole: the switch
/// issues no ticket that allows early data, and a resuming client has no 0-RTT to send), and a
/// client certificate from another authority (the handshake fails, nothing is answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_refuses_early_data_and_foreign_certificates() {
    let dir = fresh_dir("e2e-quic-handshakes");
    let (mut switch, certs, quic) = start(&dir);

    // A client that would send 0-RTT if it could: a first connection leaves it a ticket ...
    let mut crypto = tls_as(&certs, "gw-acme").quic_config();
    crypto.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("crypto");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
        .expect("a client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let first = raw_connection(&endpoint, &quic).await.expect("the first connection");
    let (mut send, mut recv) = first.open_bi().await.expect("a stream");
    assert_eq!(ping(&mut send, &mut recv, 1).await, 1);
    // ... and the next connection resumes with no 0-RTT offered.
    let address = quic.parse().expect("the QUIC address");
    let connecting = endpoint.connect(address, "localhost").expect("connect");
    let connection = match connecting.into_0rtt() {
        Ok(_) => panic!("the switch accepted 0-RTT"),
        Err(connecting) => connecting.await.expect("a full handshake"),
    };
    let (mut send, mut recv) = connection.open_bi().await.expect("a stream");
    assert_eq!(ping(&mut send, &mut recv, 2).await, 2);
    first.close(0u32.into(), b"done");
    connection.close(0u32.into(), b"done");

    // A certificate named like a configured identity, signed by another authority.
    let other = dir.join("other-ca");
    let other_arg = other.to_string_lossy().to_string();
    let (ok, out) = run_binary(BIN, &["tls", "init", "--dir", &other_arg, "--client", "gw-acme"]);
    assert!(ok, "tls init: {out}");
    let (cert, key) = (other.join("gw-acme.pem"), other.join("gw-acme.key"));
    let impostor =
        TlsClient::from_pem_files(&certs.join("ca.pem"), Some((&cert, &key)), "localhost")
            .expect("the impostor's files");
    match Client::connect_quic(&quic, &impostor, ClientOptions::default()).await {
        Err(_) => {}
        Ok(client) => assert!(client.ping(3).await.is_err(), "a foreign certificate was served"),
    }
    switch.stop();
}
