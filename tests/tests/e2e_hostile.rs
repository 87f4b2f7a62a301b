//! Hostile and careless clients against the real binary: every resource a connection can make
//! the switch hold is bounded, and hitting a bound costs that client, never the others or the
//! process. One address cannot take more than `connections_per_address_max` places, nobody more
//! than `connections_max`, and the refusal (one RETRY_LATER frame, then EOF) reaches the client
//! even when it already sent a request; silent connections, slow drips of a frame and clients
//! that stop reading their answers are closed by the reaper after their timeout while others are
//! served; a frame larger than the shared receive-buffer budget is answered RETRY_LATER and
//! skipped on a connection that stays usable; and running out of file descriptors makes
//! `accept()` fail without ending the process, which serves again once descriptors are free.
//! Timeouts are waited for with blocking reads under a generous socket timeout, never with
//! sleeps; the only sleeps are the pacing of clients whose pacing is the behaviour under test.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use pinswitch_protocol::{
    BalanceInquiry, BalanceResult, FLAG_RESPONSE, FrameHeader, HEADER_BYTES, MsgType, Ping, Pong,
    ResultCode, decode_body, decode_frame, encode_body, encode_frame, pin,
};
use pinswitch_tests::{Switch, TestDir, fresh_dir};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");

/// A bound on a broken server, not a timing assumption: every timeout under test is 1.5 s and
/// the reaper looks once a second, so anything the server owes arrives well within this.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A valid (Luhn-checked) PIN that no card has: answered CARD_NOT_FOUND by its shard.
fn unknown_pin() -> u64 {
    pin::with_check_digit(123_456_789_012_345)
}

fn frame(msg_type: MsgType, request_id: u64, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader::request(msg_type, request_id, 0);
    let mut out = Vec::new();
    encode_frame(&mut out, &header, body);
    out
}

fn ping_frame(request_id: u64) -> Vec<u8> {
    frame(MsgType::Ping, request_id, &encode_body(&Ping { nonce: request_id ^ 0x5A5A }))
}

fn balance_frame(request_id: u64, events: usize) -> Vec<u8> {
    let inquiries = vec![BalanceInquiry { pin: unknown_pin() }; events];
    frame(MsgType::BalanceInquiry, request_id, &encode_body(&inquiries))
}

/// What one blocking read of a whole frame found.
#[derive(Debug)]
enum Got {
    Frame(FrameHeader, Vec<u8>),
    /// Orderly EOF (the server's FIN) with no partial frame left over.
    Closed,
    /// The connection was reset (or EOF came in the middle of a frame).
    Reset(String),
}

/// A raw protocol connection with a persistent receive buffer (two answers may arrive in one
/// read, and a frame may arrive over several).
struct Raw {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    fn connect(address: &str) -> Raw {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw { stream, buffer: Vec::new() }
    }

    #[track_caller]
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads the next whole frame or the end of the connection. Panics when the server owes
    /// something and sends nothing for `READ_TIMEOUT`.
    #[track_caller]
    fn read(&mut self) -> Got {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match decode_frame(&self.buffer, 64 << 20) {
                Ok(Some(frame)) => {
                    let got = Got::Frame(frame.header, frame.body.to_vec());
                    let used = frame.total_len;
                    self.buffer.drain(..used);
                    return got;
                }
                Ok(None) => {}
                Err(error) => panic!("the server sent a bad frame: {error}"),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buffer.is_empty() => return Got::Closed,
                Ok(0) => {
                    return Got::Reset(format!("EOF after {} bytes of a frame", self.buffer.len()));
                }
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    let local = self
                        .stream
                        .local_addr()
                        .map(|address| address.to_string())
                        .unwrap_or_default();
                    panic!(
                        "nothing from the server for {READ_TIMEOUT:?} on the connection from {local} ({} bytes buffered)",
                        self.buffer.len()
                    )
                }
                Err(error) => return Got::Reset(error.to_string()),
            }
        }
    }

    /// Reads one frame, which must be there.
    #[track_caller]
    fn frame(&mut self) -> (FrameHeader, Vec<u8>) {
        match self.read() {
            Got::Frame(header, body) => (header, body),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The server must close this connection in an orderly way, sending nothing more.
    #[track_caller]
    fn expect_closed(&mut self) {
        match self.read() {
            Got::Closed => {}
            other => panic!("expected EOF, got {other:?}"),
        }
    }

    /// PING → PONG on this connection.
    #[track_caller]
    fn ping(&mut self, request_id: u64) {
        self.send(&ping_frame(request_id));
        let (header, body) = self.frame();
        assert_pong(&header, &body, request_id);
    }

    /// Sends a PING and says whether the connection was admitted (PONG) or refused (the
    /// connection-level RETRY_LATER, then EOF).
    #[track_caller]
    fn admitted(&mut self, request_id: u64) -> bool {
        self.send(&ping_frame(request_id));
        let (header, body) = self.frame();
        if header.status == ResultCode::RetryLater.as_u16() {
            assert_refusal(&header);
            self.expect_closed();
            false
        } else {
            assert_pong(&header, &body, request_id);
            true
        }
    }
}

#[track_caller]
fn assert_pong(header: &FrameHeader, body: &[u8], request_id: u64) {
    assert_eq!(
        (header.msg_type, header.status, header.request_id, header.flags & FLAG_RESPONSE),
        (MsgType::Ping as u16, 0, request_id, FLAG_RESPONSE),
        "a PONG for request {request_id}"
    );
    let pong: Pong = decode_body(body).expect("a PONG body");
    assert_eq!(pong.nonce, request_id ^ 0x5A5A);
}

/// The frame a refused connection gets: PING type, request id 0, RETRY_LATER, empty body.
#[track_caller]
fn assert_refusal(header: &FrameHeader) {
    assert_eq!(
        (
            header.msg_type,
            header.status,
            header.request_id,
            header.flags & FLAG_RESPONSE,
            header.body_len
        ),
        (MsgType::Ping as u16, ResultCode::RetryLater.as_u16(), 0, FLAG_RESPONSE, 0),
        "the connection-level RETRY_LATER"
    );
}

/// Connects and reads the refusal without sending anything first, then EOF.
#[track_caller]
fn expect_refused(address: &str) {
    let mut refused = Raw::connect(address);
    let (header, _) = refused.frame();
    assert_refusal(&header);
    refused.expect_closed();
}

/// Admission is asynchronous: a place freed by a client's close is free once the server has
/// seen the close. Each attempt is answered (PONG or RETRY_LATER), so the loop needs no sleep.
fn admit_eventually(address: &str) -> Raw {
    for attempt in 0..200 {
        let mut connection = Raw::connect(address);
        if connection.admitted(1000 + attempt) {
            return connection;
        }
    }
    panic!("no connection admitted in 200 attempts after a place was freed");
}

/// Starts a switch whose `[limits]` table is `limits`.
fn start(name: &str, limits: &str) -> (TestDir, Switch) {
    let dir = fresh_dir(name);
    let config = dir.join("hostile.toml");
    std::fs::write(&config, format!("[limits]\n{limits}")).expect("writing the config");
    let switch = Switch::start(Path::new(BIN), &dir, &["--config", &config.to_string_lossy()]);
    (dir, switch)
}

/// The pid of the switch serving `data_dir` (the harness does not expose its child's pid):
/// the one process whose command line names that directory after `serve`.
fn pid_serving(data_dir: &Path) -> Option<u32> {
    let wanted = data_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        if args.iter().any(|arg| arg == "serve") && args.iter().any(|arg| *arg == wanted) {
            return Some(pid);
        }
    }
    None
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One peer address gets `connections_per_address_max` places: the next connection gets the
/// connection-level RETRY_LATER (PING type, request id 0) and then EOF, repeated refusals
/// leak no place, and closing one admitted connection lets a new one in.
#[test]
fn connections_per_address_are_limited_and_places_come_back() {
    let (_dir, switch) = start("per-address", "connections_per_address_max = 3\n");
    let address = &switch.address;
    let mut admitted: Vec<Raw> = (0..3)
        .map(|index| {
            let mut connection = Raw::connect(address);
            connection.ping(index + 1);
            connection
        })
        .collect();
    for _ in 0..5 {
        expect_refused(address);
    }
    // The admitted ones are untouched by the refusals.
    for (index, connection) in admitted.iter_mut().enumerate() {
        connection.ping(10 + index as u64);
    }
    drop(admitted.remove(0));
    let mut replacement = admit_eventually(address);
    replacement.ping(20);
    // Three again: the fourth is refused.
    expect_refused(address);
}

/// `connections_max` bounds the connections from every address together, and its refusal
/// reaches a client that wrote requests right after connecting, before reading: the server
/// shuts its side and drains what the client sent instead of resetting the connection (a reset
/// would make the client's kernel throw the unread refusal away).
#[test]
fn connections_max_refusal_reaches_a_client_that_already_sent() {
    let (_dir, switch) =
        start("connections-max", "connections_max = 4\nconnections_per_address_max = 100\n");
    let address = &switch.address;
    let mut admitted: Vec<Raw> = (0..4)
        .map(|index| {
            let mut connection = Raw::connect(address);
            connection.ping(index + 1);
            connection
        })
        .collect();
    for round in 0..10u64 {
        let mut eager = Raw::connect(address);
        // One PING at once, and on some rounds 16 KiB more of pipelined PINGs.
        let mut burst = ping_frame(100 + round);
        if round % 2 == 1 {
            while burst.len() < 16 * 1024 {
                burst.extend_from_slice(&ping_frame(200 + round));
            }
        }
        eager.send(&burst);
        let (header, _) = eager.frame();
        assert_refusal(&header);
        eager.expect_closed();
    }
    for (index, connection) in admitted.iter_mut().enumerate() {
        connection.ping(10 + index as u64);
    }
    drop(admitted.pop());
    let mut replacement = admit_eventually(address);
    replacement.ping(30);
    expect_refused(address);
}

/// A connection that sends nothing is closed (EOF, nothing sent) once `idle_timeout_ms`
/// passed without a byte, and not before; a connection that PINGs every third of the timeout
/// stays open well past it, and is itself closed once it falls silent.
#[test]
fn idle_connections_are_closed_and_pinging_ones_are_not() {
    const IDLE_MS: u64 = 1500;
    let (_dir, switch) =
        start("idle", &format!("idle_timeout_ms = {IDLE_MS}\nframe_read_timeout_ms = 60000\n"));
    let address = switch.address.clone();
    let silent = std::thread::spawn({
        let address = address.clone();
        move || {
            let opened = Instant::now();
            let mut silent = Raw::connect(&address);
            silent.expect_closed();
            opened.elapsed()
        }
    });
    let mut pinger = Raw::connect(&address);
    let pinging = Instant::now();
    let mut request_id = 1;
    // The client behaviour under test: a PING every IDLE_MS / 3, for over twice the timeout.
    while pinging.elapsed() < Duration::from_millis(IDLE_MS * 5 / 2) {
        pinger.ping(request_id);
        request_id += 1;
        std::thread::sleep(Duration::from_millis(IDLE_MS / 3));
    }
    pinger.ping(request_id);
    let silent_lived = silent.join().expect("the silent client");
    assert!(
        silent_lived >= Duration::from_millis(IDLE_MS - 50),
        "closed after {silent_lived:?}, before the idle timeout"
    );
    assert!(
        silent_lived < pinging.elapsed(),
        "the silent connection outlived the pinging one's {:?}",
        pinging.elapsed()
    );
    // Silent now: closed in its turn.
    let fell_silent = Instant::now();
    pinger.expect_closed();
    assert!(
        fell_silent.elapsed() >= Duration::from_millis(IDLE_MS - 50),
        "closed {:?} after its last PING",
        fell_silent.elapsed()
    );
}

/// Slowloris: a frame begun and never finished is closed `frame_read_timeout_ms` after its
/// first byte, whether the client stops after 10 bytes or keeps dripping one byte at a time
/// (the bytes that keep arriving do not extend the frame's deadline; the idle timeout is far
/// away here, so it is the frame timeout that acts). Meanwhile another connection is served.
#[test]
fn slow_drip_frames_are_closed_while_others_are_served() {
    const FRAME_READ_MS: u64 = 1500;
    let (_dir, switch) = start(
        "slow-drip",
        &format!("frame_read_timeout_ms = {FRAME_READ_MS}\nidle_timeout_ms = 60000\n"),
    );
    let address = switch.address.clone();
    let ping = ping_frame(7);
    assert!(ping.len() > HEADER_BYTES);

    let mut stalled = Raw::connect(&address);
    let stalled_since = Instant::now();
    stalled.send(&ping[..10]);

    // One byte every 250 ms: the whole frame would take 10 s.
    let dripping = Raw::connect(&address);
    let closed = Arc::new(AtomicBool::new(false));
    let mut drip = dripping.stream.try_clone().expect("clone");
    let dripper = std::thread::spawn({
        let closed = closed.clone();
        let frame = ping_frame(8);
        move || {
            for byte in frame {
                if closed.load(Ordering::Acquire) || drip.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    let dripping_since = Instant::now();
    let drip_watch = std::thread::spawn(move || {
        let mut dripping = dripping;
        let got = dripping.read();
        closed.store(true, Ordering::Release);
        (got, dripping_since.elapsed())
    });

    // Served normally while two frames hang half-read.
    let mut healthy = Raw::connect(&address);
    for request_id in 1..=20 {
        healthy.ping(request_id);
    }
    stalled.expect_closed();
    let stalled_lived = stalled_since.elapsed();
    let (got, dripping_lived) = drip_watch.join().expect("the drip watcher");
    dripper.join().expect("the dripper");
    // FIN, or a reset if a dripped byte hit the closed socket first; never an answer.
    assert!(matches!(got, Got::Closed | Got::Reset(_)), "the dripping connection got {got:?}");
    for lived in [stalled_lived, dripping_lived] {
        assert!(
            lived >= Duration::from_millis(FRAME_READ_MS - 50),
            "closed after {lived:?}, before the frame read timeout"
        );
        assert!(lived < Duration::from_millis(8_000), "closed only after {lived:?}");
    }
    healthy.ping(100);
}

/// A frame whose declared body does not fit the shared receive-buffer budget is answered
/// RETRY_LATER with its own type and request id, its body bytes are read and dropped (were
/// they parsed, the 0xAB garbage would be a framing error and close the connection), and the
/// PING behind it on the same connection is answered: the connection survives. A large frame
/// that does fit, and a small one, are then served as usual.
#[test]
fn a_frame_past_the_read_buffer_budget_is_refused_and_skipped() {
    let (_dir, switch) = start(
        "read-budget",
        "read_buffer_bytes_total_max = 262144\nframe_bytes_max = 8388608\nidle_timeout_ms = 60000\nframe_read_timeout_ms = 60000\n",
    );
    let mut connection = Raw::connect(&switch.address);
    let mut other = Raw::connect(&switch.address);
    other.ping(1);

    const BODY: usize = 1 << 20;
    let header = FrameHeader::request(MsgType::BalanceInquiry, 41, 0);
    let mut big = Vec::new();
    encode_frame(&mut big, &header, &vec![0xAB; BODY]);
    assert_eq!(big.len(), HEADER_BYTES + BODY);
    connection.send(&big);
    connection.send(&ping_frame(42));
    let (refused, body) = connection.frame();
    assert_eq!(
        (refused.msg_type, refused.status, refused.request_id, body.len()),
        (MsgType::BalanceInquiry as u16, ResultCode::RetryLater.as_u16(), 41, 0),
        "the oversized frame is refused by request"
    );
    let (pong, body) = connection.frame();
    assert_pong(&pong, &body, 42);

    // 8,000 inquiries, a body of about 64 KiB: more than a connection starts with, within budget.
    connection.send(&balance_frame(43, 8000));
    let (header, body) = connection.frame();
    assert_eq!((header.status, header.request_id), (0, 43));
    let results: Vec<BalanceResult> = decode_body(&body).expect("balance results");
    assert_eq!(results.len(), 8000);
    assert!(results.iter().all(|result| result.code == ResultCode::CardNotFound.as_u16()));

    connection.send(&balance_frame(44, 1));
    let (header, body) = connection.frame();
    assert_eq!((header.status, header.request_id), (0, 44));
    let results: Vec<BalanceResult> = decode_body(&body).expect("a balance result");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].code, ResultCode::CardNotFound.as_u16());
    other.ping(2);
}

/// A refused frame's body is still a frame being read: a client that takes the RETRY_LATER
/// and then drips the body it declared (one byte every 250 ms, so the idle timeout never acts)
/// is closed by the frame read timeout, as any slow drip is; the place it held is freed.
#[test]
fn a_refused_frame_dripped_slowly_is_closed_by_the_frame_read_timeout() {
    const FRAME_READ_MS: u64 = 1500;
    let (_dir, switch) = start(
        "refused-drip",
        &format!(
            "read_buffer_bytes_total_max = 262144\nframe_read_timeout_ms = {FRAME_READ_MS}\nidle_timeout_ms = 3000\n"
        ),
    );
    let mut connection = Raw::connect(&switch.address);
    let header = FrameHeader::request(MsgType::BalanceInquiry, 77, 0);
    let mut big = Vec::new();
    encode_frame(&mut big, &header, &vec![0xAB; 1 << 20]);
    let since = Instant::now();
    connection.send(&big[..HEADER_BYTES]);
    let (refused, _) = connection.frame();
    assert_eq!((refused.status, refused.request_id), (ResultCode::RetryLater.as_u16(), 77));
    let closed = Arc::new(AtomicBool::new(false));
    let mut drip = connection.stream.try_clone().expect("clone");
    let dripper = std::thread::spawn({
        let closed = closed.clone();
        let body = big[HEADER_BYTES..HEADER_BYTES + 64].to_vec();
        move || {
            for byte in body {
                if closed.load(Ordering::Acquire) || drip.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    let got = connection.read();
    closed.store(true, Ordering::Release);
    let lived = since.elapsed();
    dripper.join().expect("the dripper");
    assert!(matches!(got, Got::Closed | Got::Reset(_)), "the dripping connection got {got:?}");
    assert!(
        lived >= Duration::from_millis(FRAME_READ_MS - 50),
        "closed after {lived:?}, before the frame read timeout"
    );
    assert!(
        lived < Duration::from_millis(8_000),
        "closed only after {lived:?}: the skipped body escaped the timeout"
    );
    Raw::connect(&switch.address).ping(1);
}

/// A client that pipelines big answers and never reads them: past
/// `connection_output_bytes_max` of unread answers the switch stops reading it (its writes
/// block instead of the switch buffering answers without end), after `write_timeout_ms` it is
/// closed (its blocked write fails), other connections are answered promptly all along, and
/// the process neither dies nor balloons.
#[test]
fn a_client_that_never_reads_is_cut_off_without_hurting_others() {
    let (dir, mut switch) = start(
        "non-reader",
        "connection_output_bytes_max = 65536\nwrite_timeout_ms = 1500\nidle_timeout_ms = 60000\nframe_read_timeout_ms = 60000\n",
    );
    let address = switch.address.clone();
    let pid = pid_serving(&dir);
    let peak_before = pid.and_then(|pid| status_bytes(pid, "VmHWM:"));

    // 4,000 frames of 1,000 inquiries: 32 MB of requests whose answers are over 200 MB.
    const FRAMES: u64 = 4000;
    let request = balance_frame(0, 1000);
    let answer_bytes = {
        let results = vec![BalanceResult::default(); 1000];
        HEADER_BYTES + encode_body(&results).len()
    };
    assert!(
        answer_bytes > 4 * request.len(),
        "answers ({answer_bytes} B) are much bigger than requests"
    );

    let mut non_reader = Raw::connect(&address);
    let mut writer_stream = non_reader.stream.try_clone().expect("clone");
    // A bound on a server that never closes it, not a timing assumption.
    writer_stream.set_write_timeout(Some(Duration::from_secs(30))).expect("write timeout");
    let (done, writer_done) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let mut frames_written = 0u64;
        for request_id in 1..=FRAMES {
            let bytes = balance_frame(request_id, 1000);
            if let Err(error) = writer_stream.write_all(&bytes) {
                let _ = done.send(());
                return (frames_written, Some(error), started.elapsed());
            }
            frames_written += 1;
        }
        let _ = done.send(());
        (frames_written, None, started.elapsed())
    });

    // Meanwhile: another connection is answered promptly.
    let mut other = Raw::connect(&address);
    let mut pings = 0u64;
    let mut slowest = Duration::ZERO;
    loop {
        let sent = Instant::now();
        other.ping(pings + 1);
        slowest = slowest.max(sent.elapsed());
        pings += 1;
        if writer_done.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
    }
    let (frames_written, error, writing) = writer.join().expect("the writer");
    let error = error.unwrap_or_else(|| panic!("all {FRAMES} frames were taken in {writing:?}: the switch kept reading a client that does not read"));
    assert!(
        matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the write failed with {error:?} after {frames_written} frames and {writing:?}, not by the switch closing"
    );
    assert!(pings >= 2, "only {pings} PINGs while the writer ran {writing:?}");
    assert!(slowest < Duration::from_secs(1), "a PING on another connection took {slowest:?}");
    eprintln!(
        "non-reader: {frames_written} of {FRAMES} frames written before the close after {writing:?}; {pings} PINGs meanwhile, slowest {slowest:?}"
    );

    // What the client can still read ends early: the answers not taken were dropped.
    let mut answers = 0u64;
    loop {
        match non_reader.read() {
            Got::Frame(header, _) => {
                // A frame read while the connection already had `in_flight_events_per_connection_max`
                // events in flight is answered RETRY_LATER at once, ahead of earlier answers (answers
                // leave in the order their shards finish): a slower machine sees some.
                assert!(
                    header.status == 0 || header.status == ResultCode::RetryLater.as_u16(),
                    "answer {answers}: status {}",
                    header.status
                );
                answers += 1;
            }
            Got::Closed => break,
            Got::Reset(why) => {
                eprintln!("non-reader: reading after the close: {why}");
                break;
            }
        }
    }
    assert!(answers < frames_written, "{answers} answers for {frames_written} frames");

    assert!(switch.is_running(), "the switch survived");
    let mut after = Raw::connect(&address);
    after.ping(1);
    match (pid, peak_before, pid.and_then(|pid| status_bytes(pid, "VmHWM:"))) {
        (Some(pid), Some(before), Some(peak)) => {
            eprintln!(
                "non-reader: switch {pid} peak RSS {} MiB before, {} MiB after",
                before >> 20,
                peak >> 20
            );
            assert!(peak < before + (64 << 20), "peak RSS grew from {before} to {peak} bytes");
        }
        other => eprintln!("non-reader: no RSS check ({other:?})"),
    }
}

/// A switch process started by this test (the harness cannot start one under a shell that
/// lowers its limits), killed when the test ends.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Out of file descriptors: under `ulimit -n 64`, clients open more connections than the
/// switch can have descriptors; `accept()` fails (EMFILE, logged on standard error) and the
/// process does not exit. Once the clients close, connections are accepted again and a new
/// client's PING is answered.
#[test]
fn running_out_of_file_descriptors_does_not_end_the_switch() {
    const FD_LIMIT: u32 = 64;
    let dir = fresh_dir("emfile");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .arg("serve")
        .arg("--data")
        .arg(&*dir)
        .args(["--listen", "127.0.0.1:0", "--shards", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pinswitch under sh");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut child = Spawned(child);
    let (address_tx, address_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ =
                    address_tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let (errors_tx, errors_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let _ = errors_tx.send(line);
        }
    });
    let address = address_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("pinswitch did not start listening");
    let pid = child.0.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .expect("reading the switch's limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open-files limit");
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some(FD_LIMIT.to_string().as_str()),
        "{open_files}"
    );

    let mut first = Raw::connect(&address);
    first.ping(1);
    // More connections than the switch has descriptors; each sends a PING at once. The kernel
    // completes the handshakes the switch cannot accept, so connect itself does not fail.
    let mut crowd = vec![first];
    for index in 0..2 * FD_LIMIT {
        match TcpStream::connect_timeout(
            &address.parse().expect("an address"),
            Duration::from_secs(10),
        ) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
                let _ = stream.write_all(&ping_frame(u64::from(index) + 2));
                crowd.push(Raw { stream, buffer: Vec::new() });
            }
            Err(error) => {
                eprintln!("emfile: connection {index} failed: {error}");
                break;
            }
        }
    }
    assert!(crowd.len() > FD_LIMIT as usize, "only {} connections opened", crowd.len());
    // The switch's own word that accept() failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = errors_rx
            .recv_timeout(left)
            .expect("no \"accept failed\" line on the switch's standard error");
        if line.contains("accept failed") {
            assert!(line.contains("open files") || line.contains("os error 24"), "{line}");
            break;
        }
    }
    assert!(
        child.0.try_wait().expect("polling pinswitch").is_none(),
        "the switch exited on accept errors"
    );
    drop(crowd);
    // Descriptors come free as the switch sees the closes; then new clients are served.
    let mut after = Raw::connect(&address);
    after.ping(1000);
    let mut another = Raw::connect(&address);
    another.ping(1001);
    assert!(
        child.0.try_wait().expect("polling pinswitch").is_none(),
        "the switch is still running"
    );
}
