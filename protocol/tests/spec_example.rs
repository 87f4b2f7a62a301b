//! Keeps PROTOCOL.md's worked examples true: the PING frame, the SALE batch of two events and
//! the HELLO with an out-of-line string printed there are, byte for byte, what the encoder
//! produces, and the decoder reads them back. If the frame layout or the body encoding changes,
//! this fails (printing the new dump) until the specification is updated with it.

use pinswitch_protocol::{
    Category, FrameHeader, Hello, MsgType, Ping, Sale, decode_body, decode_frame,
    encode_frame_body, pin,
};

/// The hex dump lines of the example under `heading`, exactly as PROTOCOL.md prints them
/// (offsets and comments stripped).
fn spec_example_bytes(heading: &str) -> Vec<u8> {
    let spec = include_str!("../PROTOCOL.md");
    let start = spec.find(heading).unwrap_or_else(|| panic!("PROTOCOL.md has {heading:?}"));
    let block = &spec[start..];
    let block = &block[block.find("```").expect("a code block") + 3..];
    let block = &block[..block.find("```").expect("the block ends")];
    let mut bytes = Vec::new();
    for line in block.lines().filter(|line| line.contains(':')) {
        let (_, rest) = line.split_once(':').expect("offset");
        // Hex pairs come first; the comment after them starts after a run of spaces.
        for token in rest.split_whitespace() {
            match u8::from_str_radix(token, 16) {
                Ok(byte) if token.len() == 2 => bytes.push(byte),
                _ => break,
            }
        }
    }
    bytes
}

/// `bytes` as PROTOCOL.md prints a dump (16 per line, offset first), for updating it.
fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(line, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("{:04x}: {}\n", line * 16, hex.join(" "))
        })
        .collect()
}

#[track_caller]
fn assert_specified(heading: &str, frame: &[u8]) {
    assert!(
        spec_example_bytes(heading) == frame,
        "PROTOCOL.md's {heading:?} is out of date; the encoder writes:\n{}",
        dump(frame)
    );
}

#[test]
fn the_specified_ping_frame_is_what_the_encoder_writes() {
    let mut frame = Vec::new();
    encode_frame_body(&mut frame, &FrameHeader::request(MsgType::Ping, 1, 0), &Ping { nonce: 42 });
    assert_specified("### Worked example: PING", &frame);
    let decoded = decode_frame(&frame, 1 << 20).unwrap().expect("a whole frame");
    assert_eq!(decoded.header.request_id, 1);
    assert_eq!(decoded.total_len, 40);
}

/// The two SALEs of the example: op ids whose top 48 bits are 2026-12-01T12:00:00Z in ms.
fn example_sales() -> Vec<Sale> {
    const OP_TIME_MS: u128 = 1_764_590_400_000;
    vec![
        Sale {
            op_id: OP_TIME_MS << 80 | 1,
            pin: pin::with_check_digit(123_456_789_012_345),
            password: b"4321".to_vec(),
            amount_won: 1_000,
            merchant_id: 1001,
            category: Category::InternetPayment as u8,
        },
        Sale {
            op_id: OP_TIME_MS << 80 | 2,
            pin: pin::with_check_digit(987_654_321_098_765),
            password: b"987654".to_vec(),
            amount_won: 25_000,
            merchant_id: 1001,
            category: Category::InternetPayment as u8,
        },
    ]
}

#[test]
fn the_specified_sale_batch_is_what_the_encoder_writes() {
    let sales = example_sales();
    let mut frame = Vec::new();
    encode_frame_body(&mut frame, &FrameHeader::request(MsgType::Sale, 7, 250), &sales);
    assert_specified("### Worked example: a SALE batch", &frame);
    let decoded = decode_frame(&frame, 1 << 20).unwrap().expect("a whole frame");
    assert_eq!(decode_body::<Vec<Sale>>(decoded.body).expect("the batch"), sales);
}

#[test]
fn the_specified_hello_is_what_the_encoder_writes() {
    let hello = Hello { client_name: "gateway-acme".into(), protocol_version: 1 };
    let mut frame = Vec::new();
    encode_frame_body(&mut frame, &FrameHeader::request(MsgType::Hello, 1, 0), &hello);
    assert_specified("### Worked example: HELLO", &frame);
    let decoded = decode_frame(&frame, 1 << 20).unwrap().expect("a whole frame");
    assert_eq!(decode_body::<Hello>(decoded.body).expect("the hello"), hello);
    // The inline form the text gives for a short name.
    let short =
        pinswitch_protocol::encode_body(&Hello { client_name: "gw-1".into(), protocol_version: 1 });
    assert_eq!(short, [0x67, 0x77, 0x2d, 0x31, 0xff, 0xff, 0xff, 0xff, 1]);
}
