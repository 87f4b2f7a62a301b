//! Keeps PROTOCOL.md's worked example true: the PING frame printed there, byte for byte, is what
//! the encoder produces, and the decoder reads it back. If the frame layout or the body encoding
//! changes, this fails until the specification is updated with it.

use pinswitch_protocol::{FrameHeader, MsgType, Ping, decode_frame, encode_frame_body};

/// The hex dump lines of the example, exactly as PROTOCOL.md prints them (offsets stripped).
fn spec_example_bytes() -> Vec<u8> {
    let spec = include_str!("../PROTOCOL.md");
    let start = spec.find("### Worked example: PING").expect("the example section exists");
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

#[test]
fn the_specified_ping_frame_is_what_the_encoder_writes() {
    let mut frame = Vec::new();
    encode_frame_body(&mut frame, &FrameHeader::request(MsgType::Ping, 1, 0), &Ping { nonce: 42 });
    assert_eq!(spec_example_bytes(), frame, "PROTOCOL.md's PING example is out of date");
    let decoded = decode_frame(&frame, 1 << 20).unwrap().expect("a whole frame");
    assert_eq!(decoded.header.request_id, 1);
    assert_eq!(decoded.total_len, 40);
}
