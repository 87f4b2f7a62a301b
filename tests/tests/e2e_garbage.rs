//! Outside bytes never take the switch down: random bytes, truncated frames, bad checksums,
//! oversized frames, unknown message types, bodies that fail validation and oversized batches
//! each get a precise status (or a clean close when framing is lost), and the switch keeps
//! serving other connections, and the same connection whenever framing allows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use pinswitch_protocol::{
    FrameHeader, HEADER_BYTES, MsgType, Ping, ResultCode, Sale, VERSION, decode_frame, encode_body,
    encode_frame,
};
use pinswitch_tests::{Rng, Switch, fresh_dir};

const BIN: &str = env!("CARGO_BIN_EXE_pinswitch");

fn frame(msg_type: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        version: VERSION,
        flags: 0,
        msg_type,
        status: 0,
        request_id,
        deadline_ms: 0,
        body_len: 0,
    };
    let mut out = Vec::new();
    encode_frame(&mut out, &header, body);
    out
}

/// Reads one response frame, or `None` when the server closed the connection.
fn read_response(stream: &mut TcpStream) -> Option<FrameHeader> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(frame)) = decode_frame(&buffer, 16 << 20) {
            return Some(frame.header);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    // A bound on a broken server, not a timing assumption: answers come in microseconds.
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream
}

fn ping_works(address: &str) {
    let mut stream = connect(address);
    stream
        .write_all(&frame(MsgType::Ping as u16, 9, &encode_body(&Ping { nonce: 5 })))
        .expect("write");
    let header = read_response(&mut stream).expect("a pong");
    assert_eq!((header.status, header.request_id), (0, 9));
}

#[test]
fn garbage_never_crashes_the_switch() {
    let dir = fresh_dir("garbage");
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", &write_config(&dir)]);
    let address = switch.address.clone();

    // Unknown type and a body that does not validate: answered, connection stays open.
    let mut stream = connect(&address);
    stream.write_all(&frame(999, 1, b"whatever")).expect("write");
    let header = read_response(&mut stream).expect("answer");
    assert_eq!((header.status, header.request_id), (ResultCode::UnknownMessageType.as_u16(), 1));
    stream.write_all(&frame(MsgType::Sale as u16, 2, b"\x01\x02\x03")).expect("write");
    let header = read_response(&mut stream).expect("answer");
    assert_eq!((header.status, header.request_id), (ResultCode::FormatError.as_u16(), 2));
    // Too many events in one frame (the config allows 4).
    let sales: Vec<Sale> = (0..5)
        .map(|index| Sale {
            op_id: index + 1,
            pin: 0,
            password: vec![],
            amount_won: 1,
            merchant_id: 0,
            category: 1,
        })
        .collect();
    stream.write_all(&frame(MsgType::Sale as u16, 3, &encode_body(&sales))).expect("write");
    let header = read_response(&mut stream).expect("answer");
    assert_eq!((header.status, header.request_id), (ResultCode::BatchTooLarge.as_u16(), 3));
    stream
        .write_all(&frame(MsgType::Ping as u16, 4, &encode_body(&Ping { nonce: 1 })))
        .expect("write");
    assert_eq!(read_response(&mut stream).expect("pong").status, 0);

    // A bad checksum: answered, then closed.
    let mut stream = connect(&address);
    let mut bad = frame(MsgType::Ping as u16, 5, &encode_body(&Ping { nonce: 1 }));
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    stream.write_all(&bad).expect("write");
    let header = read_response(&mut stream).expect("answer");
    assert_eq!(header.status, ResultCode::ChecksumMismatch.as_u16());
    assert!(read_response(&mut stream).is_none(), "closed after a checksum mismatch");

    // Oversized frame: refused from its header alone.
    let mut stream = connect(&address);
    let mut huge = frame(MsgType::Ping as u16, 6, &[]);
    huge[20..24].copy_from_slice(&(64u32 << 20).to_le_bytes());
    stream.write_all(&huge[..HEADER_BYTES]).expect("write");
    let header = read_response(&mut stream).expect("answer");
    assert_eq!(header.status, ResultCode::FrameTooLarge.as_u16());

    // Truncated frame, then the client goes away.
    let mut stream = connect(&address);
    let ping = frame(MsgType::Ping as u16, 7, &encode_body(&Ping { nonce: 1 }));
    stream.write_all(&ping[..ping.len() / 2]).expect("write");
    drop(stream);

    // Seeded random garbage on many connections.
    let mut rng = Rng(2026);
    for _ in 0..200 {
        let mut stream = connect(&address);
        let length = rng.below(300) as usize;
        let mut bytes: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
        if rng.below(2) == 0 {
            // Start with a plausible header so deeper checks run too.
            let mut valid = frame(MsgType::Sale as u16, 8, &bytes);
            let flip = rng.below(valid.len() as u64) as usize;
            valid[flip] ^= 1 << rng.below(8);
            bytes = valid;
        }
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        while read_response(&mut stream).is_some() {}
    }
    assert!(switch.is_running(), "the switch survived the garbage");
    ping_works(&address);
}

fn write_config(dir: &Path) -> String {
    let path = dir.join("garbage.toml");
    std::fs::write(&path, "[limits]\nbatch_events_max = 4\nframe_bytes_max = 1048576\n")
        .expect("config");
    path.to_string_lossy().into_owned()
}

/// Every message type with seeded garbage bodies (well-framed, checksums right) on one
/// connection: each frame gets an answer with its own request id (FORMAT_ERROR, or results for
/// a body that happens to validate), and the connection keeps serving. A client sending the
/// push-only SESSION_NOTICE gets UNKNOWN_MESSAGE_TYPE.
#[test]
fn garbage_bodies_of_every_message_type_are_answered_on_a_live_connection() {
    let dir = fresh_dir("garbage-types");
    let mut switch = Switch::start(Path::new(BIN), &dir, &["--config", &write_config(&dir)]);
    let mut stream = connect(&switch.address);
    let mut rng = Rng(4646);
    let mut request_id = 100;
    for msg_type in MsgType::ALL {
        for _ in 0..40 {
            let length = rng.below(200) as usize;
            let body: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
            request_id += 1;
            stream.write_all(&frame(msg_type as u16, request_id, &body)).expect("write");
            let header = read_response(&mut stream).expect("an answer, the connection open");
            assert_eq!(
                (header.request_id, header.msg_type),
                (request_id, msg_type as u16),
                "{msg_type:?}"
            );
            if msg_type == MsgType::SessionNotice {
                assert_eq!(header.status, ResultCode::UnknownMessageType.as_u16());
            }
        }
    }
    assert!(switch.is_running());
    ping_works(&switch.address);
}
