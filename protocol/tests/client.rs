//! Tests of the async client against a small in-test fake server that decodes real frames and
//! answers with canned results after per-request delays, so responses come back out of order.
//! Proves pipelining, request-id matching, the in-flight bound, frame-status and result-count
//! handling, and that every waiter is released when the server hangs up or talks garbage.

#![cfg(feature = "client")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pinswitch_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Sale amounts that make the fake server misbehave on purpose.
const AMOUNT_HANG_UP: u64 = 666;
const AMOUNT_GARBAGE: u64 = 777;
const AMOUNT_NEVER_ANSWER: u64 = 888;

#[derive(Default)]
struct ServerStats {
    outstanding: AtomicUsize,
    outstanding_max: AtomicUsize,
    /// Request ids in the order the responses were written.
    answered: std::sync::Mutex<Vec<u64>>,
}

/// Starts the fake server; returns its address and its statistics.
async fn start_fake_server(delay_spread_ms: u64) -> (String, Arc<ServerStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stats = Arc::new(ServerStats::default());
    let server_stats = stats.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_connection(socket, server_stats.clone(), delay_spread_ms));
        }
    });
    (addr, stats)
}

enum Out {
    Frame(u64, Vec<u8>),
    HangUp,
    Garbage,
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    stats: Arc<ServerStats>,
    delay_spread_ms: u64,
) {
    let (mut read_half, mut write_half) = socket.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let writer_stats = stats.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Frame(request_id, bytes) => {
                    writer_stats.answered.lock().expect("lock").push(request_id);
                    writer_stats.outstanding.fetch_sub(1, Ordering::SeqCst);
                    if write_half.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Out::HangUp => return,
                Out::Garbage => {
                    let _ = write_half.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    // Keep the socket open so the client must notice the garbage itself.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
            }
        }
    });
    let mut buf = Vec::new();
    'read: loop {
        let mut consumed = 0;
        while let Some(frame) =
            decode_frame(&buf[consumed..], 1 << 24).expect("client sends valid frames")
        {
            consumed += frame.total_len;
            let outstanding = stats.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
            stats.outstanding_max.fetch_max(outstanding, Ordering::SeqCst);
            let reply = answer(&frame.header, frame.body);
            let request_id = frame.header.request_id;
            let delay_ms = if delay_spread_ms == 0 {
                0
            } else {
                request_id.wrapping_mul(7919) % delay_spread_ms
            };
            let out_tx = out_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let _ = out_tx.send(match reply {
                    Some(Ok(bytes)) => Out::Frame(request_id, bytes),
                    Some(Err(out)) => out,
                    None => return,
                });
            });
        }
        buf.drain(..consumed);
        let mut chunk = [0u8; 4096];
        match read_half.read(&mut chunk).await {
            Ok(0) | Err(_) => break 'read,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
        }
    }
    drop(out_tx);
    let _ = writer.await;
}

/// The canned answer to one request: `Ok(frame bytes)`, `Err(misbehaviour)`, or `None` for
/// silence.
fn answer(header: &FrameHeader, body: &[u8]) -> Option<Result<Vec<u8>, Out>> {
    let msg_type = MsgType::from_u16(header.msg_type).expect("known type");
    let mut out = Vec::new();
    let ok = FrameHeader::response_to(header, ResultCode::Approved);
    match msg_type {
        MsgType::Hello => {
            let hello = decode_body::<Hello>(body).expect("hello");
            let reply = HelloReply {
                server_name: format!("fake for {}", hello.client_name),
                protocol_version: hello.protocol_version,
                shard_count: 1,
                frame_bytes_max: 1 << 20,
                batch_events_max: 8000,
                in_flight_per_connection_max: 1024,
                hold_ttl_max_s: 60,
                idempotency_window_s: 86_400,
                server_time_ms: 5,
            };
            encode_frame(&mut out, &ok, &encode_body(&reply));
        }
        MsgType::Ping => {
            let ping = access_body::<Ping>(body).expect("ping");
            let pong = Pong {
                nonce: ping.nonce.to_native(),
                server_time_ms: u64::from(header.deadline_ms),
            };
            encode_frame(&mut out, &ok, &encode_body(&pong));
        }
        MsgType::Sale => {
            let sales = access_body::<Vec<Sale>>(body).expect("sales");
            let amount = |index: usize| sales.get(index).map(|sale| sale.amount_won.to_native());
            match amount(0) {
                Some(AMOUNT_HANG_UP) => return Some(Err(Out::HangUp)),
                Some(AMOUNT_GARBAGE) => return Some(Err(Out::Garbage)),
                Some(AMOUNT_NEVER_ANSWER) => return None,
                _ => {}
            }
            // Echo each amount so the test can check every caller got its own answer.
            let results: Vec<OpResult> = sales
                .iter()
                .map(|sale| OpResult {
                    amount_won: sale.amount_won.to_native(),
                    hold_expires_at_ms: u64::from(header.deadline_ms),
                    ..OpResult::default()
                })
                .collect();
            encode_frame_body(&mut out, &ok, &results);
        }
        MsgType::Refund => {
            encode_frame(
                &mut out,
                &FrameHeader::response_to(header, ResultCode::BatchTooLarge),
                &[],
            );
        }
        MsgType::Void => {
            // One result too few.
            let count = access_body::<Vec<Void>>(body).expect("voids").len();
            encode_frame_body(&mut out, &ok, &vec![OpResult::default(); count.saturating_sub(1)]);
        }
        _ => {
            encode_frame(
                &mut out,
                &FrameHeader::response_to(header, ResultCode::UnknownMessageType),
                &[],
            );
        }
    }
    Some(Ok(out))
}

fn sale(amount_won: u64) -> Sale {
    Sale {
        op_id: new_op_id(),
        pin: pin::with_check_digit(123_456_789_012_345),
        password: b"1234".to_vec(),
        amount_won,
        merchant_id: 1,
        category: Category::InternetPayment as u8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_calls_get_their_own_answers_out_of_order() {
    let (addr, stats) = start_fake_server(20).await;
    let client = Client::connect(&addr).await.expect("connect");
    let mut tasks = Vec::new();
    // Starts above the misbehaviour amounts.
    for amount_won in 1001..=2000u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let results =
                client.sale(&[sale(amount_won), sale(amount_won + 100_000)]).await.expect("sale");
            assert_eq!(results.len(), 2);
            assert_eq!(results[0].amount_won, amount_won);
            assert_eq!(results[1].amount_won, amount_won + 100_000);
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let answered = stats.answered.lock().expect("lock").clone();
    assert_eq!(answered.len(), 1000);
    assert!(
        answered.windows(2).any(|pair| pair[0] > pair[1]),
        "responses should arrive out of order"
    );
    assert!(stats.outstanding_max.load(Ordering::SeqCst) > 100, "calls should overlap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_are_bounded() {
    let (addr, stats) = start_fake_server(5).await;
    let options = ClientOptions { in_flight_max: 8, ..ClientOptions::default() };
    let client = Client::connect_with_options(&addr, options).await.expect("connect");
    let calls = (1001..=1200u64).map(|amount| {
        let client = client.clone();
        async move { client.sale(&[sale(amount)]).await.expect("sale")[0].amount_won }
    });
    let amounts = futures_join_all(calls).await;
    assert_eq!(amounts, (1001..=1200).collect::<Vec<_>>());
    let outstanding_max = stats.outstanding_max.load(Ordering::SeqCst);
    assert!((2..=8).contains(&outstanding_max), "outstanding max {outstanding_max}");
}

/// Joins futures on the current task (keeps the test free of a futures-crate dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ping_and_deadline_reach_the_server() {
    let (addr, _) = start_fake_server(0).await;
    let mut client = Client::connect(&addr).await.expect("connect");
    let reply = client.hello("tester").await.expect("hello");
    assert_eq!(reply.server_name, "fake for tester");
    assert_eq!(reply.protocol_version, VERSION);
    assert_eq!(client.ping(99).await.expect("ping").nonce, 99);
    client.set_deadline_ms(250);
    // The fake server echoes the header deadline in server_time_ms / hold_expires_at_ms.
    assert_eq!(client.ping(1).await.expect("ping").server_time_ms, 250);
    assert_eq!(client.sale(&[sale(5)]).await.expect("sale")[0].hold_expires_at_ms, 250);
    let (header, body) =
        client.request(MsgType::Ping, encode_body(&Ping { nonce: 3 })).await.expect("raw");
    assert_eq!(header.flags & FLAG_RESPONSE, FLAG_RESPONSE);
    assert_eq!(decode_body::<Pong>(&body).expect("pong").nonce, 3);
    // An empty batch is sent as such and answered with no results.
    assert!(client.sale(&[]).await.expect("empty batch").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_bad_result_counts_leave_the_connection_usable() {
    let (addr, _) = start_fake_server(0).await;
    let client = Client::connect(&addr).await.expect("connect");
    let refund = Refund { op_id: 1, pin: 2, original_op_id: 3, amount_won: 4 };
    assert!(matches!(
        client.refund(&[refund]).await,
        Err(ClientError::Rejected(ResultCode::BatchTooLarge))
    ));
    assert!(matches!(
        client.inquiry(&[Inquiry { pin: 1, op_id: 2 }]).await,
        Err(ClientError::Rejected(ResultCode::UnknownMessageType))
    ));
    let voids = [Void { op_id: 1, pin: 2, hold_id: 3 }, Void { op_id: 4, pin: 5, hold_id: 6 }];
    assert!(matches!(
        client.void(&voids).await,
        Err(ClientError::ResultCount { expected: 2, got: 1 })
    ));
    assert_eq!(client.sale(&[sale(9)]).await.expect("still usable")[0].amount_won, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_hang_up_releases_every_waiter_with_closed() {
    let (addr, _) = start_fake_server(0).await;
    let client = Client::connect(&addr).await.expect("connect");
    // These are never answered; they must not wait forever once the server hangs up.
    let mut waiting = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        waiting.push(tokio::spawn(async move { client.sale(&[sale(AMOUNT_NEVER_ANSWER)]).await }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hang_up = client.sale(&[sale(AMOUNT_HANG_UP)]).await;
    assert!(matches!(hang_up, Err(ClientError::Closed)), "{hang_up:?}");
    for task in waiting {
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("released")
            .expect("task");
        assert!(matches!(result, Err(ClientError::Closed)), "{result:?}");
    }
    assert!(matches!(client.ping(1).await, Err(ClientError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_server_is_a_frame_error_for_every_waiter() {
    let (addr, _) = start_fake_server(0).await;
    let client = Client::connect(&addr).await.expect("connect");
    let silent = {
        let client = client.clone();
        tokio::spawn(async move { client.sale(&[sale(AMOUNT_NEVER_ANSWER)]).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let result = client.sale(&[sale(AMOUNT_GARBAGE)]).await;
    assert!(matches!(result, Err(ClientError::Frame(FrameError::BadMagic))), "{result:?}");
    let result = tokio::time::timeout(Duration::from_secs(5), silent)
        .await
        .expect("released")
        .expect("task");
    assert!(matches!(result, Err(ClientError::Frame(FrameError::BadMagic))), "{result:?}");
    assert!(matches!(client.ping(1).await, Err(ClientError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_frees_its_slot() {
    let (addr, _) = start_fake_server(0).await;
    let options = ClientOptions { in_flight_max: 1, ..ClientOptions::default() };
    let client = Client::connect_with_options(&addr, options).await.expect("connect");
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), client.sale(&[sale(AMOUNT_NEVER_ANSWER)]))
            .await;
    assert!(cancelled.is_err(), "the silent call should time out");
    // With a single slot, this only completes if the cancelled call gave its slot back.
    let results = tokio::time::timeout(Duration::from_secs(5), client.sale(&[sale(3)]))
        .await
        .expect("slot freed");
    assert_eq!(results.expect("sale")[0].amount_won, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    assert!(matches!(Client::connect(&addr).await, Err(ClientError::Io(_))));
}
